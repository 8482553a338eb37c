"""Sending in-process against a real local HTTP gateway: payload, cap, quiet hours, 4xx/5xx."""

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from campaigns import services
from campaigns.models import CampaignStatus, ChannelKind, Delivery
from tests.campaigns.receiver import Receiver
from tests.factories.campaigns import CampaignFactory, ChannelFactory, make_profiles

pytestmark = pytest.mark.django_db


def _run(campaign) -> list[int]:
    services.start_send(campaign_id=campaign.pk)
    ids = list(Delivery.objects.filter(campaign=campaign).values_list("id", flat=True))
    services.deliver(delivery_ids=ids)
    return ids


def test_delivery_posts_the_contract_json_with_idempotency_key_and_token(settings):
    settings.OPSLOOP_GATEWAY_TOKEN = "s3cret"
    settings.OPSLOOP_GATEWAY_ALLOWED_HOSTS = ["127.0.0.1"]
    make_profiles(4)
    with Receiver() as gateway:
        ChannelFactory(kind=ChannelKind.PUSH, url=gateway.url)
        campaign = CampaignFactory(status=CampaignStatus.RUNNING, holdout_percent=Decimal(0))
        _run(campaign)
    assert len(gateway.requests) == 4
    body = gateway.requests[0]
    assert set(body) >= {
        "delivery_id",
        "idempotency_key",
        "campaign",
        "variant",
        "user_id",
        "channel",
        "title",
        "body",
        "url",
    }
    delivery = Delivery.objects.get(pk=body["delivery_id"])
    assert body["idempotency_key"] == str(delivery.idempotency_key)
    assert body["campaign"] == campaign.pk and body["channel"] == "push"
    assert "/api/v1/t/c/" in body["url"]
    assert gateway.headers[0]["Authorization"] == "Bearer s3cret"
    assert Delivery.objects.filter(campaign=campaign, status="sent").count() == 4


def test_client_error_fails_for_good_with_the_reason_and_is_not_retried():
    make_profiles(2)
    with Receiver(status=410) as gateway:
        ChannelFactory(kind=ChannelKind.PUSH, url=gateway.url)
        campaign = CampaignFactory(status=CampaignStatus.RUNNING, holdout_percent=Decimal(0))
        ids = _run(campaign)
        services.deliver(delivery_ids=ids)
    assert len(gateway.requests) == 2
    assert {d.status for d in Delivery.objects.filter(pk__in=ids)} == {"failed"}
    assert Delivery.objects.filter(pk__in=ids, reason__startswith="HTTP 410").count() == 2


def test_server_error_is_deferred_with_backoff_until_the_attempt_limit():
    make_profiles(1)
    with Receiver(status=503) as gateway:
        ChannelFactory(
            kind=ChannelKind.PUSH, url=gateway.url, max_attempts=2, backoff_base_seconds=30, backoff_max_seconds=600
        )
        campaign = CampaignFactory(status=CampaignStatus.RUNNING, holdout_percent=Decimal(0))
        ids = _run(campaign)
        first = Delivery.objects.get(pk=ids[0])
        # First retry: half of the 30 s step fixed, half random.
        wait = (first.not_before - timezone.now()).total_seconds()
        assert first.status == "pending" and 13 <= wait <= 30
        assert first.reason.startswith("retrying: HTTP 503")
        Delivery.objects.filter(pk=ids[0]).update(not_before=timezone.now())
        services.deliver(delivery_ids=ids)
    final = Delivery.objects.get(pk=ids[0])
    assert final.status == "failed" and final.reason.startswith("GAVE_UP after 2 attempts")
    assert len(gateway.requests) == 2


def test_frequency_cap_counts_across_campaigns_per_day():
    make_profiles(3)
    with Receiver() as gateway:
        ChannelFactory(kind=ChannelKind.PUSH, url=gateway.url)
        first = CampaignFactory(status=CampaignStatus.RUNNING, holdout_percent=Decimal(0), frequency_cap_per_day=1)
        second = CampaignFactory(
            status=CampaignStatus.RUNNING, holdout_percent=Decimal(0), frequency_cap_per_day=1, segment=first.segment
        )
        _run(first)
        _run(second)
    assert len(gateway.requests) == 3
    assert {r["campaign"] for r in gateway.requests} == {first.pk}
    assert set(Delivery.objects.filter(campaign=second).values_list("status", "reason")) == {
        ("skipped", "FREQUENCY_CAP")
    }


def _zone_with_local_hour(hour: int) -> str:
    """An Etc/GMT zone where it is `hour` o'clock now (Etc/GMT-X is UTC+X)."""
    offset = (hour - timezone.now().astimezone(dt.UTC).hour) % 24
    if offset > 12:
        offset -= 24
    return "Etc/GMT" + ("-" if offset > 0 else "+") + str(abs(offset)) if offset else "UTC"


