"""Beat rows of the coupons app name their tasks `coupons.tasks.<function>`, as every app does
(they were `coupons.<function>`). The schedules themselves (timing, enabled, last run) stay as
operators left them; reversible."""

from django.db import migrations
from django.utils import timezone

RENAMES = {
    "coupons.expire_coupons": "coupons.tasks.expire_coupons",
    "coupons.run_issuance_job": "coupons.tasks.run_issuance_job",
    "coupons.resume_issuance_jobs": "coupons.tasks.resume_issuance_jobs",
    "coupons.generate_code_batch": "coupons.tasks.generate_code_batch",
}


def _rename(apps, mapping: dict[str, str]) -> None:
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    renamed = 0
    for old, new in mapping.items():
        renamed += PeriodicTask.objects.filter(task=old).update(task=new)
    if renamed:
        # A queryset update skips the model's signals: tell a running beat its schedule changed.
        PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})


def forward(apps, schema_editor):
    _rename(apps, RENAMES)


def backward(apps, schema_editor):
    _rename(apps, {new: old for old, new in RENAMES.items()})


class Migration(migrations.Migration):
    dependencies = [
        ("coupons", "0005_claim_rule_functions"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(forward, backward)]
