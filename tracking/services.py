"""Writes of the tracking layer: storing batches of events, set-based and exactly once."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.utils import timezone
from psycopg import sql as pgsql
from psycopg.errors import DeadlockDetected, UniqueViolation

from tracking.hooks import StoredEvent, notify_ingested
from tracking.shipping import queue_for_shipping
from tracking.validation import CleanEvent, max_future_skew, validate_event

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rejection:
    index: int
    errors: dict[str, list[str]]


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    stored: list[StoredEvent] = field(default_factory=list)


COLUMNS = (
    "event_id, name, kind, timestamp, received_at, user_id, anonymous_id, properties, context_extra, "
    "url, path, referrer, utm_source, utm_medium, utm_campaign, device, os, ip, locale"
)

# The fallback, and the judge when requests race: one statement for the whole batch, each column
# travelling as one array that `unnest` turns back into rows. `ON CONFLICT DO NOTHING` leaves
# duplicates to the unique `event_id` index: a second writer of the same id waits for the first
# to commit and then skips the row.
INSERT_BATCH = f"""
INSERT INTO tracking_event (id, {COLUMNS})
SELECT u.id, u.event_id, u.name, u.kind, u.timestamp, %s, u.user_id, u.anonymous_id,
       u.properties::jsonb, u.context_extra::jsonb, u.url, u.path, u.referrer, u.utm_source,
       u.utm_medium, u.utm_campaign, u.device, u.os, u.ip::inet, u.locale
FROM unnest(
    %s::bigint[], %s::uuid[], %s::text[], %s::text[], %s::timestamptz[], %s::text[], %s::text[], %s::text[],
    %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],
    %s::text[], %s::text[], %s::text[], %s::text[]
) AS u(id, event_id, name, kind, timestamp, user_id, anonymous_id, properties, context_extra,
       url, path, referrer, utm_source, utm_medium, utm_campaign, device, os, ip, locale)
ORDER BY u.event_id
ON CONFLICT (event_id) DO NOTHING
RETURNING id, event_id
"""
# The ids travel as one comma-joined string: canonical UUIDs hold no comma, and one text parameter
# is much cheaper for the driver to quote than a thousand-element array.
ALREADY_STORED = "SELECT event_id::text FROM tracking_event WHERE event_id = ANY(string_to_array(%s, ',')::uuid[])"
# Ids are reserved a block at a time: the sequence steps by a block (migration 0008), and one
# `nextval` is the first id of a block no other caller gets, so a batch's ids are consecutive
# even while concurrent batches draw too (one backlog run per batch, not a run per interleaving).
# The step is read with the values, so the reservation is right whatever the sequence's step is.
# The sequence is named once as a constant: `pg_get_serial_sequence` in the select list would
# look it up in the catalog once per row.
RESERVE_IDS = """
SELECT nextval(%(seq)s::regclass), s.seqincrement
FROM pg_sequence s, generate_series(1, ceil(%(count)s::numeric / s.seqincrement)::int)
WHERE s.seqrelid = %(seq)s::regclass
"""
_id_sequence: str | None = None
# The COPY runs under a savepoint, so that a refused COPY (an id stored before) undoes only
# itself. It is set in the round trip that reserves the ids, and never released: a savepoint
# ends with its transaction, and releasing it would cost one more round trip per batch. Taken
# again, the name refers to the newest one, which is the one `ROLLBACK TO` returns to.
SAVEPOINT = "tracking_copy"


def _sequence(cursor: Any) -> str:
    global _id_sequence
    if _id_sequence is None:
        cursor.execute("SELECT pg_get_serial_sequence('tracking_event', 'id')")
        _id_sequence = cursor.fetchone()[0]
    return _id_sequence


def _ids_of(rows: list[tuple[int, int]], count: int) -> list[int]:
    ids: list[int] = []
    for first, step in rows:
        ids.extend(range(first, first + min(step, count - len(ids))))
    return ids


def _reserve_ids(cursor: Any, count: int) -> list[int]:
    """`count` ids no other writer uses: consecutive in runs of a block each."""
    cursor.execute(RESERVE_IDS, {"seq": _sequence(cursor), "count": count})
    return _ids_of(cursor.fetchall(), count)


def _savepoint_and_reserve_ids(cursor: Any, count: int) -> list[int]:
    """The savepoint and the ids in one round trip: two statements in one simple query (the
    values are written in as literals, which such a query needs)."""
    query = pgsql.SQL("SAVEPOINT {}; ").format(pgsql.Identifier(SAVEPOINT)) + pgsql.SQL(
        RESERVE_IDS.replace("%(seq)s", "{seq}").replace("%(count)s", "{count}")
    ).format(seq=pgsql.Literal(_sequence(cursor)), count=pgsql.Literal(int(count)))
    cursor.execute(query)
    cursor.nextset()  # the SAVEPOINT's result comes first
    return _ids_of(cursor.fetchall(), count)


def reserve_event_ids(*, count: int) -> list[int]:
    """Ids for `count` events written by other means than `store_clean_events` (test data,
    loaders), consecutive as a stored batch's are."""
    with connection.cursor() as cursor:
        return _reserve_ids(cursor, count)


