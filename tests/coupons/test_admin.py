"""The coupons admin as operators use it: lists, the report page with its chart, bulk forms and
the audited actions that move money."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from access.models import AuditEntry
from config import formatting
from coupons import services
from coupons.models import CodeBatch, Coupon, CouponRule, CouponStatus, IssuanceJob, RuleState
from tests.factories.coupons import CouponRuleFactory, person

pytestmark = pytest.mark.django_db
D = Decimal


@pytest.fixture
def operator(client, make_staff):
    client.force_login(make_staff("Operations"))
    return client


def test_rule_list_shows_money_columns(operator):
    rule = CouponRuleFactory(name="Big spenders", budget=D("500.00"))
    services.issue_coupon(rule=rule, profile=person())
    page = operator.get(reverse("admin:coupons_couponrule_changelist"))
    assert page.status_code == 200
    html = page.content.decode()
    assert "Big spenders" in html and "480.00" in html  # remaining = 500 - 20 committed


def test_admin_creates_a_tier_aware_threshold_offer_and_audits_it(operator):
    response = operator.post(
        reverse("admin:coupons_couponrule_add"),
        {
            "name": "100 off 1000 for core",
            "state": "active",
            "kind": "threshold",
            "value": "100.00",
            "min_spend": "1000.00",
            "eligible_tiers": "core,important",
            "eligible_tags": "",
            "per_user_limit": "1",
            "budget": "10000.00",
        },
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    rule = CouponRule.objects.get(name="100 off 1000 for core")
    assert rule.eligible_tiers == ["core", "important"]
    assert AuditEntry.objects.filter(action="coupons.coupon_rule_created", object_id=str(rule.pk)).exists()


def test_admin_refuses_a_budgeted_percent_rule_without_a_cap(operator):
    response = operator.post(
        reverse("admin:coupons_couponrule_add"),
        {
            "name": "Uncapped",
            "state": "active",
            "kind": "percent",
            "value": "10",
            "min_spend": "0",
            "per_user_limit": "1",
            "budget": "100",
        },
    )
    assert response.status_code == 200
    assert "max_discount" in response.context["adminform"].form.errors
    assert not CouponRule.objects.exists()


def test_editing_the_budget_in_the_admin_keeps_the_counters_and_is_audited(operator):
    rule = CouponRuleFactory(budget=D("100.00"))
    services.issue_coupon(rule=rule, profile=person())
    url = reverse("admin:coupons_couponrule_change", args=[rule.pk])
    form = operator.get(url).context["adminform"].form
    data = {k: ("" if v is None else v) for k, v in form.initial.items()}
    data.update(
        {
            "eligible_tiers": "",
            "eligible_tags": "",
            "budget": "150.00",
            "valid_from_0": "",
            "valid_from_1": "",
            "valid_until_0": "",
            "valid_until_1": "",
        }
    )
    data.pop("valid_from", None)
    data.pop("valid_until", None)
    # Meanwhile a claim moves the counters: the form's stale copy must not overwrite them.
    services.issue_coupon(rule=rule, profile=person())
    response = operator.post(url, data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    rule.refresh_from_db()
    assert (rule.budget, rule.committed, rule.issued_count) == (D("150.00"), D("40.00"), 2)
    entry = AuditEntry.objects.get(action="coupons.coupon_rule_changed", object_id=str(rule.pk))
    assert entry.details["budget"] == {"from": "100.00", "to": "150.00"}


def test_pause_action_is_audited(operator):
    rule = CouponRuleFactory()
    operator.post(reverse("admin:coupons_couponrule_changelist"), {"action": "pause", "_selected_action": [rule.pk]})
    rule.refresh_from_db()
    assert rule.state == RuleState.PAUSED
    assert AuditEntry.objects.filter(action="coupons.coupon_rule_paused", actor__isnull=False).exists()


def test_report_page_shows_the_numbers_and_a_chart(operator):
    rule = CouponRuleFactory(budget=D("100.00"))
    holder = person(tier="core")
    coupon = services.issue_coupon(rule=rule, profile=holder)
    services.redeem_coupon(code=coupon.code, user_id=holder.user_id, order_id="x", order_amount=D("70"))
    page = operator.get(reverse("admin:coupons_couponrule_report", args=[rule.pk]))
    html = page.content.decode()
    assert page.status_code == 200
    assert "opsloop/vendor/chart.umd.min.js" in html and 'id="coupon-daily"' in html
    assert "Order revenue" in html and "70.00" in html and "core" in html
    chart = json.loads(re.search(r'id="coupon-daily-data"[^>]*>(.*?)</script>', html, re.S).group(1))
    # Every one of the 60 days is on the axis, today last; the quiet ones count 0.
    assert len(chart["days"]) == 60 and chart["days"][-1] == formatting.day_label(timezone.localdate())
    assert (sum(chart["issued"]), chart["issued"][-1], sum(chart["redeemed"]), chart["redeemed"][-1]) == (1, 1, 1, 1)
    assert chart["axis"] == "coupons"


def test_the_daily_chart_counts_days_on_the_readers_clock(operator):
    rule = CouponRuleFactory(budget=D("100.00"))
    coupon = services.issue_coupon(rule=rule, profile=person())
    # Issued at 23:30 UTC yesterday: already today in Shanghai, still yesterday in UTC.
    late = timezone.now().astimezone(UTC).replace(hour=23, minute=30) - timedelta(days=1)
    Coupon.objects.filter(pk=coupon.pk).update(issued_at=late)
    url = reverse("admin:coupons_couponrule_report", args=[rule.pk])

    def issued_on(zone: str) -> dict:
        operator.cookies[formatting.TIME_ZONE_COOKIE] = zone
        rows = list(csv.reader(io.StringIO(operator.get(url, {"format": "csv", "part": "daily"}).content.decode())))
        assert rows[0][0] == f"Day ({zone})" and len(rows) == 61
        return {day: issued for day, issued, _redeemed in rows[1:] if issued != "0"}

    assert issued_on("UTC") == {late.date().isoformat(): "1"}
    assert issued_on("Asia/Shanghai") == {(late.date() + timedelta(days=1)).isoformat(): "1"}


def test_report_page_exports_its_numbers_and_its_days_as_csv(operator):
    rule = CouponRuleFactory(value=D("10.00"), budget=D("100.00"))
    holder = person()
    coupon = services.issue_coupon(rule=rule, profile=holder)
    services.redeem_coupon(code=coupon.code, user_id=holder.user_id, order_id="x", order_amount=D("70"))
    url = reverse("admin:coupons_couponrule_report", args=[rule.pk])
    numbers = dict(csv.reader(io.StringIO(operator.get(url, {"format": "csv"}).content.decode())))
    assert (
        numbers["Issued (coupons)"],
        numbers["Redeemed (coupons)"],
        numbers["Spent (¥)"],
        numbers["Order revenue (¥)"],
    ) == (
        "1",
        "1",
        "10.00",
        "70.00",
    )
    daily = list(csv.reader(io.StringIO(operator.get(url, {"format": "csv", "part": "daily"}).content.decode())))
    assert (
        numbers["Redemption rate (fraction of 1)"] == "1.0"
        and numbers["ROI (attributed: every coupon order) (ratio)"] == "6.0"
    )
    assert daily[0] == ["Day (UTC)", "Issued (coupons)", "Redeemed (coupons)"]
    assert [row for row in daily[1:] if row[1:] != ["0", "0"]] == [[timezone.localdate().isoformat(), "1", "1"]]


def test_revoke_action_returns_the_money_and_is_audited(operator):
    rule = CouponRuleFactory(budget=D("100.00"))
    coupon = services.issue_coupon(rule=rule, profile=person())
    operator.post(reverse("admin:coupons_coupon_changelist"), {"action": "revoke", "_selected_action": [coupon.pk]})
    rule.refresh_from_db()
    assert rule.committed == D("0.00")
    assert Coupon.objects.get(pk=coupon.pk).status == CouponStatus.REVOKED
    assert AuditEntry.objects.filter(action="coupons.coupon_revoked", object_id=str(coupon.pk)).exists()


def test_rollback_action_is_audited(operator):
    rule = CouponRuleFactory(budget=D("100.00"))
    holder = person()
    coupon = services.issue_coupon(rule=rule, profile=holder)
    redemption = services.redeem_coupon(code=coupon.code, user_id=holder.user_id, order_id="ord", order_amount=D("50"))
    operator.post(
        reverse("admin:coupons_redemption_changelist"), {"action": "rollback", "_selected_action": [redemption.pk]}
    )
    rule.refresh_from_db()
    assert rule.spent == D("0.00")
    assert AuditEntry.objects.filter(action="coupons.redemption_rolled_back", object_id=str(redemption.pk)).exists()


def test_issue_form_queues_a_job_for_the_listed_users(operator, django_capture_on_commit_callbacks):
    rule = CouponRuleFactory()
    with django_capture_on_commit_callbacks(execute=False):
        response = operator.post(
            reverse("admin:coupons_couponrule_issue", args=[rule.pk]), {"user_ids": "a1\na2, a3", "source_ref": ""}
        )
    job = IssuanceJob.objects.get(rule=rule)
    assert response.status_code == 302
    assert job.user_ids == ["a1", "a2", "a3"]
    assert AuditEntry.objects.filter(action="coupons.issuance_job_created", object_id=str(job.pk)).exists()


def test_code_batch_exports_as_csv(operator):
    rule = CouponRuleFactory(value=D("1.00"))
    batch = CodeBatch.objects.create(rule=rule, quantity=25, partner="Acme")
    services.generate_batch_codes(batch=batch)
    response = operator.get(reverse("admin:coupons_codebatch_export", args=[batch.pk]))
    lines = b"".join(response.streaming_content).decode().splitlines()
    assert lines[0] == "code,starts_at,expires_at"
    assert len(lines) == 26
    assert AuditEntry.objects.filter(action="coupons.code_batch_exported", object_id=str(batch.pk)).exists()


def test_coupon_search_finds_a_code_typed_with_dashes(operator):
    coupon = services.issue_coupon(rule=CouponRuleFactory(), profile=person())
    page = operator.get(reverse("admin:coupons_coupon_changelist"), {"q": coupon.display_code.lower()})
    assert coupon.display_code in page.content.decode()


def test_campaign_report_page_sums_the_coupons_of_a_source_ref_prefix(operator):
    rule = CouponRuleFactory(per_user_limit=3)
    holder = person()
    services.issue_coupon(rule=rule, profile=holder, source="campaign", source_ref="campaign:5:variant:1")
    services.issue_coupon(rule=rule, profile=holder, source="campaign", source_ref="campaign:5:variant:2")
    services.issue_coupon(rule=rule, profile=holder, source="campaign", source_ref="campaign:6:variant:1")
    page = operator.get(reverse("admin:coupons_couponrule_source_report"), {"prefix": "campaign:5:"})
    assert page.status_code == 200
    assert page.context["report"].issued == 2
    assert sum(page.context["chart_data"]["issued"]) == page.context["chart_data"]["issued"][-1] == 2


def test_report_page_writes_money_rates_and_roi_through_the_one_formatting_helper(operator):
    rule = CouponRuleFactory(value=D("10.00"), budget=D("1500.00"))
    holder = person(tier="core")
    coupon = services.issue_coupon(rule=rule, profile=holder)
    services.redeem_coupon(code=coupon.code, user_id=holder.user_id, order_id="x", order_amount=D("1070"))
    page = operator.get(reverse("admin:coupons_couponrule_report", args=[rule.pk]))
    numbers = dict(page.context["numbers"])
    assert numbers["Budget"] == "¥1,500.00" and numbers["Spent"] == "¥10.00"
    assert numbers["Order revenue"] == "¥1,070.00"
    assert numbers["ROI (attributed: every coupon order)"] == "106.00"
    assert numbers["Redemption rate"] == "100.0 %"
    html = page.content.decode()
    assert "<td>core</td><td>1</td><td>1</td>\n          <td>100.0 %</td>" in html
    assert "floatformat" not in html
