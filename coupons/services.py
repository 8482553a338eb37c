"""Writes of the coupons app: one function per business action, each in one transaction.

Money moves only through the conditional UPDATEs on the rule row below (`_reserve`, `_spend`,
`_unspend`, `_release`), each of which the database refuses (CHECK `couponrule_within_budget`)
if it would take `committed + spent` over the budget. A refused request raises before or
instead of those statements, so no money moves on a refusal.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import numpy as np
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone
from django.utils.translation import gettext

from access.services import record_audit
from config.celery import publish
from config.errors import DomainError
from config.failures import log_failure
from coupons import codes, errors, selectors, stacking
from coupons.audiences import segment_resolver
from coupons.models import (
    ZERO,
    AbuseScore,
    CodeBatch,
    Coupon,
    CouponRule,
    CouponStatus,
    IssuanceJob,
    IssuanceTarget,
    OrderRefund,
    Redemption,
    RuleKind,
    RuleState,
    UpliftModel,
    UpliftScore,
)
from crm.models import CustomerValue
from predictions.selectors import predicted_tier_slug
from profiles.models import Identity, IdentityKind, Profile, ProfileEvent, ProfileTag
from profiles.selectors import profile_for_user_id
from profiles.services import ensure_profile

logger = logging.getLogger(__name__)
CENT = Decimal("0.01")
ORDER_PAID = "order_paid"
MAX_ORDER_AMOUNT = Decimal("100000000.00")
MAX_MERGE_DEPTH = 8


# --- rules -----------------------------------------------------------------------------------


RULE_FIELDS = (
    "name",
    "description",
    "kind",
    "value",
    "min_spend",
    "max_discount",
    "valid_from",
    "valid_until",
    "valid_days",
    "total_quantity",
    "budget",
    "per_user_limit",
    "eligible_tiers",
    "eligible_tags",
    "first_order_only",
    "state",
    "priority",
    "stacking",
    "stack_group",
    "floor_percent",
    "pacing",
    "abuse_threshold",
)


@transaction.atomic
def create_rule(*, created_by: AbstractBaseUser | None = None, api_key: Any = None, **fields: Any) -> CouponRule:
    """Create a rule (active unless `state="draft"`); invalid fields raise ValidationError (400)."""
    unknown = set(fields) - set(RULE_FIELDS)
    if unknown:
        raise TypeError(f"unknown rule fields: {sorted(unknown)}")
    # An explicit null threshold admits everyone; any other null means the field's default.
    fields = {k: v for k, v in fields.items() if v is not None or k == "abuse_threshold"}
    fields["state"] = fields.get("state") or RuleState.ACTIVE
    if fields["state"] not in (RuleState.DRAFT, RuleState.ACTIVE):
        raise ValidationError({"state": gettext("A new rule is either draft or active.")})
    rule = CouponRule(created_by=created_by if getattr(created_by, "is_authenticated", False) else None, **fields)
    rule.full_clean()
    rule.save()
    record_audit(
        actor=created_by,
        api_key=api_key,
        action="coupons.coupon_rule_created",
        obj=rule,
        details={"kind": rule.kind, "value": str(rule.value), "budget": str(rule.budget), "state": rule.state},
    )
    return rule


_TRANSITIONS = {
    RuleState.ACTIVE: {RuleState.DRAFT, RuleState.PAUSED},
    RuleState.PAUSED: {RuleState.ACTIVE},
    RuleState.ENDED: {RuleState.DRAFT, RuleState.ACTIVE, RuleState.PAUSED},
}
# The audit action of each state a rule can be moved to.
_STATE_ACTIONS = {
    RuleState.ACTIVE: "coupons.coupon_rule_activated",
    RuleState.PAUSED: "coupons.coupon_rule_paused",
    RuleState.ENDED: "coupons.coupon_rule_ended",
}


@transaction.atomic
def change_rule_state(
    *, rule: CouponRule, state: str, actor: AbstractBaseUser | None = None, api_key: Any = None
) -> CouponRule:
    """Activate, pause or end a rule. Ending it expires its live coupons and releases their money."""
    locked = CouponRule.objects.select_for_update().get(pk=rule.pk)
    if locked.state == state:
        return locked
    if locked.state not in _TRANSITIONS.get(state, set()):
        raise errors.InvalidStateChange(
            gettext("A %(state)s rule cannot become %(new_state)s.") % {"state": locked.state, "new_state": state},
            state=locked.state,
        )
    previous = locked.state
    locked.state = state
    locked.save(update_fields=["state", "updated_at"])
    released = ZERO
    if state == RuleState.ENDED:
        released = _expire_where("rule_id = %s", [locked.pk], now=timezone.now())[1]
        locked.refresh_from_db()
    record_audit(
        actor=actor,
        api_key=api_key,
        action=_STATE_ACTIONS[state],
        obj=locked,
        details={"from": previous, "to": state, "released": str(released)},
    )
    return locked


@transaction.atomic
def update_rule_budget(
    *, rule: CouponRule, budget: Decimal | None, actor: AbstractBaseUser | None = None
) -> CouponRule:
    """Change a rule's budget; never below what is already committed and spent."""
    locked = CouponRule.objects.select_for_update().get(pk=rule.pk)
    previous = locked.budget
    locked.budget = budget
    locked.full_clean()
    locked.save(update_fields=["budget", "updated_at"])
    record_audit(
        actor=actor,
        action="coupons.coupon_rule_budget_changed",
        obj=locked,
        details={"from": str(previous), "to": str(budget)},
    )
    return locked


# --- eligibility and pricing -------------------------------------------------------------------


def eligibility_refusal(*, rule: CouponRule, profile: Profile | None) -> errors.CouponError | None:
    """Why `profile` may not hold a coupon of `rule` (tier, tag, first order), or None."""
    if rule.eligible_tiers:
        # The slugs may name RFM tiers (crm) and predicted-value tiers (predictions) alike.
        tier = predicted = None
        if profile is not None:
            tier = CustomerValue.objects.filter(profile_id=profile.pk).values_list("tier__slug", flat=True).first()
            predicted = predicted_tier_slug(profile.pk)
        if tier not in rule.eligible_tiers and predicted not in rule.eligible_tiers:
            shown = f"tier '{tier}'" if tier else "no value tier"
            if predicted:
                shown += f" and predicted tier '{predicted}'"
            return errors.TierNotEligible(
                f"The user has {shown}; this offer is for tiers {', '.join(rule.eligible_tiers)}.",
                user_tier=tier,
                user_predicted_tier=predicted,
                eligible_tiers=list(rule.eligible_tiers),
            )
    if rule.eligible_tags:
        has_tag = (
            profile is not None
            and ProfileTag.objects.filter(profile_id=profile.pk, tag__name__in=rule.eligible_tags).exists()
        )
        if not has_tag:
            return errors.TagNotEligible(
                f"The user carries none of the tags {', '.join(rule.eligible_tags)}.",
                eligible_tags=list(rule.eligible_tags),
            )
    if rule.first_order_only and profile is not None and has_ordered(profile=profile):
        return errors.NotFirstOrder("This offer is for a first order only, and the user has ordered before.")
    return abuse_refusal(rule=rule, profile=profile)


def has_ordered(*, profile: Profile, except_order_id: str | None = None) -> bool:
    """A paid order on record, or a coupon already redeemed by another order (whose payment
    event may not have arrived yet)."""
    if ProfileEvent.objects.filter(profile_id=profile.pk, name=ORDER_PAID).exists():
        return True
    redeemed = Redemption.objects.filter(profile_id=profile.pk, rolled_back_at__isnull=True)
    if except_order_id is not None:
        redeemed = redeemed.exclude(order_id=except_order_id)
    return redeemed.exists()


def discount_for(*, rule: CouponRule, order_amount: Decimal) -> Decimal:
    """What the rule takes off an order of `order_amount` (never more than the order)."""
    if rule.kind == RuleKind.PERCENT:
        discount = (order_amount * rule.value / 100).quantize(CENT, rounding=ROUND_HALF_UP)
        if rule.max_discount is not None:
            discount = min(discount, rule.max_discount)
    else:
        discount = rule.value
    return min(discount, order_amount)


def _as_stored(model, **values):
    """An instance of the row a statement just wrote, as the ORM would have read it back.
    `from_db` takes the values in the model's field order, whatever order they are named in here."""
    fields = [f.attname for f in model._meta.concrete_fields if f.attname in values]
    if unknown := set(values) - set(fields):
        raise TypeError(f"{model.__name__} has no columns {sorted(unknown)}")
    return model.from_db(connection.alias, fields, [values[name] for name in fields])


def coupon_discount(*, coupon: Coupon, order_amount: Decimal) -> Decimal:
    """What `coupon` takes off an order: its rule's discount, but under a budget never more than
    the coupon reserved when it was issued. An operator who later raises the rule's value changes
    the offer of new coupons only; the live ones keep the cost the budget was charged for."""
    discount = discount_for(rule=coupon.rule, order_amount=order_amount)
    if coupon.rule.budget is not None:
        discount = min(discount, coupon.reserved)
    if coupon.rule.floor_percent:
        # One code is the smallest combination: it keeps the rule's floor too.
        discount = min(
            discount, max(order_amount - stacking.floor_amount(order_amount, coupon.rule.floor_percent), ZERO)
        )
    return discount


def _check_amount(order_amount: Decimal) -> Decimal:
    if not isinstance(order_amount, Decimal) or not order_amount.is_finite():
        raise errors.InvalidAmount("The order amount must be a decimal number.")
    if order_amount <= 0 or order_amount > MAX_ORDER_AMOUNT:
        raise errors.InvalidAmount(f"The order amount must be above 0 and at most {MAX_ORDER_AMOUNT}.")
    return order_amount.quantize(CENT)


def _usage_refusal(
    *, coupon: Coupon, profile: Profile | None, order_amount: Decimal, order_id: str | None, now: datetime
) -> errors.CouponError | None:
    """Why `coupon` cannot serve this order now, or None. Same checks for validate and redeem."""
    rule = coupon.rule
    if coupon.profile_id is not None and not _is_holder(coupon=coupon, profile=profile):
        return errors.CouponNotYours("This code belongs to another user.")
    if coupon.status == CouponStatus.REDEEMED:
        return errors.CouponAlreadyUsed("This code was already used by another order.")
    if coupon.status == CouponStatus.EXPIRED or (coupon.expires_at is not None and coupon.expires_at <= now):
        return errors.CouponExpired("This code has expired.", expires_at=_iso(coupon.expires_at))
    if coupon.status == CouponStatus.REVOKED:
        return errors.CouponRevoked("This code was revoked.")
    if rule.state != RuleState.ACTIVE:
        return errors.RuleNotActive(f"The offer is {rule.state}.", state=rule.state)
    if coupon.starts_at > now:
        return errors.CouponNotYetValid("This code is not valid yet.", starts_at=_iso(coupon.starts_at))
    if rule.min_spend and order_amount < rule.min_spend:
        return errors.MinSpendNotMet(f"The order must be at least {rule.min_spend}.", min_spend=str(rule.min_spend))
    flagged = getattr(coupon, "caller_flagged", None)
    if coupon.profile_id is not None and (refusal := abuse_refusal(rule=rule, profile=profile, flagged=flagged)):
        return refusal  # (a bearer code's holder is judged with its eligibility below)
    if coupon.profile_id is None:
        # A bearer code was never checked against its user at issue: check now.
        if refusal := eligibility_refusal(rule=rule, profile=profile):
            return refusal
    elif rule.first_order_only and profile is not None and has_ordered(profile=profile, except_order_id=order_id):
        return errors.NotFirstOrder("This offer is for a first order only, and the user has ordered since.")
    return None


