"""The coupons endpoints as the contract fixes them: paths, fields, status codes and reasons."""

from __future__ import annotations

from decimal import Decimal

import pytest

from access.models import AuditEntry
from coupons import services
from coupons.models import Coupon, CouponRule, CouponStatus
from tests.factories.coupons import CouponRuleFactory, PercentRuleFactory, ThresholdRuleFactory, person

pytestmark = pytest.mark.django_db
D = Decimal


@pytest.fixture
def shop(make_api_client):
    return make_api_client("coupons:redeem")


@pytest.fixture
def ops(make_api_client):
    return make_api_client("manage")


def claim(client, rule, user_id, request_id="req-1"):
    return client.post(
        f"/api/v1/coupon-rules/{rule.pk}/claim", {"user_id": user_id, "request_id": request_id}, format="json"
    )


# --- claim -------------------------------------------------------------------------------------


def test_claim_issues_a_coupon_with_201_and_a_replay_returns_it_with_200(shop):
    rule = CouponRuleFactory(valid_days=30)
    first = claim(shop, rule, "user-a")
    again = claim(shop, rule, "user-a")
    assert first.status_code == 201, first.json()
    assert set(first.json()) >= {"code", "rule", "starts_at", "expires_at", "status"}
    assert first.json()["rule"] == rule.pk and first.json()["status"] == "available"
    assert again.status_code == 200 and again.json()["code"] == first.json()["code"]
    assert Coupon.objects.filter(rule=rule).count() == 1


def test_claim_for_a_user_never_seen_creates_the_profile(shop):
    from profiles.selectors import profile_for_user_id

    response = claim(shop, CouponRuleFactory(), "brand-new-user")
    assert response.status_code == 201
    assert profile_for_user_id("brand-new-user") is not None


def test_claim_past_the_per_user_limit_is_409_with_reason(shop):
    rule = CouponRuleFactory(per_user_limit=1)
    claim(shop, rule, "user-b", "r1")
    response = claim(shop, rule, "user-b", "r2")
    assert response.status_code == 409
    assert response.json()["reason"] == "PER_USER_LIMIT_REACHED"


def test_claim_over_budget_is_409_and_moves_no_money(shop):
    rule = CouponRuleFactory(value=D("20"), budget=D("30"))
    claim(shop, rule, "user-c", "r1")
    response = claim(shop, rule, "user-d", "r2")
    rule.refresh_from_db()
    assert response.status_code == 409 and response.json()["reason"] == "BUDGET_EXHAUSTED"
    assert (rule.committed, rule.issued_count) == (D("20.00"), 1)


def test_claim_by_an_ineligible_user_is_422_saying_why(shop):
    rule = ThresholdRuleFactory(eligible_tiers=["core"])
    user = person(tier="ordinary")
    response = claim(shop, rule, user.user_id)
    assert response.status_code == 422
    assert response.json()["reason"] == "TIER_NOT_ELIGIBLE"
    assert "ordinary" in response.json()["detail"]


def test_claim_of_a_paused_rule_is_422_and_of_an_unknown_rule_404(shop):
    paused = CouponRuleFactory(state="paused")
    assert claim(shop, paused, "user-e").json()["reason"] == "RULE_NOT_ACTIVE"
    response = shop.post("/api/v1/coupon-rules/999999/claim", {"user_id": "x"}, format="json")
    assert response.status_code == 404 and response.json()["reason"] == "RULE_NOT_FOUND"


def test_a_paused_rule_is_not_active_even_to_a_holder_and_a_replay_still_gets_its_coupon(shop):
    rule = CouponRuleFactory(per_user_limit=1)
    first = claim(shop, rule, "holder", "h-1")
    services.change_rule_state(rule=rule, state="paused")
    assert claim(shop, rule, "holder", "h-2").json()["reason"] == "RULE_NOT_ACTIVE"
    again = claim(shop, rule, "holder", "h-1")
    assert again.status_code == 200 and again.json()["code"] == first.json()["code"]


def test_claim_without_a_user_id_is_400_naming_the_field(shop):
    response = shop.post(f"/api/v1/coupon-rules/{CouponRuleFactory().pk}/claim", {}, format="json")
    assert response.status_code == 400
    assert "user_id" in response.json()


