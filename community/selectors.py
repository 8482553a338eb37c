"""Reads of the community app: the funnel, weekly cohorts, group health, competitor apps and
the raw inputs of contribution scores. Set-based SQL over the events as every analysis reads
them (`profiles_profileevent`: the profile each event belongs to now, merges applied)."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from scipy.stats import norm
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

from community.models import CommunityGroup, OperatorAccount

FUNNEL_STEPS = ("paid", "reached_page", "added_operator", "active_in_group", "bought_again")
STEP_LABELS = {
    "paid": _("Paid"),
    "reached_page": _("Reached the in-product page"),
    "added_operator": _("Added an operator"),
    "active_in_group": _("Active in a group (messages in 7 days)"),
    "bought_again": _("Bought again"),
}
# Where an operator's slice starts: before adding an operator a customer belongs to nobody, and
# before being active in a group to no group.
# "Active in a group": a message in a group within this long after adding the operator.
ACTIVE_WINDOW = timedelta(days=7)
SLICE_FIRST_STEP = {"channel": "paid", "operator": "added_operator", "group": "active_in_group"}


def community_page_path() -> str:
    """The path of the in-product page that shows the operators' QR codes (a setting)."""
    return getattr(settings, "OPSLOOP_COMMUNITY_PAGE_PATH", "/community")


def _rows(sql: str, params: dict[str, Any]) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


# --- the funnel -------------------------------------------------------------------------------

# A strict funnel: each step counts people who reached the previous one, after it. The paid step
# is the first order in the window; the channel is that order's utm_source.
_FUNNEL_SQL = """
WITH paid AS (
    SELECT DISTINCT ON (e.profile_id) e.profile_id, e.timestamp AS paid_at,
           COALESCE(NULLIF(e.utm_source, ''), '(none)') AS channel
    FROM profiles_profileevent e
    WHERE e.name = 'order_paid' AND e.timestamp >= %(start)s AND e.timestamp < %(end)s AND e.profile_id IS NOT NULL
    ORDER BY e.profile_id, e.timestamp
),
reached AS (
    SELECT p.profile_id, min(e.timestamp) AS reached_at
    FROM paid p JOIN profiles_profileevent e ON e.profile_id = p.profile_id
    WHERE e.name = 'page_view' AND e.path LIKE %(page)s AND e.timestamp >= p.paid_at AND e.timestamp < %(as_of)s
    GROUP BY p.profile_id
),
added AS (
    SELECT DISTINCT ON (r.profile_id) r.profile_id, c.added_at, COALESCE(a.operator_id, 0) AS operator_id
    FROM reached r
    JOIN community_contact c ON c.profile_id = r.profile_id AND c.added_at >= r.reached_at AND c.added_at < %(as_of)s
    JOIN community_operatoraccount a ON a.id = c.account_id
    ORDER BY r.profile_id, c.added_at
),
active AS (
    SELECT DISTINCT ON (d.profile_id) d.profile_id, d.added_at, g.id AS group_id
    FROM added d
    JOIN profiles_profileevent e ON e.profile_id = d.profile_id
    JOIN community_communitygroup g ON g.external_id = e.properties ->> 'group_id'
    WHERE e.name = 'community_message' AND e.timestamp >= d.added_at
      AND e.timestamp < LEAST(d.added_at + %(active_window)s, %(as_of)s)
    ORDER BY d.profile_id, e.timestamp
),
again AS (
    SELECT a.profile_id FROM active a
    WHERE EXISTS (
        SELECT 1 FROM profiles_profileevent e
        WHERE e.profile_id = a.profile_id AND e.name = 'order_paid' AND e.timestamp > a.added_at
          AND e.timestamp < %(as_of)s
    )
)
SELECT GROUPING(p.channel) AS no_channel, GROUPING(d.operator_id) AS no_operator, GROUPING(a.group_id) AS no_group,
       p.channel, d.operator_id, a.group_id,
       count(*), count(r.profile_id), count(d.profile_id), count(a.profile_id), count(g.profile_id)
FROM paid p
LEFT JOIN reached r ON r.profile_id = p.profile_id
LEFT JOIN added d ON d.profile_id = p.profile_id
LEFT JOIN active a ON a.profile_id = p.profile_id
LEFT JOIN again g ON g.profile_id = p.profile_id
GROUP BY GROUPING SETS ((), (p.channel), (d.operator_id), (a.group_id))
"""


