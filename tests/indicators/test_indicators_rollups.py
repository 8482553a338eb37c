"""The indicator rollups: exact values on hand-made events, incremental runs equal to a rebuild
(late events and repeated batches included), idempotency, and the beat task on a real worker."""

from __future__ import annotations

import importlib
import random
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import connection

from indicators import analyses, rollups
from indicators.models import (
    ActivityDay,
    ActivityPerson,
    DailyIndicator,
    RetentionCell,
    RollupBacklog,
    RollupState,
    SearchDay,
)
from tests.factories.tracking import EventFactory, EventPayloadFactory
from tracking import services

pytestmark = pytest.mark.django_db

TABLES = {
    "tracking_activityday": "person_key, day, events, orders, refunds, paid_amount, refunded_amount, first_at, last_at",
    "tracking_activityperson": "person_key, first_day, last_day, first_order_day",
    "tracking_dailyindicator": "day, events, active_users, weekly_active_users, monthly_active_users, new_users, "
    "orders, refunds, paid_amount, refunded_amount, revenue, paying_users, repeat_buyers",
    "tracking_retentioncell": "basis, granularity, cohort, period, users",
    "tracking_searchday": "day, query, searches, zero_results",
    "tracking_searchmonth": "month, query, searches, zero_results",
    "tracking_activityfirstevent": "person_key, name, first_day",
    "tracking_activitygap": "day, next_day, users",
    "tracking_activitytail": "bucket, day, person_key, names, ats, ids",
}


def snapshot() -> dict[str, list[tuple]]:
    out = {}
    with connection.cursor() as cursor:
        for table, columns in TABLES.items():
            cursor.execute(f"SELECT {columns} FROM {table} ORDER BY {columns}")
            out[table] = cursor.fetchall()
    return out


def at(day: str, hour: int = 12) -> datetime:
    return datetime.fromisoformat(day).replace(hour=hour, tzinfo=UTC)


def fold() -> rollups.RollupResult:
    return rollups.fold_new_events()


def test_one_day_of_hand_made_events_gives_exact_indicators(stored_before_amount_check):
    with stored_before_amount_check():  # an older event with an amount the database now refuses
        EventFactory(name="order_paid", user_id="u2", timestamp=at("2026-03-02", 23), properties={"amount": "oops"})
    EventFactory(name="app_open", user_id="u1", timestamp=at("2026-03-02", 8))
    EventFactory(name="order_paid", user_id="u1", timestamp=at("2026-03-02", 9), properties={"amount": "20.50"})
    EventFactory(name="order_paid", user_id="u1", timestamp=at("2026-03-02", 10), properties={"amount": "4.50"})
    EventFactory(name="order_refunded", user_id="u1", timestamp=at("2026-03-02", 11), properties={"amount": "4.50"})
    EventFactory(name="app_open", user_id=None, anonymous_id="anon-7", timestamp=at("2026-03-02", 9))

    fold()

    day = DailyIndicator.objects.get(day=date(2026, 3, 2))
    assert (day.events, day.active_users, day.new_users) == (6, 3, 3)
    assert (day.orders, day.refunds, day.paying_users, day.repeat_buyers) == (3, 1, 2, 0)
    assert day.paid_amount == Decimal("25.00")  # the unreadable amount counts as 0
    assert day.revenue == Decimal("20.50")
    assert (day.weekly_active_users, day.monthly_active_users) == (3, 3)
    assert ActivityDay.objects.filter(person_key="anon-7").exists()  # anonymous people are counted


def test_wau_and_mau_count_each_person_once_over_trailing_windows():
    for day in ("2026-03-01", "2026-03-03", "2026-03-10"):
        EventFactory(user_id="u1", timestamp=at(day))
    EventFactory(user_id="u2", timestamp=at("2026-03-05"))

    fold()

    rows = {d.day: d for d in DailyIndicator.objects.all()}
    assert sorted(rows) == [date(2026, 3, 1) + timedelta(n) for n in range(10)]  # quiet days included
    assert rows[date(2026, 3, 4)].active_users == 0
    assert rows[date(2026, 3, 7)].weekly_active_users == 2  # u1 (3rd) and u2 (5th) within 1st..7th
    assert rows[date(2026, 3, 8)].weekly_active_users == 2  # u1 on the 3rd, u2 on the 5th
    assert rows[date(2026, 3, 10)].weekly_active_users == 2  # u1 on the 10th, u2 on the 5th
    assert rows[date(2026, 3, 10)].monthly_active_users == 2
    assert rows[date(2026, 3, 2)].monthly_active_users == 1


