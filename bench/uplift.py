"""Uplift targeting against RFM targeting, at the same coupon spend, in a simulated shop.

    .venv/bin/python bench/uplift.py [--people 40000] [--seed 1]

The shop's customers have an RFM tier (core, important, regular, dormant), spend, churn risk,
days since last seen and tags. Whether they buy in a campaign's window, and what a coupon of 10
changes, differs by type: the core buy often anyway and a coupon barely moves them; deal seekers
among the regular and the not-yet-lost dormant buy much more with one. Each person has both
potential outcomes (with and without the coupon, from the same random draw), so what a coupon
added to a group is known exactly.

1. A first campaign gives the coupon to a random half and holds out the other half.
2. The production learner (`coupons.uplift`: two models, scikit-learn) is fitted on what was
   observed: the treated's margin with the coupon, the holdout's without. Its out-of-fold Qini
   coefficient is printed.
3. A second campaign over new customers of the same shop is targeted twice at the same coupon
   spend: by RFM tier (best tiers first, then spend), the usual practice, and by predicted uplift.
   For each: coupon money spent (10 per treated buyer), incremental margin (30 % of the baskets
   the coupon added) and incremental margin per unit of coupon money.

The last line reads `ratio <uplift / RFM>` (incremental margin per unit of coupon money); the goal
is at least 1.2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coupons import uplift  # noqa: E402  (pure numpy and scikit-learn: no database needed)

TIERS = ["core", "important", "regular", "dormant"]
TIER_SHARE = [0.15, 0.20, 0.35, 0.30]
BASE_BUY = {"core": 0.45, "important": 0.30, "regular": 0.15, "dormant": 0.04}
BASKET = {"core": 150.0, "important": 110.0, "regular": 80.0, "dormant": 70.0}
COUPON = 10.0
MARGIN = 0.30
TAGS = ["deal-seeker", "loyal", "newsletter"]


def shop(people: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Customers and both of their potential outcomes."""
    tier = rng.choice(len(TIERS), size=people, p=TIER_SHARE)
    names = np.array(TIERS)[tier]
    monetary = np.array([BASKET[t] for t in names]) * rng.lognormal(0, 0.4, people) * (4 - tier)
    churn = np.clip(rng.normal(20 + 20 * tier, 15), 0, 100)
    days = rng.exponential(10 + 30 * tier)
    deal = rng.random(people) < np.where(tier >= 2, 0.35, 0.10)
    loyal = rng.random(people) < np.where(tier <= 1, 0.6, 0.1)
    news = rng.random(people) < 0.3
    # What the coupon adds to the chance of buying: little for those who buy anyway.
    lift = np.select(
        [tier == 0, tier == 1, (tier == 2) & deal, tier == 2, (tier == 3) & deal & (churn < 70), tier == 3],
        [0.01, 0.03, 0.28, 0.04, 0.22, 0.01],
    )
    base = np.array([BASE_BUY[t] for t in names])
    draw = rng.random(people)
    basket = np.array([BASKET[t] for t in names]) * rng.lognormal(0, 0.3, people)
    return {
        "tier": names,
        "monetary": monetary,
        "churn": churn,
        "days": days,
        "tags": [[t for t, on in zip(TAGS, flags, strict=True) if on] for flags in zip(deal, loyal, news, strict=True)],
        "value": monetary * (1 - churn / 100),
        "buy0": draw < base,
        "buy1": draw < base + lift,
        "basket": basket,
    }


def features(customers: dict, tags: list[str]) -> np.ndarray:
    rows = [
        (t, v, c, None, m, d, g)
        for t, v, c, m, d, g in zip(
            customers["tier"],
            customers["value"],
            customers["churn"],
            customers["monetary"],
            customers["days"],
            customers["tags"],
            strict=True,
        )
    ]
    return uplift.matrix(rows, TIERS, tags)


def outcome(customers: dict, idx: np.ndarray) -> tuple[float, float]:
    """Coupon money and incremental margin of giving the coupon to `idx`."""
    spend = float(COUPON * customers["buy1"][idx].sum())
    added = float(MARGIN * (customers["basket"][idx] * (customers["buy1"][idx] ^ customers["buy0"][idx])).sum())
    return spend, added


def at_spend(customers: dict, ranking: np.ndarray, budget: float) -> np.ndarray:
    """The first people of `ranking` whose coupons cost `budget` (the campaign stops there)."""
    cost = np.cumsum(COUPON * customers["buy1"][ranking])
    return ranking[: int(np.searchsorted(cost, budget, side="right"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--people", type=int, default=40_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--target-share", type=float, default=0.25, help="Share RFM targeting reaches")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)

    first = shop(args.people, rng)
    treated = rng.random(args.people) < 0.5
    bought = np.where(treated, first["buy1"], first["buy0"])
    y = MARGIN * first["basket"] * bought  # margin in the window, as the report counts it
    tags = uplift.top_tags(first["tags"])
    x = features(first, tags)
    assert len(y) > 0 and treated.any() and (~treated).any(), "the first campaign has no people"
    evidence = uplift.evidence(uplift.out_of_fold(x, treated, y, seed=args.seed), treated, y)
    model = uplift.fit(x, treated, y, seed=args.seed)
    print(
        f"first campaign: {treated.sum()} treated, {(~treated).sum()} held out; "
        f"out-of-fold Qini coefficient {evidence['qini_coefficient']}"
    )

    second = shop(args.people, rng)
    tier_rank = np.array([TIERS.index(t) for t in second["tier"]])
    rfm = np.lexsort((-second["monetary"], tier_rank))  # best tier first, then the biggest spenders
    rfm_target = rfm[: int(args.people * args.target_share)]
    budget, _ = outcome(second, rfm_target)
    by_uplift = np.argsort(-model.predict(features(second, tags)), kind="stable")
    uplift_target = at_spend(second, by_uplift, budget)
    assert len(rfm_target) and len(uplift_target), "a strategy targeted nobody"

    results = {}
    for name, idx in (("RFM tier", rfm_target), ("uplift", uplift_target)):
        spend, added = outcome(second, idx)
        results[name] = added / spend
        print(
            f"{name:9s} targeted {len(idx):6d}  coupon money {spend:10.2f}  incremental margin {added:10.2f}  "
            f"per unit {added / spend:.3f}"
        )
    print(f"ratio {results['uplift'] / results['RFM tier']:.2f}")


if __name__ == "__main__":
    main()