def _steps(counts: dict[str, int], first: str) -> list[dict[str, Any]]:
    steps, previous, start = [], None, None
    for step in FUNNEL_STEPS[FUNNEL_STEPS.index(first) :]:
        count = counts[step]
        start = count if start is None else start
        steps.append(
            {
                "step": step,
                "label": STEP_LABELS[step],
                "count": count,
                "rate_from_previous": None if previous is None else (count / previous if previous else None),
                "rate_from_start": count / start if start else None,
            }
        )
        previous = count
    return steps


def community_funnel(*, start: datetime, end: datetime, as_of: datetime | None = None) -> dict[str, Any]:
    """Customers who paid in [start, end), and how many went on, in order, to the in-product page,
    to adding an operator, to messaging in a group within 7 days of adding and to buying again
    (until `as_of`, default now): overall, per channel (of the paid order), per operator (from
    "added an operator") and per group (from "active in a group")."""
    as_of = as_of or datetime.now(tz=start.tzinfo)
    rows = _rows(
        _FUNNEL_SQL,
        {
            "start": start,
            "end": end,
            "as_of": as_of,
            "page": community_page_path().replace("%", r"\%").replace("_", r"\_") + "%",
            "active_window": ACTIVE_WINDOW,
        },
    )
    operators = dict(get_user_model().objects.values_list("pk", "username"))
    groups = dict(CommunityGroup.objects.values_list("pk", "name"))
    groups_ext = dict(CommunityGroup.objects.values_list("pk", "external_id"))
    result: dict[str, Any] = {
        "start": start,
        "end": end,
        "as_of": as_of,
        "overall": _steps(dict.fromkeys(FUNNEL_STEPS, 0), "paid"),
        "by_channel": [],
        "by_operator": [],
        "by_group": [],
    }
    for no_channel, no_operator, no_group, channel, operator_id, group_id, *counts in rows:
        values = dict(zip(FUNNEL_STEPS, counts, strict=True))
        if no_channel and no_operator and no_group:
            result["overall"] = _steps(values, "paid")
        elif not no_channel:
            result["by_channel"].append({"key": channel, "label": channel, "steps": _steps(values, "paid")})
        elif not no_operator and operator_id is not None:
            unassigned = gettext("(unassigned account)")
            label = operators.get(operator_id, unassigned) if operator_id else unassigned
            result["by_operator"].append(
                {"key": operator_id or None, "label": label, "steps": _steps(values, "added_operator")}
            )
        elif not no_group and group_id is not None:
            label = groups.get(group_id) or groups_ext.get(group_id, str(group_id))
            result["by_group"].append({"key": group_id, "label": label, "steps": _steps(values, "active_in_group")})
    for key in ("by_channel", "by_operator", "by_group"):
        result[key].sort(key=lambda r: (-r["steps"][0]["count"], str(r["label"])))
    return result


_COHORT_SQL = """
WITH first_contact AS (
    SELECT DISTINCT ON (c.profile_id) c.profile_id, c.added_at
    FROM community_contact c ORDER BY c.profile_id, c.added_at
)
SELECT date_trunc('week', f.added_at AT TIME ZONE 'UTC')::date AS week,
       count(*) AS contacts,
       count(*) FILTER (WHERE EXISTS (
           SELECT 1 FROM profiles_profileevent e
           WHERE e.profile_id = f.profile_id AND e.name = 'community_message' AND e.timestamp >= f.added_at
             AND e.timestamp < f.added_at + %(active_window)s)) AS active,
       count(*) FILTER (WHERE EXISTS (
           SELECT 1 FROM profiles_profileevent e
           WHERE e.profile_id = f.profile_id AND e.name = 'order_paid' AND e.timestamp > f.added_at
             AND e.timestamp < %(as_of)s)) AS bought_again
FROM first_contact f
WHERE f.added_at >= %(start)s AND f.added_at < %(end)s
GROUP BY 1 ORDER BY 1
"""


