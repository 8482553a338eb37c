"""Reads of the coupons app: a user's coupons, reports per rule and per campaign, the ledger."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import Count, F, Max, Min, Q, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone
from django.utils.translation import gettext, ngettext

from config.formatting import day_ahead
from coupons.incremental import rule_incremental
from coupons.models import (
    ZERO,
    CodeBatch,
    Coupon,
    CouponRule,
    CouponStatus,
    IssuanceJob,
    OrderRefund,
    Redemption,
    UpliftModel,
)
from profiles.models import IdentityKind, Profile
from profiles.selectors import event_keys_of, event_owner, user_id_owners
from tracking.events_store import events_store

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


# What an order that used a coupon brought in: its amount less what was refunded of it since.
# Every redemption of a stacked order carries the whole order's amount, so revenue is counted
# once per order (`_order_revenue`), never summed over redemption rows.
_REVENUE = F("order_amount") - F("refunded_amount")


def _order_revenue(redemptions: QuerySet[Redemption]) -> Decimal:
    """The revenue of the orders among `redemptions`, each order once."""
    per_order = redemptions.order_by().values("order_id").annotate(revenue=Max(_REVENUE))
    return per_order.aggregate(total=Sum("revenue"))["total"] or ZERO


def paced_allowance(*, rule: CouponRule, now: datetime) -> Decimal | None:
    """How much of the rule's budget its pacing allows by the end of `now`'s day (the claim
    rule's `coupons_paced_share`, migration 0009); None without a budget."""
    if rule.budget is None:
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT %s * coupons_paced_share(%s, %s, %s, %s)",
            [rule.budget, rule.pacing, rule.valid_from, rule.valid_until, now],
        )
        return Decimal(cursor.fetchone()[0]).quantize(Decimal("0.01"))


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
    # What the coupon added against campaign holdouts (`coupons.incremental`); rule reports only.
    incremental: dict[str, Any] | None = None
    # The rule's last uplift fit and its out-of-fold evidence (`coupons.uplift`); rule reports only.
    uplift: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _assemble(
    *,
    counts: dict[str, int],
    budget: Decimal | None,
    committed: Decimal,
    spent: Decimal,
    revenue: Decimal,
    by_tier: list[dict[str, Any]],
) -> Report:
    """The report's derived numbers (remaining, ROI, rates): one definition for every report."""
    roi = None if not spent else round(float((revenue - spent) / spent), 4)
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


_COUNTS = {
    "issued": Count("id"),
    "redeemed": Count("id", filter=Q(status=CouponStatus.REDEEMED)),
    "unused": Count("id", filter=Q(status=CouponStatus.AVAILABLE)),
    "expired": Count("id", filter=Q(status=CouponStatus.EXPIRED)),
    "revoked": Count("id", filter=Q(status=CouponStatus.REVOKED)),
}
_NO_COUPONS = dict.fromkeys(_COUNTS, 0)


def _report(coupons: QuerySet[Coupon], *, budget: Decimal | None, committed: Decimal, spent: Decimal) -> Report:
    counts = coupons.aggregate(**_COUNTS)
    revenue = _order_revenue(Redemption.objects.filter(coupon__in=coupons, rolled_back_at__isnull=True))
    by_tier = list(
        # The holder's tier now; bearer codes and profiles without a value row show as null.
        coupons.values(tier=F("profile__value__tier__slug"))
        .annotate(issued=Count("id"), redeemed=Count("id", filter=Q(status=CouponStatus.REDEEMED)))
        .order_by("tier")
    )
    return _assemble(counts=counts, budget=budget, committed=committed, spent=spent, revenue=revenue, by_tier=by_tier)


