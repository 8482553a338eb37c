"""Loop: does what the campaigns roll out stay truly better when people look every day?

Simulated experiments with known true conversion rates go through the decision code that
campaign results use (`campaigns.stats.sequential_decision`, and the fixed-horizon
`campaigns.stats.analyze` as the naive reference), one look a day, and the table shows:

- A/A false roll-outs: holdout and two variants with the same rate, a look every day for
  `--looks` days; a roll-out is any look that names a winner. Goal: at most alpha. The naive
  rule (the fixed-horizon z-test read at every look) is shown beside it.
- Power: holdout 3 %, A 8 %, B 30 %, C 19 % (the demo's rates, C between A and B); the share of
  runs that roll out the truly best (B) within the looks. Goal: at least 95 %.
- Users to decide: two groups at 5 % and 6 %; users (both groups) at the look that decides,
  against a fixed-horizon test of the same power (statsmodels' power solver). Goal: <= 1.15.
- CUPED: width of the adjusted always-valid uplift interval relative to the raw one, members
  whose past buying predicts their conversion. Goal: <= 0.75. Beside it, the same adjustment
  with each member's true conversion probability as the covariate: no covariate can do better,
  since what remains is each conversion's own chance (the ratio is at least
  sqrt(E[p(1-p)] / (E[p](1-E[p])))), so where that bound is above the goal, no method meets it.
- Bandit: a recurring campaign at the demo's rates whose newcomers are split by the bandit
  (`campaigns.bandit.allocate`, the code the sweeper runs) every period, each period's rewards
  (margin net of coupon cost) seen one period later, when their window closes; conversions lost
  to worse variants (expected: the best rate minus the rate of the variant each member got),
  relative to a fixed equal A/B/C split of the same members. Goal: <= 0.5.

Every scenario draws from its own seeded generator, so a run with the same arguments prints the
same table. Example:
    python bench/loop.py --runs 1000 --looks 30
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import proportion_effectsize

from campaigns import bandit
from campaigns.stats import (
    GroupCounts,
    analyze,
    cuped_difference,
    cuped_theta,
    sequential_decision,
    sequential_difference,
)

ALPHA = 0.05
DEMO_RATES = {"holdout": 0.03, "A": 0.08, "B": 0.30, "C": 0.19}


@dataclass(frozen=True)
class Outcome:
    """What a rule rolled out (None: nothing) and at which look (1-based; 0: never)."""

    winner: str | None
    look: int


def _cumulative(rng: np.random.Generator, rates: dict[str, float], per_look: int, looks: int) -> dict[str, np.ndarray]:
    return {name: rng.binomial(per_look, rate, size=looks).cumsum() for name, rate in rates.items()}


def _first_winner(
    counts: dict[str, np.ndarray],
    per_look: int,
    looks: int,
    *,
    sequential: bool,
    alpha: float,
    planned_sample: int,
) -> Outcome:
    names = list(counts)
    for look in range(looks):
        n = per_look * (look + 1)
        groups = [GroupCounts(name, n, int(counts[name][look])) for name in names]
        if sequential:
            winner = sequential_decision(groups, control=names[0], alpha=alpha, planned_sample=planned_sample)["winner"]
        else:
            winner = analyze(groups, control=names[0], alpha=alpha)["winner"]
        if winner:
            return Outcome(winner, look + 1)
    return Outcome(None, 0)


def aa_false_rollouts(*, runs: int, looks: int, per_look: int = 100, rate: float = 0.05, seed: int = 1) -> dict:
    """Share of A/A runs (holdout, A, B all at `rate`) that name a winner at some daily look."""
    rng = np.random.default_rng(seed)
    planned = 2 * per_look * looks
    sequential = naive = 0
    for _ in range(runs):
        counts = _cumulative(rng, {"holdout": rate, "A": rate, "B": rate}, per_look, looks)
        kw = {"alpha": ALPHA, "planned_sample": planned}
        sequential += _first_winner(counts, per_look, looks, sequential=True, **kw).winner is not None
        naive += _first_winner(counts, per_look, looks, sequential=False, **kw).winner is not None
    return {"sequential": sequential / runs, "naive": naive / runs}


def power_best(*, runs: int, looks: int, per_look: int = 100, seed: int = 2) -> dict:
    """Share of runs at the demo's rates that roll out the truly best variant within the looks."""
    rng = np.random.default_rng(seed)
    best = max((n for n in DEMO_RATES if n != "holdout"), key=DEMO_RATES.get)
    planned = 2 * per_look * looks
    right = wrong = 0
    decided_at = []
    for _ in range(runs):
        counts = _cumulative(rng, DEMO_RATES, per_look, looks)
        outcome = _first_winner(counts, per_look, looks, sequential=True, alpha=ALPHA, planned_sample=planned)
        right += outcome.winner == best
        wrong += outcome.winner not in (None, best)
        if outcome.winner:
            decided_at.append(outcome.look)
    return {
        "best": right / runs,
        "wrong": wrong / runs,
        "median_look": float(np.median(decided_at)) if decided_at else math.nan,
    }


