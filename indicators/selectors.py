"""Reads of the indicators layer: goals' progress and the funnels operators defined."""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, date, timedelta
from decimal import Decimal

from django.db import models
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.translation import gettext, gettext_lazy

from indicators.errors import IndicatorUnavailable
from indicators.models import Funnel, Goal, goal_step
from indicators.registry import Fold, Unit, UnknownIndicator, daily_values, fold_days, get_indicator

# Progress of a goal against the indicator's actuals, month by month.
#
# The rule, as operators read it: days count once complete (UTC), so "as of" is yesterday.
# - A month not yet begun is *upcoming*.
# - A complete month is *met* when its actual (the indicator's days folded as it says: summed,
#   averaged or read on the last day) reaches its target, else *missed*.
# - A month in progress is judged on its elapsed days. A sum-type indicator (revenue, new users)
#   is expected to have made the target pro rata: target x elapsed days / days of the month. A
#   mean-type (DAU) or last-value (MAU) indicator is a level, so the actual so far (the mean of
#   the elapsed days, or the last elapsed day) is held against the month's target itself. Below
#   the expectation, the month is *behind*.
# Behind and missed months are the warnings.


class GoalStatus(models.TextChoices):
    UPCOMING = "upcoming", gettext_lazy("Upcoming")
    ON_TRACK = "on_track", gettext_lazy("On track")
    BEHIND = "behind", gettext_lazy("Behind")
    MET = "met", gettext_lazy("Met")
    MISSED = "missed", gettext_lazy("Missed")


@dataclass(frozen=True)
class MonthProgress:
    month: date
    days: int
    elapsed_days: int
    target: Decimal
    expected: Decimal | None  # what the elapsed days should have made (None before the month)
    actual: Decimal | None
    status: str

    @property
    def share(self) -> float | None:
        """Actual over expected (1.0 = exactly on plan)."""
        if self.actual is None or not self.expected:
            return None
        return float(self.actual / self.expected)


@dataclass(frozen=True)
class GoalProgress:
    goal: Goal
    label: str
    as_of: date
    months: list[MonthProgress]
    actual: Decimal | None  # the period so far, folded as the indicator says
    expected: Decimal | None
    status: str
    warnings: list[str]

    @property
    def progress(self) -> float | None:
        """Actual so far over the goal's target: the share made of a sum-type goal, the level
        reached of a mean- or last-type one."""
        return None if self.actual is None else float(self.actual / self.goal.target)


def _judge_month(*, fold: str, target: Decimal, values: list[Decimal], days: int, step: Decimal) -> tuple:
    elapsed = len(values)
    actual = fold_days(fold, values)
    # Sum-type months are expected pro rata; levels (mean, last) are held against the target.
    expected = (target * elapsed / days).quantize(step) if fold == Fold.SUM and elapsed < days else target
    if elapsed == days:
        status = GoalStatus.MET if actual >= target else GoalStatus.MISSED
    else:
        status = GoalStatus.ON_TRACK if actual >= expected else GoalStatus.BEHIND
    return expected, actual, status


def _fmt(value: Decimal, unit: str) -> str:
    if unit == Unit.RATIO:
        return f"{value:.2%}"
    return f"{value:,.2f}" if unit == Unit.MONEY else f"{value:,.0f}"