# --- validate ----------------------------------------------------------------------------------


def test_validate_answers_discount_and_final_amount(shop):
    rule = PercentRuleFactory(value=D("10"), max_discount=D("30"))
    code = claim(shop, rule, "user-f").json()["code"]
    response = shop.post(
        "/api/v1/coupons/validate", {"code": code, "user_id": "user-f", "order_amount": "120.00"}, format="json"
    )
    assert response.status_code == 200
    assert response.json() == {"valid": True, "discount": "12.00", "final_amount": "108.00"}


def test_validate_explains_ineligibility_with_a_reason(shop):
    rule = ThresholdRuleFactory(value=D("100"), min_spend=D("1000"))
    code = claim(shop, rule, "user-g").json()["code"]
    response = shop.post(
        "/api/v1/coupons/validate", {"code": code, "user_id": "user-g", "order_amount": "500.00"}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["valid"] is False and response.json()["reason"] == "MIN_SPEND_NOT_MET"


def test_validate_of_an_unknown_code_is_404(shop):
    response = shop.post(
        "/api/v1/coupons/validate", {"code": "ABCD-EFGH-JKMN-P", "user_id": "u", "order_amount": "5"}, format="json"
    )
    assert response.status_code == 404


@pytest.mark.parametrize("amount", ["-5", "0", "abc", "1e30", "12.345", None])
def test_validate_refuses_bad_amounts_with_400_on_the_field(shop, amount):
    response = shop.post(
        "/api/v1/coupons/validate", {"code": "X", "user_id": "u", "order_amount": amount}, format="json"
    )
    assert response.status_code == 400
    assert "order_amount" in response.json()


# --- redeem and rollback -----------------------------------------------------------------------


def redeem(client, code, user_id, order_id, amount="100.00"):
    return client.post(
        "/api/v1/coupons/redeem",
        {"code": code, "user_id": user_id, "order_id": order_id, "order_amount": amount},
        format="json",
    )


def test_redeem_answers_the_redemption_and_a_replay_the_same_one(shop):
    code = claim(shop, CouponRuleFactory(value=D("20")), "user-h").json()["code"]
    first = redeem(shop, code, "user-h", "order-1")
    again = redeem(shop, code, "user-h", "order-1")
    assert first.status_code == 200
    body = first.json()
    assert (body["discount"], body["final_amount"]) == ("20.00", "80.00")
    assert again.status_code == 200 and again.json()["redemption_id"] == body["redemption_id"]


def test_redeem_for_another_order_is_409(shop):
    code = claim(shop, CouponRuleFactory(), "user-i").json()["code"]
    redeem(shop, code, "user-i", "order-2")
    response = redeem(shop, code, "user-i", "order-3")
    assert response.status_code == 409 and response.json()["reason"] == "COUPON_ALREADY_USED"


def test_redeem_of_a_code_of_another_user_is_422_and_spends_nothing(shop):
    rule = CouponRuleFactory(budget=D("100"))
    code = claim(shop, rule, "user-j").json()["code"]
    response = redeem(shop, code, "someone-else", "order-4")
    rule.refresh_from_db()
    assert response.status_code == 422 and response.json()["reason"] == "COUPON_NOT_YOURS"
    assert rule.spent == D("0.00")


def test_rollback_returns_the_money_and_unknown_order_is_404(shop):
    rule = CouponRuleFactory(budget=D("100"))
    code = claim(shop, rule, "user-k").json()["code"]
    redeem(shop, code, "user-k", "order-5")
    response = shop.post("/api/v1/coupons/rollback", {"order_id": "order-5"}, format="json")
    rule.refresh_from_db()
    assert response.status_code == 200
    assert response.json()["returned"] == "20.00"
    assert response.json()["redemptions"][0]["coupon_returned"] is True
    assert (rule.spent, rule.committed) == (D("0.00"), D("20.00"))
    missing = shop.post("/api/v1/coupons/rollback", {"order_id": "nope"}, format="json")
    assert missing.status_code == 404 and missing.json()["reason"] == "REDEMPTION_NOT_FOUND"


# --- rules (manage) ----------------------------------------------------------------------------


def rule_body(**overrides):
    body = {"name": "Spring sale", "kind": "fixed", "value": "20.00", "budget": "1000.00", "per_user_limit": 1}
    body.update(overrides)
    return body


def test_create_rule_answers_201_with_id_and_state_and_is_audited(ops):
    response = ops.post("/api/v1/coupon-rules", rule_body(), format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["state"] == "active" and CouponRule.objects.filter(pk=body["id"]).exists()
    assert AuditEntry.objects.filter(action="coupons.coupon_rule_created", object_id=str(body["id"])).exists()


def test_create_rule_in_draft_when_asked(ops):
    assert ops.post("/api/v1/coupon-rules", rule_body(state="draft"), format="json").json()["state"] == "draft"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"kind": "percent", "value": "150"}, "value"),
        ({"kind": "percent", "value": "10"}, "max_discount"),
        ({"value": "-3"}, "value"),
        ({"value": "0"}, "value"),
        ({"value": "lots"}, "value"),
        ({"budget": "99999999999999"}, "budget"),
        ({"valid_from": "2026-05-02T00:00:00Z", "valid_until": "2026-05-01T00:00:00Z"}, "valid_until"),
        ({"valid_from": "2026-05-02T00:00:00"}, "valid_from"),
        ({"kind": "bogus"}, "kind"),
        ({"per_user_limit": 0}, "per_user_limit"),
    ],
)
def test_create_rule_refuses_bad_input_with_400_naming_the_field(ops, overrides, field):
    response = ops.post("/api/v1/coupon-rules", rule_body(**overrides), format="json")
    assert response.status_code == 400, response.json()
    assert field in response.json()
    assert not CouponRule.objects.exists()


