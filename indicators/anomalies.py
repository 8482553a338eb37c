"""Indicators watching themselves: each registered indicator checked daily (event volume also
hourly) against a seasonal baseline with robust thresholds; an alert names the indicator, the
expected range, the value and the channels (`utm_source`) that moved most.

The check of one point (`check_point`), the same code the beat task and `bench/anomalies.py` run:
1. the history before the point (8 weeks of days, or 7 days of hours) is fitted by a robust
   regression (statsmodels `RLM`): a level, a linear trend and one effect per weekday (or hour);
   Tukey's biweight gives a spike or drop in the history no weight at all, so it moves neither
   the trend nor its weekday's effect, and the noise's scale is Huber's proposal 2, which reads a
   8-week history about twice as precisely as a median absolute deviation would;
2. the expected value is the fitted line carried one step on, with its weekday's (or hour's) effect;
3. the scale is the forecast's standard error: the noise's scale (corrected for the fitted
   parameters) widened by the uncertainty of the fitted level, trend and effect at that point;
   never below `SCALE_FLOOR` of the history's median level (a flat series has no noise and would
   alert on any wobble);
4. the expected range is expected +/- k x scale, k set by the indicator's sensitivity (`SENSITIVITY_K`);
   a value outside is an anomaly, a spike above or a drop below.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
from django.db import transaction
from django.utils import timezone

from config.celery import publish
from config.failures import log_failure
from indicators.models import (
    SENSITIVITY_K,
    Anomaly,
    AnomalyCheckRun,
    CheckKind,
    IndicatorWatch,
    NotifyStatus,
    Sensitivity,
)
from indicators.registry import Unit, all_indicators, daily_values, get_indicator, value_text
from tracking.events_store import events_store

logger = logging.getLogger(__name__)

DAILY_HISTORY_DAYS = 56
HOURLY_HISTORY_HOURS = 7 * 24
MAD_TO_SIGMA = 1.4826
SCALE_FLOOR = 0.02


def _design(points: int, period: int) -> np.ndarray:
    """Columns: level, trend (in periods), and an effect for each position in the period but the first."""
    t = np.arange(points)
    columns = [np.ones(points), t / period] + [(t % period == j).astype(float) for j in range(1, period)]
    return np.column_stack(columns)


def _robust_fit(y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, float]:
    """Parameters and the noise's scale of `y ~ x`, outliers weighed out (see the module)."""
    import statsmodels.api as sm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fit = sm.RLM(y, x, M=sm.robust.norms.TukeyBiweight()).fit(scale_est=sm.robust.scale.HuberScale())
            params, scale = np.asarray(fit.params), float(fit.scale)
            if np.all(np.isfinite(params)) and np.isfinite(scale):
                return params, scale
        except (ValueError, ZeroDivisionError, np.linalg.LinAlgError):
            pass  # a history with no spread at all: least squares below, its scale from the MAD
    params = np.linalg.lstsq(x, y, rcond=None)[0]
    residuals = y - x @ params
    return params, MAD_TO_SIGMA * float(np.median(np.abs(residuals - np.median(residuals))))


# Lead days of zeros are days before the indicator had data: the check needs this many real days.
MIN_POINTS_DAILY = 28
MIN_POINTS_HOURLY = 3 * 24
EVENT_VOLUME = "event_volume"


@dataclass(frozen=True)
class PointCheck:
    value: float
    expected: float
    low: float
    high: float
    scale: float

    @property
    def anomalous(self) -> bool:
        return not self.low <= self.value <= self.high

    @property
    def direction(self) -> str:
        return "spike" if self.value > self.high else "drop" if self.value < self.low else ""

    @property
    def score(self) -> float:
        """How many scales the value lies from the expected value (signed)."""
        return (self.value - self.expected) / self.scale if self.scale else 0.0


def check_point(history: Sequence[float], value: float, *, period: int, k: float) -> PointCheck:
    """Check `value`, the point right after `history`, against the robust seasonal baseline of
    the history (see the module). `history` needs at least two periods."""
    values = np.asarray(history, dtype=float)
    n = len(values)
    if n < 2 * period:
        raise ValueError(f"the check needs at least {2 * period} points of history, got {n}")
    level = float(np.median(np.abs(values)))
    x = _design(n + 1, period)
    fitted, at = x[:n], x[n]
    params, noise = _robust_fit(values, fitted)
    expected = float(at @ params)
    # The scale is read from residuals that the fitted parameters drew towards the data.
    noise *= float(np.sqrt(n / max(n - fitted.shape[1], 1)))
    leverage = float(at @ np.linalg.pinv(fitted.T @ fitted) @ at)
    scale = max(noise * float(np.sqrt(1 + leverage)), SCALE_FLOOR * level, 1e-9)
    return PointCheck(
        value=float(value), expected=expected, low=expected - k * scale, high=expected + k * scale, scale=scale
    )