def _is_holder(*, coupon: Coupon, profile: Profile | None) -> bool:
    """The coupon's holder is this person, also when the holder's profile was merged into theirs
    since (an identify that joined two accounts keeps their coupons usable)."""
    if profile is None:
        return False
    current = coupon.profile_id
    for _ in range(MAX_MERGE_DEPTH):
        if current == profile.pk:
            return True
        current = Profile.objects.filter(pk=current).values_list("merged_into_id", flat=True).first()
        if current is None:
            return False
    return False


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


# --- issue and claim ---------------------------------------------------------------------------

# The reserve is the database's `coupons_reserve` (migration 0005), the one statement of the rule:
# n coupons' worth of quantity and budget, or nothing. Its row lock serialises claimers; it also
# answers what one coupon reserved and the validity of the coupons it covers.
_RESERVE_SQL = "SELECT reserved, starts_at, expires_at FROM coupons_reserve(%(rule_id)s, %(n)s, %(now)s)"
# Whether rules could issue n more coupons now, judged by the reserve's own condition (a campaign's
# bandit gives no newcomers to a variant whose offer cannot pay for their coupon).
_ABLE_TO_ISSUE_SQL = """
SELECT r.id FROM coupons_couponrule r
WHERE r.id = ANY(%(rule_ids)s)
  AND coupons_can_issue(r.state, r.valid_from, r.valid_until, r.total_quantity, r.issued_count, r.budget,
                        r.committed, r.spent, r.kind, r.value, r.max_discount, %(n)s, %(now)s, r.pacing)
"""


def rules_able_to_issue(*, rule_ids: Iterable[int], now: datetime, n: int = 1) -> set[int]:
    """Which of these rules could issue `n` more coupons now (as the reservation would judge)."""
    with connection.cursor() as cursor:
        cursor.execute(_ABLE_TO_ISSUE_SQL, {"rule_ids": list(rule_ids), "now": now, "n": n})
        return {row[0] for row in cursor.fetchall()}


def existing_rule_ids(*, rule_ids: Iterable[int]) -> list[int]:
    return list(CouponRule.objects.filter(pk__in=list(rule_ids)).values_list("pk", flat=True))


def _reserve(*, rule_id: int, n: int, now: datetime) -> tuple[Decimal, datetime, datetime | None]:
    """Reserve n coupons of the rule: (what each reserves, when they start, when they expire)."""
    with connection.cursor() as cursor:
        cursor.execute(_RESERVE_SQL, {"rule_id": rule_id, "n": n, "now": now})
        row = cursor.fetchone()
    if row is None:
        raise _why_not_reserved(rule_id=rule_id, n=n, now=now)
    return row


def _why_not_reserved(*, rule_id: int, n: int, now: datetime) -> errors.CouponError:
    rule = CouponRule.objects.get(pk=rule_id)
    if rule.state != RuleState.ACTIVE:
        return errors.RuleNotActive(f"The offer is {rule.state}.", state=rule.state)
    if rule.valid_from and rule.valid_from > now:
        return errors.RuleNotStarted("The offer has not started yet.", valid_from=_iso(rule.valid_from))
    if rule.valid_until and rule.valid_until <= now:
        return errors.RuleExpired("The offer has ended.", valid_until=_iso(rule.valid_until))
    if rule.total_quantity is not None and rule.issued_count + n > rule.total_quantity:
        return errors.QuantityExhausted(
            "All coupons of this offer have been issued.", total_quantity=rule.total_quantity
        )
    # A budget with no room left for n more coupons is exhausted, whatever today's share says:
    # PACED promises the offer goes on tomorrow, which only holds while the budget has room.
    if rule.budget is not None and rule.remaining < n * rule.reserve_per_coupon():
        return errors.BudgetExhausted("The offer's budget cannot cover another coupon.", remaining=str(rule.remaining))
    allowance = selectors.paced_allowance(rule=rule, now=now)
    if allowance is not None and rule.budget is not None and allowance < rule.budget:
        return errors.Paced(
            "Today's share of the offer's budget is taken; the offer goes on tomorrow.",
            allowance=str(allowance),
            pacing=rule.pacing,
        )
    return errors.BudgetExhausted("The offer's budget cannot cover another coupon.", remaining=str(rule.remaining))


def issue_coupon(
    *,
    rule: CouponRule,
    profile: Profile,
    request_id: str | None = None,
    source: str = "api",
    source_ref: str = "",
) -> Coupon:
    """Issue one coupon of `rule` to `profile`, or raise a `CouponError` saying why not.

    With a `request_id`, a replay returns the coupon of the first request (its `created` is
    False) instead of issuing another, even when both arrive at once. A profile merged away is
    judged (tiers, tags, first order) as its survivor, who receives the coupon."""
    if (survivor_id := _survivor_id(profile.pk)) != profile.pk:
        profile = Profile.objects.get(pk=survivor_id)
    try:
        if rule.state != RuleState.ACTIVE:
            raise errors.RuleNotActive(f"The offer is {rule.state}.", state=rule.state)
        if refusal := eligibility_refusal(rule=rule, profile=profile):
            raise refusal
    except errors.CouponError:
        # The first request may have been issued before the rule changed: a replay still gets it.
        if request_id and (existing := _replayed(rule_id=rule.pk, profile_id=profile.pk, request_id=request_id)):
            return existing
        raise
    claimed = _claim(
        rule_id=rule.pk,
        profile_id=profile.pk,
        user_id=None,
        request_id=request_id,
        source=source,
        source_ref=source_ref,
        conditions_checked=True,
    )
    assert isinstance(claimed, Coupon)  # a known profile, conditions judged: never an outcome
    claimed.rule = rule
    return claimed


def claim_coupon(*, rule_id: int, user_id: str, request_id: str | None = None) -> Coupon:
    """The product's claim: the user (created if we never saw them) takes one coupon of the rule.

    For a known user and a rule without conditions (tiers, tags, first order) this is one
    statement (see `_claim`); otherwise the rule and the profile are read and judged first."""
    claimed = _claim(
        rule_id=rule_id,
        profile_id=None,
        user_id=user_id,
        request_id=request_id,
        source="api",
        source_ref="",
        conditions_checked=False,
    )
    if isinstance(claimed, Coupon):
        return claimed
    rule = CouponRule.objects.filter(pk=rule_id).first()
    if rule is None:
        raise errors.RuleNotFound(f"No coupon rule {rule_id}.")
    profile = profile_for_user_id(user_id) or ensure_profile(user_id=user_id)
    return issue_coupon(rule=rule, profile=profile, request_id=request_id, source="api")


# A claim is one call of `coupons_claim` (migrations 0003, 0005): the checks that take no lock (a
# replayed request_id, the person's holding), the reserve (`coupons_reserve`, as above), the
# holding and the coupon, in one statement. Outside a transaction it commits at once, so the hot
# rule row stays locked from the reserve to the commit inside PostgreSQL only, never while a
# Python process waits for a core; that is what keeps many concurrent claims of one rule fast.
LOCK_NOT_AVAILABLE_SQLSTATE = "55P03"


def _money_lock_timeout() -> str | None:
    """The lock timeout a claim's or redemption's one statement sets for itself (`set_config(...,
    true)`: for its own transaction, which outside a caller's transaction is the statement), so a
    long job holding the rule or coupon makes the request answer 503 BUSY after
    OPSLOOP_MONEY_LOCK_TIMEOUT_MS instead of hanging, at no extra round trip. Inside a caller's
    transaction (bulk jobs) None: the statement keeps whatever that transaction set."""
    return None if connection.in_atomic_block else f"{settings.OPSLOOP_MONEY_LOCK_TIMEOUT_MS}ms"


@contextmanager
def _money_statement() -> Iterator[Any]:
    """A cursor for that one statement: inside a caller's transaction a savepoint, where a refused
    statement must not end the caller's transaction; outside one none, the statement is its own."""
    with transaction.atomic() if connection.in_atomic_block else nullcontext(), connection.cursor() as cursor:
        yield cursor


# The lock timeout is set first: the claim's arguments refer to its row (LATERAL), so the
# function, which locks the rule's row, runs after it.
_CLAIM_SQL = """
SELECT c.* FROM (SELECT set_config('lock_timeout', COALESCE(%s, current_setting('lock_timeout')), true) AS t) s
CROSS JOIN LATERAL coupons_claim(CASE WHEN s.t IS NOT NULL THEN %s::bigint END, %s, %s, %s, %s, %s, %s, %s, %s) c
"""
# Raised by `coupons_claim` when a parallel claim of the same person took the last slot.
PER_USER_LIMIT_SQLSTATE = "OLC01"
_NEEDS_PYTHON = ("NO_PROFILE", "CHECK_CONDITIONS")


def _claim(
    *,
    rule_id: int,
    profile_id: int | None,
    user_id: str | None,
    request_id: str | None,
    source: str,
    source_ref: str,
    conditions_checked: bool,
) -> Coupon | str:
    """Issue through `coupons_claim`; an outcome in `_NEEDS_PYTHON` is returned for the caller."""
    now = timezone.now()
    # 60 random bits: a collision with an existing code is vanishingly rare, and the unique
    # index turns it into an error rather than a shared code.
    code = codes.generate_code()
    request_id = request_id or None
    params = [
        _money_lock_timeout(),
        *(rule_id, profile_id, user_id, request_id, code, now, source, source_ref, conditions_checked),
    ]
    try:
        # Inside a caller's transaction (bulk jobs) a refused statement must not break it: a
        # savepoint. Outside one (the API) none: the statement is its own transaction.
        with _money_statement() as cursor:
            cursor.execute(_CLAIM_SQL, params)
            outcome, coupon_id, holder_id, reserved, starts_at, expires_at, rule_name, limit = cursor.fetchone()
    except IntegrityError:
        # The same request_id arrived twice at once and the other one took the index entry.
        if request_id and (existing := _replayed(rule_id=rule_id, profile_id=profile_id, request_id=request_id)):
            return existing
        raise
    except DatabaseError as exc:
        cause = exc.__cause__
        if getattr(cause, "sqlstate", None) == LOCK_NOT_AVAILABLE_SQLSTATE:
            raise errors.RuleBusy("The offer is busy; try again in a moment.") from exc
        if getattr(cause, "sqlstate", None) != PER_USER_LIMIT_SQLSTATE:
            raise
        if request_id and (existing := _replayed(rule_id=rule_id, profile_id=profile_id, request_id=request_id)):
            return existing
        limit = int(cause.diag.message_detail)
        outcome = "PER_USER_LIMIT_REACHED"
    if outcome == "ISSUED":
        coupon = _as_stored(
            Coupon,
            id=coupon_id,
            code=code,
            rule_id=rule_id,
            profile_id=holder_id,
            status=CouponStatus.AVAILABLE,
            reserved=reserved,
            issued_at=now,
            starts_at=starts_at,
            expires_at=expires_at,
            expired_at=None,
            source=source,
            source_ref=source_ref,
            request_id=request_id,
            batch_id=None,
        )
        # The rule as far as the statement read it; any other field loads when first used.
        coupon.rule = CouponRule.from_db(connection.alias, ["id", "name"], [rule_id, rule_name])
        coupon.created = True
        return coupon
    if outcome in _NEEDS_PYTHON:
        return outcome
    if outcome == "REPLAY":
        coupon = Coupon.objects.select_related("rule").get(pk=coupon_id)
        coupon.created = False
        return coupon
    if outcome == "ABUSE_SUSPECTED":
        raise errors.AbuseSuspected("This offer is not available to this account: it is held for review.")
    if outcome == "REQUEST_ID_REUSED":
        raise errors.RequestIdReused("This request_id was already used for another user.")
    if outcome == "NO_RULE":
        raise errors.RuleNotFound(f"No coupon rule {rule_id}.")
    if outcome == "PER_USER_LIMIT_REACHED":
        raise errors.PerUserLimitReached(
            f"The user already holds {limit} coupon(s) of this offer.", per_user_limit=limit
        )
    assert outcome == "NOT_RESERVED", outcome
    raise _why_not_reserved(rule_id=rule_id, n=1, now=now)


