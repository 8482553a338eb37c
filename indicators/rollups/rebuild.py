"""The rollups recomputed from the events: all of them, or the days from a date on."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from django.db import OperationalError, connection, transaction
from django.utils import timezone
from psycopg import sql

from indicators.rollups import statements as q
from indicators.rollups.common import (
    DEFAULT_CHUNK_EVENTS,
    Progress,
    RollupResult,
    Steps,
    locked_state,
    set_work_mem,
)
from indicators.rollups.fold import fold_new_events, fold_queued

REBUILD_ATTEMPTS = 5
_EVENTS_IN_DAYS = sql.SQL("e.timestamp >= %(lo)s AND e.timestamp < %(hi)s")
_DAY_SPAN = """
SELECT min((e.timestamp AT TIME ZONE 'UTC')::date), max((e.timestamp AT TIME ZONE 'UTC')::date), count(*)
FROM tracking_event e
WHERE %(since)s::timestamptz IS NULL OR e.timestamp >= %(since)s::timestamptz
"""
_CONSTRAINTS = (
    "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
    "WHERE conrelid = %s::regclass AND contype IN ('p', 'u')"
)
_INDEXES = (
    "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i "
    "JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = %s::regclass "
    "AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)"
)


class _IndexesSetAside:
    """The indexes (and primary keys) of emptied tables, dropped while they are filled and built
    again after: one sorted build instead of a million random insertions into each. Only for
    tables emptied in this transaction, which holds their exclusive lock throughout."""

    def __init__(self, steps: Steps, tables: tuple[str, ...]) -> None:
        self.steps = steps
        self.saved: dict[str, list[sql.Composable]] = {}
        cursor = steps.cursor
        for table in tables:
            cursor.execute(_CONSTRAINTS, [table])
            constraints = cursor.fetchall()
            cursor.execute(_INDEXES, [table])
            indexes = cursor.fetchall()
            name_of_table = sql.Identifier(table)
            for name, _definition in constraints:
                cursor.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(name_of_table, sql.Identifier(name)))
            for name, _definition in indexes:
                cursor.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
            # The definitions come back from the catalog as complete statements (pg_get_*def).
            self.saved[table] = [
                *(
                    sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} ").format(name_of_table, sql.Identifier(name))
                    + sql.SQL(definition)
                    for name, definition in constraints
                ),
                *(sql.SQL(definition) for _name, definition in indexes),
            ]

    def restore(self, table: str) -> None:
        for statement in self.saved.pop(table, []):
            self.steps.run("indexes", statement)
        self.steps.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))


def _derive_all(steps: Steps, *, indexes: _IndexesSetAside | None = None) -> None:
    """Everything derived from the activity rows, from scratch."""
    steps.execute(
        "TRUNCATE tracking_activityperson, tracking_retentioncell, tracking_dailyindicator, tracking_activitygap"
    )
    if indexes is not None:
        # Emptied and filled once: no conflicts to look for, no index to keep up while filling.
        steps.run("persons", q.INSERT_PERSONS)
        indexes.restore("tracking_activityperson")
    else:
        steps.run("persons", q.UPSERT_PERSONS)
    steps.run("cohorts", q.ADD_CELLS_OF_ALL)
    steps.run("days", q.DAYS_ALL)
    steps.execute("SELECT min(day), max(day) FROM tracking_activityday")
    lo, hi = steps.fetchone()
    if lo is not None:
        # The windows' pass over every person-day and its next one counts the gaps too.
        steps.run("active_windows", q.ACTIVE_WINDOWS_AND_GAPS, {"lo": lo, "hi": hi})


def rebuild(
    *, since: date | None = None, chunk_events: int = DEFAULT_CHUNK_EVENTS, progress: Progress | None = None
) -> RollupResult:
    """Recompute the rollups from the events in one transaction (a crash leaves the old tables;
    dashboards wait for it to commit): all of them, or with `since` the days from that day on
    (the earlier days are kept; first days, cohorts and the daily indicators are re-derived from
    the activity rows).

    The transaction reads one snapshot (REPEATABLE READ): the events it recomputes from are
    exactly those whose backlog rows it empties, and a batch committing meanwhile stays queued
    for the next fold, neither counted twice nor lost. Begun while a fold commits, it starts
    again. Inside a caller's transaction the caller's snapshot rules.

    Events are read a run of days at a time (about `chunk_events` events each); each run's
    person-days are new rows, so they are inserted straight from one aggregate of the events."""
    if since is not None:
        fold_new_events(chunk_events=chunk_events)  # what is queued now, in short transactions first
    for attempt in range(REBUILD_ATTEMPTS):
        try:
            return _rebuild(since=since, chunk_events=chunk_events, progress=progress)
        except OperationalError as exc:
            if getattr(exc.__cause__, "sqlstate", None) != "40001" or attempt == REBUILD_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _rebuild(*, since: date | None, chunk_events: int, progress: Progress | None) -> RollupResult:
    result = RollupResult()
    own_snapshot = not connection.in_atomic_block
    with transaction.atomic(), connection.cursor() as raw:
        if own_snapshot:
            raw.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        steps = Steps(raw, result.timings)
        state = locked_state()
        set_work_mem(raw)
        indexes = None
        if since is None:
            steps.execute("TRUNCATE " + ", ".join(q.TABLES))
            steps.execute("DELETE FROM tracking_rollupbacklog")  # every event of the snapshot is read below
            indexes = _IndexesSetAside(steps, q.BULK_TABLES)
            steps.execute(
                "CREATE TEMP TABLE rollup_first_events (person_key text, name text, first_day date) ON COMMIT DROP"
            )
        else:
            # What was queued since the fold above, folded in this snapshot: then every event it
            # sees is in the rollups and the days from `since` can be read again from all of them.
            fold_queued(steps, chunk_events=chunk_events)
            steps.execute("DELETE FROM tracking_activityday WHERE day >= %s", [since])
            steps.execute("DELETE FROM tracking_activitytail WHERE day >= %s", [since])
            steps.execute("DELETE FROM tracking_activityfirstevent WHERE first_day >= %s", [since])
            steps.execute("DELETE FROM tracking_searchday WHERE day >= %s", [since])
        first, last, total = _day_span(raw, since=since)
        if first is not None:
            days = (last - first).days + 1
            step = max(1, min(days, round(days * chunk_events / max(total, 1))))
            for offset in range(0, days, step):
                lo = first + timedelta(days=offset)
                hi = min(lo + timedelta(days=step), last + timedelta(days=1))
                params = {"lo": _midnight(lo), "hi": _midnight(hi)}
                steps.run("activity", q.INSERT_ACTIVITY.format(events=_EVENTS_IN_DAYS), params)
                if indexes is not None:  # each run of days is new rows: nothing to merge into
                    steps.run("searches", q.INSERT_SEARCHES.format(events=_EVENTS_IN_DAYS), params)
                    steps.run("first_events", q.STAGE_FIRST_EVENTS.format(events=_EVENTS_IN_DAYS), params)
                else:  # from `since` on: the earlier first days kept win where they are earlier
                    steps.run("searches", q.ADD_SEARCHES.format(events=_EVENTS_IN_DAYS), params)
                    steps.run("first_events", q.ADD_FIRST_EVENTS.format(events=_EVENTS_IN_DAYS), params)
                result.chunks += 1
                if progress:
                    progress((hi - lo).days)
        if indexes is not None:
            indexes.restore("tracking_activityday")
            indexes.restore("tracking_searchday")
            indexes.restore("tracking_activitytail")
            steps.run("first_events", q.FIRST_EVENTS_FROM_STAGE)
            steps.execute("DROP TABLE rollup_first_events")
            indexes.restore("tracking_activityfirstevent")
        month = date(1, 1, 1) if since is None else since.replace(day=1)
        steps.execute("DELETE FROM tracking_searchmonth WHERE month >= %s", [month])
        steps.run("searches", q.SEARCH_MONTHS, {"since": month})
        _derive_all(steps, indexes=indexes)
        steps.execute("SELECT count(*), COALESCE(sum(events), 0) FROM tracking_dailyindicator")
        result.days, result.events = steps.fetchone()
        steps.execute("SELECT COALESCE(max(id), 0) FROM tracking_event")
        (highest,) = steps.fetchone()
        state.events_folded = result.events
        state.last_event_id = highest
        state.updated_at = timezone.now()
        state.save()
        result.last_event_id = highest
    return result


def _midnight(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), tzinfo=UTC)


def _day_span(cursor, *, since: date | None) -> tuple[date | None, date | None, int]:
    """First and last UTC day of the events to read, and how many there are (the chunk size)."""
    cursor.execute(_DAY_SPAN, {"since": _midnight(since) if since else None})
    return cursor.fetchone()


def days_to_rebuild(*, since: date | None = None) -> int:
    """How many days a rebuild reads (for the progress bar)."""
    with connection.cursor() as cursor:
        first, last, _count = _day_span(cursor, since=since)
    return 0 if first is None else (last - first).days + 1