def contact_cohorts(*, start: datetime, end: datetime, as_of: datetime | None = None) -> list[dict[str, Any]]:
    """People by the week (Monday, UTC) they first added an operator: how many, how many were
    active in a group in their first 7 days, how many bought again since (until `as_of`)."""
    as_of = as_of or datetime.now(tz=start.tzinfo)
    return [
        {
            "week": week,
            "contacts": contacts,
            "active": active,
            "active_rate": active / contacts if contacts else None,
            "bought_again": again,
            "bought_again_rate": again / contacts if contacts else None,
        }
        for week, contacts, active, again in _rows(
            _COHORT_SQL, {"start": start, "end": end, "as_of": as_of, "active_window": ACTIVE_WINDOW}
        )
    ]


# --- group health -----------------------------------------------------------------------------

_GROUP_COUNTS_SQL = """
SELECT g.id,
       (SELECT count(*) FROM community_membership m WHERE m.group_id = g.id AND m.is_member) AS members,
       (SELECT count(*) FROM community_membershipchange c
        WHERE c.group_id = g.id AND c.action = 'joined' AND c.at >= %(start)s AND c.at < %(end)s) AS joins,
       (SELECT count(*) FROM community_membershipchange c
        WHERE c.group_id = g.id AND c.action = 'left' AND c.at >= %(start)s AND c.at < %(end)s) AS leaves,
       (SELECT count(DISTINCT a.profile_id) FROM community_memberactivity a
        JOIN community_membership m ON m.group_id = a.group_id AND m.profile_id = a.profile_id AND m.is_member
        WHERE a.group_id = g.id AND a.day >= %(active_from)s AND a.day < %(end_day)s) AS active_members,
       (SELECT COALESCE(sum(a.messages), 0) FROM community_memberactivity a
        WHERE a.group_id = g.id AND a.day >= %(start_day)s AND a.day < %(end_day)s) AS messages
FROM community_communitygroup g
WHERE g.id = ANY(%(groups)s)
"""
_GROUP_LIFECYCLE_SQL = """
SELECT m.group_id, COALESCE(NULLIF(v.lifecycle, ''), 'unknown'), count(*)
FROM community_membership m LEFT JOIN crm_customervalue v ON v.profile_id = m.profile_id
WHERE m.is_member AND m.group_id = ANY(%(groups)s)
GROUP BY 1, 2
"""
# Customers (an order before the window) by stratum: tier and recency bucket at the window's
# start; members of each group (joined before the window, still in it) and non-members of every
# group (group 0); whether they bought in the window.
_REPURCHASE_SQL = """
WITH customers AS (
    SELECT e.profile_id, max(e.timestamp) AS last_order
    FROM profiles_profileevent e
    WHERE e.name = 'order_paid' AND e.timestamp < %(start)s AND e.profile_id IS NOT NULL
    GROUP BY e.profile_id
),
bought AS (
    SELECT DISTINCT e.profile_id FROM profiles_profileevent e
    WHERE e.name = 'order_paid' AND e.timestamp >= %(start)s AND e.timestamp < %(end)s AND e.profile_id IS NOT NULL
),
people AS (
    SELECT c.profile_id, COALESCE(v.tier_id, 0) AS tier,
           width_bucket(EXTRACT(EPOCH FROM %(start)s - c.last_order) / 86400, %(buckets)s::float8[]) AS recency,
           (b.profile_id IS NOT NULL) AS bought
    FROM customers c
    LEFT JOIN crm_customervalue v ON v.profile_id = c.profile_id
    LEFT JOIN bought b ON b.profile_id = c.profile_id
)
SELECT m.group_id, p.tier, p.recency, count(*), count(*) FILTER (WHERE p.bought)
FROM people p JOIN community_membership m ON m.profile_id = p.profile_id
WHERE m.is_member AND m.first_joined_at < %(start)s AND m.group_id = ANY(%(groups)s)
GROUP BY 1, 2, 3
UNION ALL
SELECT 0, p.tier, p.recency, count(*), count(*) FILTER (WHERE p.bought)
FROM people p
WHERE NOT EXISTS (SELECT 1 FROM community_membership m WHERE m.profile_id = p.profile_id AND m.is_member)
GROUP BY 1, 2, 3
"""
# Days since the last order: 0-29, 30-89, 90-179, 180 and more.
RECENCY_EDGES = [0.0, 30.0, 90.0, 180.0]


