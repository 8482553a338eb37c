"""The campaign page an operator follows: a Launch button with a forecast of what launching does,
a status that stays open while conversions still count, the coupon rule picked by name."""

import datetime as dt
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaigns import selectors, services
from campaigns.models import Campaign, CampaignStatus, ChannelKind, DailySendCount
from coupons.models import CouponRule
from tests.factories.campaigns import CampaignFactory, ChannelFactory, make_profiles
from tests.factories.coupons import CouponRuleFactory, PercentRuleFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(client, make_staff):
    client.force_login(make_staff(superuser=True))
    return client


def test_the_forecast_counts_audience_holdout_consent_and_frequency_cap():
    consenting = make_profiles(30)
    make_profiles(10, prefix="q", push_opt_in=False)
    today = timezone.now().date()
    DailySendCount.objects.bulk_create([DailySendCount(profile=p, day=today, count=2) for p in consenting[:5]])
    campaign = CampaignFactory(holdout_percent=Decimal(0), frequency_cap_per_day=2)

    forecast = selectors.launch_forecast(campaign)

    assert (forecast["audience"], forecast["holdout"]) == (40, 0)
    assert (forecast["no_consent"], forecast["frequency_capped"], forecast["will_send"]) == (10, 5, 25)


def test_the_consent_forecast_is_what_the_launch_then_skips():
    make_profiles(24)
    make_profiles(6, prefix="q", push_opt_in=False)
    campaign = CampaignFactory(holdout_percent=Decimal(0), status=CampaignStatus.RUNNING)
    forecast = selectors.launch_forecast(campaign)

    services.start_send(campaign_id=campaign.pk)

    skipped = {r["reason"]: r["count"] for r in selectors.skipped_by_reason(campaign)}
    assert skipped == {"NO_CONSENT": forecast["no_consent"]} == {"NO_CONSENT": 6}


def test_the_forecast_commits_each_variants_coupon_money_and_warns_past_the_budget():
    make_profiles(20)
    fixed = CouponRuleFactory(value=Decimal("20.00"), budget=Decimal("150.00"))
    capped = PercentRuleFactory(value=Decimal("10.00"), max_discount=Decimal("30.00"), budget=None)
    campaign = CampaignFactory(holdout_percent=Decimal(0))
    campaign.variants.filter(name="A").update(coupon_rule_id=fixed.pk)
    campaign.variants.filter(name="B").update(coupon_rule_id=capped.pk)

    coupons = {c["variant"]: c for c in selectors.launch_forecast(campaign)["coupons"]}

    assert (coupons["A"]["recipients"], coupons["A"]["commit_at_most"]) == (10, Decimal("200.00"))
    assert coupons["A"]["over_budget"] is True and coupons["A"]["budget_left"] == Decimal("150.00")
    assert (coupons["B"]["commit_at_most"], coupons["B"]["over_budget"]) == (Decimal("300.00"), False)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    holdout=st.integers(min_value=0, max_value=50),
    without_consent=st.integers(min_value=0, max_value=12),
    capped=st.integers(min_value=0, max_value=12),
)
def test_any_forecast_adds_up_to_its_audience(holdout, without_consent, capped):
    Campaign.objects.all().delete()
    make_profiles(12, prefix=f"h{holdout}-{without_consent}-{capped}-")
    with_consent = list(make_profiles(12, prefix=f"c{holdout}-{without_consent}-{capped}-"))
    make_profiles(without_consent, prefix=f"n{holdout}-{without_consent}-{capped}-", push_opt_in=False)
    today = timezone.now().date()
    DailySendCount.objects.bulk_create(
        [DailySendCount(profile=p, day=today, count=1) for p in with_consent[:capped]], ignore_conflicts=True
    )
    campaign = CampaignFactory(holdout_percent=Decimal(holdout), frequency_cap_per_day=1)
    f = selectors.launch_forecast(campaign)
    assert f["will_send"] >= 0
    assert f["holdout"] + f["no_consent"] + f["frequency_capped"] + f["will_send"] == f["audience"]


def test_the_launch_button_shows_the_forecast_then_launches(operator):
    make_profiles(10)
    ChannelFactory(kind=ChannelKind.PUSH, url="http://127.0.0.1:9/never")
    campaign = CampaignFactory(schedule_kind="cron", cron="0 9 * * *")
    change = operator.get(reverse("admin:campaigns_campaign_change", args=[campaign.pk])).content.decode()
    assert 'id="launch-button"' in change

    page = operator.get(reverse("admin:campaigns_campaign_launch", args=[campaign.pk]))
    assert page.context["forecast"]["audience"] == 10 and b'id="launch-now"' in page.content

    reply = operator.post(reverse("admin:campaigns_campaign_launch", args=[campaign.pk]))
    assert reply.status_code == 302
    assert Campaign.objects.get(pk=campaign.pk).status != CampaignStatus.DRAFT
    again = operator.get(reverse("admin:campaigns_campaign_change", args=[campaign.pk])).content.decode()
    assert 'id="launch-button"' not in again


