"""Every task run is recorded by the process that ran it (Celery signals, one upsert per run):
its last start and finish, outcome, error and runtime, by task name."""

from __future__ import annotations

import time

import pytest
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from coupons import tasks as coupon_tasks
from crm import tasks as crm_tasks
from crm.models import ScoringScheme
from monitoring import selectors
from monitoring.models import TaskRun


@pytest.mark.django_db
def test_a_failed_then_successful_run_is_recorded_in_one_row_per_task():
    ScoringScheme.objects.update(is_active=False)
    failed = crm_tasks.recompute_customer_values.apply()
    assert failed.failed()
    run = TaskRun.objects.get(task="crm.tasks.recompute_customer_values")
    assert (run.state, run.runs, run.failures) == ("failed", 1, 1)
    assert run.error.startswith("NoActiveScheme: no active scoring scheme")
    assert run.task_id == failed.id and run.runtime_seconds is not None
    assert run.started_at <= run.finished_at

    ScoringScheme.objects.create(name="Recorded", is_active=True)
    crm_tasks.recompute_customer_values.apply()
    run.refresh_from_db()
    assert (run.state, run.error, run.runs, run.failures) == ("ok", "", 2, 1)
    assert TaskRun.objects.filter(task="crm.tasks.recompute_customer_values").count() == 1


@pytest.mark.worker
def test_the_worker_records_a_beat_task_run_that_the_health_report_shows(celery_worker):
    assert coupon_tasks.expire_coupons.delay().get(timeout=30) == 0
    deadline = time.monotonic() + 30
    while not TaskRun.objects.filter(task="coupons.tasks.expire_coupons").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    run = TaskRun.objects.get(task="coupons.tasks.expire_coupons")
    assert (run.state, run.runs) == ("ok", 1)
    PeriodicTask.objects.update_or_create(
        name="coupons: expire coupons and release their budget",
        defaults={"task": "coupons.tasks.expire_coupons", "crontab": CrontabSchedule.objects.create(minute="*/5")},
    )
    beat = {b.task: b for b in selectors.beat_tasks()}
    assert beat["coupons.tasks.expire_coupons"].outcome == "ok"
    assert beat["coupons.tasks.expire_coupons"].finished_at == run.finished_at
