"""The events store on ClickHouse: a server (or one shard: docs/deploy.md) through `clickhouse-connect`
(`OPSLOOP_CLICKHOUSE_URL=http://...`), or the embedded engine `chdb` (`chdb://<path>`).

PostgreSQL answers the indicator pages from rollup tables that a fold keeps up to date, because
its scans of raw events grow with the table. ClickHouse is built to aggregate raw columns (a
column store, vectorised), so the analyses over sequences and arbitrary windows (funnels, churn,
searches, the anomaly reads) scan the shipped events themselves. The pages the rollups cover read
two aggregates that materialised views keep as each batch is inserted: a row per person and day,
and a row per person (first day, first order day). They hold no definition of their own: the
reads apply the rollups' definitions to them, a late event counts the moment it is shipped, and
any window is exact. A ClickHouse that holds events from before the aggregates existed gets them
built by the next shipping run (`ensure_aggregates`); until then those pages answer 503. The
daily series and the retention tables read what is already closed from two more tables (the
rows of the finished days, the cells of the finished periods: `finish_days`), and compute from
the person-days only the days and periods after them.

The events arrive through `tracking.shipping` (an outbox in PostgreSQL); each row carries the
values the rollups derive from an event (its person key, order amount, normalised search), worked
out by PostgreSQL as it ships them, so both engines use the very same expressions.

chdb keeps its data in a directory that one process at a time may open (a second one is refused:
"Cannot lock file .../status"). A web process and a worker can share a path: each opens the
engine for one operation and closes it, and waits its turn while the other holds it (about 0.1 s
an opening). A busy deployment runs a ClickHouse server instead.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from config.errors import DomainError
from tracking.events_store.base import (
    DAILY_COLUMNS,
    ChurnRows,
    EventsStore,
    KeyActivity,
    PurchaseTotals,
    SearchTotals,
    SourceWindow,
)

# The columns shipped, in the order of `tracking.shipping.EXPORT` (TabSeparated, as PostgreSQL's
# COPY writes it).
COLUMNS = (
    "id",
    "event_id",
    "name",
    "kind",
    "timestamp",
    "received_at",
    "person",
    "user_id",
    "anonymous_id",
    "amount",
    "search_query",
    "search_zero",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "device",
    "os",
    "locale",
    "path",
    "properties",
    "person_hash",
)

# ReplacingMergeTree keyed on the event: a row shipped twice (a batch retried after its insert
# but before the outbox was cleared, once the deduplication window has passed) is merged away in
# the background; the insert's deduplication token (`non_replicated_deduplication_window`, the
# last 10,000 batches) drops a retried batch at once. Partitions by month keep a late event's
# duplicate in its original's partition (the same timestamp), where the merge can find it.
CREATE_EVENTS = """
CREATE TABLE IF NOT EXISTS {table} (
    id Int64,
    event_id UUID,
    name LowCardinality(String),
    kind LowCardinality(String),
    timestamp DateTime64(6, 'UTC'),
    received_at DateTime64(6, 'UTC'),
    person String,
    user_id Nullable(String),
    anonymous_id Nullable(String),
    amount Decimal(38, 2),
    search_query String,
    search_zero UInt8,
    utm_source LowCardinality(String),
    utm_medium LowCardinality(String),
    utm_campaign String,
    device LowCardinality(String),
    os LowCardinality(String),
    locale LowCardinality(String),
    path String,
    properties String,
    person_hash Int32
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(timestamp)
ORDER BY (name, toDate(timestamp), event_id)
SETTINGS non_replicated_deduplication_window = 10000
"""
logger = logging.getLogger(__name__)

TABLE = "opsloop_events"

# Daily aggregates, kept by materialised views as each batch is inserted, for the reads that
# PostgreSQL answers from its rollups: a row per person and day (what they did that day) and a
# row per person (their first day, their first order's day). A daily series or a cohort table
# then reads millions of person-days instead of every raw event. The tables merge rows of one key
# in the background; the reads sum or take the least over what is not merged yet.
PERSON_DAYS = "opsloop_person_days"
PEOPLE = "opsloop_people"
# A person without an order: the last day a ClickHouse `Date` holds, so that `min` keeps a real one.
NO_ORDER = "toDate('2149-06-06')"
CREATE_PERSON_DAYS = f"""
CREATE TABLE IF NOT EXISTS {PERSON_DAYS} (
    day Date,
    person String,
    events SimpleAggregateFunction(sum, UInt64),
    orders SimpleAggregateFunction(sum, UInt64),
    refunds SimpleAggregateFunction(sum, UInt64),
    paid SimpleAggregateFunction(sum, Decimal(38, 2)),
    refunded SimpleAggregateFunction(sum, Decimal(38, 2))
) ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (day, person)
SETTINGS non_replicated_deduplication_window = 10000
"""
CREATE_PEOPLE = f"""
CREATE TABLE IF NOT EXISTS {PEOPLE} (
    person String,
    first_day SimpleAggregateFunction(min, Date),
    first_order_day SimpleAggregateFunction(min, Date)
) ENGINE = AggregatingMergeTree
ORDER BY person
SETTINGS non_replicated_deduplication_window = 10000
"""
# `{final}`: the build reads the held events FINAL, so that a row shipped twice and not merged yet
# is counted once; the views see inserted blocks only.
PERSON_DAYS_OF_EVENTS = f"""
SELECT toDate(timestamp) AS day, person, count() AS events,
       countIf(name = 'order_paid') AS orders, countIf(name = 'order_refunded') AS refunds,
       sumIf(amount, name = 'order_paid') AS paid, sumIf(amount, name = 'order_refunded') AS refunded
FROM {TABLE} {{final}} {{where}} GROUP BY day, person
"""
PEOPLE_OF_EVENTS = f"""
SELECT person, min(toDate(timestamp)) AS first_day,
       min(if(name = 'order_paid', toDate(timestamp), {NO_ORDER})) AS first_order_day
FROM {TABLE} GROUP BY person
"""
# The views are made last, after their tables are filled from the events held: their presence
# says the aggregates are complete (`ensure_aggregates`).
AGGREGATE_VIEWS = {
    f"{PERSON_DAYS}_mv": (PERSON_DAYS, PERSON_DAYS_OF_EVENTS.format(final="", where="")),
    f"{PEOPLE}_mv": (PEOPLE, PEOPLE_OF_EVENTS),
}
# Finished days: a day's row of `daily_rows`, kept once the day has closed (`finish_days`, at the
# end of a shipping run), so that a series reads a row a day plus the days still open, instead
# of every person-day of its window. A day's values depend only on the events up to its end (its
# own; those before it for the trailing counts, new people and repeat buyers), so an event
# shipped for day D can change the rows from D on and none before: each insert leaves the least
# day it touched (a view), and a read trusts a finished row only before the least day touched
# since the rows were finished. Finishing runs under the shipping lock (no insert meanwhile) and
# then forgets the touched days it has written again (`TOUCHED_AT`).
DAILY = "opsloop_daily"
TOUCHED = "opsloop_touched_days"
_DAILY_MONEY = ("paid_amount", "refunded_amount", "revenue")
CREATE_DAILY = (
    f"CREATE TABLE IF NOT EXISTS {DAILY} (day Date, "
    + ", ".join(f"{c} Decimal(38, 2)" if c in _DAILY_MONEY else f"{c} UInt64" for c in DAILY_COLUMNS)
    + ", finished_at DateTime64(6, 'UTC')) ENGINE = ReplacingMergeTree(finished_at) ORDER BY day"
)
_DAILY_TEXT = ", ".join(f"toString({c})" for c in DAILY_COLUMNS)  # money exact, as text
# `at`: the server's moment of the insert. Finishing forgets only the touched days inserted before
# it read them, less a grace, so that an insert that ran meanwhile (were the lock ever lost) still
# leaves its days untrusted.
TOUCHED_AT = "at DateTime64(6, 'UTC') DEFAULT now64(6)"
CREATE_TOUCHED = f"CREATE TABLE IF NOT EXISTS {TOUCHED} (since Date, {TOUCHED_AT}) ENGINE = MergeTree ORDER BY since"
TOUCHED_VIEW = f"{TOUCHED}_mv"
TOUCHED_OF_EVENTS = f"SELECT min(toDate(timestamp)) AS since FROM {TABLE}"
# Days finished in one statement at most: a first finishing over a long history goes in steps,
# each written as it is done.
FINISH_STEP_DAYS = 92
# Finished retention cells, by the same rule: a cell (a cohort's people active in one period)
# depends only on the events up to its period's end, so the cells of every period (`unit`: its
# first day) that closed by the last finished day and before the least day touched are trusted.
# A recomputed period writes every cell of it up to `FINISHED_PERIODS` back, zeros included, so
# that a cell a late event emptied (its person moved to an earlier cohort) is replaced too. A
# table of more periods than that is computed whole from the person-days.
RETENTION = "opsloop_retention"
CREATE_RETENTION = f"""
CREATE TABLE IF NOT EXISTS {RETENTION} (
    basis LowCardinality(String),
    granularity LowCardinality(String),
    unit Date,
    cohort Date,
    period UInt32,
    users UInt64,
    finished_at DateTime64(6, 'UTC')
) ENGINE = ReplacingMergeTree(finished_at)
ORDER BY (basis, granularity, unit, cohort)
"""
FINISHED_PERIODS = {"day": 30, "week": 26, "month": 24}
RETENTION_BASES = ("activity", "purchase")

# A batch inserted again under its token is dropped from the events table and, with this, from
# each view's table too, also when the first try stopped between the two.
INSERT_SETTINGS = (
    "date_time_input_format = 'best_effort', input_format_null_as_default = 1, "
    "deduplicate_blocks_in_dependent_materialized_views = 1"
)
OPEN_WAIT_SECONDS = 30.0
# ClickHouse parses statements of at most `max_query_size` (256 KiB by default): ids are asked
# about in slices whose lists stay well under it (5,000 ids of up to 19 digits: about 105 KB).
IDS_PER_QUESTION = 5_000
# Keys (user ids, anonymous ids: up to 128 characters each) are asked about in slices of at most
# this many bytes of their literals.
KEY_BYTES_PER_QUESTION = 150_000


class ClickHouseUnavailable(DomainError):
    """The engine could not be reached or refused a statement; the message says why. A page or
    API read answers 503 with the reason: the store is down, not the request wrong."""

    status_code = 503
    reason = "EVENTS_STORE_UNAVAILABLE"
    retry_after = 30


class HistoryLoading(ClickHouseUnavailable):
    """ClickHouse has not been given the events stored before shipping was on (`ship_history`):
    its answers would miss them, so it gives none."""

    reason = "EVENTS_STORE_LOADING"


def _literal(value: Any) -> str:
    """A value written into a statement as a ClickHouse literal (both clients send text)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | Decimal):
        return str(int(value)) if isinstance(value, int) else f"'{value}'"
    if isinstance(value, datetime):
        return f"toDateTime64('{value.astimezone(UTC):%Y-%m-%d %H:%M:%S.%f}', 6, 'UTC')"
    if isinstance(value, date):
        return f"toDate('{value.isoformat()}')"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    raise TypeError(f"no ClickHouse literal for {type(value).__name__}")


