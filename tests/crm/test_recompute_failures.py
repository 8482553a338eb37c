"""A value recompute that fails is marked failed with its reason, in the admin and the API, stays
failed (a redelivered task leaves it so) and is retried by one action, audited."""

from __future__ import annotations

import logging

import pytest
from django.urls import reverse

from access.models import AuditEntry
from crm import services
from crm.errors import NoActiveScheme, RunNotFailed
from crm.models import CustomerValue, RecomputeRun, ScoringScheme
from tests.factories.crm import CustomerFactory

pytestmark = pytest.mark.django_db


def failed_run() -> RecomputeRun:
    ScoringScheme.objects.update(is_active=False)
    with pytest.raises(NoActiveScheme):
        services.recompute_customer_values()
    return RecomputeRun.objects.get()


def test_a_failed_run_keeps_the_reason_and_logs_the_traceback(caplog):
    with caplog.at_level(logging.ERROR, logger="crm.services"):
        run = failed_run()
    assert run.status == "failed"
    assert run.error == "NoActiveScheme: no active scoring scheme: mark one active in the admin"
    logged = [r for r in caplog.records if f"value recompute run {run.pk} failed" in r.getMessage()]
    assert logged and logged[0].exc_info is not None


def test_a_redelivered_task_of_a_failed_run_leaves_it_failed():
    run = failed_run()
    ScoringScheme.objects.filter(name="Default").update(is_active=True)
    CustomerFactory()
    again = services.recompute_customer_values(run_id=run.pk)
    assert again.status == "failed" and not CustomerValue.objects.exists()


def test_retry_queues_the_failed_run_which_then_recomputes(django_capture_on_commit_callbacks, admin_user):
    run = failed_run()
    ScoringScheme.objects.filter(name="Default").update(is_active=True)
    CustomerFactory()
    with django_capture_on_commit_callbacks() as queued:
        retried = services.retry_recompute(run_id=run.pk, actor=admin_user)
    assert len(queued) == 1
    assert (retried.status, retried.error, retried.finished_at) == ("queued", "", None)
    with pytest.raises(RunNotFailed):
        services.retry_recompute(run_id=run.pk)
    done = services.recompute_customer_values(run_id=run.pk)  # what the queued task does
    assert (done.status, done.profiles) == ("done", 1)
    entry = AuditEntry.objects.get(action="crm.recompute_retried", object_id=str(run.pk))
    assert entry.actor == admin_user and entry.details["previous_error"].startswith("NoActiveScheme")


def test_api_shows_the_run_and_retries_it_with_202_then_409_and_404(make_api_client):
    ops = make_api_client("manage")
    run = failed_run()
    shown = ops.get(f"/api/v1/value-recompute-runs/{run.pk}")
    assert shown.status_code == 200
    assert (shown.json()["status"], shown.json()["error"]) == ("failed", run.error)
    first = ops.post(f"/api/v1/value-recompute-runs/{run.pk}/retry")
    assert first.status_code == 202 and first.json()["status"] == "queued"
    again = ops.post(f"/api/v1/value-recompute-runs/{run.pk}/retry")
    assert again.status_code == 409 and again.json()["reason"] == "NOT_FAILED"
    assert ops.post("/api/v1/value-recompute-runs/424242/retry").json()["reason"] == "RUN_NOT_FOUND"
    assert ops.get("/api/v1/value-recompute-runs/x1").status_code == 404
    assert AuditEntry.objects.get(action="crm.recompute_retried").api_key_id == ops.api_key.pk


def test_admin_lists_the_reason_filters_by_status_and_retries(client, make_staff):
    client.force_login(make_staff("Operations"))
    run = failed_run()
    done = RecomputeRun.objects.create(status="done")
    page = client.get(reverse("admin:crm_recomputerun_changelist"), {"status__exact": "failed"})
    html = page.content.decode()
    assert page.status_code == 200 and "NoActiveScheme: no active scoring scheme" in html
    assert f"/{done.pk}/change/" not in html
    assert "NoActiveScheme" in client.get(reverse("admin:crm_recomputerun_change", args=[run.pk])).content.decode()
    client.post(reverse("admin:crm_recomputerun_changelist"), {"action": "retry", "_selected_action": [run.pk]})
    run.refresh_from_db()
    assert run.status == "queued"


def test_analysts_may_not_retry(client, make_staff):
    client.force_login(make_staff("Analyst"))
    run = failed_run()
    client.post(reverse("admin:crm_recomputerun_changelist"), {"action": "retry", "_selected_action": [run.pk]})
    run.refresh_from_db()
    assert run.status == "failed"
