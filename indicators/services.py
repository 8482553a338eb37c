"""Writes of the indicators layer: goals set on registered indicators and spread over their months.
(The rollups write themselves: `indicators.rollups`.)"""

from __future__ import annotations

import calendar
from datetime import date
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from access.services import record_audit
from indicators.errors import GoalExists, NoHistory
from indicators.models import Goal, GoalMonth, GoalProfile, goal_step
from indicators.registry import (
    Fold,
    Indicator,
    UnknownIndicator,
    all_indicators,
    daily_values,
    fold_days,
    get_indicator,
)

# Setting a goal on a registered indicator and spreading it over its months. The rules of the
# month targets (they add up for a sum-type indicator, they are levels for a mean- or last-type
# one) are in `indicators.models.Goal`; the database checks them again at commit.


def _days_in(month: date) -> int:
    return calendar.monthrange(month.year, month.month)[1]


def decompose(
    *, target: Decimal, fold: str, months: list[date], weights: list[Decimal], step: Decimal
) -> list[Decimal]:
    """Month targets for `target` spread by `weights` (one per month, at least one > 0).

    - sum: the target is shared in proportion to the weights; each share is rounded down to the
      step and the steps left over go to the months with the largest remainders (the earlier month
      on a tie), so the months add up to the target exactly;
    - mean: each month's level is proportional to its weight, scaled so that the mean of the
      months weighted by their days (the period's mean of days) is the target;
    - last: the levels are scaled so that the last month's level is the target.
    """
    if fold == Fold.SUM:
        total = sum(weights, Decimal(0))
        raw = [target * w / total for w in weights]
        floors = [(r / step).to_integral_value(rounding=ROUND_FLOOR) * step for r in raw]
        left = int(((target - sum(floors, Decimal(0))) / step).to_integral_value())
        by_remainder = sorted(range(len(raw)), key=lambda i: (-(raw[i] - floors[i]), i))
        for i in by_remainder[:left]:
            floors[i] += step
        return floors
    if fold == Fold.MEAN:
        days = [_days_in(m) for m in months]
        scale = target * sum(days) / sum((w * d for w, d in zip(weights, days, strict=True)), Decimal(0))
    elif fold == Fold.LAST:
        scale = target / weights[-1]
    else:
        raise ValueError(f"unknown fold {fold!r}")
    levels = [(w * scale).quantize(step, rounding=ROUND_HALF_EVEN) for w in weights]
    if fold == Fold.LAST:
        levels[-1] = target  # exact, whatever the rounding of the scale
    return levels


def _check_weights(weights: list[Any], *, months: list[date], fold: str, field: str) -> list[Decimal]:
    if not isinstance(weights, list | tuple) or len(weights) != len(months):
        raise ValidationError({field: f"Give one weight per month of the period: {len(months)} numbers."})
    clean = []
    for position, raw in enumerate(weights, start=1):
        try:
            value = Decimal(str(raw))
        except (InvalidOperation, ValueError):
            raise ValidationError({field: f"Weight {position} ({str(raw)[:20]!r}) is not a number."}) from None
        if not value.is_finite() or value < 0 or value > Decimal("1e12"):
            raise ValidationError({field: f"Weight {position} must be a number from 0 to 10^12."})
        clean.append(value)
    if not any(clean):
        raise ValidationError({field: "At least one weight must be greater than zero."})
    if fold == Fold.LAST and clean[-1] == 0:
        raise ValidationError(
            {field: "The indicator is read on the period's last day, so the last month's weight cannot be 0."}
        )
    return clean


def _last_year_weights(*, indicator: Indicator, months: list[date]) -> list[Decimal]:
    """Last year's actual of each month, folded as the indicator says (one read of the series)."""
    before = [m.replace(year=m.year - 1) for m in months]
    start = before[0]
    end = before[-1].replace(day=_days_in(before[-1]))
    by_month: dict[date, list[Decimal]] = {m: [] for m in before}
    for day, value in daily_values(indicator.key, start=start, end=end):
        by_month[day.replace(day=1)].append(value)
    weights = [max(fold_days(indicator.fold, by_month[m]), Decimal(0)) for m in before]
    if not any(weights):
        raise NoHistory(
            f"{indicator.label} has no actuals from {start} to {end} to shape the goal on.", indicator=indicator.key
        )
    if indicator.fold == Fold.LAST and weights[-1] == 0:
        raise NoHistory(f"{indicator.label} was 0 at the end of {end:%B %Y}: nothing to scale the goal to.")
    return weights


def month_targets_for(*, goal: Goal, profile: str, weights: list[Any] | None = None) -> list[GoalMonth]:
    """The months `goal` would get with that profile, unsaved (the admin previews and checks
    them before saving); raises ValidationError or NoHistory as the services would."""
    return _month_rows(goal=goal, profile=profile, weights=weights)[0]


