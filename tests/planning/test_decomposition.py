"""The decomposition of a goal by its tactics' timing: what a tactic brings lands in its months,
and a sum-type goal's months always add up to the target."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from access.models import AuditEntry
from indicators.models import GoalMonth
from indicators.registry import Fold
from indicators.services import decompose
from planning import services
from planning.errors import ContributionsExceedTarget, LastMonthUncovered, NoTactics
from planning.services import Timing, tactic_weights
from tests.factories.indicators import goal
from tests.factories.planning import tactic

D = Decimal
MONTHS = [date(2026, m, 1) for m in range(1, 13)]


@st.composite
def plans(draw):
    target = D(draw(st.integers(min_value=1, max_value=10**9))) / 100
    timings = []
    left = target
    for _ in range(draw(st.integers(min_value=0, max_value=5))):
        share = D(draw(st.integers(min_value=0, max_value=int(left * 100)))) / 100
        left -= share
        first = draw(st.integers(min_value=0, max_value=11))
        last = draw(st.one_of(st.none(), st.integers(min_value=first, max_value=11)))
        timings.append(Timing(share, MONTHS[first], None if last is None else MONTHS[last]))
    return target, timings


@given(plans())
@settings(max_examples=300, deadline=None)
def test_a_sum_goal_decomposed_by_tactics_always_adds_up_to_its_target(plan):
    target, timings = plan
    weights = tactic_weights(target=target, fold=Fold.SUM, months=MONTHS, timings=timings)
    months = decompose(target=target, fold=Fold.SUM, months=MONTHS, weights=weights, step=D("0.01"))
    assert sum(months) == target
    assert all(m >= 0 for m in months)


@given(plans())
@settings(max_examples=200, deadline=None)
def test_no_tactic_brings_anything_before_it_starts(plan):
    target, timings = plan
    covered = sum((t.contribution for t in timings), D(0))
    weights = tactic_weights(target=target, fold=Fold.SUM, months=MONTHS, timings=timings)
    even = (target - covered) / 12
    for i, month in enumerate(MONTHS):
        active = sum(
            (
                t.contribution / len([m for m in MONTHS if t.starts_on <= m and (t.ends_on is None or m <= t.ends_on)])
                for t in timings
                if t.starts_on <= month and (t.ends_on is None or month <= t.ends_on)
            ),
            D(0),
        )
        assert abs(weights[i] - (even + active)) <= D("0.000001")


def test_a_tactic_starting_in_may_puts_its_share_from_may_on():
    weights = tactic_weights(
        target=D("1200"), fold=Fold.SUM, months=MONTHS, timings=[Timing(D("800"), date(2026, 5, 1), None)]
    )
    months = decompose(target=D("1200"), fold=Fold.SUM, months=MONTHS, weights=weights, step=D("0.01"))
    assert all(abs(m - D("33.33")) <= D("0.01") for m in months[:4])
    assert all(abs(m - D("133.33")) <= D("0.01") for m in months[4:])
    assert sum(months) == D("1200")


def test_a_level_goal_adds_a_tactics_level_in_its_months():
    weights = tactic_weights(
        target=D("1000"), fold=Fold.MEAN, months=MONTHS, timings=[Timing(D("200"), date(2026, 7, 1), None)]
    )
    assert weights[:6] == [D("800")] * 6
    assert weights[6:] == [D("1000")] * 6


def test_contributions_above_the_target_are_refused():
    with pytest.raises(ContributionsExceedTarget):
        tactic_weights(
            target=D("100"), fold=Fold.SUM, months=MONTHS, timings=[Timing(D("101"), date(2026, 1, 1), None)]
        )


def test_a_month_end_goal_without_anything_in_its_last_month_is_refused():
    with pytest.raises(LastMonthUncovered):
        tactic_weights(
            target=D("100"),
            fold=Fold.LAST,
            months=MONTHS,
            timings=[Timing(D("100"), date(2026, 1, 1), date(2026, 6, 1))],
        )


@pytest.mark.django_db
def test_decomposing_a_goal_by_its_tactics_rewrites_its_months_and_is_audited():
    g = goal(indicator="revenue", period="year", quarter=None, year=2026, target=D("12000"))
    tactic(g, name="Win back", expected_contribution=D("6000"), starts_on="2026-07")
    services.decompose_by_tactics(goal=g)
    months = list(GoalMonth.objects.filter(goal=g).order_by("month").values_list("target", flat=True))
    assert sum(months) == D("12000")
    assert months[:6] == [D("500.00")] * 6
    assert months[6:] == [D("1500.00")] * 6
    g.refresh_from_db()
    assert g.profile == "weights"
    assert AuditEntry.objects.filter(action="planning.goal_decomposed", object_id=str(g.pk)).exists()


@pytest.mark.django_db
def test_a_goal_without_tactics_is_not_decomposed_by_them():
    g = goal(indicator="revenue", period="year", quarter=None, year=2026, target=D("12000"))
    with pytest.raises(NoTactics):
        services.decompose_by_tactics(goal=g)


@pytest.mark.django_db
@given(
    status_moves=st.lists(st.sampled_from(["todo", "doing", "done"]), min_size=1, max_size=8),
    due_offset=st.integers(min_value=-10, max_value=10),
)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_task_is_always_in_exactly_one_board_column(status_moves, due_offset):
    from datetime import timedelta

    from planning.selectors import BOARD_COLUMNS, board
    from tests.factories.planning import phase, task, team

    g = goal(indicator="revenue", period="year", quarter=None, year=2026, target=D("1000"), name=f"g{due_offset}")
    today = date(2026, 3, 15)
    t = task(phase(g), due_on=today + timedelta(days=due_offset), team=team(f"team {due_offset}"))
    for status in status_moves:
        t = services.move_task(task=t, status=status)
        columns = board(team=t.team, today=today)
        places = [c for c in BOARD_COLUMNS if t.pk in [x.pk for x in columns[c]]]
        assert len(places) == 1
        expected = "done" if status == "done" else "late" if t.due_on < today else status
        assert places == [expected]
        assert (t.done_at is not None) == (status == "done")
    g.delete()