def _survivor_id(profile_id: int) -> int:
    """The profile that stands for this one now: itself, or the end of its chain of merges."""
    seen = {profile_id}
    while (following := Profile.objects.filter(pk=profile_id).values_list("merged_into_id", flat=True).first()) and (
        following not in seen
    ):
        seen.add(following)
        profile_id = following
    return profile_id


def _replayed(*, rule_id: int, profile_id: int | None, request_id: str) -> Coupon | None:
    existing = Coupon.objects.filter(rule_id=rule_id, request_id=request_id).select_related("rule").first()
    if existing is None:
        return None
    # The first request's coupon followed a merge to the survivor: still the same person's replay.
    if profile_id is not None and existing.profile_id not in (profile_id, _survivor_id(profile_id)):
        raise errors.RequestIdReused("This request_id was already used for another user.")
    existing.created = False
    return existing


# --- validate, redeem, rollback ---------------------------------------------------------------


@dataclass(frozen=True)
class Quote:
    coupon: Coupon
    valid: bool
    discount: Decimal | None = None
    final_amount: Decimal | None = None
    refusal: errors.CouponError | None = None


def _coupon_by_code(code: str) -> Coupon:
    normalized = codes.normalize(code)
    if not codes.is_well_formed(normalized):
        # Typos fail here, without a database query.
        raise errors.CouponNotFound("No such code (check the characters).")
    coupon = Coupon.objects.select_related("rule").filter(code=normalized).first()
    if coupon is None:
        raise errors.CouponNotFound("No such code.")
    return coupon


def validate_coupon(*, code: str, user_id: str, order_amount: Decimal) -> Quote:
    """Would `code` take money off this order, and how much? Changes nothing."""
    order_amount = _check_amount(order_amount)
    coupon = _coupon_by_code(code)
    profile = profile_for_user_id(user_id)
    refusal = _usage_refusal(
        coupon=coupon, profile=profile, order_amount=order_amount, order_id=None, now=timezone.now()
    )
    if refusal is not None:
        return Quote(coupon=coupon, valid=False, refusal=refusal)
    discount = coupon_discount(coupon=coupon, order_amount=order_amount)
    return Quote(coupon=coupon, valid=True, discount=discount, final_amount=order_amount - discount)


# The writes of a redemption in one statement: the coupon turns redeemed only while it is still
# live, and the redemption row and the rule's counters follow it, or nothing happens (another
# order, an expiry or a revoke came first; the caller reads again and answers why). It is the
# last statement of its transaction (the order's lock, the read, this), so the hot rule row stays
# locked only until the commit that follows it.
_REDEEM_SQL = """
WITH timeout AS (  -- before any row is locked: the first UPDATE's condition reads it
    SELECT set_config('lock_timeout', COALESCE(%(lock_timeout)s, current_setting('lock_timeout')), true) AS t
), used AS (
    UPDATE coupons_coupon SET status = 'redeemed'
     WHERE id = %(coupon_id)s AND status = 'available' AND (expires_at IS NULL OR expires_at > %(now)s)
       AND (SELECT t FROM timeout) IS NOT NULL
    RETURNING id, rule_id, reserved
), redemption AS (
    INSERT INTO coupons_redemption (coupon_id, rule_id, profile_id, user_id, order_id, order_amount, discount,
                                    redeemed_at, rolled_back_at, coupon_returned, refunded_amount)
    SELECT used.id, used.rule_id, %(profile_id)s, %(user_id)s, %(order_id)s, %(order_amount)s, %(discount)s,
           %(now)s, NULL, NULL, 0
      FROM used
    RETURNING id
), spend AS (
    UPDATE coupons_couponrule r
       SET committed = r.committed - used.reserved, spent = r.spent + %(discount)s,
           redeemed_count = r.redeemed_count + 1
      FROM used WHERE r.id = used.rule_id
)
SELECT id FROM redemption
"""
_REDEEM_ATTEMPTS = 3


def _coupon_for_order(*, code: str, order_id: str, user_id: str) -> Coupon | None:
    """The coupon with its rule, and in one query what a redemption must know besides: this
    order's live redemption of it (`order_live`, an id), whether this order had one rolled back
    (`order_rolled_back`), the caller's profile id (`caller`) and whether the rule holds them for
    review (`caller_flagged`, as `abuse_refusal` judges), and whether the order carries live
    redemptions of other codes (`order_others`). Plain SQL: the ORM's compiling
    of the same query costs more than the query."""
    coupon_fields = [f.attname for f in Coupon._meta.concrete_fields]
    rule_fields = [f.attname for f in CouponRule._meta.concrete_fields]
    columns = [f'c."{f.column}"' for f in Coupon._meta.concrete_fields]
    columns += [f'r."{f.column}"' for f in CouponRule._meta.concrete_fields]
    sql = f"""
        SELECT {", ".join(columns)},
               (SELECT d.id FROM coupons_redemption d
                 WHERE d.coupon_id = c.id AND d.order_id = %(order_id)s AND d.rolled_back_at IS NULL LIMIT 1),
               EXISTS (SELECT 1 FROM coupons_redemption d
                        WHERE d.coupon_id = c.id AND d.order_id = %(order_id)s AND d.rolled_back_at IS NOT NULL),
               EXISTS (SELECT 1 FROM coupons_redemption d
                        WHERE d.coupon_id <> c.id AND d.order_id = %(order_id)s AND d.rolled_back_at IS NULL),
               (SELECT i.profile_id FROM profiles_identity i WHERE i.kind = 'user_id' AND i.value = %(user_id)s),
               r.abuse_threshold IS NOT NULL AND EXISTS (
                   SELECT 1 FROM profiles_identity i JOIN coupons_abusescore a ON a.profile_id = i.profile_id
                    WHERE i.kind = 'user_id' AND i.value = %(user_id)s AND a.score >= r.abuse_threshold
                      AND (a.cleared_at IS NULL OR a.cleared_score IS NULL OR a.score > a.cleared_score))
          FROM coupons_coupon c JOIN coupons_couponrule r ON r.id = c.rule_id
         WHERE c.code = %(code)s
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, {"code": code, "order_id": order_id, "user_id": user_id})
        row = cursor.fetchone()
    if row is None:
        return None
    n, m = len(coupon_fields), len(rule_fields)
    coupon = Coupon.from_db(connection.alias, coupon_fields, row[:n])
    coupon.rule = CouponRule.from_db(connection.alias, rule_fields, row[n : n + m])
    (coupon.order_live, coupon.order_rolled_back, coupon.order_others, coupon.caller, coupon.caller_flagged) = row[
        n + m :
    ]
    return coupon


# The lock timeout first (for this transaction), so a long holder of the order answers BUSY.
_ORDER_LOCK_SQL = """
SELECT pg_advisory_xact_lock(hashtextextended('coupons.order:' || %(order_id)s, 0))
  FROM (SELECT set_config('lock_timeout', COALESCE(%(lock_timeout)s, current_setting('lock_timeout')), true) AS t) s
 WHERE s.t IS NOT NULL
"""


def _lock_order(order_id: str, *, lock_timeout: str | None = None) -> None:
    """Serialise the redemptions of one order, until the caller's transaction ends: what the
    order already carries is read after this, so two requests for one order (one code each, or
    different code sets) are judged one after the other, against each other's redemptions."""
    with connection.cursor() as cursor:
        cursor.execute(_ORDER_LOCK_SQL, {"order_id": order_id, "lock_timeout": lock_timeout})


def _live_on_order(order_id: str) -> list[Redemption]:
    live = list(
        Redemption.objects.select_related("coupon", "coupon__rule").filter(order_id=order_id, rolled_back_at=None)
    )
    live.sort(key=lambda r: _offer(r.coupon).sort_key())
    return live


def _check_same_order_amount(live: list[Redemption], order_amount: Decimal) -> None:
    if live and live[0].order_amount != order_amount:
        raise errors.InvalidAmount(
            f"This order was redeemed with order_amount {live[0].order_amount}; send the same amount.",
            field="order_amount",
            order_amount=str(live[0].order_amount),
        )


def _refusal_error(refused: stacking.Refused) -> DomainError:
    return _ERRORS_BY_REASON.get(refused.reason, errors.CouponError)(refused.detail, reason=refused.reason)


def redeem_coupon(*, code: str, user_id: str, order_id: str, order_amount: Decimal) -> Redemption:
    """Use `code` for one order. The same code and order again returns the first redemption
    (its `created` is False); a code used by another order is refused (409). On an order that
    already carries other codes the new one is stacked after them (their policies and floors),
    or refused (409 NOT_STACKABLE or FLOOR_REACHED).

    In one short transaction: the order's lock, one read (the coupon, its rule, this order's
    redemptions, the caller's profile), the checks, and one writing statement (`_REDEEM_SQL`)."""
    order_amount = _check_amount(order_amount)
    normalized = codes.normalize(code)
    if not codes.is_well_formed(normalized):
        # Typos fail here, without a database query.
        raise errors.CouponNotFound("No such code (check the characters).")
    lock_timeout = _money_lock_timeout()
    for _ in range(_REDEEM_ATTEMPTS):
        try:
            # No savepoint inside a caller's transaction (two round trips fewer): a refusal is
            # caught inside the block, which then ends normally, and raised after it.
            with transaction.atomic(savepoint=False):
                try:
                    outcome = _redeem_one(
                        code=normalized,
                        user_id=user_id,
                        order_id=order_id,
                        order_amount=order_amount,
                        lock_timeout=lock_timeout,
                    )
                except DomainError as refusal:
                    outcome = refusal
        except DatabaseError as exc:
            if getattr(exc.__cause__, "sqlstate", None) == LOCK_NOT_AVAILABLE_SQLSTATE:
                raise errors.RuleBusy("The coupon or its offer is busy; try again in a moment.") from exc
            raise
        if isinstance(outcome, DomainError):
            raise outcome
        if outcome is not None:
            return outcome
        # the coupon changed since it was read: read again and answer from what happened
    raise errors.CouponAlreadyUsed("This code was already used by another order.")


