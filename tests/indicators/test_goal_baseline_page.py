"""The goal's progress page shows the natural-growth baseline and the gap per month, with the
method stated."""

from __future__ import annotations

import datetime as dt
import json
from datetime import date
from decimal import Decimal

import pytest
from django.test import Client

from indicators.registry import Fold, Indicator, Unit, register_indicator, unregister_indicator
from tests.factories.indicators import daily_event_count, events_on, goal

pytestmark = pytest.mark.django_db


@pytest.fixture
def signups():
    register_indicator(Indicator("test_signups", "Test signups", Unit.USERS, Fold.SUM, daily_event_count("signup")))
    yield "test_signups"
    unregister_indicator("test_signups")


def test_the_progress_page_shows_baseline_and_gap_per_month(signups, make_staff):
    for offset in range(1, 57):
        events_on("signup", date(2026, 4, 1) - dt.timedelta(days=offset), 10)
    g = goal(indicator=signups, period="quarter", year=2026, quarter=2, target=Decimal("1200"))
    client = Client()
    client.force_login(make_staff("Operations"))
    page = client.get(f"/admin/indicators/goal/{g.pk}/progress/").content.decode()
    assert "Holt-Winters" in page
    chart = json.loads(page.split('id="goal-chart-data" type="application/json">')[1].split("</script>")[0])
    assert [round(v) for v in chart["baseline"]] == [300, 310, 300]  # 10 a day: April, May, June
    row = page.split('id="goal-months"')[1].split("<tr>")[2]
    assert "<td>400.00</td>" in row and "<td>300.00</td>" in row and "<td>100.00</td>" in row


def test_without_history_the_page_says_there_is_no_baseline(signups, make_staff):
    g = goal(indicator=signups, period="quarter", year=2026, quarter=2, target=Decimal("1200"))
    client = Client()
    client.force_login(make_staff("Operations"))
    page = client.get(f"/admin/indicators/goal/{g.pk}/progress/").content.decode()
    assert "not enough history before the period" in page
