"""The community admin in Simplified Chinese: the funnel with its cohorts, group health,
competitor apps, the contribution ranking with a score's breakdown, and the score runs."""

from __future__ import annotations

from datetime import date

import pytest
from django.urls import reverse
from django.utils import translation

from community.models import ContributionScore, ScoreRun
from tests.factories.community import CommunityGroupFactory, OperatorFactory
from tests.in_chinese import assert_reads_in_chinese, get_in_chinese

pytestmark = pytest.mark.django_db


def test_funnel_health_and_apps_pages_read_in_chinese(admin_client):
    CommunityGroupFactory(external_id="g-1")
    funnel = get_in_chinese(admin_client, reverse("admin:community_funnel"))
    assert_reads_in_chinese(
        funnel,
        chinese=["社群漏斗", "到达产品内页面", "复购", "按首次接触周划分的同期群", "按渠道"],
        english=["Community funnel", "Reached the in-product page", "Bought again", "Cohorts by week", "By channel"],
    )
    health = get_in_chinese(admin_client, reverse("admin:community_health"))
    assert_reads_in_chinese(
        health,
        chinese=["社群健康度", "活跃占比", "成员复购率", "匹配的非成员"],
        english=["Group health", "Active share", "Members' repurchase", "Matched non-members"],
    )
    apps = get_in_chinese(admin_client, reverse("admin:community_apps"))
    assert_reads_in_chinese(
        apps,
        chinese=["竞品应用", "装有时留存", "还没有安装应用列表"],
        english=["Competitor apps", "Retention with", "No installed-app lists yet"],
    )


def test_ranking_score_and_runs_read_in_chinese(admin_client):
    run = ScoreRun.objects.create(month=date(2026, 5, 1), status=ScoreRun.Status.DONE)
    score = ContributionScore.objects.create(
        run=run,
        month=run.month,
        subject="operator",
        operator=OperatorFactory(username="dora"),
        score=61,
        rank=1,
        breakdown={"campaign_incremental": {"raw": "20.00", "percentile": 75.0, "weight": "1.00"}},
        sources={},
    )
    ranking = get_in_chinese(admin_client, reverse("admin:community_contributionscore_changelist"))
    assert_reads_in_chinese(
        ranking,
        chinese=["运营人员 / 团队", "活动相对对照组的效果", "权重", "每个维度显示其原始值"],
        english=["operator / team", "Campaign results against holdouts", "Each dimension shows"],
    )
    detail = get_in_chinese(admin_client, reverse("admin:community_contributionscore_change", args=[score.pk]))
    assert_reads_in_chinese(
        detail,
        chinese=["得分明细", "按月历史", "排名第 1", "2026年5月 排名"],
        english=["Breakdown", "History by month", "Ranking May 2026", "2026-05"],
    )
    runs = get_in_chinese(admin_client, reverse("admin:community_scorerun_changelist"))
    assert_reads_in_chinese(runs, chinese=["评分月份", "立即评分"], english=["Score month", "Score now"])


def test_a_bad_range_is_refused_in_chinese(admin_client):
    with translation.override("zh-hans"):
        page = admin_client.get(
            reverse("admin:community_funnel"),
            {"start": "2026-05-02", "end": "2026-05-01"},
            HTTP_ACCEPT_LANGUAGE="zh-hans",
        )
    assert "结束日期必须晚于开始日期。" in page.content.decode()