@dataclass(frozen=True)
class MatchedComparison:
    members: int
    matched_members: int
    member_rate: float | None
    matched_rate: float | None
    difference: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None


def matched_difference(
    members: dict[Any, tuple[int, int]], controls: dict[Any, tuple[int, int]], *, alpha: float = 0.05
) -> MatchedComparison:
    """Members' repurchase rate against non-members of the same strata (exact matching on the
    stratum, non-members weighted to the members' mix: direct standardisation). The interval is
    the normal one of the weighted difference, its variance the weighted sum of the strata's
    binomial variances. Members of strata with no non-member are left out: `member_rate` is the
    rate of the `matched_members`, so both rates describe the same mix."""
    total = sum(n for n, _ in members.values())
    strata = [s for s, (n, _) in members.items() if n and controls.get(s, (0, 0))[0]]
    matched = sum(members[s][0] for s in strata)
    if not matched:
        return MatchedComparison(total, 0, None, None, None, None, None, None)
    diff = var = m_rate = c_rate = 0.0
    for s in strata:
        (nm, km), (nc, kc) = members[s], controls[s]
        w = nm / matched
        pm, pc = km / nm, kc / nc
        m_rate += w * pm
        c_rate += w * pc
        diff += w * (pm - pc)
        var += w * w * (pm * (1 - pm) / nm + pc * (1 - pc) / nc)
    se = math.sqrt(var)
    z = norm.ppf(1 - alpha / 2)
    p_value = float(2 * norm.sf(abs(diff) / se)) if se > 0 else None
    return MatchedComparison(total, matched, m_rate, c_rate, diff, diff - z * se, diff + z * se, p_value)


def group_health(*, as_of: datetime, days: int = 30, group_ids: list[int] | None = None) -> list[dict[str, Any]]:
    """Per group: members now, joins and leaves and message volume in the `days` before `as_of`,
    the share of members who messaged in the last 7 days, members' lifecycle stages, and their
    repurchase rate in the window against matched non-members (tier and recency at its start)."""
    start = as_of - timedelta(days=days)
    queryset = CommunityGroup.objects.select_related("operator").order_by("external_id")
    if group_ids is not None:
        queryset = queryset.filter(pk__in=group_ids)
    groups = list(queryset)
    ids = [g.pk for g in groups]
    if not ids:
        return []
    params = {
        "groups": ids,
        "start": start,
        "end": as_of,
        "start_day": start.date(),
        "end_day": as_of.date() + timedelta(days=1),
        "active_from": as_of.date() - timedelta(days=6),
        "buckets": RECENCY_EDGES,
    }
    counts = {row[0]: row[1:] for row in _rows(_GROUP_COUNTS_SQL, params)}
    lifecycle: dict[int, dict[str, int]] = defaultdict(dict)
    for group_id, stage, n in _rows(_GROUP_LIFECYCLE_SQL, params):
        lifecycle[group_id][stage] = n
    strata: dict[int, dict[Any, tuple[int, int]]] = defaultdict(dict)
    for group_id, tier, recency, n, k in _rows(_REPURCHASE_SQL, params):
        strata[group_id][(tier, recency)] = (n, k)
    controls = strata.pop(0, {})
    result = []
    for g in groups:
        members, joins, leaves, active, messages = counts[g.pk]
        comparison = matched_difference(strata.get(g.pk, {}), controls)
        result.append(
            {
                "id": g.pk,
                "external_id": g.external_id,
                "name": g.name,
                "operator": g.operator.get_username() if g.operator_id else None,
                "members": members,
                "joins": joins,
                "leaves": leaves,
                "active_members": active,
                "active_share": active / members if members else None,
                "messages": messages,
                "lifecycle": dict(sorted(lifecycle.get(g.pk, {}).items())),
                "repurchase": {
                    "window_days": days,
                    "members": comparison.members,
                    "matched_members": comparison.matched_members,
                    "member_rate": comparison.member_rate,
                    "matched_non_member_rate": comparison.matched_rate,
                    "difference": comparison.difference,
                    "ci_low": comparison.ci_low,
                    "ci_high": comparison.ci_high,
                    "p_value": comparison.p_value,
                },
            }
        )
    return result


# --- competitor apps ------------------------------------------------------------------------

