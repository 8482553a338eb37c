"""The rollups' backlog of stored events: a batch whose transaction commits after later ids were
folded is folded by the next run, a run that crashes midway loses nothing, concurrent runs do not
count anything twice, and a rebuild that a batch commits into leaves that batch queued."""

from __future__ import annotations

import random
import threading
from datetime import UTC, date, datetime

import pytest
from django.db import DatabaseError, connection, transaction
from django.db.models import Q

from indicators import rollups
from indicators.models import DailyIndicator, RollupBacklog
from tests.indicators.test_indicators_rollups import _random_events, snapshot
from tracking import services
from tracking.models import Event

NOW = datetime(2026, 4, 1, tzinfo=UTC)


def _people(events: list[dict], prefix: str) -> list[dict]:
    """The events with their people renamed: concurrent batches that name different people do not
    wait for each other's new profiles."""
    for event in events:
        for key in ("user_id", "anonymous_id"):
            if event.get(key):
                event[key] = f"{prefix}-{event[key]}"
    return events


class HeldOpen(threading.Thread):
    """Ingests a batch on a connection of its own and keeps the transaction open until `commit()`
    (a slow request, or one stalled on a lock)."""

    def __init__(self, events: list[dict]) -> None:
        super().__init__(daemon=True)
        self.events = events
        self.stored = threading.Event()
        self.release = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with transaction.atomic():
                services.ingest_events(events=self.events, now=NOW)
                self.stored.set()
                if not self.release.wait(60):
                    raise TimeoutError("never released")
        except BaseException as exc:  # reported by commit()
            self.error = exc
        finally:
            self.stored.set()
            connection.close()
            self.done.set()

    def commit(self) -> None:
        self.release.set()
        assert self.done.wait(60)
        assert self.error is None, self.error


def _total_events() -> int:
    return sum(DailyIndicator.objects.values_list("events", flat=True))


@pytest.mark.django_db(transaction=True)
def test_a_batch_that_commits_after_a_later_one_was_folded_is_folded_by_the_next_run():
    rng = random.Random(3)
    early = _people(_random_events(rng, 120, start=date(2026, 2, 1), days=20), "early")
    later = _people(_random_events(rng, 150, start=date(2026, 2, 5), days=20), "later")
    slow = HeldOpen(early)
    slow.start()
    assert slow.stored.wait(30) and slow.error is None
    services.ingest_events(events=later, now=NOW)  # takes higher ids and commits first

    first = rollups.fold_new_events()

    assert first.events == 150 and _total_events() == 150
    slow.commit()
    early_ids = Event.objects.filter(Q(user_id__startswith="early") | Q(anonymous_id__startswith="early"))
    assert len(early_ids) == 120
    assert max(e.id for e in early_ids) < first.last_event_id  # below what was already folded

    second = rollups.fold_new_events()

    assert second.events == 120 and _total_events() == 270
    incremental = snapshot()
    rollups.rebuild()
    assert snapshot() == incremental


@pytest.mark.django_db
def test_a_run_that_fails_midway_leaves_the_rollups_and_the_backlog_as_they_were():
    services.ingest_events(events=_random_events(random.Random(4), 200, start=date(2026, 2, 1), days=20), now=NOW)
    rollups.fold_new_events()
    services.ingest_events(events=_random_events(random.Random(5), 200, start=date(2026, 2, 10), days=20), now=NOW)
    before = snapshot()
    queued = list(RollupBacklog.objects.values_list("id", "first_event_id", "last_event_id"))
    with connection.cursor() as cursor:
        # A real failure after the activity rows were written: the searches' insert is refused.
        cursor.execute(
            "CREATE FUNCTION rollup_test_fail() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'disk full'; END $$"
        )
        cursor.execute(
            "CREATE TRIGGER rollup_test_fail BEFORE INSERT ON tracking_searchday "
            "FOR EACH STATEMENT EXECUTE FUNCTION rollup_test_fail()"
        )

    with pytest.raises(DatabaseError, match="disk full"):
        rollups.fold_new_events()

    assert snapshot() == before
    assert list(RollupBacklog.objects.values_list("id", "first_event_id", "last_event_id")) == queued
    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER rollup_test_fail ON tracking_searchday")
    assert rollups.fold_new_events().events == 200
    assert _total_events() == 400
    incremental = snapshot()
    rollups.rebuild()
    assert snapshot() == incremental


@pytest.mark.django_db(transaction=True)
def test_two_runs_at_once_fold_each_event_once():
    rng = random.Random(6)
    for n in range(8):
        batch = _random_events(rng, 60, start=date(2026, 2, 1 + 2 * n), days=6)
        services.ingest_events(events=batch, now=NOW)
    results: list[rollups.RollupResult] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def run() -> None:
        try:
            start.wait(10)
            results.append(rollups.fold_new_events(chunk_events=70))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    assert not errors, errors
    assert sum(r.events for r in results) == 480
    assert not RollupBacklog.objects.exists()
    assert _total_events() == 480
    incremental = snapshot()
    rollups.rebuild()
    assert snapshot() == incremental


@pytest.mark.django_db(transaction=True)
def test_a_batch_committing_during_a_rebuild_stays_queued_for_the_next_run():
    rng = random.Random(7)
    services.ingest_events(events=_people(_random_events(rng, 300, start=date(2026, 2, 1), days=30), "old"), now=NOW)
    slow = HeldOpen(_people(_random_events(rng, 90, start=date(2026, 2, 1), days=30), "new"))
    slow.start()
    assert slow.stored.wait(30) and slow.error is None

    def commits_midway(_days: int) -> None:
        if not slow.done.is_set():
            slow.commit()  # after the first run of days was read, before the others

    rebuilt = rollups.rebuild(chunk_events=40, progress=commits_midway)

    assert rebuilt.chunks > 1 and slow.done.is_set()
    assert _total_events() == 300  # the rebuild's snapshot: without the batch that committed in it
    assert RollupBacklog.objects.count() == 1
    assert rollups.fold_new_events().events == 90
    assert _total_events() == 390
    incremental = snapshot()
    rollups.rebuild()
    assert snapshot() == incremental
