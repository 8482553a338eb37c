"""The management commands: scores by hand, refusals with the reason, rebuild from events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from community.models import Membership, ScoreDimension, ScoreRun
from community.services import ensure_dimensions
from tests.factories.community import OperatorAccountFactory, event, send

pytestmark = pytest.mark.django_db


def test_score_contributions_scores_the_month_named():
    OperatorAccountFactory()
    out = StringIO()
    call_command("score_contributions", "--month", "2026-05", stdout=out)
    assert "Scores of 2026-05: 1 operator(s), 0 team(s)" in out.getvalue()
    assert ScoreRun.objects.get().status == ScoreRun.Status.DONE


def test_score_contributions_refuses_a_bad_month_and_reports_a_failed_run():
    with pytest.raises(CommandError, match="not a month as YYYY-MM"):
        call_command("score_contributions", "--month", "2026-13")
    OperatorAccountFactory()
    ensure_dimensions()
    ScoreDimension.objects.update(weight=0)
    with pytest.raises(CommandError, match="NoWeights"):
        call_command("score_contributions", "--month", "2026-05")
    assert ScoreRun.objects.get().status == ScoreRun.Status.FAILED


def test_rebuild_community_recomputes_membership_from_the_events():
    send(event("community_joined", datetime.now(tz=UTC) - timedelta(hours=1), user_id="u1", group_id="g"))
    Membership.objects.update(joins=99)
    out = StringIO()
    call_command("rebuild_community", stdout=out)
    assert "1 community event(s) applied." in out.getvalue()
    assert Membership.objects.get().joins == 1