# The apps a person has: the `installed_apps` trait (a list), else the latest `installed_apps`
# event's `properties.apps`. Names are compared trimmed and lower-cased.
_APPS_SQL = """
-- MATERIALIZED: each part is computed once and hash-joined, so a plan made on stale statistics
-- (a bulk load the planner has not seen) cannot turn the joins into nested scans of the events.
WITH apps AS MATERIALIZED (
    SELECT DISTINCT ON (profile_id) profile_id, apps FROM (
        SELECT p.id AS profile_id, p.traits -> 'installed_apps' AS apps, 1 AS source, NULL::timestamptz AS at
        FROM profiles_profile p
        WHERE p.merged_into_id IS NULL AND jsonb_typeof(p.traits -> 'installed_apps') = 'array'
        UNION ALL
        SELECT e.profile_id, e.properties -> 'apps', 2, e.timestamp
        FROM profiles_profileevent e
        WHERE e.name = 'installed_apps' AND e.profile_id IS NOT NULL AND jsonb_typeof(e.properties -> 'apps') = 'array'
    ) s ORDER BY profile_id, source, at DESC
),
base AS MATERIALIZED (
    SELECT DISTINCT e.profile_id FROM profiles_profileevent e
    WHERE e.timestamp >= %(before)s AND e.timestamp < %(start)s AND e.profile_id IS NOT NULL
),
kept AS MATERIALIZED (
    SELECT DISTINCT e.profile_id FROM profiles_profileevent e
    WHERE e.timestamp >= %(start)s AND e.timestamp < %(end)s AND e.profile_id IS NOT NULL
),
people AS (
    SELECT a.profile_id, a.apps, (k.profile_id IS NOT NULL) AS kept
    FROM apps a JOIN base b ON b.profile_id = a.profile_id LEFT JOIN kept k ON k.profile_id = a.profile_id
)
SELECT NULL AS app, count(*), count(*) FILTER (WHERE kept) FROM people
UNION ALL
SELECT app, count(DISTINCT profile_id), count(DISTINCT profile_id) FILTER (WHERE kept)
FROM (
    SELECT p.profile_id, p.kept, lower(btrim(x)) AS app
    FROM people p, jsonb_array_elements_text(p.apps) AS x
) t
WHERE app <> ''
GROUP BY app
"""


def competitor_apps(*, as_of: datetime, days: int = 30, alpha: float = 0.05, min_users: int = 1) -> dict[str, Any]:
    """Retention of people with vs without each installed app. The base is everyone active in the
    `days` before the window `[as_of - days, as_of)` whose app list is known; retained means
    active again in the window. Per app: the overlap share (base with the app), both retention
    rates, their difference with a Newcombe interval and the pooled two-proportion z-test
    (statsmodels); sorted by overlap, biggest first."""
    start = as_of - timedelta(days=days)
    rows = _rows(_APPS_SQL, {"before": start - timedelta(days=days), "start": start, "end": as_of})
    total, kept_total = next(((n, k) for app, n, k in rows if app is None), (0, 0))
    apps = []
    for app, n_with, kept_with in rows:
        if app is None or n_with < min_users:
            continue
        n_without, kept_without = total - n_with, kept_total - kept_with
        row: dict[str, Any] = {
            "app": app,
            "users": n_with,
            "overlap_share": n_with / total if total else None,
            "retention_with": kept_with / n_with,
            "retention_without": kept_without / n_without if n_without else None,
            "difference": None,
            "ci_low": None,
            "ci_high": None,
            "p_value": None,
            "significant": False,
        }
        if n_without:
            row["difference"] = row["retention_with"] - row["retention_without"]
            if 0 < kept_with + kept_without < n_with + n_without:
                _, p = proportions_ztest([kept_with, kept_without], [n_with, n_without])
                row["p_value"] = float(p)
                row["significant"] = bool(p < alpha)
            low, high = confint_proportions_2indep(
                kept_with, n_with, kept_without, n_without, method="newcomb", compare="diff", alpha=alpha
            )
            row["ci_low"], row["ci_high"] = float(low), float(high)
        apps.append(row)
    apps.sort(key=lambda r: (-r["users"], r["app"]))
    return {
        "as_of": as_of,
        "window_days": days,
        "people": total,
        "retained": kept_total,
        "retention": kept_total / total if total else None,
        "apps": apps,
    }


