"""The operators' admin: pages render, actions run through the services and are audited, the
test message reaches the gateway."""

import csv
import io
import warnings
from decimal import Decimal

import pytest
from django.core.paginator import UnorderedObjectListWarning
from django.urls import reverse

from access.models import AuditEntry
from campaigns import services
from campaigns.models import Campaign, CampaignStatus, ChannelKind
from campaigns.selectors import campaign_results
from tests.campaigns.receiver import Receiver
from tests.factories.campaigns import (
    CampaignFactory,
    ChannelFactory,
    SegmentFactory,
    campaign_admin_form,
    make_profiles,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(client, make_staff):
    client.force_login(make_staff(superuser=True))
    return client


def test_campaign_pages_show_preview_counters_results_chart_and_history(operator):
    make_profiles(20)
    campaign = CampaignFactory(status=CampaignStatus.RUNNING)
    services.start_send(campaign_id=campaign.pk)
    change = operator.get(reverse("admin:campaigns_campaign_change", args=[campaign.pk]))
    assert change.status_code == 200
    assert b"20</strong> people now" in change.content and b"live-counters" in change.content
    results = operator.get(reverse("admin:campaigns_campaign_results", args=[campaign.pk]))
    assert results.status_code == 200
    assert b"opsloop/vendor/chart.umd.min.js" in results.content and b"holdout" in results.content
    counters = operator.get(reverse("admin:campaigns_campaign_counters", args=[campaign.pk])).json()
    assert counters["assigned"] == 20 and counters["pending"] == 18
    assert operator.get(reverse("admin:campaigns_campaign_history", args=[campaign.pk])).status_code == 200
    for name in ("changelist",):
        assert operator.get(reverse(f"admin:campaigns_campaign_{name}")).status_code == 200
    assert operator.get(reverse("admin:campaigns_delivery_changelist")).status_code == 200
    assert operator.get(reverse("admin:campaigns_segment_change", args=[campaign.segment.pk])).status_code == 200


def test_campaign_results_export_as_csv_with_the_numbers_of_the_page(operator):
    make_profiles(20)
    campaign = CampaignFactory(status=CampaignStatus.RUNNING)
    services.start_send(campaign_id=campaign.pk)
    reply = operator.get(reverse("admin:campaigns_campaign_results", args=[campaign.pk]), {"format": "csv"})
    assert reply["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(reply.content.decode())))
    expected = {g["name"]: g for g in campaign_results(campaign)["groups"]}
    assert [r["Group"] for r in rows] == list(expected)
    assert sum(int(r["Assigned (people)"]) for r in rows) == 20
    for row in rows:
        assert int(row["Assigned (people)"]) == expected[row["Group"]]["assigned"]
    # Every header says its unit, money in the shop's currency.
    assert {"Conversion rate (fraction of 1)", "Revenue (¥)", "Always-valid p-value"} <= set(rows[0])


def test_results_count_the_recipients_skipped_per_reason(operator):
    make_profiles(12)
    make_profiles(8, prefix="q", push_opt_in=False)
    campaign = CampaignFactory(status=CampaignStatus.RUNNING)
    services.start_send(campaign_id=campaign.pk)
    no_consent = campaign.deliveries.filter(status="skipped", reason="NO_CONSENT").count()
    assert no_consent > 0

    page = operator.get(reverse("admin:campaigns_campaign_results", args=[campaign.pk]))

    assert page.context["skipped"] == [
        {"reason": "NO_CONSENT", "label": "No consent for this channel", "count": no_consent}
    ]
    assert b"No consent for this channel" in page.content


def test_launch_and_pause_actions_are_audited(operator):
    ChannelFactory(kind=ChannelKind.PUSH, url="http://127.0.0.1:9/never")
    campaign = CampaignFactory(schedule_kind="cron", cron="0 9 * * *")
    url = reverse("admin:campaigns_campaign_changelist")
    operator.post(url, {"action": "launch", "_selected_action": [campaign.pk]})
    assert Campaign.objects.get(pk=campaign.pk).status == "running"
    operator.post(url, {"action": "pause", "_selected_action": [campaign.pk]})
    assert Campaign.objects.get(pk=campaign.pk).status == "paused"
    actions = set(AuditEntry.objects.filter(object_id=str(campaign.pk)).values_list("action", flat=True))
    assert {"campaigns.campaign_launched", "campaigns.campaign_paused"} <= actions


def test_test_message_reaches_the_staff_device(operator):
    make_profiles(1, prefix="staff")
    with Receiver() as gateway:
        ChannelFactory(kind=ChannelKind.PUSH, url=gateway.url)
        campaign = CampaignFactory(holdout_percent=Decimal(0))
        variant = campaign.variants.get(name="B")
        response = operator.post(
            reverse("admin:campaigns_campaign_test_message", args=[campaign.pk]),
            {"variant": variant.pk, "user_id": "staff00000"},
        )
    assert response.status_code == 302
    assert len(gateway.requests) == 1
    assert gateway.requests[0]["title"].startswith("[TEST]") and gateway.requests[0]["user_id"] == "staff00000"
    assert AuditEntry.objects.filter(action="campaigns.test_message_sent").exists()


def test_admin_refuses_a_campaign_with_an_invalid_cron(operator):
    from tests.factories.campaigns import SegmentFactory

    data = campaign_admin_form(SegmentFactory(), name="Weekly", cron="99 * * * *", respect_quiet_hours="on")
    response = operator.post(reverse("admin:campaigns_campaign_add"), data)
    assert response.status_code == 200
    assert b"Invalid cron expression" in response.content
    assert not Campaign.objects.filter(name="Weekly").exists()
    data["cron"] = "0 9 * * 1"
    assert operator.post(reverse("admin:campaigns_campaign_add"), data).status_code == 302
    campaign = Campaign.objects.get(name="Weekly")
    assert campaign.variants.get().name == "A"
    assert AuditEntry.objects.filter(action="campaigns.campaign_created", object_id=str(campaign.pk)).exists()


def test_segment_autocomplete_lists_segments_by_name_in_a_stable_order(operator):
    for name in ("Winback", "All buyers", "Core tier"):
        SegmentFactory(name=name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnorderedObjectListWarning)
        reply = operator.get(
            reverse("admin:autocomplete"),
            {"app_label": "campaigns", "model_name": "campaign", "field_name": "segment", "term": ""},
        )
    assert reply.status_code == 200
    assert [row["text"] for row in reply.json()["results"]] == ["All buyers", "Core tier", "Winback"]


@pytest.mark.parametrize("typed", ["²", "1²", "9" * 30, "Spring"])
def test_a_form_with_a_coupon_rule_no_one_can_pick_is_shown_again_with_its_error(operator, typed):
    """The box re-shows what was typed; only plain digits of a real id name a rule."""
    data = campaign_admin_form(SegmentFactory(), name="Odd rule", schedule_kind="manual", cron="")
    data["variants-0-coupon_rule_id"] = typed

    response = operator.post(reverse("admin:campaigns_campaign_add"), data)

    assert response.status_code == 200
    assert response.context["inline_admin_formsets"][0].formset.errors[0]["coupon_rule_id"]
    assert not Campaign.objects.filter(name="Odd rule").exists()
    assert 'class="coupon-rule-chosen"' not in response.content.decode()


def test_the_coupon_rule_box_names_a_rule_only_for_its_id_in_plain_digits():
    from campaigns.admin import CouponRuleInput
    from tests.factories.coupons import CouponRuleFactory

    rule = CouponRuleFactory(name="Spring 20 off")
    box = CouponRuleInput()
    assert box.get_context("r", rule.pk, {})["chosen"].startswith("Spring 20 off")
    assert box.get_context("r", str(rule.pk), {})["chosen"].startswith("Spring 20 off")
    for typed in ("²", f"{rule.pk}²", "\u0661", " ", "", None, "9" * 30, -rule.pk, f"+{rule.pk}"):
        assert box.get_context("r", typed, {})["chosen"] == "", typed
