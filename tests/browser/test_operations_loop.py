"""An operator's day in a real headless Chromium: a coupon rule and an A/B push campaign made in
the admin forms, launched from the campaign list, delivered by the real worker to a real local
HTTP gateway, and read back on the results page with its chart."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from campaigns import services
from campaigns.models import Campaign, Channel, ChannelKind, Delivery, DeliveryStatus
from coupons.models import CouponRule
from tests.campaigns.receiver import Receiver
from tests.factories.campaigns import make_profiles
from tracking.services import ingest_events

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _wait_until(condition, *, seconds: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _pick_segment(page, name: str) -> None:
    """The segment field is the admin's autocomplete (select2): open it, search, choose."""
    page.click("#id_segment + .select2 .select2-selection")
    page.fill(".select2-search__field", name.split()[0])
    page.click(f".select2-results__option:has-text('{name}')")


def _variant_row(page, index: int, *, name: str, title: str, body: str, coupon_rule: int | None = None) -> None:
    prefix = f"#id_variants-{index}-"
    page.fill(prefix + "position", str(index))
    page.fill(prefix + "name", name)
    page.fill(prefix + "weight", "50")
    page.fill(prefix + "title", title)
    page.fill(prefix + "body", body)
    if coupon_rule is not None:
        page.fill(prefix + "coupon_rule_id", str(coupon_rule))


def test_operator_creates_a_coupon_rule_and_an_ab_campaign_launches_it_and_reads_the_results(
    page, login, make_staff, celery_worker
):
    make_profiles(40, prefix="shopper")
    services.create_segment(name="Browser shoppers", definition={"tag": "campaign-test"})
    with Receiver() as gateway:
        Channel.objects.update_or_create(kind=ChannelKind.PUSH, defaults={"url": gateway.url, "enabled": True})
        login(make_staff("Operations", username="opal"))

        page.goto("/admin/coupons/couponrule/add/")
        page.fill("#id_name", "Browser welcome, 10 off")
        page.select_option("#id_kind", "fixed")
        page.fill("#id_value", "10")
        page.fill("#id_budget", "500")
        page.click("input[name=_save]")
        page.wait_for_selector(".messagelist .success")
        rule = CouponRule.objects.get(name="Browser welcome, 10 off")
        assert rule.budget == Decimal("500.00")

        page.goto("/admin/campaigns/campaign/add/")
        page.fill("#id_name", "Browser A/B")
        _pick_segment(page, "Browser shoppers")
        page.select_option("#id_channel", "push")
        page.fill("#id_holdout_percent", "20")
        page.fill("#id_min_sample", "5")
        page.uncheck("#id_respect_quiet_hours")  # the test may run at any hour
        _variant_row(page, 0, name="A", title="Hello", body="We have news.")
        page.click("#variants-group .add-row a")
        _variant_row(page, 1, name="B", title="10 off", body="A coupon for you.", coupon_rule=rule.pk)
        page.click("input[name=_save]")
        page.wait_for_selector(".messagelist .success")
        campaign = Campaign.objects.get(name="Browser A/B")
        assert list(campaign.variants.order_by("position").values_list("name", "coupon_rule_id")) == [
            ("A", None),
            ("B", rule.pk),
        ]

        page.goto("/admin/campaigns/campaign/")
        page.check(f"input[name=_selected_action][value='{campaign.pk}']")
        page.select_option("select[name=action]", "launch")
        page.click("button[name=index]")
        page.wait_for_selector(".messagelist li")
        # 40 people, 20% held out: 32 pushes reach the gateway, sent by the worker.
        _wait_until(lambda: len(gateway.requests) == 32, what="32 pushes at the gateway")
        _wait_until(
            lambda: Delivery.objects.filter(campaign=campaign, status=DeliveryStatus.SENT).count() == 32,
            what="32 deliveries marked sent",
        )
    by_variant = {r["variant"] for r in gateway.requests}
    assert by_variant == {"A", "B"}
    assert all(r.get("coupon_code") for r in gateway.requests if r["variant"] == "B")

    # Four B recipients buy; the results page counts them for B.
    buyers = [r["user_id"] for r in gateway.requests if r["variant"] == "B"][:4]
    now = timezone.now() + timedelta(seconds=1)
    orders = [
        {
            "event_id": str(uuid.uuid4()),
            "name": "order_paid",
            "user_id": u,
            "timestamp": now.isoformat(),
            "properties": {"order_id": f"order-{i}", "amount": "50.00"},
        }
        for i, u in enumerate(buyers)
    ]
    assert ingest_events(events=orders).accepted == 4
    page.goto(f"/admin/campaigns/campaign/{campaign.pk}/results/")
    chart = page.evaluate(
        """() => {
            const canvas = document.getElementById("rates");
            const chart = Chart.getChart(canvas);
            const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
            let painted = 0;
            for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) painted++;
            return {labels: chart.data.labels, rates: chart.data.datasets[0].data, painted: painted};
        }"""
    )
    assert chart["labels"] == ["holdout", "A", "B"]
    b_assigned = campaign.assignments.filter(variant__name="B").count()
    assert chart["rates"] == [0, 0, round(4 / b_assigned * 100, 3)]
    assert chart["painted"] > 1000  # axes, labels and bars were drawn on the canvas
    assert "Browser A/B" in page.title()
