"""Coupon services: rules, issue, validate, redeem, rollback and expiry, against the real database."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from access.models import AuditEntry
from coupons import errors, selectors, services
from coupons.models import Coupon, CouponRule, CouponStatus, RuleHolding, RuleKind, RuleState
from tests.factories.coupons import CouponRuleFactory, PercentRuleFactory, ThresholdRuleFactory, paid_order, person

pytestmark = pytest.mark.django_db
D = Decimal


def assert_ledger_matches(rule: CouponRule) -> None:
    rule.refresh_from_db()
    ledger = selectors.ledger_from_rows(rule=rule)
    assert (ledger.issued, ledger.redeemed) == (rule.issued_count, rule.redeemed_count)
    assert (ledger.committed, ledger.spent) == (rule.committed, rule.spent)
    if rule.budget is not None:
        assert rule.committed + rule.spent <= rule.budget


# --- rules -------------------------------------------------------------------------------------


def test_create_rule_is_active_by_default_and_audited():
    rule = services.create_rule(name="Welcome", kind=RuleKind.FIXED, value=D("10.00"))
    assert rule.state == RuleState.ACTIVE
    assert AuditEntry.objects.filter(action="coupons.coupon_rule_created", object_id=str(rule.pk)).exists()


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"kind": "percent", "value": D("120")}, "value"),
        ({"kind": "fixed", "value": D("0")}, "value"),
        ({"kind": "fixed", "value": D("-5")}, "value"),
        ({"kind": "percent", "value": D("10"), "budget": D("1000")}, "max_discount"),
        ({"kind": "threshold", "value": D("100")}, "min_spend"),
        ({"kind": "threshold", "value": D("100"), "min_spend": D("50")}, "value"),
        ({"kind": "fixed", "value": D("50"), "budget": D("10")}, "budget"),
        ({"kind": "fixed", "value": D("5"), "max_discount": D("10")}, "max_discount"),
    ],
)
def test_create_rule_refuses_malformed_offers_naming_the_field(fields, field):
    with pytest.raises(ValidationError) as caught:
        services.create_rule(name="Bad", **fields)
    assert field in caught.value.message_dict
    assert not CouponRule.objects.exists()


def test_create_rule_refuses_a_window_ending_before_it_starts():
    start = timezone.now()
    with pytest.raises(ValidationError) as caught:
        services.create_rule(
            name="Bad", kind="fixed", value=D("5"), valid_from=start, valid_until=start - timedelta(days=1)
        )
    assert "valid_until" in caught.value.message_dict


def test_database_refuses_counters_over_budget_even_without_the_service():
    rule = CouponRuleFactory(budget=D("100.00"))
    with pytest.raises(IntegrityError), transaction.atomic():
        CouponRule.objects.filter(pk=rule.pk).update(committed=D("80.00"), spent=D("30.00"))


def test_pausing_and_resuming_a_rule_is_audited_and_ended_is_final():
    rule = CouponRuleFactory()
    services.change_rule_state(rule=rule, state=RuleState.PAUSED)
    services.change_rule_state(rule=rule, state=RuleState.ACTIVE)
    services.change_rule_state(rule=rule, state=RuleState.ENDED)
    with pytest.raises(errors.InvalidStateChange):
        services.change_rule_state(rule=rule, state=RuleState.ACTIVE)
    actions = set(AuditEntry.objects.filter(object_id=str(rule.pk)).values_list("action", flat=True))
    assert {"coupons.coupon_rule_paused", "coupons.coupon_rule_activated", "coupons.coupon_rule_ended"} <= actions


# --- issue -------------------------------------------------------------------------------------


def test_issue_commits_the_most_a_coupon_can_cost():
    rule = PercentRuleFactory(value=D("15"), max_discount=D("40.00"), budget=D("100.00"))
    coupon = services.issue_coupon(rule=rule, profile=person())
    rule.refresh_from_db()
    assert coupon.reserved == D("40.00")
    assert rule.committed == D("40.00")
    assert rule.issued_count == 1
    assert_ledger_matches(rule)


def test_issue_with_a_stale_copy_of_the_rule_follows_the_rows_current_values():
    rule = CouponRuleFactory(value=D("20.00"), budget=D("100.00"))
    stale = CouponRule.objects.get(pk=rule.pk)
    CouponRule.objects.filter(pk=rule.pk).update(value=D("30.00"), valid_days=2)
    coupon = services.issue_coupon(rule=stale, profile=person())
    coupon.refresh_from_db()
    assert coupon.reserved == D("30.00")
    assert coupon.expires_at is not None
    assert_ledger_matches(rule)


def test_issue_refuses_when_the_budget_cannot_cover_another_coupon_and_moves_no_money():
    rule = CouponRuleFactory(value=D("30.00"), budget=D("70.00"), per_user_limit=5)
    alice = person()
    services.issue_coupon(rule=rule, profile=alice)
    services.issue_coupon(rule=rule, profile=alice)
    with pytest.raises(errors.BudgetExhausted):
        services.issue_coupon(rule=rule, profile=alice)
    rule.refresh_from_db()
    assert rule.committed == D("60.00")
    assert RuleHolding.objects.get(rule=rule, profile=alice).issued == 2
    assert_ledger_matches(rule)


def test_issue_refuses_past_the_total_quantity():
    rule = CouponRuleFactory(total_quantity=2)
    services.issue_coupon(rule=rule, profile=person())
    services.issue_coupon(rule=rule, profile=person())
    with pytest.raises(errors.QuantityExhausted):
        services.issue_coupon(rule=rule, profile=person())


def test_issue_refuses_past_the_per_user_limit():
    rule = CouponRuleFactory(per_user_limit=2)
    bob = person()
    services.issue_coupon(rule=rule, profile=bob)
    services.issue_coupon(rule=rule, profile=bob)
    with pytest.raises(errors.PerUserLimitReached):
        services.issue_coupon(rule=rule, profile=bob)
    assert Coupon.objects.filter(rule=rule).count() == 2


def test_issue_with_the_same_request_id_returns_the_first_coupon():
    rule = CouponRuleFactory(per_user_limit=3)
    carol = person()
    first = services.issue_coupon(rule=rule, profile=carol, request_id="r-1")
    again = services.issue_coupon(rule=rule, profile=carol, request_id="r-1")
    assert (first.created, again.created) == (True, False)
    assert again.pk == first.pk
    assert Coupon.objects.filter(rule=rule).count() == 1


def test_issue_refuses_a_request_id_replayed_for_another_user():
    rule = CouponRuleFactory()
    services.issue_coupon(rule=rule, profile=person(), request_id="r-2")
    with pytest.raises(errors.RequestIdReused):
        services.issue_coupon(rule=rule, profile=person(), request_id="r-2")


@pytest.mark.parametrize("state", [RuleState.DRAFT, RuleState.PAUSED, RuleState.ENDED])
def test_issue_refuses_a_rule_that_is_not_active(state):
    rule = CouponRuleFactory(state=state)
    with pytest.raises(errors.RuleNotActive):
        services.issue_coupon(rule=rule, profile=person())


def test_issue_refuses_outside_the_window():
    now = timezone.now()
    future = CouponRuleFactory(valid_from=now + timedelta(days=1), valid_until=now + timedelta(days=2))
    past = CouponRuleFactory(valid_from=now - timedelta(days=2), valid_until=now - timedelta(days=1))
    with pytest.raises(errors.RuleNotStarted):
        services.issue_coupon(rule=future, profile=person())
    with pytest.raises(errors.RuleExpired):
        services.issue_coupon(rule=past, profile=person())


def test_coupon_lasts_n_days_from_issue_but_never_past_the_window():
    now = timezone.now()
    days = CouponRuleFactory(valid_days=7)
    capped = CouponRuleFactory(valid_days=7, valid_until=now + timedelta(days=3))
    a = services.issue_coupon(rule=days, profile=person())
    b = services.issue_coupon(rule=capped, profile=person())
    assert timedelta(days=7) - timedelta(seconds=5) < a.expires_at - a.starts_at <= timedelta(days=7)
    assert b.expires_at == capped.valid_until


def test_tier_offer_refuses_other_tiers_and_says_which():
    rule = ThresholdRuleFactory(eligible_tiers=["core"])
    services.issue_coupon(rule=rule, profile=person(tier="core"))
    with pytest.raises(errors.TierNotEligible) as caught:
        services.issue_coupon(rule=rule, profile=person(tier="ordinary"))
    assert "ordinary" in caught.value.detail
    with pytest.raises(errors.TierNotEligible) as caught:
        services.issue_coupon(rule=rule, profile=person())
    assert "no value tier" in caught.value.detail


def test_tag_offer_needs_one_of_its_tags():
    rule = CouponRuleFactory(eligible_tags=["prefers_technology", "vip"])
    services.issue_coupon(rule=rule, profile=person(tags=("vip",)))
    with pytest.raises(errors.TagNotEligible):
        services.issue_coupon(rule=rule, profile=person(tags=("prefers_books",)))


def test_first_order_offer_refuses_someone_who_paid_before():
    rule = CouponRuleFactory(first_order_only=True)
    newcomer, regular = person(), person()
    paid_order(regular)
    services.issue_coupon(rule=rule, profile=newcomer)
    with pytest.raises(errors.NotFirstOrder):
        services.issue_coupon(rule=rule, profile=regular)


# --- codes -------------------------------------------------------------------------------------


def test_issued_codes_are_unique_well_formed_and_free_of_look_alikes():
    rule = CouponRuleFactory(per_user_limit=50)
    dana = person()
    issued = [services.issue_coupon(rule=rule, profile=dana).code for _ in range(50)]
    assert len(set(issued)) == 50
    for code in issued:
        assert len(code) == 13
        assert not set(code) & set("01IO")


# --- validate and redeem ----------------------------------------------------------------------


def test_validate_quotes_a_capped_percent_discount():
    rule = PercentRuleFactory(value=D("10"), max_discount=D("30.00"))
    erin = person()
    coupon = services.issue_coupon(rule=rule, profile=erin)
    small = services.validate_coupon(code=coupon.code, user_id=erin.user_id, order_amount=D("120.00"))
    big = services.validate_coupon(code=coupon.code, user_id=erin.user_id, order_amount=D("999.00"))
    assert (small.valid, small.discount, small.final_amount) == (True, D("12.00"), D("108.00"))
    assert (big.discount, big.final_amount) == (D("30.00"), D("969.00"))


def test_validate_accepts_the_printed_form_of_a_code():
    erin = person()
    coupon = services.issue_coupon(rule=CouponRuleFactory(), profile=erin)
    printed = coupon.display_code.lower()
    assert services.validate_coupon(code=printed, user_id=erin.user_id, order_amount=D("50.00")).valid


def test_validate_explains_a_threshold_not_met_and_a_code_of_another_user():
    rule = ThresholdRuleFactory()
    frank = person()
    coupon = services.issue_coupon(rule=rule, profile=frank)
    low = services.validate_coupon(code=coupon.code, user_id=frank.user_id, order_amount=D("999.99"))
    other = services.validate_coupon(code=coupon.code, user_id=person().user_id, order_amount=D("1500.00"))
    assert (low.valid, low.refusal.reason) == (False, "MIN_SPEND_NOT_MET")
    assert (other.valid, other.refusal.reason) == (False, "COUPON_NOT_YOURS")


def test_validate_of_an_unknown_or_mistyped_code_is_not_found():
    erin = person()
    coupon = services.issue_coupon(rule=CouponRuleFactory(), profile=erin)
    typo = coupon.code[:-1] + ("2" if coupon.code[-1] != "2" else "3")
    with pytest.raises(errors.CouponNotFound):
        services.validate_coupon(code=typo, user_id=erin.user_id, order_amount=D("10.00"))


def test_redeem_moves_the_reservation_to_spent():
    rule = PercentRuleFactory(value=D("10"), max_discount=D("30.00"), budget=D("300.00"))
    gina = person()
    coupon = services.issue_coupon(rule=rule, profile=gina)
    redemption = services.redeem_coupon(code=coupon.code, user_id=gina.user_id, order_id="o-1", order_amount=D("200"))
    rule.refresh_from_db()
    assert redemption.discount == D("20.00")
    assert (rule.committed, rule.spent, rule.redeemed_count) == (D("0.00"), D("20.00"), 1)
    assert_ledger_matches(rule)


def test_raising_a_rules_value_later_never_makes_a_live_coupon_cost_more_than_it_reserved():
    rule = CouponRuleFactory(value=D("20.00"), budget=D("40.00"))
    gina, hugo = person(), person()
    old = services.issue_coupon(rule=rule, profile=gina)
    CouponRule.objects.filter(pk=rule.pk).update(value=D("30.00"))  # the operator's edit
    quote = services.validate_coupon(code=old.code, user_id=gina.user_id, order_amount=D("100"))
    assert quote.discount == D("20.00")
    redemption = services.redeem_coupon(code=old.code, user_id=gina.user_id, order_id="o-1", order_amount=D("100"))
    assert redemption.discount == D("20.00")
    rule.refresh_from_db()
    assert (rule.committed, rule.spent) == (D("0.00"), D("20.00"))
    with pytest.raises(errors.BudgetExhausted):  # a new coupon reserves the new 30 of the 20 left
        services.issue_coupon(rule=rule, profile=hugo)
    assert_ledger_matches(rule)


def test_redeem_twice_for_the_same_order_returns_the_first_redemption():
    gina = person()
    coupon = services.issue_coupon(rule=CouponRuleFactory(budget=D("100")), profile=gina)
    first = services.redeem_coupon(code=coupon.code, user_id=gina.user_id, order_id="o-2", order_amount=D("80"))
    again = services.redeem_coupon(code=coupon.code, user_id=gina.user_id, order_id="o-2", order_amount=D("80"))
    assert again.pk == first.pk and again.created is False
    assert CouponRule.objects.get(pk=coupon.rule_id).spent == D("20.00")


def test_a_code_never_serves_a_second_order():
    gina = person()
    coupon = services.issue_coupon(rule=CouponRuleFactory(), profile=gina)
    services.redeem_coupon(code=coupon.code, user_id=gina.user_id, order_id="o-3", order_amount=D("80"))
    with pytest.raises(errors.CouponAlreadyUsed) as caught:
        services.redeem_coupon(code=coupon.code, user_id=gina.user_id, order_id="o-4", order_amount=D("80"))
    assert caught.value.status_code == 409


def test_redeem_refuses_a_code_of_another_user_and_moves_no_money():
    rule = CouponRuleFactory(budget=D("100"))
    coupon = services.issue_coupon(rule=rule, profile=person())
    with pytest.raises(errors.CouponNotYours):
        services.redeem_coupon(code=coupon.code, user_id=person().user_id, order_id="o-5", order_amount=D("80"))
    rule.refresh_from_db()
    assert (rule.committed, rule.spent) == (D("20.00"), D("0.00"))


def test_redeem_refuses_while_the_rule_is_paused():
    rule = CouponRuleFactory()
    hank = person()
    coupon = services.issue_coupon(rule=rule, profile=hank)
    services.change_rule_state(rule=rule, state=RuleState.PAUSED)
    with pytest.raises(errors.RuleNotActive):
        services.redeem_coupon(code=coupon.code, user_id=hank.user_id, order_id="o-6", order_amount=D("80"))


@pytest.mark.parametrize("amount", [D("0"), D("-1.00"), D("1000000000")])
def test_redeem_refuses_absurd_amounts(amount):
    hank = person()
    coupon = services.issue_coupon(rule=CouponRuleFactory(), profile=hank)
    with pytest.raises(errors.InvalidAmount):
        services.redeem_coupon(code=coupon.code, user_id=hank.user_id, order_id="o-7", order_amount=amount)


def test_fixed_discount_never_exceeds_the_order():
    hank = person()
    coupon = services.issue_coupon(rule=CouponRuleFactory(value=D("20.00"), budget=D("40")), profile=hank)
    redemption = services.redeem_coupon(code=coupon.code, user_id=hank.user_id, order_id="o-8", order_amount=D("5"))
    assert (redemption.discount, redemption.final_amount) == (D("5.00"), D("0.00"))
    assert_ledger_matches(coupon.rule)


def test_first_order_coupon_is_refused_once_the_user_has_ordered_since():
    ivy = person()
    coupon = services.issue_coupon(rule=CouponRuleFactory(first_order_only=True), profile=ivy)
    paid_order(ivy)
    with pytest.raises(errors.NotFirstOrder):
        services.redeem_coupon(code=coupon.code, user_id=ivy.user_id, order_id="o-9", order_amount=D("50"))


# --- rollback and expiry -----------------------------------------------------------------------


def test_rollback_returns_the_money_and_the_coupon_to_its_holder():
    rule = CouponRuleFactory(budget=D("20.00"))
    jack = person()
    coupon = services.issue_coupon(rule=rule, profile=jack)
    services.redeem_coupon(code=coupon.code, user_id=jack.user_id, order_id="o-10", order_amount=D("90"))
    [undone] = services.rollback_order(order_id="o-10")
    rule.refresh_from_db()
    coupon.refresh_from_db()
    assert undone.coupon_returned is True and undone.rolled_back_at is not None
    assert (coupon.status, rule.spent, rule.committed) == (CouponStatus.AVAILABLE, D("0.00"), D("20.00"))
    again = services.redeem_coupon(code=coupon.code, user_id=jack.user_id, order_id="o-11", order_amount=D("90"))
    assert again.discount == D("20.00")
    assert_ledger_matches(rule)


def test_rollback_of_an_expired_coupon_returns_the_money_but_not_the_coupon():
    rule = CouponRuleFactory(budget=D("40.00"))
    kim = person()
    coupon = services.issue_coupon(rule=rule, profile=kim)
    services.redeem_coupon(code=coupon.code, user_id=kim.user_id, order_id="o-12", order_amount=D("90"))
    Coupon.objects.filter(pk=coupon.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    [undone] = services.rollback_order(order_id="o-12")
    rule.refresh_from_db()
    assert undone.coupon_returned is False
    assert (rule.spent, rule.committed) == (D("0.00"), D("0.00"))
    assert Coupon.objects.get(pk=coupon.pk).status == CouponStatus.EXPIRED
    assert_ledger_matches(rule)


def test_rollback_twice_changes_nothing_more_and_an_unknown_order_is_not_found():
    lee = person()
    coupon = services.issue_coupon(rule=CouponRuleFactory(budget=D("100")), profile=lee)
    services.redeem_coupon(code=coupon.code, user_id=lee.user_id, order_id="o-13", order_amount=D("90"))
    services.rollback_order(order_id="o-13")
    [replayed] = services.rollback_order(order_id="o-13")
    assert replayed.created is False
    assert_ledger_matches(coupon.rule)
    with pytest.raises(errors.RedemptionNotFound):
        services.rollback_order(order_id="never-redeemed")


def test_a_rolled_back_order_cannot_be_redeemed_again_by_a_replayed_request():
    lee = person()
    coupon = services.issue_coupon(rule=CouponRuleFactory(), profile=lee)
    services.redeem_coupon(code=coupon.code, user_id=lee.user_id, order_id="o-14", order_amount=D("90"))
    services.rollback_order(order_id="o-14")
    with pytest.raises(errors.OrderRolledBack):
        services.redeem_coupon(code=coupon.code, user_id=lee.user_id, order_id="o-14", order_amount=D("90"))


def test_expiry_releases_committed_money_of_coupons_past_their_end_only():
    rule = CouponRuleFactory(budget=D("100.00"), per_user_limit=3)
    mia = person()
    old = services.issue_coupon(rule=rule, profile=mia)
    services.issue_coupon(rule=rule, profile=mia)
    Coupon.objects.filter(pk=old.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert services.expire_due_coupons() == 1
    assert services.expire_due_coupons() == 0
    rule.refresh_from_db()
    assert rule.committed == D("20.00")
    assert Coupon.objects.get(pk=old.pk).status == CouponStatus.EXPIRED
    assert_ledger_matches(rule)


def test_ending_a_rule_expires_its_live_coupons_and_releases_their_money():
    rule = CouponRuleFactory(budget=D("100.00"))
    services.issue_coupon(rule=rule, profile=person())
    services.issue_coupon(rule=rule, profile=person())
    services.change_rule_state(rule=rule, state=RuleState.ENDED)
    rule.refresh_from_db()
    assert rule.committed == D("0.00")
    assert set(Coupon.objects.filter(rule=rule).values_list("status", flat=True)) == {CouponStatus.EXPIRED}


# --- reports -----------------------------------------------------------------------------------


def test_rule_report_adds_up_and_computes_roi_and_rates_by_tier():
    rule = CouponRuleFactory(value=D("10.00"), budget=D("100.00"))
    core = [person(tier="core") for _ in range(2)]
    ordinary = person(tier="ordinary")
    coupons = {p.pk: services.issue_coupon(rule=rule, profile=p) for p in [*core, ordinary]}
    services.redeem_coupon(code=coupons[core[0].pk].code, user_id=core[0].user_id, order_id="a", order_amount=D("60"))
    Coupon.objects.filter(pk=coupons[ordinary.pk].pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    services.expire_due_coupons()
    report = selectors.rule_report(rule=rule)
    assert (report.issued, report.redeemed, report.unused, report.expired) == (3, 1, 1, 1)
    assert (report.committed, report.spent, report.remaining) == (D("10.00"), D("10.00"), D("80.00"))
    assert report.order_revenue == D("60.00")
    assert report.roi == pytest.approx((60 - 10) / 10)
    rates = {row["tier"]: row["redemption_rate"] for row in report.by_tier}
    assert rates == {"core": 0.5, "ordinary": 0.0}


def test_campaign_report_counts_the_coupons_of_its_source_ref_prefix():
    rule = CouponRuleFactory(per_user_limit=5)
    nia = person()
    services.issue_coupon(rule=rule, profile=nia, source="campaign", source_ref="campaign:12:variant:3")
    services.issue_coupon(rule=rule, profile=nia, source="campaign", source_ref="campaign:12:variant:4")
    services.issue_coupon(rule=rule, profile=nia, source="campaign", source_ref="campaign:13:variant:1")
    report = selectors.campaign_report(source_ref_prefix="campaign:12:")
    assert (report.issued, report.committed) == (2, D("40.00"))


def test_lookup_section_is_registered_and_lists_a_persons_coupons():
    from profiles.lookup import registered_sections

    ola = person()
    coupon = services.issue_coupon(rule=CouponRuleFactory(name="Spring"), profile=ola)
    assert "coupons" in registered_sections()
    section = selectors.lookup_section(ola)
    assert section["available"] == 1
    assert section["recent"][0]["code"] == coupon.display_code
    assert section["recent"][0]["rule"] == "Spring"


def test_a_coupon_follows_its_holder_into_a_merged_profile():
    from profiles.models import Identity, IdentityKind, Profile

    old_account, kept = person(), person()
    coupon = services.issue_coupon(rule=CouponRuleFactory(), profile=old_account)
    # What identify does when it finds both accounts are one person.
    Profile.objects.filter(pk=old_account.pk).update(merged_into=kept)
    Identity.objects.filter(kind=IdentityKind.USER_ID, value=old_account.user_id).update(profile=kept)
    assert [c.pk for c in selectors.coupons_for_profile(profile=kept)] == [coupon.pk]
    redemption = services.redeem_coupon(
        code=coupon.code, user_id=kept.user_id, order_id="merged-1", order_amount=D("50")
    )
    assert redemption.discount == D("20.00")


def test_segment_issuance_skips_profiles_that_no_longer_exist(segment_resolver):
    from coupons.models import IssuanceJob

    members = [person(), person()]
    segment_resolver(lambda segment_id: [members[0].pk, members[1].pk, 987654321])
    job = IssuanceJob.objects.create(rule=CouponRuleFactory(), segment_id=9)
    job = services.run_issuance_job(job=job)
    assert (job.status, job.total, job.issued) == (IssuanceJob.Status.DONE, 2, 2)
