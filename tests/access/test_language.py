"""The admin speaks the reader's language: the browser's (Accept-Language) or the staff member's own
choice from the header's switch, which is kept for them and applied at each login on any device.
The pages of the lower apps (index, a changelist and a change form of each, the customer-service
lookup) read in Chinese under zh-hans, with no English label left of those checked."""

from __future__ import annotations

import json

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse
from django.utils import translation

from access import services as access_services
from access.models import StaffLanguage
from indicators.models import Funnel
from monitoring.models import TaskRun
from tests.factories.crm import ValueTierFactory
from tests.factories.predictions import PredictedTierFactory
from tests.factories.profiles import ProfileFactory
from tests.factories.tracking import EventFactory

ZH = {"HTTP_ACCEPT_LANGUAGE": "zh-hans"}
EN = {"HTTP_ACCEPT_LANGUAGE": "en"}


@pytest.fixture(autouse=True)
def _no_language_left_active():
    """A request activates its language in the test's own thread and leaves it active: the tests
    after these ones must not find Chinese."""
    yield
    translation.deactivate()


@pytest.fixture
def superuser(make_staff):
    return make_staff(superuser=True, username="chief")


def _client_as(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _page(client: Client, url: str, **headers) -> str:
    response = client.get(url, **headers)
    assert response.status_code == 200, (url, response.status_code)
    return response.content.decode()


def _reads(html: str, *, chinese: list[str], english: list[str]) -> None:
    missing = [text for text in chinese if text not in html]
    left = [text for text in english if text in html]
    assert not missing and not left, f"missing Chinese {missing}; English left {left}"


@pytest.mark.django_db
def test_the_admin_index_follows_the_browser_language(superuser):
    client = _client_as(superuser)
    index = reverse("admin:index")
    _reads(
        _page(client, index, **ZH),
        chinese=["访问与审计", "埋点采集", "指标", "用户画像", "客户价值", "预测", "监控", "API 密钥", "审计记录"],
        english=["Access and audit", "Customer value", "Audit entries", "API keys", "Operations back office"],
    )
    _reads(_page(client, index, **EN), chinese=[], english=["访问与审计", "客户价值"])
    assert "Access and audit" in _page(client, index, **EN)


def _pages(db_objects) -> list[tuple[str, list[str], list[str]]]:
    """(url, Chinese texts it must show, English texts it must not) for each page checked."""
    key, event, funnel, profile, tier, predicted, run = db_objects
    return [
        (
            reverse("admin:access_apikey_changelist"),
            ["API 密钥", "权限范围", "最近使用时间", "吊销所选密钥"],
            ["Revoke selected keys", "Last used at", "Scopes"],
        ),
        (
            reverse("admin:access_apikey_change", args=[key.pk]),
            ["名称", "前缀", "吊销时间"],
            ["Revoked at", "Created by"],
        ),
        (reverse("admin:access_auditentry_changelist"), ["审计记录", "操作人", "对象类型"], ["Object type", "Actor"]),
        (
            reverse("admin:tracking_event_changelist"),
            ["事件", "接收时间", "UTM 来源", "所列事件近 30 天的每日数量"],
            ["Received at", "Anonymous id", "Events per day"],
        ),
        (
            reverse("admin:tracking_event_change", args=[event.pk]),
            ["属性", "上下文", "其他上下文", "事件 ID"],
            ["Other context", "Event id"],
        ),
        (
            reverse("admin:indicators_funnel_changelist"),
            ["漏斗", "窗口时长（小时）", "分析"],
            ["Window hours", ">Analyze<"],
        ),
        (
            reverse("admin:indicators_funnel_change", args=[funnel.pk]),
            ["名称", "描述", "漏斗步骤", "事件名"],
            ["Funnel steps", "Event name", "Every later step"],
        ),
        (
            reverse("admin:indicators_dailyindicator_changelist"),
            ["指标趋势", "留存同期群", "导出 CSV", "日活跃用户数"],
            ["Indicator trends", "Export CSV", "Daily active users"],
        ),
        (
            reverse("admin:profiles_profile_changelist"),
            ["用户画像", "注册时间", "客服查询", "为所选画像添加标签"],
            ["Signup at", "Customer-service lookup", "Add the tag to"],
        ),
        (
            reverse("admin:profiles_profile_change", args=[profile.pk]),
            ["手机号", "城市", "性别", "自定义特征"],
            ["Birth date", "Custom traits"],
        ),
        (reverse("admin:crm_valuetier_changelist"), ["价值分层", "名称"], ["Value tiers", "Gets account manager"]),
        (
            reverse("admin:crm_valuetier_change", args=[tier.pk]),
            ["条件（须全部满足；留空表示不限）", "越高价值越大"],
            ["Conditions (all must hold", "Higher is more valuable"],
        ),
        (
            reverse("admin:crm_customervalue_changelist"),
            ["客户价值", "分布（80/20）", "分层迁移", "尚未重算"],
            ["Distribution (80/20)", "Tier movements", "No recompute yet"],
        ),
        (reverse("admin:predictions_predictedtier_changelist"), ["预测分层"], ["Predicted tiers"]),
        (
            reverse("admin:predictions_predictedtier_change", args=[predicted.pk]),
            ["越高越先匹配", "预测 365 天价值不低于该百分位"],
            ["Higher is checked first", "Predicted 365-day value at or above"],
        ),
        (
            reverse("admin:monitoring_taskrun_changelist"),
            ["任务运行", "运行次数", "失败次数"],
            ["Task runs", "Failures"],
        ),
        (
            reverse("admin:monitoring_taskrun_change", args=[run.pk]),
            ["自创建以来记录的运行次数", "其中失败次数"],
            ["Runs recorded since", "Of which failed"],
        ),
        (
            reverse("admin:monitoring_health_changelist"),
            ["健康状况", "队列", "定时任务（beat）", "失败或卡住"],
            ["Scheduled tasks (beat)", "Failed or stuck", "messages waiting"],
        ),
        (
            reverse("admin:profiles_profile_lookup") + "?q=zh-caller",
            ["客服查询", "首次出现", "最近事件", "仅精确匹配"],
            ["Exact matches only", "Latest events", "First seen"],
        ),
    ]


@pytest.fixture
def db_objects(superuser):
    key = access_services.create_api_key(name="shop", scopes=["events:write"], created_by=superuser).api_key
    event = EventFactory(user_id="zh-caller")
    funnel = Funnel.objects.create(name="checkout", window_hours=24)
    profile = ProfileFactory(user_id="zh-caller")
    tier = ValueTierFactory()
    predicted = PredictedTierFactory()
    run = TaskRun.objects.create(task="indicators.tasks.rollup_hourly", state=TaskRun.State.FAILED, error="boom")
    return key, event, funnel, profile, tier, predicted, run


@pytest.mark.django_db
def test_the_lower_apps_pages_read_in_chinese(superuser, db_objects):
    client = _client_as(superuser)
    failures = []
    for url, chinese, english in _pages(db_objects):
        html = _page(client, url, **ZH)
        missing = [text for text in chinese if text not in html]
        left = [text for text in english if text in html]
        if missing or left:
            failures.append(f"{url}: missing {missing}, English left {left}")
    assert not failures, "\n".join(failures)


@pytest.mark.django_db
def test_the_language_switch_is_kept_for_the_staff_member_across_sessions_and_devices(superuser, django_user_model):
    laptop = _client_as(superuser)
    response = laptop.post(reverse("set_language"), {"language": "zh-hans", "next": reverse("admin:index")}, **EN)
    assert response.status_code == 302 and response["Location"] == reverse("admin:index")
    assert StaffLanguage.objects.get(user=superuser).language == "zh-hans"
    # The laptop reads Chinese although its browser asks for English.
    assert "访问与审计" in _page(laptop, reverse("admin:index"), **EN)

    # Another device, whose browser asks for English, logs in with the password: Chinese again.
    phone = Client()
    login = phone.post(
        reverse("admin:login") + "?next=" + reverse("admin:index"),
        {"username": "chief", "password": "pw-for-tests"},
        **EN,
    )
    assert login.status_code == 302
    page = phone.get(reverse("admin:index"), **EN)
    assert "访问与审计" in page.content.decode()
    assert page.cookies[settings.LANGUAGE_COOKIE_NAME].value == "zh-hans"  # the login page follows too

    # Another staff member keeps the browser's language.
    other = django_user_model.objects.create_user(username="other", password="pw-for-tests", is_staff=True)
    assert "访问与审计" not in _page(_client_as(other), reverse("admin:index"), **EN)

    # Switching back is kept as well.
    phone.post(reverse("set_language"), {"language": "en", "next": "/admin/"}, **ZH)
    assert StaffLanguage.objects.get(user=superuser).language == "en"
    assert "Access and audit" in _page(_client_as(superuser), reverse("admin:index"), **ZH)


@pytest.mark.django_db
def test_an_unknown_language_changes_nothing(superuser):
    client = _client_as(superuser)
    client.post(reverse("set_language"), {"language": "zh-hans", "next": "/admin/"})
    response = client.post(reverse("set_language"), {"language": "xx-evil", "next": "/admin/"})
    assert response.status_code == 302
    assert StaffLanguage.objects.get(user=superuser).language == "zh-hans"


@pytest.mark.django_db
def test_the_header_offers_the_switch(superuser):
    html = _page(_client_as(superuser), reverse("admin:index"), **ZH)
    assert 'id="language-form"' in html and reverse("set_language") in html
    assert '<option value="zh-hans" selected lang="zh-hans">简体中文</option>' in html
    assert '<option value="en" lang="en">English</option>' in html


@pytest.mark.django_db
def test_the_javascript_catalogue_is_served_in_the_readers_language(superuser):
    client = _client_as(superuser)
    response = client.get(reverse("javascript-catalog"), **ZH)
    assert response.status_code == 200 and response["Content-Type"].startswith("text/javascript")
    # The segment builder's own texts, in Chinese (the catalogue, not just Django's JS helpers).
    # Django writes the catalogue with json.dumps, so the Chinese arrives \u-escaped.
    body = response.content.decode()
    assert json.dumps("Negate: people who do not match") in body and json.dumps("取反：选出不满足条件的人") in body
    assert response["Content-Language"] == "zh-hans"


def test_times_and_days_read_as_the_readers_language_writes_them():
    from datetime import UTC, date, datetime

    from config.formatting import local_date, local_time

    moment = datetime(2026, 11, 27, 12, 1, tzinfo=UTC)
    with translation.override("en"):
        assert (local_time(moment), local_date(date(2026, 11, 27))) == ("27 Nov 2026, 12:01 UTC", "27 Nov 2026")
    with translation.override("zh-hans"):
        assert (local_time(moment), local_date(date(2026, 11, 27))) == ("2026年11月27日 12:01 UTC", "2026年11月27日")
