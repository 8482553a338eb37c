"""Customer lifetime value: the BG/NBD model of repeat purchases (Fader, Hardie & Lee 2005,
"Counting your customers the easy way", Marketing Science 24(2)) and the Gamma-Gamma model of
spend per purchase (Fader & Hardie 2013, "The Gamma-Gamma model of monetary value").

The published likelihoods are implemented here with scipy rather than taken from a library:
`lifetimes` is unmaintained and breaks on current pandas and scipy, and pymc-marketing, though
it installs, brings some forty packages (pytensor, numba, arviz, matplotlib ...) into the web
process for what is a four-parameter maximum-likelihood fit (see docs/predictions.md).

Customers are summarised as in the paper: `x` repeat purchases, `t_x` the time of the last
purchase and `T` the age of the customer, both since the first purchase, in any one time unit.
Customers with the same (x, t_x, T) contribute the same likelihood term, so the fit sums over
distinct triples weighted by their count: with times in whole days a million customers collapse
to a few hundred thousand terms.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special

logger = logging.getLogger(__name__)

# Below this many customers (or repeat customers for Gamma-Gamma) a fit is refused: four
# parameters from a handful of people are noise, and operators would act on them.
MIN_CUSTOMERS = 50
MIN_REPEAT_CUSTOMERS = 20
# Parameters are searched on a log scale within e^-15 .. e^15.
LOG_BOUND = 15.0
# Customers the BG/NBD simplex search looks at (see fit_bgnbd); the polish uses all of them.
SEARCH_SAMPLE = 20_000
SEED = 20050101
SIMPLEX_OPTIONS = {"xatol": 1e-6, "fatol": 1e-10, "maxiter": 4000, "maxfev": 6000}
# From last night's parameters the simplex needs a few hundred steps; one that needs many more is
# lost on a ridge, and the search from the usual start (`fit_bgnbd`) is the quicker way out.
FROM_START_OPTIONS = {**SIMPLEX_OPTIONS, "maxiter": 1000, "maxfev": 1500}


class NotEnoughData(ValueError):
    """Too few customers, or no repeat purchases, to fit a model."""


class FitFailed(RuntimeError):
    """The optimiser did not converge, or converged to parameters outside the model's range."""


@dataclass(frozen=True)
class BgNbdParams:
    r: float
    alpha: float
    a: float
    b: float
    log_likelihood: float

    def as_dict(self) -> dict[str, float]:
        return {"r": self.r, "alpha": self.alpha, "a": self.a, "b": self.b, "log_likelihood": self.log_likelihood}


@dataclass(frozen=True)
class GammaGammaParams:
    p: float
    q: float
    v: float
    log_likelihood: float

    def as_dict(self) -> dict[str, float]:
        return {"p": self.p, "q": self.q, "v": self.v, "log_likelihood": self.log_likelihood}


def _distinct(*columns: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Distinct rows of the columns and how often each occurs."""
    stacked = np.column_stack(columns)
    unique, counts = np.unique(stacked, axis=0, return_counts=True)
    return [unique[:, i] for i in range(unique.shape[1])], counts.astype(float)


def bgnbd_log_likelihood(
    r: float, alpha: float, a: float, b: float, x: np.ndarray, t_x: np.ndarray, T: np.ndarray
) -> np.ndarray:
    """Each customer's log-likelihood, equation (6) of Fader, Hardie & Lee (2005)."""
    a1 = special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha)
    a2 = special.gammaln(a + b) + special.gammaln(b + x) - special.gammaln(b) - special.gammaln(a + b + x)
    a3 = -(r + x) * np.log(alpha + T)
    repeat = x > 0
    # For x = 0 the second term is absent; log(b + x - 1) is only evaluated where it exists.
    a4 = np.where(
        repeat,
        np.log(a) - np.log(np.where(repeat, b + x - 1, 1.0)) - (r + x) * np.log(alpha + t_x),
        -np.inf,
    )
    return a1 + a2 + np.logaddexp(a3, a4)


def _converged(simplex: optimize.OptimizeResult, polished: optimize.OptimizeResult, negative, dimensions: int) -> bool:
    """Either search reports convergence, or a fresh simplex from the polished point finds nothing
    better: a maximum on the edge of the parameter space (a shop whose customers never drop out
    drives `a` to 0 and `b` up) leaves both searches unable to report success on a flat ridge,
    yet the fit is sound."""
    if not np.isfinite(polished.fun):
        return False
    if simplex.success or polished.success:
        return True
    check = optimize.minimize(
        negative,
        polished.x,
        method="Nelder-Mead",
        bounds=[(-LOG_BOUND, LOG_BOUND)] * dimensions,
        options={"xatol": 1e-6, "fatol": 1e-10, "maxfev": 400},
    )
    return check.fun >= polished.fun - 1e-7 * max(1.0, abs(polished.fun))


