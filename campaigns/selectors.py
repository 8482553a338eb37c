"""Reads of the campaigns app: segment size and sample, campaign counters and results."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import numpy as np
from django.conf import settings
from django.db import connection
from django.db.models import Count, Q, Sum
from django.db.models.expressions import RawSQL
from django.utils import timezone
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from campaigns import bandit
from campaigns.models import (
    Allocation,
    AllocationKind,
    Assignment,
    AssignmentRole,
    Campaign,
    CampaignPhase,
    CampaignStatus,
    Delivery,
    DeliveryStatus,
    ScheduleKind,
    Segment,
    Variant,
)
from campaigns.segments import audience_sql
from campaigns.stats import (
    DEFAULT_PLANNED_SAMPLE,
    SEQUENTIAL,
    SRM_THRESHOLD,
    GroupCounts,
    analyze,
    cuped_difference,
    cuped_theta,
    sequential_decision,
    sequential_rate,
)
from config import formatting
from coupons.models import Redemption
from tracking.selectors import event_name_seen, order_amount_sql

PREVIEW_SAMPLE = 20


def known_delivery_ids(ids: set[int]) -> set[int]:
    """Which of these delivery ids exist (receipts and tracking links for others are refused)."""
    return set(Delivery.objects.filter(pk__in=ids).values_list("pk", flat=True))


def segment_size(definition: Any) -> int:
    sql, params = audience_sql(definition)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM ({sql}) s", params)
        return cursor.fetchone()[0]


def segment_exists(segment_id: int) -> bool:
    return Segment.objects.filter(pk=segment_id).exists()


def segment_profile_ids(segment_id: int) -> list[int]:
    """The profile ids in a segment now (for coupon bulk issuance); unknown segment: none."""
    segment = Segment.objects.filter(pk=segment_id).first()
    if segment is None:
        return []
    sql, params = audience_sql(segment.definition)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT profile_id FROM ({sql}) s ORDER BY profile_id", params)
        return [row[0] for row in cursor.fetchall()]


def segment_preview(segment: Segment, *, sample: int = PREVIEW_SAMPLE) -> dict[str, Any]:
    """Live size and a sample spread over the audience (hash order, so it is stable between
    calls yet not biased to the oldest profiles)."""
    sql, params = audience_sql(segment.definition)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT count(*) OVER (), user_id FROM ({sql}) s ORDER BY md5(user_id) LIMIT %s", [*params, sample]
        )
        rows = cursor.fetchall()
    if not rows:
        return {"size": 0, "sample": []}
    return {"size": rows[0][0], "sample": [r[1] for r in rows]}


def campaign_warnings(campaign: Campaign) -> list[str]:
    """What may keep a campaign from ever sending without being wrong: a trigger on an event name
    no event has carried yet (a new event the product is about to send, or a typo)."""
    warnings = []
    trigger = campaign.trigger_event if campaign.schedule_kind == ScheduleKind.TRIGGER else ""
    if trigger and not event_name_seen(trigger):
        warnings.append(
            gettext(
                "No event named %(event)r has been recorded yet: the campaign sends only once the product "
                "sends one (check the spelling)."
            )
            % {"event": trigger}
        )
    return warnings


def delivery_counters(campaign: Campaign) -> dict[str, int]:
    counts = dict(campaign.deliveries.values_list("status").annotate(n=Count("id")).order_by())
    return {
        "assigned": campaign.assignments.count(),
        **{s: counts.get(s, 0) for s in ("pending", "sending", "sent", "delivered", "failed", "skipped", "unknown")},
    }


def _window_start(campaign: Campaign, first_sent: str, assigned: str) -> str:
    """SQL for when a member's attribution window opens. A single send: at the member's first
    send, or at assignment for those sent nothing (intention-to-treat). A journey: at entry
    (assignment) for every group, holdout and arms alike, since an arm's first message may come
    after waits; measuring arms from their send and the holdout from entry would compare windows of
    different lengths and inflate the uplift."""
    if campaign.phase == CampaignPhase.JOURNEY:
        return assigned
    return f"COALESCE({first_sent}, {assigned})"


def _member_rows(campaign: Campaign) -> list[tuple]:
    """Per group: assigned, sent, delivered, failed, opened, clicked, converted, revenue.

    Each member's window starts at their first send, or at assignment for those who were not
    sent anything (the holdout, and members skipped for consent or the cap: counting them from
    assignment keeps the comparison intention-to-treat). Events are found through the member's
    `user_id` identities, with the overall time range first so the event indexes apply. The range
    and the hits are computed once each (MATERIALIZED): with statistics that say the tables are
    empty (just after a send, before autovacuum has looked) the planner otherwise nested the whole
    hits subquery, and the range's aggregate inside it, once per member: 8.6 s for 400 members in
    a test, and minutes for more."""
    window = dt.timedelta(hours=campaign.attribution_hours)
    sql = (
        """
    WITH m AS (
        SELECT a.profile_id, a.role, a.variant_id, a.assigned_at,
               min(d.sent_at) AS sent_at,
               bool_or(d.sent_at IS NOT NULL) AS sent,
               bool_or(d.delivered_at IS NOT NULL) AS delivered,
               bool_or(d.status = 'failed') AS failed,
               bool_or(d.opened_at IS NOT NULL) AS opened,
               bool_or(d.clicked_at IS NOT NULL) AS clicked
        FROM campaigns_assignment a
        LEFT JOIN campaigns_delivery d ON d.campaign_id = a.campaign_id AND d.profile_id = a.profile_id
        WHERE a.campaign_id = %s
        GROUP BY a.id
    ), w AS (
        SELECT m.*, """
        + _window_start(campaign, "m.sent_at", "m.assigned_at")
        + """ AS t0 FROM m
    ), bounds AS MATERIALIZED (
        SELECT min(t0) AS lo, max(t0) + %s AS hi FROM w
    ), hits AS MATERIALIZED (
        SELECT w.profile_id,
               bool_or(e.name = %s) AS converted,
               sum(CASE WHEN e.name = 'order_paid' THEN """
        + order_amount_sql("e.properties")
        + """ ELSE 0 END) AS revenue
        FROM w
        JOIN profiles_identity i ON i.profile_id = w.profile_id AND i.kind = 'user_id'
        JOIN tracking_event e ON e.user_id = i.value
        CROSS JOIN bounds
        WHERE e.name IN (%s, 'order_paid') AND e.timestamp >= bounds.lo AND e.timestamp <= bounds.hi
          AND e.timestamp >= w.t0 AND e.timestamp <= w.t0 + %s
        GROUP BY w.profile_id
    )
    SELECT CASE WHEN w.role = 'holdout' THEN 'holdout' WHEN w.role = 'rollout' THEN 'rollout'
                ELSE w.variant_id::text END AS grp,
           count(*), count(*) FILTER (WHERE w.sent), count(*) FILTER (WHERE w.delivered),
           count(*) FILTER (WHERE w.failed), count(*) FILTER (WHERE w.opened),
           count(*) FILTER (WHERE w.clicked), count(*) FILTER (WHERE h.converted),
           COALESCE(sum(h.revenue), 0)
    FROM w LEFT JOIN hits h ON h.profile_id = w.profile_id
    GROUP BY 1
    """
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [campaign.pk, window, campaign.goal_event, campaign.goal_event, window])
        return cursor.fetchall()


# Per member: the group, whether they converted in their window (as in `_member_rows`), and what
# was known before assignment: their orders and all their events in the 30 days before it. The RFM
# tier is left out: only its current value is stored, and the campaign's own orders move it, so it
# is not a pre-experiment covariate (adjusting on it would bias the effect).
MEMBER_OUTCOMES_SQL = """
WITH w AS (
    SELECT a.profile_id, a.role, a.variant_id, a.assigned_at, __T0__ AS t0
    FROM campaigns_assignment a
    LEFT JOIN campaigns_delivery d ON d.campaign_id = a.campaign_id AND d.profile_id = a.profile_id
    WHERE a.campaign_id = %(campaign)s
    GROUP BY a.id
)
SELECT CASE WHEN w.role = 'holdout' THEN 'holdout' WHEN w.role = 'rollout' THEN 'rollout'
            ELSE w.variant_id::text END AS grp,
       COALESCE(post.converted, false), COALESCE(pre.orders, 0), COALESCE(pre.events, 0)
