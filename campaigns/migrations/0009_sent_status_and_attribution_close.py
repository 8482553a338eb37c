"""A campaign whose last message went out is `sent` until its attribution window closes, then
`completed` by a beat task. Campaigns completed under the old rule (at the last send) become
`sent` where their window is still open (their winner, named at the last send, is cleared for the
close to name it); those past it keep `completed`, dated when it closed."""

import datetime as dt

from django.db import migrations, models
from django.utils import timezone

TASK_NAME = "campaigns: complete campaigns whose attribution window closed"


def forwards(apps, schema_editor):
    Campaign = apps.get_model("campaigns", "Campaign")
    now = timezone.now()
    # Until now `completed_at` was stamped at the last send: it is the window's opening.
    for campaign in Campaign.objects.filter(status="completed", sent_at__isnull=True).exclude(completed_at=None):
        campaign.sent_at = campaign.completed_at
        closes = campaign.sent_at + dt.timedelta(hours=campaign.attribution_hours)
        if closes > now:
            campaign.status, campaign.completed_at = "sent", None
            # Its winner was named on the conversions up to the last send: the close names it on
            # the whole window. A rolled-out winner stays (it was sent to the rest).
            if campaign.rolled_out_at is None:
                campaign.winner = None
        else:
            campaign.completed_at = closes
        campaign.save(update_fields=["status", "sent_at", "completed_at", "winner"])
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    every_five_minutes, _ = IntervalSchedule.objects.get_or_create(every=300, period="seconds")
    PeriodicTask.objects.get_or_create(
        name=TASK_NAME,
        defaults={
            "task": "campaigns.tasks.close_attribution_windows",
            "interval": every_five_minutes,
            "enabled": True,
        },
    )


def backwards(apps, schema_editor):
    Campaign = apps.get_model("campaigns", "Campaign")
    for campaign in Campaign.objects.filter(status__in=["sent", "completed"]).exclude(sent_at=None):
        campaign.status, campaign.completed_at = "completed", campaign.sent_at
        campaign.save(update_fields=["status", "completed_at"])
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name=TASK_NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0008_alter_campaign_phase"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [
        migrations.AddField(
            model_name="campaign",
            name="sent_at",
            field=models.DateTimeField(
                blank=True, help_text="When its last message went out: the attribution window opens here", null=True
            ),
        ),
        migrations.AlterField(
            model_name="campaign",
            name="completed_at",
            field=models.DateTimeField(
                blank=True, help_text="When its attribution window closed and its results became final", null=True
            ),
        ),
        migrations.AlterField(
            model_name="campaign",
            name="results_snapshot",
            field=models.JSONField(
                blank=True, help_text="Results as of the last send, then frozen when the window closes", null=True
            ),
        ),
        migrations.AlterField(
            model_name="campaign",
            name="status",
            field=models.CharField(
                choices=[
                    ("draft", "Draft"),
                    ("scheduled", "Scheduled"),
                    ("running", "Running"),
                    ("paused", "Paused"),
                    ("awaiting_rollout", "Pilot done, awaiting rollout"),
                    ("sent", "Sent; counting conversions"),
                    ("completed", "Completed (attribution window closed)"),
                    ("cancelled", "Cancelled"),
                    ("failed", "Failed (see the reason; retry)"),
                ],
                default="draft",
                max_length=20,
            ),
        ),
        migrations.RunPython(forwards, backwards),
    ]
