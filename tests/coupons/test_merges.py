"""Merges carry coupons: when `identify` merges two profiles, the per-user limit counts the merged
profile's claims, and its coupons and redemptions follow the survivor."""

from __future__ import annotations

from decimal import Decimal

import pytest

from coupons import errors, services
from coupons.models import Coupon, Redemption, RuleHolding
from profiles.models import Profile
from profiles.services import identify
from tests.factories.coupons import CouponRuleFactory

pytestmark = pytest.mark.django_db

PHONE = ("phone", "+8613800138000")


def test_the_per_user_limit_counts_the_merged_profiles_claims():
    rule = CouponRuleFactory(per_user_limit=1)
    identify(user_id="u2", identities=[PHONE])
    first = services.claim_coupon(rule_id=rule.pk, user_id="u2")
    identify(user_id="u1", identities=[PHONE])  # the same person: u2 is merged into u1
    assert Profile.objects.get(user_id="u2").merged_into == Profile.objects.get(user_id="u1")
    with pytest.raises(errors.PerUserLimitReached):
        services.claim_coupon(rule_id=rule.pk, user_id="u1")
    with pytest.raises(errors.PerUserLimitReached):
        services.claim_coupon(rule_id=rule.pk, user_id="u2")
    assert Coupon.objects.filter(rule=rule).count() == 1
    assert RuleHolding.objects.get(rule=rule).issued == 1
    assert first.pk


def test_limits_of_both_profiles_add_up():
    rule = CouponRuleFactory(per_user_limit=3)
    identify(user_id="u1")
    services.claim_coupon(rule_id=rule.pk, user_id="u1")
    identify(user_id="u2", identities=[PHONE])
    services.claim_coupon(rule_id=rule.pk, user_id="u2")
    identify(user_id="u1", identities=[PHONE])
    survivor = Profile.objects.get(user_id="u1")
    assert list(RuleHolding.objects.filter(rule=rule).values_list("profile_id", "issued")) == [(survivor.pk, 2)]
    services.claim_coupon(rule_id=rule.pk, user_id="u1")
    with pytest.raises(errors.PerUserLimitReached):
        services.claim_coupon(rule_id=rule.pk, user_id="u1")


def test_coupons_and_redemptions_follow_the_survivor():
    rule = CouponRuleFactory(per_user_limit=2)
    identify(user_id="u2", identities=[PHONE])
    used = services.claim_coupon(rule_id=rule.pk, user_id="u2")
    unused = services.claim_coupon(rule_id=rule.pk, user_id="u2")
    services.redeem_coupon(code=used.code, user_id="u2", order_id="o-1", order_amount=Decimal("100"))
    identify(user_id="u1", identities=[PHONE])
    survivor = Profile.objects.get(user_id="u1")
    assert set(Coupon.objects.filter(rule=rule).values_list("profile_id", flat=True)) == {survivor.pk}
    assert Redemption.objects.get(order_id="o-1").profile_id == survivor.pk
    # The survivor uses the merged profile's unused coupon as their own.
    redemption = services.redeem_coupon(code=unused.code, user_id="u1", order_id="o-2", order_amount=Decimal("100"))
    assert redemption.profile_id == survivor.pk
