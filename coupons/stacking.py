"""Several codes on one order: which of them apply, in which order, and for how much.

A pure function of the offers and the order amount, so validate and redeem answer the same and a
property test can draw a hundred thousand carts without a database. The order is total and
depends on nothing but the offers (priority, then rule id, then code), so the same codes in any
order give the same answer.

Stacking policies, pairwise:
- exclusive: alone on an order (the first applied exclusive offer refuses every other);
- stackable: with any other stackable offer;
- group: only with offers of the same stacking group.

Each offer is taken off what the earlier ones left (a percent of the rest, not of the gross), and
no combination takes the order below the highest floor among the offers applied: an offer that
would is trimmed to the floor, or refused when nothing of it fits (the discount is then smaller
than what its coupon reserved, which the budget allows).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal

CENT = Decimal("0.01")
ZERO = Decimal("0.00")

EXCLUSIVE = "exclusive"
STACKABLE = "stackable"
GROUP = "group"

# Refusal reasons of the stacking itself (a code's own refusals keep their own reasons).
DUPLICATE_CODE = "DUPLICATE_CODE"
SAME_OFFER = "SAME_OFFER"
NOT_STACKABLE = "NOT_STACKABLE"
FLOOR_REACHED = "FLOOR_REACHED"
NOTHING_OFF = "NOTHING_OFF"

REFUSAL_DETAILS = {
    DUPLICATE_CODE: "The code is given twice.",
    SAME_OFFER: "Another code of the same offer already applies to this order.",
    NOT_STACKABLE: "This offer does not combine with the offers already applied.",
    FLOOR_REACHED: "The offers already applied take the order down to its floor.",
    NOTHING_OFF: "The offer takes nothing off what is left of this order.",
}


@dataclass(frozen=True)
class Offer:
    """One code as the stacking sees it: its rule's benefit and stacking settings, and `cap`, the
    most the coupon may cost (its reserve under a budget, or None)."""

    code: str
    rule_id: int
    kind: str
    value: Decimal
    max_discount: Decimal | None = None
    cap: Decimal | None = None
    priority: int = 0
    stacking: str = EXCLUSIVE
    group: str = ""
    floor_percent: Decimal = ZERO

    def sort_key(self) -> tuple:
        return (-self.priority, self.rule_id, self.code)


@dataclass(frozen=True)
class Applied:
    offer: Offer
    discount: Decimal


@dataclass(frozen=True)
class Refused:
    code: str
    reason: str
    detail: str


@dataclass
class Stack:
    order_amount: Decimal
    applied: list[Applied] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)

    @property
    def discount(self) -> Decimal:
        return sum((a.discount for a in self.applied), ZERO)

    @property
    def final_amount(self) -> Decimal:
        return self.order_amount - self.discount


def offer_discount(offer: Offer, amount: Decimal) -> Decimal:
    """What the offer takes off `amount` on its own (as `services.discount_for`, then its cap)."""
    if offer.kind == "percent":
        discount = (amount * offer.value / 100).quantize(CENT, rounding=ROUND_HALF_UP)
        if offer.max_discount is not None:
            discount = min(discount, offer.max_discount)
    else:
        discount = offer.value
    if offer.cap is not None:
        discount = min(discount, offer.cap)
    return max(min(discount, amount), ZERO)


def floor_amount(order_amount: Decimal, floor_percent: Decimal) -> Decimal:
    """The least an order may cost after discounts, rounded up to the cent (never below the floor)."""
    return (order_amount * floor_percent / 100).quantize(CENT, rounding=ROUND_CEILING)


def _combines(offer: Offer, other: Offer) -> bool:
    if EXCLUSIVE in (offer.stacking, other.stacking):
        return False
    if offer.stacking == GROUP or other.stacking == GROUP:
        return offer.stacking == other.stacking and offer.group == other.group
    return True


def stack(
    offers: Sequence[Offer], order_amount: Decimal, refused: Sequence[Refused] = (), applied: Sequence[Applied] = ()
) -> Stack:
    """Apply `offers` to an order of `order_amount`; `refused` are codes already refused on their
    own (unknown, expired ...), carried into the answer in the same order as the rest. `applied`
    are offers the order already carries (redeemed earlier, their discounts fixed): they come
    first in the answer, and `offers` are stacked after them, under their policies and floors."""
    result = Stack(order_amount=order_amount)
    refusals = list(refused)
    seen_codes: set[str] = {r.code for r in refused}
    seen_rules: set[int] = set()
    remaining = order_amount
    floor_percent = ZERO
    for earlier in applied:
        seen_codes.add(earlier.offer.code)
        seen_rules.add(earlier.offer.rule_id)
        floor_percent = max(floor_percent, earlier.offer.floor_percent)
        remaining -= earlier.discount
        result.applied.append(earlier)
    for offer in sorted(offers, key=Offer.sort_key):
        if offer.code in seen_codes:
            refusals.append(Refused(offer.code, DUPLICATE_CODE, REFUSAL_DETAILS[DUPLICATE_CODE]))
            continue
        seen_codes.add(offer.code)
        if offer.rule_id in seen_rules:
            refusals.append(Refused(offer.code, SAME_OFFER, REFUSAL_DETAILS[SAME_OFFER]))
            continue
        if not all(_combines(offer, a.offer) for a in result.applied):
            refusals.append(Refused(offer.code, NOT_STACKABLE, REFUSAL_DETAILS[NOT_STACKABLE]))
            continue
        floor = floor_amount(order_amount, max(floor_percent, offer.floor_percent))
        alone = offer_discount(offer, remaining)
        discount = min(alone, max(remaining - floor, ZERO))
        if discount <= 0:
            # A code is spent by the order it applies to: one that takes nothing off stays unused.
            reason = FLOOR_REACHED if alone > 0 else NOTHING_OFF
            refusals.append(Refused(offer.code, reason, REFUSAL_DETAILS[reason]))
            continue
        seen_rules.add(offer.rule_id)
        floor_percent = max(floor_percent, offer.floor_percent)
        remaining -= discount
        result.applied.append(Applied(offer, discount))
    result.refused = sorted(refusals, key=lambda r: (r.code, r.reason))
    return result