def _bind(sql: str, params: dict[str, Any]) -> str:
    return sql.format(
        **{key: _literal(value) for key, value in params.items()},
        table=TABLE,
        person_days=PERSON_DAYS,
        people=PEOPLE,
        no_order=NO_ORDER,
    )


class _Chdb:
    """The embedded engine at a path: opened for each use (see the module's note), or held
    open for a block by `held()` (a shipping run, the bench)."""

    # chdb runs one session per process; re-entrant, so that the thread holding the engine open
    # (`held`) runs its statements under the same lock that keeps other threads off `_held`.
    _lock = threading.RLock()

    def __init__(self, path: str) -> None:
        self.path = path
        self._held = None

    def _open(self):
        from chdb import session

        deadline = time.monotonic() + OPEN_WAIT_SECONDS
        while True:
            try:
                return session.Session(self.path)
            except Exception as error:  # chdb raises plain runtime errors
                text = str(error)
                # Another process holding the directory reads "Error initializing EmbeddedServer"
                # (its reason goes to stderr) and is worth waiting for; a path the engine cannot
                # create or use (a file, no permission) says "filesystem error" and never heals.
                waitable = ("lock" in text.lower() or "EmbeddedServer" in text) and "filesystem error" not in text
                if not waitable:
                    first_line = text.strip().splitlines()[0] if text.strip() else type(error).__name__
                    raise ClickHouseUnavailable(f"chdb at {self.path}: {first_line}") from error
                if time.monotonic() > deadline:
                    raise ClickHouseUnavailable(f"chdb at {self.path} stayed locked by another process") from error
                time.sleep(0.05)

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._lock:
            if self._held is not None:  # already held by this thread, further up: keep it open
                yield
                return
            self._held = self._open()
            try:
                yield
            finally:
                self._held.close()
                self._held = None

    def _run(self, statement: str, fmt: str) -> bytes:
        try:
            with self._lock:
                if self._held is not None:
                    return self._held.query(statement, fmt).bytes()
                sess = self._open()
                try:
                    return sess.query(statement, fmt).bytes()
                finally:
                    sess.close()
        except ClickHouseUnavailable:
            raise
        except Exception as error:
            raise ClickHouseUnavailable(str(error)) from error

    def command(self, statement: str) -> None:
        self._run(statement, "CSV")

    def rows(self, statement: str) -> list[list]:
        return json.loads(self._run(statement, "JSONCompact") or b'{"data": []}')["data"]

    def insert(self, data: bytes, *, token: str) -> None:
        self._run(
            f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) SETTINGS insert_deduplication_token = {_literal(token)}, "
            f"{INSERT_SETTINGS} FORMAT TabSeparated\n" + data.decode(),
            "CSV",
        )