def _columns(events: Sequence[CleanEvent]) -> list[list[Any]]:
    return [
        [e.event_id for e in events],
        [e.name for e in events],
        [e.kind for e in events],
        [e.timestamp for e in events],
        [e.user_id for e in events],
        [e.anonymous_id for e in events],
        [e.properties_json for e in events],
        [e.context_extra_json for e in events],
        [e.url for e in events],
        [e.path for e in events],
        [e.referrer for e in events],
        [e.utm_source for e in events],
        [e.utm_medium for e in events],
        [e.utm_campaign for e in events],
        [e.device for e in events],
        [e.os for e in events],
        [e.ip for e in events],
        [e.locale for e in events],
    ]


def _row(pk: int, e: CleanEvent, received_at: str) -> tuple:
    # The times travel as ISO 8601 text with their offset, which PostgreSQL reads whatever its
    # settings: `isoformat` writes one in a fraction of what the driver's datetime dumper costs
    # (and `received_at`, the same for the whole batch, is written once).
    return (
        pk, e.event_id, e.name, e.kind, e.timestamp.isoformat(), received_at, e.user_id, e.anonymous_id,
        e.properties_json, e.context_extra_json, e.url, e.path, e.referrer, e.utm_source, e.utm_medium,
        e.utm_campaign, e.device, e.os, e.ip, e.locale,
    )  # fmt: skip


def _copy(cursor: Any, batch: list[CleanEvent], received_at: datetime) -> list[tuple[int, str]] | None:
    """COPY `batch` with ids reserved from the sequence (COPY cannot return them), under the
    savepoint; None when the unique index refused one of its ids (stored before, or by a
    concurrent request in the meantime) and the savepoint undid the whole COPY."""
    ids = _savepoint_and_reserve_ids(cursor, len(batch))
    received = received_at.isoformat()
    try:
        with cursor.copy(f"COPY tracking_event (id, {COLUMNS}) FROM STDIN") as copy:
            write = copy.write_row
            for pk, event in zip(ids, batch, strict=True):
                write(_row(pk, event, received))
    except (UniqueViolation, DeadlockDetected):
        cursor.execute(pgsql.SQL("ROLLBACK TO SAVEPOINT {}").format(pgsql.Identifier(SAVEPOINT)))
        return None
    return [(pk, e.event_id) for pk, e in zip(ids, batch, strict=True)]