def fit_bgnbd(x: np.ndarray, t_x: np.ndarray, T: np.ndarray, *, start: BgNbdParams | None = None) -> BgNbdParams:
    """Maximum-likelihood BG/NBD parameters; NotEnoughData or FitFailed instead of a nonsense fit.
    `start` (last night's parameters, say) shortens the search; the answer does not depend on it:
    a search from `start` that fails is made again from the usual starting point. (A shop whose
    customers hardly drop out has its maximum far out on a flat ridge, a -> 0 and b -> infinity;
    a start already out there can leave the searches crawling along it until they give up.)"""
    if start is not None:
        try:
            return _fit_bgnbd(x, t_x, T, start=start)
        except FitFailed as exc:
            logger.info("BG/NBD from the given start did not converge (%s): searching again from the usual start", exc)
    return _fit_bgnbd(x, t_x, T, start=None)


def _fit_bgnbd(x: np.ndarray, t_x: np.ndarray, T: np.ndarray, *, start: BgNbdParams | None) -> BgNbdParams:
    x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
    if len(x) < MIN_CUSTOMERS:
        raise NotEnoughData(f"{len(x)} customers; at least {MIN_CUSTOMERS} are needed to fit purchases")
    if not (x > 0).any():
        raise NotEnoughData("no customer bought twice: repeat purchases cannot be modelled yet")
    (ux, ut, uT), weight = _distinct(x, t_x, T)
    scale = float(np.mean(T)) or 1.0

    def negative_on(cx, ct, cT, cw):
        def negative(log_params: np.ndarray) -> float:
            r, alpha, a, b = np.exp(log_params)
            return -float(np.dot(cw, bgnbd_log_likelihood(r, alpha, a, b, cx, ct, cT))) / cw.sum()

        return negative

    negative = negative_on(ux, ut, uT, weight)
    # The simplex search takes thousands of steps: on a large base it runs on a random sample of
    # customers, and the polish below (a few dozen steps) on all of them.
    search = negative
    if len(x) > SEARCH_SAMPLE:
        chosen = np.random.default_rng(SEED).choice(len(x), SEARCH_SAMPLE, replace=False)
        (sx, st, sT), sw = _distinct(x[chosen], t_x[chosen], T[chosen])
        search = negative_on(sx, st, sT, sw)
    # alpha is on the scale of time: start it at the customers' mean age, the others at 1.
    initial = np.log([1.0, scale, 1.0, 1.0])
    if start is not None:
        initial = np.clip(np.log([start.r, start.alpha, start.a, start.b]), -LOG_BOUND, LOG_BOUND)
    # The simplex only has to find the basin (the polish below finishes): moderate tolerances, and
    # bounds, so a maximum on the edge is not chased for thousands of steps.
    result = optimize.minimize(
        search,
        initial,
        method="Nelder-Mead",
        bounds=[(-LOG_BOUND, LOG_BOUND)] * 4,
        options=SIMPLEX_OPTIONS if start is None else FROM_START_OPTIONS,
    )
    # Nelder-Mead finds the basin; a quasi-Newton polish gets the last decimals. The bounds keep
    # a maximum on the edge (customers who never drop out: a -> 0, b -> infinity) at a point
    # where the formulas still evaluate, which changes no prediction measurably.
    polished = optimize.minimize(
        negative, np.clip(result.x, -LOG_BOUND, LOG_BOUND), method="L-BFGS-B", bounds=[(-LOG_BOUND, LOG_BOUND)] * 4
    )
    if search is not negative:
        best = polished  # the simplex's value is the sample's, not comparable
    else:
        best = polished if polished.fun <= result.fun or np.any(np.abs(result.x) > LOG_BOUND) else result
    params = np.exp(best.x)
    if not _converged(result, polished, negative, 4) or not np.all(np.isfinite(params)):
        raise FitFailed(f"BG/NBD did not converge: {result.message} / {polished.message}")
    r, alpha, a, b = (float(p) for p in params)
    fitted = BgNbdParams(r=r, alpha=alpha, a=a, b=b, log_likelihood=float(-best.fun * weight.sum()))
    check = expected_purchases(fitted, float(np.max(uT)), ux, ut, uT)
    if not np.all(np.isfinite(check)):
        raise FitFailed(f"BG/NBD parameters {fitted.as_dict()} give non-finite predictions")
    return fitted


def fit_bgnbd_in_periods(
    x: np.ndarray, t_x: np.ndarray, T: np.ndarray, *, period: float, start: BgNbdParams | None = None
) -> BgNbdParams:
    """BG/NBD fitted on times counted in whole periods (weeks for times in days), returned in the
    times' own unit. A million customers then share a few ten thousand (x, t_x, T) triples
    instead of nearly a million, and the fit takes seconds; rounding a customer's times to the
    week moves the parameters far less than a night's new orders do. The model is the same in
    any unit: only alpha, a time scale, changes with it."""
    x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
    # To the nearest period: rounding down would shorten every customer by half a period.
    if start is not None:
        start = BgNbdParams(r=start.r, alpha=start.alpha / period, a=start.a, b=start.b, log_likelihood=0.0)
    fitted = fit_bgnbd(x, np.round(t_x / period), np.round(T / period), start=start)
    return BgNbdParams(
        r=fitted.r, alpha=fitted.alpha * period, a=fitted.a, b=fitted.b, log_likelihood=fitted.log_likelihood
    )


