"""Reads of the customer-value domain: one profile's value for the API and customer service, and
the distributions and movements operators look at in the admin."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import Count
from django.utils.translation import gettext as _

from config.formatting import time_ago
from crm.models import CustomerValue, LifecycleStage, RfmSegment, ValueTier
from profiles.models import Profile


def _value_row(profile: Profile) -> CustomerValue | None:
    """The profile's value row, read once per profile instance: the profile API asks for tier,
    rfm and lifecycle separately, and the three share this one query."""
    relation = Profile.value.related
    if relation.is_cached(profile):
        return relation.get_cached_value(profile)
    row = (
        CustomerValue.objects.with_recency()
        .select_related("tier", "account_manager__user")
        .filter(profile_id=profile.pk)
        .first()
    )
    relation.set_cached_value(profile, row)
    return row


def _rfm(value: CustomerValue) -> dict[str, Any] | None:
    if not value.has_orders:
        return None
    return {
        "recency_days": value.recency_days,
        "frequency": value.frequency,
        "monetary": f"{value.monetary:.2f}",
        "r": value.r,
        "f": value.f,
        "m": value.m,
        "segment": value.segment,
    }


def value_of(profile: Profile) -> dict[str, Any]:
    """`{"tier", "rfm", "lifecycle"}` of a profile as the profile API shows them: the tier's slug,
    `rfm` null for profiles without orders, all null before the first recompute."""
    value = _value_row(profile)
    if value is None:
        return {"tier": None, "rfm": None, "lifecycle": None}
    return {
        "tier": value.tier.slug if value.tier else None,
        "rfm": _rfm(value),
        "lifecycle": value.lifecycle or None,
    }


def tier_of(profile: Profile) -> str | None:
    return value_of(profile)["tier"]


def rfm_of(profile: Profile) -> dict[str, Any] | None:
    return value_of(profile)["rfm"]


def lifecycle_of(profile: Profile) -> str | None:
    return value_of(profile)["lifecycle"]


def account_manager_of(value: CustomerValue) -> dict[str, Any] | None:
    manager = value.account_manager
    if manager is None:
        return None
    user = manager.user
    return {
        "username": user.get_username(),
        "name": user.get_full_name() or user.get_username(),
        "email": user.email,
        "phone": manager.phone,
    }


def value_section(profile: Profile) -> dict[str, Any] | None:
    """The "value" section of the customer-service 360 view: a VIP caller is routed to the
    account manager shown here."""
    value = _value_row(profile)
    if value is None:
        return None
    return {
        "tier": {"slug": value.tier.slug, "name": value.tier.name} if value.tier else None,
        "segment": value.segment or None,
        "segment_label": RfmSegment(value.segment).label if value.segment else None,
        "rfm": _rfm(value),
        "lifecycle": value.lifecycle or None,
        "lifecycle_label": LifecycleStage(value.lifecycle).label if value.lifecycle else None,
        "lifecycle_since": value.lifecycle_since.isoformat() if value.lifecycle_since else None,
        "last_order_at": value.last_order_at.isoformat() if value.last_order_at else None,
        "account_manager": account_manager_of(value),
        "computed_at": value.computed_at.isoformat(),
    }


def summary_part(profile: Profile) -> str | None:
    """The lookup summary's start: "Core customer, last order 3 days ago" (or "no orders yet")."""
    value = _value_row(profile)
    if value is None:
        return None
    who = _("%(tier)s customer") % {"tier": value.tier.name} if value.tier else _("customer")
    if value.lifecycle and value.lifecycle != LifecycleStage.ACTIVE:
        who = f"{who} ({LifecycleStage(value.lifecycle).label.lower()})"
    if value.last_order_at is None:
        return _("%(who)s, no orders yet") % {"who": who}
    return _("%(who)s, last order %(when)s") % {"who": who, "when": time_ago(value.last_order_at)}


def _share(part: Decimal | None, whole: Decimal | None) -> float:
    if not whole:
        return 0.0
    return float((part or Decimal(0)) / whole)


