"""Reads of the tracking layer that stay fast on a table of hundreds of millions of events."""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from django.db import connection, models
from django.db.models import Count, QuerySet
from django.db.models.functions import TruncDate
from django.utils import timezone

from tracking.errors import IndicatorUnavailable
from tracking.indicators import Fold, Unit, UnknownIndicator, daily_values, fold_days, get_indicator
from tracking.models import STORED_AMOUNT_PATTERN, Event, Funnel, Goal, goal_step

# A loose index scan: PostgreSQL has no skip scan, so DISTINCT over a big table reads every row;
# this recursive query instead jumps from one value to the next through the index, a few pages
# per distinct value. `{where}` must match the partial index's predicate for it to be used.
_DISTINCT_VALUES = """
WITH RECURSIVE walk(value) AS (
    (SELECT {column} FROM tracking_event WHERE {column} IS NOT NULL {where} ORDER BY {column} LIMIT 1)
    UNION ALL
    SELECT (SELECT {column} FROM tracking_event WHERE {column} > walk.value {where}
            ORDER BY {column} LIMIT 1)
    FROM walk WHERE walk.value IS NOT NULL
)
SELECT value FROM walk WHERE value IS NOT NULL LIMIT %s
"""


def _distinct(column: str, where: str, limit: int) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(_DISTINCT_VALUES.format(column=column, where=where), [limit])
        return [row[0] for row in cursor.fetchall()]


def order_amounts_validated() -> bool:
    """Whether the database has checked every stored order event's amount against
    `STORED_AMOUNT_PATTERN` (constraint `event_order_amount_decimal` validated), not only the
    events stored since the constraint was added."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT convalidated FROM pg_constraint "
            "WHERE conrelid = 'tracking_event'::regclass AND conname = 'event_order_amount_decimal'"
        )
        row = cursor.fetchone()
    return bool(row and row[0])


def order_amount_sql(properties: str) -> str:
    """An SQL expression for the amount of the order event whose properties are the column
    `properties`: 0 where it has none, and where an older event's amount is not a decimal string.

    Where the database guarantees every stored amount's form it is cast as it is: matching the
    pattern costs about 2 µs of CPU an event, more than reading and casting it together."""
    amount = f"({properties} ->> 'amount')"
    if order_amounts_validated():
        return f"COALESCE({amount}::numeric, 0)"
    pattern = STORED_AMOUNT_PATTERN.replace("'", "''")
    return f"CASE WHEN {amount} ~ '{pattern}' THEN {amount}::numeric ELSE 0 END"


def event_names(*, limit: int = 500) -> list[str]:
    """Every event name seen, in order (through the `(name, timestamp)` index)."""
    return _distinct("name", "", limit)


def event_name_seen(name: str) -> bool:
    """Whether any event of this name was ever stored (one probe of the `(name, timestamp)` index)."""
    return Event.objects.filter(name=name).exists()


def utm_sources(*, limit: int = 500) -> list[str]:
    """Every traffic source seen (through the partial `(utm_source, timestamp)` index)."""
    return _distinct("utm_source", "AND utm_source <> ''", limit)


def estimated_event_count() -> int:
    """The planner's row estimate for the whole table: exact counts of a huge table take minutes."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = 'tracking_event'::regclass")
        row = cursor.fetchone()
    return max(int(row[0]), 0) if row else 0


def daily_volume(*, events: QuerySet[Event] | None = None, days: int = 30, today: date | None = None) -> dict:
    """Events per day and kind over the last `days` days (UTC), of `events` (all by default),
    as chart series: `{"days": [...], "series": {kind: [count per day]}}`."""
    today = today or timezone.now().astimezone(UTC).date()
    start = today - timedelta(days=days - 1)
    queryset = Event.objects.all() if events is None else events
    # A plain range on `timestamp` (not `__date`) so the BRIN index can narrow the scan.
    rows = (
        queryset.filter(
            timestamp__gte=datetime.combine(start, time.min, tzinfo=UTC),
            timestamp__lt=datetime.combine(today + timedelta(days=1), time.min, tzinfo=UTC),
        )
        .annotate(day=TruncDate("timestamp", tzinfo=UTC))
        .order_by()
        .values("day", "kind")
        .annotate(n=Count("id"))
    )
    day_list = [start + timedelta(days=offset) for offset in range(days)]
    position = {day: i for i, day in enumerate(day_list)}
    series: dict[str, list[int]] = {}
    for row in rows:
        series.setdefault(row["kind"], [0] * days)[position[row["day"]]] = row["n"]
    return {"days": [d.isoformat() for d in day_list], "series": series}


# --- goals --------------------------------------------------------------------------------------
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
    UPCOMING = "upcoming", "Upcoming"
    ON_TRACK = "on_track", "On track"
    BEHIND = "behind", "Behind"
    MET = "met", "Met"
    MISSED = "missed", "Missed"


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
            warnings.append(
                f"{row.month:%B %Y} is behind: {_fmt(actual, goal.unit)} after {len(values)} of {days} days, "
                f"{_fmt(expected, goal.unit)} expected ({float(actual / expected):.0%})."
                if expected
                else f"{row.month:%B %Y} is behind."
            )
        elif status == GoalStatus.MISSED:
            warnings.append(
                f"{row.month:%B %Y} missed its target: {_fmt(actual, goal.unit)} of {_fmt(row.target, goal.unit)}."
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
