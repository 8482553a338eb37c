"""Bandit allocation: the shares of newcomers that Thompson sampling gives each variant.

Pure numerics (no database), so the sweeper's reallocation and `bench/loop.py` run the same code.

The reward of a member is the margin of their orders in the attribution window minus the coupon
discounts they were given: zero for most members, so it is modelled in two parts (a hurdle model),
E[reward] = P(order) * E[net value | order]:

- P(order) has a Beta(1 + orders, 1 + members without one) posterior, the Beta-Bernoulli model of
  Thompson sampling (Chapelle & Li 2011, "An Empirical Evaluation of Thompson Sampling", NIPS;
  Agrawal & Goyal 2012, "Analysis of Thompson Sampling for the Multi-armed Bandit Problem", COLT);
- the mean net value of an order has a normal posterior (known-variance conjugate update) around a
  prior of one pseudo-order at the mean over every variant, with the variance pooled over every
  variant's orders (an empirical-Bayes plug-in, Gelman et al., "Bayesian Data Analysis", 3rd ed.,
  sections 2.5 and 5.1). With independent priors the joint posterior factorises, so a draw of the
  reward is the product of one draw from each.

Reallocation is batched (every N minutes), so a variant's share is the posterior probability that
it is the best one, estimated from Monte Carlo draws: randomized probability matching as Scott
describes it for this very setting (Scott 2010, "A modern Bayesian look at the multi-armed
bandit", Applied Stochastic Models in Business and Industry 26(6); Russo et al. 2018, "A Tutorial
on Thompson Sampling", section 7.2 on batched allocation). Then a floor keeps every variant with
budget learning, a variant whose coupon rule cannot pay for one more coupon gets nothing, and the
holdout keeps its fixed share outside all of this.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

HOLDOUT = "holdout"
# Monte Carlo draws per reallocation: the standard error of a share is at most 0.5 / sqrt(draws).
DRAWS = 20_000
# Tolerance of share arithmetic (floats that must sum to 1).
EPSILON = 1e-9


class AllocationError(Exception):
    """No allocation can be computed (every variant's coupon budget is spent, say)."""


@dataclass(frozen=True)
class ArmData:
    """What is known of one variant: members whose reward window has closed, how many of them
    ordered, and the sum and sum of squares of their net value (margin minus coupon cost)."""

    key: str
    members: int = 0
    orders: int = 0
    value_sum: float = 0.0
    value_sq_sum: float = 0.0
    exhausted: bool = False


def probability_best(arms: Sequence[ArmData], *, rng: np.random.Generator, draws: int = DRAWS) -> np.ndarray:
    """P(arm has the highest expected reward | data) for each arm, by Monte Carlo."""
    k = len(arms)
    if k == 0:
        return np.zeros(0)
    n = np.array([a.members for a in arms], dtype=float)
    c = np.array([min(a.orders, a.members) for a in arms], dtype=float)
    s = np.array([a.value_sum for a in arms], dtype=float)
    ss = np.array([a.value_sq_sum for a in arms], dtype=float)
    total_orders = c.sum()
    if total_orders > 0:
        prior_mean = s.sum() / total_orders
        # Pooled within-variant variance of an order's value; with too few orders, a coefficient
        # of variation of 1 around the prior mean (wide, and on the scale of the data).
        within = ss.sum() - np.sum(np.divide(s**2, c, out=np.zeros(k), where=c > 0))
        dof = total_orders - np.count_nonzero(c)
        variance = within / dof if dof >= 1 and within > 0 else max(prior_mean**2, 1e-12)
    else:
        # Nothing ordered yet: the reward is the order rate alone (value 1 for every variant).
        prior_mean, variance = 1.0, 0.0
    theta = rng.beta(1 + c, 1 + n - c, size=(draws, k))
    post_mean = (prior_mean + s) / (1 + c)
    post_sd = np.sqrt(variance / (1 + c))
    value = post_mean + post_sd * rng.standard_normal((draws, k))
    best = np.argmax(theta * value, axis=1)
    return np.bincount(best, minlength=k) / draws


def with_floor(weights: np.ndarray, *, floor: float, total: float) -> np.ndarray:
    """Shares summing to `total`, each at least `floor`, as close to `weights` as the floor
    allows: variants below the floor are raised to it and the others shrink in proportion
    (water-filling). Needs len(weights) * floor <= total."""
    k = len(weights)
    if k == 0:
        return np.zeros(0)
    if k * floor > total + EPSILON:
        raise AllocationError(f"{k} variants at a floor of {floor:.4f} exceed {total:.4f}")
    weights = np.clip(np.asarray(weights, dtype=float), 0, None)
    pinned = np.zeros(k, dtype=bool)
    shares = np.zeros(k)
    while True:
        free = ~pinned
        mass = total - floor * pinned.sum()
        w = weights[free]
        shares[free] = mass * w / w.sum() if w.sum() > 0 else mass / free.sum()
        shares[pinned] = floor
        below = free & (shares < floor - EPSILON)
        if not below.any():
            return shares
        pinned |= below


def allocate(
    arms: Sequence[ArmData],
    *,
    holdout: float,
    floor: float,
    rng: np.random.Generator,
    draws: int = DRAWS,
) -> tuple[dict[str, float], dict[str, float]]:
    """(shares by group key, holdout included and summing to 1; P(best) of the arms that can
    still get traffic). Arms whose coupon budget is spent get 0; the others split 1 - holdout by
    their probability of being best, each at least `floor`."""
    live = [a for a in arms if not a.exhausted]
    if not live:
        raise AllocationError("every variant's coupon budget is spent: no variant can be given newcomers")
    p_best = probability_best(live, rng=rng, draws=draws)
    tested = 1.0 - holdout
    # Fewer variants left than the floor was sized for: the floor still fits (it was checked for
    # all of them), so no variant with budget is ever starved.
    live_shares = with_floor(p_best, floor=floor, total=tested)
    shares = {HOLDOUT: holdout} if holdout > 0 else {}
    by_key = dict(zip((a.key for a in live), live_shares, strict=True))
    for arm in arms:
        shares[arm.key] = float(by_key.get(arm.key, 0.0))
    return shares, {a.key: float(p) for a, p in zip(live, p_best, strict=True)}


def initial_shares(keys_and_weights: Sequence[tuple[str, int]], *, holdout: float) -> dict[str, float]:
    """The shares at launch, before any result: the variants' weights, beside the holdout."""
    total = sum(w for _, w in keys_and_weights) or 1
    shares = {HOLDOUT: holdout} if holdout > 0 else {}
    shares.update({key: (1 - holdout) * w / total for key, w in keys_and_weights})
    return shares


def expected_counts(periods: Sequence[tuple[dict[str, float], dict[str, int]]]) -> dict[str, float]:
    """Expected members per group over allocation periods, each given as (its shares, the members
    assigned under it per group): what the sample-ratio check compares the counts with."""
    expected: dict[str, float] = {}
    for shares, counts in periods:
        n = sum(counts.values())
        total = sum(shares.values()) or 1.0
        for key, share in shares.items():
            expected[key] = expected.get(key, 0.0) + n * share / total
        for key in counts:
            expected.setdefault(key, 0.0)
    return expected