def _progress(goal: Goal, label: str, series: dict[date, Decimal], as_of: date) -> GoalProgress:
    step = goal_step(goal.unit)
    months: list[MonthProgress] = []
    warnings: list[str] = []
    elapsed_values: list[Decimal] = []
    expected_weighted, elapsed_total = Decimal(0), 0
    expected_sum = Decimal(0)
    current_target: Decimal | None = None
    for row in goal.month_targets.all():
        days = calendar.monthrange(row.month.year, row.month.month)[1]
        last = row.month + timedelta(days=days - 1)
        if row.month > as_of:
            months.append(MonthProgress(row.month, days, 0, row.target, None, None, GoalStatus.UPCOMING))
            continue
        values = [
            series.get(row.month + timedelta(n), Decimal(0)) for n in range((min(last, as_of) - row.month).days + 1)
        ]
        expected, actual, status = _judge_month(fold=goal.fold, target=row.target, values=values, days=days, step=step)
        months.append(MonthProgress(row.month, days, len(values), row.target, expected, actual, status))
        elapsed_values += values
        expected_sum += expected
        expected_weighted += row.target * len(values)
        elapsed_total += len(values)
        current_target = row.target
        if status == GoalStatus.BEHIND:
            month = date_format(row.month, "YEAR_MONTH_FORMAT")
            warnings.append(
                gettext(
                    "%(month)s is behind: %(actual)s after %(elapsed)s of %(days)s days, "
                    "%(expected)s expected (%(share)s)."
                )
                % {
                    "month": month,
                    "actual": _fmt(actual, goal.unit),
                    "elapsed": len(values),
                    "days": days,
                    "expected": _fmt(expected, goal.unit),
                    "share": f"{float(actual / expected):.0%}",
                }
                if expected
                else gettext("%(month)s is behind.") % {"month": month}
            )
        elif status == GoalStatus.MISSED:
            warnings.append(
                gettext("%(month)s missed its target: %(actual)s of %(target)s.")
                % {
                    "month": date_format(row.month, "YEAR_MONTH_FORMAT"),
                    "actual": _fmt(actual, goal.unit),
                    "target": _fmt(row.target, goal.unit),
                }
            )
    if not elapsed_values:
        return GoalProgress(goal, label, as_of, months, None, None, GoalStatus.UPCOMING, warnings)
    actual = fold_days(goal.fold, elapsed_values)
    if goal.fold == Fold.SUM:
        expected = expected_sum
    elif goal.fold == Fold.MEAN:
        expected = (expected_weighted / elapsed_total).quantize(step)
    else:
        expected = current_target
    if as_of >= goal.end:
        status = GoalStatus.MET if actual >= goal.target else GoalStatus.MISSED
    else:
        status = GoalStatus.ON_TRACK if actual >= expected else GoalStatus.BEHIND
    return GoalProgress(goal, label, as_of, months, actual, expected, status, warnings)


def goals_progress(goals: list[Goal], *, today: date | None = None) -> dict[int, GoalProgress | None]:
    """Progress of many goals, reading each indicator once over the span of its goals (a list
    page costs one series per indicator, not one per goal). Goals need `month_targets`
    prefetched. A goal whose indicator is no longer registered maps to None."""
    today = today or timezone.now().astimezone(UTC).date()
    as_of = today - timedelta(days=1)
    by_indicator: dict[str, list[Goal]] = {}
    for goal in goals:
        by_indicator.setdefault(goal.indicator, []).append(goal)
    result: dict[int, GoalProgress | None] = {}
    for key, group in by_indicator.items():
        try:
            indicator = get_indicator(key)
        except UnknownIndicator:
            result.update({goal.pk: None for goal in group})
            continue
        start = min(goal.start for goal in group)
        end = min(max(goal.end for goal in group), as_of)
        series = {} if end < start else dict(daily_values(key, start=start, end=end))
        for goal in group:
            result[goal.pk] = _progress(goal, indicator.label, series, as_of)
    return result


def goal_progress(goal: Goal, *, today: date | None = None) -> GoalProgress:
    """One goal's progress; raises IndicatorUnavailable if its indicator is gone."""
    progress = goals_progress([goal], today=today)[goal.pk]
    if progress is None:
        raise IndicatorUnavailable(f"The indicator {goal.indicator!r} of this goal is not registered any more.")
    return progress


def goals_with_months() -> QuerySet[Goal]:
    return Goal.objects.prefetch_related("month_targets")


def funnels_with_steps() -> QuerySet[Funnel]:
    """Every funnel, by name, with its steps in one more query."""
    return Funnel.objects.prefetch_related("steps").order_by("name")


def funnel_with_steps(*, funnel_id: int) -> Funnel | None:
    """The funnel with its steps, or None."""
    return funnels_with_steps().filter(pk=funnel_id).first()
