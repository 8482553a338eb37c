"""The coupon report page in a real headless Chromium: the vendored chart library loads and
draws the issued/redeemed series."""

from __future__ import annotations

from decimal import Decimal

import pytest

from coupons import services
from tests.factories.coupons import CouponRuleFactory, person

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_report_page_draws_the_daily_chart(page, login, make_staff):
    rule = CouponRuleFactory(name="Chart me", budget=Decimal("100.00"), per_user_limit=2)
    holder = person()
    first = services.issue_coupon(rule=rule, profile=holder)
    services.issue_coupon(rule=rule, profile=holder)
    services.redeem_coupon(code=first.code, user_id=holder.user_id, order_id="b-1", order_amount=Decimal("40"))
    login(make_staff("Operations", username="rita"))
    page.goto(f"/admin/coupons/couponrule/{rule.pk}/report/")
    drawn = page.evaluate(
        """() => {
            const chart = Chart.getChart(document.getElementById("coupon-daily"));
            return [
                chart.data.datasets.map(d => d.data.reduce((a, b) => a + b, 0)),
                chart.data.labels.length,
                chart.options.scales.y.title.text,
                new Set(chart.data.datasets.map(d => d.backgroundColor)).size,
            ];
        }"""
    )
    assert drawn == [[2, 1], 60, "coupons", 2]  # every day on the axis, a colour per series
    assert "Order revenue" in page.locator("#coupon-numbers").inner_text()