def rule_reports(*, rules: list[CouponRule]) -> dict[int, Report]:
    """The report of each rule, in four queries whatever the number of rules (the ROI overview
    lists every rule). Counters come from the rule rows (what the budget check uses)."""
    ids = [rule.pk for rule in rules]
    money = {
        row[0]: row[1:]
        for row in CouponRule.objects.filter(pk__in=ids).values_list("pk", "budget", "committed", "spent")
    }
    coupons = Coupon.objects.filter(rule_id__in=ids)
    counts = {row.pop("rule_id"): row for row in coupons.values("rule_id").annotate(**_COUNTS).order_by()}
    revenue = dict(
        Redemption.objects.filter(rule_id__in=ids, rolled_back_at__isnull=True)
        .values("rule_id")
        .annotate(total=Sum(_REVENUE))
        .order_by()
        .values_list("rule_id", "total")
    )
    tiers: dict[int, list[dict[str, Any]]] = {pk: [] for pk in ids}
    for row in (
        coupons.values("rule_id", tier=F("profile__value__tier__slug"))
        .annotate(issued=Count("id"), redeemed=Count("id", filter=Q(status=CouponStatus.REDEEMED)))
        .order_by("rule_id", "tier")
    ):
        tiers[row.pop("rule_id")].append(row)
    return {
        pk: _assemble(
            counts=counts.get(pk, _NO_COUPONS),
            budget=budget,
            committed=committed,
            spent=spent,
            revenue=revenue.get(pk) or ZERO,
            by_tier=tiers[pk],
        )
        for pk, (budget, committed, spent) in money.items()
    }


def rule_report(*, rule: CouponRule) -> Report:
    """The numbers of one rule. Counters come from the rule row (what the budget check uses)."""
    report = rule_reports(rules=[rule])[rule.pk]
    rule.budget, rule.committed, rule.spent = report.budget, report.committed, report.spent
    return replace(report, incremental=rule_incremental(rule_id=rule.pk), uplift=uplift_summary(rule=rule))


def uplift_summary(*, rule: CouponRule) -> dict[str, Any] | None:
    """The rule's last uplift fit as the report shows it; None when it was never fitted."""
    fitted = UpliftModel.objects.filter(rule_id=rule.pk).first()
    if fitted is None:
        return None
    evidence = fitted.evidence or {}
    return {
        "status": fitted.status,
        "error": fitted.error,
        "fitted_at": fitted.fitted_at,
        "trained_on": fitted.trained_on,
        "scored": fitted.scored,
        "qini": evidence.get("qini", []),
        "qini_coefficient": evidence.get("qini_coefficient"),
        "deciles": evidence.get("deciles", []),
    }


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
    """Coupons issued and redeemed per day over the last `days` days up to today (of a rule or of
    a source_ref prefix), for the admin chart. Days are the reader's (the time zone the request
    activated), and every day is listed, a quiet one with 0, so the chart's axis is time."""
    today = timezone.localdate()
    first = today - timedelta(days=days - 1)
    since = timezone.make_aware(datetime.combine(first, time.min))
    coupons = Coupon.objects.all()
    redemptions = Redemption.objects.all()
    if rule is not None:
        coupons, redemptions = coupons.filter(rule=rule), redemptions.filter(rule=rule)
    if source_ref_prefix is not None:
        coupons = coupons.filter(source_ref__startswith=source_ref_prefix)
        redemptions = redemptions.filter(coupon__source_ref__startswith=source_ref_prefix)
    # TruncDate without a zone truncates in the current time zone, the same one `today` is in.
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
    every_day = [first + timedelta(days=i) for i in range(days)]
    return [{"day": d, "issued": issued.get(d, 0), "redeemed": redeemed.get(d, 0)} for d in every_day]


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
    """Jobs a crashed worker may have left part done (their targets say where they stopped).
    Failed jobs are left out: resuming them every 15 minutes would fail again the same way."""
    unfinished = [IssuanceJob.Status.PENDING, IssuanceJob.Status.RUNNING]
    return list(IssuanceJob.objects.filter(status__in=unfinished).order_by("pk").values_list("pk", flat=True))


# A refund's task is queued when its ingestion commits and runs within seconds; one still pending
# after this lost its task (broker down, worker killed) and the sweep applies it.
REFUND_TASK_GRACE = timedelta(minutes=1)
# A failed refund is tried again 1, 2, 4 ... minutes after its last failure, at most this far apart,
# so a cause that was mended (a lock released, a row repaired) heals by itself.
REFUND_RETRY_MAX_MINUTES = 60
# After this many attempts (about four hours of back-off) the sweep stops: a cause that has not
# passed by then needs a person, and the refund stays failed, on the health page, for their retry.
REFUND_AUTO_ATTEMPTS = 10

