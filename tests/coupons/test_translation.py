"""The coupons admin in Simplified Chinese: the rule list and form, the report with its chart, the
ROI and channel-quality pages, the bulk forms and the CSV headers read in Chinese, not English."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import translation

from coupons import services
from tests.factories.coupons import CouponRuleFactory, person
from tests.in_chinese import assert_reads_in_chinese, get_in_chinese

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(client, make_staff):
    client.force_login(make_staff("Operations"))
    return client


@pytest.fixture
def rule():
    rule = CouponRuleFactory(name="Big spenders", budget=Decimal("500.00"))
    services.issue_coupon(rule=rule, profile=person())
    return rule


def test_rule_list_reads_in_chinese(operator, rule):
    html = get_in_chinese(operator, reverse("admin:coupons_couponrule_changelist"))
    assert_reads_in_chinese(
        html,
        chinese=["各规则 ROI", "渠道质量", "按活动查看报表", "启用所选规则", "已占用", "剩余", "报表"],
        english=["ROI by rule", "Channel quality", "Activate selected rules", "Committed", "Remaining"],
    )


def test_rule_form_reads_in_chinese(operator, rule):
    html = get_in_chinese(operator, reverse("admin:coupons_couponrule_change", args=[rule.pk]))
    assert_reads_in_chinese(
        html,
        chinese=[
            "优惠内容",
            "适用条件",
            "可领取人群",
            "一单多券",
            "资金情况",
            "发放给用户",
            "合作方券码",
            "最低订单金额（门槛）",
        ],
        english=["What it gives", "When it applies", "Who may have it", "Money so far", "Issue to users"],
    )


def test_rule_report_reads_in_chinese(operator, rule):
    html = get_in_chinese(operator, reverse("admin:coupons_couponrule_report", args=[rule.pk]))
    assert_reads_in_chinese(
        html,
        chinese=[
            "已发放",
            "核销率",
            "各分层核销率",
            "每日发放与核销（最近 60 天）",
            "优惠券能打动谁（增益）",
            "生效中",
        ],
        english=["Redemption rate", "Issued and redeemed per day", "Who the coupon persuades", "Not fitted yet"],
    )
    assert '{label: "已发放"' in html  # the chart's legend too


def test_roi_and_channel_pages_read_in_chinese(operator, rule):
    roi = get_in_chinese(operator, reverse("admin:coupons_couponrule_roi"))
    assert_reads_in_chinese(
        roi,
        chinese=["各规则优惠券 ROI", "订单收入", "全部规则", "下载 CSV"],
        english=["Coupon ROI by rule", "Order revenue", "All rules", "Download CSV"],
    )
    channels = get_in_chinese(operator, reverse("admin:coupons_channel_quality"))
    assert_reads_in_chinese(
        channels,
        chinese=["新增用户时间：从", "第7日留存", "优惠券成本 / 转化用户", "各渠道新增与转化用户"],
        english=["People who joined from", "Day-7 retention", "New and converted users per source"],
    )


def test_issue_form_and_its_refusal_read_in_chinese(operator, rule):
    url = reverse("admin:coupons_couponrule_issue", args=[rule.pk])
    html = get_in_chinese(operator, url)
    assert_reads_in_chinese(
        html,
        chinese=["向用户或人群发放优惠券", "每行一个用户 ID"],
        english=["Issue coupons to users", "One user id per line"],
    )
    with translation.override("zh-hans"):
        refused = operator.post(url, {"user_ids": "", "segment": ""}, HTTP_ACCEPT_LANGUAGE="zh-hans")
    assert "请填写用户 ID 或人群，二选一。" in refused.content.decode()


def test_csv_headers_follow_the_language(operator, rule):
    url = reverse("admin:coupons_couponrule_roi")
    with translation.override("zh-hans"):
        zh = operator.get(url, {"format": "csv"}, HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    en = operator.get(url, {"format": "csv"}).content.decode()
    assert zh.splitlines()[0].startswith("规则ID,规则,状态,已发放 (优惠券)")
    assert en.splitlines()[0].startswith("Rule id,Rule,State,Issued (coupons)")
