"""A goal's plan: the natural-growth baseline from the history before the period, the gap to
close, and the campaigns of its tactics measured against their holdouts."""

from __future__ import annotations

import datetime as dt
from datetime import date
from decimal import Decimal

import pytest
from django.utils import timezone

from campaigns import services as campaign_services
from campaigns.models import Assignment, CampaignStatus, Delivery
from indicators import baselines
from indicators.registry import Fold, Indicator, Unit, register_indicator, unregister_indicator
from planning import selectors
from tests.factories.campaigns import CampaignFactory, add_events, make_profiles
from tests.factories.indicators import daily_event_count, events_on, goal
from tests.factories.planning import tactic

pytestmark = pytest.mark.django_db
D = Decimal


@pytest.fixture
def signups():
    register_indicator(Indicator("test_signups", "Test signups", Unit.USERS, Fold.SUM, daily_event_count("signup")))
    yield "test_signups"
    unregister_indicator("test_signups")


def test_the_baseline_continues_the_weekly_shape_and_level_of_the_history(signups):
    # Eight weeks before April: 20 a weekday, 6 on Saturdays and Sundays.
    start = date(2026, 4, 1)
    for offset in range(1, 57):
        day = start - dt.timedelta(days=offset)
        events_on("signup", day, 6 if day.weekday() >= 5 else 20)
    base = baselines.month_baselines(indicator=signups, months=[date(2026, 4, 1)])
    assert base is not None and base.history_days == 56
    # April 2026: 22 weekdays and 8 weekend days -> 22 x 20 + 8 x 6 = 488.
    assert abs(base.for_month(date(2026, 4, 1)) - D(488)) < D(5)
    assert "Holt-Winters" in base.method


def test_too_short_a_history_gives_no_baseline(signups):
    events_on("signup", date(2026, 3, 30), 5)
    assert baselines.month_baselines(indicator=signups, months=[date(2026, 4, 1)]) is None


def test_the_plan_shows_the_gap_between_target_and_baseline(signups):
    start = date(2026, 4, 1)
    for offset in range(1, 57):
        events_on("signup", start - dt.timedelta(days=offset), 10)
    g = goal(indicator=signups, period="quarter", year=2026, quarter=2, target=D("1200"))
    plan = selectors.goal_plan(g, today=date(2026, 4, 1))
    april = plan.months[0]
    assert abs(april.baseline - D(300)) < D(3)
    assert april.gap == april.target - april.baseline
    assert april.actual is None  # nothing complete yet


def _sent_campaign(n: int, **kwargs):
    make_profiles(n)
    campaign = CampaignFactory(status=CampaignStatus.RUNNING, **kwargs)
    campaign_services.start_send(campaign_id=campaign.pk)
    sent_at = timezone.now() - dt.timedelta(days=10)
    Delivery.objects.filter(campaign=campaign).update(status="sent", sent_at=sent_at)
    Assignment.objects.filter(campaign=campaign).update(assigned_at=sent_at)
    campaign.launched_at = sent_at
    campaign.save(update_fields=["launched_at"])
    return campaign, sent_at


def test_a_tactics_campaign_is_measured_against_its_holdout():
    campaign, sent_at = _sent_campaign(400, holdout_percent=D(25))
    b_users = list(campaign.assignments.filter(variant__name="B").values_list("user_id", flat=True))
    holdout = list(campaign.assignments.filter(role="holdout").values_list("user_id", flat=True))
    add_events([(u, "order_paid", sent_at + dt.timedelta(hours=1)) for u in b_users[:40]], {"amount": "10.00"})
    add_events([(u, "order_paid", sent_at + dt.timedelta(hours=1)) for u in holdout[:10]], {"amount": "10.00"})
    effect = selectors.campaign_effect(campaign)
    # A (150) converts 0, B (150) 40, the holdout (100) 10%: A is 15 below it, B 25 above.
    assert effect.holdout_size == 100 and effect.treated == 300
    assert effect.incremental_conversions == pytest.approx((0 - 0.1) * 150 + (40 / 150 - 0.1) * 150)
    assert effect.incremental_revenue == D("100.00")  # 400.00 taken by the treated vs 300.00 expected
    month = sent_at.astimezone(dt.UTC).date().replace(day=1)
    g = goal(indicator="orders", period="year", quarter=None, year=month.year, target=D("1000"))
    tactic(g, name="Push", expected_contribution=D("100"), campaign_ids=[campaign.pk])
    plan = selectors.goal_plan(g)
    row = next(m for m in plan.months if m.month == month)
    assert row.incremental == D(str(round(effect.incremental_conversions, 2)))
    assert plan.effects[0].campaign == campaign


def test_a_campaign_without_holdout_has_no_measured_effect():
    campaign, _ = _sent_campaign(40, holdout_percent=D(0))
    assert selectors.campaign_effect(campaign) is None
