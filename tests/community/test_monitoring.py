"""Failures show where operators look: the health report lists failed score runs until a later
run of the month succeeds; the nightly jobs are beat schedules; late merges are followed."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from django_celery_beat.models import PeriodicTask

from community.models import Membership, ScoreRun
from community.services import follow_late_merges
from monitoring import selectors
from profiles.models import Profile
from tests.factories.community import CommunityGroupFactory, event, send

pytestmark = pytest.mark.django_db
TITLE = "failed contribution score run(s)"


def _section():
    return next(s for s in selectors.health_report().sections if s.title == TITLE)


def test_failed_score_run_is_on_the_health_report_until_the_month_succeeds():
    failed = ScoreRun.objects.create(
        month=date(2026, 5, 1),
        status=ScoreRun.Status.FAILED,
        error="NoWeights: all 0",
        requested_at=datetime(2026, 6, 1, 3, tzinfo=UTC),
    )
    ScoreRun.objects.create(month=date(2026, 4, 1), status=ScoreRun.Status.DONE)  # another month
    section = _section()
    assert section.count == 1 and section.items[0].reason == "NoWeights: all 0"
    ScoreRun.objects.create(
        month=failed.month, status=ScoreRun.Status.DONE, requested_at=failed.requested_at + timedelta(hours=1)
    )
    assert _section().count == 0


def test_nightly_jobs_are_scheduled_on_the_analytics_queue():
    tasks = dict(PeriodicTask.objects.filter(name__startswith="community:").values_list("task", "queue"))
    assert tasks == {
        "community.tasks.recompute_contribution_scores": "analytics",
        "community.tasks.recompute_pending_events": "analytics",
    }


def test_rows_left_on_a_profile_merged_meanwhile_move_to_the_survivor():
    group = CommunityGroupFactory(external_id="g")
    send(event("community_joined", datetime.now(tz=UTC) - timedelta(hours=1), user_id="old", group_id="g"))
    survivor = Profile.objects.create(user_id="survivor")
    # As a merge that committed after ingestion resolved "old" leaves it: merged, rows still there.
    Profile.objects.filter(user_id="old").update(merged_into=survivor)
    assert follow_late_merges() == 1
    assert Membership.objects.get(group=group).profile == survivor
