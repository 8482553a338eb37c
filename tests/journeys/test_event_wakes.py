"""A run waiting for an event moves on once that event is stored and committed, through a task,
not at the next minute's sweep (which stays as the safety net); and a journey step whose message
cannot be rendered gives back the person's frequency-cap slot, as a single send does."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from decimal import Decimal

import pytest
from django.utils import timezone

from campaigns import services as campaign_services
from campaigns.models import ChannelKind, DailySendCount, Delivery, Variant
from journeys import services
from journeys.models import JourneyRun, RunStatus
from profiles.models import Profile
from tests.campaigns.receiver import Receiver
from tests.factories.campaigns import CampaignFactory, ChannelFactory, make_profiles
from tests.factories.materials import MaterialFactory, MaterialVersionFactory


def _journey(steps, *, people, **fields):
    profiles = make_profiles(people)
    campaign = CampaignFactory(variants=[("A", 50), ("B", 50)], holdout_percent=Decimal(0), **fields)
    names = dict(campaign.variants.values_list("name", "pk"))
    services.set_steps(campaign=campaign, steps=[{**s, "variant": names.get(s.get("variant"))} for s in steps])
    return campaign, profiles


def _event(user_id: str, name: str) -> dict:
    return {
        "event_id": str(uuid.uuid4()),
        "name": name,
        "kind": "behavior",
        "timestamp": timezone.now().isoformat(),
        "user_id": user_id,
        "properties": {},
    }


WAIT_THEN_SEND = [
    {"kind": "wait_event", "event": "app_open", "wait_minutes": 120},
    {"kind": "send", "variant": "A"},
]


@pytest.mark.django_db
def test_the_awaited_event_moves_the_run_on_after_its_commit_without_a_sweep(
    api_client, monkeypatch, django_capture_on_commit_callbacks
):
    queued: list[tuple[str, list]] = []

    def run_now(what, task, *, args=None, **kwargs):
        queued.append((task.name, args))
        if task.name == "journeys.tasks.advance_runs":
            task.run(*(args or []))
        return True

    monkeypatch.setattr(services, "publish", run_now)
    campaign, people = _journey(WAIT_THEN_SEND, people=3)
    other, _ = _journey([{"kind": "wait_event", "event": "search", "wait_minutes": 120}], people=0)
    t0 = timezone.now() - dt.timedelta(seconds=5)
    services.launch_journey(campaign=campaign, now=t0)
    services.launch_journey(campaign=other, now=t0)
    services.advance_due(now=t0)
    waiting = JourneyRun.objects.get(campaign=campaign, profile=people[0])
    assert waiting.position == 0 and waiting.wake_at > timezone.now()
    queued.clear()
    with django_capture_on_commit_callbacks(execute=True):
        response = api_client.post(
            "/api/v1/events",
            {"events": [_event(people[0].user_id, "app_open"), _event(people[1].user_id, "search")]},
            format="json",
        )
    assert response.json()["accepted"] == 2
    assert [name for name, _args in queued][:1] == ["journeys.tasks.advance_runs"]
    # Only the run waiting for that event, of the person who did it, moved: now, not at its wake time.
    assert JourneyRun.objects.get(campaign=campaign, profile=people[0]).status == RunStatus.COMPLETED
    assert Delivery.objects.filter(campaign=campaign, profile=people[0]).count() == 1
    assert JourneyRun.objects.get(campaign=campaign, profile=people[1]).position == 0
    assert not Delivery.objects.filter(campaign=campaign).exclude(profile=people[0]).exists()


@pytest.mark.django_db
def test_without_the_task_the_sweep_still_moves_the_run_on(api_client, monkeypatch):
    monkeypatch.setattr(services, "publish", lambda *a, **k: False)  # the broker is down
    campaign, people = _journey(WAIT_THEN_SEND, people=1)
    t0 = timezone.now() - dt.timedelta(seconds=5)
    services.launch_journey(campaign=campaign, now=t0)
    services.advance_due(now=t0)
    api_client.post("/api/v1/events", {"events": [_event(people[0].user_id, "app_open")]}, format="json")
    assert JourneyRun.objects.get(campaign=campaign).position == 0
    services.advance_due(now=timezone.now() + services.EVENT_POLL)
    assert JourneyRun.objects.get(campaign=campaign).status == RunStatus.COMPLETED


def _wait_for(predicate, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
    return time.monotonic() - started


def test_with_a_real_worker_the_message_after_the_awaited_event_goes_out_at_once(celery_worker, api_client):
    with Receiver() as gateway:
        ChannelFactory(kind=ChannelKind.PUSH, url=gateway.url)
        campaign, people = _journey(WAIT_THEN_SEND, people=2)
        services.launch_journey(campaign=campaign)
        # The worker takes the first step (launch queues it): both runs now wait, for a minute at most.
        _wait_for(
            lambda: JourneyRun.objects.filter(campaign=campaign, wake_at__gt=timezone.now()).count() == 2,
            60,
            "the runs to wait",
        )
        api_client.post("/api/v1/events", {"events": [_event(people[0].user_id, "app_open")]}, format="json")
        took = _wait_for(lambda: len(gateway.requests) >= 1, 30, "the step's message")
    # Well before the sweep's minute, and no beat runs here: the event's task moved it.
    assert took < services.EVENT_POLL.total_seconds()
    assert [r["user_id"] for r in gateway.requests] == [people[0].user_id]
    assert JourneyRun.objects.get(campaign=campaign, profile=people[1]).position == 0


@pytest.mark.django_db
def test_a_journey_step_that_cannot_be_rendered_gives_back_the_frequency_cap_slot():
    version = MaterialVersionFactory(
        approved=True, material=MaterialFactory(channel="push"), title="Hi", body="{{ city }}", defaults={}
    )
    campaign, people = _journey([{"kind": "send", "variant": "A"}], people=2, frequency_cap_per_day=1)
    Variant.objects.filter(campaign=campaign).update(material_version=version, title="", body="", url="")
    Profile.objects.filter(pk=people[0].pk).update(city="Suzhou")
    Profile.objects.filter(pk=people[1].pk).update(city="")
    with Receiver() as gateway:
        ChannelFactory(kind=ChannelKind.PUSH, url=gateway.url)
        services.launch_journey(campaign=campaign)
        services.advance_due()
        campaign_services.deliver(delivery_ids=list(Delivery.objects.values_list("id", flat=True)))
    assert [r["user_id"] for r in gateway.requests] == [people[0].user_id]
    failed = Delivery.objects.get(campaign=campaign, profile=people[1])
    assert failed.status == "failed" and failed.reason.startswith("RENDER_FAILED") and failed.cap_day is None
    counts = dict(DailySendCount.objects.values_list("profile_id", "count"))
    assert counts[people[0].pk] == 1 and counts.get(people[1].pk, 0) == 0
