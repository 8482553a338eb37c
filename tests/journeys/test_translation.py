"""The journeys admin in Simplified Chinese: the journey list, its form with the steps inline and
the steps page with its counts and chart."""

from __future__ import annotations

import pytest
from django.urls import reverse

from journeys import services
from tests.factories.campaigns import CampaignFactory
from tests.in_chinese import assert_reads_in_chinese, get_in_chinese

pytestmark = pytest.mark.django_db


@pytest.fixture
def journey():
    campaign = CampaignFactory(variants=[("A", 50), ("B", 50)])
    variants = dict(campaign.variants.values_list("name", "pk"))
    steps = [{"kind": "send", "variant": variants["A"]}, {"kind": "wait", "wait_minutes": 60}]
    services.set_steps(campaign=campaign, steps=steps)
    return campaign


def test_journey_list_and_form_read_in_chinese(admin_client, journey):
    listing = get_in_chinese(admin_client, reverse("admin:journeys_journey_changelist"))
    assert_reads_in_chinese(listing, chinese=["步骤与人数"], english=["Steps and counts"])
    form = get_in_chinese(admin_client, reverse("admin:journeys_journey_change", args=[journey.pk]))
    assert_reads_in_chinese(
        form,
        chinese=["步骤按位置顺序执行", "发送一个方案", "等待事件（有超时）"],
        english=["Steps run in order of their position", "Send a variant", "Wait for an event"],
    )


def test_steps_page_reads_in_chinese(admin_client, journey):
    html = get_in_chinese(admin_client, reverse("admin:journeys_journey_steps", args=[journey.pk]))
    assert_reads_in_chinese(
        html,
        chinese=["发送方案 A", "等待 60 分钟", "在此等待", "各步骤人数", "状态：草稿"],
        english=["Send variant A", "Wait 60 min", "Waiting here", "People per step", "Status:"],
    )
    assert '{label: "到达"' in html  # the chart's legend too
