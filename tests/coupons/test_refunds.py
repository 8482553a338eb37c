"""`order_refunded` events sent to the tracking API give a coupon order's money back."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from django.utils import timezone

from coupons import selectors, services
from coupons.models import Coupon, CouponRule, CouponStatus, OrderRefund, Redemption
from tests.factories.coupons import CouponRuleFactory, person

pytestmark = pytest.mark.django_db
D = Decimal


@pytest.fixture
def tracker(make_api_client):
    return make_api_client("events:write")


def refund(client, order_id: str, amount: str | None = None, event_id: str | None = None):
    properties = {"order_id": order_id} if amount is None else {"order_id": order_id, "amount": amount}
    event = {
        "event_id": event_id or str(uuid.uuid4()),
        "name": "order_refunded",
        "kind": "business",
        "timestamp": timezone.now().isoformat(),
        "user_id": "refunder",
        "properties": properties,
    }
    response = client.post("/api/v1/events", {"events": [event]}, format="json")
    assert response.status_code == 200 and response.json()["accepted"] + response.json()["duplicates"] == 1
    return event["event_id"]


def redeemed(order_id: str = "o-1") -> tuple[CouponRule, Coupon]:
    person("refunder")
    rule = CouponRuleFactory(value=D("20.00"), budget=D("100.00"), valid_days=30)
    coupon = services.claim_coupon(rule_id=rule.pk, user_id="refunder")
    services.redeem_coupon(code=coupon.code, user_id="refunder", order_id=order_id, order_amount=D("150.00"))
    return rule, coupon


def test_a_full_refund_returns_the_discount_to_the_budget_and_the_coupon_to_its_holder(tracker):
    rule, coupon = redeemed()
    event_id = refund(tracker, "o-1")
    rule.refresh_from_db()
    coupon.refresh_from_db()
    assert (rule.spent, rule.committed, rule.redeemed_count) == (D("0.00"), D("20.00"), 0)
    assert coupon.status == CouponStatus.AVAILABLE
    assert Redemption.objects.get(order_id="o-1").rolled_back_at is not None
    assert OrderRefund.objects.get(event_id=event_id).outcome == OrderRefund.Outcome.ROLLED_BACK


def test_the_same_refund_event_twice_is_applied_once(tracker):
    redeemed()
    event_id = refund(tracker, "o-1", amount="50.00")
    refund(tracker, "o-1", amount="50.00", event_id=event_id)  # a duplicate delivery
    assert services.apply_refund(event_id=event_id, order_id="o-1", amount=D("50.00")) is None  # replayed by hand
    assert Redemption.objects.get(order_id="o-1").refunded_amount == D("50.00")


def test_a_partial_refund_lowers_the_counted_revenue_and_keeps_the_discount(tracker):
    rule, _ = redeemed()
    refund(tracker, "o-1", amount="50.00")
    rule.refresh_from_db()
    assert rule.spent == D("20.00") and rule.redeemed_count == 1
    assert selectors.rule_report(rule=rule).order_revenue == D("100.00")
    refund(tracker, "o-1", amount="100.00")  # the rest: now the whole order is refunded
    rule.refresh_from_db()
    assert rule.spent == D("0.00")
    assert Redemption.objects.get(order_id="o-1").rolled_back_at is not None


def test_a_refund_of_an_order_without_coupons_changes_nothing(tracker):
    rule, _ = redeemed()
    refund(tracker, "another-order")
    rule.refresh_from_db()
    assert rule.spent == D("20.00")
    assert not OrderRefund.objects.exists()


def test_a_refund_after_the_coupon_expired_returns_the_money_but_not_the_coupon(tracker):
    rule, coupon = redeemed()
    Coupon.objects.filter(pk=coupon.pk).update(expires_at=timezone.now() - timezone.timedelta(minutes=1))
    refund(tracker, "o-1")
    rule.refresh_from_db()
    coupon.refresh_from_db()
    assert (rule.spent, rule.committed) == (D("0.00"), D("0.00"))
    assert coupon.status == CouponStatus.EXPIRED


def test_refunding_what_the_customer_paid_is_a_full_refund(tracker):
    rule, _ = redeemed()  # a 150.00 order with 20.00 off: the customer paid 130.00
    refund(tracker, "o-1", amount="100.00")
    assert Redemption.objects.get(order_id="o-1").rolled_back_at is None
    event_id = refund(tracker, "o-1", amount="30.00")
    rule.refresh_from_db()
    assert OrderRefund.objects.get(event_id=event_id).outcome == OrderRefund.Outcome.ROLLED_BACK
    assert Redemption.objects.get(order_id="o-1").rolled_back_at is not None
    assert (rule.spent, rule.redeemed_count) == (D("0.00"), 0)


def test_a_refund_amount_larger_than_money_columns_is_capped_at_the_order_and_never_fails_the_batch(tracker):
    rule, _ = redeemed()
    event_id = refund(tracker, "o-1", amount="999999999999999")  # 15 digits: valid for tracking
    stored = OrderRefund.objects.get(event_id=event_id)
    assert (stored.amount, stored.outcome) == (D("150.00"), OrderRefund.Outcome.ROLLED_BACK)
    rule.refresh_from_db()
    assert rule.spent == D("0.00")


def test_the_refunds_of_one_batch_are_applied_each_on_its_own(tracker):
    person("refunder")
    rule = CouponRuleFactory(value=D("5.00"), budget=D("100.00"), valid_days=30, per_user_limit=5)
    for order_id in ("o-b", "o-a"):
        coupon = services.claim_coupon(rule_id=rule.pk, user_id="refunder")
        services.redeem_coupon(code=coupon.code, user_id="refunder", order_id=order_id, order_amount=D("50.00"))
    events = [
        {
            "event_id": str(uuid.uuid4()),
            "name": "order_refunded",
            "kind": "business",
            "timestamp": timezone.now().isoformat(),
            "user_id": "refunder",
            "properties": {"order_id": order_id, "amount": amount},
        }
        for order_id, amount in (("o-b", "10.00"), ("o-a", "999999999999999"), ("o-b", "5.00"))
    ]
    response = tracker.post("/api/v1/events", {"events": events}, format="json")
    assert response.status_code == 200 and response.json()["accepted"] == 3, response.json()
    assert Redemption.objects.get(order_id="o-a").rolled_back_at is not None
    assert Redemption.objects.get(order_id="o-b").refunded_amount == D("15.00")
    assert OrderRefund.objects.count() == 3
