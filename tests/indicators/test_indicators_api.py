"""The indicator API and dashboards: exact values on hand-made events, funnels in step order,
key behaviour and churn, searches, refusals with field and reason, roles and CSV export."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from scipy.stats import chi2

from indicators import analyses
from indicators import services as goal_services
from indicators.models import Funnel, FunnelStep, GoalMonth
from tests.factories.tracking import EventFactory

pytestmark = pytest.mark.django_db


def at(day: str, hour: int = 12, minute: int = 0) -> datetime:
    return datetime.fromisoformat(day).replace(hour=hour, minute=minute, tzinfo=UTC)


@pytest.fixture
def shop(events_engine):
    """Three people over March 2026: u1 opens, searches and buys twice; u2 opens and searches
    for nothing; u3 only opens the app, once."""
    EventFactory(user_id="u1", name="app_open", timestamp=at("2026-03-01", 9))
    EventFactory(
        user_id="u1", name="search", timestamp=at("2026-03-01", 10), properties={"query": "Shoes", "results": 4}
    )
    EventFactory(user_id="u1", name="order_paid", timestamp=at("2026-03-01", 11), properties={"amount": "30.00"})
    EventFactory(user_id="u1", name="order_paid", timestamp=at("2026-03-09", 11), properties={"amount": "10.00"})
    EventFactory(user_id="u2", name="app_open", timestamp=at("2026-03-01", 9))
    EventFactory(
        user_id="u2", name="search", timestamp=at("2026-03-01", 9, 30), properties={"query": "unicorn", "results": 0}
    )
    EventFactory(user_id="u3", name="app_open", timestamp=at("2026-03-02", 9))
    events_engine.ready()


def test_the_registry_lists_the_event_indicators(api_client):
    reply = api_client.get("/api/v1/indicators?page_size=500")
    assert reply.status_code == 200
    keys = {row["key"] for row in reply.json()["results"]}
    assert {
        "dau",
        "wau",
        "mau",
        "stickiness",
        "new_users",
        "orders",
        "revenue",
        "paying_users",
        "arpu",
        "repurchase_rate",
    } <= keys


def test_a_daily_series_has_every_day_and_the_folded_total(api_client, shop):
    reply = api_client.get("/api/v1/indicators/revenue?start=2026-03-01&end=2026-03-10")
    body = reply.json()
    assert reply.status_code == 200
    assert body["count"] == 10 and body["total"] == "40.00"
    values = {row["day"]: row["value"] for row in body["results"]}
    assert values["2026-03-01"] == "30.00" and values["2026-03-09"] == "10.00" and values["2026-03-05"] == "0.00"

    dau = api_client.get("/api/v1/indicators/dau?start=2026-03-01&end=2026-03-02").json()
    assert [row["value"] for row in dau["results"]] == ["2", "1"]
    repurchase = api_client.get("/api/v1/indicators/repurchase_rate?start=2026-03-09&end=2026-03-09").json()
    assert repurchase["results"][0]["value"] == "1"  # u1 had paid before


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("start=2026-03-10&end=2026-03-01", "end"),
        ("start=2020-01-01&end=2026-03-01", "end"),
        ("start=yesterday", "start"),
    ],
)
def test_bad_windows_are_refused_with_the_field(api_client, query, field):
    reply = api_client.get(f"/api/v1/indicators/dau?{query}")
    assert reply.status_code == 400
    assert field in reply.json()


def test_an_unknown_indicator_is_a_404_with_its_reason(api_client):
    reply = api_client.get("/api/v1/indicators/nope")
    assert reply.status_code == 404
    assert reply.json()["reason"] == "UNKNOWN_INDICATOR"


def test_keys_need_manage_and_staff_the_view_permission(make_api_client, staff_client):
    assert make_api_client("events:write").get("/api/v1/indicators").status_code == 403
    assert staff_client("Customer service").get("/api/v1/indicators").status_code == 403
    assert staff_client("Analyst").get("/api/v1/indicators").status_code == 200


def test_monthly_retention_cohorts(api_client, shop):
    body = api_client.get(
        "/api/v1/indicators/retention?granularity=day&start=2026-03-01&end=2026-03-31&periods=8"
    ).json()
    first = body["results"][0]
    assert first["cohort"] == "2026-03-01" and first["size"] == 2
    assert first["retention"][7] == {"period": 8, "users": 1, "percent": "50.0"}  # u1 back on the 9th


def test_purchase_summary(api_client, shop):
    body = api_client.get("/api/v1/indicators/purchases?start=2026-03-01&end=2026-03-31").json()
    assert body["revenue"] == "40.00" and body["paying_users"] == 1 and body["active_users"] == 3
    assert body["arpu"] == "13.33" and body["repurchase_rate"] == "1.0000"


def test_searches_top_and_zero_results(api_client, shop):
    body = api_client.get("/api/v1/search/queries?start=2026-03-01&end=2026-03-02").json()
    assert [row["query"] for row in body["results"]] == ["shoes", "unicorn"]
    assert body["searches"] == 2 and body["zero_result_rate"] == "0.5000"
    zero = api_client.get("/api/v1/search/queries?start=2026-03-01&end=2026-03-02&zero_results=true").json()
    assert [row["query"] for row in zero["results"]] == ["unicorn"]


def test_funnel_conversion_follows_step_order_within_the_window(api_client, events_engine):
    funnel = Funnel.objects.create(name="browse to buy", window_hours=2)
    for position, name in enumerate(["app_open", "search", "order_paid"], start=1):
        FunnelStep.objects.create(funnel=funnel, position=position, event_name=name)
    EventFactory(user_id="in-order", name="app_open", timestamp=at("2026-03-01", 9))
    EventFactory(user_id="in-order", name="search", timestamp=at("2026-03-01", 9, 10))
    EventFactory(user_id="in-order", name="order_paid", timestamp=at("2026-03-01", 10), properties={"amount": "1.00"})
    EventFactory(user_id="wrong-order", name="order_paid", timestamp=at("2026-03-01", 8), properties={"amount": "1.00"})
    EventFactory(user_id="wrong-order", name="search", timestamp=at("2026-03-01", 8, 30))
    EventFactory(user_id="wrong-order", name="app_open", timestamp=at("2026-03-01", 9))
    EventFactory(user_id="too-late", name="app_open", timestamp=at("2026-03-01", 9))
    EventFactory(user_id="too-late", name="search", timestamp=at("2026-03-01", 10))
    EventFactory(
        user_id="too-late", name="order_paid", timestamp=at("2026-03-01", 11, 30), properties={"amount": "1.00"}
    )
    events_engine.ready()

    body = api_client.get(f"/api/v1/funnels/{funnel.pk}/analyze?start=2026-03-01&end=2026-03-01").json()

    assert [step["users"] for step in body["steps"]] == [3, 2, 1]
    assert body["steps"][2]["conversion_from_first"] == "0.3333"
    assert api_client.get("/api/v1/funnels/999999/analyze").status_code == 404
    assert api_client.get("/api/v1/funnels").json()["count"] == 1


def test_key_behaviour_compares_retention_with_a_significance_test(api_client, events_engine):
    # 30 people search in their first week and 24 of them come back in week 2; 30 do not, 6 come back.
    for n in range(60):
        person, searched, back = f"p{n}", n < 30, (n < 24) or (30 <= n < 36)
        EventFactory(user_id=person, name="app_open", timestamp=at("2026-03-02"))
        if searched:
            EventFactory(
                user_id=person, name="search", timestamp=at("2026-03-04"), properties={"query": "x", "results": 1}
            )
        if back:
            EventFactory(user_id=person, name="app_open", timestamp=at("2026-03-10"))
    EventFactory(user_id="late", name="app_open", timestamp=at("2026-03-20"))
    events_engine.ready()

    body = api_client.get("/api/v1/key-behaviour?event=search&start=2026-03-02&end=2026-03-02").json()

    assert [(g["users"], g["retained"]) for g in body["groups"]] == [(30, 24), (30, 6)]
    assert body["difference"] == "0.6000" and body["test"] == "chi_square"
    # By hand: chi-square = 60 (24*24 - 6*6)^2 / 30^4 = 21.6 on one degree of freedom.
    assert body["p_value"] == pytest.approx(chi2.sf(21.6, 1), rel=1e-9)
    assert api_client.get("/api/v1/key-behaviour?start=2026-03-02").status_code == 400  # event is required


def test_churn_compares_the_last_behaviours(api_client, events_engine):
    for n in range(4):
        EventFactory(user_id=f"gone{n}", name="app_open", timestamp=at("2026-03-01", 9))
        EventFactory(user_id=f"gone{n}", name="payment_failed", timestamp=at("2026-03-01", 10))
        EventFactory(
            user_id=f"kept{n}", name="payment_failed" if n == 0 else "app_open", timestamp=at("2026-03-01", 10)
        )
        EventFactory(user_id=f"kept{n}", name="app_open", timestamp=at("2026-03-15", 10))
    EventFactory(user_id="someone-else", name="app_open", timestamp=at("2026-03-25", 10))
    events_engine.ready()

    body = api_client.get("/api/v1/churn?start=2026-03-01&end=2026-03-05&churn_days=14&last_events=1").json()

    assert body["churned_users"] == 4 and body["retained_users"] == 4 and body["complete"]
    assert body["sampled_users"] == 8  # fewer than the sample: everyone
    top = body["results"][0]
    assert (
        top["event_name"] == "payment_failed" and top["churned_share"] == "1.0000" and top["retained_share"] == "0.2500"
    )
    refused = api_client.get("/api/v1/churn?start=2026-03-01&end=2026-03-05&sample=5")
    assert refused.status_code == 400 and "sample" in refused.json()
    larger = api_client.get("/api/v1/churn?start=2026-03-01&end=2026-03-05&churn_days=14&last_events=1&sample=50000")
    assert larger.json()["results"] == body["results"]


def test_churn_by_default_looks_at_the_last_30_days_whose_churn_days_are_over(
    api_client, events_engine, client, make_staff
):
    today = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    for n in range(3):
        EventFactory(user_id=f"gone{n}", name="payment_failed", timestamp=today - timedelta(days=40))
        EventFactory(user_id=f"kept{n}", name="app_open", timestamp=today - timedelta(days=40))
        EventFactory(user_id=f"kept{n}", name="app_open", timestamp=today - timedelta(days=20))
    EventFactory(user_id="today", name="app_open", timestamp=today)
    events_engine.ready()
    end = today.date() - timedelta(days=30)

    body = api_client.get("/api/v1/churn").json()

    assert (body["start"], body["end"]) == (str(end - timedelta(days=29)), str(end))
    assert body["complete"] and (body["churned_users"], body["retained_users"]) == (3, 3)
    week = api_client.get("/api/v1/churn?churn_days=7").json()
    assert week["end"] == str(today.date() - timedelta(days=7)) and week["complete"]
    # Those active after the default end are outside it: a start after it must come with an end.
    late = api_client.get(f"/api/v1/churn?start={today.date() - timedelta(days=3)}")
    assert late.status_code == 400 and "start" in late.json()

    client.force_login(make_staff("Analyst"))
    page = client.get("/admin/indicators/dailyindicator/churn/")
    assert page.status_code == 200 and not page.context["form"].errors
    assert page.context["form"].cleaned_data["end"] == end
    assert b"3 churned, 3 retained." in page.content and b"not over yet" not in page.content


def test_churn_reads_the_last_events_of_a_bounded_sample(events_engine):
    for n in range(6):
        EventFactory(user_id=f"gone{n}", name="payment_failed", timestamp=at("2026-03-01", 10))
        EventFactory(anonymous_id=f"anon{n}", user_id=None, name="app_open", timestamp=at("2026-03-01", 11))
        EventFactory(anonymous_id=f"anon{n}", user_id=None, name="search", timestamp=at("2026-03-02", 11))
        EventFactory(anonymous_id=f"anon{n}", user_id=None, name="app_open", timestamp=at("2026-03-15", 10))
    events_engine.ready()

    everyone = analyses.churn_behaviours(start=date(2026, 3, 1), end=date(2026, 3, 5), churn_days=14, last_events=1)
    sampled = analyses.churn_behaviours(
        start=date(2026, 3, 1), end=date(2026, 3, 5), churn_days=14, last_events=1, sample=5
    )

    # Anonymous people's last event of the window is read too (their search, not the open before).
    assert {(r["event_name"], r["churned"], r["retained"]) for r in everyone["behaviours"]} == {
        ("payment_failed", 6, 0),
        ("search", 0, 6),
    }
    assert everyone["sampled_users"] == 12
    assert (sampled["churned_users"], sampled["retained_users"], sampled["sampled_users"]) == (6, 6, 5)
    # One last event per sampled person, and each group's shares of the sampled group are whole.
    assert sum(r["churned"] + r["retained"] for r in sampled["behaviours"]) == 5
    assert all(r["churned_share"] in (None, Decimal(1)) for r in sampled["behaviours"] if r["churned"])
    assert all(r["retained_share"] == Decimal(1) for r in sampled["behaviours"] if r["retained"])


def test_dashboards_render_for_analysts_and_export_csv(client, make_staff, shop):
    client.force_login(make_staff("Analyst"))
    funnel = Funnel.objects.create(name="f", window_hours=24)
    FunnelStep.objects.create(funnel=funnel, position=1, event_name="app_open")
    pages = [
        "/admin/indicators/dailyindicator/?indicator=revenue&start=2026-03-01&end=2026-03-10",
        "/admin/indicators/dailyindicator/retention/?granularity=day&basis=activity&start=2026-03-01&end=2026-03-31&periods=8",
        "/admin/indicators/dailyindicator/search/?start=2026-03-01&end=2026-03-31",
        "/admin/indicators/dailyindicator/key-behaviour/?event=search&start=2026-03-01&end=2026-03-02&first_days=7&retained_from=7&retained_days=7",
        "/admin/indicators/dailyindicator/churn/?start=2026-03-01&end=2026-03-05&churn_days=7&last_events=3",
        f"/admin/indicators/funnel/{funnel.pk}/analyze/?start=2026-03-01&end=2026-03-02",
        "/admin/indicators/dailyindicator/",
    ]
    for page in pages:
        reply = client.get(page)
        assert reply.status_code == 200, page
        assert b"indicator-chart" in reply.content, page

    exported = client.get(pages[0] + "&format=csv")
    assert exported["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(exported.content.decode())))
    assert rows[0] == ["day", "revenue"] and rows[1] == ["2026-03-01", "30.00"] and len(rows) == 11
    heat = client.get(pages[1] + "&format=csv").content.decode().splitlines()
    assert heat[1].startswith("2026-03-01,2,") and heat[1].split(",")[9] == "50.0"


def test_dashboards_refuse_staff_without_the_view_permission(client, make_staff):
    client.force_login(make_staff("Customer service"))
    assert client.get("/admin/indicators/dailyindicator/").status_code == 403


def test_a_bad_window_on_a_dashboard_is_shown_not_raised(client, make_staff):
    client.force_login(make_staff("Operations"))
    reply = client.get("/admin/indicators/dailyindicator/?indicator=dau&start=2026-03-10&end=2026-03-01")
    assert reply.status_code == 200 and b"must not be before start" in reply.content


def test_a_link_naming_only_the_indicator_opens_on_the_default_window(client, make_staff):
    client.force_login(make_staff("Analyst"))
    reply = client.get("/admin/indicators/dailyindicator/?indicator=revenue")
    assert reply.status_code == 200 and not reply.context["form"].errors
    chart = reply.context["chart"]
    assert chart["datasets"][0]["label"] == "Revenue" and len(chart["labels"]) == 90


def test_operations_may_edit_funnels(client, make_staff):
    client.force_login(make_staff("Operations"))
    assert client.get("/admin/indicators/funnel/add/").status_code == 200


def test_the_trends_page_draws_the_goals_of_its_indicator_as_stepped_month_lines(client, make_staff, shop):
    client.force_login(make_staff("Analyst"))
    quarter = goal_services.create_goal(
        name="Q1 revenue", indicator="revenue", period="quarter", year=2026, quarter=1, target=Decimal("9300")
    )
    goal_services.redecompose_goal(
        goal=quarter, profile="weights", weights=[Decimal(1), Decimal(1), Decimal(1)], target=Decimal("9300")
    )
    goal_services.create_goal(name="DAU 2026", indicator="dau", period="year", year=2026, target=Decimal("40"))

    reply = client.get("/admin/indicators/dailyindicator/?indicator=revenue&start=2026-03-30&end=2026-04-02")

    chart = reply.context["chart"]
    assert [d["label"] for d in chart["datasets"]] == ["Revenue", "goal: Q1 revenue"]  # not the DAU goal
    line = chart["datasets"][1]
    march = GoalMonth.objects.get(goal=quarter, month=date(2026, 3, 1)).target
    # March's target as a daily pace over its 31 days; April is outside the quarter: no point.
    assert line["stepped"] and line["data"] == [float(march / 31), float(march / 31), None, None]
    assert float(march) == 3100.0

    dau = client.get("/admin/indicators/dailyindicator/?indicator=dau&start=2026-02-27&end=2026-03-02").context["chart"]
    levels = {m.month: float(m.target) for m in GoalMonth.objects.filter(goal__indicator="dau")}
    assert dau["datasets"][1]["data"] == [levels[date(2026, 2, 1)]] * 2 + [levels[date(2026, 3, 1)]] * 2
    assert (
        client.get("/admin/indicators/dailyindicator/?indicator=wau&start=2026-03-01&end=2026-03-02").context["chart"][
            "datasets"
        ][1:]
        == []
    )


def test_a_dashboard_table_escapes_what_people_typed_and_shades_heat_cells(client, make_staff, shop, events_engine):
    EventFactory(
        user_id="u3",
        name="search",
        timestamp=at("2026-03-02", 10),
        properties={"query": '<img src=x onerror="alert(1)">', "results": 0},
    )
    events_engine.ready()
    client.force_login(make_staff("Analyst"))

    page = client.get("/admin/indicators/dailyindicator/search/?start=2026-03-01&end=2026-03-31").content.decode()
    table = page[page.index('<table id="indicator-table">') :]
    assert "<img src=x" not in table
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in table
    assert '<td style="text-align: right">shoes</td>' in table

    heat = client.get(
        "/admin/indicators/dailyindicator/retention/?granularity=day&basis=activity&start=2026-03-01&end=2026-03-31&periods=8"
    ).content.decode()
    # u1 and u2 started on March 1st; only u1 came back on day 8: a half-shaded cell of 50.0%.
    assert '<td style="text-align: right; background: rgba(65, 118, 144, 0.5)">50.0</td>' in heat


def test_the_trends_summary_shows_a_mean_of_days_rounded_as_the_api_does(client, api_client, make_staff, shop):
    client.force_login(make_staff("Analyst"))
    # DAU over a week: 2, 1, then nothing: a mean of 3/7.
    url = "/admin/indicators/dailyindicator/?indicator=dau&start=2026-03-01&end=2026-03-07"
    page = client.get(url).content.decode()
    assert "Over the window (mean of the days): 0.4286" in page
    assert api_client.get("/api/v1/indicators/dau?start=2026-03-01&end=2026-03-07").json()["total"] == "0.4286"