def test_quiet_hours_defer_to_the_users_morning_instead_of_dropping():
    night_zone, day_zone = _zone_with_local_hour(23), _zone_with_local_hour(13)
    make_profiles(2, prefix="night", timezone=night_zone)
    make_profiles(2, prefix="day", timezone=day_zone)
    with Receiver() as gateway:
        ChannelFactory(kind=ChannelKind.PUSH, url=gateway.url)
        campaign = CampaignFactory(status=CampaignStatus.RUNNING, holdout_percent=Decimal(0), respect_quiet_hours=True)
        _run(campaign)
    assert {r["user_id"] for r in gateway.requests} == {"day00000", "day00001"}
    waiting = Delivery.objects.filter(campaign=campaign, user_id__startswith="night")
    assert {d.status for d in waiting} == {"pending"}
    import zoneinfo

    for d in waiting:
        local = d.not_before.astimezone(zoneinfo.ZoneInfo(night_zone))
        assert (local.hour, local.minute) == (8, 0)
        assert dt.timedelta(hours=8) <= d.not_before - timezone.now() <= dt.timedelta(hours=10)


def test_a_repeated_batch_sends_nothing_twice():
    make_profiles(5)
    with Receiver() as gateway:
        ChannelFactory(kind=ChannelKind.PUSH, url=gateway.url)
        campaign = CampaignFactory(status=CampaignStatus.RUNNING, holdout_percent=Decimal(0))
        ids = _run(campaign)
        services.deliver(delivery_ids=ids)
        services.start_send(campaign_id=campaign.pk)
    assert len(gateway.requests) == 5


def test_paused_campaign_sends_nothing_until_resumed():
    make_profiles(3)
    with Receiver() as gateway:
        ChannelFactory(kind=ChannelKind.PUSH, url=gateway.url)
        campaign = CampaignFactory(status=CampaignStatus.RUNNING, holdout_percent=Decimal(0))
        services.start_send(campaign_id=campaign.pk)
        services.pause_campaign(campaign_id=campaign.pk)
        ids = list(Delivery.objects.filter(campaign=campaign).values_list("id", flat=True))
        services.deliver(delivery_ids=ids)
        assert gateway.requests == []
        services.resume_campaign(campaign_id=campaign.pk)
        services.deliver(delivery_ids=ids)
    assert len(gateway.requests) == 3


def test_email_goes_through_the_django_backend_with_tracking_pixel(mailoutbox):
    make_profiles(2, prefix="mail", email_opt_in=True, email="a@example.com", push_opt_in=False)
    campaign = CampaignFactory(status=CampaignStatus.RUNNING, holdout_percent=Decimal(0), channel=ChannelKind.EMAIL)
    _run(campaign)
    assert len(mailoutbox) == 2
    html = mailoutbox[0].alternatives[0][0]
    assert "/api/v1/t/o/" in html and "/api/v1/t/c/" in html


def test_variant_coupon_is_issued_on_send_and_its_redemption_is_attributed_to_the_variant():
    from campaigns.models import Variant
    from campaigns.selectors import campaign_results
    from coupons import services as coupon_services
    from coupons.models import Coupon
    from tests.factories.coupons import CouponRuleFactory

    make_profiles(4)
    rule = CouponRuleFactory(total_quantity=100, budget=Decimal("1000.00"))
    with Receiver() as gateway:
        ChannelFactory(kind=ChannelKind.PUSH, url=gateway.url)
        campaign = CampaignFactory(status=CampaignStatus.RUNNING, holdout_percent=Decimal(0))
        Variant.objects.filter(campaign=campaign, name="A").update(coupon_rule_id=rule.pk)
        _run(campaign)
    with_coupon = [r for r in gateway.requests if r["variant"] == "A"]
    assert len(with_coupon) == 2 and all(r.get("coupon_code") for r in with_coupon)
    assert not any(r.get("coupon_code") for r in gateway.requests if r["variant"] == "B")
    coupon = Coupon.objects.get(code=with_coupon[0]["coupon_code"])
    assert coupon.source_ref == campaign.variants.get(name="A").source_ref
    coupon_services.redeem_coupon(
        code=coupon.code, user_id=with_coupon[0]["user_id"], order_id="o-1", order_amount=Decimal("120.00")
    )
    groups = {g["name"]: g for g in campaign_results(campaign)["groups"]}
    assert groups["A"]["coupon_redemptions"] == 1 and groups["A"]["coupon_discount"] == "20.00"
    assert groups["B"]["coupon_redemptions"] == 0


def test_email_channel_speaks_real_smtp_and_sorts_refusals_into_retry_or_failure():
    from django.test import override_settings

    from campaigns import channels
    from tests.campaigns.smtp_receiver import SmtpReceiver

    payload = {
        "title": "Spring sale",
        "body": "20 off today",
        "url": "https://shop.example/s",
        "idempotency_key": "k-1",
    }
    with (
        SmtpReceiver() as smtp,
        override_settings(
            EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend", EMAIL_HOST="127.0.0.1", EMAIL_PORT=smtp.port
        ),
    ):
        sent = channels.send_email(channels.email_connection(), to="ann@example.com", payload=payload, delivery_id=7)
        refused = channels.send_email(
            channels.email_connection(), to="refuse@example.com", payload=payload, delivery_id=8
        )
        greylisted = channels.send_email(
            channels.email_connection(), to="greylist@example.com", payload=payload, delivery_id=9
        )
        busy = channels.send_email(channels.email_connection(), to="busy@example.com", payload=payload, delivery_id=10)
    assert sent.kind == channels.SENT
    assert (refused.kind, greylisted.kind, busy.kind) == (channels.FAILED, channels.RETRY, channels.RETRY)
    assert len(smtp.messages) == 1
    message = smtp.messages[0]
    assert message["To"] == "ann@example.com"
    assert message["Subject"] == "Spring sale"
    assert message["X-Idempotency-Key"] == "k-1"
