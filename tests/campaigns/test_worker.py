"""End to end with a real Celery worker and a real local HTTP gateway: holdout, pilot then
rollout, retry on 503, and no duplicate after the worker is killed mid-batch."""

import datetime as dt
import time
from collections import Counter
from decimal import Decimal

import pytest
from django.utils import timezone

from campaigns import services
from campaigns.models import Campaign, CampaignStatus, ChannelKind, Delivery
from tests.campaigns.receiver import Receiver
from tests.factories.campaigns import CampaignFactory, ChannelFactory, add_events, make_profiles

pytestmark = pytest.mark.worker


def _wait(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _settled(campaign, phase: str | None = None) -> bool:
    qs = Delivery.objects.filter(campaign=campaign, status__in=["pending", "sending"])
    if phase:
        qs = qs.filter(phase=phase)
    return not qs.exists()


def test_holdout_receives_nothing_and_everyone_else_exactly_once(celery_worker):
    make_profiles(200)
    with Receiver() as gateway:
        ChannelFactory(kind=ChannelKind.PUSH, url=gateway.url)
        campaign = CampaignFactory(holdout_percent=Decimal(20))
        services.launch_campaign(campaign_id=campaign.pk)
        _wait(lambda: Delivery.objects.filter(campaign=campaign).exists() and _settled(campaign), what="sends")
    holdout = set(campaign.assignments.filter(role="holdout").values_list("user_id", flat=True))
    assert len(holdout) == 40
    received = gateway.count_by_user()
    assert not holdout & set(received)
    assert len(received) == 160 and set(received.values()) == {1}
    variants = {r["variant"] for r in gateway.requests}
    assert variants == {"A", "B"}
    assert sum(1 for r in gateway.requests if r["variant"] == "A") == 80


def test_gateway_503_is_retried_with_backoff_until_sent(celery_worker):
    make_profiles(3)
    with Receiver(fail_first=4) as gateway:
        ChannelFactory(kind=ChannelKind.PUSH, url=gateway.url, backoff_base_seconds=0.2, backoff_max_seconds=0.5)
        campaign = CampaignFactory(holdout_percent=Decimal(0))
        services.launch_campaign(campaign_id=campaign.pk)
        _wait(lambda: Delivery.objects.filter(campaign=campaign, status="sent").count() == 3, what="retried sends")
    assert len(gateway.requests) == 7
    assert {len(keys) for keys in gateway.keys_per_user().values()} == {1}
    assert sum(Delivery.objects.filter(campaign=campaign).values_list("attempts", flat=True)) == 7


def test_pilot_goes_first_then_the_rollout_sends_the_chosen_variant_to_the_rest(celery_worker):
    make_profiles(100)
    with Receiver() as gateway:
        ChannelFactory(kind=ChannelKind.PUSH, url=gateway.url)
        campaign = CampaignFactory(holdout_percent=Decimal(10), pilot_percent=Decimal(20))
        services.launch_campaign(campaign_id=campaign.pk)
        _wait(lambda: Delivery.objects.filter(campaign=campaign).exists() and _settled(campaign), what="pilot")
        assert len(gateway.requests) == 20
        assert Campaign.objects.get(pk=campaign.pk).phase == "pilot"
        services.rollout_campaign(campaign_id=campaign.pk, variant_name="B", confirm=True)
        _wait(lambda: len(gateway.requests) == 90, what="rollout")
        _wait(lambda: _settled(campaign), what="rollout settled")
    rollout = [r for r in gateway.requests[20:]]
    assert {r["variant"] for r in rollout} == {"B"}
    assert len(gateway.count_by_user()) == 90


def _kill_mid_batch(celery_worker, campaign, gateway, after_posts: int) -> tuple[set[str], set[int]]:
    """Launch, SIGKILL the worker after `after_posts` posts, and return the idempotency keys the
    database had recorded as sent at the kill and the ids that were in flight."""
    services.launch_campaign(campaign_id=campaign.pk)
    _wait(lambda: len(gateway.requests) >= after_posts, what="first sends")
    celery_worker.kill()
    recorded = {
        str(k)
        for k in Delivery.objects.filter(campaign=campaign, sent_at__isnull=False).values_list(
            "idempotency_key", flat=True
        )
    }
    in_flight = set(
        Delivery.objects.filter(campaign=campaign, status="sending", posting_since__isnull=False).values_list(
            "id", flat=True
        )
    )
    return recorded, in_flight


def test_a_worker_killed_mid_batch_sends_again_only_what_was_in_flight(celery_worker, settings):
    make_profiles(600)
    with Receiver(delay=0.02) as gateway:
        ChannelFactory(kind=ChannelKind.PUSH, url=gateway.url)
        campaign = CampaignFactory(holdout_percent=Decimal(0))
        recorded, in_flight = _kill_mid_batch(celery_worker, campaign, gateway, after_posts=150)
        posted_before_restart = len(gateway.requests)
        # Sends are recorded as they return, not when the batch ends: most of what went out is known.
        assert len(recorded) >= posted_before_restart - len(in_flight) - 16
        # At most the worker's threads (8 per process, 2 processes) were posting.
        assert len(in_flight) <= 16
        celery_worker.start()
        # The beat sweeper's job: stuck `sending` rows back to pending, then queued again.
        services.sweep(stale_after=dt.timedelta(0), requeue_after=dt.timedelta(0))
        _wait(lambda: _settled(campaign), timeout=120, what="all sent after restart")
    assert Delivery.objects.filter(campaign=campaign, status="sent").count() == 600
    keys = gateway.keys_per_user()
    assert len(keys) == 600
    # A message interrupted after the POST is posted again under the same key, so the provider
    # shows it once; and nothing recorded as sent before the kill was posted again.
    assert {len(k) for k in keys.values()} == {1}
    reposted = [key for key, n in Counter(r["idempotency_key"] for r in gateway.requests).items() if n > 1]
    assert not set(reposted) & recorded
    assert len(reposted) <= len(in_flight)


def test_an_at_most_once_channel_marks_what_was_in_flight_unknown_instead_of_sending_it_again(celery_worker):
    make_profiles(400)
    with Receiver(delay=0.02) as gateway:
        ChannelFactory(kind=ChannelKind.PUSH, url=gateway.url, at_most_once=True)
        campaign = CampaignFactory(holdout_percent=Decimal(0))
        _recorded, in_flight = _kill_mid_batch(celery_worker, campaign, gateway, after_posts=100)
        celery_worker.start()
        report = services.sweep(stale_after=dt.timedelta(0), requeue_after=dt.timedelta(0))
        assert report["unknown"] == len(in_flight)
        _wait(lambda: _settled(campaign), timeout=120, what="the rest sent after restart")
    unknown = dict(Delivery.objects.filter(campaign=campaign, status="unknown").values_list("id", "reason"))
    # What was in flight at the kill is unknown, for that reason.
    assert in_flight <= set(unknown)
    assert {unknown[i] for i in in_flight} == {services.UNKNOWN_REASON}
    # Anything else unknown is a post whose answer did not come back (a timeout on a loaded
    # machine): by the same rule it is not posted again, and it says so.
    for reason in (unknown[i] for i in set(unknown) - in_flight):
        assert reason.startswith("OUTCOME_UNKNOWN: ") and reason != services.UNKNOWN_REASON
    assert Delivery.objects.filter(campaign=campaign, status="sent").count() == 400 - len(unknown)
    # Nothing was posted twice.
    assert set(Counter(r["idempotency_key"] for r in gateway.requests).values()) == {1}
    assert len(gateway.requests) <= 400


def test_the_most_common_campaign_one_message_no_holdout_no_pilot_reaches_everyone(celery_worker):
    make_profiles(50)
    with Receiver() as gateway:
        ChannelFactory(kind=ChannelKind.PUSH, url=gateway.url)
        campaign = CampaignFactory(holdout_percent=Decimal(0), variants=[("Only", 100)])
        services.launch_campaign(campaign_id=campaign.pk)
        _wait(lambda: len(gateway.requests) == 50, what="the sends")
        _wait(lambda: _settled(campaign), what="all recorded")
    assert set(gateway.count_by_user().values()) == {1}
    assert Delivery.objects.filter(campaign=campaign, status="sent").count() == 50
    assert Campaign.objects.get(pk=campaign.pk).phase == "full"


def test_auto_rollout_sends_the_significant_winner_after_the_pilot_window(celery_worker):
    make_profiles(400)
    with Receiver() as gateway:
        ChannelFactory(kind=ChannelKind.PUSH, url=gateway.url)
        campaign = CampaignFactory(
            holdout_percent=Decimal(20), pilot_percent=Decimal(50), auto_rollout=True, attribution_hours=1
        )
        services.launch_campaign(campaign_id=campaign.pk)
        _wait(lambda: Delivery.objects.filter(campaign=campaign).exists() and _settled(campaign), what="pilot")
        pilot = campaign.assignments.filter(role="pilot").select_related("variant")
        sent = dict(Delivery.objects.filter(campaign=campaign).values_list("user_id", "sent_at"))
        buyers = [
            (a.user_id, "order_paid", sent[a.user_id] + dt.timedelta(minutes=5)) for a in pilot if a.variant.name == "B"
        ]
        add_events(buyers[: int(len(buyers) * 0.6)], properties={"amount": "20.00"})
        assert services.end_pilot_if_due(campaign_id=campaign.pk, now=timezone.now() + dt.timedelta(hours=2))
        _wait(lambda: len(gateway.requests) == 200 + 120, what="rollout")
    campaign.refresh_from_db()
    assert campaign.winner.name == "B" and campaign.phase == "rollout"
    assert {r["variant"] for r in gateway.requests[200:]} == {"B"}
    assert campaign.status == CampaignStatus.RUNNING


def test_an_ingested_trigger_event_reaches_the_gateway_through_the_worker(celery_worker, make_api_client):
    import uuid

    make_profiles(2, prefix="cart")
    with Receiver() as gateway:
        ChannelFactory(kind=ChannelKind.PUSH, url=gateway.url)
        campaign = CampaignFactory(
            schedule_kind="trigger", trigger_event="cart_abandoned", delay_minutes=0, holdout_percent=Decimal(0)
        )
        services.launch_campaign(campaign_id=campaign.pk)
        event = {
            "event_id": str(uuid.uuid4()),
            "name": "cart_abandoned",
            "timestamp": timezone.now().isoformat(),
            "user_id": "cart00001",
        }
        response = make_api_client("events:write").post("/api/v1/events", {"events": [event]}, format="json")
        assert response.status_code == 200 and response.json()["accepted"] == 1
        _wait(lambda: len(gateway.requests) == 1, what="triggered send")
    assert gateway.requests[0]["user_id"] == "cart00001"
    assert Delivery.objects.get(campaign=campaign).phase == f"trigger:{event['event_id']}"


def test_a_gained_tag_reaches_the_gateway_through_the_sweeper_and_the_worker(celery_worker):
    from profiles import services as profile_services
    from tests.factories.campaigns import gain_tag

    members = make_profiles(40, prefix="churn")
    refusing = make_profiles(1, prefix="optout", push_opt_in=False)
    early = make_profiles(1, prefix="early")
    gain_tag("churn_warning", early)
    with Receiver() as gateway:
        ChannelFactory(kind=ChannelKind.PUSH, url=gateway.url)
        campaign = CampaignFactory(
            schedule_kind="trigger", trigger_tag="churn_warning", delay_minutes=60, holdout_percent=Decimal(25)
        )
        services.launch_campaign(campaign_id=campaign.pk)
        # Gained an hour ago (the delay has passed) by everyone but the last member, who gains it now.
        gain_tag("churn_warning", members[:-1] + refusing, ago=dt.timedelta(minutes=61))
        gain_tag("churn_warning", members[-1:])
        services.sweep()
        holdout = set(campaign.assignments.filter(role="holdout").values_list("user_id", flat=True))
        expected = {p.user_id for p in members[:-1]} - holdout
        assert holdout and expected
        _wait(lambda: len(gateway.requests) >= len(expected), what="tag-triggered sends")
        # Losing and regaining the tag, and more sweeps, send nothing more.
        profile_services.untag_profiles(tag_name="churn_warning", profile_ids=[p.pk for p in members])
        gain_tag("churn_warning", members[:-1], ago=dt.timedelta(minutes=61))
        services.sweep()
        services.sweep()
        time.sleep(2)
    received = gateway.count_by_user()
    assert set(received) == expected and set(received.values()) == {1}
    assert not set(received) & {refusing[0].user_id, early[0].user_id, members[-1].user_id}
    waiting = Delivery.objects.filter(campaign=campaign, profile=members[-1])
    if members[-1].user_id not in holdout:
        assert waiting.get().status == "pending" and waiting.get().not_before > timezone.now()
    assert not Delivery.objects.filter(campaign=campaign, profile=refusing[0]).exclude(status="skipped").exists()