def users_to_decide(*, runs: int, looks: int, base: float = 0.05, lift: float = 0.01, seed: int = 3) -> dict:
    """Users (both groups) the sequential rule needs to decide, against a fixed-horizon test of
    the power the sequential rule reached within its horizon. The horizon is twice the
    fixed-horizon size at 80 % power, split into `looks` equal looks; runs that never decide
    count at the horizon."""
    solver = NormalIndPower()
    effect = proportion_effectsize(base + lift, base)
    n80 = solver.solve_power(effect_size=effect, alpha=ALPHA, power=0.8, ratio=1.0, alternative="two-sided")
    horizon = math.ceil(2 * n80)
    per_look = max(1, horizon // looks)
    rng = np.random.default_rng(seed)
    users, right = [], 0
    for _ in range(runs):
        counts = _cumulative(rng, {"control": base, "treated": base + lift}, per_look, looks)
        outcome = _first_winner(counts, per_look, looks, sequential=True, alpha=ALPHA, planned_sample=2 * horizon)
        right += outcome.winner == "treated"
        users.append(2 * per_look * (outcome.look or looks))
    power = min(right / runs, 0.999)
    fixed = 2 * solver.solve_power(effect_size=effect, alpha=ALPHA, power=max(power, 0.5), ratio=1.0)
    return {"power": right / runs, "sequential_users": float(np.mean(users)), "fixed_users": fixed}


def cuped_width(*, runs: int, per_group: int = 2000, lift: float = 0.02, seed: int = 4) -> dict:
    """Width of the CUPED-adjusted always-valid uplift interval relative to the raw one. Members
    differ in how much they buy (a gamma-distributed propensity); the pre-period holds their
    orders and events in the 30 days before, drawn from that propensity, and the outcome depends
    on it too, so the past predicts the outcome as repeat buying does."""
    rng = np.random.default_rng(seed)

    def group(effect: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        propensity = rng.gamma(0.6, 1.5, per_group)
        x = np.column_stack([rng.poisson(propensity), rng.poisson(4 * propensity + 1)]).astype(float)
        p = np.clip(0.7 * (1 - np.exp(-propensity)) + effect, 0, 1)
        return (rng.random(per_group) < p).astype(float), x, p[:, None]

    ratios, oracle_ratios, correlations = [], [], []
    for _ in range(runs):
        (y1, x1, p1), (y0, x0, p0) = group(lift), group(0.0)
        treated, control = (y1, x1), (y0, x0)
        adjusted = cuped_difference(treated, control, cuped_theta([treated, control]), planned_sample=2 * per_group)
        # The best any covariate can do: each member's true conversion probability itself. What is
        # left is the coin flip of each conversion, which no knowledge of the past removes, so
        # this ratio bounds every adjustment on this population from below.
        oracle = cuped_difference((y1, p1), (y0, p0), cuped_theta([(y1, p1), (y0, p0)]), planned_sample=2 * per_group)
        raw = sequential_difference(
            GroupCounts("t", per_group, int(y1.sum())),
            GroupCounts("c", per_group, int(y0.sum())),
            planned_sample=2 * per_group,
        )
        ratios.append((adjusted["high"] - adjusted["low"]) / (raw.high - raw.low))
        oracle_ratios.append((oracle["high"] - oracle["low"]) / (raw.high - raw.low))
        correlations.append(np.corrcoef(y0, x0[:, 0])[0, 1])
    return {
        "ratio": float(np.mean(ratios)),
        "max_ratio": float(np.max(ratios)),
        "oracle_ratio": float(np.mean(oracle_ratios)),
        "correlation": float(np.mean(correlations)),
    }


BANDIT_ARMS = ("A", "B", "C")
BANDIT_HOLDOUT = 0.10
BANDIT_FLOOR = 0.05
MARGIN = 0.30
# Coupon cost per order by variant: C's offer costs 5 an order, so margin net of it ranks C lower
# still; B, the best by conversion, stays the best by reward.
COUPON_COST = {"A": 0.0, "B": 0.0, "C": 5.0}


def bandit_lost(
    *,
    runs: int,
    periods: int = 30,
    per_period: int = 300,
    policy: str = "thompson",
    seed: int = 6,
    draws: int = 2000,
) -> dict:
    """Conversions lost to worse variants by `policy` ("thompson": reallocated each period by the
    bandit; "fixed": the equal split throughout), over the loss of a fixed equal split of the
    same tested members. Orders are worth a lognormal amount (mean 50); the reward of an order is
    its margin minus the variant's coupon cost."""
    rng = np.random.default_rng(seed)
    rates = {a: DEMO_RATES[a] for a in BANDIT_ARMS}
    best = max(rates.values())
    fixed_loss_per_member = float(np.mean([best - r for r in rates.values()]))
    sigma = 0.6
    mu = math.log(50) - sigma**2 / 2
    lost = fixed_lost = 0.0
    assigned = allocations = 0
    final_best_share = []
    for _ in range(runs):
        seen = {a: np.zeros(4) for a in BANDIT_ARMS}
        waiting: list[tuple[str, np.ndarray]] = []
        shares = bandit.initial_shares([(a, 1) for a in BANDIT_ARMS], holdout=BANDIT_HOLDOUT)
        for period in range(periods):
            for arm, data in waiting:
                seen[arm] += data
            waiting = []
            if policy == "thompson" and period > 0:
                arms = [bandit.ArmData(a, int(d[0]), int(d[1]), float(d[2]), float(d[3])) for a, d in seen.items()]
                shares, _ = bandit.allocate(arms, holdout=BANDIT_HOLDOUT, floor=BANDIT_FLOOR, rng=rng, draws=draws)
                allocations += 1
            groups = [bandit.HOLDOUT, *BANDIT_ARMS]
            counts = rng.multinomial(per_period, [shares.get(g, 0.0) for g in groups])
            for arm, n in zip(BANDIT_ARMS, counts[1:], strict=True):
                orders = rng.binomial(n, rates[arm])
                value = MARGIN * rng.lognormal(mu, sigma, size=orders) - COUPON_COST[arm]
                waiting.append((arm, np.array([n, orders, value.sum(), (value**2).sum()])))
                lost += n * (best - rates[arm])
                fixed_lost += n * fixed_loss_per_member
                assigned += n
        final_best_share.append(shares["B"])
    return {
        "ratio": float(lost / fixed_lost) if fixed_lost else math.nan,
        "lost": float(lost),
        "fixed_lost": float(fixed_lost),
        "assigned": int(assigned),
        "allocations": allocations,
        "final_best_share": float(np.mean(final_best_share)),
    }


def run(*, runs: int, looks: int) -> list[tuple[str, str, str, bool | None]]:
    """The table's rows: (measure, value, goal, met; None where not measured)."""
    aa = aa_false_rollouts(runs=runs, looks=looks)
    power = power_best(runs=runs, looks=looks)
    speed = users_to_decide(runs=runs, looks=looks)
    ratio = speed["sequential_users"] / speed["fixed_users"]
    cuped = cuped_width(runs=max(1, runs // 10))
    bandit_runs = max(10, runs // 10)
    regret = bandit_lost(runs=bandit_runs, periods=looks)
    if regret["assigned"] == 0 or regret["allocations"] < bandit_runs * (looks - 1):
        raise RuntimeError(f"the bandit workload did not run: {regret}")
    return [
        (
            f"A/A false roll-outs, a look a day for {looks} days (always valid)",
            f"{aa['sequential']:.3f}",
            f"<= {ALPHA}",
            aa["sequential"] <= ALPHA,
        ),
        ("A/A false roll-outs, naive fixed-horizon z-test read daily", f"{aa['naive']:.3f}", "(reference)", None),
        (
            "Truly best of A/B/C rolled out (demo rates)",
            f"{power['best']:.3f} (wrong {power['wrong']:.3f}, median look {power['median_look']:g})",
            ">= 0.95",
            power["best"] >= 0.95,
        ),
        (
            "Users to decide / fixed horizon of the same power (5 % vs 6 %)",
            f"{ratio:.2f} ({speed['sequential_users']:.0f} / {speed['fixed_users']:.0f}, power {speed['power']:.3f})",
            "<= 1.15",
            ratio <= 1.15,
        ),
        (
            "CUPED always-valid interval width / raw",
            f"{cuped['ratio']:.2f} (max {cuped['max_ratio']:.2f}, pre-period orders r = {cuped['correlation']:.2f}; "
            f"knowing each member's true rate: {cuped['oracle_ratio']:.2f})",
            "<= 0.75",
            cuped["ratio"] <= 0.75,
        ),
        (
            f"Bandit conversions lost / fixed A/B/C split ({bandit_runs} runs x {looks} periods)",
            f"{regret['ratio']:.2f} ({regret['lost']:.0f} / {regret['fixed_lost']:.0f}, "
            f"B's final share {regret['final_best_share']:.2f})",
            "<= 0.5",
            regret["ratio"] <= 0.5,
        ),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000, help="simulated experiments per scenario")
    parser.add_argument("--looks", type=int, default=30, help="looks, one a day")
    args = parser.parse_args(argv)
    if args.runs < 10 or args.looks < 1:
        # A rate over a handful of runs (or none) says nothing; refuse rather than print it.
        parser.error("--runs must be at least 10 and --looks at least 1")
    rows = run(runs=args.runs, looks=args.looks)
    width = max(len(r[0]) for r in rows)
    print(f"{'measure'.ljust(width)}  {'value':<48}  {'goal':<9}  met")
    for measure, value, goal, met in rows:
        mark = "-" if met is None else ("yes" if met else "NO")
        print(f"{measure.ljust(width)}  {value:<48}  {goal:<9}  {mark}")


if __name__ == "__main__":
    main()
