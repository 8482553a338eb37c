"""What a coupon added: its orders, revenue and margin against a holdout, and the ROI of that.

An attributed report credits every order that used a coupon to the coupon; many of those people
would have bought anyway. Where a rule went out through a campaign with a holdout, the holdout
says what the treated group would have done without it: incremental x = sum over the treated of x
minus the holdout's sum scaled to the treated group's size (n_T / n_H), per campaign, then summed.

Intervals (95 %) are the normal approximation with the delta method, from per-person sums of
squares: the groups are independent, and within the treated group margin and coupon cost are
correlated (the same people buy and redeem), which the ROI's variance takes into account:
ROI = M / C - 1, Var(M / C) ~ Var(M) / C^2 + M^2 Var(C) / C^4 - 2 M Cov(M, C) / C^3.

`coupons` sits below `campaigns`: who was treated and who held out comes from the SQL that
campaigns registers (`register_holdout_members_sql`), as segments come through `audiences`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db import connection

from tracking.selectors import order_amount_sql

Z95 = 1.959963984540054
_members_sql: str | None = None


def register_holdout_members_sql(sql: str) -> None:
    """`sql` selects, for `%(rule_id)s`, the people of every campaign with a holdout whose variant
    gave a coupon of that rule: `campaign_id, campaign_name, profile_id, treated (bool), t0, t1,
    margin_percent`, where [t0, t1] is the person's attribution window."""
    global _members_sql
    _members_sql = sql


def holdout_members_sql() -> str | None:
    return _members_sql


# Per member: paid orders and their amount in the window, and (treated) the discounts of this
# rule's coupons they redeemed in it (live redemptions). Events through the `user_id` identities,
# the overall time range first so the event indexes apply, as the campaign results do; each part
# computed once (MATERIALIZED), so statistics that say the tables are empty cannot nest them per
# member (see `campaigns.selectors`).
_OUTCOMES_SQL = """
WITH m AS ({members}), bounds AS MATERIALIZED (
    SELECT min(t0) AS lo, max(t1) AS hi FROM m
), orders AS MATERIALIZED (
    SELECT m.campaign_id, m.profile_id, count(DISTINCT e.properties->>'order_id') AS orders,
           sum({amount}) AS revenue
      FROM m
      JOIN profiles_identity i ON i.profile_id = m.profile_id AND i.kind = 'user_id'
      JOIN tracking_event e ON e.user_id = i.value
      CROSS JOIN bounds
     WHERE e.name = 'order_paid' AND e.timestamp >= bounds.lo AND e.timestamp <= bounds.hi
       AND e.timestamp >= m.t0 AND e.timestamp <= m.t1
     GROUP BY 1, 2
), costs AS MATERIALIZED (
    SELECT m.campaign_id, m.profile_id, sum(r.discount) AS cost
      FROM m JOIN coupons_redemption r ON r.profile_id = m.profile_id AND r.rule_id = %(rule_id)s
     WHERE m.treated AND r.rolled_back_at IS NULL AND r.redeemed_at >= m.t0 AND r.redeemed_at <= m.t1
     GROUP BY 1, 2
)
SELECT m.campaign_id, m.campaign_name, m.treated, vt.slug, m.margin_percent,
       COALESCE(o.orders, 0), COALESCE(o.revenue, 0), COALESCE(c.cost, 0), m.profile_id
  FROM m
  LEFT JOIN orders o ON o.campaign_id = m.campaign_id AND o.profile_id = m.profile_id
  LEFT JOIN costs c ON c.campaign_id = m.campaign_id AND c.profile_id = m.profile_id
  LEFT JOIN crm_customervalue cv ON cv.profile_id = m.profile_id
  LEFT JOIN crm_valuetier vt ON vt.id = cv.tier_id
"""


@dataclass
class _Sums:
    """Per-person sums of one group: n, and the first and second moments of the outcomes."""

    n: int = 0
    s: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def add(self, orders: float, margin: float, revenue: float, cost: float) -> None:
        self.n += 1
        for name, x in (("o", orders), ("m", margin), ("r", revenue), ("c", cost)):
            self.s[name] += x
            self.s[name + name] += x * x
        self.s["mc"] += margin * cost

    def mean(self, k: str) -> float:
        return self.s[k] / self.n

    def var(self, k: str) -> float:
        if self.n < 2:
            return 0.0
        return max(self.s[k + k] - self.n * self.mean(k) ** 2, 0.0) / (self.n - 1)

    def cov_mc(self) -> float:
        if self.n < 2:
            return 0.0
        return (self.s["mc"] - self.n * self.mean("m") * self.mean("c")) / (self.n - 1)