def test_rule_state_endpoints_pause_activate_and_end(ops, shop):
    rule = CouponRuleFactory()
    assert ops.post(f"/api/v1/coupon-rules/{rule.pk}/pause").json()["state"] == "paused"
    assert claim(shop, rule, "user-l").status_code == 422
    assert ops.post(f"/api/v1/coupon-rules/{rule.pk}/activate").json()["state"] == "active"
    assert ops.post(f"/api/v1/coupon-rules/{rule.pk}/end").json()["state"] == "ended"
    response = ops.post(f"/api/v1/coupon-rules/{rule.pk}/activate")
    assert response.status_code == 409 and response.json()["reason"] == "INVALID_STATE_CHANGE"


def test_report_answers_the_contract_fields_that_add_up(ops, shop):
    rule = CouponRuleFactory(value=D("20"), budget=D("100"))
    code = claim(shop, rule, "user-m").json()["code"]
    claim(shop, rule, "user-n", "req-2")
    redeem(shop, code, "user-m", "order-6", amount="150.00")
    body = ops.get(f"/api/v1/coupon-rules/{rule.pk}/report").json()
    contract = {"issued", "redeemed", "unused", "expired", "budget", "committed", "spent", "remaining"}
    assert contract | {"order_revenue", "roi"} <= set(body)
    assert (body["issued"], body["redeemed"], body["unused"], body["expired"]) == (2, 1, 1, 0)
    assert (body["budget"], body["committed"], body["spent"], body["remaining"]) == (
        "100.00",
        "20.00",
        "20.00",
        "60.00",
    )
    assert body["order_revenue"] == "150.00"
    assert body["roi"] == pytest.approx((150 - 20) / 20)


def test_source_report_needs_its_prefix(ops):
    assert ops.get("/api/v1/coupon-reports").status_code == 400
    assert ops.get("/api/v1/coupon-reports?source_ref_prefix=campaign:1:").json()["issued"] == 0


# --- profile coupons (profiles:read) ------------------------------------------------------------


