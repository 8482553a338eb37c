"""The ROI overview in a real headless Chromium: the chart draws spent and revenue per rule."""

from __future__ import annotations

from decimal import Decimal

import pytest

from coupons import services
from tests.factories.coupons import CouponRuleFactory, person

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_roi_overview_draws_spent_and_revenue_per_rule(page, login, make_staff):
    rule = CouponRuleFactory(name="Twenty off")
    holder = person()
    coupon = services.issue_coupon(rule=rule, profile=holder)
    services.redeem_coupon(code=coupon.code, user_id=holder.user_id, order_id="roi-1", order_amount=Decimal("120"))
    CouponRuleFactory(name="Unused")
    login(make_staff("Operations", username="rosa"))
    page.goto("/admin/coupons/couponrule/roi/")
    drawn = page.evaluate(
        """() => {
            const chart = Chart.getChart(document.getElementById("roi-chart"));
            return [chart.data.labels, chart.data.datasets.map(d => d.data), chart.options.scales.y.title.text];
        }"""
    )
    assert drawn == [["Unused", "Twenty off"], [[0, 20], [0, 120]], "Amount (¥)"]
    assert "5.00" in page.locator("#roi-rules").inner_text()  # ROI (120 - 20) / 20