def _redeem_one(
    *, code: str, user_id: str, order_id: str, order_amount: Decimal, lock_timeout: str | None
) -> Redemption | None:
    _lock_order(order_id, lock_timeout=lock_timeout)
    coupon = _coupon_for_order(code=code, order_id=order_id, user_id=user_id)
    if coupon is None:
        raise errors.CouponNotFound("No such code.")
    if coupon.order_live is not None:
        redemption = Redemption.objects.select_related("coupon").get(pk=coupon.order_live)
        redemption.created = False
        return redemption
    if coupon.order_rolled_back:
        raise errors.OrderRolledBack("This order's redemption was rolled back; a new order needs a new order_id.")
    # The caller as far as the checks need them (their id); other fields load if asked.
    profile = None if coupon.caller is None else Profile.from_db(connection.alias, ["id"], [coupon.caller])
    if coupon.profile_id is None and profile is None:
        profile = ensure_profile(user_id=user_id)
    now = timezone.now()
    refusal = _usage_refusal(coupon=coupon, profile=profile, order_amount=order_amount, order_id=order_id, now=now)
    if refusal is not None:
        raise refusal
    if coupon.order_others:
        live = _live_on_order(order_id)
        _check_same_order_amount(live, order_amount)
        earlier = [stacking.Applied(_offer(r.coupon), r.discount) for r in live]
        result = stacking.stack([_offer(coupon)], order_amount, applied=earlier)
        if len(result.applied) == len(earlier):
            raise _refusal_error(result.refused[0])
        discount = result.applied[-1].discount
    else:
        discount = coupon_discount(coupon=coupon, order_amount=order_amount)
    params = {
        "coupon_id": coupon.pk,
        "profile_id": profile.pk if profile is not None else None,
        "user_id": user_id,
        "order_id": order_id,
        "order_amount": order_amount,
        "discount": discount,
        "now": now,
        "lock_timeout": lock_timeout,
    }
    with connection.cursor() as cursor:
        cursor.execute(_REDEEM_SQL, params)
        row = cursor.fetchone()
    if row is None:
        return None
    coupon.status = CouponStatus.REDEEMED
    redemption = _as_stored(
        Redemption,
        id=row[0],
        coupon_id=coupon.pk,
        rule_id=coupon.rule_id,
        profile_id=params["profile_id"],
        user_id=user_id,
        order_id=order_id,
        order_amount=order_amount,
        discount=discount,
        redeemed_at=now,
        rolled_back_at=None,
        coupon_returned=None,
        refunded_amount=ZERO,
    )
    redemption.coupon = coupon  # the caller reads the code and the rule through it
    redemption.created = True
    return redemption


# --- several codes on one order ------------------------------------------------------------------

MAX_CODES = 10


@dataclass
class StackedQuote:
    """The answer for several codes: `stack` says which apply, in order, and which are refused;
    `redemptions` (redeem only) the rows written, in the order of `stack.applied`."""

    stack: stacking.Stack
    redemptions: list[Redemption]
    created: bool = True


def _offer(coupon: Coupon) -> stacking.Offer:
    rule = coupon.rule
    return stacking.Offer(
        code=coupon.code,
        rule_id=rule.pk,
        kind=rule.kind,
        value=rule.value,
        max_discount=rule.max_discount,
        # Under a budget a coupon never costs more than it reserved (see `coupon_discount`).
        cap=coupon.reserved if rule.budget is not None else None,
        priority=rule.priority,
        stacking=rule.stacking,
        group=rule.stack_group,
        floor_percent=rule.floor_percent,
    )


def _stack_codes(
    *,
    codes_given: Sequence[str],
    user_id: str,
    order_amount: Decimal,
    order_id: str | None,
    lock: bool,
    earlier: Sequence[stacking.Applied] = (),
) -> tuple[stacking.Stack, dict[str, Coupon], Profile | None]:
    """Judge each code on its own (as validate does), then stack the ones that pass after
    `earlier`, what the order already carries (codes of it given again are left out)."""
    if not codes_given or len(codes_given) > MAX_CODES:
        raise errors.InvalidAmount(f"Between 1 and {MAX_CODES} codes.")
    refused: list[stacking.Refused] = []
    normalized: list[str] = []
    for given in codes_given:
        code = codes.normalize(given)
        if not codes.is_well_formed(code):
            refused.append(
                stacking.Refused(code or str(given), "COUPON_NOT_FOUND", "No such code (check the characters).")
            )
        elif any(a.offer.code == code for a in earlier):
            continue
        else:
            normalized.append(code)
    found = Coupon.objects.select_related("rule").filter(code__in=normalized).order_by("id")
    if lock:
        # In id order, so two orders sharing codes lock them in the same order.
        found = found.select_for_update(of=("self",))
    by_code = {c.code: c for c in found}
    profile = profile_for_user_id(user_id)
    now = timezone.now()
    offers: list[stacking.Offer] = []
    judged: set[str] = set()
    for code in normalized:
        coupon = by_code.get(code)
        if coupon is None:
            refused.append(stacking.Refused(code, "COUPON_NOT_FOUND", "No such code."))
            continue
        if code in judged:
            offers.append(_offer(coupon))  # the stacking names the duplicate
            continue
        judged.add(code)
        refusal = _usage_refusal(coupon=coupon, profile=profile, order_amount=order_amount, order_id=order_id, now=now)
        if refusal is not None:
            refused.append(stacking.Refused(code, refusal.reason, refusal.detail))
        else:
            offers.append(_offer(coupon))
    return stacking.stack(offers, order_amount, refused, applied=earlier), by_code, profile


def validate_codes(*, codes: Sequence[str], user_id: str, order_amount: Decimal) -> StackedQuote:
    """Which of several codes would apply to this order, for how much each, and why not the
    others. Changes nothing."""
    order_amount = _check_amount(order_amount)
    result, _, _ = _stack_codes(
        codes_given=codes, user_id=user_id, order_amount=order_amount, order_id=None, lock=False
    )
    return StackedQuote(stack=result, redemptions=[])


@transaction.atomic
def redeem_codes(*, codes: Sequence[str], user_id: str, order_id: str, order_amount: Decimal) -> StackedQuote:
    """Use several codes for one order, all or nothing: the ones that apply are redeemed, each
    for its part of the discount; the same order again answers with what it redeemed the first
    time. With no code applying, the first refusal is raised (as for one code)."""
    order_amount = _check_amount(order_amount)
    _lock_order(order_id)
    live = _live_on_order(order_id)
    if not live and Redemption.objects.filter(order_id=order_id).exists():
        raise errors.OrderRolledBack("This order's redemption was rolled back; a new order needs a new order_id.")
    earlier = [stacking.Applied(_offer(r.coupon), r.discount) for r in live]
    result, by_code, profile = _stack_codes(
        codes_given=codes, user_id=user_id, order_amount=order_amount, order_id=order_id, lock=True, earlier=earlier
    )
    new = result.applied[len(earlier) :]
    # Codes the order carries are left out of the stacking, not refused: a request naming any of
    # them that adds nothing is a replay, answered as the first time.
    if live and not new and len(codes) > len(result.refused):
        return _replayed_stack(previous=live, order_amount=order_amount)
    if not new:
        raise _refusal_error(result.refused[0])
    _check_same_order_amount(live, order_amount)
    if profile is None and any(by_code[a.offer.code].profile_id is None for a in new):
        profile = ensure_profile(user_id=user_id)
    now = timezone.now()
    redemptions = list(live)
    for applied in new:
        coupon = by_code[applied.offer.code]
        params = {
            "coupon_id": coupon.pk,
            "profile_id": profile.pk if profile is not None else None,
            "user_id": user_id,
            "order_id": order_id,
            "order_amount": order_amount,
            "discount": applied.discount,
            "now": now,
            "lock_timeout": None,
        }
        with connection.cursor() as cursor:
            cursor.execute(_REDEEM_SQL, params)
            row = cursor.fetchone()
        if row is None:  # the coupons are locked above: only an expiry between the checks and here
            raise errors.CouponExpired("This code has expired.", expires_at=_iso(coupon.expires_at))
        redemptions.append(Redemption.objects.select_related("coupon").get(pk=row[0]))
    return StackedQuote(stack=result, redemptions=redemptions)


def _replayed_stack(*, previous: list[Redemption], order_amount: Decimal) -> StackedQuote:
    previous.sort(key=lambda r: _offer(r.coupon).sort_key())
    applied = [stacking.Applied(_offer(r.coupon), r.discount) for r in previous]
    result = stacking.Stack(order_amount=previous[0].order_amount, applied=applied)
    return StackedQuote(stack=result, redemptions=previous, created=False)


_ERRORS_BY_REASON: dict[str, type[DomainError]] = {
    cls.reason: cls
    for cls in (
        errors.CouponNotFound,
        errors.CouponNotYours,
        errors.CouponAlreadyUsed,
        errors.CouponExpired,
        errors.CouponRevoked,
        errors.RuleNotActive,
        errors.CouponNotYetValid,
        errors.MinSpendNotMet,
        errors.TierNotEligible,
        errors.TagNotEligible,
        errors.NotFirstOrder,
        errors.NotStackable,
        errors.FloorReached,
    )
}


_UNSPEND_RETURN_SQL = """
UPDATE coupons_couponrule
   SET spent = spent - %(discount)s, committed = committed + %(reserved)s, redeemed_count = redeemed_count - 1
 WHERE id = %(rule_id)s AND state <> 'ended'
   AND (budget IS NULL OR committed + spent - %(discount)s + %(reserved)s <= budget)
RETURNING id
"""
_UNSPEND_SQL = """
UPDATE coupons_couponrule SET spent = spent - %(discount)s, redeemed_count = redeemed_count - 1
 WHERE id = %(rule_id)s
"""


@transaction.atomic
def rollback_order(*, order_id: str, actor: AbstractBaseUser | None = None) -> list[Redemption]:
    """Undo the redemptions of a cancelled or refunded order: the discount returns to the budget
    and each coupon to its holder while it is still valid (and the budget can hold it again).
    A replay returns the redemptions already rolled back."""
    redemptions = list(
        Redemption.objects.select_for_update().select_related("coupon").filter(order_id=order_id).order_by("id")
    )
    if not redemptions:
        raise errors.RedemptionNotFound(f"Order {order_id!r} redeemed nothing.")
    live = [r for r in redemptions if r.rolled_back_at is None]
    if not live:
        for r in redemptions:
            r.created = False
        return redemptions
    now = timezone.now()
    for redemption in live:
        coupon = Coupon.objects.select_for_update().get(pk=redemption.coupon_id)
        params = {"discount": redemption.discount, "reserved": coupon.reserved, "rule_id": coupon.rule_id}
        returned = False
        if coupon.expires_at is None or coupon.expires_at > now:
            with connection.cursor() as cursor:
                cursor.execute(_UNSPEND_RETURN_SQL, params)
                returned = cursor.fetchone() is not None
        if not returned:
            with connection.cursor() as cursor:
                cursor.execute(_UNSPEND_SQL, params)
        coupon.status = CouponStatus.AVAILABLE if returned else CouponStatus.EXPIRED
        coupon.expired_at = None if returned else now
        coupon.save(update_fields=["status", "expired_at"])
        redemption.rolled_back_at = now
        redemption.coupon_returned = returned
        redemption.save(update_fields=["rolled_back_at", "coupon_returned"])
        redemption.created = True
        if actor is not None:
            record_audit(
                actor=actor,
                action="coupons.redemption_rolled_back",
                obj=redemption,
                details={"order_id": order_id, "discount": str(redemption.discount), "coupon_returned": returned},
            )
    return live


# --- refunds ----------------------------------------------------------------------------------

ORDER_REFUNDED = "order_refunded"


def _refunded_amount(properties: dict[str, Any]) -> Decimal | None:
    """The refunded amount of an `order_refunded` event; None for the whole order (no amount)."""
    raw = properties.get("amount")
    if raw is None:
        return None
    try:
        amount = Decimal(str(raw))
    except ArithmeticError:
        return None
    return amount.quantize(CENT) if amount.is_finite() and amount >= 0 else None


