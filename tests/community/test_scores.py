"""Contribution scores: the dimensions measured from real rows, team normalisation, runs that
fail visibly and are retried."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group

from access.services import record_audit
from campaigns.models import Assignment, AssignmentRole
from community.errors import RunNotFailed
from community.models import ContributionScore, Dimension, ScoreDimension, ScoreRun
from community.selectors import score_inputs
from community.services import compute_contribution_scores, ensure_dimensions, retry_score_run
from tests.factories.campaigns import CampaignFactory
from tests.factories.community import (
    CampaignCreditFactory,
    CommunityGroupFactory,
    OperatorAccountFactory,
    OperatorFactory,
    event,
    send,
)
from tests.factories.crm import CustomerFactory, paid_order

pytestmark = pytest.mark.django_db

MONTH = date(2026, 5, 1)
IN_MONTH = datetime(2026, 5, 10, 12, tzinfo=UTC)
AS_OF = datetime(2026, 6, 2, tzinfo=UTC)


def _campaign_with_results(*, holdout_revenue: list[str], treated_revenue: list[str], launched: datetime):
    """A launched campaign whose holdout and variant A members bought the given amounts after
    their assignment (empty string: no order)."""
    campaign = CampaignFactory(variants=[("A", 100)], launched_at=launched)
    variant = campaign.variants.get()
    for role, amounts in ((AssignmentRole.HOLDOUT, holdout_revenue), (AssignmentRole.TEST, treated_revenue)):
        for i, amount in enumerate(amounts):
            p = CustomerFactory(user_id=f"c{campaign.pk}-{role}-{i}")
            Assignment.objects.create(
                campaign=campaign,
                profile=p,
                user_id=p.user_id,
                role=role,
                variant=None if role == AssignmentRole.HOLDOUT else variant,
                position=i,
                assigned_at=launched,
            )
            if amount:
                paid_order(p, amount, launched + timedelta(hours=2))
    return campaign


def test_campaign_dimension_is_revenue_above_the_holdout_not_attributed_revenue():
    alice, bob = OperatorFactory(username="alice"), OperatorFactory(username="bob")
    for op in (alice, bob):
        CommunityGroupFactory(operator=op)
    # Alice: holdout members bring 10.00 each, hers 15.00: 5.00 x 4 members above the holdout.
    a = _campaign_with_results(holdout_revenue=["10.00"] * 4, treated_revenue=["15.00"] * 4, launched=IN_MONTH)
    CampaignCreditFactory(campaign=a, operator=alice)
    # Bob's members spend more (30.00) but so does his holdout: no increment, credited through
    # the audit entry of his launch.
    b = _campaign_with_results(holdout_revenue=["30.00"] * 4, treated_revenue=["30.00"] * 4, launched=IN_MONTH)
    record_audit(action="campaigns.campaign_launched", obj=b, actor=bob)
    raw, sources = score_inputs(month=MONTH)
    assert raw[alice.pk][Dimension.CAMPAIGN_INCREMENTAL] == Decimal("20.00")
    assert raw[bob.pk][Dimension.CAMPAIGN_INCREMENTAL] == Decimal("0.00")
    [source] = sources[alice.pk][Dimension.CAMPAIGN_INCREMENTAL]
    assert source["campaign"] == a.pk and source["incremental_revenue"] == "20.00"
    assert source["incremental_conversions"] == 0  # everyone converted in both groups


def test_new_members_transactions_and_quality_per_operator():
    alice = OperatorFactory(username="alice")
    OperatorAccountFactory(external_id="acct-a", operator=alice)
    CommunityGroupFactory(external_id="grp-a", operator=alice)
    before = datetime(2026, 4, 20, tzinfo=UTC)
    send(
        event("community_contact_added", before, user_id="old", account_id="acct-a"),
        event("community_joined", before, user_id="old", group_id="grp-a"),
        event("community_contact_added", IN_MONTH, user_id="new", account_id="acct-a"),
        event("community_joined", IN_MONTH, user_id="new", group_id="grp-a"),
        event("community_message", IN_MONTH + timedelta(days=1), user_id="new", group_id="grp-a"),
        event("order_paid", IN_MONTH + timedelta(days=2), user_id="old", order_id="o1", amount="19.99"),
        event("order_paid", IN_MONTH + timedelta(days=3), user_id="new", order_id="o2", amount="0.01"),
        # Before the contact: not the operator's doing.
        event("order_paid", IN_MONTH - timedelta(days=1), user_id="new", order_id="o0", amount="100.00"),
        now=AS_OF,
    )
    raw, sources = score_inputs(month=MONTH)
    assert raw[alice.pk][Dimension.NEW_MEMBERS] == 1
    assert raw[alice.pk][Dimension.CONTACT_TRANSACTIONS] == Decimal("20.00")
    # 2 members at the month's end, 1 messaged, none in a healthy lifecycle stage yet: 50 x 1/2.
    assert raw[alice.pk][Dimension.COMMUNITY_QUALITY] == Decimal("25.00")
    assert sources[alice.pk][Dimension.COMMUNITY_QUALITY][0]["members"] == 2


def _operators_with_sales(team: str, amounts: list[str]) -> Group:
    group = Group.objects.create(name=team)
    for i, amount in enumerate(amounts):
        op = OperatorFactory(username=f"{team}-{i}")
        group.user_set.add(op)
        OperatorAccountFactory(external_id=f"{team}-acct-{i}", operator=op)
        send(
            event("community_contact_added", IN_MONTH, user_id=f"{team}-cust-{i}", account_id=f"{team}-acct-{i}"),
            event(
                "order_paid",
                IN_MONTH + timedelta(hours=1),
                user_id=f"{team}-cust-{i}",
                order_id=f"{team}-{i}",
                amount=amount,
            ),
            now=AS_OF,
        )
    return group


def test_a_team_of_2_and_a_team_of_20_performing_alike_score_alike():
    ensure_dimensions()
    ScoreDimension.objects.exclude(key=Dimension.CONTACT_TRANSACTIONS).update(weight=0)
    small = _operators_with_sales("small", ["10.00", "30.00"])
    big = _operators_with_sales("big", ["10.00", "30.00"] * 10)
    weak = _operators_with_sales("weak", ["5.00", "5.00", "5.00"])
    run = compute_contribution_scores(month=MONTH, now=AS_OF)
    assert run.status == ScoreRun.Status.DONE and (run.operators, run.teams) == (25, 3)
    teams = {s.team_id: s for s in ContributionScore.objects.filter(subject="team")}
    assert teams[small.pk].score == teams[big.pk].score > teams[weak.pk].score
    assert teams[small.pk].rank == teams[big.pk].rank == 1 and teams[weak.pk].rank == 3
    assert (teams[small.pk].members, teams[big.pk].members) == (2, 20)
    assert teams[big.pk].breakdown[Dimension.CONTACT_TRANSACTIONS]["raw"] == "20.00"
    operators = ContributionScore.objects.filter(subject="operator")
    assert (
        operators.count() == 25
        and operators.order_by("rank").first().breakdown["contact_transactions"]["raw"] == "30.00"
    )


def test_a_new_run_replaces_the_months_scores_and_keeps_other_months():
    OperatorAccountFactory(external_id="acct-x")
    compute_contribution_scores(month=MONTH, now=AS_OF)
    compute_contribution_scores(month=date(2026, 4, 1), now=AS_OF)
    compute_contribution_scores(month=MONTH, now=AS_OF)
    assert ContributionScore.objects.filter(month=MONTH).count() == 1
    assert ContributionScore.objects.filter(month=date(2026, 4, 1)).count() == 1


def test_nightly_run_scores_the_previous_month():
    OperatorAccountFactory(external_id="acct-x")
    run = compute_contribution_scores(now=datetime(2026, 6, 1, 3, 15, tzinfo=UTC))
    assert run.month == MONTH and run.status == ScoreRun.Status.DONE


def test_a_failing_run_is_left_failed_with_its_reason_and_a_log_line_then_retried(caplog):
    OperatorAccountFactory(external_id="acct-x")
    ensure_dimensions()
    ScoreDimension.objects.update(weight=0)  # nothing to score by: the run cannot succeed
    run = ScoreRun.objects.create(month=MONTH)
    with caplog.at_level(logging.ERROR, logger="community.services"), pytest.raises(Exception, match="weight 0"):
        compute_contribution_scores(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == ScoreRun.Status.FAILED and run.error.startswith("NoWeights: Every score dimension")
    assert f"contribution score run {run.pk} (2026-05) failed" in caplog.text
    assert not ContributionScore.objects.exists()
    # Redelivered, the failed run stays failed until someone retries it.
    assert compute_contribution_scores(run_id=run.pk).status == ScoreRun.Status.FAILED
    ScoreDimension.objects.update(weight=1)
    retried = retry_score_run(run_id=run.pk)
    assert retried.status == ScoreRun.Status.QUEUED and retried.error == ""
    assert compute_contribution_scores(run_id=run.pk).status == ScoreRun.Status.DONE
    with pytest.raises(RunNotFailed):
        retry_score_run(run_id=run.pk)
