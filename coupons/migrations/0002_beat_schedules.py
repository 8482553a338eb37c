"""Beat schedules of the coupons app, as rows operators can edit in the admin."""

from django.db import migrations

SCHEDULES = [
    # (name, task, minute pattern)
    ("coupons: expire coupons and release their budget", "coupons.expire_coupons", "*/5"),
    ("coupons: resume unfinished issuance jobs", "coupons.resume_issuance_jobs", "*/15"),
]


def create(apps, schema_editor):
    CrontabSchedule = apps.get_model("django_celery_beat", "CrontabSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    for name, task, minute in SCHEDULES:
        crontab, _ = CrontabSchedule.objects.get_or_create(
            minute=minute, hour="*", day_of_week="*", day_of_month="*", month_of_year="*", timezone="UTC"
        )
        PeriodicTask.objects.get_or_create(name=name, defaults={"task": task, "crontab": crontab, "enabled": True})


def remove(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTask.objects.filter(name__in=[name for name, _task, _minute in SCHEDULES]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("coupons", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]
    operations = [migrations.RunPython(create, remove)]