def _month_rows(*, goal: Goal, profile: str, weights: list[Any] | None) -> tuple[list[GoalMonth], list[str]]:
    months = goal.months()
    indicator = get_indicator(goal.indicator)
    typed: list[str] = []
    if profile == GoalProfile.EVEN:
        shape = [Decimal(1)] * len(months)
    elif profile == GoalProfile.WEIGHTS:
        shape = _check_weights(weights or [], months=months, fold=goal.fold, field="weights")
        typed = [str(w) for w in shape]
    elif profile == GoalProfile.LAST_YEAR:
        shape = _last_year_weights(indicator=indicator, months=months)
    else:
        raise ValidationError({"profile": f"Unknown profile {str(profile)[:20]!r}; one of {GoalProfile.values}."})
    targets = decompose(target=goal.target, fold=goal.fold, months=months, weights=shape, step=goal_step(goal.unit))
    total = sum(shape, Decimal(0))
    rows = [
        GoalMonth(goal=goal, month=m, weight=(w / total).quantize(Decimal("0.000001")), target=t)
        for m, w, t in zip(months, shape, targets, strict=True)
    ]
    return rows, typed


def _check_target(target: Any, *, unit: str) -> Decimal:
    step = goal_step(unit)
    try:
        value = Decimal(str(target))
    except (InvalidOperation, ValueError):
        raise ValidationError({"target": "Must be a number."}) from None
    if not value.is_finite() or value <= 0:
        raise ValidationError({"target": "Must be greater than zero."})
    if value >= Decimal("1e15"):
        raise ValidationError({"target": "Must be below 10^15."})
    if value != value.quantize(step):
        raise ValidationError({"target": f"At most {-step.as_tuple().exponent} decimal places for this indicator."})
    return value.quantize(step)


def _indicator_or_400(key: Any) -> Indicator:
    try:
        return get_indicator(str(key))
    except UnknownIndicator:
        known = ", ".join(i.key for i in all_indicators()) or "none registered"
        raise ValidationError({"indicator": f"Unknown indicator {str(key)[:64]!r}; known: {known}."}) from None


@transaction.atomic
def create_goal(
    *,
    name: str,
    indicator: str,
    period: str,
    year: int,
    target: Decimal,
    quarter: int | None = None,
    profile: str = GoalProfile.EVEN,
    weights: list[Any] | None = None,
    actor: AbstractBaseUser | None = None,
    api_key: Any = None,
) -> Goal:
    """Set a yearly or quarterly target on an indicator and spread it over the months."""
    found = _indicator_or_400(indicator)
    goal = Goal(
        name=name,
        indicator=found.key,
        fold=found.fold,
        unit=found.unit,
        period=period,
        year=year,
        quarter=quarter,
        target=_check_target(target, unit=found.unit),
        profile=profile,
        created_by=actor if getattr(actor, "is_authenticated", False) else None,
    )
    goal.full_clean(validate_unique=False, validate_constraints=False)
    try:
        with transaction.atomic():
            goal.save()
    except IntegrityError as exc:
        if "goal_one_per_period" in str(exc):
            raise GoalExists(
                f"{found.label} already has a goal for {goal.period_label}; change that one instead."
            ) from None
        raise
    rows, typed = _month_rows(goal=goal, profile=profile, weights=weights)
    GoalMonth.objects.bulk_create(rows)
    if typed:
        Goal.objects.filter(pk=goal.pk).update(weights=typed)
        goal.weights = typed
    record_audit(
        actor=actor,
        api_key=api_key,
        action="indicators.goal_created",
        obj=goal,
        details={
            "indicator": goal.indicator,
            "period": goal.period_label,
            "target": str(goal.target),
            "profile": profile,
        },
    )
    return goal


@transaction.atomic
def redecompose_goal(
    *,
    goal: Goal,
    profile: str,
    weights: list[Any] | None = None,
    target: Decimal | None = None,
    name: str | None = None,
    actor: AbstractBaseUser | None = None,
    api_key: Any = None,
) -> Goal:
    """Spread the goal again (another profile, other weights, or a new target); the months are
    replaced in the same transaction, so nobody ever reads half a decomposition."""
    locked = Goal.objects.select_for_update().get(pk=goal.pk)
    _indicator_or_400(locked.indicator)
    before = {"target": str(locked.target), "profile": locked.profile, "weights": locked.weights}
    if target is not None:
        locked.target = _check_target(target, unit=locked.unit)
    if name is not None:
        locked.name = name
    locked.profile = profile
    rows, typed = _month_rows(goal=locked, profile=profile, weights=weights)
    locked.weights = typed
    locked.full_clean(validate_unique=False, validate_constraints=False)
    locked.save()
    GoalMonth.objects.filter(goal=locked).delete()
    GoalMonth.objects.bulk_create(rows)
    record_audit(
        actor=actor,
        api_key=api_key,
        action="indicators.goal_redecomposed",
        obj=locked,
        details={"before": before, "after": {"target": str(locked.target), "profile": profile, "weights": typed}},
    )
    return locked


@transaction.atomic
def delete_goal(*, goal: Goal, actor: AbstractBaseUser | None = None, api_key: Any = None) -> None:
    record_audit(
        actor=actor,
        api_key=api_key,
        action="indicators.goal_deleted",
        obj=goal,
        details={"indicator": goal.indicator, "period": goal.period_label, "target": str(goal.target)},
    )
    goal.delete()
