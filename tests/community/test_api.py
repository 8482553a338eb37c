"""The community API: answers, refusals with their field or reason, auth and scopes."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from access.models import AuditEntry
from community.models import CommunityGroup, OperatorAccount, ScoreRun
from community.services import compute_contribution_scores
from tests.factories.community import CommunityGroupFactory, OperatorAccountFactory, OperatorFactory, event, send

pytestmark = pytest.mark.django_db
MONTH = date(2026, 5, 1)


@pytest.fixture
def scored_month():
    alice, bob = OperatorFactory(username="alice"), OperatorFactory(username="bob")
    OperatorAccountFactory(external_id="acct-a", operator=alice)
    OperatorAccountFactory(external_id="acct-b", operator=bob)
    t = datetime(2026, 5, 10, tzinfo=UTC)
    send(
        event("community_contact_added", t, user_id="x1", account_id="acct-a"),
        event("community_contact_added", t, user_id="x2", account_id="acct-a"),
        event("order_paid", t + timedelta(hours=1), user_id="x1", order_id="o1", amount="12.50"),
        now=datetime(2026, 6, 2, tzinfo=UTC),
    )
    compute_contribution_scores(month=MONTH, now=datetime(2026, 6, 2, tzinfo=UTC))
    return alice, bob


def test_scores_list_ranks_with_breakdown_and_detail_shows_sources(api_client, scored_month):
    alice, _ = scored_month
    body = api_client.get("/api/v1/community/scores", {"month": "2026-05", "subject": "operator"}).json()
    assert body["count"] == 2
    first = body["results"][0]
    assert first["operator"] == alice.pk and first["name"] == "alice"
    assert first["rank"] == 1 and first["month"] == "2026-05"
    assert first["breakdown"]["contact_transactions"]["raw"] == "12.50"
    assert first["breakdown"]["new_members"]["raw"] == "2.00"
    detail = api_client.get(f"/api/v1/community/scores/{first['id']}").json()
    assert detail["sources"]["contact_transactions"] == [{"orders": 1, "amount": "12.50"}]


def test_scores_default_to_the_latest_month(api_client, scored_month):
    assert api_client.get("/api/v1/community/scores").json()["count"] == 2


def test_scores_csv_export_has_a_row_per_score_with_each_dimension(api_client, scored_month):
    response = api_client.get("/api/v1/community/scores.csv", {"month": "2026-05"})
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [r["name"] for r in rows] == ["alice", "bob"]
    assert rows[0]["contact_transactions_raw"] == "12.50" and rows[0]["rank"] == "1"


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/api/v1/community/scores", {"month": "2026-13"}, "month"),
        ("/api/v1/community/scores", {"subject": "everyone"}, "subject"),
        ("/api/v1/community/scores.csv", {"month": "May"}, "month"),
        ("/api/v1/community/funnel", {"start": "2026-05-01", "end": "2026-04-01"}, "end"),
        ("/api/v1/community/funnel", {"start": "0001-01-01"}, "start"),
        ("/api/v1/community/funnel", {"start": "2024-01-01", "end": "2026-01-01"}, "end"),
        ("/api/v1/community/cohorts", {"end": "yesterday"}, "end"),
        ("/api/v1/community/competitor-apps", {"days": "0"}, "days"),
        ("/api/v1/community/groups/health", {"as_of": "0001-01-01T00:00:00Z"}, "as_of"),
    ],
)
def test_bad_queries_are_400_naming_the_field(api_client, path, params, field):
    response = api_client.get(path, params)
    assert response.status_code == 400 and field in response.json()


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/api/v1/community/scores/999999", "SCORE_NOT_FOUND"),
        ("/api/v1/community/scores/abc", "SCORE_NOT_FOUND"),
        ("/api/v1/community/groups/999999/health", "GROUP_NOT_FOUND"),
        ("/api/v1/community/score-runs/999999", "RUN_NOT_FOUND"),
    ],
)
def test_unknown_objects_are_404_with_their_reason(api_client, path, reason):
    response = api_client.get(path)
    assert response.status_code == 404 and response.json()["reason"] == reason


def test_score_run_is_queued_then_refused_while_in_progress_and_only_failed_runs_retry(api_client):
    response = api_client.post("/api/v1/community/score-runs", {"month": "2026-05"}, format="json")
    assert response.status_code == 202 and response.json()["status"] == "queued"
    run_id = response.json()["id"]
    again = api_client.post("/api/v1/community/score-runs", {"month": "2026-05"}, format="json")
    assert again.status_code == 409 and again.json()["reason"] == "RUN_IN_PROGRESS"
    retry = api_client.post(f"/api/v1/community/score-runs/{run_id}/retry")
    assert retry.status_code == 409 and retry.json()["reason"] == "NOT_FAILED"
    bad = api_client.post("/api/v1/community/score-runs", {"month": "2026-5"}, format="json")
    assert bad.status_code == 400 and "month" in bad.json()


def test_a_failed_run_shows_its_reason_and_is_retried_through_the_api(api_client):
    run = ScoreRun.objects.create(month=MONTH, status=ScoreRun.Status.FAILED, error="NoWeights: every weight is 0")
    shown = api_client.get(f"/api/v1/community/score-runs/{run.pk}").json()
    assert shown["status"] == "failed" and shown["error"] == "NoWeights: every weight is 0"
    response = api_client.post(f"/api/v1/community/score-runs/{run.pk}/retry")
    assert response.status_code == 202 and response.json()["status"] == "queued"
    assert AuditEntry.objects.filter(action="community.score_run_retried", object_id=str(run.pk)).exists()


def test_unassigned_accounts_and_groups_are_listed_and_assigned_to_staff_only(api_client):
    t = datetime.now(tz=UTC) - timedelta(hours=1)
    send(
        event("community_contact_added", t, user_id="u1", account_id="mystery-acct"),
        event("community_joined", t, user_id="u1", group_id="mystery-group"),
    )
    listed = api_client.get("/api/v1/community/unassigned").json()
    assert [a["external_id"] for a in listed["accounts"]] == ["mystery-acct"]
    assert [g["external_id"] for g in listed["groups"]] == ["mystery-group"]
    account = OperatorAccount.objects.get(external_id="mystery-acct")
    group = CommunityGroup.objects.get(external_id="mystery-group")
    customer = get_user_model().objects.create_user(username="not-staff")
    refused = api_client.post(
        f"/api/v1/community/accounts/{account.pk}/assign", {"operator": customer.pk}, format="json"
    )
    assert refused.status_code == 422 and refused.json()["reason"] == "NOT_STAFF"
    missing = api_client.post(f"/api/v1/community/groups/{group.pk}/assign", {}, format="json")
    assert missing.status_code == 400 and "operator" in missing.json()
    unknown = api_client.post("/api/v1/community/groups/999999/assign", {"operator": None}, format="json")
    assert unknown.status_code == 404 and unknown.json()["reason"] == "GROUP_NOT_FOUND"
    op = OperatorFactory()
    assert (
        api_client.post(
            f"/api/v1/community/accounts/{account.pk}/assign", {"operator": op.pk}, format="json"
        ).status_code
        == 200
    )
    assert (
        api_client.post(f"/api/v1/community/groups/{group.pk}/assign", {"operator": op.pk}, format="json").json()[
            "operator"
        ]
        == op.pk
    )
    assert api_client.get("/api/v1/community/unassigned").json() == {"accounts": [], "groups": []}
    assert AuditEntry.objects.filter(action="community.group_assigned", object_id=str(group.pk)).exists()


def test_group_health_list_paginates_and_one_group_answers_alone(api_client):
    groups = [CommunityGroupFactory(external_id=f"g-{i}") for i in range(3)]
    body = api_client.get("/api/v1/community/groups/health", {"page_size": 2}).json()
    assert body["count"] == 3 and [g["external_id"] for g in body["results"]] == ["g-0", "g-1"]
    one = api_client.get(f"/api/v1/community/groups/{groups[2].pk}/health").json()
    assert one["external_id"] == "g-2" and one["members"] == 0 and one["repurchase"]["difference"] is None


def test_funnel_cohorts_and_apps_answer_with_an_empty_world(api_client):
    funnel = api_client.get("/api/v1/community/funnel").json()
    assert [s["count"] for s in funnel["overall"]] == [0, 0, 0, 0, 0]
    assert api_client.get("/api/v1/community/cohorts").json() == []
    assert api_client.get("/api/v1/community/competitor-apps").json()["apps"] == []


def test_community_endpoints_need_the_manage_scope(make_api_client):
    assert APIClient().get("/api/v1/community/funnel").status_code == 401
    assert make_api_client("events:write").get("/api/v1/community/funnel").status_code == 403
    assert make_api_client("manage").get("/api/v1/community/funnel").status_code == 200


def test_every_community_endpoint_is_in_the_schema(api_client):
    paths = api_client.get("/api/schema/?format=json").json()["paths"]
    community = sorted(p for p in paths if p.startswith("/api/v1/community/"))
    assert len(community) == 14
    for path in ("/api/v1/community/scores", "/api/v1/community/groups/health"):
        assert "Paginated" in str(paths[path]["get"]["responses"]["200"])


def test_list_endpoints_take_a_fixed_number_of_queries_whatever_the_rows(api_client):
    def count(path: str) -> int:
        api_client.get(path)  # the key's look-up and last-used stamp are cached after the first call
        with CaptureQueriesContext(connection) as ctx:
            assert api_client.get(path).status_code == 200
        return len(ctx.captured_queries)

    OperatorAccountFactory(external_id="only")
    CommunityGroupFactory(external_id="g-only")
    compute_contribution_scores(month=MONTH, now=datetime(2026, 6, 2, tzinfo=UTC))
    few = (count("/api/v1/community/scores?month=2026-05"), count("/api/v1/community/groups/health"))
    for i in range(6):
        OperatorAccountFactory(external_id=f"more-{i}")
        CommunityGroupFactory(external_id=f"g-more-{i}")
    compute_contribution_scores(month=MONTH, now=datetime(2026, 6, 2, tzinfo=UTC))
    many = (count("/api/v1/community/scores?month=2026-05"), count("/api/v1/community/groups/health"))
    assert few == many