# What makes a refund due for the sweep: one definition, for the sweep's list and for the check
# each refund gets again under its row lock.
_DUE = """
    (status = 'pending' AND created_at <= %(pending_before)s)
    OR (status = 'failed' AND attempts < %(max_attempts)s
        AND failed_at + make_interval(
                mins => LEAST(%(max_minutes)s, power(2, LEAST(GREATEST(attempts, 1), 16) - 1))::int
            ) <= %(now)s)
"""
_REFUNDS_DUE = f"SELECT id FROM coupons_orderrefund WHERE {_DUE} ORDER BY id LIMIT %(limit)s"
_REFUND_DUE = f"SELECT EXISTS (SELECT 1 FROM coupons_orderrefund WHERE id = %(id)s AND ({_DUE}))"


def _due_params(now: datetime) -> dict[str, Any]:
    return {
        "pending_before": now - REFUND_TASK_GRACE,
        "now": now,
        "max_minutes": REFUND_RETRY_MAX_MINUTES,
        "max_attempts": REFUND_AUTO_ATTEMPTS,
    }


def refunds_due(*, now: datetime, limit: int = 500) -> list[int]:
    """Refunds the sweep applies now, oldest first: pending ones whose task was lost, and failed
    ones whose back-off has passed (1, 2, 4 ... minutes after their last failure, by attempts),
    fewer than `REFUND_AUTO_ATTEMPTS` times tried."""
    with connection.cursor() as cursor:
        cursor.execute(_REFUNDS_DUE, {**_due_params(now), "limit": limit})
        return [row[0] for row in cursor.fetchall()]


def refund_due(*, refund_id: int, now: datetime) -> bool:
    """`refunds_due`'s test for one refund, read again under its row lock: a sweep that took its
    list before another sweep retried the refund leaves it to its back-off."""
    with connection.cursor() as cursor:
        cursor.execute(_REFUND_DUE, {**_due_params(now), "id": refund_id})
        return bool(cursor.fetchone()[0])


def order_refunds(*, status: str | None = None, order_id: str | None = None) -> QuerySet[OrderRefund]:
    """Refunds of coupon orders, newest first, optionally of one state or one order."""
    queryset = OrderRefund.objects.order_by("-id")
    if status:
        queryset = queryset.filter(status=status)
    if order_id:
        queryset = queryset.filter(order_id=order_id)
    return queryset


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


def lookup_summary_part(profile: Profile) -> str:
    """The lookup summary's coupon part: "1 unused coupon expiring Friday", "no unused coupons"."""
    now = timezone.now()
    unused = Coupon.objects.filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=now),
        profile_id__in=profile_ids_of(profile),
        status=CouponStatus.AVAILABLE,
    ).aggregate(n=Count("id"), first_end=Min("expires_at"))
    n = unused["n"]
    if not n:
        return gettext("no unused coupons")
    phrase = ngettext("%(n)d unused coupon", "%(n)d unused coupons", n) % {"n": n}
    if unused["first_end"] is None:
        return phrase
    words = {"coupons": phrase, "day": day_ahead(unused["first_end"])}
    if n == 1:
        return gettext("%(coupons)s expiring %(day)s") % words
    return gettext("%(coupons)s, the first expiring %(day)s") % words


# --- ROI overview, channel quality and the coupon indicators --------------------------------------


def roi_overview(*, rules: list[CouponRule] | None = None) -> list[tuple[CouponRule, Report]]:
    """Every rule (newest first) with its report: the same numbers as each rule's report page."""
    rules = list(CouponRule.objects.order_by("-id")) if rules is None else rules
    reports = rule_reports(rules=rules)
    return [(rule, reports[rule.pk]) for rule in rules]


def _utc_bounds(start: date, end: date) -> tuple[datetime, datetime]:
    return datetime.combine(start, time.min, tzinfo=UTC), datetime.combine(
        end + timedelta(days=1), time.min, tzinfo=UTC
    )


