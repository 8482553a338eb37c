"""Natural growth: what an indicator would have been without the operation's work, forecast from
its own history before a period with a seasonal model.

Method (stated on the goal page): Holt-Winters exponential smoothing (statsmodels
`ExponentialSmoothing`) fitted on the daily values of up to `HISTORY_DAYS` days before the
period, with an additive damped trend and an additive weekly season (7 days); the forecast covers
every day of the period and is folded per month as the indicator folds its days (summed, averaged
or read on the last day). With fewer than `MIN_HISTORY_DAYS` days of history there is no
baseline: a weekly season needs several weeks to be told apart from noise.

The damped trend keeps a year-long forecast from running away on a few weeks' slope: natural
growth is what the product does anyway, and an undamped trend fitted on a good month would credit
that month's campaigns to the baseline for the rest of the year.
"""

from __future__ import annotations

import calendar
import warnings
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

import numpy as np
from django.utils.translation import gettext

from indicators.registry import daily_values, fold_days, get_indicator

HISTORY_DAYS = 365
MIN_HISTORY_DAYS = 28
SEASON_DAYS = 7


def method_text() -> str:
    """How the baseline is made, in the reader's language (goal and plan pages, the plan API)."""
    return gettext(
        "Holt-Winters exponential smoothing (statsmodels ExponentialSmoothing): additive damped trend and "
        "additive weekly seasonality, fitted on the daily values of up to %(history)s days before the "
        "period (at least %(minimum)s), forecast for each day of the period and folded per month as "
        "the indicator folds its days."
    ) % {"history": HISTORY_DAYS, "minimum": MIN_HISTORY_DAYS}


def forecast_daily(history: list[float], horizon: int, *, season: int = SEASON_DAYS) -> np.ndarray:
    """`horizon` daily values after `history` forecast by Holt-Winters (see the module), never
    below zero (our indicators are counts, amounts and ratios)."""
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    values = np.asarray(history, dtype=float)
    if len(values) < max(MIN_HISTORY_DAYS, 2 * season):
        raise ValueError(f"a seasonal baseline needs at least {max(MIN_HISTORY_DAYS, 2 * season)} days of history")
    if np.allclose(values, values[0]):
        return np.full(horizon, values[0])
    with warnings.catch_warnings():
        # Convergence notes of the optimiser on short or flat series: the fit is still usable.
        warnings.simplefilter("ignore")
        model = ExponentialSmoothing(
            values,
            trend="add",
            damped_trend=True,
            seasonal="add",
            seasonal_periods=season,
            initialization_method="estimated",
        ).fit()
        forecast = model.forecast(horizon)
    return np.clip(np.nan_to_num(forecast, nan=float(values[-season:].mean())), 0, None)


@dataclass(frozen=True)
class MonthBaseline:
    month: date
    value: Decimal


@dataclass(frozen=True)
class Baseline:
    indicator: str
    history_start: date
    history_end: date
    history_days: int
    months: list[MonthBaseline]

    @property
    def method(self) -> str:
        return method_text()

    def for_month(self, month: date) -> Decimal | None:
        return next((m.value for m in self.months if m.month == month), None)


def month_baselines(*, indicator: str, months: list[date], history_days: int = HISTORY_DAYS) -> Baseline | None:
    """The baseline of `indicator` for each of `months` (consecutive first days), forecast from the
    days before the first one; None without enough history (fewer than MIN_HISTORY_DAYS days from
    the first day with a value other than 0 up to the period)."""
    found = get_indicator(indicator)
    start = months[0]
    last = months[-1]
    end = last.replace(day=calendar.monthrange(last.year, last.month)[1])
    history = daily_values(indicator, start=start - timedelta(days=history_days), end=start - timedelta(days=1))
    # Leading days without data are days before the product (or the indicator) existed, not zeros.
    first = next((i for i, (_day, value) in enumerate(history) if value), None)
    if first is None or len(history) - first < MIN_HISTORY_DAYS:
        return None
    kept = history[first:]
    horizon = (end - start).days + 1
    forecast = forecast_daily([float(v) for _d, v in kept], horizon)
    by_month: dict[date, list[Decimal]] = {m: [] for m in months}
    for offset, value in enumerate(forecast):
        day = start + timedelta(days=offset)
        by_month[day.replace(day=1)].append(Decimal(str(round(float(value), 4))))
    return Baseline(
        indicator=found.key,
        history_start=kept[0][0],
        history_end=kept[-1][0],
        history_days=len(kept),
        months=[MonthBaseline(m, fold_days(found.fold, by_month[m])) for m in months],
    )