# Ingestion records the refunds of orders that used coupons, and nothing else: one statement that
# reads the orders' first redemption (no lock) and inserts. Tracking accepts larger numbers than
# money columns hold; nobody is refunded more than the order, so the order amount caps what is
# stored (LEAST alone would keep the order amount for a whole-order refund, whose amount is NULL).
# Rows are numbered in the batch's order, the order the refunds of one order are applied in.
_RECORD_REFUNDS_SQL = """
INSERT INTO coupons_orderrefund (event_id, order_id, amount, status, error, attempts, created_at)
SELECT e.event_id, e.order_id,
       CASE WHEN e.amount IS NULL THEN NULL ELSE LEAST(e.amount, o.order_amount) END,
       'pending', '', 0, %(now)s
  FROM unnest(%(event_ids)s::text[], %(order_ids)s::text[], %(amounts)s::numeric[])
       WITH ORDINALITY AS e(event_id, order_id, amount, position)
 CROSS JOIN LATERAL (
       SELECT r.order_amount FROM coupons_redemption r WHERE r.order_id = e.order_id ORDER BY r.id LIMIT 1
       ) o
 ORDER BY e.position
    ON CONFLICT (event_id) DO NOTHING
RETURNING id
"""


def on_events_ingested(events: Sequence[Any]) -> None:
    """Ingest listener (`tracking.hooks`): records the refunds of orders that used coupons as
    pending, and queues their application once the batch commits. Nothing here locks a rule or a
    redemption, so a batch never holds a rule's money for as long as it takes to store."""
    refunds = [e for e in events if e.name == ORDER_REFUNDED and isinstance(e.properties.get("order_id"), str)]
    if not refunds:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            _RECORD_REFUNDS_SQL,
            {
                "event_ids": [e.event_id for e in refunds],
                "order_ids": [e.properties["order_id"] for e in refunds],
                "amounts": [_refunded_amount(e.properties) for e in refunds],
                "now": timezone.now(),
            },
        )
        ids = [row[0] for row in cursor.fetchall()]
    if ids:
        from coupons.tasks import apply_refunds as task

        transaction.on_commit(lambda: publish(f"refunds {ids[0]}..{ids[-1]}", task, args=[ids]))


@dataclass
class RefundsApplied:
    """What one pass over refunds did: applied, failed (each with its reason on the row), and
    skipped (already applied, unknown, or being applied by another worker right now)."""

    applied: int = 0
    failed: int = 0
    skipped: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def apply_refunds(*, refund_ids: Iterable[int], due_at: datetime | None = None) -> RefundsApplied:
    """Apply refunds one by one, each in its own transaction (so one that fails leaves the others
    applied), in order id order and, within an order, in the order they were recorded. With
    `due_at` (the sweep) only those still due then, checked under each one's lock."""
    ids = list(
        OrderRefund.objects.filter(pk__in=list(refund_ids))
        .exclude(status=OrderRefund.Status.APPLIED)
        .order_by("order_id", "id")
        .values_list("pk", flat=True)
    )
    result = RefundsApplied()
    for refund_id in ids:
        try:
            refund = apply_refund(refund_id=refund_id, due_at=due_at)
        except Exception as exc:  # recording the failure failed too (connection lost): the next run
            log_failure(logger, f"coupons: refund {refund_id} (its failure not recorded)", exc)
            result.failed += 1
            continue
        if refund is None:
            result.skipped += 1
        elif refund.status == OrderRefund.Status.APPLIED:
            result.applied += 1
        else:
            result.failed += 1
    return result


def apply_due_refunds(*, now: datetime | None = None, limit: int = 500) -> RefundsApplied:
    """The beat's sweep: refunds whose task was lost, and failed ones whose back-off has passed
    (`selectors.refunds_due`), at most `limit` a run; the next run takes the rest."""
    now = now or timezone.now()
    return apply_refunds(refund_ids=selectors.refunds_due(now=now, limit=limit), due_at=now)


def apply_refund(
    *,
    refund_id: int,
    actor: AbstractBaseUser | None = None,
    api_key: Any = None,
    due_at: datetime | None = None,
) -> OrderRefund | None:
    """Apply one recorded refund in one transaction, or record why it failed. Returns the refund
    as it then stands (applied, or failed with its reason), or None when there was nothing to do:
    unknown, applied already, not due at `due_at` (the sweep's), or being applied by another worker
    at this moment (whose row lock is skipped, not waited for, so two workers never apply it
    twice). With an `actor` or an `api_key` it is an operator's retry, audited with the reason it
    replaces."""
    audited = actor is not None or api_key is not None
    try:
        with transaction.atomic():
            refund = OrderRefund.objects.select_for_update(skip_locked=True).filter(pk=refund_id).first()
            if refund is None or refund.status == OrderRefund.Status.APPLIED:
                return None
            if due_at is not None and not selectors.refund_due(refund_id=refund.pk, now=due_at):
                return None
            previous_error = refund.error
            _apply_refund(refund)
            if audited:
                _audit_refund_retry(refund, previous_error=previous_error, actor=actor, api_key=api_key)
    except Exception as exc:  # any failure stays with this one refund, on its row
        reason = log_failure(logger, f"coupons: refund {refund_id}", exc)
        return _refund_failed(refund_id=refund_id, reason=reason, audit=audited, actor=actor, api_key=api_key)
    logger.info("coupons: refund %s of order %s applied (%s)", refund.event_id, refund.order_id, refund.outcome)
    return refund


def _apply_refund(refund: OrderRefund) -> None:
    """The refund's effect on its order, inside the caller's transaction. `amount` is money
    returned to the customer. A full refund (no amount, or the refunds reaching what the customer
    paid: the order amount less the discounts) rolls the redemptions back: the discount returns
    to the budget and each coupon to its holder while still valid. A partial one lowers the
    revenue the reports count and leaves the discount given."""
    order_id = refund.order_id
    redemptions = list(Redemption.objects.select_for_update().filter(order_id=order_id).order_by("id"))
    if not redemptions:
        raise errors.RedemptionNotFound(f"Order {order_id!r} redeemed nothing.")
    live = [r for r in redemptions if r.rolled_back_at is None]
    amount = refund.amount
    if amount is not None:
        amount = min(amount, redemptions[0].order_amount)
    refunded = (live[0].refunded_amount if live else ZERO) + (amount if amount is not None else ZERO)
    refunded = min(refunded, redemptions[0].order_amount)
    # The event's amount is money returned to the customer, so the refund is whole once it
    # reaches what they paid: the order amount less the discounts of the standing redemptions.
    paid = live[0].order_amount - sum((r.discount for r in live), ZERO) if live else ZERO
    full = not live or amount is None or refunded >= paid
    if full:
        if live:
            rollback_order(order_id=order_id)
    else:
        Redemption.objects.filter(pk__in=[r.pk for r in live]).update(refunded_amount=refunded)
    refund.amount = amount
    refund.status = OrderRefund.Status.APPLIED
    refund.outcome = OrderRefund.Outcome.ROLLED_BACK if full else OrderRefund.Outcome.PARTIAL
    refund.applied_at = timezone.now()
    refund.attempts += 1
    refund.error, refund.failed_at = "", None
    refund.save(update_fields=["amount", "status", "outcome", "applied_at", "attempts", "error", "failed_at"])


@transaction.atomic
def _refund_failed(
    *, refund_id: int, reason: str, audit: bool, actor: AbstractBaseUser | None, api_key: Any
) -> OrderRefund | None:
    """Record a failed attempt, after its transaction rolled back; a refund another worker applied
    meanwhile stays applied."""
    refund = OrderRefund.objects.select_for_update().filter(pk=refund_id).first()
    if refund is None or refund.status == OrderRefund.Status.APPLIED:
        return refund
    previous_error = refund.error
    refund.status = OrderRefund.Status.FAILED
    refund.error = reason
    refund.attempts += 1
    refund.failed_at = timezone.now()
    refund.save(update_fields=["status", "error", "attempts", "failed_at"])
    if audit:
        _audit_refund_retry(refund, previous_error=previous_error, actor=actor, api_key=api_key)
    return refund


def _audit_refund_retry(
    refund: OrderRefund, *, previous_error: str, actor: AbstractBaseUser | None, api_key: Any
) -> None:
    record_audit(
        actor=actor,
        api_key=api_key,
        action="coupons.refund_retried",
        obj=refund,
        details={
            "order_id": refund.order_id,
            "previous_error": previous_error,
            "status": refund.status,
            "error": refund.error,
        },
    )


def retry_refund(*, refund_id: int, actor: AbstractBaseUser | None = None, api_key: Any = None) -> OrderRefund:
    """An operator's retry of a pending or failed refund: applied now, audited, and returned as it
    then stands (applied, or failed with the new reason). An applied refund is refused."""
    refund = OrderRefund.objects.filter(pk=refund_id).first()
    if refund is None:
        raise errors.RefundNotFound(f"No order refund {refund_id}.")
    if refund.status == OrderRefund.Status.APPLIED:
        raise errors.RefundAlreadyApplied(
            gettext("Order refund %(id)s is applied already: nothing to retry.") % {"id": refund_id}
        )
    refund = apply_refund(refund_id=refund_id, actor=actor, api_key=api_key)
    if refund is not None:
        return refund
    # Nothing done: a worker applied it meanwhile, or holds it at this moment.
    if OrderRefund.objects.filter(pk=refund_id, status=OrderRefund.Status.APPLIED).exists():
        raise errors.RefundAlreadyApplied(
            gettext("Order refund %(id)s is applied already: nothing to retry.") % {"id": refund_id}
        )
    raise errors.RefundInProgress(
        gettext("Order refund %(id)s is being applied by a worker at this moment: see its state shortly.")
        % {"id": refund_id}
    )


# --- promotion abuse ---------------------------------------------------------------------------

# The signals, each from 0 to 1, and what each weighs; the score is their weighted sum, capped at
# 1. No single signal reaches the default threshold (0.6) alone: two of them do.
ABUSE_WEIGHTS = {
    "several_accounts": Decimal("0.45"),  # other user ids on the person's devices, or on their phone
    "redeem_then_refund": Decimal("0.30"),  # share of their coupon orders rolled back (2+ such orders)
    "coupon_only_orders": Decimal("0.25"),  # every paid order (2+) used a coupon
    "new_account_only_claims": Decimal("0.25"),  # joined in the last 30 days, 2+ coupons, no order
}
NEW_ACCOUNT_DAYS = 30