def check_series(
    values: Sequence[float], *, period: int, k: float, history: int, start: int | None = None
) -> list[int]:
    """Indexes of the points of `values` that are anomalous, each checked against the `history`
    points before it (the bench replays a year through this, as the daily check runs day by day)."""
    found = []
    for i in range(start if start is not None else history, len(values)):
        window = values[max(0, i - history) : i]
        if check_point(window, values[i], period=period, k=k).anomalous:
            found.append(i)
    return found


# --- the checks of the stored indicators -----------------------------------------------------------


def watch_settings() -> dict[str, IndicatorWatch]:
    return {w.indicator: w for w in IndicatorWatch.objects.all()}


def _k(watch: IndicatorWatch | None) -> float:
    return SENSITIVITY_K[watch.sensitivity if watch else Sensitivity.NORMAL]


def _trim_leading_zeros(values: list[float]) -> list[float]:
    first = next((i for i, v in enumerate(values) if v), len(values))
    return values[first:]


# Per traffic source (the events' own `utm_source`, '(direct)' without one), a measure of each
# window (`tracking.events_store.SourceWindow`): the first window is the one checked, the others
# its comparison (the same weekday of the four weeks before, or the same hour of the seven days before).
MEASURES = ("events", "people", "orders", "revenue")
MOVERS_SHOWN = 3


def measure_for(indicator: str) -> str:
    """Which per-source measure explains an indicator's move: money indicators by order amounts,
    order indicators by orders, people indicators by distinct people, anything else by events."""
    if indicator in ("revenue", "arpu"):
        return "revenue"
    if indicator in ("orders", "paying_users", "repurchase_rate"):
        return "orders"
    if indicator == EVENT_VOLUME:
        return "events"
    try:
        unit = get_indicator(indicator).unit
    except KeyError:
        return "events"
    return "revenue" if unit == Unit.MONEY else "people" if unit == Unit.USERS else "events"


def source_movers(*, windows: list[tuple[datetime, datetime]], measure: str) -> list[dict[str, Any]]:
    """The sources whose measure in `windows[0]` moved most from its mean over the other windows,
    largest absolute change first."""
    if measure not in MEASURES:
        raise ValueError(f"unknown measure {measure!r}")
    by_source: dict[str, dict[int, Decimal]] = {}
    for row in events_store().source_windows(windows=windows):
        by_source.setdefault(row.source, {})[row.window] = Decimal(getattr(row, measure))
    compared = len(windows) - 1
    movers = []
    for source, values in by_source.items():
        now = values.get(0, Decimal(0))
        before = sum((values.get(n, Decimal(0)) for n in range(1, len(windows))), Decimal(0)) / max(compared, 1)
        change = now - before
        movers.append(
            {
                "source": source,
                "measure": measure,
                "value": str(now.quantize(Decimal("0.01"))),
                "usual": str(before.quantize(Decimal("0.01"))),
                "change": str(change.quantize(Decimal("0.01"))),
                "relative": None if not before else round(float(change / before), 4),
            }
        )
    # Ties by name: the engines return their rows in no particular order.
    movers.sort(key=lambda m: (-abs(Decimal(m["change"])), m["source"]))
    return movers[:MOVERS_SHOWN]


def _day_window(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time.min, tzinfo=UTC)
    return start, start + timedelta(days=1)


def hourly_event_counts(*, start: datetime, hours: int) -> list[float]:
    """Events stored per hour from `start` (UTC, on the hour), `hours` of them, 0 where none."""
    counts = events_store().hourly_event_counts(start=start, end=start + timedelta(hours=hours))
    return [float(counts.get(start + timedelta(hours=h), 0)) for h in range(hours)]


