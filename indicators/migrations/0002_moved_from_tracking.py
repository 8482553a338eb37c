"""What else moved with the models from `tracking`: their content types (so that permissions given
to groups and users by hand, and admin log entries, stay attached) and the hourly beat row's task
name (its schedule, queue and enabled flag stay as the operator left them)."""

from django.db import migrations

# Model names in `tracking` -> in `indicators` (one was renamed on the way).
MOVED = {
    name: name
    for name in (
        "rollupbacklog",
        "activityday",
        "activityperson",
        "activityfirstevent",
        "activitygap",
        "activitytail",
        "dailyindicator",
        "retentioncell",
        "searchday",
        "searchmonth",
        "funnel",
        "funnelstep",
        "goal",
        "goalmonth",
    )
} | {"rollupcursor": "rollupstate"}
OLD_TASK, NEW_TASK = "tracking.tasks.rollup_indicators", "indicators.tasks.rollup_indicators"
OLD_ROW, NEW_ROW = (
    "tracking: fold new events into the indicator rollups",
    "indicators: fold new events into the indicator rollups",
)


def _relabel(apps, *, source: str, target: str, names: dict[str, str]) -> None:
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    for old in ContentType.objects.filter(app_label=source, model__in=list(names)):
        existing = ContentType.objects.filter(app_label=target, model=names[old.model]).first()
        if existing is None:
            old.app_label, old.model = target, names[old.model]
            old.save(update_fields=["app_label", "model"])
            continue
        # Both exist (content types were made for the new label before this ran): the grants made
        # on the old one go to the new one's permission of the same codename.
        for permission in Permission.objects.filter(content_type=old):
            twin = Permission.objects.filter(content_type=existing, codename=permission.codename).first()
            if twin is None:
                permission.content_type = existing
                permission.save(update_fields=["content_type"])
                continue
            for group in permission.group_set.all():
                group.permissions.add(twin)
            for user in permission.user_set.all():
                user.user_permissions.add(twin)
        old.delete()


def _retask(apps, *, source: tuple[str, str], target: tuple[str, str]) -> None:
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTask.objects.filter(task=source[0]).update(task=target[0])
    if not PeriodicTask.objects.filter(name=target[1]).exists():
        PeriodicTask.objects.filter(name=source[1]).update(name=target[1])


def forwards(apps, schema_editor):
    _relabel(apps, source="tracking", target="indicators", names=MOVED)
    _retask(apps, source=(OLD_TASK, OLD_ROW), target=(NEW_TASK, NEW_ROW))


def backwards(apps, schema_editor):
    _relabel(apps, source="indicators", target="tracking", names={new: old for old, new in MOVED.items()})
    _retask(apps, source=(NEW_TASK, NEW_ROW), target=(OLD_TASK, OLD_ROW))


class Migration(migrations.Migration):
    dependencies = [
        ("indicators", "0001_initial"),
        ("tracking", "0011_indicators_moved_out"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
