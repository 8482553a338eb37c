"""Reads of the tracking layer that stay fast on a table of hundreds of millions of events."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from django.db import connection
from django.db.models import Count, QuerySet
from django.db.models.functions import TruncDate
from django.utils import timezone
from psycopg import sql

from tracking.models import STORED_AMOUNT_PATTERN, Event

# A loose index scan: PostgreSQL has no skip scan, so DISTINCT over a big table reads every row;
# this recursive query instead jumps from one value to the next through the index, a few pages
# per distinct value. `{where}` must match the partial index's predicate for it to be used.
_DISTINCT_VALUES = sql.SQL("""
WITH RECURSIVE walk(value) AS (
    (SELECT {column} FROM tracking_event WHERE {column} IS NOT NULL {where} ORDER BY {column} LIMIT 1)
    UNION ALL
    SELECT (SELECT {column} FROM tracking_event WHERE {column} > walk.value {where}
            ORDER BY {column} LIMIT 1)
    FROM walk WHERE walk.value IS NOT NULL
)
SELECT value FROM walk WHERE value IS NOT NULL LIMIT %s
""")


def _distinct(column: str, where: sql.Composable, limit: int) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(_DISTINCT_VALUES.format(column=sql.Identifier(column), where=where), [limit])
        return [row[0] for row in cursor.fetchall()]


def order_amounts_validated() -> bool:
    """Whether the database has checked every stored order event's amount against
    `STORED_AMOUNT_PATTERN` (constraint `event_order_amount_decimal` validated), not only the
    events stored since the constraint was added."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT convalidated FROM pg_constraint "
            "WHERE conrelid = 'tracking_event'::regclass AND conname = 'event_order_amount_decimal'"
        )
        row = cursor.fetchone()
    return bool(row and row[0])


def order_amount_sql(properties: str) -> str:
    """An SQL expression for the amount of the order event whose properties are the column
    `properties`: 0 where it has none, and where an older event's amount is not a decimal string.

    Where the database guarantees every stored amount's form it is cast as it is: matching the
    pattern costs about 2 µs of CPU an event, more than reading and casting it together."""
    amount = f"({properties} ->> 'amount')"
    if order_amounts_validated():
        return f"COALESCE({amount}::numeric, 0)"
    pattern = STORED_AMOUNT_PATTERN.replace("'", "''")
    return f"CASE WHEN {amount} ~ '{pattern}' THEN {amount}::numeric ELSE 0 END"


def event_names(*, limit: int = 500) -> list[str]:
    """Every event name seen, in order (through the `(name, timestamp)` index)."""
    return _distinct("name", sql.SQL(""), limit)


def event_name_seen(name: str) -> bool:
    """Whether any event of this name was ever stored (one probe of the `(name, timestamp)` index)."""
    return Event.objects.filter(name=name).exists()


def utm_sources(*, limit: int = 500) -> list[str]:
    """Every traffic source seen (through the partial `(utm_source, timestamp)` index)."""
    return _distinct("utm_source", sql.SQL("AND utm_source <> ''"), limit)


def estimated_event_count() -> int:
    """The planner's row estimate for the whole table: exact counts of a huge table take minutes."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = 'tracking_event'::regclass")
        row = cursor.fetchone()
    return max(int(row[0]), 0) if row else 0


def daily_volume(*, events: QuerySet[Event] | None = None, days: int = 30, today: date | None = None) -> dict:
    """Events per day and kind over the last `days` days (UTC), of `events` (all by default),
    as chart series: `{"days": [...], "series": {kind: [count per day]}}`."""
    today = today or timezone.now().astimezone(UTC).date()
    start = today - timedelta(days=days - 1)
    queryset = Event.objects.all() if events is None else events
    # A plain range on `timestamp` (not `__date`) so the BRIN index can narrow the scan.
    rows = (
        queryset.filter(
            timestamp__gte=datetime.combine(start, time.min, tzinfo=UTC),
            timestamp__lt=datetime.combine(today + timedelta(days=1), time.min, tzinfo=UTC),
        )
        .annotate(day=TruncDate("timestamp", tzinfo=UTC))
        .order_by()
        .values("day", "kind")
        .annotate(n=Count("id"))
    )
    day_list = [start + timedelta(days=offset) for offset in range(days)]
    position = {day: i for i, day in enumerate(day_list)}
    series: dict[str, list[int]] = {}
    for row in rows:
        series.setdefault(row["kind"], [0] * days)[position[row["day"]]] = row["n"]
    return {"days": [d.isoformat() for d in day_list], "series": series}