def _per_day(queryset: QuerySet, field: str, value: Any) -> dict[date, Decimal]:
    rows = queryset.annotate(day=TruncDate(field, tzinfo=UTC)).order_by().values("day").annotate(v=value)
    return {row["day"]: Decimal(row["v"] or 0) for row in rows}


def daily_coupon_spend(start: date, end: date) -> dict[date, Decimal]:
    """Discounts given per day (UTC) by redemptions still standing (a rolled-back one gave nothing)."""
    since, until = _utc_bounds(start, end)
    live = Redemption.objects.filter(redeemed_at__gte=since, redeemed_at__lt=until, rolled_back_at__isnull=True)
    return _per_day(live, "redeemed_at", Sum("discount"))


def daily_coupons_redeemed(start: date, end: date) -> dict[date, Decimal]:
    """Redemptions per day (UTC) still standing."""
    since, until = _utc_bounds(start, end)
    live = Redemption.objects.filter(redeemed_at__gte=since, redeemed_at__lt=until, rolled_back_at__isnull=True)
    return _per_day(live, "redeemed_at", Count("id"))


def daily_coupons_issued(start: date, end: date) -> dict[date, Decimal]:
    """Coupons issued per day (UTC), partner codes included."""
    since, until = _utc_bounds(start, end)
    return _per_day(Coupon.objects.filter(issued_at__gte=since, issued_at__lt=until), "issued_at", Count("id"))


def daily_coupon_order_revenue(start: date, end: date) -> dict[date, Decimal]:
    """Order amounts per day (UTC) of orders that used a coupon (redemptions still standing)."""
    since, until = _utc_bounds(start, end)
    live = Redemption.objects.filter(rolled_back_at__isnull=True, redeemed_at__lt=until)
    # Each order once, on the day of its first redemption.
    per_order = (
        live.order_by()
        .values("order_id")
        .annotate(first=Min("redeemed_at"), revenue=Max(_REVENUE))
        .filter(first__gte=since, first__lt=until)
    )
    days: dict[date, Decimal] = {}
    for row in per_order:
        day = row["first"].astimezone(UTC).date()
        days[day] = days.get(day, ZERO) + row["revenue"]
    return days


DIRECT = "(direct)"

# Channel quality, per first-touch `utm_source` of the people who joined in a window (UTC days):
# - the cohort: live profiles (not merged away) whose join, the earlier of first seen and signup,
#   is in the window;
# - first touch: the source of a person's earliest event from the window's start up to their
#   first seen (by time, then id); none is "(direct)";
# - converted: an `order_paid` at or after their join; revenue sums those orders' amounts (each
#   rounded to cents, 0 where it is not a decimal string);
# - retained: an event on the UTC day of their join + 7, counted once that day is over;
# - coupon cost: the discounts of their standing redemptions, for the converted.
# An event is a person's through the identity mapping: its `user_id`'s profile, else its
# `anonymous_id`'s (`profiles.selectors.event_owner`, the rule of `profiles_profileevent`). The
# events come through the events store, so the report reads ClickHouse when it is on; people and
# coupons stay in PostgreSQL.
_CHANNEL_COHORT = """
SELECT p.id, LEAST(p.first_seen_at, p.signup_at), p.first_seen_at
FROM profiles_profile p
WHERE p.merged_into_id IS NULL
  AND LEAST(p.first_seen_at, p.signup_at) >= %(since)s AND LEAST(p.first_seen_at, p.signup_at) < %(until)s
"""
_CHANNEL_COUPON_COST = """
SELECT COALESCE(rp.merged_into_id, rp.id), sum(r.discount)
FROM coupons_redemption r JOIN profiles_profile rp ON rp.id = r.profile_id
WHERE r.rolled_back_at IS NULL AND COALESCE(rp.merged_into_id, rp.id) = ANY(%(profiles)s)
GROUP BY 1
"""