class _Server:
    """A ClickHouse server (or a balancer in front of one shard's replicas) over HTTP."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client = None

    @contextmanager
    def held(self) -> Iterator[None]:
        yield

    def _connected(self):
        if self._client is None:
            import clickhouse_connect

            try:
                self._client = clickhouse_connect.get_client(dsn=self.url, connect_timeout=5)
            except Exception as error:
                raise ClickHouseUnavailable(f"{self.url}: {error}") from error
        return self._client

    def command(self, statement: str) -> None:
        try:
            self._connected().command(statement)
        except ClickHouseUnavailable:
            raise
        except Exception as error:
            raise ClickHouseUnavailable(str(error)) from error

    def rows(self, statement: str) -> list[list]:
        try:
            raw = self._connected().raw_query(statement, fmt="JSONCompact")
        except ClickHouseUnavailable:
            raise
        except Exception as error:
            raise ClickHouseUnavailable(str(error)) from error
        return json.loads(raw)["data"]

    def insert(self, data: bytes, *, token: str) -> None:
        try:
            self._connected().raw_insert(
                TABLE,
                list(COLUMNS),
                insert_block=data,
                fmt="TabSeparated",
                settings={
                    "insert_deduplication_token": token,
                    "date_time_input_format": "best_effort",
                    "input_format_null_as_default": 1,
                    "deduplicate_blocks_in_dependent_materialized_views": 1,
                },
            )
        except ClickHouseUnavailable:
            raise
        except Exception as error:
            raise ClickHouseUnavailable(str(error)) from error


def _day(value: str | None) -> date | None:
    return None if value is None else date.fromisoformat(value)


def _cents(value: str | int) -> Decimal:
    """Money as PostgreSQL's numeric(20, 2) gives it (ClickHouse's text drops trailing zeros)."""
    return Decimal(value).quantize(Decimal("0.01"))


def _unit_start(day: date, granularity: str) -> date:
    """The first day of the cohort period (day, week from Monday, month) that holds `day`."""
    if granularity == "day":
        return day
    if granularity == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def _unit_after(unit: date, granularity: str) -> date:
    if granularity == "day":
        return unit + timedelta(days=1)
    if granularity == "week":
        return unit + timedelta(days=7)
    return (unit + timedelta(days=32)).replace(day=1)


def _units_before(unit: date, granularity: str, count: int) -> date:
    if granularity == "day":
        return unit - timedelta(days=count)
    if granularity == "week":
        return unit - timedelta(days=7 * count)
    months = unit.year * 12 + unit.month - 1 - count
    return date(months // 12, months % 12 + 1, 1)


def _daily_values(values: Sequence[str | int]) -> dict[str, Decimal]:
    """A day's row of `daily_rows` from ClickHouse's values, in `DAILY_COLUMNS`' order."""
    row = dict(zip(DAILY_COLUMNS, (Decimal(v) for v in values), strict=True))
    for money in _DAILY_MONEY:
        row[money] = _cents(row[money])
    return row


@dataclass(frozen=True)
class FinishedDays:
    since: date | None  # the least day touched since the last finishing
    finished: bool
    finished_to: date | None
    finished_at: datetime | None
    version: datetime  # the latest version written to either table (1970 when none)
    now: datetime  # the engine's clock as the state was read


