"""Uplift targeting: learn from a campaign with a holdout whom the coupon persuades, then target them."""

from __future__ import annotations

import random
from datetime import timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from campaigns.models import Assignment, Segment, Variant
from campaigns.segments import DefinitionError, compile_definition
from campaigns.selectors import segment_profile_ids
from coupons import errors, services
from coupons.models import UpliftModel, UpliftScore
from tests.factories.campaigns import CampaignFactory, add_events, make_profiles
from tests.factories.coupons import CouponRuleFactory

pytestmark = pytest.mark.django_db
D = Decimal
PEOPLE = 600


def _past_campaign(rule, *, people: int = PEOPLE):
    """Half of the people carry the tag `deal-seeker`: with the coupon 70 % of them buy, without
    it 10 %. The others buy at 40 % either way (the coupon only pays them)."""
    rng = random.Random(3)
    seekers = make_profiles(people // 2, prefix="seek", tag="deal-seeker")
    loyal = make_profiles(people - people // 2, prefix="loyal", tag="loyal")
    campaign = CampaignFactory(variants=[("A", 100)], margin_percent=D("40"), holdout_percent=D("50"))
    variant = Variant.objects.get(campaign=campaign)
    Variant.objects.filter(pk=variant.pk).update(coupon_rule_id=rule.pk)
    start = timezone.now() - timedelta(hours=20)
    assignments, orders = [], []
    for i, profile in enumerate(seekers + loyal):
        treated = rng.random() < 0.5
        assignments.append(
            Assignment(
                campaign=campaign,
                profile=profile,
                user_id=profile.user_id,
                role="rollout" if treated else "holdout",
                variant=variant if treated else None,
                position=i,
                assigned_at=start,
            )
        )
        rate = (0.7 if treated else 0.1) if profile in seekers else 0.4
        if rng.random() < rate:
            orders.append((profile.user_id, "order_paid", start + timedelta(hours=2), f"o-{i}"))
    Assignment.objects.bulk_create(assignments)
    for user_id, name, at, order_id in orders:
        add_events([(user_id, name, at)], properties={"order_id": order_id, "amount": "100.00"})
    return campaign


def test_fitting_scores_everyone_and_the_persuadable_come_first():
    rule = CouponRuleFactory()
    _past_campaign(rule)
    fitted = services.fit_rule_uplift(rule=rule)
    assert fitted.status == UpliftModel.Status.DONE and fitted.trained_on == PEOPLE
    assert UpliftScore.objects.filter(rule=rule).count() == fitted.scored >= PEOPLE
    seekers = UpliftScore.objects.filter(rule=rule, profile__user_id__startswith="seek")
    loyal = UpliftScore.objects.filter(rule=rule, profile__user_id__startswith="loyal")
    mean = lambda qs: sum(s.uplift for s in qs) / qs.count()  # noqa: E731
    assert mean(seekers) > mean(loyal) + 10  # about 24 of margin against 0
    deciles = fitted.evidence["deciles"]
    assert deciles[0]["observed"] > deciles[-1]["observed"]
    qini = fitted.evidence["qini"]
    assert qini[5]["gain"] > qini[5]["random"]  # the top half holds more than half of the gain


def test_the_segment_condition_targets_the_top_percent_by_predicted_uplift():
    rule = CouponRuleFactory()
    _past_campaign(rule)
    services.fit_rule_uplift(rule=rule)
    segment = Segment.objects.create(name="persuadable", definition={"uplift": rule.pk, "top_percent": 25})
    members = segment_profile_ids(segment.pk)
    scored = UpliftScore.objects.filter(rule=rule).count()
    assert len(members) == -(-scored * 25 // 100)
    seekers = UpliftScore.objects.filter(rule=rule, profile_id__in=members, profile__user_id__startswith="seek")
    assert seekers.count() >= 0.9 * len(members)


def test_a_bad_uplift_condition_names_its_field():
    with pytest.raises(DefinitionError) as caught:
        compile_definition({"uplift": 3, "top_percent": 0})
    assert any("top_percent" in e for e in caught.value.errors)
    with pytest.raises(DefinitionError):
        compile_definition({"uplift": "three", "top_percent": 10})


def test_too_little_holdout_data_leaves_the_fit_failed_with_its_reason_in_the_report(make_api_client):
    rule = CouponRuleFactory()
    with pytest.raises(errors.CouponError):
        services.fit_rule_uplift(rule=rule)
    report = make_api_client("manage").get(f"/api/v1/coupon-rules/{rule.pk}/report").json()
    assert report["uplift"]["status"] == "failed" and "holdout" in report["uplift"]["error"]


def test_the_report_page_draws_the_qini_curve_and_the_deciles(client, make_staff):
    rule = CouponRuleFactory()
    _past_campaign(rule, people=200)
    services.fit_rule_uplift(rule=rule)
    client.force_login(make_staff("Operations"))
    page = client.get(reverse("admin:coupons_couponrule_report", args=[rule.pk]))
    assert b'id="uplift-qini"' in page.content and b'id="uplift-deciles"' in page.content


def test_a_person_in_two_campaigns_is_two_training_samples():
    rule = CouponRuleFactory()
    first = _past_campaign(rule, people=60)
    again = CampaignFactory(variants=[("A", 100)], margin_percent=D("40"), holdout_percent=D("50"))
    variant = Variant.objects.get(campaign=again)
    Variant.objects.filter(pk=variant.pk).update(coupon_rule_id=rule.pk)
    Assignment.objects.bulk_create(
        Assignment(
            campaign=again,
            profile_id=a.profile_id,
            user_id=a.user_id,
            # The other arm this time: the same person, a different outcome to learn from.
            role="holdout" if a.role == "rollout" else "rollout",
            variant=None if a.role == "rollout" else variant,
            position=a.position,
            assigned_at=a.assigned_at,
        )
        for a in Assignment.objects.filter(campaign=first)
    )
    fitted = services.fit_rule_uplift(rule=rule)
    assert fitted.status == UpliftModel.Status.DONE and fitted.trained_on == 120
