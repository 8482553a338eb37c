"""The incremental fold: events queued by ingestion (`RollupBacklog`), taken a chunk at a time and
folded into the rollups, each chunk with its backlog rows in one transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from django.db import connection, transaction
from django.utils import timezone

from indicators.rollups import statements as q
from indicators.rollups.common import (
    DEFAULT_CHUNK_EVENTS,
    Progress,
    RollupResult,
    Steps,
    locked_state,
    set_work_mem,
)
from tracking.ids import IdRun, id_in_runs, join_runs, runs_of

MAX_RUNS = 1000  # backlog rows per chunk

_QUEUE = (
    "INSERT INTO tracking_rollupbacklog (first_event_id, last_event_id) "
    "SELECT * FROM unnest(%s::bigint[], %s::bigint[])"
)
_TAKE = (
    "SELECT id, first_event_id, last_event_id FROM tracking_rollupbacklog ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED"
)
_CUT = "UPDATE tracking_rollupbacklog SET first_event_id = %s WHERE id = %s"
_DONE = "DELETE FROM tracking_rollupbacklog WHERE id = ANY(%s)"
_PENDING = "SELECT COALESCE(sum(last_event_id - first_event_id + 1), 0) FROM tracking_rollupbacklog"
# Days whose indicators may change: those of the chunk, and the former first days of people whose
# first day moves (a late event makes someone new on an earlier day, not on that one).
_TOUCHED_DAYS = """
CREATE TEMP TABLE rollup_days ON COMMIT DROP AS
SELECT day FROM rollup_batch
UNION SELECT first_day FROM rollup_people WHERE first_moves AND first_day IS NOT NULL
UNION SELECT first_order_day FROM rollup_people WHERE first_order_moves AND first_order_day IS NOT NULL
"""
_TEMP_TABLES = "rollup_batch, rollup_people, rollup_days, rollup_ranges, rollup_gaps"


def queue_stored_events(ids: Sequence[int]) -> None:
    """Queue just-stored events for the rollups, in the transaction that stores them: one
    backlog row per run of consecutive ids (one per batch, unless a concurrent batch drew ids
    from the sequence in between). One small insert per batch."""
    runs = runs_of(ids)
    if not runs:
        return
    with connection.cursor() as cursor:
        cursor.execute(_QUEUE, [[a for a, _b in runs], [b for _a, b in runs]])


def _claim(cursor, *, budget: int) -> list[IdRun]:
    """Take backlog runs of about `budget` event ids (at least one id) for this transaction: the
    whole rows are deleted, a row that would overshoot is cut and keeps its rest. The rows are
    locked (SKIP LOCKED: a run that waits for nothing), and deleted or cut only together with
    the fold that commits them."""
    cursor.execute(_TAKE, [MAX_RUNS])
    taken: list[IdRun] = []
    done: list[int] = []
    total = 0
    for row_id, first, last in cursor.fetchall():
        room = budget - total
        if room <= 0:
            break
        if last - first + 1 <= room:
            taken.append((first, last))
            done.append(row_id)
            total += last - first + 1
        else:  # cut: the first ids go now, the row keeps the rest
            upto = first + room - 1
            taken.append((first, upto))
            cursor.execute(_CUT, [upto + 1, row_id])
            break
    if done:
        cursor.execute(_DONE, [done])
    return join_runs(taken)


def fold_chunk(steps: Steps, *, runs: list[IdRun]) -> tuple[int, int]:
    """Fold the events of the id `runs` into the rollups; returns (events, days touched)."""
    events_of_chunk = id_in_runs(runs)
    steps.execute(f"DROP TABLE IF EXISTS {_TEMP_TABLES}")
    steps.run("stage", q.STAGE_BATCH.format(events=events_of_chunk))
    steps.execute("SELECT COALESCE(sum(events), 0) FROM rollup_batch")
    (events,) = steps.fetchone()
    if not events:  # ids reserved and never used (a batch that fell back to the other insert)
        steps.execute("DROP TABLE rollup_batch")
        return 0, 0
    steps.execute("ANALYZE rollup_batch")
    steps.run("persons", q.CHUNK_PEOPLE)
    steps.execute("ALTER TABLE rollup_people ADD PRIMARY KEY (person_key)")
    steps.execute("ANALYZE rollup_people")
    steps.execute(_TOUCHED_DAYS)
    steps.execute("SELECT min(day), max(day) FROM tracking_dailyindicator")
    old_lo, old_hi = steps.fetchone()
    steps.execute("SELECT min(day) FROM rollup_batch")
    (first,) = steps.fetchone()
    # Days counted before whose window the chunk reaches are moved by the chunk's people alone
    # (before their days are added, to see what they had); a chunk reaching before the first
    # counted day is rare (a very late event) and recounts every day from its first on.
    recount_from = None
    if old_hi is None or first < old_lo:
        recount_from = first
    else:
        steps.run("active_windows", q.ADD_ACTIVE_WINDOWS, {"old_hi": old_hi})

    steps.run("cohorts", q.RANGES)
    steps.execute("CREATE INDEX ON rollup_ranges (person_key)")
    steps.execute("ANALYZE rollup_ranges")
    steps.run("cohorts", q.SUBTRACT_CELLS_OF_RANGES)
    steps.run("cohorts", q.STAYER_CELLS)
    steps.run("gaps", q.GAP_PEOPLE)
    steps.run("gaps", q.SUBTRACT_GAPS)
    steps.run("activity", q.ADD_ACTIVITY)
    steps.run("gaps", q.ADD_GAPS)
    steps.execute("DELETE FROM tracking_activitygap WHERE users = 0")
    steps.run("tails", q.ADD_TAILS)
    steps.run("first_events", q.ADD_FIRST_EVENTS.format(events=events_of_chunk))
    steps.run("persons", q.PERSONS_FROM_CHUNK)
    steps.run("cohorts", q.ADD_CELLS_OF_RANGES)
    steps.execute("DELETE FROM tracking_retentioncell WHERE users = 0")
    steps.run("searches", q.ADD_SEARCHES.format(events=events_of_chunk))
    steps.run("searches", q.ADD_SEARCH_MONTHS.format(events=events_of_chunk))
    steps.run("days", q.DAYS_TOUCHED)

    steps.execute("SELECT count(*) FROM rollup_days")
    (days,) = steps.fetchone()
    # Days not counted yet (the chunk's new days, quiet days before them): the last day of all
    # from the people's last days, a longer run with the running count over its 30-day reach.
    steps.execute("SELECT max(day) FROM tracking_activityday")
    (hi,) = steps.fetchone()
    lo = recount_from if recount_from is not None else old_hi + timedelta(days=1)
    if lo == hi:
        steps.run("active_windows", q.LAST_DAY_WINDOWS, {"hi": hi})
    elif lo < hi:
        steps.run("active_windows", q.ACTIVE_WINDOWS, {"lo": lo, "hi": hi})
    # Dropped here too: inside an outer transaction ON COMMIT comes only at its end.
    steps.execute(f"DROP TABLE {_TEMP_TABLES}")
    return events, days


def fold_queued(steps: Steps, *, chunk_events: int) -> None:
    """Fold everything queued, within the caller's transaction (a rebuild's snapshot)."""
    while runs := _claim(steps.cursor, budget=chunk_events):
        fold_chunk(steps, runs=runs)


def fold_new_events(*, chunk_events: int = DEFAULT_CHUNK_EVENTS, progress: Progress | None = None) -> RollupResult:
    """Fold every queued event into the rollups, one transaction per chunk of about
    `chunk_events` events. Safe to run at any time, twice, or concurrently (runs queue on the
    state row's lock; each takes backlog rows another has not taken)."""
    result = RollupResult()
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            state = locked_state()
            set_work_mem(cursor)
            runs = _claim(cursor, budget=chunk_events)
            if not runs:
                result.last_event_id = state.last_event_id
                return result
            count, days = fold_chunk(Steps(cursor, result.timings), runs=runs)
            state.last_event_id = max(state.last_event_id, runs[-1][1])
            state.events_folded += count
            state.updated_at = timezone.now()
            state.save()
        result.days += days
        result.events += count
        result.chunks += 1
        result.last_event_id = state.last_event_id
        if progress:
            progress(count)


def pending_events() -> int:
    """About how many events are queued and not folded yet (for the progress bar): the ids the
    backlog spans."""
    with connection.cursor() as cursor:
        cursor.execute(_PENDING)
        return int(cursor.fetchone()[0])