def test_a_refused_launch_says_why_and_leaves_the_draft(operator):
    campaign = CampaignFactory()  # the push channel has no gateway configured

    page = operator.post(reverse("admin:campaigns_campaign_launch", args=[campaign.pk]), follow=True)

    assert "no gateway URL configured" in page.content.decode()
    assert Campaign.objects.get(pk=campaign.pk).status == CampaignStatus.DRAFT


def test_the_launch_page_is_closed_to_staff_who_may_not_send(client, make_staff):
    campaign = CampaignFactory()
    client.force_login(make_staff("Analyst"))
    assert client.get(reverse("admin:campaigns_campaign_launch", args=[campaign.pk])).status_code == 403


def test_a_sent_campaign_reads_as_counting_conversions_until_its_window_closes():
    now = timezone.now()
    campaign = CampaignFactory(status=CampaignStatus.SENT, attribution_hours=72)
    campaign.sent_at = now - dt.timedelta(hours=10)
    assert selectors.shown_status(campaign).startswith("Sent; counting conversions until")
    assert not selectors.results_are_final(campaign)
    campaign.status, campaign.results_snapshot = CampaignStatus.COMPLETED, {"groups": [], "winner": None}
    assert selectors.shown_status(campaign) == "Completed (attribution window closed)"
    assert selectors.results_are_final(campaign)


def test_the_history_counts_conversions_live_until_the_window_closes(operator):
    campaign = CampaignFactory(status=CampaignStatus.SENT, attribution_hours=72)
    campaign.sent_at = timezone.now()
    campaign.results_snapshot = {"groups": [{"name": "A", "converted": 0}], "winner": None}
    campaign.save()

    page = operator.get(reverse("admin:campaigns_campaign_history", args=[campaign.pk]))

    (row,) = page.context["rows"]
    assert row["results"] != campaign.results_snapshot  # computed now, not the frozen zeros
    assert row["status"].startswith("Sent; counting conversions until")


def test_a_variant_picks_its_coupon_rule_by_name(operator):
    rule = CouponRuleFactory(name="Spring 20 off")
    campaign = CampaignFactory()
    campaign.variants.filter(name="A").update(coupon_rule_id=rule.pk)

    html = operator.get(reverse("admin:campaigns_campaign_change", args=[campaign.pk])).content.decode()

    assert 'list="coupon-rule-choices"' in html
    assert f'<option value="{rule.pk}">Spring 20 off (¥20.00 off)</option>' in html
    assert '<span class="coupon-rule-chosen">Spring 20 off (¥20.00 off)</span>' in html


def test_a_percent_rule_without_a_cap_reads_as_a_share_of_each_order_not_as_money(operator):
    make_profiles(20)
    uncapped = PercentRuleFactory(name="Tenth off", value=Decimal("10.00"), max_discount=None, budget=None)
    fixed = CouponRuleFactory(value=Decimal("20.00"))
    campaign = CampaignFactory(holdout_percent=Decimal(0))
    campaign.variants.filter(name="A").update(coupon_rule_id=uncapped.pk)
    campaign.variants.filter(name="B").update(coupon_rule_id=fixed.pk)

    page = operator.get(reverse("admin:campaigns_campaign_launch", args=[campaign.pk])).content.decode()
    table = page.split('id="launch-coupons"')[1].split("</table>")[0]
    row = table.split("Tenth off")[1].split("</tr>")[0]
    assert "¥" not in row and "up to 10 % of each order" in row and "No upper bound" in row
    total = table.split("In all, at most")[1]
    assert "No upper bound" in total and "¥" not in total

    forecast = selectors.launch_forecast(campaign)
    coupons = {c["variant"]: c for c in forecast["coupons"]}
    assert coupons["A"]["recipients"] == 10 and coupons["A"]["each_percent"] == Decimal("10.00")
    assert coupons["A"]["each_at_most"] is None and coupons["A"]["commit_at_most"] is None
    assert coupons["B"]["each_percent"] is None and coupons["B"]["commit_at_most"] == Decimal("200.00")
    assert forecast["coupon_commit_at_most"] is None  # no bound when one variant has none


def test_the_budget_left_is_what_neither_live_coupons_nor_redemptions_have_taken():
    make_profiles(4)
    rule = CouponRuleFactory(value=Decimal("20.00"), budget=Decimal("150.00"))
    CouponRule.objects.filter(pk=rule.pk).update(committed=Decimal("40.00"), spent=Decimal("60.00"))
    campaign = CampaignFactory(holdout_percent=Decimal(0))
    campaign.variants.update(coupon_rule_id=rule.pk)

    coupons = selectors.launch_forecast(campaign)["coupons"]

    assert [c["budget_left"] for c in coupons] == [Decimal("50.00")] * 2
    assert [c["over_budget"] for c in coupons] == [False, False]  # 2 x 20 each, 50 left
