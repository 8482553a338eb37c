"""What the demo calls to fill the goal, board, review and alert pages: a plan on a goal (two
tactics, phases, team tasks in every column) and one injected anomaly caught by the real check."""

from __future__ import annotations

import datetime as dt
from datetime import UTC, date, datetime, time
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group

from indicators.models import Anomaly, GoalMonth
from indicators.rollups import fold_new_events
from planning import selectors, services
from planning.models import Task
from tests.factories.indicators import goal
from tests.factories.tracking import EventFactory
from tracking.models import Event

pytestmark = pytest.mark.django_db
D = Decimal
TODAY = date(2026, 5, 14)


def test_the_demo_plan_sets_two_tactics_phases_and_tasks_in_every_board_column():
    g = goal(indicator="revenue", period="year", quarter=None, year=2026, target=D("120000"))
    growth, care = Group.objects.create(name="Growth"), Group.objects.create(name="CRM")
    result = services.seed_demo_plan(goal=g, teams=[growth, care], today=TODAY)
    assert result["created"] and len(result["tactics"]) == 2
    assert [t.starts_on for t in g.tactics.order_by("starts_on")] == [date(2026, 1, 1), date(2026, 7, 1)]
    months = list(GoalMonth.objects.filter(goal=g).order_by("month").values_list("target", flat=True))
    assert sum(months) == D("120000") and months[6] > months[5]  # the second tactic from July
    board = selectors.board(team=growth, today=TODAY)
    assert {c: len(tasks) for c, tasks in board.items()} == {"todo": 0, "doing": 1, "done": 1, "late": 1}
    assert Task.objects.filter(team=care).count() == 3
    assert services.seed_demo_plan(goal=g, teams=[growth], today=TODAY) == {"goal": g.pk, "created": False}


def test_the_demo_anomaly_is_caught_by_the_daily_check_and_names_its_source():
    day = date(2026, 5, 10)
    rows = []
    for offset in range(1, 60):
        d = day - dt.timedelta(days=offset)
        at = datetime.combine(d, time(10), tzinfo=UTC)
        count = 12 if d.weekday() < 5 else 7
        rows += EventFactory.build_batch(
            count, name="order_paid", timestamp=at, properties={"amount": "50.00"}, utm_source="search"
        )
    rows += EventFactory.build_batch(
        12 if day.weekday() < 5 else 7,
        name="order_paid",
        timestamp=datetime.combine(day, time(10), tzinfo=UTC),
        properties={"amount": "50.00"},
        utm_source="search",
    )
    stored = Event.objects.bulk_create(rows)
    from indicators.rollups import queue_stored_events

    queue_stored_events([e.pk for e in stored])
    fold_new_events()
    alert = services.seed_demo_anomaly(day=day, orders=40, amount="88.00", source="flash_sale")
    assert alert is not None and alert.direction == "spike"
    assert alert.movers[0]["source"] == "flash_sale"
    assert services.seed_demo_anomaly(day=day, orders=40) is not None
    assert Anomaly.objects.filter(period_start__date=day, indicator=alert.indicator).count() == 1
    assert Event.objects.filter(utm_source="flash_sale").count() == 40  # the second call added nothing