# Set-based over everyone with a signal. A device is the `anonymous_id` of events (one per app
# install or browser): several user ids seen on it are several accounts in one hand.
_ABUSE_SQL = """
WITH devices AS (
    SELECT anonymous_id, COUNT(DISTINCT user_id) AS accounts
      FROM tracking_event WHERE user_id IS NOT NULL AND anonymous_id IS NOT NULL
     GROUP BY anonymous_id HAVING COUNT(DISTINCT user_id) > 1
), on_devices AS (
    SELECT i.profile_id, MAX(d.accounts) AS accounts
      FROM devices d
      JOIN tracking_event e ON e.anonymous_id = d.anonymous_id AND e.user_id IS NOT NULL
      JOIN profiles_identity i ON i.kind = 'user_id' AND i.value = e.user_id
     GROUP BY i.profile_id
), phones AS (
    SELECT id AS profile_id, COUNT(*) OVER (PARTITION BY phone) AS accounts
      FROM profiles_profile WHERE phone <> '' AND merged_into_id IS NULL
), redeemed AS (
    -- Orders, not codes: a stacked order carries one redemption per code.
    SELECT profile_id, COUNT(DISTINCT order_id) AS redemptions,
           COUNT(DISTINCT order_id) FILTER (WHERE rolled_back_at IS NOT NULL) AS rolled_back
      FROM coupons_redemption WHERE profile_id IS NOT NULL GROUP BY profile_id
), orders AS (
    SELECT pe.profile_id, COUNT(DISTINCT pe.properties->>'order_id') AS orders,
           COUNT(DISTINCT pe.properties->>'order_id') FILTER (
               WHERE EXISTS (SELECT 1 FROM coupons_redemption r WHERE r.order_id = pe.properties->>'order_id')
           ) AS with_coupon
      FROM profiles_profileevent pe
     WHERE pe.name = 'order_paid' AND pe.profile_id IS NOT NULL
     GROUP BY pe.profile_id
), claims AS (
    SELECT profile_id, COUNT(*) AS coupons FROM coupons_coupon WHERE profile_id IS NOT NULL GROUP BY profile_id
), people AS (
    SELECT profile_id FROM on_devices UNION SELECT profile_id FROM phones WHERE accounts > 1
    UNION SELECT profile_id FROM redeemed UNION SELECT profile_id FROM claims
), signals AS (
    SELECT p.id AS profile_id,
           GREATEST(COALESCE(od.accounts, 1), COALESCE(ph.accounts, 1)) AS accounts,
           COALESCE(r.redemptions, 0) AS redemptions, COALESCE(r.rolled_back, 0) AS rolled_back,
           COALESCE(o.orders, 0) AS orders, COALESCE(o.with_coupon, 0) AS with_coupon,
           COALESCE(c.coupons, 0) AS coupons,
           COALESCE(p.signup_at, p.first_seen_at, p.created_at) > %(now)s - make_interval(days => %(new_days)s) AS new
      FROM people x JOIN profiles_profile p ON p.id = x.profile_id AND p.merged_into_id IS NULL
      LEFT JOIN on_devices od ON od.profile_id = p.id
      LEFT JOIN phones ph ON ph.profile_id = p.id
      LEFT JOIN redeemed r ON r.profile_id = p.id
      LEFT JOIN orders o ON o.profile_id = p.id
      LEFT JOIN claims c ON c.profile_id = p.id
), parts AS (
    SELECT s.*,
           LEAST(accounts - 1, 3) / 3.0 AS several_accounts,
           CASE WHEN redemptions >= 2 THEN rolled_back::numeric / redemptions ELSE 0 END AS redeem_then_refund,
           CASE WHEN orders >= 2 AND with_coupon = orders THEN 1 ELSE 0 END AS coupon_only_orders,
           CASE WHEN new AND coupons >= 2 AND orders = 0 THEN 1 ELSE 0 END AS new_account_only_claims
      FROM signals s
), scored AS (
    SELECT parts.*, LEAST(1, round(several_accounts * %(w_accounts)s + redeem_then_refund * %(w_refund)s
                                   + coupon_only_orders * %(w_coupon_only)s
                                   + new_account_only_claims * %(w_new)s, 3)) AS score
      FROM parts
), kept AS (
    INSERT INTO coupons_abusescore AS a (profile_id, score, evidence, computed_at)
    SELECT profile_id, score,
           jsonb_build_object(
               'accounts', accounts, 'redemptions', redemptions, 'rolled_back', rolled_back, 'orders', orders,
               'orders_with_coupon', with_coupon, 'coupons', coupons, 'new_account', new,
               'parts', jsonb_build_object(
                   'several_accounts', round(several_accounts * %(w_accounts)s, 3),
                   'redeem_then_refund', round(redeem_then_refund * %(w_refund)s, 3),
                   'coupon_only_orders', round(coupon_only_orders * %(w_coupon_only)s, 3),
                   'new_account_only_claims', round(new_account_only_claims * %(w_new)s, 3))),
           %(now)s
      FROM scored WHERE score > 0
    ON CONFLICT (profile_id) DO UPDATE
       SET score = EXCLUDED.score, evidence = EXCLUDED.evidence, computed_at = EXCLUDED.computed_at
    RETURNING a.profile_id
), gone AS (
    DELETE FROM coupons_abusescore a WHERE NOT EXISTS (SELECT 1 FROM kept WHERE kept.profile_id = a.profile_id)
    RETURNING 1
)
SELECT (SELECT COUNT(*) FROM kept), (SELECT COUNT(*) FROM gone)
"""


@transaction.atomic
def refresh_abuse_scores(*, now: datetime | None = None) -> int:
    """Score everyone with a signal again, in one statement; people without one lose their row.
    Returns how many people carry a score. Safe to run at any time, and twice."""
    params = {
        "now": now or timezone.now(),
        "new_days": NEW_ACCOUNT_DAYS,
        "w_accounts": ABUSE_WEIGHTS["several_accounts"],
        "w_refund": ABUSE_WEIGHTS["redeem_then_refund"],
        "w_coupon_only": ABUSE_WEIGHTS["coupon_only_orders"],
        "w_new": ABUSE_WEIGHTS["new_account_only_claims"],
    }
    with connection.cursor() as cursor:
        cursor.execute(_ABUSE_SQL, params)
        kept, gone = cursor.fetchone()
    logger.info("coupons: abuse scores refreshed (%s people scored, %s cleared of every signal)", kept, gone)
    return kept


def abuse_refusal(
    *, rule: CouponRule, profile: Profile | None, flagged: bool | None = None
) -> errors.CouponError | None:
    """ABUSE_SUSPECTED when the person's score reaches the rule's threshold and no operator has
    cleared them since. `flagged`, when the caller already read it (the redemption's one read),
    saves the query."""
    if rule.abuse_threshold is None or profile is None or flagged is False:
        return None
    if flagged is None:
        score = AbuseScore.objects.filter(profile_id=profile.pk, score__gte=rule.abuse_threshold).first()
        flagged = score is not None and not score.cleared
    if not flagged:
        return None
    return errors.AbuseSuspected(
        "This offer is not available to this account: it is held for review.", threshold=str(rule.abuse_threshold)
    )


@transaction.atomic
def clear_abuse(*, profile_ids: Sequence[int], actor: AbstractBaseUser | None = None) -> int:
    """An operator reviewed these people and admits them: each clearance holds until their score
    rises above what it is now."""
    cleared = 0
    for score in AbuseScore.objects.select_for_update().filter(profile_id__in=list(profile_ids)):
        score.cleared_at, score.cleared_score = timezone.now(), score.score
        score.cleared_by = actor if getattr(actor, "is_authenticated", False) else None
        score.save(update_fields=["cleared_at", "cleared_score", "cleared_by"])
        record_audit(
            actor=actor,
            action="coupons.abuse_cleared",
            obj=score,
            details={"profile": score.profile_id, "score": str(score.score), "evidence": score.evidence},
        )
        cleared += 1
    return cleared


# --- uplift ---------------------------------------------------------------------------------------

# A person's portrait as the uplift models read it (`coupons.uplift.matrix`), in id order from a
# keyset, for the training members (`ids`) or every live profile (`ids` null).
_UPLIFT_FEATURES_SQL = """
SELECT p.id, vt.slug, pr.value_365d, pr.churn_risk, cv.frequency, cv.monetary,
       extract(epoch FROM %(now)s - p.last_seen_at) / 86400,
       ARRAY(SELECT t.name FROM profiles_profiletag pt JOIN profiles_tag t ON t.id = pt.tag_id
              WHERE pt.profile_id = p.id)
  FROM profiles_profile p
  LEFT JOIN crm_customervalue cv ON cv.profile_id = p.id
  LEFT JOIN crm_valuetier vt ON vt.id = cv.tier_id
  LEFT JOIN predictions_prediction pr ON pr.profile_id = p.id
 WHERE p.merged_into_id IS NULL AND p.id > %(after)s
   AND (%(ids)s::bigint[] IS NULL OR p.id = ANY(%(ids)s::bigint[]))
 ORDER BY p.id LIMIT %(limit)s
"""
UPLIFT_CHUNK = 20_000


def _uplift_features(*, ids: list[int] | None, now: datetime) -> Iterator[list[tuple]]:
    after = 0
    while True:
        with connection.cursor() as cursor:
            cursor.execute(_UPLIFT_FEATURES_SQL, {"now": now, "after": after, "ids": ids, "limit": UPLIFT_CHUNK})
            rows = cursor.fetchall()
        if not rows:
            return
        yield rows
        after = rows[-1][0]


def fit_rule_uplift(*, rule: CouponRule, seed: int = 0) -> UpliftModel:
    """Learn who the rule's coupon persuades from the campaigns with a holdout that gave it, keep
    the out-of-fold evidence (Qini curve, uplift by decile) and score every live profile. A
    failure leaves the model failed with its reason (traceback in the log) and is raised again;
    running it again starts over."""
    from coupons import uplift
    from coupons.incremental import member_outcomes

    fitted, _ = UpliftModel.objects.update_or_create(
        rule=rule, defaults={"status": UpliftModel.Status.RUNNING, "error": ""}
    )
    try:
        now = timezone.now()
        members = member_outcomes(rule_id=rule.pk)
        treated_n = sum(1 for m in members if m[2])
        if treated_n < 20 or len(members) - treated_n < 20:
            raise errors.CouponError(
                "Too few campaign members with a holdout to learn from (at least 20 treated and 20 held out).",
                reason="NOT_ENOUGH_HOLDOUT_DATA",
            )
        # One sample per (campaign, person): someone in several campaigns is several samples,
        # each with its own arm and outcome, sharing one portrait.
        samples = [(m[8], bool(m[2]), float(m[6]) * float(m[4]) / 100) for m in members]
        # The portraits are taken as they are now, not as of each campaign's start: features that
        # moved since (tier, value, tags earned by the campaign's own orders) leak a little of the
        # outcome into the model. Keeping portraits per campaign start needs history the profiles
        # do not keep.
        by_profile = {
            row[0]: row for chunk in _uplift_features(ids=sorted({s[0] for s in samples}), now=now) for row in chunk
        }
        samples = [s for s in samples if s[0] in by_profile]  # merged away since: no portrait
        portraits = [by_profile[s[0]] for s in samples]
        tiers = sorted({row[1] for row in portraits if row[1]})
        tags = uplift.top_tags([row[7] for row in portraits])
        x = uplift.matrix([row[1:] for row in portraits], tiers, tags)
        treated = np.array([s[1] for s in samples])
        y = np.array([s[2] for s in samples])
        evidence = uplift.evidence(uplift.out_of_fold(x, treated, y, seed=seed), treated, y)
        model = uplift.fit(x, treated, y, seed=seed)
        scored = 0
        with transaction.atomic():
            UpliftScore.objects.filter(rule=rule).delete()
            for chunk in _uplift_features(ids=None, now=now):
                scores = model.predict(uplift.matrix([row[1:] for row in chunk], tiers, tags))
                UpliftScore.objects.bulk_create(
                    [
                        UpliftScore(rule=rule, profile_id=row[0], uplift=float(u))
                        for row, u in zip(chunk, scores, strict=True)
                    ],
                    batch_size=5000,
                )
                scored += len(chunk)
            evidence["features"] = {"tiers": tiers, "tags": tags}
            UpliftModel.objects.filter(pk=fitted.pk).update(
                status=UpliftModel.Status.DONE,
                trained_on=len(portraits),
                scored=scored,
                evidence=evidence,
                fitted_at=now,
            )
    except Exception as exc:
        reason = (
            exc.detail if isinstance(exc, errors.CouponError) else log_failure(logger, f"uplift of rule {rule.pk}", exc)
        )
        if isinstance(exc, errors.CouponError):
            logger.warning("coupons: uplift of rule %s not fitted: %s", rule.pk, reason)
        UpliftModel.objects.filter(pk=fitted.pk).update(status=UpliftModel.Status.FAILED, error=reason)
        raise
    fitted.refresh_from_db()
    return fitted


