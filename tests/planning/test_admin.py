"""The planning and alert pages of the admin: the goal plan with its chart data and method, the
team board, the monthly review (page, printable, CSV), and the alerts an operator acknowledges,
mutes or retries."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.test import Client
from django.utils import translation

from access.models import AuditEntry
from indicators.models import Anomaly, AnomalyCheckRun, IndicatorWatch
from planning import services
from tests.factories.indicators import goal
from tests.factories.planning import phase, tactic, task, team

pytestmark = pytest.mark.django_db
D = Decimal


@pytest.fixture
def operations(make_staff) -> Client:
    client = Client()
    client.force_login(make_staff("Operations"))
    return client


@pytest.fixture
def yearly():
    g = goal(indicator="revenue", period="year", quarter=None, year=2026, target=D("12000"), name="Revenue 2026")
    tactic(g, name="Win back", expected_contribution=D("6000"), starts_on="2026-07")
    services.decompose_by_tactics(goal=g)
    return g


def test_the_goal_plan_page_charts_target_actual_and_baseline_and_states_the_method(operations, yearly):
    response = operations.get(f"/admin/planning/tactic/goal/{yearly.pk}/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "Holt-Winters" in page and 'id="baseline-method"' in page and "Win back" in page
    chart = json.loads(page.split('id="plan-chart-data" type="application/json">')[1].split("</script>")[0])
    assert chart["target"] == [500.0] * 6 + [1500.0] * 6
    assert set(chart) == {"months", "target", "actual", "baseline"}


def test_the_board_shows_a_teams_tasks_in_four_columns(operations, yearly):
    growth = team("Growth")
    p = phase(yearly)
    today = datetime.now(UTC).date()
    late = task(p, team=growth, title="Overdue thing", due_on=today - timedelta(days=2))
    doing = services.move_task(
        task=task(p, team=growth, title="Busy thing", due_on=today + timedelta(days=2)), status="doing"
    )
    response = operations.get("/admin/planning/task/board/", {"team": growth.pk})
    page = response.content.decode()
    assert response.status_code == 200
    late_column = page.split('id="column-late"')[1].split("</section>")[0]
    doing_column = page.split('id="column-doing"')[1].split("</section>")[0]
    assert late.title in late_column and doing.title in doing_column and late.title not in doing_column


def test_the_review_is_a_page_a_printable_page_and_a_csv(operations, yearly):
    growth = team("Growth")
    task(phase(yearly, starts_on="2026-03"), team=growth, title="March task", due_on=date(2026, 3, 5))
    page = operations.get("/admin/planning/task/review/", {"month": "2026-03"})
    assert page.status_code == 200
    text = page.content.decode()
    assert "Revenue 2026" in text and "March task" in text and 'id="review-csv"' in text
    printable = operations.get("/admin/planning/task/review/", {"month": "2026-03", "print": "1"}).content.decode()
    assert "window.print()" in printable and "@media print" in printable
    response = operations.get("/admin/planning/task/review.csv", {"month": "2026-03", "team": growth.pk})
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0] == [
        "Section", "Name", "Unit", "Target", "Actual", "Baseline (or usual)", "Gap (or change)", "Status", "Detail"
    ]  # fmt: skip
    assert rows[1][:4] == ["goal", "Revenue 2026", "¥", "500.00"]
    late = next(r for r in rows if r[0] == "task late" and r[1] == "March task")
    assert late[7:] == ["To do", f"{growth.name}, due 5 Mar 2026"]
    # The same file for a reader of Chinese: its words are translated, its numbers stay plain.
    with translation.override("zh-hans"):
        zh = operations.get(
            "/admin/planning/task/review.csv", {"month": "2026-03", "team": growth.pk}, HTTP_ACCEPT_LANGUAGE="zh-hans"
        )
    zh_rows = list(csv.reader(io.StringIO(zh.content.decode())))
    assert zh_rows[1][:4] == ["目标", "Revenue 2026", "¥", "500.00"]
    assert any(r[0] == "逾期任务" and r[1] == "March task" and r[8].endswith("截止 2026年3月5日") for r in zh_rows)


def test_an_analyst_sees_the_review_but_may_not_change_tactics(make_staff, yearly):
    client = Client()
    client.force_login(make_staff("Analyst"))
    assert client.get("/admin/planning/task/review/", {"month": "2026-03"}).status_code == 200
    assert client.get("/admin/planning/tactic/add/").status_code == 403


def test_alerts_are_listed_and_acknowledged_from_the_admin(operations):
    alert = Anomaly.objects.create(
        indicator="revenue",
        granularity="daily",
        period_start=datetime(2026, 3, 2, tzinfo=UTC),
        value=900,
        expected=500,
        low=400,
        high=600,
        score=8,
        direction="spike",
        movers=[
            {"source": "ads", "measure": "revenue", "value": "420", "usual": "20", "change": "400", "relative": 20}
        ],
    )
    page = operations.get("/admin/indicators/anomaly/").content.decode()
    assert "ads 400" in page and "400.00 to 600.00" in page
    operations.post("/admin/indicators/anomaly/", {"action": "acknowledge", "_selected_action": [alert.pk]})
    alert.refresh_from_db()
    assert alert.status == "acknowledged"
    assert AuditEntry.objects.filter(action="indicators.alert_acknowledged").exists()


def test_an_operator_mutes_an_indicator_from_the_admin(operations):
    response = operations.post(
        "/admin/indicators/indicatorwatch/add/", {"indicator": "dau", "muted": "on", "sensitivity": "low"}
    )
    assert response.status_code == 302
    watch = IndicatorWatch.objects.get(indicator="dau")
    assert (watch.muted, watch.sensitivity) == (True, "low")
    assert AuditEntry.objects.filter(action="indicators.watch_changed").exists()


def test_a_failed_check_shows_its_reason_and_is_retried_from_the_admin(operations):
    run = AnomalyCheckRun.objects.create(
        kind="daily", period_start=datetime(2026, 3, 2, tzinfo=UTC), status="failed", error="RuntimeError: boom"
    )
    page = operations.get("/admin/indicators/anomalycheckrun/", {"status__exact": "failed"}).content.decode()
    assert "RuntimeError: boom" in page
    operations.post("/admin/indicators/anomalycheckrun/", {"action": "retry", "_selected_action": [run.pk]})
    run.refresh_from_db()
    assert (run.status, run.error) == ("queued", "")


def test_the_plan_and_the_review_write_money_with_its_currency_and_days_in_the_readers_zone(operations, yearly):
    plan = operations.get(f"/admin/planning/tactic/goal/{yearly.pk}/")
    assert plan.context["target"] == "¥12,000.00" and "target ¥12,000.00 (" in plan.content.decode()
    assert [r["target"] for r in plan.context["rows"]][:1] == ["¥500.00"]
    growth = team("Growth")
    task(phase(yearly, starts_on="2026-03"), team=growth, title="March task", due_on=date(2026, 3, 5))
    review = operations.get("/admin/planning/task/review/", {"month": "2026-03"}).content.decode()
    assert "<td>Revenue 2026</td>" in review and "¥500.00" in review
    assert "<td>5 Mar 2026</td><td>late (" in review