FROM w
LEFT JOIN LATERAL (
    SELECT bool_or(e.name = %(goal)s) AS converted
    FROM profiles_identity i JOIN tracking_event e ON e.user_id = i.value
    WHERE i.profile_id = w.profile_id AND i.kind = 'user_id' AND e.name = %(goal)s
      AND e.timestamp >= w.t0 AND e.timestamp <= w.t0 + %(window)s
) post ON true
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE e.name = 'order_paid') AS orders, count(*) AS events
    FROM profiles_identity i JOIN tracking_event e ON e.user_id = i.value
    WHERE i.profile_id = w.profile_id AND i.kind = 'user_id'
      AND e.timestamp >= w.assigned_at - %(pre_period)s AND e.timestamp < w.assigned_at
) pre ON true
"""
CUPED_COVARIATES = (_("orders in the 30 days before"), _("events in the 30 days before"))


def _member_outcomes(campaign: Campaign) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per group key: (converted 0/1 per member, pre-period covariates per member)."""
    with connection.cursor() as cursor:
        cursor.execute(
            MEMBER_OUTCOMES_SQL.replace("__T0__", _window_start(campaign, "min(d.sent_at)", "a.assigned_at")),
            {
                "campaign": campaign.pk,
                "goal": campaign.goal_event,
                "window": dt.timedelta(hours=campaign.attribution_hours),
                "pre_period": dt.timedelta(days=30),
            },
        )
        rows = cursor.fetchall()
    by_group: dict[str, list[tuple]] = {}
    for grp, converted, orders, events in rows:
        by_group.setdefault(grp, []).append((float(converted), float(orders), float(events)))
    out = {}
    for grp, items in by_group.items():
        array = np.asarray(items, dtype=float)
        out[grp] = (array[:, 0], array[:, 1:])
    return out


