"""Background work of the coupons app on a real Celery worker: bulk issuance with progress and
resumption, partner code batches, and the expiry sweep that beat runs."""

from __future__ import annotations

import csv
import io
import time
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import transaction
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from coupons import codes, selectors, services, tasks
from coupons.models import CodeBatch, Coupon, CouponStatus, IssuanceJob, IssuanceTarget
from tests.factories.coupons import CouponRuleFactory, person

D = Decimal


def wait_for(predicate, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.2)
    raise AssertionError("timed out waiting for the worker")


def job_finished(job_id: int):
    job = IssuanceJob.objects.get(pk=job_id)
    return job if job.status in (IssuanceJob.Status.DONE, IssuanceJob.Status.FAILED) else None


@pytest.mark.worker
def test_bulk_issuance_to_a_list_of_users_runs_on_the_worker_with_progress(celery_worker):
    rule = CouponRuleFactory(value=D("10.00"), budget=D("150.00"))
    known = [person().user_id for _ in range(5)]
    user_ids = known + [f"never-seen-{i}" for i in range(15)]
    job = services.create_issuance_job(rule=rule, user_ids=user_ids + known[:2], source_ref="campaign:7:variant:1")
    job = wait_for(lambda: job_finished(job.pk))
    assert (job.total, job.processed, job.progress) == (20, 20, 1.0)
    assert (job.issued, job.refused, job.refusals) == (15, 5, {"BUDGET_EXHAUSTED": 5})
    assert Coupon.objects.filter(rule=rule, source_ref="campaign:7:variant:1").count() == 15
    assert selectors.campaign_report(source_ref_prefix="campaign:7:").issued == 15


@pytest.mark.worker
def test_bulk_issuance_resumed_after_a_crash_never_issues_twice(celery_worker):
    rule = CouponRuleFactory(per_user_limit=5)
    user_ids = [f"resume-{i}" for i in range(30)]
    job = IssuanceJob.objects.create(rule=rule, user_ids=user_ids, source_ref="bulk:resume")
    # A worker that died after two batches: those targets are done, the rest still pending.
    partial = services.run_issuance_job(job=job, batch_size=7, max_batches=2)
    assert (partial.status, partial.processed) == (IssuanceJob.Status.RUNNING, 14)
    tasks.resume_issuance_jobs.delay().get(timeout=30)
    job = wait_for(lambda: job_finished(job.pk))
    assert (job.processed, job.issued) == (30, 30)
    assert Coupon.objects.filter(rule=rule).count() == 30
    assert Coupon.objects.filter(rule=rule).values("profile").distinct().count() == 30
    # A redelivered task for a finished job changes nothing.
    tasks.run_issuance_job.delay(job.pk).get(timeout=30)
    assert Coupon.objects.filter(rule=rule).count() == 30


@pytest.mark.worker
def test_bulk_issuance_of_a_killed_worker_completes_exactly_once_after_restart(celery_worker):
    rule = CouponRuleFactory(per_user_limit=5)
    targets = 1000
    job = IssuanceJob.objects.create(rule=rule, user_ids=[f"kill-{i}" for i in range(targets)], source_ref="bulk:kill")
    tasks.run_issuance_job.delay(job.pk, batch_size=10)
    wait_for(lambda: IssuanceJob.objects.get(pk=job.pk).processed > 0, timeout=60)
    celery_worker.kill()
    interrupted = IssuanceJob.objects.get(pk=job.pk)
    assert 0 < interrupted.processed < targets  # the crash did land in the middle of the job
    celery_worker.start()
    tasks.resume_issuance_jobs.delay()
    job = wait_for(lambda: job_finished(job.pk), timeout=180)
    assert (job.total, job.processed, job.issued) == (targets, targets, targets)
    assert Coupon.objects.filter(rule=rule).count() == targets
    assert Coupon.objects.filter(rule=rule).values("profile").distinct().count() == targets
    assert IssuanceTarget.objects.filter(job=job, coupon__isnull=True).count() == 0
    rule.refresh_from_db()
    assert rule.issued_count == targets


@pytest.mark.worker
def test_bulk_issuance_to_a_segment_asks_the_registered_resolver(celery_worker, segment_resolver):
    members = [person() for _ in range(4)]
    rule = CouponRuleFactory()
    segment_resolver(lambda segment_id: [p.pk for p in members] if segment_id == 3 else [])
    # The worker process has no resolver of this test, so run the job here, as campaigns would,
    # before the commit hands it to the worker (which then finds it finished).
    with transaction.atomic():
        job = services.create_issuance_job(rule=rule, segment_id=3)
        job = services.run_issuance_job(job=job)
    assert (job.status, job.issued) == (IssuanceJob.Status.DONE, 4)
    assert set(Coupon.objects.filter(rule=rule).values_list("profile_id", flat=True)) == {p.pk for p in members}


@pytest.mark.worker
def test_partner_code_batch_is_generated_on_the_worker_and_exports_as_csv(celery_worker):
    rule = CouponRuleFactory(value=D("5.00"), budget=D("10000.00"), valid_days=90)
    batch = services.create_code_batch(rule=rule, quantity=2000, partner="Acme")
    batch = wait_for(lambda: CodeBatch.objects.filter(pk=batch.pk, status=CodeBatch.Status.DONE).first())
    rule.refresh_from_db()
    assert batch.generated == 2000
    assert (rule.issued_count, rule.committed) == (2000, D("10000.00"))
    text = "".join(services.batch_csv_lines(rows=selectors.batch_code_rows(batch=batch)))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 2000 and len({r["code"] for r in rows}) == 2000
    assert all(codes.is_well_formed(codes.normalize(r["code"])) for r in rows)
    # A bearer code serves whoever uses it first.
    code = rows[0]["code"]
    redemption = services.redeem_coupon(code=code, user_id="partner-customer", order_id="p-1", order_amount=D("50"))
    assert redemption.discount == D("5.00")


@pytest.mark.worker
def test_a_code_batch_beyond_the_budget_fails_and_moves_no_money(celery_worker):
    rule = CouponRuleFactory(value=D("5.00"), budget=D("100.00"))
    batch = services.create_code_batch(rule=rule, quantity=21, partner="Too many")
    batch = wait_for(lambda: CodeBatch.objects.filter(pk=batch.pk, status=CodeBatch.Status.FAILED).first())
    rule.refresh_from_db()
    assert "budget" in batch.error
    assert (rule.issued_count, rule.committed) == (0, D("0.00"))
    assert not Coupon.objects.filter(rule=rule).exists()


@pytest.mark.worker
def test_expiry_task_on_the_worker_releases_committed_money(celery_worker):
    rule = CouponRuleFactory(value=D("10.00"), budget=D("100.00"), per_user_limit=3)
    owner = person()
    stale = services.issue_coupon(rule=rule, profile=owner)
    services.issue_coupon(rule=rule, profile=owner)
    Coupon.objects.filter(pk=stale.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    assert tasks.expire_coupons.delay().get(timeout=30) == 1
    rule.refresh_from_db()
    assert rule.committed == D("10.00")
    assert Coupon.objects.get(pk=stale.pk).status == CouponStatus.EXPIRED


@pytest.mark.django_db
def test_beat_runs_the_expiry_sweep_from_an_editable_schedule():
    task = PeriodicTask.objects.get(task="coupons.tasks.expire_coupons")
    assert task.enabled and task.crontab is not None
    assert PeriodicTask.objects.filter(task="coupons.tasks.resume_issuance_jobs", enabled=True).exists()
