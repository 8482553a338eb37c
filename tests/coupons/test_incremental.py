"""Incremental ROI: what a coupon added against the holdouts of the campaigns that gave it."""

from __future__ import annotations

import random
from datetime import timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from campaigns.models import Assignment, Variant
from coupons import incremental, services
from coupons.incremental import _Sums
from tests.factories.campaigns import CampaignFactory
from tests.factories.coupons import CouponRuleFactory, person
from tests.factories.profiles import ingest

D = Decimal


def _order(user_id: str, order_id: str, amount: str, at) -> None:
    ingest(
        [
            {
                "name": "order_paid",
                "user_id": user_id,
                "timestamp": at,
                "properties": {"order_id": order_id, "amount": amount},
            }
        ]
    )


@pytest.fixture
def campaign_with_holdout(db):
    """40 treated (20 buy for 100 with a 10 coupon) against 40 held out (10 buy for 100 anyway)."""
    rule = CouponRuleFactory(value=D("10.00"), valid_days=30)
    campaign = CampaignFactory(variants=[("A", 100)], margin_percent=D("30"), holdout_percent=D("50"))
    variant = Variant.objects.get(campaign=campaign)
    variant.coupon_rule_id = rule.pk
    variant.save(update_fields=["coupon_rule_id"])
    start = timezone.now() - timedelta(hours=10)
    for i in range(80):
        treated = i < 40
        user_id = f"{'t' if treated else 'h'}-{i}"
        profile = person(user_id, tier="core" if i % 2 else None)
        Assignment.objects.create(
            campaign=campaign,
            profile=profile,
            user_id=user_id,
            role="rollout" if treated else "holdout",
            variant=variant if treated else None,
            position=i,
            assigned_at=start,
        )
        if treated and i < 20:
            coupon = services.issue_coupon(rule=rule, profile=profile, source="campaign", source_ref=variant.source_ref)
            services.redeem_coupon(code=coupon.code, user_id=user_id, order_id=f"o-{i}", order_amount=D("100.00"))
            _order(user_id, f"o-{i}", "100.00", start + timedelta(hours=1))
        if not treated and i < 50:
            _order(user_id, f"o-{i}", "100.00", start + timedelta(hours=1))
    return rule, campaign


def test_the_report_api_gives_incremental_orders_revenue_margin_cost_and_roi(make_api_client, campaign_with_holdout):
    rule, campaign = campaign_with_holdout
    body = make_api_client("manage").get(f"/api/v1/coupon-rules/{rule.pk}/report").json()
    inc = body["incremental"]
    assert (inc["treated"], inc["holdout"]) == (40, 40)
    assert inc["orders"] == 10.0 and inc["revenue"] == "1000.00" and inc["margin"] == "300.00"
    assert inc["cost"] == "200.00" and inc["roi"] == 0.5
    assert inc["roi_ci_low"] < 0.5 < inc["roi_ci_high"]
    assert inc["orders_ci_low"] < 10 < inc["orders_ci_high"]
    assert body["roi"] == 9.0  # the attributed ROI credits all 2000 of coupon-order revenue
    assert [c["campaign"] for c in inc["by_campaign"]] == [campaign.pk]
    assert {t["tier"] for t in inc["by_tier"]} == {"core", None}


@pytest.mark.django_db
def test_a_rule_never_given_through_a_campaign_with_a_holdout_has_null_incremental(make_api_client):
    rule = CouponRuleFactory()
    assert make_api_client("manage").get(f"/api/v1/coupon-rules/{rule.pk}/report").json()["incremental"] is None


def test_the_report_page_shows_the_incremental_table(client, make_staff, campaign_with_holdout):
    rule, _ = campaign_with_holdout
    client.force_login(make_staff("Operations"))
    page = client.get(reverse("admin:coupons_couponrule_report", args=[rule.pk]))
    assert page.status_code == 200
    assert b'id="incremental"' in page.content and b"All campaigns" in page.content
    assert b"ROI (attributed" in page.content


def test_the_roi_interval_covers_the_true_roi_about_95_percent_of_the_time():
    # Simulated experiments with a known truth: buying 30 % treated vs 20 % held out, basket
    # 80 to 120, margin 30 %, a coupon of 10 used by the treated who buy.
    rng = random.Random(5)
    n, margin_share = 2000, 0.3
    true_roi = (n * 0.10 * 100 * margin_share - n * 0.30 * 10) / (n * 0.30 * 10)
    covered = 0
    runs = 300
    for _ in range(runs):
        treated, holdout = _Sums(), _Sums()
        for group, rate, coupon in ((treated, 0.30, 10.0), (holdout, 0.20, 0.0)):
            for _ in range(n):
                buys = rng.random() < rate
                revenue = rng.uniform(80, 120) if buys else 0.0
                group.add(1.0 if buys else 0.0, revenue * margin_share, revenue, coupon if buys else 0.0)
        result = incremental.combine([(treated, holdout)])
        covered += result.roi_ci[0] <= true_roi <= result.roi_ci[1]
    assert 0.91 <= covered / runs <= 0.99, covered / runs