# --- expiry -----------------------------------------------------------------------------------

_EXPIRE_SQL = """
WITH due AS (
    SELECT id FROM coupons_coupon
     WHERE status = 'available' AND {where}
     ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED
), gone AS (
    UPDATE coupons_coupon c SET status = 'expired', expired_at = %s
      FROM due WHERE c.id = due.id
    RETURNING c.rule_id, c.reserved
), per_rule AS (
    SELECT rule_id, SUM(reserved) AS released, COUNT(*) AS n FROM gone GROUP BY rule_id
), upd AS (
    UPDATE coupons_couponrule r SET committed = r.committed - per_rule.released
      FROM per_rule WHERE r.id = per_rule.rule_id
    RETURNING per_rule.n, per_rule.released
)
SELECT COALESCE(SUM(n), 0), COALESCE(SUM(released), 0) FROM upd
"""


def _expire_batch(where: str, params: list, *, now: datetime, batch_size: int) -> tuple[int, Decimal]:
    """Expire at most `batch_size` live coupons matching `where`, releasing their committed money."""
    with connection.cursor() as cursor:
        cursor.execute(_EXPIRE_SQL.format(where=where), [*params, batch_size, now])
        n, amount = cursor.fetchone()
    return int(n), Decimal(amount)


def _expire_where(where: str, params: list, *, now: datetime, batch_size: int = 5000) -> tuple[int, Decimal]:
    """Expire live coupons matching `where`, in batches within the caller's transaction."""
    total, released = 0, ZERO
    while True:
        n, amount = _expire_batch(where, params, now=now, batch_size=batch_size)
        total, released = total + n, released + amount
        if n < batch_size:
            return total, released


def expire_due_coupons(*, now: datetime | None = None, batch_size: int = 5000) -> int:
    """Expire every live coupon past its end and release what it committed. Each batch is its
    own transaction, committed before the next starts, so a large backlog never holds the rules'
    rows (which every claim and redemption updates) for longer than one batch; safe to run twice."""
    now = now or timezone.now()
    total = 0
    while True:
        with transaction.atomic():
            n, _ = _expire_batch("expires_at <= %s", [now], now=now, batch_size=batch_size)
        total += n
        if n < batch_size:
            return total


# --- bulk codes for partners -----------------------------------------------------------------


@transaction.atomic
def create_code_batch(
    *,
    rule: CouponRule,
    quantity: int,
    partner: str = "",
    created_by: AbstractBaseUser | None = None,
    api_key: Any = None,
) -> CodeBatch:
    """Order `quantity` bearer codes; a Celery task generates them (see `generate_batch_codes`)."""
    if quantity < 1 or quantity > 10_000_000:
        raise errors.InvalidAmount("Between 1 and 10,000,000 codes per batch.")
    batch = CodeBatch.objects.create(
        rule=rule,
        quantity=quantity,
        partner=partner,
        created_by=created_by if getattr(created_by, "is_authenticated", False) else None,
    )
    record_audit(
        actor=created_by,
        api_key=api_key,
        action="coupons.code_batch_created",
        obj=batch,
        details={"rule": rule.pk, "quantity": quantity},
    )
    from coupons.tasks import generate_code_batch

    transaction.on_commit(lambda: publish(f"code batch {batch.pk}", generate_code_batch, args=[batch.pk]))
    return batch


def _copy_codes(cursor, count: int, chunk: int = 100_000) -> None:
    remaining = count
    with cursor.copy("COPY coupon_new_codes (code) FROM STDIN") as copy:
        while remaining > 0:
            n = min(chunk, remaining)
            copy.write("\n".join(codes.generate_codes(n)) + "\n")
            remaining -= n


def generate_batch_codes(*, batch: CodeBatch) -> CodeBatch:
    """Generate a batch's codes in two steps. First the rule's quantity and budget for the whole
    batch are reserved and committed (the rule's row is locked only for that one statement); then
    the codes are streamed into a temporary table with COPY and moved in one INSERT ... SELECT, in
    a transaction of their own that holds no lock claims or redemptions wait for. The codes are
    all or nothing: a run that dies leaves the reservation for the redelivered task to write
    against; an error gives the reservation back, marks the batch failed with its reason
    (traceback in the log) and is raised again, so a retry starts clean."""
    try:
        reserved = _reserve_batch(batch_id=batch.pk)
        if reserved.status != CodeBatch.Status.RUNNING:
            return reserved
        return _write_batch_codes(batch_id=batch.pk)
    except Exception as exc:
        reason = log_failure(logger, f"code batch {batch.pk}", exc)
        _release_batch(batch_id=batch.pk, reason=reason)
        raise


@transaction.atomic
def _reserve_batch(*, batch_id: int) -> CodeBatch:
    batch = CodeBatch.objects.select_for_update().get(pk=batch_id)
    if batch.status in (CodeBatch.Status.DONE, CodeBatch.Status.FAILED) or batch.reserved_at is not None:
        return batch
    now = timezone.now()
    try:
        with transaction.atomic():
            reserve, starts_at, expires_at = _reserve(rule_id=batch.rule_id, n=batch.quantity, now=now)
    except errors.CouponError as refusal:
        batch.status, batch.error, batch.finished_at = CodeBatch.Status.FAILED, refusal.detail, now
        batch.save(update_fields=["status", "error", "finished_at"])
        return batch
    batch.status, batch.reserved_at, batch.reserved_per_code = CodeBatch.Status.RUNNING, now, reserve
    batch.codes_start_at, batch.codes_expire_at = starts_at, expires_at
    batch.save(update_fields=["status", "reserved_at", "reserved_per_code", "codes_start_at", "codes_expire_at"])
    return batch


@transaction.atomic
def _release_batch(*, batch_id: int, reason: str) -> None:
    """Give back what a failed batch reserved of its rule, and mark it failed."""
    batch = CodeBatch.objects.select_for_update().filter(pk=batch_id).first()
    if batch is None or batch.status == CodeBatch.Status.DONE:
        return
    if batch.reserved_at is not None:
        CouponRule.objects.filter(pk=batch.rule_id).update(
            issued_count=F("issued_count") - batch.quantity,
            committed=F("committed") - batch.quantity * batch.reserved_per_code,
        )
    batch.status, batch.error, batch.finished_at = CodeBatch.Status.FAILED, reason, timezone.now()
    batch.reserved_at = batch.reserved_per_code = batch.codes_start_at = batch.codes_expire_at = None
    batch.save()


@transaction.atomic
def _write_batch_codes(*, batch_id: int) -> CodeBatch:
    batch = CodeBatch.objects.select_for_update().get(pk=batch_id)
    if batch.status != CodeBatch.Status.RUNNING:
        return batch
    now = timezone.now()
    inserted = 0
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE IF NOT EXISTS coupon_new_codes (code varchar(32)) ON COMMIT DROP")
        while inserted < batch.quantity:
            cursor.execute("TRUNCATE coupon_new_codes")
            _copy_codes(cursor, batch.quantity - inserted)
            cursor.execute(
                """
                INSERT INTO coupons_coupon (code, rule_id, profile_id, status, reserved, issued_at, starts_at,
                                            expires_at, source, source_ref, batch_id)
                SELECT code, %s::bigint, NULL::bigint, 'available', %s::numeric, %s::timestamptz, %s::timestamptz,
                       %s::timestamptz, 'partner', %s, %s::bigint
                  FROM (SELECT DISTINCT code FROM coupon_new_codes) fresh
                ON CONFLICT (code) DO NOTHING
                """,
                [
                    batch.rule_id,
                    batch.reserved_per_code,
                    now,
                    batch.codes_start_at,
                    batch.codes_expire_at,
                    f"partner:{batch.partner}"[:200],
                    batch.pk,
                ],
            )
            inserted += cursor.rowcount
    batch.generated = inserted
    batch.status = CodeBatch.Status.DONE
    batch.finished_at = timezone.now()
    batch.save(update_fields=["generated", "status", "finished_at"])
    return batch


@transaction.atomic
def export_code_batch(*, batch: CodeBatch, actor: AbstractBaseUser | None = None) -> Iterable[str]:
    """The CSV of a finished batch for its partner, its export audited (bearer codes are money)."""
    record_audit(actor=actor, action="coupons.code_batch_exported", obj=batch, details={"codes": batch.generated})
    return batch_csv_lines(rows=selectors.batch_code_rows(batch=batch))


