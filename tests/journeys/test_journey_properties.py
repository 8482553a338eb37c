"""Whatever the steps (drawn from every kind, with waits, timeouts and jumps back and forth),
advancing a journey through time never messages a person twice for one step, never sends a
step's message to someone who did not reach it, and leaves every run either finished or
waiting for a later time."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
from django.db.models import Count
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaigns.models import Delivery
from journeys import services
from journeys.models import JourneyRun, RunStatus, StepVisit
from tests.factories.campaigns import CampaignFactory, add_events, make_profiles

pytestmark = pytest.mark.django_db
_ids = itertools.count()


@st.composite
def journeys(draw):
    n = draw(st.integers(min_value=1, max_value=6))
    steps = []
    for _ in range(n):
        kind = draw(st.sampled_from(["send", "wait", "wait_event", "branch"]))
        goto = draw(st.integers(min_value=0, max_value=n))
        if kind == "send":
            steps.append({"kind": "send", "variant": draw(st.sampled_from(["A", "B"]))})
        elif kind == "wait":
            steps.append({"kind": "wait", "wait_minutes": draw(st.integers(min_value=1, max_value=120))})
        elif kind == "wait_event":
            steps.append(
                {
                    "kind": "wait_event",
                    "event": "app_open",
                    "wait_minutes": draw(st.integers(min_value=1, max_value=120)),
                    "goto": draw(st.one_of(st.none(), st.just(goto))),
                }
            )
        else:
            on = draw(st.sampled_from(["tag", "event", "trait"]))
            steps.append(
                {
                    "kind": "branch",
                    "branch_on": on,
                    "tag": "campaign-test",
                    "event": "app_open",
                    "trait": "city",
                    "trait_value": "X",
                    "goto": goto,
                }
            )
    ticks = draw(st.lists(st.integers(min_value=0, max_value=90), min_size=1, max_size=6))
    opens = draw(st.lists(st.booleans(), min_size=3, max_size=3))
    return steps, ticks, opens


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(spec=journeys())
def test_any_journey_sends_at_most_once_per_person_and_step(spec):
    steps, ticks, opens = spec
    people = make_profiles(3, prefix=f"j{next(_ids)}-")
    campaign = CampaignFactory(variants=[("A", 50), ("B", 50)])
    variants = dict(campaign.variants.values_list("name", "pk"))
    try:
        services.set_steps(campaign=campaign, steps=[{**s, "variant": variants.get(s.get("variant"))} for s in steps])
    except services.errors.InvalidSteps as refused:
        # The only refusal of these drawn steps: a loop with no wait on the way.
        assert "without a wait" in str(refused)
        return
    now = timezone.now()
    services.launch_journey(campaign=campaign, now=now)
    opened = [p for p, o in zip(people, opens, strict=True) if o]
    add_events([(p.user_id, "app_open", now + dt.timedelta(minutes=1)) for p in opened])
    for minutes in ticks:
        now += dt.timedelta(minutes=minutes)
        services.advance_due(now=now)
        services.advance_due(now=now)  # a second worker, or a redelivered task
    deliveries = Delivery.objects.filter(campaign=campaign)
    assert not deliveries.values("profile", "phase").annotate(n=Count("id")).filter(n__gt=1).exists()
    reached = {(v.run.profile_id, f"step:{v.step_id}") for v in StepVisit.objects.filter(run__campaign=campaign)}
    assert set(deliveries.values_list("profile_id", "phase")) <= reached
    for run in JourneyRun.objects.filter(campaign=campaign):
        assert run.status == RunStatus.COMPLETED or (run.status == RunStatus.ACTIVE and run.wake_at > now)