@dataclass(frozen=True)
class ChannelQuality:
    source: str
    new_users: int
    converted: int
    retention_base: int  # new users whose day 7 is complete
    retained: int
    coupon_cost: Decimal
    revenue: Decimal

    @property
    def conversion_rate(self) -> float | None:
        return round(self.converted / self.new_users, 4) if self.new_users else None

    @property
    def retention_d7(self) -> float | None:
        return round(self.retained / self.retention_base, 4) if self.retention_base else None

    @property
    def coupon_cost_per_converted(self) -> Decimal | None:
        return (self.coupon_cost / self.converted).quantize(Decimal("0.01")) if self.converted else None

    @property
    def revenue_per_new_user(self) -> Decimal | None:
        return (self.revenue / self.new_users).quantize(Decimal("0.01")) if self.new_users else None

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.__dict__,
            "conversion_rate": self.conversion_rate,
            "retention_d7": self.retention_d7,
            "coupon_cost_per_converted": self.coupon_cost_per_converted,
            "revenue_per_new_user": self.revenue_per_new_user,
        }


def channel_quality(*, start: date, end: date, today: date | None = None) -> list[ChannelQuality]:
    """Per first-touch `utm_source`, the quality of the people who joined from `start` to `end`
    (inclusive, UTC days): see the notes above `_CHANNEL_COHORT` for each number's definition."""
    today = today or timezone.now().astimezone(UTC).date()
    since, until = _utc_bounds(start, end)
    with connection.cursor() as cursor:
        cursor.execute(_CHANNEL_COHORT, {"since": since, "until": until})
        cohort = {profile: (joined, first_seen) for profile, joined, first_seen in cursor.fetchall()}
        if not cohort:
            return []
    owners = event_keys_of(list(cohort))
    seen = [first_seen for _joined, first_seen in cohort.values() if first_seen is not None]
    pairs = events_store().key_activity(
        user_ids=[value for kind, value in owners if kind == IdentityKind.USER_ID],
        anonymous_ids=[value for kind, value in owners if kind == IdentityKind.ANONYMOUS_ID],
        since=since,
        first_until=max(seen) if seen else None,
        days_from=since + timedelta(days=7),
        days_until=until + timedelta(days=8),
    )
    # A user id no cohort member holds may be someone else's: then so is its event.
    owners |= user_id_owners(
        p.user_id for p in pairs if p.user_id is not None and (IdentityKind.USER_ID, p.user_id) not in owners
    )

    first: dict[int, tuple[datetime, int, str]] = {}
    revenue: dict[int, Decimal] = {}
    days: dict[int, set[date]] = {}
    for pair in pairs:
        profile = event_owner(owners, user_id=pair.user_id, anonymous_id=pair.anonymous_id)
        if profile not in cohort:
            continue
        joined, first_seen = cohort[profile]
        if pair.first is not None and first_seen is not None and pair.first[0] <= first_seen:
            first[profile] = min(first.get(profile, pair.first), pair.first)
        orders = [amount for at, _id, amount in pair.orders if at >= joined]
        if orders:
            revenue[profile] = revenue.get(profile, Decimal(0)) + sum(orders, Decimal(0))
        days.setdefault(profile, set()).update(pair.days)

    cost: dict[int, Decimal] = {}
    if revenue:
        with connection.cursor() as cursor:
            cursor.execute(_CHANNEL_COUPON_COST, {"profiles": list(revenue)})
            cost = dict(cursor.fetchall())

    rows: dict[str, dict[str, Any]] = {}
    for profile, (joined, _first_seen) in cohort.items():
        touch = first.get(profile)
        source = (touch[2] if touch else "") or DIRECT
        row = rows.setdefault(source, {"new": 0, "converted": 0, "base": 0, "retained": 0, "cost": 0, "revenue": 0})
        row["new"] += 1
        if profile in revenue:
            row["converted"] += 1
            row["revenue"] += revenue[profile]
            row["cost"] += cost.get(profile, 0)
        day7 = joined.astimezone(UTC).date() + timedelta(days=7)
        if day7 < today:
            row["base"] += 1
            row["retained"] += day7 in days.get(profile, ())
    cents = Decimal("0.01")
    return sorted(
        (
            ChannelQuality(
                source=source,
                new_users=row["new"],
                converted=row["converted"],
                retention_base=row["base"],
                retained=row["retained"],
                coupon_cost=Decimal(row["cost"]).quantize(cents),
                revenue=Decimal(row["revenue"]).quantize(cents),
            )
            for source, row in rows.items()
        ),
        key=lambda r: (-r.new_users, r.source),
    )
