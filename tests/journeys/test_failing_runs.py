"""A run whose advance fails keeps its reason where operators look (the journey page, the API, the
health page), is logged, is tried again after a back-off, and can be retried at once; the other
runs go on meanwhile."""

from __future__ import annotations

import datetime as dt
import logging

import pytest
from django.urls import reverse
from django.utils import timezone

from access.models import AuditEntry
from campaigns.models import CampaignStatus
from journeys import services
from journeys.models import JourneyRun, RunStatus
from monitoring.selectors import health_report
from profiles.models import Profile
from tests.factories.campaigns import CampaignFactory, make_profiles

pytestmark = pytest.mark.django_db


@pytest.fixture
def broken():
    """A journey branching on a trait, launched, with one person whose stored traits are not an
    object (a corrupt row): their run cannot take the branch; the other person's can."""
    people = make_profiles(2)
    campaign = CampaignFactory(variants=[("A", 100)])
    variant = campaign.variants.get().pk
    services.set_steps(
        campaign=campaign,
        steps=[
            {"kind": "branch", "branch_on": "trait", "trait": "favourite_store", "trait_value": "north", "goto": 2},
            {"kind": "send", "variant": variant},
            {"kind": "send", "variant": variant},
        ],
    )
    t0 = timezone.now()
    services.launch_journey(campaign=campaign, now=t0)
    Profile.objects.filter(pk=people[0].pk).update(traits=["not", "an", "object"])
    return campaign, people, t0


def _run(campaign, profile) -> JourneyRun:
    return JourneyRun.objects.get(campaign=campaign, profile=profile)


def test_a_failing_run_keeps_its_reason_backs_off_and_does_not_hold_back_the_others(broken, caplog):
    campaign, (bad, good), t0 = broken
    with caplog.at_level(logging.ERROR, "journeys.services"):
        services.advance_due(now=t0)
    run = _run(campaign, bad)
    assert (run.status, run.position, run.failures) == (RunStatus.ACTIVE, 0, 1)
    assert "AttributeError" in run.last_error and run.failed_at == t0
    assert run.wake_at == t0 + dt.timedelta(minutes=1)
    assert f"Advancing journey run {run.pk} (step 0) failed" in caplog.text
    assert _run(campaign, good).status == RunStatus.COMPLETED  # the other run went on

    services.advance_due(now=t0 + dt.timedelta(seconds=30))  # within its back-off: left alone
    assert _run(campaign, bad).failures == 1
    services.advance_due(now=t0 + dt.timedelta(minutes=1))
    run = _run(campaign, bad)
    assert run.failures == 2 and run.wake_at == t0 + dt.timedelta(minutes=3)  # 1, then 2 minutes
    assert [services.failure_backoff(n).total_seconds() / 60 for n in (1, 2, 3, 7, 8, 30)] == [1, 2, 4, 60, 60, 60]


def test_operators_see_the_failing_runs_with_their_reason_and_retry_them(broken, api_client, client, make_staff):
    campaign, (bad, _good), t0 = broken
    services.advance_due(now=t0)
    run_id = _run(campaign, bad).pk

    failing = api_client.get(f"/api/v1/campaigns/{campaign.pk}/journey").json()["failing"]
    assert failing["runs"] == 1
    (shown,) = failing["latest"]
    assert (shown["run"], shown["user_id"], shown["position"], shown["failures"]) == (run_id, bad.user_id, 0, 1)
    assert "AttributeError" in shown["last_error"]

    client.force_login(make_staff("Operations"))
    html = client.get(reverse("admin:journeys_journey_steps", args=[campaign.pk])).content.decode()
    assert 'id="journey-failing"' in html and "1 run fails to advance" in html and 'id="journey-retry"' in html
    assert "AttributeError" in html

    section = next(s for s in health_report().sections if s.title.startswith("journey(s) with runs"))
    assert section.count == 1 and section.items[0].id == campaign.pk
    assert section.items[0].reason.startswith("1 run(s) failing; the newest: AttributeError")

    # Mended, the run is tried again now rather than after its back-off, and its reason clears.
    Profile.objects.filter(pk=bad.pk).update(traits={"favourite_store": "north"})
    reply = api_client.post(f"/api/v1/campaigns/{campaign.pk}/journey/retry")
    assert reply.status_code == 202 and reply.json() == {"retried": 1}
    assert AuditEntry.objects.filter(action="journeys.failed_runs_retried", object_id=str(campaign.pk)).exists()
    services.advance_runs(run_ids=[run_id])
    run = JourneyRun.objects.get(pk=run_id)
    assert (run.status, run.failures, run.last_error) == (RunStatus.COMPLETED, 0, "")
    assert api_client.get(f"/api/v1/campaigns/{campaign.pk}/journey").json()["failing"] == {"runs": 0, "latest": []}
    assert not any(s.title.startswith("journey(s) with runs") and s.count for s in health_report().sections)


def test_a_paused_journeys_runs_are_not_retried(broken, api_client):
    campaign, _people, t0 = broken
    services.advance_due(now=t0)
    campaign.__class__.objects.filter(pk=campaign.pk).update(status=CampaignStatus.PAUSED)
    reply = api_client.post(f"/api/v1/campaigns/{campaign.pk}/journey/retry")
    assert reply.status_code == 409 and reply.json()["reason"] == "INVALID_STATUS"
    assert "once it runs" in reply.json()["detail"]
    assert JourneyRun.objects.get(campaign=campaign, failures=1).wake_at > timezone.now()  # untouched


def test_the_admin_retry_needs_the_send_permission(broken, client, make_staff):
    campaign, _people, t0 = broken
    services.advance_due(now=t0)
    client.force_login(make_staff("Analyst"))
    url = reverse("admin:journeys_journey_retry", args=[campaign.pk])
    assert client.post(url).status_code == 403
    page = client.get(reverse("admin:journeys_journey_steps", args=[campaign.pk]))
    html = page.content.decode()
    assert page.status_code == 200 and 'id="journey-failing"' in html and 'id="journey-retry"' not in html
    client.force_login(make_staff("Operations", username="olga"))
    assert client.post(url).status_code == 302
    assert JourneyRun.objects.get(campaign=campaign, failures=1).wake_at <= timezone.now()
