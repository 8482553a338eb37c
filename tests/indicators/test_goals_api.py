"""Goals through the API (scope `manage`) and the admin: create, list, get, decompose again,
progress; bad input answered 400 with the field; the list page, the progress page and CSV."""

from __future__ import annotations

import csv
import io
from datetime import date
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from access.models import AuditEntry
from indicators.models import Goal
from indicators.registry import Fold, Indicator, Unit, register_indicator, unregister_indicator
from tests.factories.indicators import daily_event_count, events_on, goal

pytestmark = pytest.mark.django_db
D = Decimal


@pytest.fixture
def signups():
    register_indicator(Indicator("test_signups", "Test signups", Unit.USERS, Fold.SUM, daily_event_count("signup")))
    yield "test_signups"
    unregister_indicator("test_signups")


@pytest.fixture
def ops(make_api_client):
    return make_api_client("manage")


def create(client, **fields):
    body = {
        "name": "Signups Q1",
        "indicator": "test_signups",
        "period": "quarter",
        "year": 2025,
        "quarter": 1,
        "target": "90.00",
        **fields,
    }
    return client.post("/api/v1/goals", body, format="json")


def test_create_a_goal_returns_201_with_its_months_and_audits_the_key(ops, signups):
    response = create(ops, profile="weights", weights=["1", "1", "1"])
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["target"] == "90.00" and body["fold"] == "sum" and body["profile"] == "weights"
    assert [(m["month"], m["target"]) for m in body["months"]] == [
        ("2025-01-01", "30.00"),
        ("2025-02-01", "30.00"),
        ("2025-03-01", "30.00"),
    ]
    entry = AuditEntry.objects.get(action="indicators.goal_created", object_id=str(body["id"]))
    assert entry.api_key_id == ops.api_key.pk and entry.details["target"] == "90.00"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"indicator": "no_such_thing"}, "indicator"),
        ({"period": "week"}, "period"),
        ({"quarter": None}, "quarter"),
        ({"period": "year", "quarter": 2}, "quarter"),
        ({"target": "0"}, "target"),
        ({"target": "-5"}, "target"),
        ({"target": "10.555"}, "target"),
        ({"year": 1999}, "year"),
        ({"profile": "weights"}, "weights"),
        ({"profile": "weights", "weights": ["1", "2"]}, "weights"),
        ({"profile": "weights", "weights": ["0", "0", "0"]}, "weights"),
        ({"profile": "weights", "weights": ["1", "-1", "1"]}, "weights"),
    ],
)
def test_bad_input_is_400_naming_the_field(ops, signups, fields, field):
    response = create(ops, **fields)
    assert response.status_code == 400, response.json()
    assert field in response.json(), response.json()
    assert not Goal.objects.exists()


def test_an_unknown_indicator_is_400_listing_the_known_ones(ops, signups):
    response = create(ops, indicator="dau_typo")
    assert response.status_code == 400
    assert "test_signups" in response.json()["indicator"][0]


def test_a_duplicate_goal_is_409_and_no_history_is_422(ops, signups):
    assert create(ops).status_code == 201
    again = create(ops, name="Other")
    assert again.status_code == 409 and again.json()["reason"] == "GOAL_EXISTS"
    shaped = create(ops, year=2026, profile="last_year")
    assert shaped.status_code == 422 and shaped.json()["reason"] == "NO_HISTORY"


def test_list_filters_and_runs_a_fixed_number_of_queries(ops, signups, django_assert_num_queries):
    for year in (2023, 2024, 2025):
        goal(indicator=signups, year=year)
    ops.get("/api/v1/goals")  # the key's first use records it, and this process then remembers it
    with django_assert_num_queries(3):  # count, goals, their months
        body = ops.get("/api/v1/goals").json()
    assert body["count"] == 3 and [g["year"] for g in body["results"]] == [2025, 2024, 2023]
    assert ops.get("/api/v1/goals", {"year": "2024"}).json()["count"] == 1
    assert ops.get("/api/v1/goals", {"indicator": "other"}).json()["count"] == 0


def test_get_decompose_and_progress(ops, signups):
    g = goal(indicator=signups, target=D("90"))
    events_on("signup", date(2025, 1, 5), 31)
    assert ops.get(f"/api/v1/goals/{g.pk}").json()["months"][0]["target"] == "30.00"
    again = ops.post(f"/api/v1/goals/{g.pk}/decompose", {"profile": "weights", "weights": [2, 1, 0]}, format="json")
    assert again.status_code == 200, again.json()
    assert [m["target"] for m in again.json()["months"]] == ["60.00", "30.00", "0.00"]
    progress = ops.get(f"/api/v1/goals/{g.pk}/progress").json()
    assert progress["status"] == "missed"  # 31 signups of 90, the quarter is long over
    assert [m["status"] for m in progress["months"]] == ["missed", "missed", "met"]
    assert progress["actual"] == "31.00" and len(progress["warnings"]) == 2


def test_unknown_goals_are_404(ops):
    for path in ("/api/v1/goals/999", "/api/v1/goals/abc/progress", "/api/v1/goals/1/progress"):
        response = ops.get(path)
        assert response.status_code == 404 and response.json()["reason"] == "GOAL_NOT_FOUND"


def test_goals_need_the_manage_scope(make_api_client):
    assert make_api_client("events:write").get("/api/v1/goals").status_code == 403


def test_the_indicator_list_names_the_registered_ones(ops, signups):
    keys = {i["key"]: i for i in ops.get("/api/v1/indicators", {"page_size": 500}).json()["results"]}
    assert keys["test_signups"]["fold"] == "sum"
    assert keys["coupon_spend"]["unit"] == "money"  # registered by the coupons app


