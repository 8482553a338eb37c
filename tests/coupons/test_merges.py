"""Merges carry coupons: when `identify` merges two profiles, the per-user limit counts the merged
profile's claims, and its coupons and redemptions follow the survivor."""

from __future__ import annotations

from decimal import Decimal

import pytest

from coupons import errors, services
from coupons.models import Coupon, Redemption, RuleHolding
from profiles.models import Profile
from profiles.services import identify
from tests.factories.coupons import CouponRuleFactory, person

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


def _merged_away_and_survivor(*, survivor_tier: str | None = None) -> tuple[Profile, Profile]:
    survivor = person("u1", tier=survivor_tier)
    identify(user_id="u2", identities=[PHONE])
    stale = Profile.objects.get(user_id="u2")  # held by a caller from before the merge
    identify(user_id=survivor.user_id, identities=[PHONE])
    assert Profile.objects.get(pk=stale.pk).merged_into_id == survivor.pk
    return stale, survivor


def test_a_profile_merged_away_is_judged_as_its_survivor():
    rule = CouponRuleFactory(eligible_tiers=["vip"])
    stale, survivor = _merged_away_and_survivor(survivor_tier="vip")
    coupon = services.issue_coupon(rule=rule, profile=stale, request_id="r-1")
    assert coupon.profile_id == survivor.pk


def test_a_replay_for_a_profile_merged_away_returns_the_first_coupon():
    rule = CouponRuleFactory()
    person("u1")
    identify(user_id="u2", identities=[PHONE])
    stale = Profile.objects.get(user_id="u2")
    first = services.issue_coupon(rule=rule, profile=stale, request_id="r-1")
    identify(user_id="u1", identities=[PHONE])  # u2 merged into u1: the coupon follows
    rule.state = "paused"
    rule.save(update_fields=["state"])
    replay = services.issue_coupon(rule=rule, profile=stale, request_id="r-1")
    assert (replay.pk, replay.created) == (first.pk, False)
