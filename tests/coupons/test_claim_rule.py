"""The claim rule has one home, the database's `coupons_reserve` and `coupons_reserve_per_coupon`:
every way of issuing reserves what the model says one coupon costs, and no other place restates it."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from coupons import services
from coupons.models import Coupon, CouponRule, RuleKind
from tests.factories.coupons import CouponRuleFactory, PercentRuleFactory, ThresholdRuleFactory, person
from tests.migrating import migrate_to, migrate_to_latest

pytestmark = pytest.mark.django_db
D = Decimal

RULES = {
    "fixed": lambda: CouponRuleFactory(value=D("20.00")),
    "percent with a cap": lambda: PercentRuleFactory(value=D("10.00"), max_discount=D("30.00")),
    "percent without a cap": lambda: PercentRuleFactory(value=D("10.00"), max_discount=None),
    "threshold": lambda: ThresholdRuleFactory(value=D("100.00"), min_spend=D("1000.00")),
}
EXPECTED = {
    "fixed": D("20.00"),
    "percent with a cap": D("30.00"),
    "percent without a cap": D("0"),
    "threshold": D("100.00"),
}


@pytest.mark.parametrize("kind", list(RULES))
def test_every_way_of_issuing_reserves_what_the_model_says_a_coupon_costs(kind):
    rule = RULES[kind]()
    rule.per_user_limit = 5
    rule.save(update_fields=["per_user_limit"])
    assert rule.reserve_per_coupon() == EXPECTED[kind]

    claimed = services.claim_coupon(rule_id=rule.pk, user_id="u-claim")
    issued = services.issue_coupon(rule=rule, profile=person("u-issue"))
    batch = services.create_code_batch(rule=rule, quantity=3)
    services.generate_batch_codes(batch=batch)

    reserved = set(Coupon.objects.filter(rule=rule).values_list("reserved", flat=True))
    assert {claimed.reserved, issued.reserved} | reserved == {rule.reserve_per_coupon()}
    rule.refresh_from_db()
    assert rule.committed == 5 * rule.reserve_per_coupon()


def test_an_unsaved_rule_is_judged_by_the_same_rule_as_the_reserve():
    rule = CouponRule(kind=RuleKind.PERCENT, value=D("15"), max_discount=D("12.50"))
    assert rule.reserve_per_coupon() == D("12.50")
    rule.kind = RuleKind.FIXED
    assert rule.reserve_per_coupon() == D("15")


def test_claimed_and_batch_coupons_share_one_validity():
    now = timezone.now()
    rule = CouponRuleFactory(valid_days=3, valid_until=now + timedelta(days=10))
    claimed = services.claim_coupon(rule_id=rule.pk, user_id="u-valid")
    batch = services.create_code_batch(rule=rule, quantity=1)
    services.generate_batch_codes(batch=batch)
    code = Coupon.objects.get(batch=batch)
    for coupon in (claimed, code):
        assert coupon.expires_at - coupon.starts_at == timedelta(days=3)

    ending = CouponRuleFactory(valid_days=30, valid_until=now + timedelta(days=2))
    batch = services.create_code_batch(rule=ending, quantity=1)
    services.generate_batch_codes(batch=batch)
    claimed = services.claim_coupon(rule_id=ending.pk, user_id="u-valid")
    assert claimed.expires_at == Coupon.objects.get(batch=batch).expires_at == ending.valid_until


def _function_source(name: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_get_functiondef(%s::regproc)", [name])
        return cursor.fetchone()[0]


def test_the_claim_function_calls_the_reserve_rather_than_restating_it():
    claim = _function_source("coupons_claim")
    assert "coupons_reserve(" in claim
    assert "max_discount" not in claim and "total_quantity" not in claim and "budget" not in claim
    reserve = _function_source("coupons_reserve")
    assert "coupons_reserve_per_coupon(" in reserve
    assert "max_discount, 0" not in reserve.replace("COALESCE(p_max_discount, 0)", "")


def test_no_python_module_of_the_coupons_app_restates_the_reserve():
    # The rule's marks: what a percent coupon costs, and the budget check of the reserve.
    marks = re.compile(r"COALESCE\(\s*max_discount|committed\s*\+\s*spent\s*\+|RuleKind\.PERCENT:\s*return")
    app = Path(services.__file__).parent
    offenders = [
        str(path.relative_to(app))
        for path in app.rglob("*.py")
        if "migrations" not in path.parts and marks.search(path.read_text())
    ]
    assert offenders == []


@pytest.mark.django_db(transaction=True)
def test_the_claim_functions_migrate_back_to_the_former_claim_and_forward_again():
    def functions() -> set[str]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT proname FROM pg_proc WHERE proname LIKE 'coupons\\_%%'")
            return {name for (name,) in cursor.fetchall()}

    rule = CouponRuleFactory(value=D("7.00"), per_user_limit=2)
    # A known user: the claim is the database function alone, which never reads the rule's
    # columns added after 0004 (the ORM would ask for them while they are migrated away).
    person("u-back")
    try:
        migrate_to(("coupons", "0004_issuance_segment_bigint"))
        assert functions() == {"coupons_claim"}
        assert services.claim_coupon(rule_id=rule.pk, user_id="u-back").reserved == D("7.00")
    finally:
        migrate_to_latest()
    assert functions() == {
        "coupons_claim",
        "coupons_can_issue",
        "coupons_reserve",
        "coupons_reserve_per_coupon",
        "coupons_paced_share",
    }
    assert services.claim_coupon(rule_id=rule.pk, user_id="u-back").reserved == D("7.00")
    rule.refresh_from_db()
    assert (rule.issued_count, rule.committed) == (2, D("14.00"))