def _redemptions_by_variant(campaign: Campaign) -> dict[str, tuple[int, Decimal]]:
    """Coupon redemptions (not rolled back) of coupons issued by this campaign, per source ref."""
    rows = (
        Redemption.objects.filter(
            coupon__source_ref__startswith=f"campaign:{campaign.pk}:variant:", rolled_back_at__isnull=True
        )
        .values_list("coupon__source_ref")
        .annotate(n=Count("id"), discount=Sum("discount"))
        .order_by()
    )
    return {ref: (n, discount or Decimal(0)) for ref, n, discount in rows}


def converted_profile_ids(campaign: Campaign) -> set[int]:
    window = dt.timedelta(hours=campaign.attribution_hours)
    t0 = _window_start(campaign, "min(d.sent_at)", "a.assigned_at")
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH w AS (
                SELECT a.profile_id, {t0} AS t0
                FROM campaigns_assignment a
                LEFT JOIN campaigns_delivery d ON d.campaign_id = a.campaign_id AND d.profile_id = a.profile_id
                WHERE a.campaign_id = %s GROUP BY a.id
            )
            SELECT DISTINCT w.profile_id FROM w
            JOIN profiles_identity i ON i.profile_id = w.profile_id AND i.kind = 'user_id'
            JOIN tracking_event e ON e.user_id = i.value AND e.name = %s
             AND e.timestamp >= w.t0 AND e.timestamp <= w.t0 + %s
            """,
            [campaign.pk, campaign.goal_event, window],
        )
        return {row[0] for row in cursor.fetchall()}


def coupon_redeemer_ids(campaign: Campaign) -> set[int]:
    return set(
        Redemption.objects.filter(
            coupon__source_ref__startswith=f"campaign:{campaign.pk}:variant:", rolled_back_at__isnull=True
        ).values_list("coupon__profile_id", flat=True)
    )


def expected_shares(campaign: Campaign) -> dict[str, float]:
    """The configured share of the audience in each group (keys as in the results). A bandit's
    shares change: each group's expected count is summed over the allocations its members were
    assigned under, so the sample-ratio check holds the shares to what was in force."""
    if campaign.allocation == AllocationKind.THOMPSON and campaign.allocations.exists():
        return _bandit_expected_shares(campaign)
    variants = list(campaign.variants.order_by("position", "id"))
    holdout = float(campaign.holdout_percent) / 100
    pilot = float(campaign.pilot_percent) / 100
    has_pilot = Assignment.objects.filter(campaign=campaign, role=AssignmentRole.ROLLOUT).exists() or (
        pilot > 0 and not campaign.assignments.exists()
    )
    tested = pilot if has_pilot else 1 - holdout
    total_weight = sum(v.weight for v in variants) or 1
    shares = {"holdout": holdout} if holdout > 0 else {}
    for v in variants:
        shares[str(v.pk)] = tested * v.weight / total_weight
    if has_pilot:
        shares["rollout"] = 1 - holdout - pilot
    return shares


_ASSIGNED_PER_ALLOCATION_SQL = """
SELECT allocation_id, CASE WHEN role = 'holdout' THEN 'holdout' ELSE variant_id::text END, count(*)
  FROM campaigns_assignment WHERE campaign_id = %(campaign)s GROUP BY 1, 2
"""


def _bandit_expected_shares(campaign: Campaign) -> dict[str, float]:
    allocations = list(campaign.allocations.order_by("valid_from", "id"))
    with connection.cursor() as cursor:
        cursor.execute(_ASSIGNED_PER_ALLOCATION_SQL, {"campaign": campaign.pk})
        rows = cursor.fetchall()
    counts: dict[int, dict[str, int]] = {}
    for allocation_id, key, n in rows:
        # A member without one (assigned before the campaign became a bandit) counts under the first.
        period = counts.setdefault(allocation_id or allocations[0].pk, {})
        period[key] = period.get(key, 0) + n
    if not counts:
        latest = allocations[-1].shares
        return {k: float(latest.get(k, 0)) for k in _group_keys(campaign)}
    by_id = {a.pk: a.shares for a in allocations}
    expected = bandit.expected_counts([(by_id[pk], c) for pk, c in counts.items()])
    total = sum(expected.values()) or 1.0
    return {k: expected.get(k, 0.0) / total for k in _group_keys(campaign)}


def _group_keys(campaign: Campaign) -> list[str]:
    keys = ["holdout"] if campaign.holdout_percent > 0 else []
    return keys + [str(pk) for pk in campaign.variants.order_by("position", "id").values_list("pk", flat=True)]


def current_shares(campaign: Campaign) -> dict[str, float]:
    """The shares newcomers are assigned by now, by group name: a bandit's latest allocation,
    else the configured shares (holdout, pilot, the weights)."""
    names = {str(pk): name for pk, name in campaign.variants.values_list("pk", "name")}
    latest = (
        campaign.allocations.order_by("-valid_from", "-id").first()
        if campaign.allocation == AllocationKind.THOMPSON
        else None
    )
    shares = latest.shares if latest is not None else expected_shares(campaign)
    return {names.get(k, k): float(v) for k, v in shares.items()}


def allocation_history(campaign: Campaign, *, limit: int = 500) -> list[dict[str, Any]]:
    """A bandit's shares over time, latest first, by group name (empty for a fixed split)."""
    names = {str(pk): name for pk, name in campaign.variants.values_list("pk", "name")}
    rows = Allocation.objects.filter(campaign=campaign).order_by("-valid_from", "-id")[:limit]
    return [
        {
            "valid_from": a.valid_from.isoformat(),
            "reason": a.reason,
            "shares": {names.get(k, k): float(v) for k, v in a.shares.items()},
            "details": a.details,
        }
        for a in rows
    ]


