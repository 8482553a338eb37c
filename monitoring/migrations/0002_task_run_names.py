"""Recorded runs follow the tasks' names (`<app>.tasks.<function>`; the probe `config.celery.ping`),
so the health page keeps each beat task's last outcome and its run counts across the rename.
Reversible."""

from django.db import migrations
from django.db.models import F

RENAMES = {
    "coupons.expire_coupons": "coupons.tasks.expire_coupons",
    "coupons.run_issuance_job": "coupons.tasks.run_issuance_job",
    "coupons.resume_issuance_jobs": "coupons.tasks.resume_issuance_jobs",
    "coupons.generate_code_batch": "coupons.tasks.generate_code_batch",
    "opsloop.ping": "config.celery.ping",
    "tracking.tasks.rollup_indicators": "indicators.tasks.rollup_indicators",
}


def _rename(apps, mapping: dict[str, str]) -> None:
    TaskRun = apps.get_model("monitoring", "TaskRun")
    for old, new in mapping.items():
        run = TaskRun.objects.filter(task=old).first()
        if run is None:
            continue
        current = TaskRun.objects.filter(task=new).first()
        if current is None:
            TaskRun.objects.filter(pk=run.pk).update(task=new)
            continue
        # Both names ran (an old message met a new worker): the newer row keeps the last run, the
        # counts add up; `task` is unique, so the other row goes.
        TaskRun.objects.filter(pk=current.pk).update(
            runs=F("runs") + run.runs, failures=F("failures") + run.failures
        )
        run.delete()


def forward(apps, schema_editor):
    _rename(apps, RENAMES)


def backward(apps, schema_editor):
    _rename(apps, {new: old for old, new in RENAMES.items()})


class Migration(migrations.Migration):
    dependencies = [("monitoring", "0001_initial")]

    operations = [migrations.RunPython(forward, backward)]