def fit_gamma_gamma(frequency: np.ndarray, monetary: np.ndarray) -> GammaGammaParams:
    """Gamma-Gamma parameters from repeat customers' number of repeat purchases and mean spend
    (customers without a repeat purchase, or with a mean spend of zero, are left out)."""
    x, m = np.asarray(frequency, dtype=float), np.asarray(monetary, dtype=float)
    keep = (x > 0) & (m > 0)
    x, m = x[keep], m[keep]
    if len(x) < MIN_REPEAT_CUSTOMERS:
        raise NotEnoughData(f"{len(x)} repeat customers; at least {MIN_REPEAT_CUSTOMERS} are needed to fit spend")

    def negative_on(cx: np.ndarray, cm: np.ndarray):
        def negative(log_params: np.ndarray) -> float:
            p, q, v = np.exp(log_params)
            px = p * cx
            ll = (
                special.gammaln(px + q)
                - special.gammaln(px)
                - special.gammaln(q)
                + q * np.log(v)
                + (px - 1) * np.log(cm)
                + px * np.log(cx)
                - (px + q) * np.log(cx * cm + v)
            )
            return -float(ll.sum()) / len(cx)

        return negative

    negative = search = negative_on(x, m)
    # Mean spends are all different: on a large base the simplex runs on a sample (as for BG/NBD).
    if len(x) > SEARCH_SAMPLE:
        chosen = np.random.default_rng(SEED).choice(len(x), SEARCH_SAMPLE, replace=False)
        search = negative_on(x[chosen], m[chosen])
    result = optimize.minimize(
        search,
        np.log([1.0, 1.0, float(np.mean(m))]),
        method="Nelder-Mead",
        bounds=[(-LOG_BOUND, LOG_BOUND)] * 3,
        options=SIMPLEX_OPTIONS,
    )
    polished = optimize.minimize(
        negative, np.clip(result.x, -LOG_BOUND, LOG_BOUND), method="L-BFGS-B", bounds=[(-LOG_BOUND, LOG_BOUND)] * 3
    )
    if search is not negative:
        best = polished  # the simplex's value is the sample's, not comparable
    else:
        best = polished if polished.fun <= result.fun or np.any(np.abs(result.x) > LOG_BOUND) else result
    params = np.exp(best.x)
    if not _converged(result, polished, negative, 3) or not np.all(np.isfinite(params)):
        raise FitFailed(f"Gamma-Gamma did not converge: {result.message} / {polished.message}")
    p, q, v = (float(value) for value in params)
    if q <= 1:
        # The expected spend p * v / (q - 1) is infinite: the data do not support a value model.
        raise FitFailed(f"Gamma-Gamma q = {q:.3f} <= 1: mean spend would be unbounded")
    return GammaGammaParams(p=p, q=q, v=v, log_likelihood=float(-best.fun * len(x)))


def probability_alive(params: BgNbdParams, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
    """P(still active | x, t_x, T), equation (11) of Fader, Hardie & Lee (2005)."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
    log_ratio = np.log(a) - np.log(np.maximum(b + x - 1, 1e-12)) + (r + x) * (np.log(alpha + T) - np.log(alpha + t_x))
    return np.where(x > 0, special.expit(-log_ratio), 1.0)


def expected_purchases(params: BgNbdParams, t: float, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
    """E[purchases in the next `t` | x, t_x, T], equation (10) of Fader, Hardie & Lee (2005)."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
    z = t / (alpha + T + t)
    hyp = special.hyp2f1(r + x, b + x, a + b + x - 1, z)
    first = (a + b + x - 1) / (a - 1)
    second = 1 - np.exp((r + x) * (np.log(alpha + T) - np.log(alpha + T + t))) * hyp
    denominator = 1 + np.where(
        x > 0,
        a / np.maximum(b + x - 1, 1e-12) * np.exp((r + x) * (np.log(alpha + T) - np.log(alpha + t_x))),
        0.0,
    )
    return np.maximum(first * second / denominator, 0.0)


def expected_spend(params: GammaGammaParams, frequency: np.ndarray, monetary: np.ndarray) -> np.ndarray:
    """E[mean spend per purchase | x, m_x]: the population mean p v / (q - 1) for customers without
    repeat purchases, moving towards their own mean the more they bought (Fader & Hardie 2013)."""
    p, q, v = params.p, params.q, params.v
    x = np.asarray(frequency, dtype=float)
    m = np.where(x > 0, np.asarray(monetary, dtype=float), 0.0)
    return p * (v + x * m) / (p * x + q - 1)
