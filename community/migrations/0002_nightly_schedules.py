"""The nightly contribution scores (the previous month) and the replay of community events whose
person became known since, as beat schedules operators can edit in the admin."""

from django.db import migrations

SCHEDULES = [
    (
        "community: contribution scores nightly",
        "community.tasks.recompute_contribution_scores",
        "15",
        "Score operators and teams for the previous month (the current month is run on demand).",
    ),
    (
        "community: apply late community events",
        "community.tasks.recompute_pending_events",
        "5",
        "Apply community events whose anonymous person has been identified since they arrived.",
    ),
]


def create(apps, schema_editor):
    CrontabSchedule = apps.get_model("django_celery_beat", "CrontabSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    for name, task, minute, description in SCHEDULES:
        # 03:xx UTC: after crm's value run has set tiers and lifecycle stages.
        crontab, _ = CrontabSchedule.objects.get_or_create(
            minute=minute, hour="3", day_of_week="*", day_of_month="*", month_of_year="*", timezone="UTC"
        )
        PeriodicTask.objects.get_or_create(
            name=name,
            defaults={"task": task, "crontab": crontab, "enabled": True, "queue": "analytics",
                      "description": description},
        )


def remove(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name__in=[s[0] for s in SCHEDULES]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("community", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]
    operations = [migrations.RunPython(create, remove)]
