"""Default scoring scheme, the four classic tiers and the nightly recompute schedule.

Operators change all of these in the admin; the migration only seeds what a fresh install needs."""

import json

from django.db import migrations

TASK_NAME = "crm: nightly recompute of customer value"
TASK = "crm.tasks.recompute_customer_values"

TIERS = [
    # slug, name, rank, applies_to, segments, gets_account_manager, description
    ("core", "Core", 40, "customers", ["important_value"], True, "Recent, frequent and big spenders."),
    (
        "important",
        "Important",
        30,
        "customers",
        ["important_development", "important_retention", "important_winback"],
        False,
        "Above-average spend, but not yet (or no longer) recent and frequent.",
    ),
    ("ordinary", "Ordinary", 20, "customers", [], False, "Every other customer with orders in the window."),
    ("potential", "Potential", 10, "without_orders", [], False, "Profiles without orders in the window."),
]


def seed(apps, schema_editor):
    ValueTier = apps.get_model("crm", "ValueTier")
    ScoringScheme = apps.get_model("crm", "ScoringScheme")
    CrontabSchedule = apps.get_model("django_celery_beat", "CrontabSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")

    for slug, name, rank, applies_to, segments, manager, description in TIERS:
        ValueTier.objects.get_or_create(
            slug=slug,
            defaults={
                "name": name,
                "rank": rank,
                "applies_to": applies_to,
                "segments": segments,
                "gets_account_manager": manager,
                "description": description,
            },
        )
    if not ScoringScheme.objects.filter(is_active=True).exists():
        ScoringScheme.objects.get_or_create(name="Default", defaults={"is_active": True})

    # 02:30 UTC: after the day's events are in and before operators start their day.
    schedule, _ = CrontabSchedule.objects.get_or_create(
        minute="30", hour="2", day_of_week="*", day_of_month="*", month_of_year="*", timezone="UTC"
    )
    PeriodicTask.objects.get_or_create(
        name=TASK_NAME,
        defaults={
            "task": TASK,
            "crontab": schedule,
            "queue": "analytics",
            "kwargs": json.dumps({}),
            "description": "RFM scores, tiers, lifecycle stages and account managers of every profile.",
        },
    )


def unseed(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name=TASK_NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("crm", "0002_value_schemes_tiers_history"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(seed, unseed)]