def test_profile_coupons_filter_by_status(make_api_client):
    reader = make_api_client("profiles:read")
    pia = person()
    rule = CouponRuleFactory(per_user_limit=3)
    used = services.issue_coupon(rule=rule, profile=pia)
    services.issue_coupon(rule=rule, profile=pia)
    services.redeem_coupon(code=used.code, user_id=pia.user_id, order_id="o", order_amount=D("50"))
    base = f"/api/v1/profiles/{pia.user_id}/coupons"
    assert reader.get(base).json()["count"] == 2
    redeemed = reader.get(base + "?status=redeemed").json()["results"]
    assert [c["code"] for c in redeemed] == [used.code]
    assert redeemed[0]["status"] == CouponStatus.REDEEMED
    assert reader.get(base + "?status=available").json()["count"] == 1
    assert reader.get(base + "?status=bogus").status_code == 400
    assert reader.get("/api/v1/profiles/nobody-here/coupons").status_code == 404


def test_profile_coupons_list_runs_a_fixed_number_of_queries(make_api_client, django_assert_max_num_queries):
    reader = make_api_client("profiles:read")
    quinn = person()
    rule = CouponRuleFactory(per_user_limit=10)
    for _ in range(8):
        services.issue_coupon(rule=rule, profile=quinn)
    with django_assert_max_num_queries(8):
        response = reader.get(f"/api/v1/profiles/{quinn.user_id}/coupons")
    assert response.json()["count"] == 8


def test_create_rule_refuses_a_far_off_year_with_400(ops):
    response = ops.post("/api/v1/coupon-rules", rule_body(valid_from="9999-12-31T23:59:59-12:00"), format="json")
    assert response.status_code == 400 and "valid_from" in response.json()


def test_malformed_ids_are_json_404s_not_html(shop, make_api_client):
    response = shop.post("/api/v1/coupon-rules/not-a-number/claim", {"user_id": "u"}, format="json")
    assert response.status_code == 404 and response.json()["reason"] == "RULE_NOT_FOUND"
    reader = make_api_client("profiles:read")
    response = reader.get("/api/v1/profiles/a%00b/coupons")
    assert response.status_code == 404 and response.json()["reason"] == "USER_NOT_FOUND"


# --- the hot path ------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_claim_costs_one_query_and_a_redemption_five(make_api_client, django_assert_num_queries):
    shop = make_api_client("coupons:redeem")
    rule = CouponRuleFactory(value=D("10.00"), budget=D("100.00"))
    person(user_id="hot-1")
    claim(shop, rule, "warm-up", "w")  # the key is checked once, then remembered
    with django_assert_num_queries(1):  # the claim statement: no key, rule or profile look-up
        response = claim(shop, rule, "hot-1", "h1")
    assert response.status_code == 201
    # In one transaction (BEGIN, COMMIT): the order's lock (its redemptions are judged one after
    # the other), one read (coupon, rule, order, caller), one write.
    with django_assert_num_queries(5):
        redeemed = redeem(shop, response.json()["code"], "hot-1", "hot-order", "35.00")
    assert redeemed.status_code == 200 and redeemed.json()["final_amount"] == "25.00"
    rule.refresh_from_db()
    assert (rule.issued_count, rule.redeemed_count, rule.committed, rule.spent) == (2, 1, D("10.00"), D("10.00"))


def test_hand_built_outputs_equal_what_the_serializers_derive_from_the_model(shop):
    from rest_framework import serializers as drf

    from coupons.models import Redemption
    from coupons.serializers import CouponOutput, CouponRedemptionOutput

    rule = CouponRuleFactory(value=D("15.00"), valid_days=7)
    code = claim(shop, rule, "shape-1").json()["code"]
    redeem(shop, code, "shape-1", "shape-order", "40.10")
    shop.post("/api/v1/coupons/rollback", {"order_id": "shape-order"}, format="json")
    services.issue_coupon(rule=rule, profile=person(), source="bulk", source_ref="issuance:1")
    assert Coupon.objects.filter(rule=rule).count() == 2
    for coupon in Coupon.objects.filter(rule=rule).select_related("rule"):
        derived = drf.ModelSerializer.to_representation(CouponOutput(), coupon)
        assert CouponOutput(coupon).data == dict(derived)
    redemption = Redemption.objects.select_related("coupon").get(order_id="shape-order")
    assert redemption.rolled_back_at is not None and redemption.coupon_returned is True
    derived = drf.ModelSerializer.to_representation(CouponRedemptionOutput(), redemption)
    assert CouponRedemptionOutput(redemption).data == dict(derived)