def _alert(
    *, run: AnomalyCheckRun, indicator: str, granularity: str, at: datetime, check: PointCheck, unit: str, movers: list
) -> Anomaly | None:
    """The alert of one anomalous point, once (a repeated run finds the one it made)."""
    from indicators.services import alert_emails, alert_webhooks  # the services import this module

    alert, created = Anomaly.objects.get_or_create(
        indicator=indicator,
        granularity=granularity,
        period_start=at,
        defaults={
            "run": run,
            "value": Decimal(value_text(Decimal(str(check.value)), unit)),
            "expected": Decimal(str(round(check.expected, 4))),
            "low": Decimal(str(round(check.low, 4))),
            "high": Decimal(str(round(check.high, 4))),
            "score": round(check.score, 2),
            "direction": check.direction,
            "movers": movers,
            "email_status": NotifyStatus.PENDING if alert_emails() else NotifyStatus.SKIPPED,
            "webhook_status": NotifyStatus.PENDING if alert_webhooks() else NotifyStatus.SKIPPED,
        },
    )
    return alert if created else None


def _check_daily(run: AnomalyCheckRun) -> list[Anomaly]:
    day = run.period_start.astimezone(UTC).date()
    watches = watch_settings()
    created = []
    checked = 0
    for indicator in all_indicators():
        watch = watches.get(indicator.key)
        if watch and watch.muted:
            continue
        series = daily_values(indicator.key, start=day - timedelta(days=DAILY_HISTORY_DAYS), end=day)
        values = _trim_leading_zeros([float(v) for _d, v in series])
        if len(values) - 1 < MIN_POINTS_DAILY:
            continue
        checked += 1
        check = check_point(values[:-1], values[-1], period=7, k=_k(watch))
        if not check.anomalous:
            continue
        windows = [_day_window(day - timedelta(days=7 * n)) for n in range(5)]
        movers = source_movers(windows=windows, measure=measure_for(indicator.key))
        alert = _alert(
            run=run,
            indicator=indicator.key,
            granularity=CheckKind.DAILY,
            at=run.period_start,
            check=check,
            unit=indicator.unit,
            movers=movers,
        )
        if alert:
            created.append(alert)
    run.indicators_checked = checked
    return created


def _check_hourly(run: AnomalyCheckRun) -> list[Anomaly]:
    hour = run.period_start.astimezone(UTC)
    watch = watch_settings().get(EVENT_VOLUME)
    run.indicators_checked = 0
    if watch and watch.muted:
        return []
    values = hourly_event_counts(start=hour - timedelta(hours=HOURLY_HISTORY_HOURS), hours=HOURLY_HISTORY_HOURS + 1)
    values = _trim_leading_zeros(values)
    if len(values) - 1 < MIN_POINTS_HOURLY:
        return []
    run.indicators_checked = 1
    check = check_point(values[:-1], values[-1], period=24, k=_k(watch))
    if not check.anomalous:
        return []
    windows = [(hour - timedelta(days=n), hour - timedelta(days=n) + timedelta(hours=1)) for n in range(8)]
    movers = source_movers(windows=windows, measure="events")
    alert = _alert(
        run=run,
        indicator=EVENT_VOLUME,
        granularity=CheckKind.HOURLY,
        at=hour,
        check=check,
        unit=Unit.COUNT,
        movers=movers,
    )
    return [alert] if alert else []


def run_check(*, run_id: int) -> AnomalyCheckRun:
    """Run a queued check: one transaction writes its alerts and marks it done. A run already done
    or failed is returned untouched (a redelivered task is harmless); a failure marks it failed
    with the reason (traceback in the log) and raises again; it stays failed until retried."""
    from indicators import tasks  # tasks import this module

    run = AnomalyCheckRun.objects.get(pk=run_id)
    if run.status in (AnomalyCheckRun.Status.DONE, AnomalyCheckRun.Status.FAILED):
        return run
    AnomalyCheckRun.objects.filter(pk=run.pk).update(status=AnomalyCheckRun.Status.RUNNING, started_at=timezone.now())
    try:
        with transaction.atomic():
            run = AnomalyCheckRun.objects.select_for_update().get(pk=run_id)
            alerts = _check_daily(run) if run.kind == CheckKind.DAILY else _check_hourly(run)
            run.status = AnomalyCheckRun.Status.DONE
            run.alerts = len(alerts)
            run.finished_at = timezone.now()
            run.save(update_fields=["status", "alerts", "finished_at", "indicators_checked"])
            for alert in alerts:
                transaction.on_commit(
                    lambda pk=alert.pk: publish(f"anomaly alert {pk}", tasks.notify_anomaly, kwargs={"anomaly_id": pk})
                )
    except Exception as exc:
        AnomalyCheckRun.objects.filter(pk=run_id).update(
            status=AnomalyCheckRun.Status.FAILED,
            finished_at=timezone.now(),
            error=log_failure(logger, f"anomaly check run {run_id}", exc),
        )
        raise
    return run
