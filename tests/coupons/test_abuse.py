"""Promotion abuse: scores from what opsloop sees, rules refusing the flagged, operators clearing."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from access.models import AuditEntry
from coupons import services
from coupons.models import AbuseScore, Coupon
from profiles.models import Profile
from tests.factories.coupons import CouponRuleFactory, paid_order, person
from tests.factories.profiles import ingest

pytestmark = pytest.mark.django_db
D = Decimal


@pytest.fixture
def operator(client, make_staff):
    client.force_login(make_staff("Operations"))
    return client


def long_known(user_id: str) -> None:
    """A person who joined a year ago (no "new account" signal)."""
    Profile.objects.filter(user_id=user_id).update(signup_at=timezone.now() - timedelta(days=365))


def same_device(*user_ids: str, device: str = "install-1") -> None:
    ingest([{"name": "app_open", "user_id": u, "anonymous_id": device, "event_id": uuid.uuid4()} for u in user_ids])


def refunded_coupon_orders(user_id: str, n: int = 2) -> None:
    for i in range(n):
        rule = CouponRuleFactory(value=D("5.00"))
        coupon = services.claim_coupon(rule_id=rule.pk, user_id=user_id)
        services.redeem_coupon(code=coupon.code, user_id=user_id, order_id=f"{user_id}-o{i}", order_amount=D("50"))
        services.rollback_order(order_id=f"{user_id}-o{i}")


def test_several_accounts_on_one_device_that_redeem_then_refund_score_over_the_default_threshold():
    for u in ("farm-1", "farm-2", "farm-3", "farm-4"):
        person(u)
    same_device("farm-1", "farm-2", "farm-3", "farm-4")
    refunded_coupon_orders("farm-1")
    long_known("farm-1")
    person("honest")
    same_device("honest", device="install-honest")
    paid_order(person("buyer"), order_id="b-1")

    services.refresh_abuse_scores()
    farm = AbuseScore.objects.get(profile__user_id="farm-1")
    assert farm.score == D("0.750")  # 3 other accounts (0.45) + every coupon order refunded (0.30)
    assert farm.evidence["accounts"] == 4 and farm.evidence["rolled_back"] == 2
    assert AbuseScore.objects.get(profile__user_id="farm-2").score == D("0.450")  # one signal: under 0.6
    assert not AbuseScore.objects.filter(profile__user_id__in=["honest", "buyer"]).exists()


def test_a_flagged_person_is_refused_by_claim_and_validate_naming_the_reason_until_cleared(make_api_client):
    shop = make_api_client("coupons:redeem")
    for u in ("ring-1", "ring-2", "ring-3", "ring-4"):
        person(u)
    same_device("ring-1", "ring-2", "ring-3", "ring-4")
    rule = CouponRuleFactory(per_user_limit=5)
    held = services.claim_coupon(rule_id=rule.pk, user_id="ring-1")  # claimed before any review
    refunded_coupon_orders("ring-1")
    long_known("ring-1")
    services.refresh_abuse_scores()
    assert AbuseScore.objects.get(profile__user_id="ring-1").score == D("0.750")

    claim = shop.post(f"/api/v1/coupon-rules/{rule.pk}/claim", {"user_id": "ring-1"}, format="json")
    assert claim.status_code == 422 and claim.json()["reason"] == "ABUSE_SUSPECTED", claim.json()
    quote = shop.post(
        "/api/v1/coupons/validate", {"code": held.code, "user_id": "ring-1", "order_amount": "80.00"}, format="json"
    )
    assert quote.json()["valid"] is False and quote.json()["reason"] == "ABUSE_SUSPECTED"
    lenient = CouponRuleFactory(abuse_threshold=None)
    assert services.claim_coupon(rule_id=lenient.pk, user_id="ring-1").created

    score = AbuseScore.objects.get(profile__user_id="ring-1")
    assert services.clear_abuse(profile_ids=[score.profile_id]) == 1
    assert shop.post(f"/api/v1/coupon-rules/{rule.pk}/claim", {"user_id": "ring-1"}, format="json").status_code == 201
    # A later scoring above what was cleared puts them back under review.
    AbuseScore.objects.filter(pk=score.pk).update(score=D("0.900"))
    again = shop.post(f"/api/v1/coupon-rules/{rule.pk}/claim", {"user_id": "ring-1"}, format="json")
    assert again.status_code == 422 and again.json()["reason"] == "ABUSE_SUSPECTED"
    assert Coupon.objects.filter(rule=rule, profile__user_id="ring-1").count() == 2


def test_new_accounts_that_only_claim_and_coupon_only_buyers_are_scored():
    newcomer = person("only-claims")
    Profile.objects.filter(pk=newcomer.pk).update(signup_at=timezone.now() - timedelta(days=3))
    buyer = person("coupon-buyer")
    long_known("coupon-buyer")
    for i in range(2):
        rule = CouponRuleFactory()
        coupon = services.claim_coupon(rule_id=rule.pk, user_id="coupon-buyer")
        services.redeem_coupon(code=coupon.code, user_id="coupon-buyer", order_id=f"cb-{i}", order_amount=D("40"))
        paid_order(buyer, order_id=f"cb-{i}")
    for _ in range(2):
        services.claim_coupon(rule_id=CouponRuleFactory().pk, user_id="only-claims")
    services.refresh_abuse_scores(now=timezone.now())
    assert AbuseScore.objects.get(profile=newcomer).evidence["parts"]["new_account_only_claims"] == 0.25
    bought = AbuseScore.objects.get(profile=buyer)
    assert bought.evidence["parts"]["coupon_only_orders"] == 0.25 and bought.score == D("0.250")


def test_the_admin_lists_the_flagged_with_their_evidence_and_clears_them_audited(operator):
    for u in ("adm-1", "adm-2"):
        person(u)
    same_device("adm-1", "adm-2")
    services.refresh_abuse_scores()
    page = operator.get(reverse("admin:coupons_abusescore_changelist"))
    assert page.status_code == 200
    assert b"adm-1" in page.content and b"2 account(s)" in page.content
    score = AbuseScore.objects.get(profile__user_id="adm-1")
    done = operator.post(
        reverse("admin:coupons_abusescore_changelist"),
        {"action": "clear", "_selected_action": [score.pk]},
    )
    assert done.status_code == 302
    score.refresh_from_db()
    assert score.cleared
    assert AuditEntry.objects.filter(action="coupons.abuse_cleared", object_id=str(score.pk)).exists()


def test_the_refund_signal_counts_orders_not_the_codes_stacked_on_them():
    def stacked_order(user_id: str, order_id: str) -> None:
        codes = [
            services.claim_coupon(rule_id=CouponRuleFactory(value=D("5.00"), stacking="stackable").pk, user_id=user_id)
            for _ in range(2)
        ]
        services.redeem_codes(codes=[c.code for c in codes], user_id=user_id, order_id=order_id, order_amount=D("50"))

    for u in ("one-refund", "half-refunded"):
        person(u)
        long_known(u)
    stacked_order("one-refund", "one-refund-o1")
    services.rollback_order(order_id="one-refund-o1")
    stacked_order("half-refunded", "half-o1")
    services.rollback_order(order_id="half-o1")
    stacked_order("half-refunded", "half-o2")

    services.refresh_abuse_scores()
    # One refunded order is not a pattern, however many codes it carried.
    assert not AbuseScore.objects.filter(profile__user_id="one-refund").exists()
    half = AbuseScore.objects.get(profile__user_id="half-refunded")
    assert (half.evidence["redemptions"], half.evidence["rolled_back"]) == (2, 1)
    assert half.score == D("0.150")  # one of two orders rolled back: half of 0.30