class ClickHouseEventsStore(EventsStore):
    engine = "clickhouse"

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = _Chdb(url.removeprefix("chdb://")) if url.startswith("chdb://") else _Server(url)
        self._ready = False
        self._aggregates_ready = False
        self._finished_ready = False

    # --- the table ---------------------------------------------------------------------------

    def ensure_table(self) -> None:
        if not self._ready:
            self.client.command(CREATE_EVENTS.format(table=TABLE))
            # A table made before the column: the rows it holds keep 0 (docs/deploy.md).
            self.client.command(f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS person_hash Int32")
            self._ready = True

    def aggregates_ready(self) -> bool:
        if not self._aggregates_ready:
            self.ensure_table()
            views = self.client.rows(
                "SELECT count() FROM system.tables WHERE database = currentDatabase() AND name IN ("
                + ", ".join(_literal(name) for name in AGGREGATE_VIEWS)
                + ")"
            )
            self._aggregates_ready = int(views[0][0]) == len(AGGREGATE_VIEWS)
        return self._aggregates_ready

    def ensure_aggregates(self) -> bool:
        """Make the daily aggregates and their views if they are not there, filled from the
        events held (month by month). Only while nothing inserts events: shipping calls it under
        its lock. True when it had to build them."""
        if self.aggregates_ready():
            return False
        with self.client.held():
            # A build that stopped half way left rows behind: start again from empty tables.
            for name in AGGREGATE_VIEWS:
                self.client.command(f"DROP VIEW IF EXISTS {name}")
            self.client.command(CREATE_PERSON_DAYS)
            self.client.command(CREATE_PEOPLE)
            self.client.command(f"TRUNCATE TABLE {PERSON_DAYS}")
            self.client.command(f"TRUNCATE TABLE {PEOPLE}")
            held = self.client.rows(f"SELECT DISTINCT toYYYYMM(timestamp) FROM {TABLE} ORDER BY 1")
            months = [int(m) for (m,) in held]
            # A build over a large store takes minutes: the shipping worker's log shows its way.
            for n, month in enumerate(months, start=1):
                logger.info(
                    "building ClickHouse's daily aggregates: person-days of %d-%02d (%d of %d months)",
                    month // 100,
                    month % 100,
                    n,
                    len(months),
                )
                self.client.command(
                    f"INSERT INTO {PERSON_DAYS} "
                    + PERSON_DAYS_OF_EVENTS.format(final="FINAL", where=f"WHERE toYYYYMM(timestamp) = {month}")
                )
            logger.info("building ClickHouse's daily aggregates: people")
            self.client.command(f"INSERT INTO {PEOPLE} {PEOPLE_OF_EVENTS}")
            # Finished days are written from the aggregates: any from before are finished again.
            self._ensure_finished_days()
            self.client.command(f"TRUNCATE TABLE {DAILY}")
            self.client.command(f"TRUNCATE TABLE {RETENTION}")
            for name, (target, select) in AGGREGATE_VIEWS.items():
                self.client.command(f"CREATE MATERIALIZED VIEW IF NOT EXISTS {name} TO {target} AS {select}")
        self._aggregates_ready = True
        return True

    def _ready_aggregates(self) -> None:
        if not self.aggregates_ready():
            raise HistoryLoading(
                "ClickHouse is building its daily aggregates of the events it holds; "
                "the next shipping run finishes them."
            )

    def held(self):
        """Keep the engine open for a block of statements (chdb: one opening, not one each)."""
        return self.client.held()

    def insert_batch(self, data: bytes, *, token: str) -> None:
        """Insert shipped rows (TabSeparated, `COLUMNS`); a batch inserted again under the same
        token is dropped by ClickHouse."""
        self.ensure_table()
        self.client.insert(data, token=token)

    def event_count(self) -> int:
        self.ensure_table()
        return int(self.client.rows(f"SELECT count() FROM {TABLE} FINAL")[0][0])

    def ids_held(self, ids: Sequence[int]) -> set[int]:
        """Which of these event ids ClickHouse holds (what is shipped). Asked about the ids
        themselves, not their range: after retention a range of a few surviving ids can span
        millions that ClickHouse holds, which a range question would bring back whole."""
        self.ensure_table()
        ordered = sorted({int(i) for i in ids})
        held: set[int] = set()
        for start in range(0, len(ordered), IDS_PER_QUESTION):
            part = ordered[start : start + IDS_PER_QUESTION]
            # The range lets the primary key skip parts; the list (plain integers) decides.
            statement = _bind(
                "SELECT DISTINCT id FROM {table} WHERE id BETWEEN {a} AND {b} AND id IN ("
                + ", ".join(map(str, part))
                + ")",
                {"a": part[0], "b": part[-1]},
            )
            held.update(int(row[0]) for row in self.client.rows(statement))
        return held

    def truncate(self) -> None:
        """Empty the tables, the aggregates made and empty too (tests, and the bench's fresh loads)."""
        self.ensure_table()
        self.client.command(f"TRUNCATE TABLE {TABLE}")
        if self.aggregates_ready():
            self.client.command(f"TRUNCATE TABLE {PERSON_DAYS}")
            self.client.command(f"TRUNCATE TABLE {PEOPLE}")
        else:
            self.ensure_aggregates()
        self._ensure_finished_days()
        self.client.command(f"TRUNCATE TABLE {DAILY}")
        self.client.command(f"TRUNCATE TABLE {RETENTION}")
        self.client.command(f"TRUNCATE TABLE {TOUCHED}")

    def _rows(self, sql: str, **params: Any) -> list[list]:
        self.ensure_table()
        return self.client.rows(_bind(sql, params))

    # --- the reads -----------------------------------------------------------------------------

    def _aggregated(self, sql: str, **params: Any) -> list[list]:
        self._ready_aggregates()
        return self.client.rows(_bind(sql, params))

    def daily_rows(self, *, start: date, end: date) -> dict[date, dict[str, Decimal]]:
        """The finished rows of the window that are still to be trusted, and the days after
        them (still open, or made stale by a late event) computed from the person-days."""
        self._ready_aggregates()
        self._ensure_finished_days()
        with self.client.held():
            first, last = self._data_bounds()
            if first is None:
                return {}
            # The days PostgreSQL has rows for: from the first day with an event to the last one.
            lo, hi = max(start, first), min(end, last)
            if lo > hi:
                return {}
            state = self._finished_state()
            trusted_to = hi if state.since is None else min(hi, state.since - timedelta(days=1))
            out: dict[date, dict[str, Decimal]] = {}
            if state.finished and lo <= trusted_to:
                for day, *values in self.client.rows(
                    _bind(
                        f"SELECT toString(day), {_DAILY_TEXT} FROM {DAILY} FINAL "
                        "WHERE day BETWEEN {lo} AND {to} ORDER BY day",
                        {"lo": lo, "to": trusted_to},
                    )
                ):
                    out[date.fromisoformat(day)] = _daily_values(values)
            open_from = lo
            while open_from <= hi and open_from in out:
                open_from += timedelta(days=1)
            if open_from <= hi:
                out.update(self._live_rows(open_from, hi))
        return dict(sorted(out.items()))

    def finish_days(
        self,
        *,
        through: date,
        refinish_after: timedelta | None = None,
        touched_grace: timedelta = timedelta(minutes=5),
    ) -> int:
        """Write the rows of the days up to `through` that no trusted finished row answers yet:
        from the least day touched since the last finishing (or the day after the last finished
        one), then forget the touched days. Only while no events are inserted (shipping calls it
        under its lock). With `refinish_after`, rows that a late event made stale are written
        again at most that often, unless a day has closed meanwhile (a page computes stale days
        in the meantime). The touched days inserted within `touched_grace` before this run read
        them are kept (their days stay untrusted until the next run). Returns the days written."""
        try:
            return self._finish_days(through=through, refinish_after=refinish_after, touched_grace=touched_grace)
        except Exception:
            self._finished_ready = False  # the next try makes what is missing
            raise

    def _finish_days(self, *, through: date, refinish_after: timedelta | None, touched_grace: timedelta) -> int:
        self._ready_aggregates()
        self._ensure_finished_days()
        with self.client.held():
            state = self._finished_state()
            first, last = self._data_bounds()
            if first is None:
                lo = hi = None
            elif not state.finished:
                lo, hi = first, min(through, last)
            elif state.since is not None and state.since <= state.finished_to:
                recent = refinish_after is not None and state.finished_at > datetime.now(UTC) - refinish_after
                if recent and state.finished_to >= min(through, last):
                    return 0
                lo, hi = max(state.since, first), min(max(through, state.finished_to), last)
            else:
                lo, hi = state.finished_to + timedelta(days=1), min(through, last)
            written = 0
            version = state.version
            while lo is not None and lo <= hi:
                step_to = min(hi, lo + timedelta(days=FINISH_STEP_DAYS - 1))
                # Each write's version is above every earlier one's, whichever host's clock wrote
                # those: the latest computation wins the merge, never a stale one.
                version = max(datetime.now(UTC), version + timedelta(microseconds=1))
                at = _literal(version)
                # The cells first: a read trusts cells only up to the last finished day.
                self._finish_cells(lo, step_to, at)
                rows = self._live_rows(lo, step_to)
                self.client.command(
                    f"INSERT INTO {DAILY} (day, {', '.join(DAILY_COLUMNS)}, finished_at) VALUES "
                    + ", ".join(
                        f"({_literal(day)}, {', '.join(str(values[c]) for c in DAILY_COLUMNS)}, {at})"
                        for day, values in rows.items()
                    )
                )
                written += len(rows)
                lo = step_to + timedelta(days=1)
            if state.since is not None:
                self.client.command(
                    f"ALTER TABLE {TOUCHED} DELETE WHERE at < {_literal(state.now - touched_grace)} "
                    "SETTINGS mutations_sync = 2"
                )
        return written

    def finished_through(self) -> tuple[date | None, datetime | None]:
        """The last finished day (UTC) and when it was written; (None, None) before the first."""
        self.ensure_table()
        self._ensure_finished_days()
        state = self._finished_state()
        return state.finished_to, state.finished_at

    def _ensure_finished_days(self) -> None:
        # The view before any row is finished: from then on every insert leaves its least day.
        if not self._finished_ready:
            held = {
                name
                for (name,) in self.client.rows(
                    "SELECT name FROM system.tables WHERE database = currentDatabase() "
                    f"AND name IN ({_literal(DAILY)}, {_literal(RETENTION)})"
                )
            }
            self.client.command(CREATE_DAILY)
            self.client.command(CREATE_RETENTION)
            if DAILY in held and RETENTION not in held:
                # Finished days without their cells (a store finished before the cells existed):
                # a read would take the closed periods' missing cells for zeros. Finished again,
                # from the first day, by the next run.
                self.client.command(f"TRUNCATE TABLE {DAILY}")
            self.client.command(CREATE_TOUCHED)
            self.client.command(f"ALTER TABLE {TOUCHED} ADD COLUMN IF NOT EXISTS {TOUCHED_AT}")
            self.client.command(
                f"CREATE MATERIALIZED VIEW IF NOT EXISTS {TOUCHED_VIEW} TO {TOUCHED} AS {TOUCHED_OF_EVENTS}"
            )
            self._finished_ready = True

    def _finished_state(self) -> FinishedDays:
        (touched, since, finished, finished_to, finished_at, cells_at, now), *_ = self.client.rows(
            f"SELECT (SELECT count() FROM {TOUCHED}), (SELECT toString(min(since)) FROM {TOUCHED}), "
            f"(SELECT count() FROM {DAILY}), (SELECT toString(max(day)) FROM {DAILY}), "
            f"(SELECT toString(max(finished_at)) FROM {DAILY}), "
            f"(SELECT toString(max(finished_at)) FROM {RETENTION}), toString(now64(6))"
        )
        finished = int(finished) > 0
        return FinishedDays(
            since=date.fromisoformat(since) if int(touched) else None,
            finished=finished,
            finished_to=date.fromisoformat(finished_to) if finished else None,
            finished_at=_moment(finished_at) if finished else None,
            version=max(_moment(finished_at), _moment(cells_at)),
            now=_moment(now),
        )

    def _data_bounds(self) -> tuple[date | None, date | None]:
        bounds = self.client.rows(f"SELECT toString(min(day)), toString(max(day)), count() FROM {PERSON_DAYS}")
        if not bounds or not int(bounds[0][2]):
            return None, None
        return _day(bounds[0][0]), _day(bounds[0][1])

    def _live_rows(self, lo: date, hi: date) -> dict[date, dict[str, Decimal]]:
        """The days from `lo` to `hi` (within the days held) computed from the person-days."""
        # Each of these reads one table and joins no person-day to a person, but the paying ones.
        # The day's own values, over its person-days.
        per_day = self._aggregated(
            """
            SELECT toString(day), sum(events), count(), sum(orders), sum(refunds), toString(sum(paid)),
                   toString(sum(refunded)), toString(sum(paid) - sum(refunded)), countIf(orders > 0)
            FROM (
                SELECT person, day, sum(events) AS events, sum(orders) AS orders, sum(refunds) AS refunds,
                       sum(paid) AS paid, sum(refunded) AS refunded
                FROM {person_days} WHERE day BETWEEN {lo} AND {hi} GROUP BY person, day
            )
            GROUP BY day
            """,
            lo=lo,
            hi=hi,
        )
        # New people: their first day over all their events is the day.
        new = self._aggregated(
            """
            SELECT toString(first), count() FROM (SELECT person, min(first_day) AS first FROM {people} GROUP BY person)
            WHERE first BETWEEN {lo} AND {hi} GROUP BY first
            """,
            lo=lo,
            hi=hi,
        )
        # Repeat buyers: paying on the day, and their first order was on an earlier day.
        repeat = self._aggregated(
            """
            WITH paying AS (
                SELECT person, day FROM {person_days} WHERE day BETWEEN {lo} AND {hi} AND orders > 0
                GROUP BY person, day
            )
            SELECT toString(d.day), count() FROM paying d JOIN (
                SELECT person, min(first_order_day) AS first_order FROM {people}
                WHERE person IN (SELECT person FROM paying) GROUP BY person
            ) p ON p.person = d.person
            WHERE p.first_order < d.day GROUP BY d.day
            """,
            lo=lo,
            hi=hi,
        )
        # WAU and MAU without a join of days to days: a person active on `day` and next on `next`
        # is counted in the trailing week (month) of the days from `day` up to the earlier of
        # `next` and `day` + 7 (30), each day once. So each person-day adds 1 from its day and
        # takes it back from that end: a handful of changes per day, summed up in order. A
        # person's days are one sorted array, walked pairwise (no window function to sort by).
        changes = self._aggregated(
            """
            SELECT toString(x.1), sum(x.2), sum(x.3) FROM (
                SELECT arraySort(groupUniqArray(day)) AS days FROM {person_days}
                WHERE day BETWEEN {lo} - 29 AND {hi} GROUP BY person
            )
            ARRAY JOIN arrayFlatten(arrayMap(
                (day, next) -> [(day, 1, 1), (least(next, day + 7), -1, 0), (least(next, day + 30), 0, -1)],
                days, arrayPushBack(arrayPopFront(days), {no_order})
            )) AS x
            GROUP BY x.1
            """,
            lo=lo,
            hi=hi,
        )
        by_day = {date.fromisoformat(day): (int(w), int(m)) for day, w, m in changes}
        trailing, wau, mau = [], 0, 0
        day = lo - timedelta(days=29)
        while day <= hi:
            w, m = by_day.get(day, (0, 0))
            wau, mau = wau + w, mau + m
            if day >= lo:
                trailing.append((day.isoformat(), wau, mau))
            day += timedelta(days=1)
        own = {day: values for day, *values in per_day}
        new_on = {day: n for day, n in new}
        repeat_on = {day: n for day, n in repeat}
        quiet = ["0"] * 9
        out = {}
        for day, wau, mau in trailing:
            events, active, orders, refunds, paid, refunded, revenue, paying = (own.get(day) or quiet)[:8]
            values = (
                events,
                active,
                wau,
                mau,
                new_on.get(day, 0),
                orders,
                refunds,
                paid,
                refunded,
                revenue,
                paying,
                repeat_on.get(day, 0),
            )
            out[date.fromisoformat(day)] = _daily_values(values)
        return out

    def retention_cells(
        self, *, basis: str, granularity: str, first_cohort: date, end: date, periods: int
    ) -> list[tuple[date, int, int]]:
        """The finished cells of the periods closed before the first untrusted day, and the
        cells of the periods from there computed from the person-days."""
        self._ready_aggregates()
        self._ensure_finished_days()
        # The last active day a cell of the last cohort can count.
        days_to = end + timedelta(days={"day": 1, "week": 7, "month": 31}[granularity] * (periods + 1))
        with self.client.held():
            state = self._finished_state()
            if not state.finished or periods > FINISHED_PERIODS[granularity]:
                return self._live_cells(basis, granularity, first_cohort, end, periods, first_cohort, days_to)
            trusted_to = state.finished_to
            if state.since is not None:
                trusted_to = min(trusted_to, state.since - timedelta(days=1))
            open_from = _unit_start(trusted_to + timedelta(days=1), granularity)
            finished = self.client.rows(
                _bind(
                    f"""
                    SELECT toString(cohort), period, users FROM {RETENTION} FINAL
                    WHERE basis = {{basis}} AND granularity = {{granularity}} AND unit < {{open_from}}
                      AND cohort BETWEEN {{first_cohort}} AND {{end}} AND period <= {{periods}} AND users > 0
                    """,
                    {
                        "basis": basis,
                        "granularity": granularity,
                        "open_from": open_from,
                        "first_cohort": first_cohort,
                        "end": end,
                        "periods": periods,
                    },
                )
            )
            cells = [(date.fromisoformat(c), int(p), int(u)) for c, p, u in finished]
            open_from = max(first_cohort, open_from)
            cells += self._live_cells(basis, granularity, first_cohort, end, periods, open_from, days_to)
        return sorted(cells)

    def _finish_cells(self, lo: date, hi: date, at: str) -> None:
        """The cells of every period that closes from `lo` to `hi`, zeros included, as version `at`."""
        rows = []
        for granularity, longest in FINISHED_PERIODS.items():
            first_unit = _unit_start(lo, granularity)
            last_unit = _unit_start(hi + timedelta(days=1), granularity)  # the first not closed by `hi`
            units = []
            unit = first_unit
            while unit < last_unit:
                units.append(unit)
                unit = _unit_after(unit, granularity)
            if not units:
                continue
            oldest_cohort = _units_before(units[0], granularity, longest)
            for basis in RETENTION_BASES:
                found = {
                    (cohort, period): users
                    for cohort, period, users in self._live_cells(
                        basis, granularity, oldest_cohort, units[-1], longest, units[0], last_unit - timedelta(days=1)
                    )
                }
                for unit in units:
                    for period in range(longest + 1):
                        cohort = _units_before(unit, granularity, period)
                        users = found.get((cohort, period), 0)
                        rows.append(
                            f"({_literal(basis)}, {_literal(granularity)}, {_literal(unit)}, {_literal(cohort)}, "
                            f"{period}, {users}, {at})"
                        )
        for start in range(0, len(rows), 50_000):
            self.client.command(
                f"INSERT INTO {RETENTION} (basis, granularity, unit, cohort, period, users, finished_at) VALUES "
                + ", ".join(rows[start : start + 50_000])
            )

    def _live_cells(
        self,
        basis: str,
        granularity: str,
        first_cohort: date,
        end: date,
        periods: int,
        days_from: date,
        days_to: date,
    ) -> list[tuple[date, int, int]]:
        """The cells of the cohorts from `first_cohort` to `end`, counting the active days from
        `days_from` to `days_to`, computed from the person-days."""
        purchases = basis == "purchase"
        first = "min(first_order_day)" if purchases else "min(first_day)"
        # The cohort of a first day, and the period of an active day `d` in the cohort of `c.first`.
        cohort, period = {
            "day": ("first", "dateDiff('day', c.first, d)"),
            "week": ("toMonday(first)", "intDiv(dateDiff('day', toMonday(c.first), toMonday(d)), 7)"),
            "month": (
                "toStartOfMonth(first)",
                "(toYear(d) * 12 + toMonth(d)) - (toYear(c.first) * 12 + toMonth(c.first))",
            ),
        }[granularity]
        # An active day of a cohort's person is on or after their first day, so on or after the
        # first cohort, and at most `periods` periods after the last cohort: the days read are
        # those (the table is ordered by day). A person's days are gathered into one array, so
        # the join is person to person, not person-day to person.
        rows = self._aggregated(
            f"""
            WITH cohorts AS (
                SELECT person, {first} AS first, {cohort} AS cohort FROM {{people}} GROUP BY person
                HAVING cohort BETWEEN {{first_cohort}} AND {{end}} {"AND first < {no_order}" if purchases else ""}
            )
            SELECT toString(cohort), period, count() FROM (
                SELECT c.cohort AS cohort, arrayJoin(arrayDistinct(arrayMap(d -> {period}, a.days))) AS period
                FROM cohorts c JOIN (
                    SELECT person, groupUniqArray(day) AS days FROM {{person_days}}
                    WHERE day BETWEEN greatest({{first_cohort}}, {{days_from}}) AND {{days_to}}
                      {"AND orders > 0" if purchases else ""}
                    GROUP BY person
                ) a ON a.person = c.person
            )
            WHERE period BETWEEN 0 AND {{periods}}
            GROUP BY cohort, period ORDER BY cohort, period
            """,
            first_cohort=first_cohort,
            end=end,
            periods=periods,
            days_from=days_from,
            days_to=days_to,
        )
        return [(date.fromisoformat(c), int(p), int(u)) for c, p, u in rows]

    def search_totals(self, *, start: date, end: date, zero_results_only: bool, limit: int | None) -> SearchTotals:
        order = "zero_results DESC, searches DESC, query" if zero_results_only else "searches DESC, query"
        window = (
            "FROM {table} WHERE name = 'search' AND search_query != '' AND toDate(timestamp) BETWEEN {start} AND {end}"
        )
        queries = self._rows(
            f"""
            SELECT search_query AS query, count() AS searches, sum(search_zero) AS zero_results {window}
            GROUP BY query {"HAVING zero_results > 0" if zero_results_only else ""}
            ORDER BY {order} {"LIMIT {limit}" if limit is not None else ""}
            """,
            start=start,
            end=end,
            limit=limit,
        )
        (searches, zero), *_ = self._rows(f"SELECT count(), sum(search_zero) {window}", start=start, end=end)
        return SearchTotals([(q, int(n), int(z)) for q, n, z in queries], int(searches), int(zero))

    def purchase_totals(self, *, start: date, end: date) -> PurchaseTotals:
        ((active, paying, repeat, paid, refunded, orders),) = self._aggregated(
            """
            SELECT count(), countIf(orders > 0), countIf(order_days > 1),
                   toString(sum(paid)), toString(sum(refunded)), sum(orders)
            FROM (
                SELECT person, sum(day_orders) AS orders, countIf(day_orders > 0) AS order_days,
                       sum(day_paid) AS paid, sum(day_refunded) AS refunded
                FROM (
                    SELECT person, day, sum(orders) AS day_orders, sum(paid) AS day_paid,
                           sum(refunded) AS day_refunded
                    FROM {person_days} WHERE day BETWEEN {start} AND {end} GROUP BY person, day
                )
                GROUP BY person
            )
            """,
            start=start,
            end=end,
        )
        return PurchaseTotals(
            int(active), int(paying), int(repeat), _cents(paid or 0), _cents(refunded or 0), int(orders)
        )

    def funnel_counts(self, *, steps: list[str], start: datetime, end: datetime, window: timedelta) -> list[int]:
        """The same chain as PostgreSQL's: the person's first step-1 event of the period, then
        each step's first event after the previous step's, within the window of the first."""
        if not steps:
            return []
        micros = int(window / timedelta(microseconds=1))
        params: dict[str, Any] = {"start": start, "end": end}
        ctes = []
        for n, name in enumerate(steps, start=1):
            params[f"name{n}"] = name
            if n == 1:
                ctes.append(
                    "s1 AS (SELECT person, min(timestamp) AS t0, min(timestamp) AS t FROM {table} "
                    "WHERE name = {name1} AND timestamp >= {start} AND timestamp < {end} GROUP BY person)"
                )
            else:
                ctes.append(
                    f"s{n} AS (SELECT p.person AS person, p.t0 AS t0, min(e.timestamp) AS t FROM s{n - 1} p "
                    f"JOIN (SELECT person, timestamp FROM {{table}} WHERE name = {{name{n}}} "
                    f"AND timestamp >= {{start}} AND timestamp <= addMicroseconds({{end}}, {micros})) e "
                    "ON e.person = p.person "
                    f"WHERE e.timestamp > p.t AND e.timestamp <= addMicroseconds(p.t0, {micros}) "
                    "GROUP BY p.person, p.t0)"
                )
        select = ", ".join(f"(SELECT count() FROM s{n})" for n in range(1, len(steps) + 1))
        (counts,) = self._rows(f"WITH {', '.join(ctes)} SELECT {select}", **params)
        return [int(c) for c in counts]

    def key_behaviour_groups(
        self, *, event_name: str, start: date, end: date, first_days: int, retained_from: int, retained_to: int
    ) -> dict[bool, tuple[int, int]]:
        # The people whose first day is in the window; those who did the event within their first
        # days (from the raw events of that name: the table is ordered by name first); those back
        # on a day of the retention span (from their person-days).
        rows = self._aggregated(
            """
            WITH cohort AS (
                SELECT person, min(first_day) AS first_day FROM {people}
                GROUP BY person HAVING first_day BETWEEN {start} AND {end}
            ), did AS (
                SELECT e.person AS person FROM (
                    SELECT person, min(toDate(timestamp)) AS first_event FROM {table}
                    WHERE name = {event} AND person IN (SELECT person FROM cohort) GROUP BY person
                ) e JOIN cohort c ON c.person = e.person
                WHERE e.first_event < c.first_day + {first_days}
            ), kept AS (
                SELECT DISTINCT d.person AS person FROM {person_days} d JOIN cohort c ON c.person = d.person
                WHERE d.day BETWEEN {start} + {retained_from} AND {end} + {retained_to}
                  AND d.day BETWEEN c.first_day + {retained_from} AND c.first_day + {retained_to}
            )
            SELECT person IN (SELECT person FROM did) AS did, count(), countIf(person IN (SELECT person FROM kept))
            FROM cohort GROUP BY did
            """,
            event=event_name,
            start=start,
            end=end,
            first_days=first_days,
            retained_from=retained_from,
            retained_to=retained_to,
        )
        return {bool(did): (int(total), int(kept)) for did, total, kept in rows}

    def last_activity_day(self) -> date | None:
        ((day,),) = self._aggregated("SELECT if(count() = 0, NULL, toString(max(day))) FROM {person_days}")
        return _day(day)

    def churn_rows(self, *, start: date, end: date, churn_days: int, last_events: int, sample: int) -> ChurnRows:
        """The sample is the first `sample` people by PostgreSQL's `hashtext` of their key, then the
        key, as the PostgreSQL engine draws it: shipping computes the hash there (`person_hash`),
        so both engines draw the same people. A row shipped before the column existed holds 0:
        any other row of the person gives the real hash (every row of a person has the same)."""
        params = {"start": start, "end": end, "churn_days": churn_days, "last": last_events, "sample": sample}
        # One pass over the window for the groups' sizes and the sample (`groupArraySorted` keeps
        # only the first `sample` people), then the sampled people's last events, asked about by
        # their keys.
        ((churned_total, retained_total, drawn),) = self._rows(
            """
            SELECT countIf(churned), countIf(NOT churned), groupArraySorted({sample})((hash, person, churned)) FROM (
                SELECT person, countIf(toDate(timestamp) > {end}) = 0 AS churned,
                       anyIf(person_hash, person_hash != 0) AS hash
                FROM {table}
                WHERE toDate(timestamp) BETWEEN {start} AND {end} + {churn_days}
                GROUP BY person HAVING countIf(toDate(timestamp) <= {end}) > 0
            )
            """,
            **params,
        )
        last: dict[str, list[str]] = {}
        for keys, _none in _key_slices([person for _hash, person, _churned in drawn], []):
            rows = self._rows(
                """
                SELECT person,
                       arrayMap(x -> x.3, arraySlice(arrayReverseSort(groupArray((timestamp, id, name))), 1, {last}))
                FROM {table} WHERE toDate(timestamp) BETWEEN {start} AND {end} AND person IN {keys}
                GROUP BY person
                """,
                **params,
                keys=keys,
            )
            last.update((person, list(names)) for person, names in rows)
        return ChurnRows(
            int(churned_total), int(retained_total), [(bool(churned), last[person]) for _hash, person, churned in drawn]
        )

    def source_windows(self, *, windows: Sequence[tuple[datetime, datetime]]) -> list[SourceWindow]:
        """Each event joined to every window that holds it (windows may overlap); revenue is the
        `amount` shipping computed with PostgreSQL's own expression (a decimal string matching
        `STORED_AMOUNT_PATTERN`, rounded to cents; 0 otherwise), so both engines sum the same.
        The span from the first start to the last end bounds the scan (partitions by month); only
        its events inside a window are read further (the daily check's five days of five weeks)."""
        starts, ends = [start for start, _end in windows], [end for _start, end in windows]
        if not windows or min(starts) >= max(ends):
            return []
        in_window = "i -> timestamp >= {starts}[i] AND timestamp < {ends}[i], arrayEnumerate({starts})"
        rows = self._rows(
            f"""
            SELECT if(utm_source = '', '(direct)', utm_source) AS source, w - 1, count(), uniqExact(person),
                   countIf(name = 'order_paid'),
                   toString(sumIf(amount, name = 'order_paid'))
            FROM (
                SELECT timestamp, name, person, utm_source, amount
                FROM {{table}}
                WHERE timestamp >= {{lo}} AND timestamp < {{hi}}
                  AND arrayExists({in_window})
            )
            ARRAY JOIN arrayFilter({in_window}) AS w
            GROUP BY source, w
            """,
            lo=min(starts),
            hi=max(ends),
            starts=starts,
            ends=ends,
        )
        return [
            SourceWindow(source, int(window), int(events), int(people), int(orders), Decimal(revenue))
            for source, window, events, people, orders, revenue in rows
        ]

    def hourly_event_counts(self, *, start: datetime, end: datetime) -> dict[datetime, int]:
        rows = self._rows(
            "SELECT toString(toStartOfHour(timestamp)), count() FROM {table} "
            "WHERE timestamp >= {start} AND timestamp < {end} GROUP BY 1",
            start=start,
            end=end,
        )
        return {datetime.fromisoformat(hour).replace(tzinfo=UTC): int(n) for hour, n in rows}

    def key_activity(
        self,
        *,
        user_ids: Sequence[str],
        anonymous_ids: Sequence[str],
        since: datetime,
        first_until: datetime | None,
        days_from: datetime,
        days_until: datetime,
    ) -> list[KeyActivity]:
        first = "timestamp <= {first_until}" if first_until is not None else "0"
        days = "timestamp >= {days_from} AND timestamp < {days_until}"
        params = {"since": since, "first_until": first_until, "days_from": days_from, "days_until": days_until}
        pairs: dict[tuple[str | None, str | None], KeyActivity] = {}
        for users, anonymous in _key_slices(user_ids, anonymous_ids):
            # The keys as parameters: written into the statement before binding, a key's braces
            # would be read as the statement's own placeholders.
            asked = " OR ".join(
                f"{column} IN {{{column}s}}"
                for column, values in (("user_id", users), ("anonymous_id", anonymous))
                if values
            )
            rows = self._rows(
                f"""
                SELECT user_id, anonymous_id, countIf({first}),
                       toString(minIf(timestamp, {first})), argMinIf(id, (timestamp, id), {first}),
                       argMinIf(utm_source, (timestamp, id), {first}),
                       groupArrayIf((toString(timestamp), id, toString(amount)), name = 'order_paid'),
                       groupUniqArrayIf(toString(toDate(timestamp)), {days})
                FROM {{table}}
                WHERE timestamp >= {{since}} AND ({asked}) AND ({first} OR name = 'order_paid' OR ({days}))
                GROUP BY user_id, anonymous_id
                """,
                **params,
                user_ids=users,
                anonymous_ids=anonymous,
            )
            for user_id, anonymous_id, firsts, first_at, first_id, source, orders, active in rows:
                # A pair may answer in two slices (its user id in one, its anonymous id in another),
                # and an event held twice not merged yet: orders count once by their id.
                found = KeyActivity(
                    user_id,
                    anonymous_id,
                    (_moment(first_at), int(first_id), source) if int(firsts) else None,
                    [(_moment(at), int(i), _cents(amount)) for at, i, amount in orders],
                    {date.fromisoformat(day) for day in active},
                )
                pairs[user_id, anonymous_id] = _together(pairs.get((user_id, anonymous_id)), found)
        return list(pairs.values())


def _key_slices(user_ids: Sequence[str], anonymous_ids: Sequence[str]) -> Iterator[tuple[list[str], list[str]]]:
    """The keys in slices whose literals stay under `KEY_BYTES_PER_QUESTION` (escaped at worst)."""
    keys = [(True, v) for v in sorted(set(user_ids))] + [(False, v) for v in sorted(set(anonymous_ids))]
    users: list[str] = []
    anonymous: list[str] = []
    size = 0
    for is_user, value in keys:
        cost = 2 * len(value.encode()) + 4
        if size + cost > KEY_BYTES_PER_QUESTION and (users or anonymous):
            yield users, anonymous
            users, anonymous, size = [], [], 0
        (users if is_user else anonymous).append(value)
        size += cost
    if users or anonymous:
        yield users, anonymous


def _moment(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _together(seen: KeyActivity | None, found: KeyActivity) -> KeyActivity:
    if seen is None:
        orders = {order[1]: order for order in found.orders}
        return KeyActivity(found.user_id, found.anonymous_id, found.first, sorted(orders.values()), found.days)
    firsts = [f for f in (seen.first, found.first) if f is not None]
    orders = {order[1]: order for order in (*seen.orders, *found.orders)}
    return KeyActivity(
        found.user_id,
        found.anonymous_id,
        min(firsts) if firsts else None,
        sorted(orders.values()),
        seen.days | found.days,
    )
