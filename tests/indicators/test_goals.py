"""Goals on registered indicators: decomposition by month, the constraints that keep the months
making the goal, progress with warnings, and their audit trail."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import F

from access.models import AuditEntry
from indicators import selectors, services
from indicators.errors import GoalExists, NoHistory
from indicators.models import Goal, GoalMonth
from indicators.registry import Fold, Indicator, Unit, register_indicator, unregister_indicator
from tests.factories.indicators import daily_event_count, events_on, goal

pytestmark = pytest.mark.django_db
D = Decimal


@pytest.fixture
def signups():
    """A sum-type count: `signup` events per day."""
    register_indicator(Indicator("test_signups", "Test signups", Unit.USERS, Fold.SUM, daily_event_count("signup")))
    yield "test_signups"
    unregister_indicator("test_signups")


@pytest.fixture
def opens():
    """A mean-type level (like DAU): `app_open` events per day, averaged over a month."""
    register_indicator(Indicator("test_opens", "Test opens", Unit.COUNT, Fold.MEAN, daily_event_count("app_open")))
    yield "test_opens"
    unregister_indicator("test_opens")


@pytest.fixture
def month_end_level():
    """A last-value indicator (like MAU read at month end)."""
    register_indicator(Indicator("test_level", "Test level", Unit.USERS, Fold.LAST, daily_event_count("ping")))
    yield "test_level"
    unregister_indicator("test_level")


def targets(g: Goal) -> list[Decimal]:
    return list(GoalMonth.objects.filter(goal=g).order_by("month").values_list("target", flat=True))


# --- decomposition -------------------------------------------------------------------------------


def test_an_even_yearly_sum_goal_adds_up_to_the_cent(signups):
    g = goal(indicator=signups, period="year", quarter=None, target=D("1000"))
    months = targets(g)
    assert len(months) == 12
    assert sum(months) == D("1000")
    # 1000 / 12 = 83.333...: four cents are left over and go to the first four months.
    assert months == [D("83.34")] * 4 + [D("83.33")] * 8


def test_typed_weights_share_a_quarterly_sum_goal(signups):
    g = goal(indicator=signups, target=D("600"), profile="weights", weights=[D(1), D(2), D(3)])
    assert targets(g) == [D("100"), D("200"), D("300")]
    assert g.weights == ["1", "2", "3"]
    assert list(g.month_targets.values_list("month", flat=True)) == [
        date(2025, 1, 1),
        date(2025, 2, 1),
        date(2025, 3, 1),
    ]


def test_shaped_like_last_year_follows_last_years_actuals(signups):
    events_on("signup", date(2024, 1, 15), 10)
    events_on("signup", date(2024, 2, 3), 5)
    events_on("signup", date(2024, 2, 20), 15)
    events_on("signup", date(2024, 3, 31), 30)
    events_on("signup", date(2025, 1, 2), 99)  # this year's rows do not shape the goal
    g = goal(indicator=signups, target=D("1200"), profile="last_year")
    assert targets(g) == [D("200"), D("400"), D("600")]  # 10 : 20 : 30
    assert list(g.month_targets.values_list("weight", flat=True)) == [D("0.166667"), D("0.333333"), D("0.5")]


def test_shaped_like_last_year_without_history_is_refused(signups):
    with pytest.raises(NoHistory):
        goal(indicator=signups, profile="last_year")
    assert not Goal.objects.exists()


def test_a_mean_type_goal_gives_each_month_the_level(opens):
    g = goal(indicator=opens, target=D("5000"))
    assert targets(g) == [D("5000")] * 3


def test_a_mean_type_goal_with_weights_averages_to_the_target_over_the_days(opens):
    g = goal(indicator=opens, target=D("100"), profile="weights", weights=[D(1), D(1), D(2)])
    months = targets(g)
    # Levels 1 : 1 : 2 whose mean over Q1 2025's 31 + 28 + 31 days is 100.
    assert months == [D("74.38"), D("74.38"), D("148.76")]
    mean = (months[0] * 31 + months[1] * 28 + months[2] * 31) / 90
    assert abs(mean - D("100")) <= D("0.005")


def test_a_last_value_goal_ends_at_the_target(month_end_level):
    g = goal(indicator=month_end_level, target=D("900"), profile="weights", weights=[D(1), D(2), D(3)])
    assert targets(g) == [D("300"), D("600"), D("900")]


def test_weights_of_the_wrong_length_name_the_field(signups):
    with pytest.raises(ValidationError) as refused:
        goal(indicator=signups, profile="weights", weights=[D(1), D(2)])
    assert "weights" in refused.value.message_dict


def test_an_unknown_indicator_names_the_field(signups):
    with pytest.raises(ValidationError) as refused:
        goal(indicator="no_such_indicator")
    assert "indicator" in refused.value.message_dict
    assert "test_signups" in refused.value.message_dict["indicator"][0]


def test_a_second_goal_on_the_same_indicator_and_period_conflicts(signups):
    goal(indicator=signups)
    with pytest.raises(GoalExists):
        goal(indicator=signups, name="Again")
    assert Goal.objects.count() == 1


def test_redecomposing_replaces_the_months_and_is_audited(signups, make_staff):
    operator = make_staff("Operations")
    g = goal(indicator=signups, target=D("90"), actor=operator)
    services.redecompose_goal(goal=g, profile="weights", weights=[D(0), D(1), D(2)], target=D("300"), actor=operator)
    assert targets(g) == [D("0"), D("100"), D("200")]
    g.refresh_from_db()
    assert g.target == D("300") and g.profile == "weights"
    actions = list(AuditEntry.objects.filter(object_id=str(g.pk)).order_by("id").values_list("action", "actor"))
    assert actions == [("indicators.goal_created", operator.pk), ("indicators.goal_redecomposed", operator.pk)]


# --- what the database holds ---------------------------------------------------------------------


def _check_now() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")


def test_the_database_refuses_sum_months_that_do_not_add_up(signups):
    g = goal(indicator=signups, target=D("90"))
    with pytest.raises(IntegrityError, match="add up to"), transaction.atomic():
        GoalMonth.objects.filter(goal=g, month=date(2025, 1, 1)).update(target=F("target") + 1)
        _check_now()


def test_the_database_refuses_a_goal_missing_a_month(signups):
    g = goal(indicator=signups, target=D("90"))
    with pytest.raises(IntegrityError, match="one target for each"), transaction.atomic():
        GoalMonth.objects.filter(goal=g, month=date(2025, 3, 1)).delete()
        _check_now()


def test_the_database_refuses_a_mean_goal_whose_levels_miss_the_target(opens):
    g = goal(indicator=opens, target=D("5000"))
    with pytest.raises(IntegrityError, match="average"), transaction.atomic():
        GoalMonth.objects.filter(goal=g, month=date(2025, 2, 1)).update(target=D("4000"))
        _check_now()


def test_the_database_refuses_a_zero_target_and_an_invalid_period(signups):
    g = goal(indicator=signups)
    with pytest.raises(IntegrityError), transaction.atomic():
        Goal.objects.filter(pk=g.pk).update(target=0)
    with pytest.raises(IntegrityError), transaction.atomic():
        Goal.objects.filter(pk=g.pk).update(quarter=5)
    with pytest.raises(IntegrityError), transaction.atomic():
        Goal.objects.filter(pk=g.pk).update(period="year")  # a yearly goal has no quarter


# --- progress ------------------------------------------------------------------------------------


@pytest.fixture
def q1_signups(signups):
    """Q1 2025, 30 signups a month; January made 31, February 20, March 10 by the 20th."""
    g = goal(indicator=signups, target=D("90"))
    events_on("signup", date(2025, 1, 5), 31)
    events_on("signup", date(2025, 2, 10), 20)
    events_on("signup", date(2025, 3, 20), 10)
    events_on("signup", date(2025, 3, 21), 50)  # today: not complete, not counted
    return g


def test_progress_judges_months_and_warns_of_the_ones_behind(q1_signups):
    progress = selectors.goal_progress(q1_signups, today=date(2025, 3, 21))
    jan, feb, mar = progress.months
    assert (jan.status, jan.actual, jan.expected) == ("met", D(31), D(30))
    assert (feb.status, feb.actual, feb.expected) == ("missed", D(20), D(30))
    # March is judged pro rata: 20 of 31 days elapsed, so 30 x 20 / 31 = 19.35 was expected.
    assert (mar.status, mar.actual, mar.expected, mar.elapsed_days) == ("behind", D(10), D("19.35"), 20)
    assert progress.actual == D(61)
    assert progress.expected == D("79.35")
    assert progress.status == "behind"
    assert round(progress.progress, 4) == round(61 / 90, 4)
    assert len(progress.warnings) == 2
    assert progress.warnings[0].startswith("February 2025 missed")
    assert progress.warnings[1].startswith("March 2025 is behind") and "20 of 31 days" in progress.warnings[1]


def test_progress_before_the_period_is_upcoming_and_after_it_met_or_missed(q1_signups):
    before = selectors.goal_progress(q1_signups, today=date(2024, 12, 1))
    assert before.status == "upcoming" and before.actual is None and not before.warnings
    after = selectors.goal_progress(q1_signups, today=date(2025, 6, 1))
    assert after.status == "met" and after.actual == D(111)  # the 50 of March 21st count now
    assert [m.status for m in after.months] == ["met", "missed", "met"]


def test_a_mean_type_month_in_progress_is_held_against_its_level(opens):
    g = goal(indicator=opens, target=D("10"))
    events_on("app_open", date(2025, 1, 1), 12)
    events_on("app_open", date(2025, 1, 2), 6)
    progress = selectors.goal_progress(g, today=date(2025, 1, 3))
    jan = progress.months[0]
    # Mean of the two elapsed days is 9, against the level 10 itself (not pro rata).
    assert (jan.actual, jan.expected, jan.status) == (D(9), D(10), "behind")
    progress = selectors.goal_progress(g, today=date(2025, 1, 2))
    assert (progress.months[0].actual, progress.months[0].status) == (D(12), "on_track")


def test_progress_of_many_goals_reads_each_indicator_once(signups, opens, django_assert_num_queries):
    for year in (2023, 2024, 2025):
        goal(indicator=signups, year=year)
        goal(indicator=opens, year=year)
    goals = list(selectors.goals_with_months())
    with django_assert_num_queries(2):  # one series per indicator
        progress = selectors.goals_progress(goals, today=date(2025, 2, 1))
    assert len(progress) == 6
