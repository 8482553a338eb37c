"""The statistics of an experiment, from statsmodels and scipy rather than hand-written formulas.

Per group: conversion rate with its Wilson 95% interval; against the control: absolute and
relative uplift, the interval of the difference (Newcombe's score method, which agrees with
Wilson) and the two-sided pooled two-proportion z-test; over all groups: the sample-ratio
mismatch chi-square test of `assigned` against the configured shares.

Those fixed-horizon numbers are valid only when read once, at a size fixed in advance. Beside
them, `method="sequential"` gives always-valid p-values and confidence sequences (the mixture
sequential probability ratio test), which stay valid however often they are looked at; the
winner rule built on them corrects for several variants (Holm) and never names a winner while
the sample ratio is off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from django.utils.translation import gettext
from scipy.stats import chisquare
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint, proportions_ztest

FIXED = "fixed"
SEQUENTIAL = "sequential"
METHODS = (FIXED, SEQUENTIAL)
# Below this sample-ratio p-value the assignment itself is suspect (the usual threshold, Fabijan
# et al. 2019, "Diagnosing Sample Ratio Mismatch in Online Controlled Experiments"): no winner.
SRM_THRESHOLD = 0.001
# The number of members (both groups of a comparison together) at which the confidence sequence
# is tightest. Any value keeps the guarantee; a wrong one only widens the intervals somewhat.
DEFAULT_PLANNED_SAMPLE = 2000


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


@dataclass(frozen=True)
class AlwaysValid:
    """An always-valid p-value and the confidence sequence of the same test, at the current counts."""

    estimate: float | None
    p_value: float | None
    low: float | None
    high: float | None


def mixture_rho2(alpha: float, planned_sample: int) -> float:
    """The mixing variance (per unit of variance of one observation) that makes the confidence
    sequence tightest at `planned_sample` observations: Howard, Ramdas, McAuliffe & Sekhon (2021),
    "Time-uniform, nonparametric, nonasymptotic confidence sequences", eq. (3.12), as used by
    Waudby-Smith et al. (2021) for their asymptotic confidence sequences."""
    two_log = -2.0 * math.log(alpha)
    return (two_log + math.log(two_log + 1.0)) / max(int(planned_sample), 1)


def mixture_sprt(
    estimate: float, variance: float, n: int, *, alpha: float = 0.05, planned_sample: int = DEFAULT_PLANNED_SAMPLE
) -> AlwaysValid:
    """Always-valid inference on a mean difference from its estimate, the estimate's variance and
    the number of observations behind it.

    The mixture SPRT with a normal mixing distribution N(0, tau^2) of Johari, Pekelis & Walsh
    (2022), "Always Valid Inference: Continuous Monitoring of A/B Tests", Operations Research
    70(3), eq. (6) / section 4 for two-sample tests, on the normal approximation of the estimate
    (the asymptotic confidence sequences of Waudby-Smith, Arbour, Sinha, Kennedy & Ramdas (2021),
    "Time-uniform central limit theory and asymptotic confidence sequences", Thm 2.2, which is
    the same boundary). With V the estimate's variance and tau^2 = rho^2 n V,

        Lambda(theta) = sqrt(V / (V + tau^2)) * exp(tau^2 (estimate - theta)^2 / (2 V (V + tau^2)))

    is a nonnegative martingale under theta, so by Ville's inequality the p-value 1/Lambda(0)
    and the set {theta : Lambda(theta) < 1/alpha} hold at every look at once. The interval is
    that set, so `p_value < alpha` exactly when the interval leaves out 0."""
    if n <= 0 or not math.isfinite(estimate):
        return AlwaysValid(None, None, None, None)
    if variance <= 0 or not math.isfinite(variance):
        # No spread at all (every member or none converted): nothing tells the groups apart.
        return AlwaysValid(_finite(estimate), 1.0 if estimate == 0 else None, None, None)
    growth = n * mixture_rho2(alpha, planned_sample)  # tau^2 / V
    log_lambda = -0.5 * np.log1p(growth) + 0.5 * (estimate**2 / variance) * growth / (1.0 + growth)
    p_value = float(min(1.0, np.exp(-log_lambda)))
    half = math.sqrt(variance * (1.0 + growth) / growth * (np.log1p(growth) - 2.0 * math.log(alpha)))
    return AlwaysValid(_finite(estimate), _finite(p_value), _finite(estimate - half), _finite(estimate + half))


def sequential_rate(
    converted: int, assigned: int, *, alpha: float = 0.05, planned_sample: int = DEFAULT_PLANNED_SAMPLE
) -> AlwaysValid:
    """The always-valid confidence sequence of one group's conversion rate."""
    if assigned <= 0:
        return AlwaysValid(None, None, None, None)
    rate = converted / assigned
    result = mixture_sprt(rate, rate * (1 - rate) / assigned, assigned, alpha=alpha, planned_sample=planned_sample)
    if result.low is None:
        return AlwaysValid(rate, None, rate, rate)
    return AlwaysValid(rate, None, max(0.0, result.low), min(1.0, result.high))


