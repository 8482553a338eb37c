"""Charts that do not lie: days that have not happened yet are blank (not 0) in the trend's chart,
table and total; every admin chart loads the shared helper giving each series its own colour."""

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]


def test_a_trend_reaching_into_the_future_leaves_those_days_blank(client, make_staff):
    client.force_login(make_staff("Analyst"))
    today = datetime.now(UTC).date()
    start, end = today - timedelta(days=3), today + timedelta(days=4)

    page = client.get(f"/admin/indicators/dailyindicator/?indicator=dau&start={start}&end={end}")

    chart = json.loads(re.search(r'id="indicator-chart-data"[^>]*>(.*?)</script>', page.content.decode()).group(1))
    by_day = dict(zip(chart["labels"], chart["datasets"][0]["data"], strict=True))
    assert [by_day[str(today + timedelta(days=n))] for n in range(1, 5)] == [None] * 4
    assert [by_day[str(today - timedelta(days=n))] for n in range(4)] == [0.0] * 4
    rows = client.get(page.request["PATH_INFO"] + "?" + page.request["QUERY_STRING"] + "&format=csv")
    lines = rows.content.decode().splitlines()
    assert lines[-1] == f"{end}," and lines[1] == f"{start},0"


def test_every_admin_chart_loads_the_shared_chart_helper():
    templates = [p for p in ROOT.glob("*/templates/**/*.html") if "new Chart(" in p.read_text()]
    assert len(templates) >= 10
    for template in templates:
        text = template.read_text()
        assert "admin/opsloop_charts.html" in text, template
        assert "vendor/chart.umd.min.js" not in text, template
    helper = (ROOT / "config/static/opsloop/charts.js").read_text()
    assert "opsloopSeriesColours" in helper and "autoSkip: false" in helper
