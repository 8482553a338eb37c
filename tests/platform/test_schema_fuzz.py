"""Fuzz every operation of the served OpenAPI schema: no 5xx, and every response must match what
the schema says (status code documented, content type, body). Cases are drawn both valid
(positive) and invalid (negative) against the schema, and half the path ids are aimed at rows
that exist, so the fuzzing reaches past the 404. New endpoints are picked up automatically."""

import datetime

import pytest
import schemathesis
from django.core import signals
from django.db import close_old_connections
from django.utils import timezone
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from access import services as access_services
from access.models import Scope
from config.wsgi import application
from coupons.models import CodeBatch, IssuanceJob
from indicators.models import Funnel, FunnelStep
from tests.factories.campaigns import CampaignFactory, SegmentFactory
from tests.factories.coupons import CouponRuleFactory, OrderRefundFactory
from tests.factories.indicators import goal
from tests.factories.profiles import ProfileFactory

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

# Loaded from the running application itself, so the schema under test is the one served.
schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])


@pytest.fixture
def all_scopes_key(db) -> str:
    # As Django's test client does: the WSGI calls share the test's transaction, so the
    # end-of-request hook must not close the connection under it.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield access_services.create_api_key(name="fuzz", scopes=list(Scope.values)).plaintext
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def rows(db) -> dict[tuple[str, str], object]:
    """One row behind each kind of path id: (first path segment after /api/v1/, parameter) -> id."""
    rule = CouponRuleFactory()
    segment = SegmentFactory()
    funnel = Funnel.objects.create(name="fuzz funnel", window_hours=24)
    FunnelStep.objects.create(funnel=funnel, position=1, event_name="app_open")
    FunnelStep.objects.create(funnel=funnel, position=2, event_name="order_paid")
    profile = ProfileFactory()
    return {
        ("coupon-rules", "rule_id"): rule.pk,
        ("segments", "id"): segment.pk,
        ("campaigns", "id"): CampaignFactory(segment=segment).pk,
        ("funnels", "id"): funnel.pk,
        ("goals", "goal_id"): goal(indicator="revenue").pk,
        ("coupon-issuance-jobs", "job_id"): IssuanceJob.objects.create(rule=rule, user_ids=[profile.user_id]).pk,
        ("coupon-code-batches", "batch_id"): CodeBatch.objects.create(rule=rule, quantity=1).pk,
        # Failed, so that a retry has something to do.
        ("coupon-refunds", "refund_id"): OrderRefundFactory(
            status="failed", error="fuzz", attempts=1, failed_at=timezone.now()
        ).pk,
        ("profiles", "user_id"): profile.user_id,
        ("indicators", "key"): "dau",
        ("indicator-watches", "key"): "dau",
        **_planning_rows(),
        **_community_rows(),
    }


def _community_rows() -> dict[tuple[str, str], object]:
    from community.models import ContributionScore, ScoreRun
    from tests.factories.community import CommunityGroupFactory, OperatorAccountFactory

    account = OperatorAccountFactory()
    run = ScoreRun.objects.create(month=datetime.date(2026, 5, 1), status=ScoreRun.Status.FAILED, error="fuzz")
    score = ContributionScore.objects.create(
        run=run, month=run.month, subject="operator", operator=account.operator, score=50, rank=1
    )
    return {
        ("community", "group_id"): CommunityGroupFactory().pk,
        ("community", "account_id"): account.pk,
        ("community", "score_id"): score.pk,
        ("community", "run_id"): run.pk,
    }


def _planning_rows() -> dict[tuple[str, str], object]:
    """Rows behind the planning and alert paths: a tactic, a task on a team, an alert, a check run."""
    from datetime import UTC, datetime

    from indicators.models import Anomaly, AnomalyCheckRun
    from tests.factories.planning import phase, tactic, task, team

    g = goal(indicator="orders", name="fuzz plan goal", target="900")
    the_team = team("fuzz team")
    at = datetime(2025, 1, 6, tzinfo=UTC)
    alert = Anomaly.objects.create(
        indicator="orders",
        granularity="daily",
        period_start=at,
        value=9,
        expected=5,
        low=4,
        high=6,
        score=6,
        direction="spike",
    )
    return {
        ("tactics", "tactic_id"): tactic(g, expected_contribution="90").pk,
        ("tasks", "task_id"): task(phase(g), team=the_team).pk,
        ("teams", "team_id"): the_team.pk,
        ("alerts", "alert_id"): alert.pk,
        ("anomaly-checks", "run_id"): AnomalyCheckRun.objects.create(kind="daily", period_start=at).pk,
    }


def _aim_at_rows(case, rows: dict) -> None:
    resource = case.operation.path.split("/")[3]
    for name, value in (case.path_parameters or {}).items():
        target = rows.get((resource, name))
        if target is not None and len(str(value)) % 2 == 0:
            case.path_parameters[name] = target


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)
@pytest.mark.django_db
def test_every_operation_honours_its_schema(case, all_scopes_key, rows):
    _aim_at_rows(case, rows)
    case.call_and_validate(headers={"Authorization": f"Api-Key {all_scopes_key}"}, checks=CHECKS)


def test_every_operation_documents_the_errors_it_can_answer():
    """401/403 everywhere (every operation is authenticated), 400 where there is input, 404 where
    there is a path id or a page, each with a body schema."""
    paths = schema.raw_schema["paths"]
    for path, operations in paths.items():
        for method, operation in operations.items():
            responses = operation["responses"]
            places = {p["in"] for p in operation.get("parameters", [])}
            expected = {"401", "403"}
            if "query" in places or "requestBody" in operation:
                expected.add("400")
            if "path" in places:
                expected.add("404")
            assert expected <= set(responses), (method, path, sorted(responses))
            for code in expected:
                assert responses[code]["content"]["application/json"]["schema"], (method, path, code)


def test_a_page_that_is_not_a_number_answers_a_body_the_schema_describes(api_client):
    """The case found by fuzzing: `?page=abc` on a list; now a 400 naming `page`, documented."""
    operation = schema["/api/v1/funnels"]["GET"]
    response = api_client.get("/api/v1/funnels", {"page": "abc"})
    assert response.status_code == 400 and response.json() == {
        "page": ["A page number: a whole number from 1 to 2147483647."]
    }
    documented = operation.definition.raw["responses"]["400"]["content"]["application/json"]["schema"]
    assert documented == {"$ref": "#/components/schemas/FieldErrors"}
