"""The minutely upkeep of first/last seen, as a beat schedule operators can see in the admin."""

from django.db import migrations

NAME = "profiles: update first/last seen"
TASK = "profiles.tasks.rollup_seen_times"


def create(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    every_minute, _ = IntervalSchedule.objects.get_or_create(every=1, period="minutes")
    PeriodicTask.objects.get_or_create(
        name=NAME,
        defaults={
            "task": TASK,
            "interval": every_minute,
            "enabled": True,
            "queue": "analytics",
            # A run queued while no worker listens is worthless once the next one is due.
            "expire_seconds": 60,
            "description": "Apply the first/last seen of newly stored events to their profiles.",
        },
    )


def remove(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("profiles", "0005_seen_backlog"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]
    operations = [migrations.RunPython(create, remove)]