def test_a_late_event_moves_the_person_to_an_earlier_first_day():
    EventFactory(user_id="u1", timestamp=at("2026-03-10"))
    EventFactory(user_id="u1", name="order_paid", timestamp=at("2026-03-11"), properties={"amount": "5.00"})
    fold()
    assert DailyIndicator.objects.get(day=date(2026, 3, 10)).new_users == 1

    EventFactory(user_id="u1", name="order_paid", timestamp=at("2026-02-01"), properties={"amount": "1.00"})
    fold()

    assert DailyIndicator.objects.get(day=date(2026, 2, 1)).new_users == 1
    assert DailyIndicator.objects.get(day=date(2026, 3, 10)).new_users == 0
    assert DailyIndicator.objects.get(day=date(2026, 3, 11)).repeat_buyers == 1
    person = ActivityPerson.objects.get(person_key="u1")
    assert (person.first_day, person.first_order_day) == (date(2026, 2, 1), date(2026, 2, 1))
    cells = set(
        RetentionCell.objects.filter(basis="activity", granularity="month").values_list("cohort", "period", "users")
    )
    assert cells == {(date(2026, 2, 1), 0, 1), (date(2026, 2, 1), 1, 1)}


def test_searches_are_counted_per_query_with_zero_results():
    EventFactory(name="search", user_id="u1", timestamp=at("2026-03-02"), properties={"query": " Shoes ", "results": 0})
    EventFactory(name="search", user_id="u2", timestamp=at("2026-03-02"), properties={"query": "shoes", "results": 12})
    EventFactory(name="search", user_id="u2", timestamp=at("2026-03-02"), properties={"query": "hat", "results": []})
    EventFactory(name="search", user_id="u2", timestamp=at("2026-03-02"), properties={"results": 3})

    fold()

    rows = set(SearchDay.objects.values_list("query", "searches", "zero_results"))
    assert rows == {("shoes", 2, 1), ("hat", 1, 1)}


def _random_events(rng: random.Random, count: int, *, start: date, days: int) -> list[dict]:
    names = ["app_open", "page_view", "search", "order_paid", "order_refunded", "signup"]
    events = []
    for _ in range(count):
        name = rng.choice(names)
        day = start + timedelta(days=rng.randrange(days))
        person = f"p{rng.randrange(40)}"
        properties: dict = {}
        if name in ("order_paid", "order_refunded"):
            properties = {"order_id": f"o{rng.randrange(10**9)}", "amount": f"{rng.randrange(1, 9999) / 100:.2f}"}
        if name == "search":
            properties = {"query": rng.choice(["shoes", "hat", "coat"]), "results": rng.randrange(0, 3)}
        events.append(
            EventPayloadFactory(
                name=name,
                timestamp=datetime.combine(day, datetime.min.time(), tzinfo=UTC)
                .replace(hour=rng.randrange(24))
                .isoformat(),
                user_id=person if rng.random() < 0.8 else None,
                anonymous_id=None if rng.random() < 0.8 else f"a-{person}",
                properties=properties,
            )
        )
        if events[-1]["user_id"] is None and events[-1]["anonymous_id"] is None:
            events[-1]["user_id"] = person
    return events


@pytest.mark.parametrize(("seed", "chunk"), [(20260301, 97), (7, 31)])
def test_incremental_runs_with_late_and_repeated_batches_equal_a_full_rebuild(seed, chunk):
    rng = random.Random(seed)
    start = date(2026, 1, 1)
    batches = [_random_events(rng, 150, start=start + timedelta(days=10 * n), days=14) for n in range(6)]
    # Late events: old timestamps arriving with the last batches.
    batches.append(_random_events(rng, 80, start=start, days=60))
    for n, batch in enumerate(batches):
        services.ingest_events(events=batch, now=datetime(2026, 4, 1, tzinfo=UTC))
        if n % 2:
            services.ingest_events(events=batch, now=datetime(2026, 4, 1, tzinfo=UTC))  # arrives twice
        rollups.fold_new_events(chunk_events=chunk)  # odd chunks split days and people
    incremental = snapshot()
    assert incremental["tracking_retentioncell"] and incremental["tracking_searchday"]
    assert incremental["tracking_activitygap"] and incremental["tracking_activitytail"]
    assert len({row[0] for row in incremental["tracking_searchmonth"]}) >= 2

    rollups.rebuild()

    assert snapshot() == incremental


def test_a_second_run_changes_nothing_and_reads_nothing():
    services.ingest_events(events=_random_events(random.Random(1), 200, start=date(2026, 2, 1), days=20))
    first = fold()
    before = snapshot()

    second = fold()

    assert first.events == 200 and second.events == 0
    assert snapshot() == before


def test_rebuild_since_a_day_keeps_the_tables_as_they_were():
    services.ingest_events(events=_random_events(random.Random(2), 300, start=date(2026, 2, 1), days=40))
    fold()
    before = snapshot()

    call_command("rollup_indicators", since="2026-02-20", no_progress=True)

    assert snapshot() == before


def test_a_run_folds_the_queued_events_once_and_empties_the_backlog():
    EventFactory(user_id="u1", timestamp=at("2026-03-02"))
    assert RollupBacklog.objects.count() == 1

    assert rollups.fold_new_events().events == 1
    assert not RollupBacklog.objects.exists()
    assert RollupState.objects.get(name=rollups.STATE).last_event_id > 0
    assert rollups.fold_new_events().events == 0


