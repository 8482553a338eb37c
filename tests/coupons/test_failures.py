"""A bulk issuance job or a partner code batch whose background step raises is marked failed with
the reason, is left alone by the beat's resume, and one retry (admin or API) goes on from where
it stopped without issuing twice. Failures are made by the real database: a trigger refuses the
coupon of one chosen profile (or batch), as a broken constraint or a lost connection would."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from decimal import Decimal

import pytest
from django.db import DatabaseError, connection
from django.urls import reverse

from access.models import AuditEntry
from coupons import selectors, services, tasks
from coupons.models import CodeBatch, Coupon, IssuanceJob, IssuanceTarget
from tests.factories.coupons import CouponRuleFactory

D = Decimal


@contextmanager
def coupon_insert_fails(condition: str):
    """While open, PostgreSQL refuses to store a coupon matching `condition` (SQL on NEW)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            CREATE OR REPLACE FUNCTION test_refuse_coupon() RETURNS trigger AS $$
            BEGIN
                IF {condition} THEN RAISE EXCEPTION 'coupon store unavailable'; END IF;
                RETURN NEW;
            END $$ LANGUAGE plpgsql
            """
        )
        cursor.execute(
            "CREATE TRIGGER test_refuse_coupon BEFORE INSERT ON coupons_coupon "
            "FOR EACH ROW EXECUTE FUNCTION test_refuse_coupon()"
        )
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER IF EXISTS test_refuse_coupon ON coupons_coupon")
            cursor.execute("DROP FUNCTION IF EXISTS test_refuse_coupon()")


def job_for(n: int, prefix: str = "fail") -> IssuanceJob:
    rule = CouponRuleFactory(per_user_limit=5)
    return IssuanceJob.objects.create(rule=rule, user_ids=[f"{prefix}-{i:03}" for i in range(n)])


def failing_job(n: int = 20, fail_at: int = 14, batch_size: int = 5) -> IssuanceJob:
    """A job that issued to its first batches and then failed on target `fail_at` (0-based)."""
    job = job_for(n)
    services.prepare_issuance_job(job=job)
    victim = IssuanceTarget.objects.filter(job=job).order_by("id")[fail_at].profile_id
    with coupon_insert_fails(f"NEW.profile_id = {victim}"), pytest.raises(DatabaseError, match="coupon store"):
        services.run_issuance_job(job=job, batch_size=batch_size)
    job.refresh_from_db()
    return job


@pytest.mark.django_db
def test_a_job_whose_step_raises_is_failed_with_the_reason_and_keeps_its_done_batches(caplog):
    with caplog.at_level(logging.ERROR, logger="coupons.services"):
        job = failing_job(n=20, fail_at=14, batch_size=5)
    assert job.status == IssuanceJob.Status.FAILED
    assert job.error.startswith("ProgrammingError: coupon store unavailable")
    assert job.finished_at is not None
    # Two whole batches of five committed before the third one failed.
    assert (job.processed, job.issued) == (10, 10)
    assert Coupon.objects.filter(rule=job.rule).count() == 10
    logged = [r for r in caplog.records if f"issuance job {job.pk} failed" in r.getMessage()]
    assert logged and logged[0].exc_info is not None


@pytest.mark.django_db
def test_a_failed_job_is_not_resumed_by_the_beat():
    failed = failing_job()
    running = job_for(3, prefix="running")
    IssuanceJob.objects.filter(pk=running.pk).update(status=IssuanceJob.Status.RUNNING)
    assert selectors.unfinished_issuance_job_ids() == [running.pk]
    # A redelivered task of the failed job does nothing either.
    again = services.run_issuance_job(job=failed)
    assert (again.status, again.processed) == (IssuanceJob.Status.FAILED, 10)


@pytest.mark.django_db
def test_retry_goes_on_where_the_job_stopped_and_never_issues_twice(django_capture_on_commit_callbacks):
    job = failing_job(n=20, fail_at=14, batch_size=5)
    with django_capture_on_commit_callbacks() as queued:
        retried = services.retry_issuance_job(job_id=job.pk)
    assert len(queued) == 1  # the task is queued once the retry commits
    assert (retried.status, retried.error, retried.finished_at) == (IssuanceJob.Status.RUNNING, "", None)
    done = services.run_issuance_job(job=retried, batch_size=5)  # what the queued task does
    assert (done.status, done.total, done.processed, done.issued) == (IssuanceJob.Status.DONE, 20, 20, 20)
    assert Coupon.objects.filter(rule=job.rule).count() == 20
    assert Coupon.objects.filter(rule=job.rule).values("profile").distinct().count() == 20
    job.rule.refresh_from_db()
    assert job.rule.issued_count == 20


@pytest.mark.django_db
def test_retry_of_a_job_that_failed_before_its_targets_resolves_them_then(segment_resolver):
    def broken(segment_id):
        raise ConnectionError("segment store down")

    segment_resolver(broken)
    job = IssuanceJob.objects.create(rule=CouponRuleFactory(), segment_id=4)
    with pytest.raises(ConnectionError):
        services.run_issuance_job(job=job)
    job.refresh_from_db()
    assert (job.status, job.error, job.total) == (IssuanceJob.Status.FAILED, "ConnectionError: segment store down", 0)
    assert services.retry_issuance_job(job_id=job.pk).status == IssuanceJob.Status.PENDING


@pytest.mark.django_db
def test_retry_of_a_budget_limited_job_refuses_beyond_the_budget():
    rule = CouponRuleFactory(value=D("10.00"), budget=D("120.00"), per_user_limit=5)
    job = IssuanceJob.objects.create(rule=rule, user_ids=[f"budget-{i:02}" for i in range(20)])
    services.prepare_issuance_job(job=job)
    victim = IssuanceTarget.objects.filter(job=job).order_by("id")[7].profile_id
    with coupon_insert_fails(f"NEW.profile_id = {victim}"), pytest.raises(DatabaseError):
        services.run_issuance_job(job=job, batch_size=5)
    services.retry_issuance_job(job_id=job.pk)
    done = services.run_issuance_job(job=job, batch_size=5)
    assert (done.issued, done.refused, done.refusals) == (12, 8, {"BUDGET_EXHAUSTED": 8})
    rule.refresh_from_db()
    assert rule.committed == D("120.00")


@pytest.mark.django_db
def test_retry_is_refused_unless_the_job_failed_and_is_audited_when_it_runs():
    job = failing_job()
    services.retry_issuance_job(job_id=job.pk)
    with pytest.raises(services.errors.NotFailed):
        services.retry_issuance_job(job_id=job.pk)
    entry = AuditEntry.objects.get(action="coupons.issuance_job_retried", object_id=str(job.pk))
    assert entry.details["previous_error"].startswith("ProgrammingError: coupon store unavailable")


@pytest.mark.django_db
def test_api_retry_answers_202_then_409_and_404(make_api_client):
    ops = make_api_client("manage")
    job = failing_job()
    shown = ops.get(f"/api/v1/coupon-issuance-jobs/{job.pk}").json()
    assert shown["status"] == "failed" and shown["error"].startswith("ProgrammingError")
    first = ops.post(f"/api/v1/coupon-issuance-jobs/{job.pk}/retry")
    assert first.status_code == 202 and first.json()["status"] == "running"
    again = ops.post(f"/api/v1/coupon-issuance-jobs/{job.pk}/retry")
    assert again.status_code == 409 and again.json()["reason"] == "NOT_FAILED"
    assert ops.post("/api/v1/coupon-issuance-jobs/999999/retry").json()["reason"] == "JOB_NOT_FOUND"
    assert ops.post("/api/v1/coupon-issuance-jobs/nope/retry").status_code == 404
    assert AuditEntry.objects.get(action="coupons.issuance_job_retried").api_key_id == ops.api_key.pk


@pytest.mark.django_db
def test_admin_lists_failed_jobs_with_their_reason_and_retries_them(client, make_staff):
    client.force_login(make_staff("Operations"))
    job = failing_job()
    page = client.get(reverse("admin:coupons_issuancejob_changelist"), {"status__exact": "failed"})
    assert page.status_code == 200 and "ProgrammingError: coupon store unavailable" in page.content.decode()
    detail = client.get(reverse("admin:coupons_issuancejob_change", args=[job.pk]))
    assert "ProgrammingError: coupon store unavailable" in detail.content.decode()
    response = client.post(
        reverse("admin:coupons_issuancejob_changelist"), {"action": "retry", "_selected_action": [job.pk]}
    )
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.status == IssuanceJob.Status.RUNNING
    assert AuditEntry.objects.filter(action="coupons.issuance_job_retried", object_id=str(job.pk)).count() == 1


# --- code batches ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_batch_whose_generation_raises_is_failed_and_a_retry_generates_it_whole(make_api_client):
    rule = CouponRuleFactory(value=D("5.00"), budget=D("1000.00"))
    batch = CodeBatch.objects.create(rule=rule, quantity=50, partner="Acme")
    with coupon_insert_fails(f"NEW.batch_id = {batch.pk}"), pytest.raises(DatabaseError, match="coupon store"):
        services.generate_batch_codes(batch=batch)
    batch.refresh_from_db()
    assert batch.status == CodeBatch.Status.FAILED
    assert batch.error.startswith("ProgrammingError: coupon store unavailable")
    rule.refresh_from_db()
    assert (rule.issued_count, rule.committed) == (0, D("0.00"))  # all or nothing
    ops = make_api_client("manage")
    assert ops.get(f"/api/v1/coupon-code-batches/{batch.pk}").json()["status"] == "failed"
    retried = ops.post(f"/api/v1/coupon-code-batches/{batch.pk}/retry")
    assert retried.status_code == 202 and retried.json()["status"] == "pending"
    assert ops.post(f"/api/v1/coupon-code-batches/{batch.pk}/retry").status_code == 409
    assert ops.post("/api/v1/coupon-code-batches/999999/retry").json()["reason"] == "BATCH_NOT_FOUND"
    done = services.generate_batch_codes(batch=batch)
    assert (done.status, done.generated) == (CodeBatch.Status.DONE, 50)
    assert AuditEntry.objects.filter(action="coupons.code_batch_retried", object_id=str(batch.pk)).exists()


@pytest.mark.django_db
def test_admin_shows_a_failed_batch_and_retries_it(client, make_staff):
    client.force_login(make_staff("Operations"))
    batch = CodeBatch.objects.create(
        rule=CouponRuleFactory(), quantity=5, status=CodeBatch.Status.FAILED, error="RuntimeError: disk full"
    )
    done = CodeBatch.objects.create(rule=CouponRuleFactory(), quantity=5, status=CodeBatch.Status.DONE)
    page = client.get(reverse("admin:coupons_codebatch_changelist"))
    assert "RuntimeError: disk full" in page.content.decode()
    client.post(
        reverse("admin:coupons_codebatch_changelist"), {"action": "retry", "_selected_action": [batch.pk, done.pk]}
    )
    batch.refresh_from_db()
    done.refresh_from_db()
    assert (batch.status, batch.error, done.status) == (CodeBatch.Status.PENDING, "", CodeBatch.Status.DONE)


# --- on the worker -----------------------------------------------------------------------------


def wait_for(predicate, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.2)
    raise AssertionError("timed out waiting for the worker")


@pytest.mark.worker
def test_on_the_worker_a_failed_job_stays_failed_until_retried_then_completes(celery_worker, make_api_client):
    job = job_for(12, prefix="worker")
    services.prepare_issuance_job(job=job)
    victim = IssuanceTarget.objects.filter(job=job).order_by("id")[7].profile_id
    with coupon_insert_fails(f"NEW.profile_id = {victim}"):
        tasks.run_issuance_job.delay(job.pk, batch_size=5)
        failed = wait_for(lambda: IssuanceJob.objects.filter(pk=job.pk, status="failed").first())
    assert failed.error.startswith("ProgrammingError") and failed.processed == 5
    assert tasks.resume_issuance_jobs.delay().get(timeout=30) == []
    assert make_api_client("manage").post(f"/api/v1/coupon-issuance-jobs/{job.pk}/retry").status_code == 202
    done = wait_for(lambda: IssuanceJob.objects.filter(pk=job.pk, status="done").first())
    assert (done.processed, done.issued) == (12, 12)
    assert Coupon.objects.filter(rule=job.rule).values("profile").distinct().count() == 12


@pytest.mark.django_db
def test_the_admin_resume_leaves_a_failed_job_to_the_retry(client, make_staff):
    client.force_login(make_staff("Operations"))
    job = failing_job()
    response = client.post(
        reverse("admin:coupons_issuancejob_changelist"), {"action": "resume", "_selected_action": [job.pk]}, follow=True
    )
    assert "0 job(s) queued again." in response.content.decode()
    job.refresh_from_db()
    assert job.status == IssuanceJob.Status.FAILED
    assert not AuditEntry.objects.filter(action="coupons.issuance_job_resumed").exists()


@pytest.mark.django_db
def test_with_the_broker_down_an_issuance_job_is_accepted_and_left_for_the_resume(
    broker_down, api_client, django_capture_on_commit_callbacks
):
    from tests.factories.campaigns import make_profiles

    people = make_profiles(3)
    rule = CouponRuleFactory(total_quantity=100, budget=Decimal("1000.00"))
    with django_capture_on_commit_callbacks(execute=True):
        response = api_client.post(
            f"/api/v1/coupon-rules/{rule.pk}/issuance-jobs",
            {"user_ids": [p.user_id for p in people]},
            format="json",
        )
    # The job committed before its task could be queued: the answer says so, not a 500.
    assert response.status_code == 202, response.content
    job = IssuanceJob.objects.get(pk=response.json()["id"])
    assert job.status == IssuanceJob.Status.PENDING
    # The beat's resume is what runs it once the broker is back.
    assert job.pk in selectors.unfinished_issuance_job_ids()