# Per variant of a bandit campaign, over members whose reward window has closed (a member still
# inside it may yet order: counting them as not ordering would hold back the variant the bandit
# sent the most newcomers to lately): members, members with a reward, and the sum and sum of
# squares of the reward. The reward of a member is the margin on their orders in the window minus
# the discounts of this campaign's coupons they redeemed (not rolled back).
def _bandit_arms_sql(amount: str) -> str:
    return (
        """
WITH w AS (
    SELECT a.profile_id, a.variant_id, COALESCE(min(d.sent_at), a.assigned_at) AS t0
    FROM campaigns_assignment a
    LEFT JOIN campaigns_delivery d ON d.campaign_id = a.campaign_id AND d.profile_id = a.profile_id
    WHERE a.campaign_id = %(campaign)s AND a.role <> 'holdout' AND a.variant_id IS NOT NULL
    GROUP BY a.id
), m AS (
    SELECT * FROM w WHERE w.t0 + %(window)s <= %(now)s
), orders AS (
    SELECT m.profile_id, sum("""
        + amount
        + """) AS revenue
    FROM m
    JOIN profiles_identity i ON i.profile_id = m.profile_id AND i.kind = 'user_id'
    JOIN tracking_event e ON e.user_id = i.value AND e.name = 'order_paid'
     AND e.timestamp >= m.t0 AND e.timestamp <= m.t0 + %(window)s
    GROUP BY m.profile_id
), cost AS (
    SELECT c.profile_id, sum(r.discount) AS discount
    FROM coupons_coupon c JOIN coupons_redemption r ON r.coupon_id = c.id AND r.rolled_back_at IS NULL
    WHERE c.source_ref LIKE %(ref_prefix)s AND c.profile_id IN (SELECT profile_id FROM m)
    GROUP BY c.profile_id
), v AS (
    SELECT m.variant_id, o.profile_id IS NOT NULL OR COALESCE(k.discount, 0) > 0 AS rewarded,
           %(margin)s * COALESCE(o.revenue, 0) - COALESCE(k.discount, 0) AS reward
    FROM m LEFT JOIN orders o ON o.profile_id = m.profile_id LEFT JOIN cost k ON k.profile_id = m.profile_id
)
SELECT variant_id, count(*), count(*) FILTER (WHERE rewarded),
       COALESCE(sum(reward), 0), COALESCE(sum(reward * reward), 0)
FROM v GROUP BY variant_id
"""
    )


def bandit_arm_data(campaign: Campaign, *, variants: list[Variant], now: dt.datetime) -> list[bandit.ArmData]:
    """What the bandit knows of each variant at `now` (see `_bandit_arms_sql`)."""
    with connection.cursor() as cursor:
        cursor.execute(
            _bandit_arms_sql(order_amount_sql("e.properties")),
            {
                "campaign": campaign.pk,
                "window": dt.timedelta(hours=campaign.attribution_hours),
                "now": now,
                "ref_prefix": f"campaign:{campaign.pk}:variant:%",
                "margin": campaign.margin_percent / Decimal(100),
            },
        )
        rows = {vid: row for vid, *row in cursor.fetchall()}
    return [
        bandit.ArmData(
            key=str(v.pk),
            members=int(rows.get(v.pk, (0,))[0]),
            orders=int(rows.get(v.pk, (0, 0))[1]),
            value_sum=float(rows.get(v.pk, (0, 0, 0))[2]),
            value_sq_sum=float(rows.get(v.pk, (0, 0, 0, 0))[3]),
        )
        for v in variants
    ]


