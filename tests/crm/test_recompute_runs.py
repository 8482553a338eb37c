"""Running the recompute: on demand through the real Celery worker, nightly by beat, one at a time."""

import importlib
import threading
import time
from datetime import timedelta

import pytest
from django.apps import apps as django_apps
from django.db import connection, connections
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from access.models import AuditEntry
from crm import services
from crm.errors import NoActiveScheme
from crm.models import CustomerValue, RecomputeRun, ScoringScheme
from tests.factories.crm import CustomerFactory, paid_order


@pytest.mark.django_db
def test_the_nightly_recompute_is_a_beat_task_on_the_analytics_queue():
    # Run the data migration's seed again: a flush by an earlier transactional test removes it.
    seed = importlib.import_module("crm.migrations.0003_defaults_and_nightly_schedule").seed
    seed(django_apps, None)
    seed(django_apps, None)  # twice: a re-run must not duplicate anything

    task = PeriodicTask.objects.get(task="crm.tasks.recompute_customer_values")
    assert task.enabled and task.queue == "analytics"
    assert (task.crontab.minute, task.crontab.hour) == ("30", "2")


@pytest.mark.worker
def test_recompute_requested_from_the_admin_runs_on_the_worker(celery_worker, admin_user):
    person = CustomerFactory()
    paid_order(person, "42.00", timezone.now() - timedelta(days=1))

    run = services.request_recompute(requested_by=admin_user)

    deadline = time.monotonic() + 60
    while RecomputeRun.objects.get(pk=run.pk).status not in ("done", "failed") and time.monotonic() < deadline:
        time.sleep(0.2)
    run.refresh_from_db()
    assert run.status == "done", run.error or celery_worker.log()[-3000:]
    assert (run.profiles, run.customers) == (1, 1)
    assert CustomerValue.objects.get(profile=person).monetary == 42
    assert AuditEntry.objects.filter(action="crm.recompute_requested", object_id=str(run.pk)).exists()


@pytest.mark.django_db
def test_a_finished_run_is_not_run_again():
    run = services.recompute_customer_values()
    CustomerFactory()

    again = services.recompute_customer_values(run_id=run.pk)

    assert again.status == "done" and again.profiles == 0
    assert not CustomerValue.objects.exists()


@pytest.mark.django_db
def test_a_run_counts_every_customer_also_when_their_values_did_not_change():
    now = timezone.now()
    for days in (1, 3, 5):
        paid_order(CustomerFactory(), "10.00", now - timedelta(days=days))
    CustomerFactory()  # a profile without orders

    first = services.recompute_customer_values(now=now)
    unchanged = services.recompute_customer_values(now=now)
    CustomerFactory()  # only a new profile without orders changes
    one_more = services.recompute_customer_values(now=now)
    paid_order(CustomerFactory(), "99.00", now - timedelta(hours=1))
    new_customer = services.recompute_customer_values(now=now)

    assert (first.profiles, first.customers) == (4, 3)
    assert (unchanged.profiles, unchanged.customers, unchanged.changes) == (4, 3, 0)
    assert (one_more.profiles, one_more.customers) == (5, 3)
    assert (new_customer.profiles, new_customer.customers) == (6, 4)


@pytest.mark.django_db
def test_without_an_active_scheme_the_run_fails_with_a_reason():
    ScoringScheme.objects.update(is_active=False)
    with pytest.raises(NoActiveScheme):
        services.recompute_customer_values()
    assert RecomputeRun.objects.get().status == "failed"


@pytest.mark.django_db(transaction=True)
def test_a_second_recompute_while_one_runs_is_skipped():
    CustomerFactory()
    holding = threading.Event()
    release = threading.Event()

    def hold_the_lock():
        with connections["default"].cursor() as cursor:  # a connection of this thread
            cursor.execute("BEGIN")
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [services.RECOMPUTE_LOCK_KEY])
            holding.set()
            release.wait(10)
            cursor.execute("COMMIT")
        connections["default"].close()

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    assert holding.wait(10)
    try:
        run = services.recompute_customer_values()
    finally:
        release.set()
        holder.join()

    assert run.status == "skipped"
    assert not CustomerValue.objects.exists()
    assert connection.in_atomic_block is False
