"""Campaigns that send a material: each person gets their own rendering through the real
channel; one whose message cannot be made fails alone with the reason; the history of the
material counts its sends."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.test import override_settings

from campaigns import services, validation
from campaigns.models import CampaignStatus, ChannelKind, DailySendCount, Delivery, Variant
from coupons.models import Coupon, CouponStatus
from materials import selectors
from profiles.models import Profile
from tests.campaigns.receiver import Receiver
from tests.campaigns.smtp_receiver import SmtpReceiver
from tests.factories.campaigns import CampaignFactory, ChannelFactory, make_profiles
from tests.factories.coupons import CouponRuleFactory
from tests.factories.materials import MaterialFactory, MaterialVersionFactory

pytestmark = pytest.mark.django_db


def _campaign_with(version, **fields):
    campaign = CampaignFactory(
        status=CampaignStatus.RUNNING, holdout_percent=Decimal(0), variants=[("A", 100)], **fields
    )
    Variant.objects.filter(campaign=campaign).update(material_version=version, title="", body="", url="")
    return campaign


def _run(campaign) -> list[int]:
    services.start_send(campaign_id=campaign.pk)
    ids = list(Delivery.objects.filter(campaign=campaign).values_list("id", flat=True))
    services.deliver(delivery_ids=ids)
    return ids


def test_each_person_gets_their_own_message_and_one_without_a_value_fails_alone(client):
    people = make_profiles(5)
    for i, p in enumerate(people):
        Profile.objects.filter(pk=p.pk).update(name=f"Ann{i}", city="" if i == 2 else f"City{i}")
    rule = CouponRuleFactory(value=Decimal("15.00"))
    version = MaterialVersionFactory(
        approved=True,
        material=MaterialFactory(channel="push"),
        title="Hi {{ name }}",
        body="{{ city }}: {{ coupon_amount }} off with {{ coupon_code }} {{ link }}",
        url="https://shop.example.com/offer",
        defaults={},
    )
    with Receiver() as gateway:
        ChannelFactory(kind=ChannelKind.PUSH, url=gateway.url)
        campaign = _campaign_with(version)
        Variant.objects.filter(campaign=campaign).update(coupon_rule_id=rule.pk)
        _run(campaign)
    by_user = {r["user_id"]: r for r in gateway.requests}
    assert len(by_user) == 4 and people[2].user_id not in by_user
    for i, p in enumerate(people):
        if i == 2:
            continue
        body = by_user[p.user_id]
        delivery = Delivery.objects.get(pk=body["delivery_id"])
        assert body["title"] == f"Hi Ann{i}"
        assert body["body"].startswith(f"City{i}: 15.00 off with {delivery.coupon_code} http")
        assert "/api/v1/t/c/" in body["url"] and body["url"] in body["body"]
        assert delivery.status == "sent"
    failed = Delivery.objects.get(campaign=campaign, profile=people[2])
    assert failed.status == "failed"
    assert failed.reason == "RENDER_FAILED: MISSING_VALUE: no value for 'city' and no default"
    # Its coupon went back to the budget; the others' are live.
    assert Coupon.objects.get(code=failed.coupon_code).status == CouponStatus.REVOKED
    # The tracked link leads to the material's URL.
    sent = Delivery.objects.filter(campaign=campaign, status="sent").first()
    link = by_user[sent.user_id]["url"]
    response = client.get(link[link.index("/api/v1/t/c/") :])
    assert response.status_code == 302 and response["Location"] == "https://shop.example.com/offer"


def test_a_person_over_the_sms_limit_fails_alone(settings):
    settings.OPSLOOP_SMS_MAX_SEGMENTS = 1
    people = make_profiles(3, sms_opt_in=True, phone="+8613800000000", name="Bo")
    Profile.objects.filter(pk=people[0].pk).update(name="李" * 80)
    version = MaterialVersionFactory(
        approved=True, material=MaterialFactory(channel="sms"), title="", body="Hi {{ name }}", defaults={}
    )
    with Receiver() as gateway:
        ChannelFactory(kind=ChannelKind.SMS, url=gateway.url)
        campaign = _campaign_with(version, channel=ChannelKind.SMS)
        _run(campaign)
    assert len(gateway.requests) == 2
    failed = Delivery.objects.get(campaign=campaign, profile=people[0])
    assert failed.status == "failed" and failed.reason.startswith("RENDER_FAILED: LIMIT: body: The SMS is 83 UCS-2")


def test_email_html_is_rendered_escaped_and_tracked():
    (person,) = make_profiles(1, email_opt_in=True, email="ann@example.com")
    Profile.objects.filter(pk=person.pk).update(name="<Ann & co>")
    version = MaterialVersionFactory(
        approved=True,
        material=MaterialFactory(channel="email"),
        title="For {{ name }}",
        body="Hello {{ name }}",
        html="<h1>Hello {{ name }}</h1>",
        defaults={},
    )
    with (
        SmtpReceiver() as smtp,
        override_settings(
            EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend", EMAIL_HOST="127.0.0.1", EMAIL_PORT=smtp.port
        ),
    ):
        campaign = _campaign_with(version, channel=ChannelKind.EMAIL)
        _run(campaign)
    (message,) = smtp.messages
    assert message["Subject"] == "For <Ann & co>"
    parts = {p.get_content_type(): p.get_payload(decode=True).decode() for p in message.walk() if not p.is_multipart()}
    assert parts["text/plain"].startswith("Hello <Ann & co>")
    assert parts["text/html"].startswith("<h1>Hello &lt;Ann &amp; co&gt;</h1><img src=")


def test_a_webhook_material_posts_its_json_object():
    make_profiles(2, name="Cy")
    version = MaterialVersionFactory(
        approved=True,
        material=MaterialFactory(channel="webhook"),
        title="",
        body='{"greeting": "Hi {{ name }}", "tags": {{ tags | tojson }}}',
        defaults={},
    )
    with Receiver() as gateway:
        ChannelFactory(kind=ChannelKind.WEBHOOK, url=gateway.url)
        campaign = _campaign_with(version, channel=ChannelKind.WEBHOOK)
        _run(campaign)
    assert sorted(r["data"]["tags"] for r in gateway.requests) == [["campaign-test"], ["campaign-test"]]
    assert [r["data"]["greeting"] for r in gateway.requests] == ["Hi Cy", "Hi Cy"]


def test_launch_refuses_a_draft_material_and_one_of_another_channel():
    draft = MaterialVersionFactory(material=MaterialFactory(channel="push"))
    campaign = CampaignFactory(variants=[("A", 100)])
    Variant.objects.filter(campaign=campaign).update(material_version=draft)
    assert "is a draft" in validation.launch_problems(campaign)["variants"]
    sms = MaterialVersionFactory(approved=True, material=MaterialFactory(channel="sms"))
    Variant.objects.filter(campaign=campaign).update(material_version=sms)
    assert "is a sms material, not push" in validation.launch_problems(campaign)["variants"]


def test_the_api_refuses_a_variant_with_a_material_of_another_channel(api_client):
    from tests.factories.campaigns import SegmentFactory

    sms = MaterialVersionFactory(approved=True, material=MaterialFactory(channel="sms"))
    body = {
        "name": "c",
        "segment": SegmentFactory().pk,
        "channel": "push",
        "variants": [{"name": "A", "material_version": sms.pk}],
    }
    response = api_client.post("/api/v1/campaigns", body, format="json")
    assert response.status_code == 400 and "not push" in response.json()["variants"][0]
    body["channel"] = "sms"
    response = api_client.post("/api/v1/campaigns", body, format="json")
    assert response.status_code == 201 and response.json()["variants"][0]["material_version"] == sms.pk


def test_the_history_counts_sends_opens_and_clicks_per_campaign(api_client):
    make_profiles(20, name="Di", city="Wuhan")
    version = MaterialVersionFactory(approved=True, material=MaterialFactory(channel="push"), defaults={})
    with Receiver() as gateway:
        ChannelFactory(kind=ChannelKind.PUSH, url=gateway.url)
        campaign = CampaignFactory(status=CampaignStatus.RUNNING, holdout_percent=Decimal(20), variants=[("A", 100)])
        Variant.objects.filter(campaign=campaign).update(material_version=version)
        _run(campaign)
    sent = list(Delivery.objects.filter(campaign=campaign, status="sent").order_by("id"))
    assert len(sent) == len(gateway.requests) > 0
    services.record_receipts(
        receipts=[{"delivery_id": d.pk, "status": "opened", "at": d.sent_at} for d in sent[:3]]
        + [{"delivery_id": sent[0].pk, "status": "clicked", "at": sent[0].sent_at}]
    )
    (row,) = selectors.material_history(version.material)
    assert (row["campaign"], row["variant"], row["version"]) == (campaign.pk, "A", version.number)
    assert (row["sent"], row["opened"], row["clicked"]) == (len(sent), 3, 1)
    assert row["had_holdout"] is True and row["uplift_vs_holdout"] == 0.0
    response = api_client.get(f"/api/v1/materials/{version.material_id}/history")
    assert response.status_code == 200 and response.json()[0]["sent"] == len(sent)


def test_a_template_that_raises_for_one_person_fails_that_message_and_sends_the_rest():
    # Passes the checks at save (the sample traits are empty), raises KeyError for a person
    # whose traits lack `plan`: that message fails with the reason and gives its coupon back.
    people = make_profiles(3)
    Profile.objects.filter(pk=people[0].pk).update(traits={"tier": "x"})
    Profile.objects.filter(pk=people[1].pk).update(traits={"plan": "gold"})
    rule = CouponRuleFactory(value=Decimal("5.00"))
    body = '{% if traits %}{{ "%(plan)s" % traits }}{% endif %}ok {{ coupon_code }}'
    version = MaterialVersionFactory(
        approved=True, material=MaterialFactory(channel="push"), title="Hi", body=body, defaults={}
    )
    with Receiver() as gateway:
        ChannelFactory(kind=ChannelKind.PUSH, url=gateway.url)
        campaign = _campaign_with(version)
        Variant.objects.filter(campaign=campaign).update(coupon_rule_id=rule.pk)
        _run(campaign)
    assert sorted(r["user_id"] for r in gateway.requests) == sorted([people[1].user_id, people[2].user_id])
    failed = Delivery.objects.get(campaign=campaign, profile=people[0])
    assert failed.status == "failed" and failed.reason.startswith("RENDER_FAILED: KeyError")
    assert Coupon.objects.get(code=failed.coupon_code).status == CouponStatus.REVOKED
    assert Delivery.objects.filter(campaign=campaign, status="sent").count() == 2
    assert not Delivery.objects.filter(campaign=campaign, status__in=["pending", "sending"]).exists()


def test_a_newline_in_a_name_reaches_the_email_subject_as_a_space():
    (person,) = make_profiles(1, email_opt_in=True, email="ann@example.com")
    Profile.objects.filter(pk=person.pk).update(name="Ann\nBcc: eve@example.com")
    version = MaterialVersionFactory(
        approved=True, material=MaterialFactory(channel="email"), title="For {{ name }}", body="Hi", defaults={}
    )
    with (
        SmtpReceiver() as smtp,
        override_settings(
            EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend", EMAIL_HOST="127.0.0.1", EMAIL_PORT=smtp.port
        ),
    ):
        campaign = _campaign_with(version, channel=ChannelKind.EMAIL)
        _run(campaign)
    (message,) = smtp.messages
    assert message["Subject"] == "For Ann Bcc: eve@example.com" and message["Bcc"] is None
    assert Delivery.objects.get(campaign=campaign).status == "sent"


def test_a_message_that_cannot_be_rendered_gives_back_its_frequency_cap_slot_and_its_coupon():
    people = make_profiles(3)
    for i, p in enumerate(people):
        Profile.objects.filter(pk=p.pk).update(name=f"Ann{i}", city="" if i == 1 else f"City{i}")
    rule = CouponRuleFactory(value=Decimal("5.00"))
    version = MaterialVersionFactory(
        approved=True, material=MaterialFactory(channel="push"), title="Hi {{ name }}", body="{{ city }}", defaults={}
    )
    with Receiver() as gateway:
        ChannelFactory(kind=ChannelKind.PUSH, url=gateway.url)
        campaign = _campaign_with(version, frequency_cap_per_day=1)
        Variant.objects.filter(campaign=campaign).update(coupon_rule_id=rule.pk)
        _run(campaign)
    assert len(gateway.requests) == 2
    failed = Delivery.objects.get(campaign=campaign, profile=people[1])
    assert failed.status == "failed" and failed.reason.startswith("RENDER_FAILED: MISSING_VALUE")
    assert failed.cap_day is None
    assert Coupon.objects.get(code=failed.coupon_code).status == CouponStatus.REVOKED
    counts = dict(DailySendCount.objects.values_list("profile_id", "count"))
    # The two sent messages hold their slot; the one that could not be made holds none.
    assert counts[people[0].pk] == 1 and counts[people[2].pk] == 1
    assert counts.get(people[1].pk, 0) == 0
    # So the person's one message of the day is still free for another campaign.
    other = CampaignFactory(
        status=CampaignStatus.RUNNING, holdout_percent=Decimal(0), variants=[("B", 100)], frequency_cap_per_day=1
    )
    with Receiver() as gateway:
        ChannelFactory(kind=ChannelKind.PUSH, url=gateway.url)
        _run(other)
    got = {r["user_id"] for r in gateway.requests}
    assert people[1].user_id in got and people[0].user_id not in got


def test_the_history_counts_a_sent_campaign_live_and_a_completed_one_frozen():
    import datetime as dt

    from django.utils import timezone

    from campaigns.models import Assignment, Campaign, CampaignPhase
    from tests.factories.campaigns import add_events

    make_profiles(10)
    version = MaterialVersionFactory(approved=True, material=MaterialFactory(channel="push"), defaults={})
    campaign = _campaign_with(version)
    services.start_send(campaign_id=campaign.pk)
    an_hour_ago = timezone.now() - dt.timedelta(hours=1)
    Delivery.objects.filter(campaign=campaign).update(status="sent", sent_at=an_hour_ago)
    Assignment.objects.filter(campaign=campaign).update(assigned_at=an_hour_ago)
    Campaign.objects.filter(pk=campaign.pk).update(phase=CampaignPhase.FULL)
    assert services.sweep()["sent"] == 1
    users = list(campaign.assignments.values_list("user_id", flat=True))
    # Conversions after the last send, while the attribution window is open.
    add_events([(u, "order_paid", timezone.now() - dt.timedelta(minutes=5)) for u in users[:4]])

    (row,) = selectors.material_history(version.material)
    assert row["campaign_status"] == CampaignStatus.SENT and row["converted"] == 4

    Campaign.objects.filter(pk=campaign.pk).update(
        sent_at=timezone.now() - dt.timedelta(hours=campaign.attribution_hours, minutes=90)
    )
    assert services.close_attribution_windows()["completed"] == 1
    # After completion the frozen results hold, whatever arrives later.
    add_events([(u, "order_paid", timezone.now() - dt.timedelta(minutes=1)) for u in users[4:]])
    (row,) = selectors.material_history(version.material)
    assert row["campaign_status"] == CampaignStatus.COMPLETED and row["converted"] == 4


def test_a_message_posted_before_keeps_its_cap_slot_and_coupon_when_its_retry_cannot_be_rendered():
    (person,) = make_profiles(1)
    Profile.objects.filter(pk=person.pk).update(city="Paris")
    rule = CouponRuleFactory(value=Decimal("5.00"))
    version = MaterialVersionFactory(
        approved=True, material=MaterialFactory(channel="push"), title="Hi", body="{{ city }}", defaults={}
    )
    with Receiver() as gateway:
        ChannelFactory(kind=ChannelKind.PUSH, url=gateway.url)
        campaign = _campaign_with(version, frequency_cap_per_day=1)
        Variant.objects.filter(campaign=campaign).update(coupon_rule_id=rule.pk)
        (delivery_id,) = _run(campaign)
        assert len(gateway.requests) == 1
        # The post went out but no answer came (a timeout): the message is retried, and by then
        # the person's city is gone, so the retry cannot be rendered.
        Delivery.objects.filter(pk=delivery_id).update(status="pending", sent_at=None, delivered_at=None, lease=None)
        Profile.objects.filter(pk=person.pk).update(city="")
        services.deliver(delivery_ids=[delivery_id])
    failed = Delivery.objects.get(pk=delivery_id)
    assert failed.status == "failed" and failed.reason.startswith("RENDER_FAILED: MISSING_VALUE")
    assert failed.attempts == 1 and failed.cap_day is not None
    assert DailySendCount.objects.get(profile_id=person.pk).count == 1
    assert Coupon.objects.get(code=failed.coupon_code).status != CouponStatus.REVOKED
