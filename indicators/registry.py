"""The registry of indicators that dashboards chart and goals are set on: named daily series.

Each app registers the indicators it computes from its AppConfig.ready() (`tracking` the
event-only ones such as DAU or revenue, higher apps those that combine domains), so that goals and
dashboards in `tracking` can read any of them without importing upwards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

from django.db import models
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from config import formatting


class Fold(models.TextChoices):
    """How the days of a month make the month's value: revenue adds up, DAU is averaged, a
    month-to-date count such as MAU is read on the month's last day."""

    SUM = "sum", _("Sum of the days")
    MEAN = "mean", _("Mean of the days")
    LAST = "last", _("Value on the last day")


class Unit(models.TextChoices):
    COUNT = "count", _("Count")
    USERS = "users", _("Users")
    MONEY = "money", _("Money")
    RATIO = "ratio", _("Ratio")


def unit_label(unit: str) -> str:
    """What a value of this unit counts, as a CSV header or unit column says it: the currency for
    money, `fraction of 1` for ratios, else the unit's name (`users`)."""
    if unit == Unit.MONEY:
        return formatting.currency_label()
    return gettext("fraction of 1") if unit == Unit.RATIO else str(Unit(unit).label).lower()


# (first day, last day), both inclusive -> value per day; days without data may be missing (0).
DailySeries = Callable[[date, date], dict[date, Decimal]]


@dataclass(frozen=True)
class Indicator:
    key: str
    label: str
    unit: str
    fold: str
    daily: DailySeries
    description: str = ""


class UnknownIndicator(KeyError):
    pass


_registry: dict[str, Indicator] = {}


def register_indicator(indicator: Indicator) -> None:
    """Add (or replace) an indicator under its key."""
    _registry[indicator.key] = indicator


def get_indicator(key: str) -> Indicator:
    try:
        return _registry[key]
    except KeyError:
        raise UnknownIndicator(key) from None


def all_indicators() -> list[Indicator]:
    return sorted(_registry.values(), key=lambda indicator: indicator.label)


def indicator_choices() -> list[tuple[str, str]]:
    return [(indicator.key, indicator.label) for indicator in all_indicators()]


def daily_values(key: str, *, start: date, end: date) -> list[tuple[date, Decimal]]:
    """Every day from `start` to `end` with its value (0 where the series has none)."""
    values = get_indicator(key).daily(start, end)
    days = (end - start).days + 1
    return [(day, Decimal(values.get(day, 0))) for day in (start + timedelta(n) for n in range(max(days, 0)))]


def fold_days(fold: str, values: list[Decimal]) -> Decimal:
    """One value for a run of days, as the indicator's fold says."""
    if not values:
        return Decimal(0)
    if fold == Fold.SUM:
        return sum(values, Decimal(0))
    if fold == Fold.MEAN:
        return sum(values, Decimal(0)) / len(values)
    if fold == Fold.LAST:
        return values[-1]
    raise ValueError(f"unknown fold {fold!r}")


def value_text(value: Decimal, unit: str) -> str:
    """A value as the API and the dashboards show it: money to the cent, other fractions (a mean
    of days, a ratio) to four places, whole numbers as they are."""
    quantum = Decimal("0.01") if unit == Unit.MONEY else Decimal("0.0001")
    value = Decimal(value)
    return str(value.quantize(quantum)) if value != value.to_integral_value() or unit == Unit.MONEY else str(int(value))


def unregister_indicator(key: str) -> Indicator | None:
    """Remove an indicator (tests that register their own put the registry back as it was)."""
    return _registry.pop(key, None)