def _copy_new(batch: list[CleanEvent], received_at: datetime) -> list[tuple[int, str]] | None:
    """The fast path: COPY the batch straight away, the unique index being the check for ids
    already stored (most batches are new, and the COPY probes that index anyway, so a lookup
    beforehand would pay for it twice). When it refuses one, leave out the ids already stored and
    COPY the rest; None when a concurrent request stored one of those in the meantime, and the
    caller falls back to the insert that skips conflicts. COPY runs through psycopg's C row
    formatting, several times cheaper than binding 19 arrays."""
    raw = connection.connection
    with raw.cursor() as cursor:
        inserted = _copy(cursor, batch, received_at)
        if inserted is not None:
            return inserted
        # A retried or partly repeated batch: the failed COPY cost about one more COPY.
        cursor.execute(ALREADY_STORED, [",".join(e.event_id for e in batch)])
        stored = {row[0] for row in cursor.fetchall()}
        fresh = [e for e in batch if e.event_id not in stored]
        if not fresh:
            return []
        return _copy(cursor, fresh, received_at)


def _insert_skipping_conflicts(batch: list[CleanEvent], received_at: datetime) -> list[tuple[int, str]]:
    with connection.cursor() as cursor:
        ids = _reserve_ids(cursor, len(batch))  # a block, as the COPY's: the skipped ones stay unused
        cursor.execute(INSERT_BATCH, [received_at, ids, *_columns(batch)])
        return [(pk, str(event_id)) for pk, event_id in cursor.fetchall()]


def store_clean_events(*, events: Sequence[CleanEvent], received_at: datetime) -> list[StoredEvent]:
    """Insert validated events that are not stored yet; return only those it stored. Runs inside
    the caller's transaction and tells the listeners of the layers above about them."""
    unique: dict[str, CleanEvent] = {}
    for event in events:
        unique.setdefault(event.event_id, event)  # the first of a repeated id wins
    if not unique:
        return []
    # Rows go in in event_id order, so two batches sharing ids take their index locks in the same
    # order and wait for each other instead of deadlocking.
    batch = sorted(unique.values(), key=lambda e: e.event_id)
    connection.ensure_connection()
    inserted = _copy_new(batch, received_at)
    if inserted is None:
        inserted = _insert_skipping_conflicts(batch, received_at)
    pk_of = {event_id: pk for pk, event_id in inserted}
    stored = []
    for event_id, event in unique.items():  # the listeners see the batch's own order
        pk = pk_of.get(event_id)
        if pk is None:
            continue
        # Positional: a named tuple built with keywords costs twice as much, once per event.
        stored.append(
            StoredEvent(
                pk, event_id, event.name, event.kind, event.timestamp, event.user_id, event.anonymous_id,
                event.properties,
            )
        )  # fmt: skip
    queue_for_shipping([pk for pk, _event_id in inserted])
    notify_ingested(stored)
    return stored


def ingest_events(*, events: Sequence[Any], now: datetime | None = None) -> IngestResult:
    """Validate a batch and store its valid events once each, in one transaction.

    Invalid events are reported by their position and do not stop the others; an event whose
    `event_id` is already stored (or repeated earlier in the batch) counts as a duplicate.
    """
    now = now or timezone.now()
    result = IngestResult()
    valid: list[CleanEvent] = []
    latest = now + max_future_skew()
    for index, raw in enumerate(events):
        clean, errors = validate_event(raw, now=now, latest=latest)
        if clean is None:
            result.rejected.append(Rejection(index=index, errors=errors))
        else:
            valid.append(clean)
    if valid:
        with transaction.atomic():
            result.stored = store_clean_events(events=valid, received_at=now)
    result.accepted = len(result.stored)
    result.duplicates = len(valid) - result.accepted
    if result.rejected:
        # An integration that sends bad events usually sends many: one line per batch is enough
        # to notice it in the logs, the reply has every reason.
        first = result.rejected[0]
        logger.warning(
            "rejected %d of %d events; first at index %d: %s",
            len(result.rejected),
            len(events),
            first.index,
            first.errors,
        )
    return result
