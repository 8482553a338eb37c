"""Celery task names say where their code is (`<module>.<function>`), the former names still run
what they ran, and the rows that name tasks (beat schedules, recorded runs) follow the rename."""

from __future__ import annotations

import importlib
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from config.celery import app
from coupons import services
from coupons.models import Coupon, CouponStatus
from tests.factories.coupons import CouponRuleFactory, person
from tests.migrating import migrate_to, migrate_to_latest

BEAT_RENAMES = importlib.import_module("coupons.migrations.0006_task_names").RENAMES
RUN_RENAMES = importlib.import_module("monitoring.migrations.0002_task_run_names").RENAMES
# Former name -> the task it stands for; each one a thin task calling the renamed one.
ALIASES = {
    **BEAT_RENAMES,
    "opsloop.ping": "config.celery.ping",
    "tracking.tasks.rollup_indicators": "indicators.tasks.rollup_indicators",
}


def _our_tasks() -> dict[str, object]:
    app.loader.import_default_modules()
    return {name: task for name, task in app.tasks.items() if not name.startswith("celery.")}


def test_every_task_is_named_after_the_module_and_function_that_hold_it():
    tasks = _our_tasks()
    misnamed = {
        name: f"{task.run.__module__}.{task.run.__name__}"
        for name, task in tasks.items()
        if name not in ALIASES and name != f"{task.run.__module__}.{task.run.__name__}"
    }
    assert misnamed == {}
    app_tasks = [name for name in tasks if name not in ALIASES and not name.startswith("config.")]
    assert app_tasks and all(name.split(".")[1] == "tasks" for name in app_tasks)


def test_every_former_name_is_still_registered_and_routed_like_its_new_name():
    tasks = _our_tasks()
    for old, new in ALIASES.items():
        assert old in tasks and new in tasks
        assert tasks[old].acks_late == tasks[new].acks_late
        route = app.amqp.router.route
        assert route({}, old)["queue"].name == route({}, new)["queue"].name


@pytest.mark.django_db
def test_a_message_queued_under_a_former_name_still_runs_its_task():
    # As a worker does at start: every app's tasks module is imported (run alone, nothing else
    # in this process has imported them yet).
    app.loader.import_default_modules()
    rule = CouponRuleFactory(value=Decimal("10.00"))
    stale = services.issue_coupon(rule=rule, profile=person())
    Coupon.objects.filter(pk=stale.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    assert app.tasks["coupons.expire_coupons"].apply().get() == 1
    assert Coupon.objects.get(pk=stale.pk).status == CouponStatus.EXPIRED
    assert app.tasks["opsloop.ping"].apply().get() == "pong"


@pytest.mark.django_db(transaction=True)
def test_beat_rows_follow_the_rename_and_back():
    try:
        migrate_to(("coupons", "0005_claim_rule_functions"))
        every_hour = CrontabSchedule.objects.create(minute="0")
        # The rows as the schedules' migration and an operator left them (a flushed test database
        # may lack the migration's own).
        PeriodicTask.objects.update_or_create(
            name="coupons: expire coupons and release their budget",
            defaults={"task": "coupons.expire_coupons", "crontab": every_hour, "enabled": False},
        )
        PeriodicTask.objects.create(name="by hand", task="coupons.run_issuance_job", crontab=every_hour, args="[7]")
        old = dict(PeriodicTask.objects.filter(task__startswith="coupons.").values_list("name", "task"))
        assert set(old.values()) <= set(BEAT_RENAMES) and "coupons.expire_coupons" in old.values()

        migrate_to(("coupons", "0006_task_names"))
        new = dict(PeriodicTask.objects.filter(task__startswith="coupons.").values_list("name", "task"))
        assert new == {name: BEAT_RENAMES[task] for name, task in old.items()}
        assert PeriodicTask.objects.get(name="by hand").args == "[7]"
        assert not PeriodicTask.objects.get(name="coupons: expire coupons and release their budget").enabled

        migrate_to(("coupons", "0005_claim_rule_functions"))
        assert dict(PeriodicTask.objects.filter(task__startswith="coupons.").values_list("name", "task")) == old
    finally:
        migrate_to_latest()


@pytest.mark.django_db(transaction=True)
def test_recorded_runs_follow_the_rename_and_keep_their_counts():
    try:
        apps = migrate_to(("monitoring", "0001_initial"))
        runs = apps.get_model("monitoring", "TaskRun").objects
        runs.create(task="coupons.expire_coupons", state="ok", runs=40, failures=1)
        # An old message that met an upgraded worker: both names have a row.
        runs.create(task="opsloop.ping", state="ok", runs=5, failures=0)
        runs.create(task="config.celery.ping", state="ok", runs=2, failures=1)

        apps = migrate_to(("monitoring", "0002_task_run_names"))
        runs = apps.get_model("monitoring", "TaskRun").objects
        assert sorted(runs.values_list("task", "runs", "failures")) == [
            ("config.celery.ping", 7, 1),
            ("coupons.tasks.expire_coupons", 40, 1),
        ]

        apps = migrate_to(("monitoring", "0001_initial"))
        runs = apps.get_model("monitoring", "TaskRun").objects
        assert sorted(runs.values_list("task", "runs")) == [("coupons.expire_coupons", 40), ("opsloop.ping", 7)]
    finally:
        migrate_to_latest()


def test_the_renames_of_beat_rows_and_of_recorded_runs_agree():
    assert BEAT_RENAMES.items() <= RUN_RENAMES.items()