def campaign_results(campaign: Campaign) -> dict[str, Any]:
    """The contract's results: per group counts, rate with Wilson interval, uplift against the
    holdout (or the control variant when there is no holdout) with its z-test p-value, SRM."""
    variants = {str(v.pk): v for v in campaign.variants.order_by("position", "id")}
    rows = {r[0]: r[1:] for r in _member_rows(campaign)}
    redemptions = _redemptions_by_variant(campaign)
    shares = expected_shares(campaign)
    keys = list(shares)
    for key in rows:
        if key not in keys:
            keys.append(key)
    label = {k: ("holdout" if k == "holdout" else "rollout" if k == "rollout" else variants[k].name) for k in keys}
    control_key = "holdout" if "holdout" in keys else next(iter(variants), None)
    if control_key is None:
        return {
            "status": campaign.status,
            "phase": campaign.phase,
            "srm_p_value": None,
            "srm_blocked": False,
            "winner": None,
            "winner_reason": "the campaign has no variants",
            "fixed_winner": None,
            "summary": "",
            "groups": [],
        }
    counts = [
        GroupCounts(
            name=label[k],
            assigned=rows.get(k, (0,) * 8)[0],
            converted=rows.get(k, (0,) * 8)[6],
            expected_share=shares.get(k),
        )
        for k in keys
    ]
    stats = analyze(counts, control=label[control_key], alpha=campaign.alpha, min_sample=campaign.min_sample)
    variant_names = [v.name for v in variants.values()]
    # The rollout group is not an arm of the test; it can never be the winner. The fixed-horizon
    # rule stays for reference: read at every look, it rolls out a variant that is not better.
    fixed_candidates = [
        g for g in stats["groups"] if g["significant"] and (g["uplift"] or 0) > 0 and g["name"] in variant_names
    ]
    fixed_winner = max(fixed_candidates, key=lambda g: g["conversion_rate"])["name"] if fixed_candidates else None
    tested = [c for c in counts if c.name != "rollout"]
    planned = planned_sample(campaign, tested)
    decision = sequential_decision(
        tested,
        control=label[control_key],
        candidates=[n for n in variant_names if n != label[control_key]],
        alpha=campaign.alpha,
        min_sample=campaign.min_sample,
        planned_sample=planned,
    )
    # The SRM test counts every group, the rollout share included (its expected share is known).
    srm_blocked = stats["srm_p_value"] is not None and stats["srm_p_value"] < SRM_THRESHOLD
    winner = decision["winner"] if not srm_blocked else None
    reason = decision["reason"]
    if srm_blocked:
        reason = gettext(
            "sample ratio mismatch (p = %(p)s < %(threshold)s): the groups are out of "
            "balance, so no variant is rolled out until the assignment is checked"
        ) % {"p": f"{stats['srm_p_value']:.4g}", "threshold": SRM_THRESHOLD}
    cuped = _cuped(campaign, keys, control_key, planned)
    sequential_rates = {
        c.name: sequential_rate(c.converted, c.assigned, alpha=campaign.alpha, planned_sample=planned) for c in counts
    }
    groups = []
    for k, g in zip(keys, stats["groups"], strict=True):
        assigned, sent, delivered, failed, opened, clicked, converted, revenue = rows.get(k, (0,) * 7 + (Decimal(0),))
        variant = variants.get(k)
        redeemed, discount = redemptions.get(variant.source_ref, (0, Decimal(0))) if variant else (0, Decimal(0))
        if k == "rollout" and campaign.winner_id:
            redeemed, discount = redemptions.get(campaign.winner.source_ref, (0, Decimal(0)))
        revenue = Decimal(revenue or 0).quantize(Decimal("0.01"))
        groups.append(
            {
                "name": g["name"],
                "variant_id": variant.pk if variant else None,
                "expected_share": shares.get(k),
                "assigned": assigned,
                "sent": sent,
                "delivered": delivered,
                "failed": failed,
                "opened": opened,
                "clicked": clicked,
                "converted": converted,
                "conversion_rate": g["conversion_rate"],
                "ci_low": g["ci_low"],
                "ci_high": g["ci_high"],
                "uplift_vs_holdout": g["uplift"],
                "relative_uplift": g["relative_uplift"],
                "uplift_ci_low": g["uplift_ci_low"],
                "uplift_ci_high": g["uplift_ci_high"],
                "p_value": g["p_value"],
                "significant": g["significant"],
                "sequential": _sequential_row(g["name"], decision, sequential_rates[g["name"]]),
                "cuped": cuped.get(k),
                "revenue": str(revenue),
                "revenue_per_recipient": str((revenue / assigned).quantize(Decimal("0.01"))) if assigned else "0.00",
                "coupon_redemptions": redeemed,
                "coupon_discount": str(Decimal(discount).quantize(Decimal("0.01"))),
            }
        )
    results = {
        "campaign": campaign.pk,
        "status": campaign.status,
        "phase": campaign.phase,
        "control": label[control_key],
        "alpha": campaign.alpha,
        "min_sample": campaign.min_sample,
        "method": SEQUENTIAL,
        "planned_sample": planned,
        "srm_p_value": stats["srm_p_value"],
        "srm_blocked": srm_blocked,
        "winner": winner,
        "winner_reason": None if winner else reason,
        "fixed_winner": fixed_winner,
        "cuped_covariates": [str(c) for c in CUPED_COVARIATES],
        "rolled_out_variant": campaign.winner.name if campaign.winner_id else None,
        "rolled_out_at": campaign.rolled_out_at.isoformat() if campaign.rolled_out_at else None,
        "groups": groups,
    }
    results["summary"] = explain(results)
    return results


def _cuped(campaign: Campaign, keys: list[str], control_key: str, planned: int) -> dict[str, dict[str, Any]]:
    """Per tested group but the control: the CUPED-adjusted always-valid uplift against the
    control, beside the raw one (theta fitted on every tested group at once)."""
    members = _member_outcomes(campaign)
    empty = (np.zeros(0), np.zeros((0, len(CUPED_COVARIATES))))
    tested = [k for k in keys if k != "rollout"]
    theta = cuped_theta([members.get(k, empty) for k in tested])
    if theta.size == 0:
        return {}
    control = members.get(control_key, empty)
    return {
        k: cuped_difference(members.get(k, empty), control, theta, alpha=campaign.alpha, planned_sample=planned)
        for k in tested
        if k != control_key
    }


