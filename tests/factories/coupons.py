"""Factories for coupon rules and the people they are offered to."""

from __future__ import annotations

from decimal import Decimal

import factory
from django.utils import timezone

from coupons.models import CouponRule, OrderRefund, RuleKind, RuleState
from crm.models import CustomerValue, ValueTier
from profiles.models import Profile, ProfileTag, Tag
from tests.factories.profiles import ProfileFactory, ingest


class CouponRuleFactory(factory.django.DjangoModelFactory):
    """An active fixed-amount rule, 20 off, no limits but one coupon per user."""

    class Meta:
        model = CouponRule

    name = factory.Sequence(lambda n: f"Offer {n}")
    kind = RuleKind.FIXED
    value = Decimal("20.00")
    min_spend = Decimal("0.00")
    state = RuleState.ACTIVE
    per_user_limit = 1


class PercentRuleFactory(CouponRuleFactory):
    kind = RuleKind.PERCENT
    value = Decimal("10.00")
    max_discount = Decimal("30.00")


class ThresholdRuleFactory(CouponRuleFactory):
    kind = RuleKind.THRESHOLD
    value = Decimal("100.00")
    min_spend = Decimal("1000.00")


class OrderRefundFactory(factory.django.DjangoModelFactory):
    """A refund of a whole order as ingestion records it: pending, not applied yet."""

    class Meta:
        model = OrderRefund

    event_id = factory.Sequence(lambda n: f"refund-event-{n}")
    order_id = "o-1"
    amount = None


def person(user_id: str | None = None, *, tier: str | None = None, tags: tuple[str, ...] = ()) -> Profile:
    """A profile (with its user_id identity), optionally in a value tier and carrying tags."""
    profile = ProfileFactory(user_id=user_id) if user_id else ProfileFactory()
    if tier:
        value_tier, _ = ValueTier.objects.get_or_create(slug=tier, defaults={"name": tier.title()})
        CustomerValue.objects.update_or_create(profile=profile, defaults={"tier": value_tier})
    for name in tags:
        tag, _ = Tag.objects.get_or_create(name=name)
        ProfileTag.objects.get_or_create(profile=profile, tag=tag)
    return profile


def paid_order(profile: Profile, amount: str = "120.00", order_id: str = "earlier-order") -> None:
    """An `order_paid` event of this person an hour ago."""
    ingest(
        [
            {
                "name": "order_paid",
                "user_id": profile.user_id,
                "timestamp": timezone.now() - timezone.timedelta(hours=1),
                "properties": {"order_id": order_id, "amount": amount},
            }
        ]
    )