@dataclass
class Incremental:
    """The incremental numbers of one slice (a rule, a campaign or a tier), with 95 % intervals."""

    treated: int
    holdout: int
    orders: float
    orders_ci: tuple[float, float]
    revenue: float
    revenue_ci: tuple[float, float]
    margin: float
    margin_ci: tuple[float, float]
    cost: float
    cost_ci: tuple[float, float]
    roi: float | None
    roi_ci: tuple[float | None, float | None]

    def as_dict(self) -> dict[str, Any]:
        def money(x: float) -> Decimal:
            return Decimal(str(round(x, 2)))

        return {
            "treated": self.treated,
            "holdout": self.holdout,
            "orders": round(self.orders, 2),
            "orders_ci_low": round(self.orders_ci[0], 2),
            "orders_ci_high": round(self.orders_ci[1], 2),
            "revenue": money(self.revenue),
            "revenue_ci_low": money(self.revenue_ci[0]),
            "revenue_ci_high": money(self.revenue_ci[1]),
            "margin": money(self.margin),
            "margin_ci_low": money(self.margin_ci[0]),
            "margin_ci_high": money(self.margin_ci[1]),
            "cost": money(self.cost),
            "cost_ci_low": money(self.cost_ci[0]),
            "cost_ci_high": money(self.cost_ci[1]),
            "roi": None if self.roi is None else round(self.roi, 4),
            "roi_ci_low": None if self.roi_ci[0] is None else round(self.roi_ci[0], 4),
            "roi_ci_high": None if self.roi_ci[1] is None else round(self.roi_ci[1], 4),
        }


def combine(pairs: Iterable[tuple[_Sums, _Sums]]) -> Incremental | None:
    """Sum the per-campaign increments of (treated, holdout) pairs; None without any pair that has
    both a treated and a holdout member."""
    n_t = n_h = 0
    est = defaultdict(float)
    var = defaultdict(float)
    cost = cost_var = cov_mc = 0.0
    used = False
    for treated, holdout in pairs:
        if treated.n == 0 or holdout.n == 0:
            continue
        used = True
        scale = treated.n / holdout.n
        n_t, n_h = n_t + treated.n, n_h + holdout.n
        for k in ("o", "r", "m"):
            est[k] += treated.s[k] - scale * holdout.s[k]
            var[k] += treated.n * treated.var(k) + scale * scale * holdout.n * holdout.var(k)
        cost += treated.s["c"]
        cost_var += treated.n * treated.var("c")
        cov_mc += treated.n * treated.cov_mc()
    if not used:
        return None

    def ci(k: str) -> tuple[float, float]:
        half = Z95 * math.sqrt(var[k])
        return est[k] - half, est[k] + half

    roi, roi_ci = None, (None, None)
    if cost > 0:
        m = est["m"]
        ratio_var = var["m"] / cost**2 + m * m * cost_var / cost**4 - 2 * m * cov_mc / cost**3
        roi = m / cost - 1
        half = Z95 * math.sqrt(max(ratio_var, 0.0))
        roi_ci = (roi - half, roi + half)
    return Incremental(
        treated=n_t,
        holdout=n_h,
        orders=est["o"],
        orders_ci=ci("o"),
        revenue=est["r"],
        revenue_ci=ci("r"),
        margin=est["m"],
        margin_ci=ci("m"),
        cost=cost,
        # The cost is what was given; its interval is how much it could vary for groups like these.
        cost_ci=(cost - Z95 * math.sqrt(cost_var), cost + Z95 * math.sqrt(cost_var)),
        roi=roi,
        roi_ci=roi_ci,
    )


def member_outcomes(*, rule_id: int) -> list[tuple]:
    """Per member of the campaigns with a holdout that gave the rule: (campaign_id, name, treated,
    tier, margin_percent, orders, revenue, cost, profile_id); empty without any."""
    members = holdout_members_sql()
    if members is None:
        return []
    sql = _OUTCOMES_SQL.format(members=members, amount=order_amount_sql("e.properties"))
    with connection.cursor() as cursor:
        cursor.execute(sql, {"rule_id": rule_id})
        return cursor.fetchall()


def rule_incremental(*, rule_id: int) -> dict[str, Any] | None:
    """The incremental numbers of a rule over every campaign with a holdout that gave it, with
    the same per campaign and per tier (the holder's value tier now); None when it never went
    out through such a campaign (or no campaigns app registered its members)."""
    rows = member_outcomes(rule_id=rule_id)
    if not rows:
        return None
    groups: dict[tuple, tuple[_Sums, _Sums]] = {}
    names: dict[int, str] = {}
    for campaign_id, name, treated, tier, margin_percent, orders, revenue, cost, _profile in rows:
        names[campaign_id] = name
        revenue = float(revenue)
        margin = revenue * float(margin_percent) / 100
        for key in (("campaign", campaign_id), ("tier", campaign_id, tier or "")):
            pair = groups.setdefault(key, (_Sums(), _Sums()))
            pair[0 if treated else 1].add(float(orders), margin, revenue, float(cost))
    total = combine(pair for key, pair in groups.items() if key[0] == "campaign")
    if total is None:
        return None
    by_campaign = []
    for key, pair in sorted((k, p) for k, p in groups.items() if k[0] == "campaign"):
        if (one := combine([pair])) is not None:
            by_campaign.append({"campaign": key[1], "campaign_name": names[key[1]], **one.as_dict()})
    tiers = sorted({key[2] for key in groups if key[0] == "tier"})
    by_tier = []
    for tier in tiers:
        one = combine(pair for key, pair in groups.items() if key[0] == "tier" and key[2] == tier)
        if one is not None:
            by_tier.append({"tier": tier or None, **one.as_dict()})
    return {**total.as_dict(), "by_campaign": by_campaign, "by_tier": by_tier}