def planned_sample(campaign: Campaign, tested: list[GroupCounts]) -> int:
    """Where the confidence sequences are tuned to be tightest. A one-off campaign assigns its
    test groups once, before any outcome is known, so their size is a fixed design choice; a
    recurring or triggered campaign keeps adding members, so it takes the fixed default."""
    if campaign.schedule_kind in (ScheduleKind.NOW, ScheduleKind.AT):
        size = sum(c.assigned for c in tested)
        if size > 0:
            return size
    return DEFAULT_PLANNED_SAMPLE


def _sequential_row(name: str, decision: dict, rate: Any) -> dict[str, Any]:
    own = decision["groups"].get(name)
    vs = own["vs_control"] if own else {}
    return {
        "ci_low": rate.low,
        "ci_high": rate.high,
        "uplift_ci_low": vs.get("low"),
        "uplift_ci_high": vs.get("high"),
        "p_value": vs.get("p_value"),
        "p_value_holm": vs.get("p_value_holm"),
        "beats_control": own["beats_control"] if own else False,
        "vs_others": own["vs_others"] if own else [],
    }


def group_label(name: str | None) -> str:
    """A group's name as an operator reads it: the holdout in the reader's language, variants as named."""
    return gettext("holdout") if name == "holdout" else (name or "")


def _interval(low: float | None, high: float | None) -> str:
    if low is None or high is None:
        return formatting.MISSING
    return gettext("%(low)s to %(high)s") % {
        "low": formatting.uplift_points(low, 1),
        "high": formatting.uplift_points(high, 1),
    }


def explain(results: dict[str, Any]) -> str:
    """What was decided and why, in words, from the always-valid numbers."""
    confidence = f"{(1 - results['alpha']) * 100:g} %"
    control = results["control"]
    groups = {g["name"]: g for g in results["groups"]}
    lines = []
    shown = results["rolled_out_variant"] or results["winner"]
    for name in [shown] if shown else [g["name"] for g in results["groups"] if g["sequential"]["p_value"] is not None]:
        g = groups.get(name)
        if g is None or g["sequential"]["p_value"] is None:
            continue
        seq = g["sequential"]
        if seq["beats_control"]:
            sentence = gettext(
                "%(name)s beats %(control)s by %(uplift)s (%(confidence)s always-valid CI %(ci)s, %(p)s)"
            )
        elif (g["uplift_vs_holdout"] or 0) >= 0:
            sentence = gettext(
                "%(name)s does not yet beat %(control)s by %(uplift)s (%(confidence)s always-valid CI %(ci)s, %(p)s)"
            )
        else:
            sentence = gettext(
                "%(name)s trails %(control)s by %(uplift)s (%(confidence)s always-valid CI %(ci)s, %(p)s)"
            )
        text = sentence % {
            "name": name,
            "control": group_label(control),
            "uplift": formatting.uplift_points(g["uplift_vs_holdout"], 1),
            "confidence": confidence,
            "ci": _interval(seq["uplift_ci_low"], seq["uplift_ci_high"]),
            "p": gettext("Holm-adjusted p %(p)s") % {"p": formatting.p_value(seq["p_value_holm"])},
        }
        for other in seq["vs_others"]:
            p = other["p_value_holm"]
            words = {"other": other["name"], "p": "-" if p is None else formatting.p_value(p)}
            if other["beats"]:
                text += gettext("; beats %(other)s (Holm-adjusted p %(p)s)") % words
            else:
                text += gettext("; does not beat %(other)s (Holm-adjusted p %(p)s)") % words
        lines.append(text + ".")
    if results["srm_blocked"]:
        lines.append(gettext("Roll-out blocked: %(reason)s.") % {"reason": results["winner_reason"]})
    if results["rolled_out_variant"]:
        when = formatting.local_time(results["rolled_out_at"]) if results["rolled_out_at"] else "-"
        lines.append(
            gettext("%(variant)s rolled out at %(when)s.") % {"variant": results["rolled_out_variant"], "when": when}
        )
    elif results["winner"]:
        lines.append(gettext("%(winner)s is the winner: safe to roll out.") % {"winner": results["winner"]})
    elif not results["srm_blocked"]:
        lines.append(gettext("No winner yet: %(reason)s.") % {"reason": results["winner_reason"]})
    return " ".join(lines)


def campaign_lineage(campaign: Campaign) -> list[Campaign]:
    """Every iteration of this campaign's line, first to last."""
    root = campaign
    while root.parent_id:
        root = root.parent
    chain, frontier = [root], [root]
    while frontier:
        children = list(Campaign.objects.filter(parent__in=frontier).order_by("created_at"))
        chain.extend(children)
        frontier = children
    return chain


def deliveries_for_profile(profile: Any) -> list[dict[str, Any]]:
    """The customer-service view's `messages` section: the person's latest messages."""
    rows = Delivery.objects.filter(profile=profile).select_related("campaign", "variant").order_by("-created_at")[:20]
    return [
        {
            "campaign": d.campaign.name,
            "variant": d.variant.name,
            "channel": d.channel,
            "status": d.status,
            "sent_at": d.sent_at.isoformat() if d.sent_at else None,
            "opened": d.opened_at is not None,
            "clicked": d.clicked_at is not None,
            "reason": d.reason,
        }
        for d in rows
    ]


