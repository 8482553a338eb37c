"""Anomaly alerts: precision and recall of the indicators' checks on synthetic indicators.

    .venv/bin/python bench/anomalies.py                  # 10 shops: 12 indicators, a year, 20 anomalies
    .venv/bin/python bench/anomalies.py --seed 7 --seeds 1 --indicators 6 --sensitivity high

Generates `--indicators` daily series of `--days` days, each with its own level (50 to 200,000),
weekly seasonality (10-30% swing), linear trend (-30% to +40% over the year) and Gaussian noise
(3-6% of the level), injects `--anomalies` spikes and drops of a known size (30% to 60% of the
day's normal value, drawn per anomaly; never on the first `HISTORY` days, at most one per
indicator-week), and replays every day after the first `HISTORY` days through the same check the
daily beat task runs (`indicators.anomalies.check_series` -> `check_point`: a robust seasonal
regression, its forecast's standard error times the sensitivity's k).

An alert on an injected day is a true positive; any other alert a false one. Reported: precision
(true alerts / alerts), recall (injected days alerted / injected), and false alerts per
indicator-month of checked days. One drawn shop can be lucky or unlucky (20 anomalies: one missed
is 5 points of recall), so the bench draws `--seeds` shops (seeds `--seed`, `--seed` + 1, ...),
prints each and the worst, and reports their mean. Goals: precision and recall >= 0.9, false <= 1
per indicator-month. The last line (the means) is machine-readable:

    precision <p> recall <r> false_per_indicator_month <f>
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class BenchResult:
    precision: float
    recall: float
    false_per_indicator_month: float
    alerts: int
    true_alerts: int
    injected: int

    def line(self) -> str:
        return (
            f"precision {self.precision:.3f} recall {self.recall:.3f} "
            f"false_per_indicator_month {self.false_per_indicator_month:.3f}"
        )


def generate(
    *, rng: np.random.Generator, indicators: int, days: int, anomalies: int, history: int
) -> tuple[list[np.ndarray], set[tuple[int, int]]]:
    """The series and the (indicator, day) of each injected anomaly."""
    series = []
    t = np.arange(days)
    for _ in range(indicators):
        level = float(np.exp(rng.uniform(np.log(50), np.log(200_000))))
        weekly = rng.uniform(0.10, 0.30) * np.sin(2 * np.pi * (t + rng.integers(7)) / 7)
        trend = rng.uniform(-0.30, 0.40) * t / days
        normal = level * (1 + trend + weekly)
        noise = rng.normal(0, rng.uniform(0.03, 0.06), size=days) * normal
        series.append(np.clip(normal + noise, 0, None))
    injected: set[tuple[int, int]] = set()
    weeks_taken: set[tuple[int, int]] = set()
    while len(injected) < anomalies:
        which = int(rng.integers(indicators))
        day = int(rng.integers(history, days))
        if (which, day // 7) in weeks_taken:
            continue
        size = rng.uniform(0.30, 0.60) * (1 if rng.random() < 0.5 else -1)
        series[which][day] *= 1 + size
        injected.add((which, day))
        weeks_taken.add((which, day // 7))
    return series, injected


def run(
    *,
    seed: int = 20,
    indicators: int = 12,
    days: int = 365,
    anomalies: int = 20,
    sensitivity: str = "normal",
) -> BenchResult:
    from indicators.anomalies import DAILY_HISTORY_DAYS, check_series
    from indicators.models import SENSITIVITY_K

    rng = np.random.default_rng(seed)
    series, injected = generate(
        rng=rng, indicators=indicators, days=days, anomalies=anomalies, history=DAILY_HISTORY_DAYS
    )
    alerts: set[tuple[int, int]] = set()
    for which, values in enumerate(series):
        found = check_series(list(values), period=7, k=SENSITIVITY_K[sensitivity], history=DAILY_HISTORY_DAYS)
        alerts.update((which, day) for day in found)
    true = len(alerts & injected)
    false = len(alerts - injected)
    indicator_months = indicators * (days - DAILY_HISTORY_DAYS) / (365.25 / 12)
    return BenchResult(
        precision=true / len(alerts) if alerts else 1.0,
        recall=len(injected & alerts) / len(injected) if injected else 1.0,
        false_per_indicator_month=false / indicator_months,
        alerts=len(alerts),
        true_alerts=true,
        injected=len(injected),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=10, help="how many shops to draw (seeds --seed, --seed + 1, ...)")
    parser.add_argument("--indicators", type=int, default=12)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--anomalies", type=int, default=20)
    parser.add_argument("--sensitivity", choices=["low", "normal", "high"], default="normal")
    args = parser.parse_args()
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.development")
    import django

    django.setup()
    from indicators.anomalies import DAILY_HISTORY_DAYS

    # With no anomaly injected, or no day past the history the check needs, precision and recall
    # would read 1.0 over nothing.
    if args.anomalies < 1 or args.indicators < 1 or args.days < DAILY_HISTORY_DAYS + 28:
        raise SystemExit(
            f"the workload is empty or trivially small: {args.anomalies} anomalies, {args.indicators} indicators, "
            f"{args.days} days (at least 1, 1 and {DAILY_HISTORY_DAYS + 28}); no ratio"
        )
    results = []
    for seed in range(args.seed, args.seed + args.seeds):
        result = run(
            seed=seed,
            indicators=args.indicators,
            days=args.days,
            anomalies=args.anomalies,
            sensitivity=args.sensitivity,
        )
        if result.injected < args.anomalies:
            raise SystemExit(f"only {result.injected} of {args.anomalies} anomalies were injected; no ratio")
        print(
            f"seed {seed}: {args.indicators} indicators x {args.days} days, {result.injected} injected, "
            f"{result.alerts} alerts ({result.true_alerts} on injected days): {result.line()}",
            flush=True,
        )
        results.append(result)
    print(
        f"worst of {len(results)}: precision {min(r.precision for r in results):.3f} "
        f"recall {min(r.recall for r in results):.3f} "
        f"false_per_indicator_month {max(r.false_per_indicator_month for r in results):.3f}; "
        f"sensitivity {args.sensitivity}; mean:"
    )
    mean = BenchResult(
        precision=float(np.mean([r.precision for r in results])),
        recall=float(np.mean([r.recall for r in results])),
        false_per_indicator_month=float(np.mean([r.false_per_indicator_month for r in results])),
        alerts=sum(r.alerts for r in results),
        true_alerts=sum(r.true_alerts for r in results),
        injected=sum(r.injected for r in results),
    )
    print(mean.line())


if __name__ == "__main__":
    main()
