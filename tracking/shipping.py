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
- Each run ends by writing ClickHouse's finished rows of the days closed since the last run (the
  daily series read them: `ClickHouseEventsStore.finish_days`), under the same lock, so that no
  insert runs meanwhile.
- A failed run leaves its reason on `ShippingState` (the admin page), a log line, and the backlog
  as it was; the task tries again with a backoff and beat keeps trying every minute.
- `ship_history` (`manage.py ship_history`) queues what was stored while shipping was off; until
  it has completed once, ClickHouse answers no page (`ensure_history_loaded`).
- `delete_expired_events` (nightly) deletes raw events older than `OPSLOOP_EVENTS_RETENTION_DAYS`
  in batches, only with ClickHouse on and its history loaded, and only events ClickHouse holds,
  that the rollups and profiles have folded, and whose names are not kept (docs/deploy.md).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NoReturn

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Sum
from django.db.models.functions import Coalesce, Greatest
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
# order amount (0 where it is not a decimal string), the normalised search and its zero results,
# and the hash of the person key that draws the churn page's sample (`hashtext`).
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
           e.utm_source, e.utm_medium, e.utm_campaign, e.device, e.os, e.locale, e.path, e.properties::text,
           hashtext(COALESCE(e.user_id, e.anonymous_id))
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


def _left_over() -> tuple[uuid.UUID, list[IdRun]] | None:
    """A batch an earlier run claimed and did not finish (its insert may have reached ClickHouse)."""
    left_over = ShippingBacklog.objects.filter(batch__isnull=False).order_by("id").first()
    if left_over is None:
        return None
    rows = ShippingBacklog.objects.filter(batch=left_over.batch).order_by("first_event_id")
    return left_over.batch, [(r.first_event_id, r.last_event_id) for r in rows]


def _claim(budget: int) -> tuple[uuid.UUID, list[IdRun]] | None:
    """The batch to ship: one claimed by an earlier run that did not finish (first, under its own
    token), else new outbox rows of about `budget` event ids, claimed and committed now. A row
    that would overshoot the budget is cut: its first ids are claimed as a row of their own."""
    with transaction.atomic():
        left_over = _left_over()
        if left_over is not None:
            return left_over
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


def _fail_run(reason: str, error: Exception) -> NoReturn:
    _failed(reason)
    logger.error("shipping to ClickHouse failed, %d events wait: %s", pending_events(), reason)
    raise ShippingFailed(reason) from error


def _ship_batch(store, batch: uuid.UUID, runs: list[IdRun], result: ShippingResult) -> None:
    """Insert a claimed batch under its token, then clear it from the outbox."""
    data, events = _export(runs)
    try:
        store.insert_batch(data, token=str(batch))
    except Exception as error:
        _fail_run(f"{type(error).__name__}: {error}", error)
    with transaction.atomic():
        ShippingBacklog.objects.filter(batch=batch).delete()
        ShippingState.objects.filter(name=STATE).update(
            shipped_events=F("shipped_events") + events, shipped_batches=F("shipped_batches") + 1
        )
    result.batches += 1
    result.events += events


def _finish_days(store) -> None:
    """ClickHouse's finished rows of the days closed since the last run (under the shipping lock:
    no insert meanwhile), and again, now and then, of those a late event has touched."""
    through = timezone.now().date() - timedelta(days=1)  # UTC: yesterday is the last closed day
    try:
        days = store.finish_days(
            through=through,
            refinish_after=timedelta(minutes=settings.OPSLOOP_CLICKHOUSE_REFINISH_MINUTES),
            touched_grace=timedelta(seconds=settings.OPSLOOP_CLICKHOUSE_TOUCHED_GRACE_SECONDS),
        )
    except Exception as error:
        _fail_run(f"{type(error).__name__}: finishing the days: {error}", error)
    if days:
        logger.info("ClickHouse: %d finished days written, through %s", days, through)


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
        try:
            building = not store.aggregates_ready()
        except Exception as error:
            _fail_run(f"{type(error).__name__}: {error}", error)
        if building:
            # The batch an earlier run left claimed may be in the events table already: it is
            # finished first, while no view exists, so that the build counts it once (sent again
            # after the build, the views would count it a second time). Under the lock, so that
            # no insert runs while the aggregates are filled from the events.
            left_over = _left_over()
            if left_over is not None:
                _ship_batch(store, *left_over, result)
            try:
                if store.ensure_aggregates():
                    logger.info("ClickHouse's daily aggregates were built from the events it holds")
            except Exception as error:
                _fail_run(f"{type(error).__name__}: building the daily aggregates: {error}", error)
        # The engine is opened for each insert only, not across the run: chdb's directory takes
        # one process at a time, and a page waits on it while the next batch is exported.
        while max_batches is None or result.batches < max_batches:
            claimed = _claim(budget)
            if claimed is None:
                break
            _ship_batch(store, *claimed, result)
        _note_history_loaded()
        _finish_days(store)
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


