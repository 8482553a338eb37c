"""The planning API: tactics, the decomposition by them, the goal's plan, tasks on the boards and
the monthly review; refusals answer with the field or the reason."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest

from access.models import AuditEntry
from planning.models import Task
from tests.factories.indicators import goal
from tests.factories.planning import phase, tactic, task, team

pytestmark = pytest.mark.django_db
D = Decimal


@pytest.fixture
def yearly():
    return goal(indicator="revenue", period="year", quarter=None, year=2026, target=D("12000"), name="Revenue 2026")


def test_a_tactic_is_created_with_its_campaigns_and_coupon_rules(api_client, yearly):
    from tests.factories.campaigns import CampaignFactory
    from tests.factories.coupons import CouponRuleFactory

    campaign, rule = CampaignFactory(), CouponRuleFactory()
    response = api_client.post(
        "/api/v1/tactics",
        {
            "goal": yearly.pk,
            "name": "Win back silent customers",
            "expected_contribution": "3000",
            "starts_on": "2026-05-01",
            "campaign_ids": [campaign.pk],
            "coupon_rule_ids": [rule.pk],
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["campaign_ids"], body["coupon_rule_ids"]) == ([campaign.pk], [rule.pk])
    assert (body["expected_contribution"], body["starts_on"], body["indicators"]) == (
        "3000.00",
        "2026-05-01",
        ["revenue"],
    )
    assert AuditEntry.objects.filter(action="planning.tactic_created").count() == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"starts_on": "2025-12-01"}, "starts_on"),
        ({"expected_contribution": "-1"}, "expected_contribution"),
        ({"indicators": ["nope"]}, "indicators"),
        ({"campaign_ids": [999999]}, "campaign_ids"),
        ({"goal": 999999}, "goal"),
    ],
)
def test_a_bad_tactic_is_refused_naming_the_field(api_client, yearly, change, field):
    body = {"goal": yearly.pk, "name": "T", "expected_contribution": "10", "starts_on": "2026-01-01", **change}
    response = api_client.post("/api/v1/tactics", body, format="json")
    assert response.status_code == 400
    assert field in response.json()


def test_a_second_tactic_of_the_same_name_is_a_conflict(api_client, yearly):
    tactic(yearly, name="Same")
    body = {"goal": yearly.pk, "name": "Same", "expected_contribution": "10", "starts_on": "2026-01-01"}
    response = api_client.post("/api/v1/tactics", body, format="json")
    assert (response.status_code, response.json()["reason"]) == (409, "TACTIC_EXISTS")


def test_the_goal_is_decomposed_by_its_tactics_and_its_plan_shows_target_baseline_and_gap(api_client, yearly):
    tactic(yearly, name="From July", expected_contribution=D("6000"), starts_on="2026-07")
    response = api_client.post(f"/api/v1/goals/{yearly.pk}/decompose-by-tactics")
    assert response.status_code == 200, response.json()
    months = response.json()["months"]
    assert [m["target"] for m in months] == ["500.00"] * 6 + ["1500.00"] * 6
    assert "Holt-Winters" in response.json()["baseline_method"]
    assert all(m["baseline"] is None and m["gap"] is None for m in months)  # no history: no baseline, said so
    assert "no baseline" in response.json()["baseline_history"]


def test_contributions_above_the_target_are_refused_with_the_reason(api_client, yearly):
    tactic(yearly, name="Too much", expected_contribution=D("13000"))
    response = api_client.post(f"/api/v1/goals/{yearly.pk}/decompose-by-tactics")
    assert (response.status_code, response.json()["reason"]) == (422, "CONTRIBUTIONS_EXCEED_TARGET")


def test_an_unknown_goal_or_tactic_is_a_404_with_its_reason(api_client):
    assert api_client.post("/api/v1/goals/999999/decompose-by-tactics").json()["reason"] == "GOAL_NOT_FOUND"
    response = api_client.patch("/api/v1/tactics/abc", {"name": "x"}, format="json")
    assert (response.status_code, response.json()["reason"]) == (404, "TACTIC_NOT_FOUND")


def test_a_task_moves_across_the_board_and_shows_late_after_its_due_date(api_client, yearly, make_staff):
    owner = make_staff("Operations")
    growth = team("Growth")
    owner.groups.add(growth)
    today = date.today()
    p = phase(yearly)
    response = api_client.post(
        "/api/v1/tasks",
        {
            "phase": p.pk,
            "team": growth.pk,
            "owner": owner.pk,
            "title": "Pick the segment",
            "due_on": str(today - timedelta(days=1)),
            "indicator": "revenue",
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    created = response.json()
    assert (created["column"], created["late"]) == ("late", True)
    board = api_client.get(f"/api/v1/teams/{growth.pk}/board").json()
    assert [t["id"] for t in board["late"]] == [created["id"]] and board["todo"] == []
    moved = api_client.patch(f"/api/v1/tasks/{created['id']}", {"status": "done"}, format="json").json()
    assert (moved["column"], moved["late"], moved["done_at"] is not None) == ("done", False, True)
    assert api_client.get("/api/v1/tasks", {"late": "true"}).json()["count"] == 0
    assert AuditEntry.objects.filter(action="planning.task_moved").count() == 1


def test_a_task_owner_outside_the_team_is_refused(api_client, yearly, make_staff):
    outsider = make_staff("Analyst")
    response = api_client.post(
        "/api/v1/tasks",
        {"phase": phase(yearly).pk, "team": team().pk, "owner": outsider.pk, "title": "x", "due_on": "2026-01-10"},
        format="json",
    )
    assert response.status_code == 400 and "owner" in response.json()


def test_an_unknown_status_is_refused(api_client, yearly):
    t = task(phase(yearly))
    response = api_client.patch(f"/api/v1/tasks/{t.pk}", {"status": "late"}, format="json")
    assert response.status_code == 400 and "status" in response.json()
    assert Task.objects.get(pk=t.pk).status == "todo"


def test_the_monthly_review_counts_tasks_done_and_late_for_a_team(api_client, yearly):
    growth, other = team("Growth"), team("Other")
    p = phase(yearly, starts_on="2026-03")
    late = task(p, team=growth, title="Late one", due_on=date(2026, 3, 10))
    from datetime import UTC, datetime

    from planning import services

    done = services.move_task(
        task=task(p, team=growth, title="Done one", due_on=date(2026, 3, 20)),
        status="done",
        now=datetime(2026, 3, 18, tzinfo=UTC),
    )
    task(p, team=other, title="Not ours", due_on=date(2026, 3, 5))
    response = api_client.get("/api/v1/reviews", {"month": "2026-03", "team": growth.pk})
    assert response.status_code == 200, response.json()
    body = response.json()
    assert [t["id"] for t in body["tasks_done"]] == [done.pk]
    assert [t["id"] for t in body["tasks_late"]] == [late.pk]
    assert [g["name"] for g in body["goals"]] == ["Revenue 2026"]
    assert set(body["source_movers"]) == {"revenue", "orders", "people"}


def test_a_review_month_must_be_a_month(api_client):
    response = api_client.get("/api/v1/reviews", {"month": "2026-13"})
    assert response.status_code == 400 and "month" in response.json()


def test_without_the_manage_scope_the_planning_api_is_forbidden(make_api_client):
    client = make_api_client("events:write")
    assert client.get("/api/v1/tactics").status_code == 403
    assert client.get("/api/v1/reviews", {"month": "2026-03"}).status_code == 403
