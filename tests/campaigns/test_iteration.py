"""Triggered sends, feedback tags and the next iteration."""

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from campaigns import services
from campaigns.models import Campaign, CampaignStatus, Delivery
from profiles.models import ProfileTag
from tests.factories.campaigns import CampaignFactory, SegmentFactory, add_events, make_profiles
from tracking.hooks import StoredEvent, notify_ingested

pytestmark = pytest.mark.django_db


def test_trigger_event_queues_a_delayed_delivery_for_segment_members_only(django_capture_on_commit_callbacks):
    make_profiles(3, prefix="m")
    make_profiles(1, prefix="outsider", tag=None)
    campaign = CampaignFactory(
        status=CampaignStatus.RUNNING,
        schedule_kind="trigger",
        trigger_event="cart_abandoned",
        delay_minutes=30,
        holdout_percent=Decimal(0),
    )
    now = timezone.now()
    events = [
        StoredEvent(i, f"00000000-0000-0000-0000-00000000000{i}", "cart_abandoned", "behavior", now, uid, None, {})
        for i, uid in enumerate(["m00000", "m00001", "outsider00000"], start=1)
    ]
    with django_capture_on_commit_callbacks() as callbacks:
        notify_ingested(events)
    assert len(callbacks) == 1
    # What the queued task does, run here directly:
    services.handle_triggers(items=[[campaign.pk, e.user_id, e.event_id, e.timestamp.isoformat()] for e in events])
    deliveries = Delivery.objects.filter(campaign=campaign)
    assert set(deliveries.values_list("user_id", flat=True)) == {"m00000", "m00001"}
    for d in deliveries:
        assert d.not_before == now + dt.timedelta(minutes=30)
    services.handle_triggers(items=[[campaign.pk, "m00000", events[0].event_id, now.isoformat()]])
    assert deliveries.count() == 2


def test_feedback_tags_responders_and_fatigued_recipients_and_the_cap_uses_them():
    profiles = make_profiles(6)
    segment = SegmentFactory()
    sent_at = timezone.now() - dt.timedelta(days=5)
    for _ in range(3):
        c = CampaignFactory(status=CampaignStatus.RUNNING, holdout_percent=Decimal(0), segment=segment)
        services.start_send(campaign_id=c.pk)
        Delivery.objects.filter(campaign=c).update(status="sent", sent_at=sent_at)
    Delivery.objects.filter(campaign=c, user_id="p00000").update(clicked_at=sent_at)
    add_events([("p00001", "order_paid", sent_at + dt.timedelta(hours=1))])
    services.mark_sent(campaign_id=c.pk)
    services.apply_feedback(campaign_id=c.pk)
    tagged = lambda name: set(  # noqa: E731
        ProfileTag.objects.filter(tag__name=name).values_list("profile__user_id", flat=True)
    )
    assert tagged("responds_to_push") == {"p00000", "p00001"}
    assert tagged("push_fatigued") == {p.user_id for p in profiles[2:]}
    # Segments can target the tag, and the frequency cap keeps fatigued people quiet for a while.
    from campaigns.selectors import segment_size

    assert segment_size({"tag": "push_fatigued"}) == 4
    nxt = CampaignFactory(status=CampaignStatus.RUNNING, holdout_percent=Decimal(0), segment=segment)
    services.start_send(campaign_id=nxt.pk)
    ids = list(Delivery.objects.filter(campaign=nxt).values_list("id", flat=True))
    services.deliver(delivery_ids=ids)
    assert Delivery.objects.filter(campaign=nxt, reason="FATIGUED").count() == 4


def test_clone_makes_the_winner_the_new_control_of_the_next_iteration(api_client):
    make_profiles(10)
    campaign = CampaignFactory(status=CampaignStatus.RUNNING, variants=[("A", 50), ("B", 50)])
    services.start_send(campaign_id=campaign.pk)
    campaign.winner = campaign.variants.get(name="B")
    campaign.save()
    services.mark_sent(campaign_id=campaign.pk)
    response = api_client.post(f"/api/v1/campaigns/{campaign.pk}/clone")
    assert response.status_code == 201
    clone = Campaign.objects.get(pk=response.json()["id"])
    assert clone.parent_id == campaign.pk and clone.iteration == 2 and clone.status == "draft"
    assert list(clone.variants.order_by("position").values_list("name", flat=True)) == ["B", "A"]
    draft = CampaignFactory()
    assert api_client.post(f"/api/v1/campaigns/{draft.pk}/clone").status_code == 409


def test_each_cron_run_sends_once_to_current_members_and_never_to_the_holdout():
    make_profiles(20)
    campaign = CampaignFactory(
        status=CampaignStatus.RUNNING, schedule_kind="cron", cron="0 9 * * *", holdout_percent=Decimal(10)
    )
    monday = timezone.now().replace(hour=9, minute=0, second=0, microsecond=0)
    assert services.run_recurring_send(campaign_id=campaign.pk, run_at=monday) == 18
    assert services.run_recurring_send(campaign_id=campaign.pk, run_at=monday) == 0
    make_profiles(10, prefix="new")
    assert services.run_recurring_send(campaign_id=campaign.pk, run_at=monday + dt.timedelta(days=1)) == 27
    holdout = set(campaign.assignments.filter(role="holdout").values_list("profile_id", flat=True))
    assert len(holdout) == 3
    assert not Delivery.objects.filter(campaign=campaign, profile_id__in=holdout).exists()


def test_sweep_starts_a_scheduled_campaign_when_its_time_comes(django_capture_on_commit_callbacks):
    campaign = CampaignFactory(
        status=CampaignStatus.SCHEDULED, schedule_kind="at", send_at=timezone.now() + dt.timedelta(minutes=5)
    )
    assert services.sweep()["started"] == 0
    Campaign.objects.filter(pk=campaign.pk).update(send_at=timezone.now() - dt.timedelta(seconds=1))
    with django_capture_on_commit_callbacks() as callbacks:
        assert services.sweep()["started"] == 1
    assert Campaign.objects.get(pk=campaign.pk).status == "running"
    assert callbacks


def test_channel_rate_limit_spaces_sends_through_redis():
    import time

    from campaigns import channels

    started = time.monotonic()
    for _ in range(10):
        assert channels.acquire_send_slot("bench-test-channel", 5)
    elapsed = time.monotonic() - started
    # A bucket of 5 with 5 tokens per second: the last 5 of 10 sends wait about a second.
    assert 0.8 <= elapsed <= 3.0