@pytest.mark.django_db(transaction=True)
def test_the_beat_task_folds_events_through_the_real_worker(celery_worker, settings):
    from django.apps import apps as django_apps
    from django_celery_beat.models import PeriodicTask

    from config.celery import app

    # Run the migration's schedule again: a flush by an earlier transactional test removes it.
    schedule = importlib.import_module("tracking.migrations.0003_indicator_rollups").schedule
    schedule(django_apps, None)
    schedule(django_apps, None)  # twice: a re-run must not duplicate anything
    # ... and the move of the task to `indicators` renames the row's task, keeping its schedule.
    importlib.import_module("indicators.migrations.0002_moved_from_tracking").forwards(django_apps, None)
    row = PeriodicTask.objects.get(task="indicators.tasks.rollup_indicators")
    assert row.enabled and row.queue == "analytics" and row.crontab.minute == "10"
    EventFactory(user_id="u1", timestamp=at("2026-03-02"), received_at=datetime(2026, 3, 2, tzinfo=UTC))
    EventFactory(user_id=f"u-{uuid.uuid4()}", timestamp=at("2026-03-02"), received_at=datetime(2026, 3, 2, tzinfo=UTC))

    result = app.send_task(row.task, queue=row.queue).get(timeout=60)

    assert result["events"] == 2
    assert DailyIndicator.objects.get(day=date(2026, 3, 2)).active_users == 2

    # A message queued under the task's name of before the move (with the argument older versions
    # sent) still runs, and folds what arrived since.
    EventFactory(user_id="u2", timestamp=at("2026-03-02"), received_at=datetime(2026, 3, 2, tzinfo=UTC))
    queued_earlier = app.send_task("tracking.tasks.rollup_indicators", kwargs={"settle": 60}, queue=row.queue)
    assert queued_earlier.get(timeout=60)["events"] == 1
    assert DailyIndicator.objects.get(day=date(2026, 3, 2)).active_users == 3


def test_nightly_runs_of_one_new_day_with_late_events_equal_a_full_rebuild():
    # Each night brings the next day (WAU/MAU of that last day from the people's last days) and
    # a few late events from the days before (moving already counted days and cells).
    rng = random.Random(11)
    start = date(2026, 1, 27)
    services.ingest_events(events=_random_events(rng, 200, start=start, days=35), now=datetime(2026, 4, 1, tzinfo=UTC))
    rollups.fold_new_events()
    for night in range(35, 45):
        batch = _random_events(rng, 40, start=start + timedelta(days=night), days=1)
        batch += _random_events(rng, 6, start=start + timedelta(days=night - 3), days=3)
        services.ingest_events(events=batch, now=datetime(2026, 4, 1, tzinfo=UTC))
        rollups.fold_new_events()
    incremental = snapshot()
    assert DailyIndicator.objects.filter(day=start + timedelta(days=44), monthly_active_users__gt=0).exists()

    rollups.rebuild()

    assert snapshot() == incremental


def test_searches_of_a_window_read_whole_months_and_the_days_at_its_ends_or_less_them(events_engine):
    rng = random.Random(5)
    services.ingest_events(
        events=_random_events(rng, 400, start=date(2026, 1, 20), days=80), now=datetime(2026, 4, 20, tzinfo=UTC)
    )
    events_engine.ready()
    rows = list(SearchDay.objects.values_list("day", "query", "searches", "zero_results"))

    for start, end in [
        (date(2026, 1, 25), date(2026, 4, 5)),  # two whole months and two ends
        (date(2026, 2, 1), date(2026, 3, 31)),  # whole months only
        (date(2026, 2, 3), date(2026, 2, 20)),  # inside one month
        (date(2026, 1, 31), date(2026, 2, 28)),  # one whole month and one day before it
        (date(2026, 1, 3), date(2026, 3, 28)),  # most of two months: their month rows less some days
        (date(2026, 2, 2), date(2026, 2, 26)),  # most of one month, less days at both ends
        (date(2026, 3, 30), date(2026, 4, 1)),  # a few days across a month's end
    ]:
        by_hand: dict[str, list[int]] = {}
        for day, query, searches, zero in rows:
            if start <= day <= end:
                by_hand.setdefault(query, [0, 0])
                by_hand[query][0] += searches
                by_hand[query][1] += zero
        totals = analyses.search_report(start=start, end=end)
        read = totals["queries"]
        assert {r["query"]: [r["searches"], r["zero_results"]] for r in read} == by_hand
        assert [r["searches"] for r in read] == sorted((n for n, _z in by_hand.values()), reverse=True)
        assert totals["searches"] == sum(n for n, _z in by_hand.values())
        assert totals["zero_results"] == sum(z for _n, z in by_hand.values())
        # The totals are over every query, whatever the filter and the limit leave out.
        nothing_found = analyses.search_report(start=start, end=end, zero_results_only=True, limit=1)
        assert nothing_found["searches"] == totals["searches"]
        assert nothing_found["zero_results"] == totals["zero_results"]
        expected = sorted((-z, -n, q) for q, (n, z) in by_hand.items() if z)[:1]
        assert expected  # the window has zero-result searches: the filter has something to keep
        assert [(-r["zero_results"], -r["searches"], r["query"]) for r in nothing_found["queries"]] == expected
