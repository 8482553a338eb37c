"""The statistics of an experiment, from statsmodels and scipy rather than hand-written formulas.

Per group: conversion rate with its Wilson 95% interval; against the control: absolute and
relative uplift, the interval of the difference (Newcombe's score method, which agrees with
Wilson) and the two-sided pooled two-proportion z-test; over all groups: the sample-ratio
mismatch chi-square test of `assigned` against the configured shares.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.stats import chisquare
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint, proportions_ztest


@dataclass(frozen=True)
class GroupCounts:
    name: str
    assigned: int
    converted: int
    expected_share: float | None = None


def _finite(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def wilson_interval(converted: int, assigned: int, alpha: float = 0.05) -> tuple[float | None, float | None]:
    if assigned <= 0:
        return None, None
    low, high = proportion_confint(converted, assigned, alpha=alpha, method="wilson")
    return _finite(low), _finite(high)


def ztest(treated: GroupCounts, control: GroupCounts) -> tuple[float | None, float | None]:
    """(z, two-sided p) of the pooled two-proportion z-test, treated minus control."""
    if treated.assigned <= 0 or control.assigned <= 0:
        return None, None
    total = treated.converted + control.converted
    if total == 0 or total == treated.assigned + control.assigned:
        # No variance at all: the groups cannot differ; statsmodels would divide by zero.
        return 0.0, 1.0
    z, p = proportions_ztest(
        [treated.converted, control.converted], [treated.assigned, control.assigned], alternative="two-sided"
    )
    return _finite(z), _finite(p)


def srm_p_value(groups: list[GroupCounts]) -> float | None:
    """Chi-square goodness of fit of the assigned counts to the expected shares (equal if none)."""
    observed = [g.assigned for g in groups]
    total = sum(observed)
    if len(groups) < 2 or total == 0:
        return None
    shares = [g.expected_share for g in groups]
    if any(s is None for s in shares):
        shares = [1.0] * len(groups)
    share_sum = float(sum(shares))
    if share_sum <= 0 or any(s <= 0 for s in shares):
        return None
    expected = [total * float(s) / share_sum for s in shares]
    return _finite(chisquare(observed, f_exp=expected).pvalue)


def analyze(groups: list[GroupCounts], *, control: str, alpha: float = 0.05, min_sample: int = 0) -> dict:
    """Per-group statistics against `control`, the SRM p-value and the winner: the best group
    significantly better than the control at `alpha`, with at least `min_sample` assigned in both."""
    by_name = {g.name: g for g in groups}
    base = by_name[control]
    out = []
    for group in groups:
        rate = group.converted / group.assigned if group.assigned else None
        low, high = wilson_interval(group.converted, group.assigned)
        row = {
            "name": group.name,
            "assigned": group.assigned,
            "converted": group.converted,
            "conversion_rate": _finite(rate),
            "ci_low": low,
            "ci_high": high,
            "uplift": None,
            "relative_uplift": None,
            "uplift_ci_low": None,
            "uplift_ci_high": None,
            "z": None,
            "p_value": None,
            "significant": False,
        }
        if group.name != control and group.assigned and base.assigned:
            base_rate = base.converted / base.assigned
            row["uplift"] = _finite(rate - base_rate)
            row["relative_uplift"] = _finite((rate - base_rate) / base_rate) if base_rate else None
            diff_low, diff_high = confint_proportions_2indep(
                group.converted, group.assigned, base.converted, base.assigned, method="newcomb", compare="diff"
            )
            row["uplift_ci_low"], row["uplift_ci_high"] = _finite(diff_low), _finite(diff_high)
            row["z"], row["p_value"] = ztest(group, base)
            row["significant"] = bool(
                row["p_value"] is not None
                and row["p_value"] < alpha
                and min(group.assigned, base.assigned) >= min_sample
            )
        out.append(row)
    better = [r for r in out if r["significant"] and (r["uplift"] or 0) > 0]
    winner = max(better, key=lambda r: r["conversion_rate"])["name"] if better else None
    return {"groups": out, "srm_p_value": srm_p_value(groups), "winner": winner}