# --- contribution score inputs ----------------------------------------------------------------

_NEW_MEMBERS_SQL = """
SELECT operator_id, count(DISTINCT profile_id) FROM (
    SELECT a.operator_id, c.profile_id FROM community_contact c
    JOIN community_operatoraccount a ON a.id = c.account_id
    WHERE a.operator_id IS NOT NULL AND c.added_at >= %(start)s AND c.added_at < %(end)s
    UNION ALL
    SELECT g.operator_id, m.profile_id FROM community_membership m
    JOIN community_communitygroup g ON g.id = m.group_id
    WHERE g.operator_id IS NOT NULL AND m.first_joined_at >= %(start)s AND m.first_joined_at < %(end)s
) s GROUP BY operator_id
"""
# Each order of the month is credited to the operator of the customer's latest contact made
# before it (last touch), so a customer who added two operators is not counted twice.
_CONTACT_TRANSACTIONS_SQL = """
SELECT t.operator_id, sum((e.properties ->> 'amount')::numeric), count(*)
FROM profiles_profileevent e
CROSS JOIN LATERAL (
    SELECT a.operator_id FROM community_contact c JOIN community_operatoraccount a ON a.id = c.account_id
    WHERE c.profile_id = e.profile_id AND c.added_at <= e.timestamp
    ORDER BY c.added_at DESC LIMIT 1
) t
WHERE e.name = 'order_paid' AND e.timestamp >= %(start)s AND e.timestamp < %(end)s AND t.operator_id IS NOT NULL
GROUP BY t.operator_id
"""
# Members of an operator's groups at the month's end (joined before it, not left before it):
# how many, how many messaged in the month, how many are in a healthy lifecycle stage.
_QUALITY_SQL = """
SELECT g.operator_id, g.id, count(*),
       count(*) FILTER (WHERE EXISTS (
           SELECT 1 FROM community_memberactivity x
           WHERE x.group_id = m.group_id AND x.profile_id = m.profile_id
             AND x.day >= %(start_day)s AND x.day < %(end_day)s)),
       count(*) FILTER (WHERE v.lifecycle IN ('new', 'active', 'reactivated'))
FROM community_membership m
JOIN community_communitygroup g ON g.id = m.group_id
LEFT JOIN crm_customervalue v ON v.profile_id = m.profile_id
WHERE g.operator_id IS NOT NULL AND m.first_joined_at < %(end)s
  AND NOT (NOT m.is_member AND m.state_at < %(end)s)
GROUP BY g.operator_id, g.id
"""


def month_bounds(month: date) -> tuple[datetime, datetime]:
    from datetime import UTC

    start = datetime(month.year, month.month, 1, tzinfo=UTC)
    end = datetime(month.year + (month.month == 12), month.month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def operators_with_communities() -> list[int]:
    """Staff users who run an account or a group: the operators scored."""
    ids = set(OperatorAccount.objects.filter(operator__is_staff=True).values_list("operator_id", flat=True))
    ids |= set(CommunityGroup.objects.filter(operator__is_staff=True).values_list("operator_id", flat=True))
    return sorted(ids)


def score_inputs(*, month: date) -> tuple[dict[int, dict[str, Decimal]], dict[int, dict[str, list]]]:
    """Raw values per operator and dimension for `month`, and the sources behind each."""
    from community.models import Dimension

    start, end = month_bounds(month)
    params = {"start": start, "end": end, "start_day": start.date(), "end_day": end.date()}
    operators = operators_with_communities()
    raw: dict[int, dict[str, Decimal]] = {op: {d: Decimal(0) for d in Dimension.values} for op in operators}
    sources: dict[int, dict[str, list]] = {op: {d: [] for d in Dimension.values} for op in operators}
    for op, n in _rows(_NEW_MEMBERS_SQL, params):
        if op in raw:
            raw[op][Dimension.NEW_MEMBERS] = Decimal(n)
            sources[op][Dimension.NEW_MEMBERS].append({"new_members": n})
    for op, amount, orders in _rows(_CONTACT_TRANSACTIONS_SQL, params):
        if op in raw:
            raw[op][Dimension.CONTACT_TRANSACTIONS] = Decimal(amount).quantize(Decimal("0.01"))
            sources[op][Dimension.CONTACT_TRANSACTIONS].append(
                {"orders": orders, "amount": str(raw[op]["contact_transactions"])}
            )
    pooled: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])
    names = dict(CommunityGroup.objects.values_list("pk", "external_id"))
    for op, group_id, members, active, healthy in _rows(_QUALITY_SQL, params):
        if op not in raw:
            continue
        totals = pooled[op]
        totals[0] += members
        totals[1] += active
        totals[2] += healthy
        sources[op][Dimension.COMMUNITY_QUALITY].append(
            {
                "group": group_id,
                "external_id": names.get(group_id),
                "members": members,
                "active": active,
                "healthy_lifecycle": healthy,
            }
        )
    for op, (members, active, healthy) in pooled.items():
        # Half activity (messaged this month), half lifecycle (new, active or reactivated), 0-100.
        quality = Decimal(50) * (Decimal(active) + Decimal(healthy)) / Decimal(members) if members else Decimal(0)
        raw[op][Dimension.COMMUNITY_QUALITY] = quality.quantize(Decimal("0.01"))
    for op, campaigns in campaign_increments(start=start, end=end).items():
        if op not in raw:
            raw[op] = {d: Decimal(0) for d in Dimension.values}
            sources[op] = {d: [] for d in Dimension.values}
        raw[op][Dimension.CAMPAIGN_INCREMENTAL] = sum(
            (Decimal(c["incremental_revenue"]) for c in campaigns), Decimal(0)
        )
        sources[op][Dimension.CAMPAIGN_INCREMENTAL] = campaigns
    return raw, sources


