"""The planning admin in Simplified Chinese: the goal plan with its chart, the team board and the
monthly review."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.urls import reverse

from planning import services
from tests.factories.indicators import goal
from tests.factories.planning import phase, tactic, task
from tests.in_chinese import assert_reads_in_chinese, get_in_chinese

pytestmark = pytest.mark.django_db


@pytest.fixture
def yearly():
    g = goal(indicator="revenue", period="year", quarter=None, year=2026, target=Decimal("12000"), name="Revenue 2026")
    tactic(g, name="Win back", expected_contribution=Decimal("6000"), starts_on="2026-07")
    services.decompose_by_tactics(goal=g)
    task(phase(g), title="Call the lapsed")
    return g


def test_goal_plan_reads_in_chinese(admin_client, yearly):
    html = get_in_chinese(admin_client, reverse("admin:planning_goal_plan", args=[yearly.pk]))
    assert_reads_in_chinese(
        html,
        chinese=[
            "每月目标、实际、基线与差距",
            "自然增长基线：",
            "待弥补差距",
            "以对照组衡量的活动",
            "进度页面",
            "之前的历史数据不足",
        ],
        english=[
            "Target, actual, baseline and gap per month",
            "Gap to close",
            "Campaigns measured against",
            "exponential smoothing",
            "days of history",
        ],
    )
    assert '{type: "line", label: "目标"' in html  # the chart's legend too


def test_board_and_review_read_in_chinese(admin_client, yearly):
    board = get_in_chinese(admin_client, reverse("admin:planning_task_board"))
    assert_reads_in_chinese(
        board,
        chinese=["待办", "进行中", "已完成", "已逾期", "截止 "],
        english=["To do", "Doing", "Late: not done after the due date"],
    )
    review = get_in_chinese(admin_client, reverse("admin:planning_review"), {"month": "2026-07"})
    assert_reads_in_chinese(
        review,
        chinese=["2026年7月 复盘：整体运营", "目标：目标值、实际值与自然增长基线", "变化最大的", "打印版"],
        english=["Review of", "Goals: target, actual", "What changed most", "Printable page"],
    )
