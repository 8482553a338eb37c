"""Reads of the coupons app: a user's coupons, reports per rule and per campaign, the ledger."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import Count, F, Q, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from coupons.models import ZERO, CodeBatch, Coupon, CouponRule, CouponStatus, IssuanceJob, Redemption
from profiles.models import Profile

PROFILE_STATUSES = ("available", "redeemed", "expired")


def coupons_for_profile(*, profile: Profile, status: str | None = None) -> QuerySet[Coupon]:
    """A person's coupons, newest first. `available` means usable now (not past its end)."""
    queryset = (
        Coupon.objects.filter(profile_id__in=profile_ids_of(profile))
        .select_related("rule")
        .order_by("-issued_at", "-id")
    )
    now = timezone.now()
    if status == "available":
        queryset = queryset.filter(status=CouponStatus.AVAILABLE).filter(
            Q(expires_at__isnull=True) | Q(expires_at__gt=now)
        )
    elif status == "expired":
        queryset = queryset.filter(
            Q(status=CouponStatus.EXPIRED) | Q(status=CouponStatus.AVAILABLE, expires_at__lte=now)
        )
    elif status == "redeemed":
        queryset = queryset.filter(status=CouponStatus.REDEEMED)
    return queryset


def profile_ids_of(profile: Profile) -> list[int]:
    """The person's profile and those merged into it (whose coupons are theirs now)."""
    ids, frontier = [profile.pk], [profile.pk]
    for _ in range(8):
        frontier = list(Profile.objects.filter(merged_into_id__in=frontier).values_list("pk", flat=True))
        if not frontier:
            break
        ids += frontier
    return ids


def shown_status(coupon: Coupon, now=None) -> str:
    """The status a person sees: a live coupon past its end is expired even before the sweep."""
    now = now or timezone.now()
    if coupon.status == CouponStatus.AVAILABLE and coupon.expires_at is not None and coupon.expires_at <= now:
        return CouponStatus.EXPIRED
    return coupon.status


@dataclass(frozen=True)
class Report:
    issued: int
    redeemed: int
    unused: int
    expired: int
    revoked: int
    budget: Decimal | None
    committed: Decimal
    spent: Decimal
    remaining: Decimal | None
    order_revenue: Decimal
    roi: float | None
    redemption_rate: float | None
    by_tier: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _report(coupons: QuerySet[Coupon], *, budget: Decimal | None, committed: Decimal, spent: Decimal) -> Report:
    counts = coupons.aggregate(
        issued=Count("id"),
        redeemed=Count("id", filter=Q(status=CouponStatus.REDEEMED)),
        unused=Count("id", filter=Q(status=CouponStatus.AVAILABLE)),
        expired=Count("id", filter=Q(status=CouponStatus.EXPIRED)),
        revoked=Count("id", filter=Q(status=CouponStatus.REVOKED)),
    )
    revenue = (
        Redemption.objects.filter(coupon__in=coupons, rolled_back_at__isnull=True).aggregate(total=Sum("order_amount"))[
            "total"
        ]
        or ZERO
    )
    roi = None if not spent else round(float((revenue - spent) / spent), 4)
    by_tier = list(
        # The holder's tier now; bearer codes and profiles without a value row show as null.
        coupons.values(tier=F("profile__value__tier__slug"))
        .annotate(issued=Count("id"), redeemed=Count("id", filter=Q(status=CouponStatus.REDEEMED)))
        .order_by("tier")
    )
    for row in by_tier:
        row["redemption_rate"] = round(row["redeemed"] / row["issued"], 4) if row["issued"] else None
    return Report(
        issued=counts["issued"],
        redeemed=counts["redeemed"],
        unused=counts["unused"],
        expired=counts["expired"],
        revoked=counts["revoked"],
        budget=budget,
        committed=committed,
        spent=spent,
        remaining=None if budget is None else budget - committed - spent,
        order_revenue=revenue,
        roi=roi,
        redemption_rate=round(counts["redeemed"] / counts["issued"], 4) if counts["issued"] else None,
        by_tier=by_tier,
    )


def rule_report(*, rule: CouponRule) -> Report:
    """The numbers of one rule. Counters come from the rule row (what the budget check uses)."""
    rule.refresh_from_db(fields=["budget", "committed", "spent"])
    return _report(Coupon.objects.filter(rule=rule), budget=rule.budget, committed=rule.committed, spent=rule.spent)