def campaign_increments(*, start: datetime, end: datetime) -> dict[int, list[dict[str, Any]]]:
    """Campaigns launched in [start, end) with a holdout, per credited operator (a
    `CampaignCredit`, else who launched it), with their incremental revenue: for each treated
    group, (revenue per assigned member - the holdout's) x its assigned members. Raw attributed
    revenue would credit operators with what the holdout shows happens anyway."""
    from access.models import AuditEntry
    from campaigns.models import Campaign
    from campaigns.selectors import campaign_results
    from community.models import CampaignCredit

    campaigns = list(Campaign.objects.filter(launched_at__gte=start, launched_at__lt=end, holdout_percent__gt=0))
    if not campaigns:
        return {}
    ids = [c.pk for c in campaigns]
    credit = dict(CampaignCredit.objects.filter(campaign_id__in=ids).values_list("campaign_id", "operator_id"))
    launches = AuditEntry.objects.filter(
        action="campaigns.campaign_launched",
        object_type="campaigns.campaign",
        object_id__in=[str(i) for i in ids],
        actor__isnull=False,
    ).order_by("at")
    for object_id, actor_id in launches.values_list("object_id", "actor_id"):
        credit.setdefault(int(object_id), actor_id)
    result: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for campaign in campaigns:
        operator_id = credit.get(campaign.pk)
        if operator_id is None:
            continue
        groups = campaign_results(campaign)["groups"]
        holdout = next((g for g in groups if g["name"] == "holdout"), None)
        if holdout is None or not holdout["assigned"]:
            continue
        base = Decimal(holdout["revenue"]) / holdout["assigned"]
        base_rate = holdout["converted"] / holdout["assigned"]
        revenue = Decimal(0)
        conversions = 0.0
        for g in groups:
            if g["name"] == "holdout" or not g["assigned"]:
                continue
            revenue += (Decimal(g["revenue"]) / g["assigned"] - base) * g["assigned"]
            conversions += (g["converted"] / g["assigned"] - base_rate) * g["assigned"]
        result[operator_id].append(
            {
                "campaign": campaign.pk,
                "name": campaign.name,
                "incremental_revenue": str(revenue.quantize(Decimal("0.01"))),
                "incremental_conversions": round(conversions, 2),
                "holdout_assigned": holdout["assigned"],
            }
        )
    return result


def unassigned() -> dict[str, list]:
    """Accounts and groups that events named but nobody has assigned to an operator yet."""
    return {
        "accounts": list(OperatorAccount.objects.filter(operator__isnull=True).order_by("first_seen_at", "id")),
        "groups": list(CommunityGroup.objects.filter(operator__isnull=True).order_by("first_seen_at", "id")),
    }