def batch_csv_lines(*, rows: Iterable[tuple]) -> Iterable[str]:
    """CSV lines for a partner: code (as printed), starts_at, expires_at."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["code", "starts_at", "expires_at"])
    yield buffer.getvalue()
    for code, starts_at, expires_at in rows:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow([codes.display(code), _iso(starts_at), _iso(expires_at) or ""])
        yield buffer.getvalue()


# --- bulk issuance ----------------------------------------------------------------------------


@transaction.atomic
def create_issuance_job(
    *,
    rule: CouponRule,
    user_ids: list[str] | None = None,
    segment_id: int | None = None,
    source_ref: str = "",
    created_by: AbstractBaseUser | None = None,
    api_key: Any = None,
) -> IssuanceJob:
    """Queue the issue of one coupon of `rule` to each of these users (or the segment's)."""
    if bool(user_ids) == (segment_id is not None):
        raise errors.CouponError(gettext("Give either a list of user ids or a segment."), reason="TARGET_REQUIRED")
    if segment_id is not None and segment_resolver() is None:
        raise errors.NoSegmentResolver(gettext("Segments are not available in this installation."))
    job = IssuanceJob.objects.create(
        rule=rule,
        user_ids=sorted(set(user_ids or [])),
        segment_id=segment_id,
        source_ref=source_ref or f"issuance:{rule.pk}",
        created_by=created_by if getattr(created_by, "is_authenticated", False) else None,
    )
    if not source_ref:
        job.source_ref = f"issuance:{job.pk}"
        job.save(update_fields=["source_ref"])
    record_audit(
        actor=created_by,
        api_key=api_key,
        action="coupons.issuance_job_created",
        obj=job,
        details={"rule": rule.pk, "users": len(job.user_ids), "segment": segment_id},
    )
    from coupons.tasks import run_issuance_job

    transaction.on_commit(lambda: publish(f"issuance job {job.pk}", run_issuance_job, args=[job.pk]))
    return job


def _profile_ids_for_user_ids(user_ids: list[str], chunk: int = 5000) -> None:
    """Make sure every user id has a profile (claims for users we never saw create them)."""
    for start in range(0, len(user_ids), chunk):
        part = user_ids[start : start + chunk]
        known = set(Identity.objects.filter(kind=IdentityKind.USER_ID, value__in=part).values_list("value", flat=True))
        missing = [u for u in part if u not in known]
        if not missing:
            continue
        Profile.objects.bulk_create([Profile(user_id=u) for u in missing], ignore_conflicts=True)
        by_user = dict(Profile.objects.filter(user_id__in=missing).values_list("user_id", "pk"))
        Identity.objects.bulk_create(
            [Identity(profile_id=by_user[u], kind=IdentityKind.USER_ID, value=u) for u in missing if u in by_user],
            ignore_conflicts=True,
        )


@transaction.atomic
def prepare_issuance_job(*, job: IssuanceJob) -> IssuanceJob:
    """Resolve the job's audience into its targets, once (set-based)."""
    job = IssuanceJob.objects.select_for_update().get(pk=job.pk)
    if job.status != IssuanceJob.Status.PENDING:
        return job
    if job.segment_id is not None:
        resolver = segment_resolver()
        if resolver is None:
            raise errors.NoSegmentResolver("Segments are not available in this installation.")
        profile_ids = list(resolver(job.segment_id))
        with connection.cursor() as cursor:
            for start in range(0, len(profile_ids), 50_000):
                # Only profiles that exist (a segment may be a little behind a deletion).
                cursor.execute(
                    """
                    INSERT INTO coupons_issuancetarget (job_id, profile_id, outcome, reason)
                    SELECT %s, p.id, 'pending', '' FROM profiles_profile p WHERE p.id = ANY(%s)
                    ON CONFLICT (job_id, profile_id) DO NOTHING
                    """,
                    [job.pk, [int(pid) for pid in profile_ids[start : start + 50_000]]],
                )
    else:
        _profile_ids_for_user_ids(job.user_ids)
        with connection.cursor() as cursor:
            cursor.execute(
                """
                INSERT INTO coupons_issuancetarget (job_id, profile_id, outcome, reason)
                SELECT DISTINCT %s, i.profile_id, 'pending', '' FROM profiles_identity i
                 WHERE i.kind = 'user_id' AND i.value = ANY(%s)
                ON CONFLICT (job_id, profile_id) DO NOTHING
                """,
                [job.pk, job.user_ids],
            )
    job.total = job.targets.count()
    job.status = IssuanceJob.Status.RUNNING
    job.started_at = timezone.now()
    job.save(update_fields=["total", "status", "started_at"])
    return job


def process_issuance_batch(*, job: IssuanceJob, batch_size: int = 200) -> int:
    """Issue to the next pending targets of a job in one transaction; returns how many were
    handled (0 when the job is finished). Target rows are locked SKIP LOCKED, so two runners
    of the same job share the work instead of doubling it."""
    with transaction.atomic():
        job = IssuanceJob.objects.select_related("rule").get(pk=job.pk)
        if job.status != IssuanceJob.Status.RUNNING:
            return 0
        targets = list(
            IssuanceTarget.objects.select_for_update(skip_locked=True)
            .select_related("profile")
            .filter(job=job, outcome=IssuanceTarget.Outcome.PENDING)
            .order_by("id")[:batch_size]
        )
        reasons: Counter[str] = Counter()
        issued = 0
        for target in targets:
            try:
                coupon = issue_coupon(
                    rule=job.rule,
                    profile=target.profile,
                    request_id=f"job:{job.pk}:{target.profile_id}",
                    source="bulk",
                    source_ref=job.source_ref,
                )
            except errors.CouponError as refusal:
                target.outcome, target.reason = IssuanceTarget.Outcome.REFUSED, refusal.reason
                reasons[refusal.reason] += 1
            else:
                target.outcome, target.coupon = IssuanceTarget.Outcome.ISSUED, coupon
                issued += 1
        IssuanceTarget.objects.bulk_update(targets, ["outcome", "reason", "coupon"])
        refusals = dict(job.refusals)
        for reason, n in reasons.items():
            refusals[reason] = refusals.get(reason, 0) + n
        IssuanceJob.objects.filter(pk=job.pk).update(
            processed=F("processed") + len(targets),
            issued=F("issued") + issued,
            refused=F("refused") + sum(reasons.values()),
            refusals=refusals,
        )
        if not targets and not IssuanceTarget.objects.filter(job=job, outcome=IssuanceTarget.Outcome.PENDING).exists():
            IssuanceJob.objects.filter(pk=job.pk, status=IssuanceJob.Status.RUNNING).update(
                status=IssuanceJob.Status.DONE, finished_at=timezone.now()
            )
        return len(targets)


def run_issuance_job(*, job: IssuanceJob, batch_size: int = 200, max_batches: int | None = None) -> IssuanceJob:
    """Prepare the job if needed, then issue batch by batch until done (or `max_batches`).
    Safe to run again after a crash: handled targets are skipped, pending ones are resumed.
    An error marks the job failed with its reason (traceback in the log) and is raised again:
    the batches done so far stay done, and `retry_issuance_job` goes on from there."""
    try:
        job = prepare_issuance_job(job=job)
        batches = 0
        while max_batches is None or batches < max_batches:
            if process_issuance_batch(job=job, batch_size=batch_size) == 0:
                break
            batches += 1
    except Exception as exc:
        reason = log_failure(logger, f"issuance job {job.pk}", exc)
        IssuanceJob.objects.filter(
            pk=job.pk, status__in=[IssuanceJob.Status.PENDING, IssuanceJob.Status.RUNNING]
        ).update(status=IssuanceJob.Status.FAILED, error=reason, finished_at=timezone.now())
        raise
    job.refresh_from_db()
    return job


@transaction.atomic
def resume_issuance_job(*, job_id: int, actor: AbstractBaseUser | None = None) -> bool:
    """Queue a pending or running job now, as the beat's resume would; False (and nothing
    audited) for a job that is neither: a failed one needs a retry, a finished one nothing."""
    job = IssuanceJob.objects.filter(
        pk=job_id, status__in=[IssuanceJob.Status.PENDING, IssuanceJob.Status.RUNNING]
    ).first()
    if job is None:
        return False
    record_audit(actor=actor, action="coupons.issuance_job_resumed", obj=job)
    from coupons.tasks import run_issuance_job as task

    transaction.on_commit(lambda: publish(f"issuance job {job.pk}", task, args=[job.pk]))
    return True


@transaction.atomic
def retry_issuance_job(*, job_id: int, actor: AbstractBaseUser | None = None, api_key: Any = None) -> IssuanceJob:
    """Queue a failed job again. It goes on where it stopped: targets already handled keep their
    coupon or refusal, and each claim still passes the budget. Only a failed job is retried (the
    beat resumes pending and running ones by itself, and never a failed one)."""
    job = IssuanceJob.objects.select_for_update().filter(pk=job_id).first()
    if job is None:
        raise errors.JobNotFound(f"No issuance job {job_id}.")
    if job.status != IssuanceJob.Status.FAILED:
        raise errors.NotFailed(
            gettext("Issuance job %(id)s is %(status)s: only a failed job is retried.")
            % {"id": job_id, "status": job.status}
        )
    previous = job.error
    # Targets are resolved in the transaction that sets `started_at`: without it none exist yet.
    job.status = IssuanceJob.Status.RUNNING if job.started_at else IssuanceJob.Status.PENDING
    job.error = ""
    job.finished_at = None
    job.save(update_fields=["status", "error", "finished_at"])
    record_audit(
        actor=actor,
        api_key=api_key,
        action="coupons.issuance_job_retried",
        obj=job,
        details={"previous_error": previous},
    )
    from coupons.tasks import run_issuance_job as task

    transaction.on_commit(lambda: publish(f"issuance job {job.pk}", task, args=[job.pk]))
    return job


@transaction.atomic
def retry_code_batch(*, batch_id: int, actor: AbstractBaseUser | None = None, api_key: Any = None) -> CodeBatch:
    """Queue a failed batch again; its generation is all or nothing, so it starts clean."""
    batch = CodeBatch.objects.select_for_update().filter(pk=batch_id).first()
    if batch is None:
        raise errors.BatchNotFound(f"No code batch {batch_id}.")
    if batch.status != CodeBatch.Status.FAILED:
        raise errors.NotFailed(
            gettext("Code batch %(id)s is %(status)s: only a failed batch is retried.")
            % {"id": batch_id, "status": batch.status}
        )
    previous = batch.error
    batch.status, batch.error, batch.finished_at = CodeBatch.Status.PENDING, "", None
    batch.save(update_fields=["status", "error", "finished_at"])
    record_audit(
        actor=actor,
        api_key=api_key,
        action="coupons.code_batch_retried",
        obj=batch,
        details={"previous_error": previous},
    )
    from coupons.tasks import generate_code_batch

    transaction.on_commit(lambda: publish(f"code batch {batch.pk}", generate_code_batch, args=[batch.pk]))
    return batch


@transaction.atomic
def revoke_coupons(*, coupon_ids: list[int], actor: AbstractBaseUser | None = None) -> int:
    """Withdraw live coupons (issued by mistake, abuse): they can no longer be used and what they
    committed returns to the budget. Redeemed coupons are left alone (roll the order back)."""
    ids = sorted(set(coupon_ids))
    with connection.cursor() as cursor:
        cursor.execute(
            """
            WITH gone AS (
                UPDATE coupons_coupon SET status = 'revoked', expired_at = %s
                 WHERE id = ANY(%s) AND status = 'available'
                RETURNING id, rule_id, reserved
            ), per_rule AS (
                SELECT rule_id, SUM(reserved) AS released FROM gone GROUP BY rule_id
            ), upd AS (
                UPDATE coupons_couponrule r SET committed = r.committed - per_rule.released
                  FROM per_rule WHERE r.id = per_rule.rule_id RETURNING r.id
            )
            SELECT array_agg(id) FROM gone
            """,
            [timezone.now(), ids],
        )
        revoked = cursor.fetchone()[0] or []
    for coupon in Coupon.objects.filter(pk__in=revoked):
        record_audit(actor=actor, action="coupons.coupon_revoked", obj=coupon, details={"rule": coupon.rule_id})
    return len(revoked)


@transaction.atomic
def save_rule(*, rule: CouponRule, changed: Sequence[str], actor: AbstractBaseUser | None = None) -> CouponRule:
    """Create a rule, or write the `changed` fields of an existing one. Only those columns are
    written, so the counters that claims move concurrently are never overwritten with the stale
    copy an edit form holds."""
    if rule.pk is None:
        rule.created_by = actor if getattr(actor, "is_authenticated", False) else None
        rule.save()
        record_audit(actor=actor, action="coupons.coupon_rule_created", obj=rule, details={"via": "admin"})
        return rule
    locked = CouponRule.objects.select_for_update().get(pk=rule.pk)
    before = {name: str(getattr(locked, name)) for name in changed}
    for name in changed:
        setattr(locked, name, getattr(rule, name))
    locked.full_clean()
    if changed:
        locked.save(update_fields=[*changed, "updated_at"])
        record_audit(
            actor=actor,
            action="coupons.coupon_rule_changed",
            obj=locked,
            details={name: {"from": before[name], "to": str(getattr(locked, name))} for name in changed},
        )
    return locked


# --- merges ----------------------------------------------------------------------------------


def on_profiles_merged(into: Profile, merged: Profile) -> None:
    """Merge listener (`profiles.lookup`), inside the merge's transaction: the survivor holds the
    merged profile's coupons and redemptions, and its claims count against every rule's per-user
    limit, so two user ids of one person cannot each claim a limit's worth. The merge itself is
    recorded by `profiles` (`ProfileMerge`)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            WITH gone AS (
                DELETE FROM coupons_ruleholding WHERE profile_id = %(merged)s RETURNING rule_id, issued
            )
            INSERT INTO coupons_ruleholding (rule_id, profile_id, issued)
            SELECT rule_id, %(into)s, issued FROM gone
            ON CONFLICT (rule_id, profile_id) DO UPDATE SET issued = coupons_ruleholding.issued + EXCLUDED.issued
            """,
            {"into": into.pk, "merged": merged.pk},
        )
    # Redemptions before coupons: the order refunds and rollbacks lock them in.
    Redemption.objects.filter(profile_id=merged.pk).update(profile_id=into.pk)
    Coupon.objects.filter(profile_id=merged.pk).update(profile_id=into.pk)