# --- the history backfill -------------------------------------------------------------------------

_HISTORY_LOCK_KEY = 0x6F70_736C_6873  # "oplshs": one backfill at a time


class HistoryRefused(Exception):
    """The backfill cannot run as things are (ClickHouse off); the message says why."""


@dataclass
class HistoryResult:
    queued: int = 0  # event ids queued into the outbox
    through: int = 0  # the backfill covered every id up to this one
    busy: bool = False


def _covered(table: str, first: int, last: int) -> list[IdRun]:
    """The runs of a backlog table (an outbox of non-overlapping id runs) that touch
    `first`..`last`: one read of the few rows there, not a probe per event."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT first_event_id, last_event_id FROM {table} WHERE last_event_id >= %s AND first_event_id <= %s",
            [first, last],
        )
        return [(int(a), int(b)) for a, b in cursor.fetchall()]


def _inside(event_id: int, runs: list[IdRun]) -> bool:
    return any(a <= event_id <= b for a, b in runs)


_WAITING_COUNTED = 10_000_000  # past this many, the page's count stops (an index scan per read)


def history_waiting() -> int:
    """How many stored events ClickHouse still waits for before it answers: those the backfill
    has not looked at yet (some of them may be in ClickHouse already) and the outbox."""
    current = state()
    unreached = 0
    if current.history_queued_at is None:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM (SELECT 1 FROM tracking_event WHERE id > %s LIMIT %s) AS e",
                [current.history_through or 0, _WAITING_COUNTED],
            )
            unreached = int(cursor.fetchone()[0])
    return unreached + pending_events()


def ensure_history_loaded() -> None:
    """Refuse (HistoryLoading, a 503 with the reason) until the backfill has queued every event
    stored before shipping was on and all of it is shipped: until then ClickHouse's answers
    would silently miss them."""
    from tracking.events_store.clickhouse import HistoryLoading

    if state().history_loaded_at is None:
        waiting = history_waiting()
        raise HistoryLoading(f"ClickHouse is still loading history: {waiting} events wait.", waiting_events=waiting)


def _note_history_loaded() -> None:
    """After a shipping run: the history is loaded once it is all queued and none of it waits."""
    current = state()
    if current.history_queued_at is None or current.history_loaded_at is not None:
        return
    if not ShippingBacklog.objects.filter(first_event_id__lte=current.history_through or 0).exists():
        ShippingState.objects.filter(name=STATE, history_loaded_at__isnull=True).update(
            history_loaded_at=timezone.now()
        )
        logger.info("ClickHouse has the history: every event through id %s is shipped", current.history_through)


def ship_history(
    *,
    chunk: int = 100_000,
    from_start: bool = False,
    progress: Callable[[int, int, int], None] | None = None,
) -> HistoryResult:
    """Queue into the outbox every stored event ClickHouse does not hold and the outbox does not
    hold already, in pages of `chunk` stored ids, committing the mark (`history_through`) after
    each: a run that stops resumes after the last page done (`from_start`: look at every stored
    event again, which finds the holes a web process still on the old setting left). Only missing
    ids are queued, so a read without FINAL never counts an event twice. `progress(through, top,
    queued)` is called after each page."""
    if chunk < 1:
        raise ValueError("chunk must be at least 1")
    if not clickhouse_enabled():
        raise HistoryRefused("ClickHouse is off (OPSLOOP_EVENTS_STORE): events stored now would not be queued.")
    result = HistoryResult()
    store = clickhouse_store()
    current = state()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [_HISTORY_LOCK_KEY])
        if not cursor.fetchone()[0]:
            result.busy = True
            return result
    try:
        with connection.cursor() as cursor:
            # Every process stores with ClickHouse on from here: what commits after this top is queued by
            # its own transaction (an old process's late commit below it is what `from_start` finds).
            cursor.execute("SELECT COALESCE(max(id), 0) FROM tracking_event")
            top = int(cursor.fetchone()[0])
        after = 0 if from_start else int(current.history_through or 0)
        while after < top:
            # Pages of `chunk` stored ids, not id ranges: ids are reserved a block per batch, so a
            # store of small batches has far more ids than events, and walking empty ranges would
            # cost a round trip per range (hours at 100M events).
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT id FROM tracking_event WHERE id > %s AND id <= %s ORDER BY id LIMIT %s", [after, top, chunk]
                )
                stored = [int(row[0]) for row in cursor.fetchall()]
            last = stored[-1] if len(stored) == chunk else top
            if stored:
                shipped = store.ids_held(stored)
                with transaction.atomic():
                    # The outbox rows of the range, locked: a shipping run cannot clear one between
                    # this look and the queueing (it would look unqueued and unshipped).
                    with connection.cursor() as cursor:
                        cursor.execute(
                            "SELECT first_event_id, last_event_id FROM tracking_shippingbacklog "
                            "WHERE last_event_id > %s AND first_event_id <= %s FOR UPDATE",
                            [after, last],
                        )
                        queued = [(int(a), int(b)) for a, b in cursor.fetchall()]
                    missing = [i for i in stored if i not in shipped and not _inside(i, queued)]
                    if missing:
                        runs = runs_of(missing)
                        with connection.cursor() as cursor:
                            cursor.execute(_QUEUE, [[a for a, _b in runs], [b for _a, b in runs]])
                    ShippingState.objects.filter(name=STATE).update(
                        history_through=Greatest(F("history_through"), last)
                    )
                result.queued += len(missing)
            else:
                ShippingState.objects.filter(name=STATE).update(history_through=Greatest(F("history_through"), last))
            after = last
            if progress is not None:
                progress(last, top, result.queued)
        now = timezone.now()
        ShippingState.objects.filter(name=STATE).update(
            history_through=Greatest(Coalesce(F("history_through"), 0), top), history_queued_at=now
        )
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [_HISTORY_LOCK_KEY])
    result.through = top
    _note_history_loaded()
    logger.info("history backfill queued %d events for ClickHouse (ids through %d)", result.queued, top)
    return result


# --- retention --------------------------------------------------------------------------------------

# Outboxes of event ids whose work in PostgreSQL is not done yet: the rollups' fold
# (indicators) and profiles' first/last seen. Named as tables: tracking sits below those apps.
_UNFOLDED = ("tracking_rollupbacklog", "profiles_seenbacklog")

_EXPIRED = """
SELECT id FROM tracking_event
WHERE id > %(after)s AND timestamp < %(before)s AND received_at < %(before)s AND NOT (name = ANY(%(kept)s))
ORDER BY id LIMIT %(batch)s
"""


def retention_refusal() -> str | None:
    """Why retention may not delete raw events now (None: it may)."""
    if not settings.OPSLOOP_EVENTS_RETENTION_DAYS:
        return "OPSLOOP_EVENTS_RETENTION_DAYS is unset"
    if not clickhouse_enabled():
        return "ClickHouse is off: the raw events are the only copy"
    if state().history_loaded_at is None:
        return "ClickHouse has not loaded the history yet (manage.py ship_history)"
    return None


def delete_expired_events(*, now: datetime | None = None, batch_size: int = 50_000) -> int:
    """Delete raw events past the retention window (`OPSLOOP_EVENTS_RETENTION_DAYS`), a batch per
    transaction, and only those ClickHouse holds (asked, not inferred from the outbox: an event
    an old process stored without queueing is in neither), that the rollups and profiles have
    folded, and whose name `OPSLOOP_EVENTS_KEPT_NAMES` does not keep for ever. Nothing while
    ClickHouse is off or its history is not loaded."""
    refusal = retention_refusal()
    if refusal is not None:
        if settings.OPSLOOP_EVENTS_RETENTION_DAYS:
            logger.warning("retention deletes nothing: %s", refusal)
        return 0
    days = settings.OPSLOOP_EVENTS_RETENTION_DAYS
    before = (now or timezone.now()) - timedelta(days=days)
    kept = list(settings.OPSLOOP_EVENTS_KEPT_NAMES)
    store = clickhouse_store()
    deleted = 0
    after = 0
    while True:
        with connection.cursor() as cursor:
            cursor.execute(_EXPIRED, {"after": after, "before": before, "kept": kept, "batch": batch_size})
            candidates = [int(row[0]) for row in cursor.fetchall()]
        if not candidates:
            break
        first, last = candidates[0], candidates[-1]
        shipped = store.ids_held(candidates)
        with transaction.atomic():
            unfolded = [run for table in _UNFOLDED for run in _covered(table, first, last)]
            doomed = [i for i in candidates if i in shipped and not _inside(i, unfolded)]
            if doomed:
                with connection.cursor() as cursor:
                    cursor.execute("DELETE FROM tracking_event WHERE id = ANY(%s)", [doomed])
                    deleted += cursor.rowcount
        after = last
        if len(candidates) < batch_size:
            break
    ShippingState.objects.filter(name=STATE).update(
        last_retention_at=timezone.now(), deleted_events=F("deleted_events") + deleted
    )
    if deleted:
        logger.info("deleted %d raw events received before %s (retention %d days)", deleted, before, days)
    return deleted