def campaign_report(*, source_ref_prefix: str) -> Report:
    """The numbers of every coupon whose `source_ref` starts with the prefix (`campaign:12:`)."""
    coupons = Coupon.objects.filter(source_ref__startswith=source_ref_prefix)
    committed = coupons.filter(status=CouponStatus.AVAILABLE).aggregate(s=Sum("reserved"))["s"] or ZERO
    spent = (
        Redemption.objects.filter(coupon__in=coupons, rolled_back_at__isnull=True).aggregate(s=Sum("discount"))["s"]
        or ZERO
    )
    return _report(coupons, budget=None, committed=committed, spent=spent)


def daily_activity(
    *, rule: CouponRule | None = None, source_ref_prefix: str | None = None, days: int = 60
) -> list[dict[str, Any]]:
    """Coupons issued and redeemed per day over the last `days` days (of a rule or of a
    source_ref prefix), for the admin chart."""
    since = timezone.now() - timezone.timedelta(days=days)
    coupons = Coupon.objects.all()
    redemptions = Redemption.objects.all()
    if rule is not None:
        coupons, redemptions = coupons.filter(rule=rule), redemptions.filter(rule=rule)
    if source_ref_prefix is not None:
        coupons = coupons.filter(source_ref__startswith=source_ref_prefix)
        redemptions = redemptions.filter(coupon__source_ref__startswith=source_ref_prefix)
    issued = dict(
        coupons.filter(issued_at__gte=since)
        .annotate(day=TruncDate("issued_at"))
        .values("day")
        .annotate(n=Count("id"))
        .values_list("day", "n")
    )
    redeemed = dict(
        redemptions.filter(redeemed_at__gte=since, rolled_back_at__isnull=True)
        .annotate(day=TruncDate("redeemed_at"))
        .values("day")
        .annotate(n=Count("id"))
        .values_list("day", "n")
    )
    days_seen: list[date] = sorted(set(issued) | set(redeemed))
    return [{"day": d.isoformat(), "issued": issued.get(d, 0), "redeemed": redeemed.get(d, 0)} for d in days_seen]


@dataclass(frozen=True)
class Ledger:
    issued: int
    redeemed: int
    committed: Decimal
    spent: Decimal


def ledger_from_rows(*, rule: CouponRule) -> Ledger:
    """The rule's counters re-derived from its coupons and redemptions (they must agree)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT (SELECT COUNT(*) FROM coupons_coupon WHERE rule_id = %(id)s),
                   (SELECT COUNT(*) FROM coupons_redemption WHERE rule_id = %(id)s AND rolled_back_at IS NULL),
                   (SELECT COALESCE(SUM(reserved), 0) FROM coupons_coupon
                     WHERE rule_id = %(id)s AND status = 'available'),
                   (SELECT COALESCE(SUM(discount), 0) FROM coupons_redemption
                     WHERE rule_id = %(id)s AND rolled_back_at IS NULL)
            """,
            {"id": rule.pk},
        )
        issued, redeemed, committed, spent = cursor.fetchone()
    return Ledger(issued=issued, redeemed=redeemed, committed=committed, spent=spent)


def unfinished_issuance_job_ids() -> list[int]:
    """Jobs a crashed worker may have left part done (their targets say where they stopped)."""
    unfinished = [IssuanceJob.Status.PENDING, IssuanceJob.Status.RUNNING]
    return list(IssuanceJob.objects.filter(status__in=unfinished).order_by("pk").values_list("pk", flat=True))


def batch_code_rows(*, batch: CodeBatch, chunk_size: int = 10_000) -> Iterator[tuple]:
    """A batch's codes, streamed from a server-side cursor (a million rows never sit in memory)."""
    return (
        Coupon.objects.filter(batch=batch)
        .order_by("id")
        .values_list("code", "starts_at", "expires_at")
        .iterator(chunk_size=chunk_size)
    )


def lookup_section(profile: Profile) -> dict[str, Any]:
    """The coupons part of the customer-service 360 view of a person."""
    now = timezone.now()
    recent = list(coupons_for_profile(profile=profile)[:20])
    counts = Coupon.objects.filter(profile_id__in=profile_ids_of(profile)).aggregate(
        available=Count(
            "id",
            filter=Q(status=CouponStatus.AVAILABLE) & (Q(expires_at__isnull=True) | Q(expires_at__gt=now)),
        ),
        redeemed=Count("id", filter=Q(status=CouponStatus.REDEEMED)),
        total=Count("id"),
    )
    return {
        **counts,
        "recent": [
            {
                "code": c.display_code,
                "rule": c.rule.name,
                "rule_id": c.rule_id,
                "status": shown_status(c, now),
                "issued_at": c.issued_at.isoformat(),
                "expires_at": c.expires_at.isoformat() if c.expires_at else None,
                "source": c.source,
            }
            for c in recent
        ],
    }
