"""The key-behaviour and churn pages (PostgreSQL: from the rollups only; ClickHouse: over the
shipped events): their answers equal the same analyses worked out by hand from the events, with
late events, repeated batches and small chunks, and a day with more events than a tail keeps."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta

import pytest
from django.db import connection

from indicators import analyses, rollups
from indicators.models import SAMPLE_BUCKETS, ActivityTail
from tests.factories.tracking import EventFactory
from tests.indicators.test_indicators_rollups import _random_events, snapshot
from tracking import services
from tracking.models import Event

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 5, 1, tzinfo=UTC)


def _load(seed: int, engine=None) -> None:
    rng = random.Random(seed)
    batches = [_random_events(rng, 120, start=date(2026, 2, 1) + timedelta(days=8 * n), days=12) for n in range(5)]
    batches.append(_random_events(rng, 60, start=date(2026, 2, 1), days=40))  # late events
    for n, batch in enumerate(batches):
        services.ingest_events(events=batch, now=NOW)
        if n % 2:
            services.ingest_events(events=batch, now=NOW)  # a retried batch: stored once
        rollups.fold_new_events(chunk_events=53)
    if engine is not None:
        engine.ready()


def _events() -> list[tuple[str, date, datetime, int, str]]:
    rows = Event.objects.values_list("user_id", "anonymous_id", "timestamp", "id", "name")
    return [(u or a, t.astimezone(UTC).date(), t, pk, name) for u, a, t, pk, name in rows]


def _key_behaviour_by_hand(event, start, end, first_days, retained_from, retained_days) -> dict[bool, tuple]:
    events = _events()
    first: dict[str, date] = {}
    for person, day, *_ in events:
        first[person] = min(first.get(person, day), day)
    groups: dict[bool, list[int]] = {True: [0, 0], False: [0, 0]}
    for person, signup in first.items():
        if not start <= signup <= end:
            continue
        did = any(p == person and n == event and d < signup + timedelta(days=first_days) for p, d, _t, _i, n in events)
        lo, hi = signup + timedelta(days=retained_from), signup + timedelta(days=retained_from + retained_days - 1)
        kept = any(p == person and lo <= d <= hi for p, d, *_ in events)
        groups[did][0] += 1
        groups[did][1] += kept
    return {k: tuple(v) for k, v in groups.items()}


def _churn_by_hand(start, end, churn_days, last_events, people=None) -> tuple[dict, dict]:
    events = _events()
    active = {p for p, d, *_ in events if start <= d <= end}
    after = {p for p, d, *_ in events if end < d <= end + timedelta(days=churn_days)}
    sizes = {"churned": len(active - after), "retained": len(active & after)}
    names: dict[str, list[int]] = {}
    for person in active if people is None else active & people:
        window = sorted(((t, i, n) for p, d, t, i, n in events if p == person and start <= d <= end), reverse=True)
        for name in {n for _t, _i, n in window[:last_events]}:
            names.setdefault(name, [0, 0])[0 if person not in after else 1] += 1
    return sizes, {name: tuple(v) for name, v in names.items()}


def test_key_behaviour_from_the_rollups_equals_the_events_by_hand(events_engine):
    _load(21, events_engine)
    for event, start, end, first_days, retained_from, retained_days in [
        ("search", date(2026, 2, 1), date(2026, 2, 20), 7, 7, 7),
        ("order_paid", date(2026, 2, 5), date(2026, 3, 10), 3, 1, 14),
        ("signup", date(2026, 2, 1), date(2026, 3, 31), 1, 2, 30),
    ]:
        report = analyses.key_behaviour(
            event_name=event,
            start=start,
            end=end,
            first_days=first_days,
            retained_from=retained_from,
            retained_days=retained_days,
        )
        by_hand = _key_behaviour_by_hand(event, start, end, first_days, retained_from, retained_days)
        got = {g["group"] == "did": (g["users"], g["retained"]) for g in report["groups"]}
        assert got == by_hand, (event, start, end)
        assert by_hand[True][0] and by_hand[False][0]


def test_churn_from_the_rollups_equals_the_events_by_hand(events_engine):
    _load(22, events_engine)
    for start, end, churn_days, last_events in [
        (date(2026, 2, 10), date(2026, 2, 24), 7, 3),
        (date(2026, 2, 1), date(2026, 3, 1), 14, 1),
        (date(2026, 3, 1), date(2026, 3, 5), 30, 20),
    ]:
        report = analyses.churn_behaviours(start=start, end=end, churn_days=churn_days, last_events=last_events)
        sizes, names = _churn_by_hand(start, end, churn_days, last_events)
        assert (report["churned_users"], report["retained_users"]) == (sizes["churned"], sizes["retained"])
        assert report["sampled_users"] == sizes["churned"] + sizes["retained"]  # small: everyone, exact
        assert {r["event_name"]: (r["churned"], r["retained"]) for r in report["behaviours"]} == names
        assert sizes["churned"] and sizes["retained"]


def test_a_churn_sample_is_the_first_people_by_the_hash_of_their_key(events_engine):
    # ClickHouse draws by the same hash: PostgreSQL computes it as it ships each event.
    _load(23, events_engine)
    start, end = date(2026, 2, 5), date(2026, 3, 5)
    report = analyses.churn_behaviours(start=start, end=end, churn_days=10, last_events=2, sample=10)
    population = report["churned_users"] + report["retained_users"]
    active = sorted({p for p, d, *_ in _events() if start <= d <= end})
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT p FROM unnest(%s::text[]) AS p ORDER BY hashtext(p), p LIMIT 10",
            [active],
        )
        people = {row[0] for row in cursor.fetchall()}
    sizes, names = _churn_by_hand(start, end, 10, 2)
    _all, sample_names = _churn_by_hand(start, end, 10, 2, people=people)
    assert (report["churned_users"], report["retained_users"]) == (sizes["churned"], sizes["retained"])
    assert population > 10 and report["sampled_users"] == 10
    assert {r["event_name"]: (r["churned"], r["retained"]) for r in report["behaviours"]} == sample_names
    assert sample_names != names  # a real sample, not everyone


def test_the_sample_buckets_go_up_with_the_hash():
    _load(24)
    with connection.cursor() as cursor:
        cursor.execute("SELECT bucket, hashtext(person_key) FROM tracking_activitytail ORDER BY hashtext(person_key)")
        rows = cursor.fetchall()
    assert [b for b, _h in rows] == sorted(b for b, _h in rows)
    assert all(0 <= b < SAMPLE_BUCKETS for b, _h in rows) and len({b for b, _h in rows}) > 10
    assert ActivityTail.objects.count() == len(rows)


def test_a_busy_day_keeps_its_last_events_across_chunks_and_late_arrivals(events_engine):
    day = datetime(2026, 3, 3, tzinfo=UTC)
    EventFactory(user_id="busy", name="app_open", timestamp=day - timedelta(days=1))
    for n in range(25):
        EventFactory(user_id="busy", name=f"step_{n % 7}", timestamp=day + timedelta(minutes=10 * n))
    rollups.fold_new_events(chunk_events=4)
    # Late: an event in the middle of the day, and one at its very end, arriving after the fold.
    EventFactory(user_id="busy", name="late_middle", timestamp=day + timedelta(minutes=95))
    EventFactory(user_id="busy", name="late_end", timestamp=day + timedelta(hours=23))
    EventFactory(user_id="other", name="app_open", timestamp=day + timedelta(days=20))
    rollups.fold_new_events(chunk_events=2)
    events_engine.ready()

    for last in (1, 3, 20):
        report = analyses.churn_behaviours(start=day.date(), end=day.date(), churn_days=7, last_events=last)
        _sizes, names = _churn_by_hand(day.date(), day.date(), 7, last)
        assert {r["event_name"]: (r["churned"], r["retained"]) for r in report["behaviours"]} == names
    assert {r["event_name"] for r in report["behaviours"]} >= {"late_end", "late_middle"}
    incremental = snapshot()
    rollups.rebuild()
    assert snapshot() == incremental
