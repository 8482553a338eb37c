"""Shipping stored events to ClickHouse, exactly once, and the retention of raw events.

- Ingestion writes an outbox row (`ShippingBacklog`: a run of event ids) in the transaction that
  stores the events, when ClickHouse is on. That is all a request does: no request, and none of
  the money paths, waits on ClickHouse.
- `ship_events` (beat, every minute; one run at a time, by an advisory lock) claims outbox rows
  for a batch of `OPSLOOP_SHIPPING_BATCH_EVENTS` events and commits the claim with the batch's id,
  reads the batch's events out of PostgreSQL with COPY (the derived columns worked out there),
  inserts them into ClickHouse with the batch's id as the insert's deduplication token, then
  deletes the rows. A run that fails or dies after the claim leaves the batch claimed; the next
  run inserts the very same batch under the same token first, and ClickHouse drops a block it
  has seen (ReplacingMergeTree on `event_id` merges away anything older than its window).
- A failed run leaves its reason on `ShippingState` (the admin page), a log line, and the backlog
  as it was; the task tries again with a backoff and beat keeps trying every minute.
- `delete_expired_events` (nightly) deletes raw events older than `OPSLOOP_EVENTS_RETENTION_DAYS`
  in batches, and with ClickHouse on only those no longer in the outbox (already shipped).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Sum
from django.utils import timezone
from psycopg import sql

from tracking.events_store import clickhouse_enabled, clickhouse_store
from tracking.ids import IdRun, runs_of
from tracking.models import STORED_AMOUNT_PATTERN, ShippingBacklog, ShippingState

logger = logging.getLogger(__name__)

STATE = "clickhouse"
# One shipping run at a time (a session-level advisory lock of this key).
_LOCK_KEY = 0x6F70_736C_7368  # "opslsh"
_MAX_ROWS = 5_000  # outbox rows a batch takes at most

_QUEUE = (
    "INSERT INTO tracking_shippingbacklog (first_event_id, last_event_id, created_at) "
    "SELECT a, b, now() FROM unnest(%s::bigint[], %s::bigint[]) AS u(a, b)"
)

# The columns of `tracking.events_store.clickhouse.COLUMNS`, with what the rollups derive from an
# event worked out by the same expressions (`indicators.rollups.statements`): the person key, the
# order amount (0 where it is not a decimal string), the normalised search and its zero results.
_EXPORT = """
COPY (
    SELECT e.id, e.event_id, e.name, e.kind, e.timestamp, e.received_at, COALESCE(e.user_id, e.anonymous_id),
           e.user_id, e.anonymous_id,
           CASE WHEN e.name IN ('order_paid', 'order_refunded') AND e.properties->>'amount' ~ {pattern}
                THEN round((e.properties->>'amount')::numeric, 2) ELSE 0 END,
           CASE WHEN e.name = 'search' AND btrim(COALESCE(e.properties->>'query', '')) <> ''
                THEN left(lower(btrim(e.properties->>'query')), 200) ELSE '' END,
           CASE WHEN e.name = 'search' AND CASE jsonb_typeof(e.properties->'results')
                    WHEN 'number' THEN (e.properties->>'results')::numeric = 0
                    WHEN 'array' THEN jsonb_array_length(e.properties->'results') = 0 ELSE false END
                THEN 1 ELSE 0 END,
           e.utm_source, e.utm_medium, e.utm_campaign, e.device, e.os, e.locale, e.path, e.properties::text
    FROM unnest({firsts}::bigint[], {lasts}::bigint[]) AS r(first_id, last_id)
    CROSS JOIN LATERAL (
        SELECT * FROM tracking_event e WHERE e.id BETWEEN r.first_id AND r.last_id OFFSET 0
    ) e
    ORDER BY e.id
) TO STDOUT
"""


_TAKE = (
    "SELECT id, first_event_id, last_event_id FROM tracking_shippingbacklog WHERE batch IS NULL "
    "ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED"
)
_CUT = "UPDATE tracking_shippingbacklog SET first_event_id = %s WHERE id = %s"
_QUEUE_CLAIMED = (
    "INSERT INTO tracking_shippingbacklog (first_event_id, last_event_id, batch, created_at) VALUES (%s, %s, %s, now())"
)
_MARK = "UPDATE tracking_shippingbacklog SET batch = %s WHERE id = ANY(%s)"


class ShippingFailed(Exception):
    """ClickHouse could not take a batch; the reason is on `ShippingState` too."""


@dataclass
class ShippingResult:
    batches: int = 0
    events: int = 0
    busy: bool = False  # another run held the lock
    seconds: float = 0.0


def queue_for_shipping(ids: Sequence[int]) -> None:
    """Queue just-stored events for ClickHouse, in the transaction that stores them (nothing
    when ClickHouse is off): one outbox row per run of consecutive ids."""
    if not clickhouse_enabled():
        return
    runs = runs_of(ids)
    if runs:
        with connection.cursor() as cursor:
            cursor.execute(_QUEUE, [[a for a, _b in runs], [b for _a, b in runs]])


def pending_events() -> int:
    """Event ids in the outbox (ids a batch reserved but did not use count too)."""
    total = ShippingBacklog.objects.aggregate(n=Sum(F("last_event_id") - F("first_event_id") + 1))["n"]
    return int(total or 0)


def oldest_waiting() -> datetime | None:
    """When the oldest event still waiting was queued (how far behind ClickHouse is)."""
    row = ShippingBacklog.objects.order_by("id").only("created_at").first()
    return None if row is None else row.created_at


def state() -> ShippingState:
    return ShippingState.objects.get_or_create(name=STATE)[0]


def _claim(budget: int) -> tuple[uuid.UUID, list[IdRun]] | None:
    """The batch to ship: one claimed by an earlier run that did not finish (first, under its own
    token), else new outbox rows of about `budget` event ids, claimed and committed now. A row
    that would overshoot the budget is cut: its first ids are claimed as a row of their own."""
    with transaction.atomic():
        left_over = ShippingBacklog.objects.filter(batch__isnull=False).order_by("id").first()
        if left_over is not None:
            rows = ShippingBacklog.objects.filter(batch=left_over.batch).order_by("first_event_id")
            return left_over.batch, [(r.first_event_id, r.last_event_id) for r in rows]
        batch = uuid.uuid4()
        runs: list[IdRun] = []
        taken: list[int] = []
        total = 0
        with connection.cursor() as cursor:
            cursor.execute(_TAKE, [_MAX_ROWS])
            for row_id, first, last in cursor.fetchall():
                room = budget - total
                if room <= 0:
                    break
                if last - first + 1 <= room:
                    taken.append(row_id)
                    runs.append((first, last))
                    total += last - first + 1
                else:  # cut: the first ids go now as a row of their own, the row keeps the rest
                    upto = first + room - 1
                    cursor.execute(_CUT, [upto + 1, row_id])
                    cursor.execute(_QUEUE_CLAIMED, [first, upto, batch])
                    runs.append((first, upto))
                    total += room
            cursor.execute(_MARK, [batch, taken])
        return (batch, runs) if runs else None


def _export(runs: list[IdRun]) -> tuple[bytes, int]:
    """The batch's events as ClickHouse reads TabSeparated (PostgreSQL's COPY text is that)."""
    # The runs as two arrays, each a range probe of the primary key (LATERAL: the planner would
    # otherwise join thousands of runs, as a bulk load's one-id runs are, by scanning the table;
    # OFFSET 0 keeps it from flattening the subquery into such a join).
    statement = sql.SQL(_EXPORT).format(
        pattern=sql.Literal(STORED_AMOUNT_PATTERN),
        firsts=sql.Literal("{" + ",".join(str(int(a)) for a, _b in runs) + "}"),
        lasts=sql.Literal("{" + ",".join(str(int(b)) for _a, b in runs) + "}"),
    )
    chunks: list[bytes] = []
    with connection.cursor() as cursor, cursor.copy(statement) as copy:
        for chunk in copy:
            chunks.append(bytes(chunk))
    data = b"".join(chunks)
    return data, data.count(b"\n")


def _failed(reason: str) -> None:
    now = timezone.now()
    ShippingState.objects.filter(name=STATE).update(
        last_run_at=now, last_error=reason[:2000], last_error_at=now, failures=F("failures") + 1
    )


def ship_events(*, batch_events: int | None = None, max_batches: int | None = None) -> ShippingResult:
    """Ship the outbox to ClickHouse, a batch at a time, until it is empty (or `max_batches`).
    Raises `ShippingFailed` (after recording why) when ClickHouse refuses or cannot be reached."""
    budget = batch_events or settings.OPSLOOP_SHIPPING_BATCH_EVENTS
    result = ShippingResult()
    started = time.monotonic()
    state()
    store = clickhouse_store()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [_LOCK_KEY])
        if not cursor.fetchone()[0]:
            result.busy = True
            return result
    try:
        with store.held():
            while max_batches is None or result.batches < max_batches:
                claimed = _claim(budget)
                if claimed is None:
                    break
                batch, runs = claimed
                data, events = _export(runs)
                try:
                    store.insert_batch(data, token=str(batch))
                except Exception as error:
                    reason = f"{type(error).__name__}: {error}"
                    _failed(reason)
                    logger.error("shipping to ClickHouse failed, %d events wait: %s", pending_events(), reason)
                    raise ShippingFailed(reason) from error
                with transaction.atomic():
                    ShippingBacklog.objects.filter(batch=batch).delete()
                    ShippingState.objects.filter(name=STATE).update(
                        shipped_events=F("shipped_events") + events, shipped_batches=F("shipped_batches") + 1
                    )
                result.batches += 1
                result.events += events
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [_LOCK_KEY])
    now = timezone.now()
    ShippingState.objects.filter(name=STATE).update(last_run_at=now, last_success_at=now, failures=0, last_error="")
    result.seconds = time.monotonic() - started
    if result.events:
        logger.info(
            "shipped %d events to ClickHouse in %d batches (%.0f events/s)",
            result.events,
            result.batches,
            result.events / max(result.seconds, 1e-9),
        )
    return result


_EXPIRED = """
WITH doomed AS (
    SELECT e.id FROM tracking_event e
    WHERE e.timestamp < %(before)s AND e.received_at < %(before)s
      AND NOT EXISTS (SELECT 1 FROM tracking_shippingbacklog b WHERE e.id BETWEEN b.first_event_id AND b.last_event_id)
    LIMIT %(batch)s
)
DELETE FROM tracking_event WHERE id IN (SELECT id FROM doomed)
"""


def delete_expired_events(*, now: datetime | None = None, batch_size: int = 50_000) -> int:
    """Delete raw events past the retention window (`OPSLOOP_EVENTS_RETENTION_DAYS`; none when it
    is unset), a batch per transaction, keeping every event still waiting to be shipped. The
    rollups and ClickHouse keep what was made of them."""
    days = settings.OPSLOOP_EVENTS_RETENTION_DAYS
    if not days:
        return 0
    before = (now or timezone.now()) - timedelta(days=days)
    deleted = 0
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(_EXPIRED, {"before": before, "batch": batch_size})
            count = cursor.rowcount
        deleted += count
        if count < batch_size:
            break
    ShippingState.objects.update_or_create(name=STATE, defaults={"last_retention_at": timezone.now()})
    ShippingState.objects.filter(name=STATE).update(deleted_events=F("deleted_events") + deleted)
    if deleted:
        logger.info("deleted %d raw events received before %s (retention %d days)", deleted, before, days)
    return deleted
