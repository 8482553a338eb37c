"""Several codes on one order: priority, stacking policies, floors; the pure rule and the API."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coupons import services, stacking
from coupons.models import Coupon, CouponRule, CouponStatus, Redemption
from tests.factories.coupons import CouponRuleFactory, OrderRefundFactory, PercentRuleFactory, person

D = Decimal
CARTS_PER_RULE_SET = 500
RULE_SETS = 200  # 200 rule sets x 500 carts: 100,000 carts

offers_st = st.builds(
    lambda kind, value, cap, budget_cap, priority, policy, group, floor, rule_id: stacking.Offer(
        code="",
        rule_id=rule_id,
        kind=kind,
        value=D(value) / 100 if kind == "fixed" else D(min(value, 10000)) / 100,
        max_discount=D(cap) / 100 if kind == "percent" and cap else None,
        cap=D(budget_cap) / 100 if budget_cap else None,
        priority=priority,
        stacking=policy,
        group=group if policy == stacking.GROUP else "",
        floor_percent=D(floor) / 100,
    ),
    kind=st.sampled_from(["fixed", "percent", "threshold"]),
    value=st.integers(1, 50_000),
    cap=st.one_of(st.none(), st.integers(1, 20_000)),
    budget_cap=st.one_of(st.none(), st.integers(1, 20_000)),
    priority=st.integers(-3, 3),
    policy=st.sampled_from([stacking.EXCLUSIVE, stacking.STACKABLE, stacking.GROUP]),
    group=st.sampled_from(["a", "b"]),
    floor=st.integers(0, 9999),
    rule_id=st.integers(1, 6),
)


def _with_codes(offers: list[stacking.Offer]) -> list[stacking.Offer]:
    # Codes as the shop sends them: distinct, and now and then the same one twice.
    named = [stacking.Offer(**{**o.__dict__, "code": f"C{i:02d}"}) for i, o in enumerate(offers)]
    if len(named) > 1:
        named.append(named[0])
    return named


@settings(max_examples=RULE_SETS, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(offers=st.lists(offers_st, min_size=1, max_size=6), seed=st.integers(0, 2**32 - 1))
def test_no_cart_is_priced_below_its_floor_and_every_answer_is_deterministic(offers, seed):
    offers = _with_codes(offers)
    rng = random.Random(seed)
    for _ in range(CARTS_PER_RULE_SET):
        amount = D(rng.randint(1, 2_000_000)) / 100
        result = stacking.stack(offers, amount)
        shuffled = offers[:]
        rng.shuffle(shuffled)
        again = stacking.stack(shuffled, amount)
        assert [(a.offer.code, a.discount) for a in result.applied] == [
            (a.offer.code, a.discount) for a in again.applied
        ]
        assert [(r.code, r.reason) for r in result.refused] == [(r.code, r.reason) for r in again.refused]
        assert len(result.applied) + len(result.refused) == len(offers)
        if result.applied:
            floor = max(a.offer.floor_percent for a in result.applied)
            assert result.final_amount >= stacking.floor_amount(amount, floor)
        assert result.final_amount >= 0
        for a in result.applied:
            assert D("0") < a.discount <= stacking.offer_discount(a.offer, amount)
        exclusive = [a for a in result.applied if a.offer.stacking == stacking.EXCLUSIVE]
        assert not exclusive or len(result.applied) == 1
        assert len({a.offer.rule_id for a in result.applied}) == len(result.applied)
        groups = {a.offer.group for a in result.applied if a.offer.stacking == stacking.GROUP}
        policies = {a.offer.stacking for a in result.applied}
        assert len(groups) <= 1 and not (stacking.GROUP in policies and stacking.STACKABLE in policies)


def test_higher_priority_applies_first_and_a_percent_is_taken_off_what_is_left():
    fixed = stacking.Offer("F", 1, "fixed", D("20.00"), stacking=stacking.STACKABLE, priority=5)
    percent = stacking.Offer("P", 2, "percent", D("10.00"), stacking=stacking.STACKABLE, priority=1)
    result = stacking.stack([percent, fixed], D("100.00"))
    assert [(a.offer.code, a.discount) for a in result.applied] == [("F", D("20.00")), ("P", D("8.00"))]
    assert result.final_amount == D("72.00")


def test_an_offer_that_would_cross_the_floor_is_trimmed_and_the_next_refused():
    a = stacking.Offer("A", 1, "fixed", D("60.00"), stacking=stacking.STACKABLE, floor_percent=D("50"), priority=2)
    b = stacking.Offer("B", 2, "fixed", D("10.00"), stacking=stacking.STACKABLE, priority=1)
    result = stacking.stack([a, b], D("100.00"))
    assert [(x.offer.code, x.discount) for x in result.applied] == [("A", D("50.00"))]
    assert [(r.code, r.reason) for r in result.refused] == [("B", stacking.FLOOR_REACHED)]


# --- services and API -----------------------------------------------------------------------------


def _coupon(rule: CouponRule, user_id: str) -> Coupon:
    return services.claim_coupon(rule_id=rule.pk, user_id=user_id)


@pytest.fixture
def shop(make_api_client):
    return make_api_client("coupons:redeem")


@pytest.mark.django_db
def test_redeem_codes_applies_the_stackable_ones_refuses_the_exclusive_and_moves_each_budget(shop):
    person("stacker")
    ten = CouponRuleFactory(value=D("10.00"), stacking="stackable", priority=2, budget=D("100.00"))
    pct = PercentRuleFactory(value=D("10.00"), stacking="stackable", priority=1, budget=D("300.00"))
    solo = CouponRuleFactory(value=D("50.00"), stacking="exclusive", priority=0)
    codes = [_coupon(r, "stacker").code for r in (pct, solo, ten)]
    body = {"codes": codes, "user_id": "stacker", "order_amount": "200.00"}
    quote = shop.post("/api/v1/coupons/validate", body, format="json")
    assert quote.status_code == 200, quote.json()
    assert [(a["rule"], a["discount"]) for a in quote.json()["applied"]] == [(ten.pk, "10.00"), (pct.pk, "19.00")]
    assert [(r["code"], r["reason"]) for r in quote.json()["refused"]] == [(codes[1], "NOT_STACKABLE")]
    assert quote.json()["final_amount"] == "171.00"

    redeemed = shop.post("/api/v1/coupons/redeem", {**body, "order_id": "o-stack"}, format="json")
    assert redeemed.status_code == 200, redeemed.json()
    assert redeemed.json()["discount"] == "29.00" and redeemed.json()["final_amount"] == "171.00"
    ten.refresh_from_db()
    pct.refresh_from_db()
    assert (ten.spent, ten.committed) == (D("10.00"), D("0.00"))
    assert (pct.spent, pct.committed) == (D("19.00"), D("0.00"))  # the rest of its 30.00 reserve came back
    assert Coupon.objects.get(code=codes[1]).status == CouponStatus.AVAILABLE

    again = shop.post("/api/v1/coupons/redeem", {**body, "order_id": "o-stack"}, format="json")
    assert again.status_code == 200
    assert again.json()["applied"] == redeemed.json()["applied"]
    assert Redemption.objects.filter(order_id="o-stack").count() == 2


@pytest.mark.django_db
def test_redeem_codes_where_none_applies_answers_the_first_refusal_and_changes_nothing(shop):
    person("nobody-applies")
    rule = CouponRuleFactory(min_spend=D("500.00"))
    code = _coupon(rule, "nobody-applies").code
    response = shop.post(
        "/api/v1/coupons/redeem",
        {"codes": [code], "user_id": "nobody-applies", "order_amount": "100.00", "order_id": "o-none"},
        format="json",
    )
    assert response.status_code == 422 and response.json()["reason"] == "MIN_SPEND_NOT_MET"
    assert not Redemption.objects.filter(order_id="o-none").exists()


@pytest.mark.django_db
def test_code_and_codes_together_is_a_400_on_code(shop):
    response = shop.post(
        "/api/v1/coupons/validate",
        {"code": "X", "codes": ["Y"], "user_id": "u", "order_amount": "10.00"},
        format="json",
    )
    assert response.status_code == 400 and "code" in response.json()


@pytest.mark.django_db
def test_a_single_code_keeps_its_rules_floor():
    person("floored")
    rule = CouponRuleFactory(value=D("90.00"), floor_percent=D("25.00"))
    code = _coupon(rule, "floored").code
    quote = services.validate_coupon(code=code, user_id="floored", order_amount=D("100.00"))
    assert quote.discount == D("75.00") and quote.final_amount == D("25.00")


@pytest.mark.django_db(transaction=True)
def test_the_same_order_of_several_codes_redeemed_from_many_clients_at_once_is_redeemed_once():
    from tests.coupons.test_concurrency import assert_books_balance, run_at_once

    person("many-clients")
    first = CouponRuleFactory(value=D("10.00"), stacking="stackable", budget=D("100.00"))
    second = PercentRuleFactory(value=D("10.00"), stacking="stackable", budget=D("300.00"))
    codes = [_coupon(r, "many-clients").code for r in (first, second)]
    results = run_at_once(
        [
            lambda: services.redeem_codes(codes=codes, user_id="many-clients", order_id="same", order_amount=D("100"))
            for _ in range(20)
        ]
    )
    assert all(isinstance(r, services.StackedQuote) for r in results), [r for r in results][:3]
    assert sum(r.created for r in results) == 1
    assert {tuple(x.pk for x in r.redemptions) for r in results} == {
        tuple(Redemption.objects.filter(order_id="same").order_by("id").values_list("pk", flat=True))
    }
    assert {r.stack.discount for r in results} == {D("19.00")}
    for rule in (first, second):
        assert_books_balance(rule)


@pytest.mark.django_db
def test_a_stacked_order_counts_its_revenue_once_in_the_campaign_report_and_the_daily_revenue():
    from django.utils import timezone

    from coupons import selectors

    stacker = person("twice-counted")
    ten = CouponRuleFactory(value=D("10.00"), stacking="stackable", per_user_limit=5)
    five = CouponRuleFactory(value=D("5.00"), stacking="stackable", per_user_limit=5)
    codes = [
        services.issue_coupon(rule=r, profile=stacker, source="campaign", source_ref="campaign:40:variant:1").code
        for r in (ten, five)
    ]
    services.redeem_codes(codes=codes, user_id="twice-counted", order_id="o-once", order_amount=D("200.00"))
    assert Redemption.objects.filter(order_id="o-once").count() == 2
    assert selectors.campaign_report(source_ref_prefix="campaign:40:").order_revenue == D("200.00")
    today = timezone.now().date()
    assert selectors.daily_coupon_order_revenue(today, today) == {today: D("200.00")}
    services.apply_refund(refund_id=OrderRefundFactory(event_id="r-once", order_id="o-once", amount=D("50.00")).pk)
    assert selectors.campaign_report(source_ref_prefix="campaign:40:").order_revenue == D("150.00")
    assert selectors.daily_coupon_order_revenue(today, today) == {today: D("150.00")}


@pytest.mark.django_db
def test_one_code_at_a_time_on_one_order_keeps_the_stacking_policy_and_the_floor(shop):
    person("one-by-one")
    half = dict(value=D("50.00"), max_discount=None, stacking="exclusive")
    first, second = PercentRuleFactory(**half), PercentRuleFactory(**half)
    a, b = (_coupon(r, "one-by-one").code for r in (first, second))
    body = {"user_id": "one-by-one", "order_id": "o-sep", "order_amount": "100.00"}
    assert shop.post("/api/v1/coupons/redeem", {**body, "code": a}, format="json").status_code in (200, 201)
    refused = shop.post("/api/v1/coupons/redeem", {**body, "code": b}, format="json")
    assert refused.status_code == 409 and refused.json()["reason"] == "NOT_STACKABLE", refused.json()
    refused = shop.post("/api/v1/coupons/redeem", {**body, "codes": [b]}, format="json")
    assert refused.status_code == 409 and refused.json()["reason"] == "NOT_STACKABLE", refused.json()
    assert Coupon.objects.get(code=b).status == CouponStatus.AVAILABLE
    again = services.redeem_coupon(code=a, user_id="one-by-one", order_id="o-sep", order_amount=D("100.00"))
    assert again.created is False and again.discount == D("50.00")
    replay = services.redeem_codes(codes=[a, b], user_id="one-by-one", order_id="o-sep", order_amount=D("100.00"))
    assert replay.created is False and replay.stack.discount == D("50.00")

    person("floor-by-floor")
    eighty = CouponRuleFactory(value=D("80.00"), stacking="stackable", floor_percent=D("20.00"))
    ten = CouponRuleFactory(value=D("10.00"), stacking="stackable")
    c80, c10 = _coupon(eighty, "floor-by-floor").code, _coupon(ten, "floor-by-floor").code
    services.redeem_coupon(code=c80, user_id="floor-by-floor", order_id="o-floor", order_amount=D("100.00"))
    with pytest.raises(services.errors.FloorReached):
        services.redeem_coupon(code=c10, user_id="floor-by-floor", order_id="o-floor", order_amount=D("100.00"))
    assert Redemption.objects.filter(order_id="o-floor").count() == 1


@pytest.mark.django_db
def test_a_stackable_code_sent_on_its_own_later_is_stacked_after_what_the_order_carries():
    person("later")
    ten = CouponRuleFactory(value=D("10.00"), stacking="stackable")
    pct = PercentRuleFactory(value=D("10.00"), stacking="stackable")
    c10, cpct = _coupon(ten, "later").code, _coupon(pct, "later").code
    services.redeem_codes(codes=[c10], user_id="later", order_id="o-later", order_amount=D("200.00"))
    added = services.redeem_codes(codes=[c10, cpct], user_id="later", order_id="o-later", order_amount=D("200.00"))
    assert added.created and [a.discount for a in added.stack.applied] == [D("10.00"), D("19.00")]
    assert Redemption.objects.filter(order_id="o-later").count() == 2
    with pytest.raises(services.errors.InvalidAmount):
        other = _coupon(CouponRuleFactory(value=D("1.00"), stacking="stackable"), "later").code
        services.redeem_coupon(code=other, user_id="later", order_id="o-later", order_amount=D("300.00"))


@pytest.mark.django_db(transaction=True)
def test_different_codes_for_one_order_sent_at_once_never_break_its_stacking_policy():
    from tests.coupons.test_concurrency import assert_books_balance, run_at_once

    person("racer")
    rules = [CouponRuleFactory(value=D("30.00"), stacking="exclusive", budget=D("100.00")) for _ in range(4)]
    codes = [_coupon(r, "racer").code for r in rules]
    calls = [
        lambda c=c: services.redeem_coupon(code=c, user_id="racer", order_id="race", order_amount=D("100"))
        for c in codes[:2]
    ] + [
        lambda c=c: services.redeem_codes(codes=[c], user_id="racer", order_id="race", order_amount=D("100"))
        for c in codes[2:]
    ]
    results = run_at_once(calls)
    refusals = [r for r in results if isinstance(r, services.errors.NotStackable)]
    assert len(refusals) == 3, results
    assert Redemption.objects.filter(order_id="race", rolled_back_at=None).count() == 1
    for rule in rules:
        assert_books_balance(rule)
