"""First/last seen of existing profiles, applied after ingestion from the backlog it leaves:
exact values, idempotent, late events, merges, and nothing lost or skipped across crashes and
transactions that commit out of order."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

import psycopg
import pytest
from django.db import connection, transaction
from django.utils import timezone

from profiles import services, tasks
from profiles.models import Profile, SeenBacklog
from tests.factories.profiles import ProfileFactory, ingest
from tests.factories.tracking import payloads
from tracking.models import Event
from tracking.services import ingest_events


def seen(user_id: str) -> tuple:
    profile = Profile.objects.get(user_id=user_id)
    return profile.first_seen_at, profile.last_seen_at


def event(user_id: str, at, **extra) -> dict:
    return {"event_id": str(uuid.uuid4()), "name": "app_open", "timestamp": at.isoformat(), "user_id": user_id, **extra}


@pytest.mark.django_db
def test_ingestion_leaves_existing_profiles_to_the_background_step_and_it_applies_exact_values():
    now = timezone.now()
    ProfileFactory(user_id="ann", first_seen_at=now - timedelta(days=30), last_seen_at=now - timedelta(days=2))
    ingest_events(events=[event("ann", now - timedelta(hours=5)), event("ann", now - timedelta(days=40))])
    assert seen("ann") == (now - timedelta(days=30), now - timedelta(days=2))
    assert SeenBacklog.objects.count() == 1

    result = services.update_seen_times()

    assert (result.runs, result.events, result.profiles) == (1, 2, 1)
    assert seen("ann") == (now - timedelta(days=40), now - timedelta(hours=5))
    assert not SeenBacklog.objects.exists()


@pytest.mark.django_db
def test_a_new_user_gets_first_and_last_seen_at_once_and_the_background_step_leaves_them():
    now = timezone.now()
    ingest_events(events=[event("new-1", now - timedelta(hours=3)), event("new-1", now - timedelta(hours=1))])
    assert seen("new-1") == (now - timedelta(hours=3), now - timedelta(hours=1))
    assert services.update_seen_times().profiles == 0
    assert seen("new-1") == (now - timedelta(hours=3), now - timedelta(hours=1))


@pytest.mark.django_db
def test_running_the_step_twice_or_over_the_same_events_again_changes_nothing():
    now = timezone.now()
    ProfileFactory(user_id="bo", first_seen_at=now - timedelta(days=9), last_seen_at=now - timedelta(days=9))
    stored = ingest([{"user_id": "bo", "timestamp": now - timedelta(minutes=3)}])
    assert services.update_seen_times().profiles == 1
    after_first = seen("bo")

    assert services.update_seen_times() == services.SeenUpdate(runs=0, events=0, profiles=0)
    # The same events applied again (a slice replayed after a crash at the worst moment).
    SeenBacklog.objects.create(first_event_id=stored[0].id, last_event_id=stored[-1].id)
    replay = services.update_seen_times()

    assert (replay.runs, replay.events, replay.profiles) == (1, 1, 0)
    assert seen("bo") == after_first == (now - timedelta(days=9), now - timedelta(minutes=3))


@pytest.mark.django_db
def test_late_events_move_first_seen_back_and_never_last_seen():
    now = timezone.now()
    ProfileFactory(user_id="cy", first_seen_at=now - timedelta(days=1), last_seen_at=now - timedelta(hours=1))
    ingest(
        [
            {"user_id": "cy", "timestamp": now - timedelta(days=300)},
            {"user_id": "cy", "timestamp": now - timedelta(days=2)},
        ]
    )
    services.update_seen_times()
    assert seen("cy") == (now - timedelta(days=300), now - timedelta(hours=1))


@pytest.mark.django_db
def test_events_of_a_user_merged_before_the_step_runs_land_on_the_survivor():
    now = timezone.now()
    services.identify(user_id="d-old", identities=[("cookie", "c-d")])
    services.identify(user_id="d-new")
    ingest([{"user_id": "d-old", "timestamp": now - timedelta(hours=4)}])
    services.identify(user_id="d-new", identities=[("cookie", "c-d")])
    ingest([{"user_id": "d-old", "timestamp": now - timedelta(hours=2)}])

    services.update_seen_times()

    assert Profile.objects.get(user_id="d-old").merged_into == Profile.objects.get(user_id="d-new")
    assert seen("d-new") == (now - timedelta(hours=4), now - timedelta(hours=2))


@pytest.mark.django_db
def test_anonymous_events_count_for_the_profile_their_id_was_tied_to():
    now = timezone.now()
    services.identify(user_id="eve", anonymous_id="anon-eve")
    ingest([{"anonymous_id": "anon-eve", "timestamp": now - timedelta(minutes=7)}])
    ingest([{"anonymous_id": "anon-nobody", "timestamp": now - timedelta(minutes=6)}])
    assert services.update_seen_times().events == 2
    assert seen("eve") == (now - timedelta(minutes=7), now - timedelta(minutes=7))
    assert Profile.objects.count() == 1


@pytest.mark.django_db
def test_a_large_backlog_is_applied_in_bounded_slices_to_the_same_result():
    now = timezone.now()
    for i in range(5):
        ProfileFactory(user_id=f"f-{i}", first_seen_at=now - timedelta(days=1), last_seen_at=now - timedelta(days=1))
    for batch in range(6):
        ingest([{"user_id": f"f-{i}", "timestamp": now - timedelta(minutes=batch * 10 + i)} for i in range(5)])
    first = services.update_seen_times(max_events=10)
    assert (first.runs, first.events) == (2, 10)  # whole runs, stopped once the cap is reached
    total = services.catch_up_seen_times(max_events=10)
    assert (total.runs, total.events) == (4, 20)
    for i in range(5):
        assert seen(f"f-{i}") == (now - timedelta(days=1), now - timedelta(minutes=i))


def _run_in_thread(target, *args) -> tuple[threading.Thread, list]:
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(target(*args))
        except BaseException as exc:  # asserted on by the test
            outcome.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


@pytest.mark.django_db(transaction=True)
def test_a_batch_that_commits_after_a_later_one_was_applied_is_still_applied():
    """A cursor over event ids would pass over the first batch: it drew the lower ids, but the
    step ran over the second one while the first was not committed yet."""
    now = timezone.now()
    ProfileFactory(user_id="slow", first_seen_at=now - timedelta(days=5), last_seen_at=now - timedelta(days=5))
    ProfileFactory(user_id="fast", first_seen_at=now - timedelta(days=5), last_seen_at=now - timedelta(days=5))
    stored = threading.Event()
    release = threading.Event()

    def slow_batch():
        with transaction.atomic():
            ingest_events(events=[event("slow", now - timedelta(minutes=30))])
            stored.set()
            assert release.wait(timeout=30)

    thread, outcome = _run_in_thread(slow_batch)
    assert stored.wait(timeout=30)
    ingest_events(events=[event("fast", now - timedelta(minutes=20))])
    assert services.update_seen_times().runs == 1
    assert seen("fast")[1] == now - timedelta(minutes=20)
    assert seen("slow")[1] == now - timedelta(days=5)

    release.set()
    thread.join(timeout=30)
    assert outcome == [None]
    assert services.update_seen_times().runs == 1
    assert seen("slow") == (now - timedelta(days=5), now - timedelta(minutes=30))


@pytest.mark.django_db(transaction=True)
def test_a_merge_that_commits_while_the_step_waits_for_it_still_leaves_the_values_on_the_survivor():
    now = timezone.now()
    services.identify(user_id="g-old", identities=[("cookie", "c-g")])
    services.identify(user_id="g-new")
    ingest([{"user_id": "g-old", "timestamp": now - timedelta(minutes=9)}])
    merging = threading.Event()
    release = threading.Event()

    def merge():
        with transaction.atomic():
            services.identify(user_id="g-new", identities=[("cookie", "c-g")])
            merging.set()
            assert release.wait(timeout=30)

    merger, merged = _run_in_thread(merge)
    assert merging.wait(timeout=30)
    step, applied = _run_in_thread(services.update_seen_times)
    time.sleep(0.5)
    assert step.is_alive(), "the step should wait for the merge's row lock"
    release.set()
    merger.join(timeout=30)
    step.join(timeout=30)

    assert merged == [None]
    assert applied[0].runs == 1
    assert Profile.objects.get(user_id="g-old").merged_into == Profile.objects.get(user_id="g-new")
    assert seen("g-new") == (now - timedelta(minutes=9), now - timedelta(minutes=9))


def test_the_worker_applies_the_backlog(celery_worker):
    now = timezone.now()
    ProfileFactory(user_id="h-1", first_seen_at=now - timedelta(days=3), last_seen_at=now - timedelta(days=3))
    ingest_events(events=[event("h-1", now - timedelta(minutes=1)), *payloads(3)])
    assert tasks.rollup_seen_times.delay().get(timeout=60) == {"runs": 1, "events": 4, "profiles": 1}
    assert seen("h-1") == (now - timedelta(days=3), now - timedelta(minutes=1))


def _backends_waiting_on_a_lock(probe: psycopg.Connection) -> list[int]:
    rows = probe.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        " AND query LIKE '%%FOR NO KEY UPDATE OF p%%'"
    ).fetchall()
    return [row[0] for row in rows]


def _wait_for(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_a_worker_killed_in_the_middle_of_a_slice_loses_nothing(celery_worker):
    now = timezone.now()
    ProfileFactory(user_id="k-1", first_seen_at=now - timedelta(days=3), last_seen_at=now - timedelta(days=3))
    ingest_events(events=[event("k-1", now - timedelta(minutes=2)), event("k-1", now - timedelta(days=10))])
    db = connection.settings_dict
    probe = psycopg.connect(
        host=db["HOST"], port=db["PORT"], user=db["USER"], password=db["PASSWORD"], dbname=db["NAME"], autocommit=True
    )
    try:
        with transaction.atomic():
            # Hold the profile's row so the worker's slice stops half-way, backlog rows claimed.
            Profile.objects.select_for_update().get(user_id="k-1")
            tasks.rollup_seen_times.delay()
            _wait_for(lambda: _backends_waiting_on_a_lock(probe), "the worker to block on the profile row")
            (zombie,) = _backends_waiting_on_a_lock(probe)
            celery_worker.kill()
        # Its database session ends without a commit once it notices the client is gone.
        _wait_for(
            lambda: not probe.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [zombie]).fetchone(),
            "the killed worker's session to end",
        )
    finally:
        probe.close()
    assert SeenBacklog.objects.count() == 1
    assert seen("k-1") == (now - timedelta(days=3), now - timedelta(days=3))

    celery_worker.start()
    assert tasks.rollup_seen_times.delay().get(timeout=60) == {"runs": 1, "events": 2, "profiles": 1}
    assert seen("k-1") == (now - timedelta(days=10), now - timedelta(minutes=2))


@pytest.mark.django_db
def test_the_step_runs_every_minute_on_the_analytics_queue_as_an_editable_beat_row():
    from django_celery_beat.models import PeriodicTask

    task = PeriodicTask.objects.get(task="profiles.tasks.rollup_seen_times")
    assert task.enabled and task.queue == "analytics"
    assert (task.interval.every, task.interval.period) == (1, "minutes")


@pytest.mark.django_db(transaction=True)
def test_concurrent_batches_get_unique_ids_and_one_backlog_run_each_covering_exactly_their_events():
    """Batches drawing ids at the same time take whole blocks, so none is split into runs by the
    others and the backlog covers every stored event once."""
    writers, rounds, size = 4, 3, 400
    barrier = threading.Barrier(writers)

    def write() -> list[int]:
        ids = []
        for _ in range(rounds):
            barrier.wait(timeout=30)
            ids += [e.id for e in ingest_events(events=payloads(size)).stored]
        return ids

    started = [_run_in_thread(write) for _ in range(writers)]
    for thread, _outcome in started:
        thread.join(timeout=60)
    stored = [pk for _thread, outcome in started for pk in outcome[0]]
    assert len(stored) == len(set(stored)) == writers * rounds * size == Event.objects.count()

    runs = list(SeenBacklog.objects.values_list("first_event_id", "last_event_id"))
    assert len(runs) == writers * rounds
    assert all(last - first + 1 == size for first, last in runs)
    covered = sorted(pk for first, last in runs for pk in range(first, last + 1))
    assert covered == sorted(stored) == sorted(Event.objects.values_list("id", flat=True))
