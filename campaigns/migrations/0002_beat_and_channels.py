"""The minutely sweeper as a beat schedule operators can edit in the admin, and one channel row
per kind (empty URL: the settings apply) so gateways can be changed without a deploy."""

from django.db import migrations


def forwards(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    Channel = apps.get_model("campaigns", "Channel")
    every_minute, _ = IntervalSchedule.objects.get_or_create(every=60, period="seconds")
    PeriodicTask.objects.get_or_create(
        name="campaigns: sweep deliveries and campaigns",
        defaults={"task": "campaigns.tasks.sweep", "interval": every_minute, "enabled": True},
    )
    for kind in ("push", "sms", "email", "webhook"):
        Channel.objects.get_or_create(kind=kind)


def backwards(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTask.objects.filter(name="campaigns: sweep deliveries and campaigns").delete()


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]
    operations = [migrations.RunPython(forwards, backwards)]