# Campaign fatigue, a feature of the churn model (predictions): messages sent to each profile in
# the 30 days before %(at)s.
MESSAGES_30D_SQL = """
SELECT d.profile_id, count(*)
FROM campaigns_delivery d
WHERE d.sent_at > %(at)s - interval '30 days' AND d.sent_at <= %(at)s
GROUP BY d.profile_id
"""


# The people of every campaign with a holdout whose variant gave a coupon of `%(rule_id)s`, for
# the coupons report's incremental ROI (`coupons.incremental`): treated (that variant's members,
# in any role but the holdout) or holdout, each with their attribution window, which starts at
# their first send or at assignment (intention-to-treat, as the campaign results count it).
HOLDOUT_MEMBERS_SQL = """
SELECT a.campaign_id, c.name AS campaign_name, a.profile_id, (a.role <> 'holdout') AS treated,
       CASE WHEN c.phase = 'journey' THEN a.assigned_at ELSE COALESCE(min(d.sent_at), a.assigned_at) END AS t0,
       CASE WHEN c.phase = 'journey' THEN a.assigned_at ELSE COALESCE(min(d.sent_at), a.assigned_at) END
         + make_interval(hours => c.attribution_hours) AS t1,
       c.margin_percent
  FROM campaigns_assignment a
  JOIN campaigns_campaign c ON c.id = a.campaign_id
  LEFT JOIN campaigns_variant v ON v.id = a.variant_id
  LEFT JOIN campaigns_delivery d ON d.campaign_id = a.campaign_id AND d.profile_id = a.profile_id
 WHERE a.campaign_id IN (SELECT cv.campaign_id FROM campaigns_variant cv WHERE cv.coupon_rule_id = %(rule_id)s)
   AND (a.role = 'holdout' OR v.coupon_rule_id = %(rule_id)s)
   AND c.holdout_percent > 0
 GROUP BY a.id, c.id
"""


def material_history(material: Any) -> list[dict[str, Any]]:
    """Each campaign variant that sent a version of `material`, with its counts from the
    campaign's results (frozen ones once completed) and, where the campaign kept a holdout, the
    incremental effect: the conversion rate's uplift over the holdout with its p-value."""
    variants = list(
        Variant.objects.filter(material_version__material=material)
        .select_related("campaign", "material_version")
        .order_by("-campaign__created_at", "position", "id")
    )
    results_of: dict[int, dict[str, Any]] = {}
    rows = []
    for v in variants:
        campaign = v.campaign
        if campaign.pk not in results_of:
            results_of[campaign.pk] = current_results(campaign)
        results = results_of[campaign.pk]
        group = next((g for g in results.get("groups", []) if g.get("variant_id") == v.pk), None) or {}
        holdout = results.get("control") == "holdout"
        rows.append(
            {
                "campaign": campaign.pk,
                "campaign_name": campaign.name,
                "campaign_status": campaign.status,
                "variant": v.name,
                "version": v.material_version.number,
                "assigned": group.get("assigned", 0),
                "sent": group.get("sent", 0),
                "opened": group.get("opened", 0),
                "clicked": group.get("clicked", 0),
                "converted": group.get("converted", 0),
                "conversion_rate": group.get("conversion_rate"),
                "uplift_vs_holdout": group.get("uplift_vs_holdout") if holdout else None,
                "p_value": group.get("p_value") if holdout else None,
                "had_holdout": holdout,
            }
        )
    return rows


# Why a member got no message, as an operator reads it (the codes sending and create_deliveries write).
SKIP_REASONS = {
    "NO_CONSENT": _("No consent for this channel"),
    "FREQUENCY_CAP": _("Daily frequency cap reached"),
    "FATIGUED": _("Fatigued on this channel (messaged too often lately)"),
}


def skipped_by_reason(campaign: Campaign) -> list[dict[str, Any]]:
    """The campaign's skipped deliveries counted per reason, largest first."""
    rows = (
        Delivery.objects.filter(campaign=campaign, status=DeliveryStatus.SKIPPED)
        .values("reason")
        .annotate(n=Count("id"))
        .order_by("-n", "reason")
    )
    return [
        {
            "reason": row["reason"],
            "label": str(SKIP_REASONS.get(row["reason"], formatting.label(row["reason"]) or _("No reason recorded"))),
            "count": row["n"],
        }
        for row in rows
    ]


