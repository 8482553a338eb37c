"""Workers advancing the same journey at once, and a goal event arriving while they do, on the
real PostgreSQL: each person still gets at most one message per step, and an exited person no
message still pending."""

from __future__ import annotations

import datetime as dt
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import Count
from django.utils import timezone

from campaigns.models import Delivery
from journeys import services
from journeys.models import JourneyRun, RunStatus
from tests.factories.campaigns import CampaignFactory, make_profiles

pytestmark = pytest.mark.django_db(transaction=True)
WORKERS = 6


def _at_once(calls):
    barrier = threading.Barrier(len(calls))

    def run(call):
        barrier.wait()
        try:
            return call()
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(run, calls))


def test_workers_advancing_together_send_each_step_once_per_person(monkeypatch):
    # The tasks the services queue on commit (the first steps, the step sends) are recorded, not
    # queued: a worker left running by an earlier test of the session would otherwise advance the
    # runs before these advancers do, and they would race four workers instead of one.
    queued: list[str] = []
    monkeypatch.setattr(services, "publish", lambda what, task, **kw: queued.append(task.name) or True)
    people = make_profiles(120)
    campaign = CampaignFactory(variants=[("A", 50), ("B", 50)], holdout_percent=Decimal(0))
    a, b = campaign.variants.order_by("position").values_list("pk", flat=True)
    services.set_steps(
        campaign=campaign,
        steps=[{"kind": "send", "variant": a}, {"kind": "wait", "wait_minutes": 5}, {"kind": "send", "variant": b}],
    )
    t0 = timezone.now()
    assert services.launch_journey(campaign=campaign, now=t0) == len(people)
    assert queued == ["journeys.tasks.advance_journeys"]
    moved = _at_once([lambda: services.advance_due(now=t0, limit=7) for _ in range(WORKERS)])
    # SKIP LOCKED shares the runs: together they moved each once.
    assert sum(moved) == len(people)
    later = t0 + dt.timedelta(minutes=6)
    # A goal event for the first ten people lands while the workers take the second step.
    buyers = [p.user_id for p in people[:10]]
    calls = [lambda: services.advance_due(now=later, limit=7) for _ in range(WORKERS)]
    calls.append(lambda: services.exit_runs(campaign_id=campaign.pk, user_ids=buyers, reason="EXITED: order_paid"))
    _at_once(calls)
    per_step = Delivery.objects.filter(campaign=campaign).values("profile", "phase").annotate(n=Count("id"))
    assert per_step and max(row["n"] for row in per_step) == 1
    # No buyer has a message left to send; everyone else got both steps.
    assert not Delivery.objects.filter(campaign=campaign, user_id__in=buyers, status="pending").exists()
    others = Delivery.objects.filter(campaign=campaign).exclude(user_id__in=buyers)
    assert others.count() == 2 * (len(people) - len(buyers))
    assert JourneyRun.objects.filter(campaign=campaign, status=RunStatus.COMPLETED).count() >= len(people) - len(buyers)
