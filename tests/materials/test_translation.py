"""The materials admin in Simplified Chinese: the library, a version's form with its variables,
the preview with its test send, and a material's record across campaigns."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import translation

from tests.factories.materials import MaterialFactory, MaterialVersionFactory
from tests.in_chinese import assert_reads_in_chinese, get_in_chinese

pytestmark = pytest.mark.django_db


@pytest.fixture
def version():
    return MaterialVersionFactory(material=MaterialFactory(channel="sms"), title="", body="Hi {{ name }}")


def test_material_list_and_record_read_in_chinese(admin_client, version):
    listing = get_in_chinese(admin_client, reverse("admin:materials_material_changelist"))
    assert_reads_in_chinese(
        listing, chinese=["最新版本", "各活动表现", "发送与效果"], english=["Latest version", "Sends and effect"]
    )
    record = get_in_chinese(admin_client, reverse("admin:materials_material_performance", args=[version.material.pk]))
    assert_reads_in_chinese(
        record,
        chinese=["还没有活动发送过本素材。", "相对对照组提升", "发送过本素材某个版本的每个活动方案"],
        english=["No campaign has sent this material yet.", "Uplift vs holdout", "Every campaign variant"],
    )


def test_version_form_lists_its_variables_in_chinese(admin_client, version):
    html = get_in_chinese(admin_client, reverse("admin:materials_materialversion_change", args=[version.pk]))
    assert_reads_in_chinese(
        html,
        chinese=["模板可用的变量", "用户所在城市", "预览并发送测试", "审批通过以供发送"],
        english=["Variables a template may use", "The person's city", "Preview and send a test"],
    )


def test_preview_reads_in_chinese(admin_client, version):
    html = get_in_chinese(admin_client, reverse("admin:materials_materialversion_preview", args=[version.pk]))
    assert_reads_in_chinese(
        html,
        chinese=["按用户 ID 渲染", "使用示例值", "短信长度", "发送测试"],
        english=["Render for user id", "With sample values", "SMS size", "Send a test"],
    )


def test_a_template_error_is_explained_in_chinese(admin_client, version):
    url = reverse("admin:materials_materialversion_change", args=[version.pk])
    data = {"body": "Hi {{ points }}", "url": "", "defaults": "{}"}
    with translation.override("zh-hans"):
        page = admin_client.post(url, data, HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "未知变量 &#x27;points&#x27; 且没有默认值" in page or "未知变量 'points' 且没有默认值" in page
    assert "Unknown variable" not in page