def distribution() -> dict[str, Any]:
    """Counts and revenue (monetary in the window) per tier, segment and lifecycle stage, and the
    80/20 view: the share of revenue brought by the top 20% of customers."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT count(*), count(*) FILTER (WHERE frequency > 0), COALESCE(sum(monetary), 0)
            FROM crm_customervalue
            """
        )
        profiles, customers, revenue = cursor.fetchone()
        cursor.execute(
            """
            SELECT tier_id, count(*), COALESCE(sum(monetary), 0) FROM crm_customervalue GROUP BY tier_id
            """
        )
        by_tier = {row[0]: row[1:] for row in cursor.fetchall()}
        cursor.execute("SELECT segment, count(*), COALESCE(sum(monetary), 0) FROM crm_customervalue GROUP BY segment")
        by_segment = {row[0]: row[1:] for row in cursor.fetchall()}
        cursor.execute("SELECT lifecycle, count(*) FROM crm_customervalue GROUP BY lifecycle")
        by_stage = dict(cursor.fetchall())
        # Customers ranked by spend; the top ceil(20%) of them, and the cumulative share by decile
        # for the Lorenz-style chart.
        cursor.execute(
            """
            WITH c AS (
                SELECT monetary, row_number() OVER (ORDER BY monetary DESC, profile_id) AS k,
                       count(*) OVER () AS n
                FROM crm_customervalue WHERE frequency > 0
            )
            SELECT ceil(10.0 * k / n)::int AS decile, sum(monetary),
                   sum(monetary) FILTER (WHERE k <= ceil(0.2 * n))
            FROM c GROUP BY 1 ORDER BY 1
            """
        )
        deciles = cursor.fetchall()
    top20 = sum((row[2] or Decimal(0)) for row in deciles)
    cumulative, running = [], Decimal(0)
    for decile, amount, _top in deciles:
        running += amount or Decimal(0)
        cumulative.append({"decile": decile, "share": _share(running, revenue)})
    tiers = []
    for tier in ValueTier.objects.all():
        count, amount = by_tier.pop(tier.pk, (0, Decimal(0)))
        tiers.append({"id": tier.pk, **_dist_row(tier.slug, tier.name, count, amount, profiles, revenue)})
    if None in by_tier:
        count, amount = by_tier.pop(None)
        tiers.append({"id": "", **_dist_row("", "(no tier)", count, amount, profiles, revenue)})
    segments = []
    for segment in RfmSegment:
        count, amount = by_segment.get(segment.value, (0, Decimal(0)))
        segments.append(_dist_row(segment.value, segment.label, count, amount, customers, revenue))
    stages = [
        {"key": stage.value, "label": stage.label, "count": by_stage.get(stage.value, 0)} for stage in LifecycleStage
    ]
    return {
        "profiles": profiles,
        "customers": customers,
        "revenue": revenue,
        "top20_revenue": top20,
        "top20_share": _share(top20, revenue),
        "tiers": tiers,
        "segments": segments,
        "lifecycle": stages,
        "lorenz": cumulative,
    }


def _dist_row(key: str, label: str, count: int, amount: Decimal, base: int, revenue: Decimal) -> dict[str, Any]:
    return {
        "key": key,
        "label": label,
        "count": count,
        "count_share": count / base if base else 0.0,
        "revenue": amount,
        "revenue_share": _share(amount, revenue),
    }


TIER_AT_SQL = """
SELECT DISTINCT ON (profile_id) profile_id, to_value AS tier
FROM crm_valuechange WHERE what = 'tier' AND at <= %s
ORDER BY profile_id, at DESC, id DESC
"""


def tier_movements(*, start: datetime, end: datetime) -> dict[str, Any]:
    """How many profiles were in tier A at `start` and in tier B at `end`, rebuilt from the
    change history (a profile's tier at a moment is the last change recorded before it)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH s AS ({TIER_AT_SQL}), e AS ({TIER_AT_SQL})
            SELECT COALESCE(s.tier, ''), COALESCE(e.tier, ''), count(*)
            FROM s FULL JOIN e ON e.profile_id = s.profile_id
            GROUP BY 1, 2
            """,
            [start, end],
        )
        cells = {(row[0], row[1]): row[2] for row in cursor.fetchall()}
    known = [t.slug for t in ValueTier.objects.all()]
    seen = {key for pair in cells for key in pair}
    keys = known + sorted(seen - set(known) - {""}) + ([""] if "" in seen else [])
    names = dict(ValueTier.objects.values_list("slug", "name"))
    return {
        "start": start,
        "end": end,
        "tiers": [{"key": k, "label": names.get(k, k or "(none)")} for k in keys],
        "matrix": [[cells.get((a, b), 0) for b in keys] for a in keys],
        "moved": sum(v for (a, b), v in cells.items() if a != b),
        "stayed": sum(v for (a, b), v in cells.items() if a == b),
    }


def moved_between_tiers(*, from_tier: str, to_tier: str, since: datetime, until: datetime) -> int:
    """How many moves from `from_tier` to `to_tier` were recorded in [since, until)."""
    from crm.models import ValueChange

    return ValueChange.objects.filter(
        what=ValueChange.What.TIER, from_value=from_tier, to_value=to_tier, at__gte=since, at__lt=until
    ).count()


def tier_and_stage_counts() -> tuple[dict[str, int], dict[str, int]]:
    """Profiles per value tier (by slug, "" for none) and per lifecycle stage ("" for none)."""
    tiers = dict(
        CustomerValue.objects.order_by().values_list("tier__slug").annotate(n=Count("*")).values_list("tier__slug", "n")
    )
    stages = dict(
        CustomerValue.objects.order_by().values_list("lifecycle").annotate(n=Count("*")).values_list("lifecycle", "n")
    )
    return {k or "": v for k, v in tiers.items()}, {k or "": v for k, v in stages.items()}