# --- admin ---------------------------------------------------------------------------------------


@pytest.fixture
def operator(client, make_staff):
    client.force_login(make_staff("Operations"))
    return client


def _this_quarter_goal(indicator: str) -> Goal:
    today = timezone.now().date()
    return goal(indicator=indicator, year=today.year, quarter=(today.month - 1) // 3 + 1, target=D("9000"))


def test_admin_creates_a_goal_with_typed_weights(operator, signups):
    response = operator.post(
        reverse("admin:indicators_goal_add"),
        {
            "name": "Signups 2025",
            "indicator": signups,
            "period": "year",
            "year": "2025",
            "quarter": "",
            "target": "1200",
            "profile": "weights",
            "weights_text": "1,1,1,1,1,1,1,1,1,1,1,1",
        },
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    created = Goal.objects.get(name="Signups 2025")
    assert list(created.month_targets.values_list("target", flat=True)) == [D("100")] * 12
    assert AuditEntry.objects.filter(action="indicators.goal_created", object_id=str(created.pk)).exists()


def test_admin_refuses_weights_that_do_not_fit_the_period(operator, signups):
    response = operator.post(
        reverse("admin:indicators_goal_add"),
        {
            "name": "Bad",
            "indicator": signups,
            "period": "quarter",
            "year": "2025",
            "quarter": "1",
            "target": "90",
            "profile": "weights",
            "weights_text": "1,2",
        },
    )
    assert response.status_code == 200
    assert "weights_text" in response.context["adminform"].form.errors
    assert not Goal.objects.exists()


def test_admin_list_shows_progress_and_status_in_a_fixed_number_of_queries(operator, signups):
    g = _this_quarter_goal(signups)
    url = reverse("admin:indicators_goal_changelist")
    with CaptureQueriesContext(connection) as one:
        page = operator.get(url)
    html = page.content.decode()
    assert "goal-status-" in html and "progress" in html
    assert page.context["cl"].result_list[0].progress_info.goal.pk == g.pk
    for year in range(2015, 2020):
        goal(indicator=signups, year=year)
    with CaptureQueriesContext(connection) as six:
        assert operator.get(url).status_code == 200
    assert len(six) == len(one)


def test_admin_progress_page_has_the_chart_and_the_warnings(operator, signups):
    g = goal(indicator=signups, target=D("90"))
    events_on("signup", date(2025, 1, 5), 31)
    page = operator.get(reverse("admin:indicators_goal_progress", args=[g.pk]))
    html = page.content.decode()
    assert page.status_code == 200 and 'id="goal-chart"' in html and "chart.umd.min.js" in html
    assert page.context["chart_data"]["target"] == [30.0, 30.0, 30.0]
    assert page.context["chart_data"]["actual"] == [31.0, 0.0, 0.0]
    assert "February 2025 missed its target" in html


def test_admin_progress_csv_and_goal_list_csv(operator, signups):
    g = goal(indicator=signups, target=D("90"))
    events_on("signup", date(2025, 2, 5), 7)
    rows = list(
        csv.reader(
            io.StringIO(operator.get(reverse("admin:indicators_goal_progress_csv", args=[g.pk])).content.decode())
        )
    )
    assert rows == [
        [
            "Month",
            "Days in the month (days)",
            "Days elapsed (days)",
            "Target (users)",
            "Expected by now (users)",
            "Actual (users)",
            "Status",
        ],
        ["2025-01", "31", "31", "30.00", "30.00", "0.00", "missed"],
        ["2025-02", "28", "28", "30.00", "30.00", "7.00", "missed"],
        ["2025-03", "31", "31", "30.00", "30.00", "0.00", "missed"],
    ]
    listed = list(csv.reader(io.StringIO(operator.get(reverse("admin:indicators_goal_export")).content.decode())))
    assert listed[0][:4] == ["Goal", "Indicator", "Period", "Unit"] and listed[0][7] == "Progress (fraction of 1)"
    assert listed[1][:9] == ["Goal", signups, "2025 Q1", "users", "90.00", "7.00", "90.00", f"{7 / 90:.4f}", "missed"]


def test_admin_delete_is_audited(operator, signups):
    g = goal(indicator=signups)
    response = operator.post(reverse("admin:indicators_goal_delete", args=[g.pk]), {"post": "yes"})
    assert response.status_code == 302
    assert not Goal.objects.exists()
    assert AuditEntry.objects.filter(action="indicators.goal_deleted", object_id=str(g.pk)).exists()


def test_analysts_see_goals_but_cannot_add_them(client, make_staff, signups):
    g = goal(indicator=signups)
    client.force_login(make_staff("Analyst"))
    assert client.get(reverse("admin:indicators_goal_progress", args=[g.pk])).status_code == 200
    assert client.get(reverse("admin:indicators_goal_add")).status_code == 403


def test_a_goal_whose_indicator_is_gone_says_so_instead_of_failing(ops, operator, signups):
    g = goal(indicator=signups)
    unregister_indicator(signups)
    response = ops.get(f"/api/v1/goals/{g.pk}/progress")
    assert response.status_code == 409 and response.json()["reason"] == "INDICATOR_UNAVAILABLE"
    assert "indicator missing" in operator.get(reverse("admin:indicators_goal_changelist")).content.decode()
    assert operator.get(reverse("admin:indicators_goal_progress_csv", args=[g.pk])).status_code == 409
    assert "not registered" in operator.get(reverse("admin:indicators_goal_progress", args=[g.pk])).content.decode()