def launch_forecast(campaign: Campaign, *, now: dt.datetime | None = None) -> dict[str, Any]:
    """What launching `campaign` now would do, before it is done: the audience, the holdout, who
    is skipped for lack of consent or because today's frequency cap is reached, the quiet hours,
    and the coupon money each variant's rule would commit against its remaining budget."""
    from campaigns.models import DailySendCount
    from campaigns.services import _CONSENT
    from coupons.models import CouponRule, RuleKind

    now = now or timezone.now()
    aud, params = audience_sql(campaign.segment.definition, now=now)
    cap = campaign.frequency_cap_per_day
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT count(*), count(*) FILTER (WHERE NOT ({_CONSENT[campaign.channel]})),"
            f" count(*) FILTER (WHERE %s > 0 AND ({_CONSENT[campaign.channel]}) AND EXISTS ("
            f"  SELECT 1 FROM {DailySendCount._meta.db_table} c"
            "  WHERE c.profile_id = p.id AND c.day = %s AND c.count >= %s))"
            f" FROM profiles_profile p WHERE p.id IN (SELECT profile_id FROM ({aud}) aud)",
            [cap, now.date(), cap, *params],
        )
        audience, no_consent, capped = cursor.fetchone()
    holdout = round(audience * float(campaign.holdout_percent or 0) / 100)
    # Holdout members are drawn at random: consent and the cap fall on them in proportion.
    messaged_share = (audience - holdout) / audience if audience else 0.0
    no_consent_sent = round(no_consent * messaged_share)
    capped_sent = round(capped * messaged_share)
    will_send = max(audience - holdout - no_consent_sent - capped_sent, 0)
    pilot = round(will_send * float(campaign.pilot_percent or 0) / 100) if campaign.pilot_percent else None

    variants = list(campaign.variants.order_by("position", "id"))
    total_weight = sum(v.weight for v in variants) or 1
    rules = CouponRule.objects.in_bulk([v.coupon_rule_id for v in variants if v.coupon_rule_id])
    coupons = []
    for v in variants:
        rule = rules.get(v.coupon_rule_id) if v.coupon_rule_id else None
        if v.coupon_rule_id and rule is None:
            coupons.append({"variant": v.name, "rule": None, "rule_id": v.coupon_rule_id})
            continue
        if rule is None:
            continue
        recipients = round(will_send * v.weight / total_weight)
        # The most one coupon can cost: a percent rule's cap, else its amount. A percent rule without
        # a cap has no such amount, only its share of each order: what it commits in all is then
        # bounded by its budget alone, if it has one.
        uncapped = rule.kind == RuleKind.PERCENT and rule.max_discount is None
        each = None if uncapped else rule.max_discount if rule.kind == RuleKind.PERCENT else rule.value
        left = rule.remaining
        commit = left if each is None else each * recipients
        coupons.append(
            {
                "variant": v.name,
                "rule": rule.name,
                "rule_id": rule.pk,
                "recipients": recipients,
                "each_at_most": each,
                "each_percent": rule.value if uncapped else None,
                "commit_at_most": commit,
                "budget_left": left,
                "over_budget": each is not None and left is not None and commit > left,
            }
        )
    given = [c for c in coupons if c.get("rule")]
    return {
        "audience": audience,
        "holdout": holdout,
        "no_consent": no_consent_sent,
        "frequency_capped": capped_sent,
        "frequency_cap_per_day": cap,
        "will_send": will_send,
        "pilot": pilot,
        "quiet_hours": (
            {"start": campaign.quiet_start_hour, "end": campaign.quiet_end_hour}
            if campaign.respect_quiet_hours
            else None
        ),
        "coupons": coupons,
        # No total where one variant's coupons have no upper bound.
        "coupon_commit_at_most": (
            None
            if any(c["commit_at_most"] is None for c in given)
            else sum((c["commit_at_most"] for c in given), Decimal(0))
        ),
    }


def attribution_closes_at(campaign: Campaign) -> dt.datetime | None:
    """When the last conversions of a sent campaign stop counting (its attribution window)."""
    if campaign.sent_at is None:
        return None
    return campaign.sent_at + dt.timedelta(hours=campaign.attribution_hours)


def shown_status(campaign: Campaign) -> str:
    """The status as an operator should read it: a sent campaign says until when its results move."""
    closes = attribution_closes_at(campaign)
    if campaign.status == CampaignStatus.SENT and closes:
        return str(_("Sent; counting conversions until %(when)s") % {"when": formatting.local_time(closes)})
    return str(campaign.get_status_display())


def results_are_final(campaign: Campaign) -> bool:
    """True once the attribution window has closed and the campaign is completed: its frozen
    snapshot then holds for good (before that, results are counted live)."""
    return campaign.status == CampaignStatus.COMPLETED and campaign.results_snapshot is not None


def current_results(campaign: Campaign) -> dict[str, Any]:
    """The one result set to show: the frozen snapshot once final, else counted live (a snapshot
    taken at the last send misses the conversions counted since)."""
    if results_are_final(campaign):
        return campaign.results_snapshot
    return campaign_results(campaign)


def attribution_grace() -> dt.timedelta:
    return dt.timedelta(minutes=int(getattr(settings, "OPSLOOP_ATTRIBUTION_GRACE_MINUTES", 60)))


def closed_for_more_than(minutes: int) -> Q:
    """Sent campaigns whose attribution window and grace period ended over `minutes` ago (by the
    database's clock): due for completion at 0, a stuck close past that."""
    return Q(status=CampaignStatus.SENT) & Q(
        sent_at__lte=RawSQL(
            "now() - campaigns_campaign.attribution_hours * interval '1 hour' - %s * interval '1 minute'",
            [int(attribution_grace().total_seconds() // 60) + minutes],
        )
    )
