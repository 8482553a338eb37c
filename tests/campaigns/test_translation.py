"""The campaigns admin in Simplified Chinese: the campaign form with its live counters, the launch
forecast, the results with their chart, the iterations, the roll-out and test-message pages."""

from __future__ import annotations

import pytest
from django.urls import reverse

from campaigns import services
from campaigns.models import CampaignStatus
from tests.factories.campaigns import CampaignFactory, make_profiles
from tests.in_chinese import assert_reads_in_chinese, get_in_chinese

pytestmark = pytest.mark.django_db


@pytest.fixture
def running():
    make_profiles(20)
    campaign = CampaignFactory(status=CampaignStatus.RUNNING)
    services.start_send(campaign_id=campaign.pk)
    return campaign


def test_campaign_list_and_form_read_in_chinese(admin_client, running):
    listing = get_in_chinese(admin_client, reverse("admin:campaigns_campaign_changelist"))
    assert_reads_in_chinese(
        listing,
        chinese=["启动所选活动", "将胜出方案推全给其余用户（试点之后）", "运行中"],
        english=["Launch selected campaigns", "Roll out the winner"],
    )
    form = get_in_chinese(admin_client, reverse("admin:campaigns_campaign_change", args=[running.pk]))
    assert_reads_in_chinese(
        form,
        chinese=["实验设计", "排期与限制", "迭代历史", "发送测试消息", "计数（实时）", "等待中", "人（当前）。样例："],
        english=["Test design", "Schedule and limits", "History of iterations", "Counters (live)", "people now"],
    )


def test_launch_forecast_reads_in_chinese(admin_client):
    make_profiles(5)
    draft = CampaignFactory()
    html = get_in_chinese(admin_client, reverse("admin:campaigns_campaign_launch", args=[draft.pk]))
    assert_reads_in_chinese(
        html,
        chinese=["启动后会发生什么", "当前受众", "待发送消息", "立即启动", "返回活动"],
        english=["What launching does", "Audience now", "Messages to send", "Launch now"],
    )


def test_results_and_iterations_read_in_chinese(admin_client, running):
    results = get_in_chinese(admin_client, reverse("admin:campaigns_campaign_results", args=[running.pk]))
    assert_reads_in_chinese(
        results,
        chinese=[
            "尚无胜出方案",
            "样本比例失衡（SRM）",
            "此前 30 天的订单数",
            "全部统计量",
            "转化率（%）",
            "对照组",
            "个百分点",
        ],
        english=[
            "No winner yet",
            "Sample-ratio mismatch",
            "orders in the 30 days before",
            "All statistics",
            "holdout",
            " pts",
        ],
    )
    history = get_in_chinese(admin_client, reverse("admin:campaigns_campaign_history", args=[running.pk]))
    assert_reads_in_chinese(history, chinese=["第 1 轮："], english=["Iteration 1:"])


def test_rollout_and_test_message_pages_read_in_chinese(admin_client, running):
    rollout = get_in_chinese(admin_client, reverse("admin:campaigns_campaign_rollout", args=[running.pk]))
    assert_reads_in_chinese(
        rollout,
        chinese=["始终有效的胜出方案是", "我接受上述风险", "尚无证据表明"],
        english=["The always-valid winner is", "I accept the risk", "is not shown to be better"],
    )
    test = get_in_chinese(admin_client, reverse("admin:campaigns_campaign_test_message", args=[running.pk]))
    assert_reads_in_chinese(
        test, chinese=["发送测试消息", "你在产品中的用户 ID"], english=["Send test message", "Your own user id"]
    )