def sequential_difference(
    treated: GroupCounts, control: GroupCounts, *, alpha: float = 0.05, planned_sample: int = DEFAULT_PLANNED_SAMPLE
) -> AlwaysValid:
    """Always-valid p-value and confidence sequence of treated minus control conversion rate
    (unpooled variance, so that the interval and the p-value are the same test inverted)."""
    if treated.assigned <= 0 or control.assigned <= 0:
        return AlwaysValid(None, None, None, None)
    p1, p0 = treated.converted / treated.assigned, control.converted / control.assigned
    variance = p1 * (1 - p1) / treated.assigned + p0 * (1 - p0) / control.assigned
    return mixture_sprt(
        p1 - p0, variance, treated.assigned + control.assigned, alpha=alpha, planned_sample=planned_sample
    )


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm-adjusted p-values (Holm 1979, "A simple sequentially rejective multiple test
    procedure"); None stays None. The same numbers as statsmodels' `multipletests(method="holm")`,
    which runs a full garbage collection on every call: too slow for a decision made at every
    look of every simulated run. Holm's step-down is valid for always-valid p-values too: a true
    null is first rejected only if the smallest true-null p-value falls below alpha / m0 at some
    look, which the union bound over their anytime guarantees caps at alpha."""
    present = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (len(present) - rank) * p))
        out[i] = running
    return out


def sequential_decision(
    groups: list[GroupCounts],
    *,
    control: str,
    candidates: list[str] | None = None,
    alpha: float = 0.05,
    min_sample: int = 0,
    planned_sample: int = DEFAULT_PLANNED_SAMPLE,
) -> dict:
    """The winner on always-valid evidence: the candidate that beats the control and every other
    candidate, each comparison Holm-adjusted over the whole family (every candidate against the
    control and every pair of candidates), each with at least `min_sample` in both groups, and
    none while the sample ratio is off (p < SRM_THRESHOLD).

    Returns per candidate the comparison with the control (`vs_control`) and with each other
    candidate (`vs_others`), the SRM p-value, `srm_blocked`, `winner` and, when there is none,
    `reason`."""
    by_name = {g.name: g for g in groups}
    names = [n for n in (candidates if candidates is not None else [g.name for g in groups]) if n != control]
    pairs: list[tuple[str, str]] = [(n, control) for n in names]
    pairs += [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    tests = [
        sequential_difference(by_name[a], by_name[b], alpha=alpha, planned_sample=planned_sample) for a, b in pairs
    ]
    adjusted = holm([t.p_value for t in tests])
    comparisons: dict[tuple[str, str], dict] = {}
    for (a, b), t, adj in zip(pairs, tests, adjusted, strict=True):
        enough = min(by_name[a].assigned, by_name[b].assigned) >= min_sample
        row = {"estimate": t.estimate, "low": t.low, "high": t.high, "p_value": t.p_value, "p_value_holm": adj}
        comparisons[(a, b)] = {**row, "enough": enough}
        flipped = {
            "estimate": None if t.estimate is None else -t.estimate,
            "low": None if t.high is None else -t.high,
            "high": None if t.low is None else -t.low,
            "p_value": t.p_value,
            "p_value_holm": adj,
        }
        comparisons[(b, a)] = {**flipped, "enough": enough}

    def beats(a: str, b: str) -> bool:
        c = comparisons[(a, b)]
        return bool(
            c["enough"] and c["p_value_holm"] is not None and c["p_value_holm"] < alpha and (c["estimate"] or 0) > 0
        )

    per_group = {}
    winners = []
    for name in names:
        others = [o for o in names if o != name]
        per_group[name] = {
            "vs_control": {k: v for k, v in comparisons[(name, control)].items() if k != "enough"},
            "vs_others": [
                {
                    "name": o,
                    **{k: v for k, v in comparisons[(name, o)].items() if k != "enough"},
                    "beats": beats(name, o),
                }
                for o in others
            ],
            "beats_control": beats(name, control),
        }
        if beats(name, control) and all(beats(name, o) for o in others):
            winners.append(name)
    srm = srm_p_value(groups)
    blocked = srm is not None and srm < SRM_THRESHOLD
    winner = winners[0] if winners and not blocked else None
    reason = None
    if blocked:
        reason = gettext("sample ratio mismatch (p = %(p)s < %(threshold)s): the groups are out of balance") % {
            "p": f"{srm:.4g}",
            "threshold": SRM_THRESHOLD,
        }
    elif winner is None:
        reason = gettext("no variant beats the control and every other variant on always-valid evidence yet")
    return {"groups": per_group, "srm_p_value": srm, "srm_blocked": blocked, "winner": winner, "reason": reason}


def analyze(
    groups: list[GroupCounts],
    *,
    control: str,
    alpha: float = 0.05,
    min_sample: int = 0,
    method: str = FIXED,
    planned_sample: int = DEFAULT_PLANNED_SAMPLE,
) -> dict:
    """Per-group statistics against `control`, the SRM p-value and the winner.

    `fixed`: the fixed-horizon test, valid when read once; the winner is the best group
    significantly better than the control at `alpha`, with at least `min_sample` in both.
    `sequential`: `p_value` and the intervals are always valid (see `mixture_sprt`), `z` is
    None, `p_value_holm` is adjusted over every comparison, and the winner is the group that
    `sequential_decision` names."""
    if method == SEQUENTIAL:
        return _analyze_sequential(
            groups, control=control, alpha=alpha, min_sample=min_sample, planned_sample=planned_sample
        )
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
    return {"method": FIXED, "groups": out, "srm_p_value": srm_p_value(groups), "winner": winner}


def _analyze_sequential(
    groups: list[GroupCounts], *, control: str, alpha: float, min_sample: int, planned_sample: int
) -> dict:
    decision = sequential_decision(
        groups, control=control, alpha=alpha, min_sample=min_sample, planned_sample=planned_sample
    )
    by_name = {g.name: g for g in groups}
    base = by_name[control]
    out = []
    for group in groups:
        rate = sequential_rate(group.converted, group.assigned, alpha=alpha, planned_sample=planned_sample)
        row = {
            "name": group.name,
            "assigned": group.assigned,
            "converted": group.converted,
            "conversion_rate": _finite(rate.estimate),
            "ci_low": rate.low,
            "ci_high": rate.high,
            "uplift": None,
            "relative_uplift": None,
            "uplift_ci_low": None,
            "uplift_ci_high": None,
            "z": None,
            "p_value": None,
            "p_value_holm": None,
            "significant": False,
            "vs_others": [],
        }
        if group.name != control:
            own = decision["groups"][group.name]
            vs = own["vs_control"]
            base_rate = base.converted / base.assigned if base.assigned else None
            row["uplift"] = vs["estimate"]
            if vs["estimate"] is not None and base_rate:
                row["relative_uplift"] = _finite(vs["estimate"] / base_rate)
            row["uplift_ci_low"], row["uplift_ci_high"] = vs["low"], vs["high"]
            row["p_value"], row["p_value_holm"] = vs["p_value"], vs["p_value_holm"]
            row["significant"] = own["beats_control"] or bool(
                vs["p_value_holm"] is not None
                and vs["p_value_holm"] < alpha
                and min(group.assigned, base.assigned) >= min_sample
            )
            row["vs_others"] = own["vs_others"]
        out.append(row)
    return {
        "method": SEQUENTIAL,
        "groups": out,
        "srm_p_value": decision["srm_p_value"],
        "srm_blocked": decision["srm_blocked"],
        "winner": decision["winner"],
        "reason": decision["reason"],
    }


def cuped_difference(
    treated: tuple[np.ndarray, np.ndarray],
    control: tuple[np.ndarray, np.ndarray],
    theta: np.ndarray,
    *,
    alpha: float = 0.05,
    planned_sample: int = DEFAULT_PLANNED_SAMPLE,
) -> dict:
    """The always-valid uplift of treated over control after CUPED (Deng, Xu, Kohavi & Walker
    (2013), "Improving the Sensitivity of Online Controlled Experiments by Utilizing
    Pre-Experiment Data", WSDM): each member's outcome y becomes y - (x - mean x) theta, where x
    holds what was known before assignment and theta comes from `cuped_theta`. The same mixture
    SPRT as the raw uplift, on the adjusted estimate and its (smaller) variance.

    Each of `treated` and `control` is (outcomes, covariates: one row per member). Where the
    adjustment would not narrow the interval (theta fitted on other groups can, on a small
    comparison), theta is 0 and the adjusted numbers are the raw ones: never wider."""
    (y1, x1), (y0, x0) = treated, control
    n1, n0 = len(y1), len(y0)
    if n1 == 0 or n0 == 0:
        return {"uplift": None, "low": None, "high": None, "p_value": None, "variance_ratio": None}
    centre = np.vstack([x1, x0]).mean(axis=0)
    raw_variance = y1.var() / n1 + y0.var() / n0
    a1, a0 = y1 - (x1 - centre) @ theta, y0 - (x0 - centre) @ theta
    variance = a1.var() / n1 + a0.var() / n0
    estimate = float(a1.mean() - a0.mean())
    if not variance < raw_variance:
        variance, estimate = raw_variance, float(y1.mean() - y0.mean())
    result = mixture_sprt(estimate, float(variance), n1 + n0, alpha=alpha, planned_sample=planned_sample)
    ratio = float(variance / raw_variance) if raw_variance > 0 else None
    return {
        "uplift": result.estimate,
        "low": result.low,
        "high": result.high,
        "p_value": result.p_value,
        "variance_ratio": ratio,
    }


def cuped_theta(groups: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The CUPED coefficients: least squares of the outcome on the covariates, both centred within
    each group so that the treatment effect does not leak into theta (Deng et al. 2013, section
    3.3, with several covariates as in their regression form)."""
    ys = [y - y.mean() for y, x in groups if len(y)]
    xs = [x - x.mean(axis=0) for y, x in groups if len(y)]
    if not ys:
        return np.zeros(0)
    x, y = np.vstack(xs), np.concatenate(ys)
    theta, *_ = np.linalg.lstsq(x, y, rcond=None)
    return theta
