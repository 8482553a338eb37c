"""The goal progress page in a real headless Chromium: the vendored chart draws the monthly
target line against the actual bars, a month behind in red."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from indicators.registry import Fold, Indicator, Unit, register_indicator, unregister_indicator
from tests.factories.indicators import daily_event_count, events_on, goal

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def signups():
    register_indicator(Indicator("test_signups", "Test signups", Unit.USERS, Fold.SUM, daily_event_count("signup")))
    yield "test_signups"
    unregister_indicator("test_signups")


def test_progress_page_draws_target_line_and_actual_bars(page, login, make_staff, signups):
    g = goal(indicator=signups, target=Decimal("90"), profile="weights", weights=[Decimal(1), Decimal(1), Decimal(1)])
    events_on("signup", date(2025, 1, 5), 31)
    events_on("signup", date(2025, 2, 5), 12)
    login(make_staff("Analyst", username="ana"))
    page.goto(f"/admin/indicators/goal/{g.pk}/progress/")
    drawn = page.evaluate(
        """() => {
            const chart = Chart.getChart(document.getElementById("goal-chart"));
            return chart.data.datasets.map(d => [d.type, d.data, d.backgroundColor]);
        }"""
    )
    assert drawn[0][:2] == ["line", [30, 30, 30]]
    assert drawn[1][:2] == ["bar", [31, 12, 0]]
    assert drawn[1][2] == ["#417690", "#c62828", "#c62828"]  # February and March missed
    assert "February 2025 missed its target" in page.locator("#goal-warnings").inner_text()
