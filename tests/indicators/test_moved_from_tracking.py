"""The indicator models moved from `tracking` to `indicators` without losing anything: data, the
permissions granted by hand, the beat row, and the admin pages people bookmarked."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from indicators import rollups, services
from indicators.models import DailyIndicator, Funnel, FunnelStep, Goal, RollupState
from tests.factories.tracking import EventFactory

BEFORE_THE_MOVE = [("tracking", "0010_order_amount_decimal"), ("indicators", None)]


def _migrate(targets) -> None:
    # Not `tests.migrating.migrate_to`: an app unmigrated to zero (`None`) has no project state.
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)


@pytest.mark.django_db(transaction=True)
def test_a_database_made_before_the_move_migrates_forward_with_its_data_grants_and_beat_row(django_user_model):
    goal = services.create_goal(
        name="Q1 revenue", indicator="revenue", period="quarter", year=2026, quarter=1, target=Decimal("9000")
    )
    funnel = Funnel.objects.create(name="view, pay")
    FunnelStep.objects.create(funnel=funnel, position=1, event_name="product_view")
    FunnelStep.objects.create(funnel=funnel, position=2, event_name="order_paid")
    EventFactory(user_id="u1", timestamp=datetime(2026, 1, 5, 12, tzinfo=UTC))
    rollups.fold_new_events()
    assert DailyIndicator.objects.filter(day=date(2026, 1, 5)).exists()

    _migrate(BEFORE_THE_MOVE)
    # As the database of the version before: the content types are `tracking`'s, the beat row
    # names the task there, and an administrator gave a group one goal permission by hand.
    assert not ContentType.objects.filter(app_label="indicators").exists()
    old_goal_type = ContentType.objects.get(app_label="tracking", model="goal")
    ContentType.objects.get(app_label="tracking", model="rollupcursor")
    keepers = Group.objects.create(name="Goal keepers")
    keepers.permissions.add(Permission.objects.get(content_type=old_goal_type, codename="change_goal"))
    person = django_user_model.objects.create_user(username="keeper", password="pw", is_staff=True)
    person.groups.add(keepers)
    hourly, _ = CrontabSchedule.objects.get_or_create(minute="10", hour="*")
    PeriodicTask.objects.update_or_create(
        name="tracking: fold new events into the indicator rollups",
        defaults={
            "task": "tracking.tasks.rollup_indicators",
            "crontab": hourly,
            "queue": "analytics",
            "enabled": False,
        },
    )

    _migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())

    moved = Goal.objects.get(pk=goal.pk)
    assert (moved.name, moved.target, moved.month_targets.count()) == ("Q1 revenue", Decimal("9000"), 3)
    assert [s.event_name for s in Funnel.objects.get(pk=funnel.pk).steps.order_by("position")] == [
        "product_view",
        "order_paid",
    ]
    assert DailyIndicator.objects.get(day=date(2026, 1, 5)).active_users == 1
    assert RollupState.objects.get(name=rollups.STATE).events_folded == 1
    # The grant made by hand survives, now on the model's new label.
    assert not ContentType.objects.filter(app_label="tracking", model="goal").exists()
    assert django_user_model.objects.get(pk=person.pk).has_perm("indicators.change_goal")
    # The beat row keeps its schedule and its switch, and names the task where it lives now.
    row = PeriodicTask.objects.get(task="indicators.tasks.rollup_indicators")
    assert (row.name, row.crontab.minute, row.enabled) == (
        "indicators: fold new events into the indicator rollups",
        "10",
        False,
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("/admin/tracking/goal/", "/admin/indicators/goal/"),
        ("/admin/tracking/goal/7/change/", "/admin/indicators/goal/7/change/"),
        (
            "/admin/tracking/dailyindicator/retention/?granularity=week&basis=activity",
            "/admin/indicators/dailyindicator/retention/?granularity=week&basis=activity",
        ),
        ("/admin/tracking/funnel/?q=pay", "/admin/indicators/funnel/?q=pay"),
    ],
)
def test_bookmarked_admin_pages_of_the_moved_models_redirect_with_their_query(client, old, new):
    response = client.get(old)
    assert response.status_code == 301
    assert response["Location"] == new


@pytest.mark.django_db
def test_the_event_pages_stay_where_they_were(admin_client):
    assert admin_client.get("/admin/tracking/event/").status_code == 200
