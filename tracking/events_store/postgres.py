"""The events store on PostgreSQL: the rollup tables that `indicators.rollups` folds from
`tracking_event` (named `tracking_*`, as when they lived in this app), and the events themselves
for funnels and the anomaly detector's sources and hours. The statements are the ones the
analyses and the detector ran before the store existed."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from django.db import connections, transaction

from config.replica import analytics_alias
from tracking.events_store.base import (
    DAILY_COLUMNS,
    ChurnRows,
    EventsStore,
    KeyActivity,
    PurchaseTotals,
    SearchTotals,
    SourceWindow,
)
from tracking.models import STORED_AMOUNT_PATTERN

PERSON = "COALESCE(e.user_id, e.anonymous_id)"
# Hash buckets of the activity tails (`indicators.models.SAMPLE_BUCKETS` is this one).
SAMPLE_BUCKETS = 1024


# Each pair's events of the people asked about: the index of each key column gives their rows;
# those outside the three spans the answer uses are not aggregated. The amount as shipping
# computes it (`tracking.shipping`): a decimal string, rounded to cents; 0 otherwise.
_KEY_ACTIVITY = """
WITH picked AS (
    SELECT e.id, e.user_id, e.anonymous_id, e.timestamp, e.name, e.utm_source,
           CASE WHEN e.name = 'order_paid' AND e.properties->>'amount' ~ %(pattern)s
                THEN round((e.properties->>'amount')::numeric, 2) ELSE 0 END AS amount
    FROM tracking_event e
    WHERE e.timestamp >= %(since)s
      AND (e.user_id = ANY(%(users)s::text[]) OR e.anonymous_id = ANY(%(anonymous)s::text[]))
      AND (e.timestamp <= %(first_until)s OR e.name = 'order_paid'
           OR (e.timestamp >= %(days_from)s AND e.timestamp < %(days_until)s))
)
SELECT user_id, anonymous_id,
       (extract(epoch FROM min(timestamp) FILTER (WHERE timestamp <= %(first_until)s)) * 1000000)::bigint,
       (array_agg(id ORDER BY timestamp, id) FILTER (WHERE timestamp <= %(first_until)s))[1],
       (array_agg(utm_source ORDER BY timestamp, id) FILTER (WHERE timestamp <= %(first_until)s))[1],
       array_agg((extract(epoch FROM timestamp) * 1000000)::bigint ORDER BY id) FILTER (WHERE name = 'order_paid'),
       array_agg(id ORDER BY id) FILTER (WHERE name = 'order_paid'),
       array_agg(amount ORDER BY id) FILTER (WHERE name = 'order_paid'),
       array_agg(DISTINCT (timestamp AT TIME ZONE 'UTC')::date - DATE '1970-01-01')
           FILTER (WHERE timestamp >= %(days_from)s AND timestamp < %(days_until)s)
FROM picked
GROUP BY user_id, anonymous_id
"""
# Microseconds since the epoch and days since it: integers read back several times faster than
# timestamps and dates in text, and a report of tens of thousands of people reads many.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_DAY = _EPOCH.date().toordinal()


def _connection():
    """The connection every read of this engine goes through: the read replica inside a
    dashboard's `reading_from_replica()` scope when one is configured and usable, else the primary."""
    return connections[analytics_alias()]


def _search_parts(start: date, end: date) -> tuple[str, dict]:
    """The signed (query, searches, zero_results) rows that add up to the window, per calendar
    month it touches: a whole month is its `SearchMonth` row; a partial one is either its days in
    the window or, when the window covers most of it, its month row less the days it leaves out
    (a quarter from the 2nd is three month rows less one day, not 29 days and two months). Both
    counts are sums, so the difference is exact."""
    months, days, left_out = [], [], []
    month = start.replace(day=1)
    while month <= end:
        next_month = (month + timedelta(days=32)).replace(day=1)
        first, last = max(start, month), min(end, next_month - timedelta(days=1))
        every_day = [month + timedelta(days=n) for n in range((next_month - month).days)]
        inside = [day for day in every_day if first <= day <= last]
        outside = [day for day in every_day if not first <= day <= last]
        if len(outside) < len(inside):
            months.append(month)
            left_out += outside
        else:
            days += inside
        month = next_month
    sql = """
        SELECT query, searches, zero_results FROM tracking_searchmonth WHERE month = ANY(%(months)s::date[])
        UNION ALL
        SELECT query, searches, zero_results FROM tracking_searchday WHERE day = ANY(%(days)s::date[])
        UNION ALL
        SELECT query, -searches, -zero_results FROM tracking_searchday WHERE day = ANY(%(left_out)s::date[])
    """
    return sql, {"months": months, "days": days, "left_out": left_out}


_KEY_BEHAVIOUR = """
WITH cohort AS (
    SELECT person_key, first_day FROM tracking_activityperson WHERE first_day BETWEEN %(start)s AND %(end)s
), did AS (
    SELECT c.person_key FROM cohort c
    JOIN tracking_activityfirstevent f ON f.person_key = c.person_key AND f.name = %(event)s
         AND f.first_day < c.first_day + %(first_days)s
), kept AS (
    SELECT DISTINCT c.person_key FROM cohort c
    JOIN tracking_activityday a ON a.person_key = c.person_key
         AND a.day BETWEEN c.first_day + %(retained_from)s AND c.first_day + %(retained_to)s
)
SELECT d.person_key IS NOT NULL, count(*), count(k.person_key)
FROM cohort c LEFT JOIN did d ON d.person_key = c.person_key LEFT JOIN kept k ON k.person_key = c.person_key
GROUP BY 1
"""

# People active over the window and churned or retained after it, from the person-days' next days.
_CHURN_GROUPS = """
SELECT COALESCE(sum(users) FILTER (WHERE next_day > %(end)s::date + %(churn_days)s), 0),
       COALESCE(sum(users) FILTER (WHERE next_day <= %(end)s::date + %(churn_days)s), 0)
FROM tracking_activitygap WHERE day BETWEEN %(start)s AND %(end)s AND next_day > %(end)s
"""
# The sample's people (the first `sample` of the window's people by the hash of their key, read
# from the lowest buckets), churned or not, each with the event names of their last `last` events
# of the window: their last days' tails, newest day first (each tail holds at least one event, so
# the last `last` events lie in the last `last` days: a short backward scan of the key per person).
_CHURN_LAST_NAMES = """
WITH groups AS MATERIALIZED (
    SELECT bucket, person_key, NOT bool_or(day > %(end)s) AS churned FROM tracking_activitytail
    WHERE bucket < %(buckets)s AND day BETWEEN %(start)s AND %(end)s::date + %(churn_days)s
    GROUP BY bucket, person_key HAVING bool_or(day <= %(end)s)
    ORDER BY hashtext(person_key), person_key LIMIT %(sample)s
)
SELECT g.churned, ARRAY(
    SELECT u.name FROM (
        SELECT t.day, t.names FROM tracking_activitytail t
        WHERE t.bucket = g.bucket AND t.person_key = g.person_key AND t.day BETWEEN %(start)s AND %(end)s
        ORDER BY t.day DESC LIMIT %(last)s
    ) d CROSS JOIN LATERAL unnest(d.names) WITH ORDINALITY AS u(name, position)
    ORDER BY d.day DESC, u.position LIMIT %(last)s
) FROM groups g
"""

# Per traffic source and window, from the raw events (windows are a handful of days or hours; the
# `(utm_source, timestamp)` and BRIN indexes serve them). An amount is counted only where it
# matches the pattern: older order events may hold one of another form (tracking 0010).
_SOURCE_WINDOWS = """
SELECT COALESCE(NULLIF(e.utm_source, ''), '(direct)') AS source, w.n - 1 AS window,
       COUNT(*) AS events,
       COUNT(DISTINCT COALESCE(e.user_id, e.anonymous_id)) AS people,
       COUNT(*) FILTER (WHERE e.name = 'order_paid') AS orders,
       COALESCE(SUM(CASE WHEN e.name = 'order_paid' AND (e.properties ->> 'amount') ~ %(pattern)s
                         THEN round((e.properties ->> 'amount')::numeric, 2) END), 0) AS revenue
FROM unnest(%(starts)s::timestamptz[], %(ends)s::timestamptz[]) WITH ORDINALITY AS w(s, e, n)
JOIN tracking_event e ON e.timestamp >= w.s AND e.timestamp < w.e
GROUP BY 1, 2
"""


class PostgresEventsStore(EventsStore):
    engine = "postgres"

    def daily_rows(self, *, start: date, end: date) -> dict[date, dict[str, Decimal]]:
        with _connection().cursor() as cursor:
            cursor.execute(
                f"SELECT day, {', '.join(DAILY_COLUMNS)} FROM tracking_dailyindicator WHERE day BETWEEN %s AND %s",
                [start, end],
            )
            rows = cursor.fetchall()
        return {day: dict(zip(DAILY_COLUMNS, values, strict=True)) for day, *values in rows}

    def retention_cells(
        self, *, basis: str, granularity: str, first_cohort: date, end: date, periods: int
    ) -> list[tuple[date, int, int]]:
        with _connection().cursor() as cursor:
            cursor.execute(
                """
                SELECT cohort, period, users FROM tracking_retentioncell
                WHERE basis = %s AND granularity = %s AND cohort BETWEEN %s AND %s AND period BETWEEN 0 AND %s
                ORDER BY cohort, period
                """,
                [basis, granularity, first_cohort, end, periods],
            )
            return cursor.fetchall()

    def search_totals(self, *, start: date, end: date, zero_results_only: bool, limit: int | None) -> SearchTotals:
        """One pass over the window's rollup rows for the ranked queries and the totals."""
        parts, params = _search_parts(start, end)
        order = "zero_results DESC, searches DESC, query" if zero_results_only else "searches DESC, query"
        sql = f"""
            WITH q AS MATERIALIZED (
                SELECT query, sum(searches)::bigint AS searches, sum(zero_results)::bigint AS zero_results
                FROM ({parts}) p GROUP BY query
                HAVING sum(searches) > 0  -- a query searched only on the days left out nets to nothing
            )
            SELECT * FROM (
                SELECT row_number() OVER (ORDER BY {order}) AS rank, query, searches, zero_results FROM q
                {"WHERE zero_results > 0" if zero_results_only else ""}
                ORDER BY {order} {"LIMIT %(limit)s" if limit is not None else ""}
            ) ranked
            UNION ALL
            SELECT 0, NULL, COALESCE(sum(searches), 0), COALESCE(sum(zero_results), 0) FROM q
            ORDER BY 1
        """
        with _connection().cursor() as cursor:
            cursor.execute(sql, {**params, "limit": limit})
            (_rank, _all, searches, zero), *rows = cursor.fetchall()
        return SearchTotals([(q, int(n), int(z)) for _rank, q, n, z in rows], int(searches), int(zero))

    def purchase_totals(self, *, start: date, end: date) -> PurchaseTotals:
        with _connection().cursor() as cursor:
            cursor.execute(
                """
                SELECT count(*), count(*) FILTER (WHERE orders > 0), count(*) FILTER (WHERE order_days > 1),
                       COALESCE(sum(paid), 0), COALESCE(sum(refunded), 0), COALESCE(sum(orders), 0)
                FROM (SELECT person_key, sum(orders) AS orders, count(*) FILTER (WHERE orders > 0) AS order_days,
                             sum(paid_amount) AS paid, sum(refunded_amount) AS refunded
                      FROM tracking_activityday WHERE day BETWEEN %s AND %s GROUP BY person_key) per_person
                """,
                [start, end],
            )
            active, paying, repeat, paid, refunded, orders = cursor.fetchone()
        return PurchaseTotals(active, paying, repeat, Decimal(paid), Decimal(refunded), int(orders))

    def funnel_counts(self, *, steps: list[str], start: datetime, end: datetime, window: timedelta) -> list[int]:
        if not steps:
            return []
        params: dict = {"start": start, "end": end, "window": window}
        ctes = []
        for n, name in enumerate(steps, start=1):
            params[f"name{n}"] = name
            if n == 1:
                ctes.append(
                    f"s1 AS (SELECT {PERSON} AS person, min(e.timestamp) AS t0, min(e.timestamp) AS t "
                    "FROM tracking_event e WHERE e.name = %(name1)s "
                    "AND e.timestamp >= %(start)s AND e.timestamp < %(end)s "
                    "GROUP BY 1)"
                )
            else:
                ctes.append(
                    f"s{n} AS (SELECT p.person, p.t0, min(e.timestamp) AS t FROM s{n - 1} p "
                    f"JOIN tracking_event e ON {PERSON} = p.person "
                    "AND e.timestamp > p.t AND e.timestamp <= p.t0 + %(window)s "
                    f"WHERE e.name = %(name{n})s AND e.timestamp >= %(start)s AND e.timestamp <= %(end)s + %(window)s "
                    "GROUP BY p.person, p.t0)"
                )
        select = ", ".join(f"(SELECT count(*) FROM s{n})" for n in range(1, len(steps) + 1))
        with _connection().cursor() as cursor:
            cursor.execute(f"WITH {', '.join(ctes)} SELECT {select}", params)
            return list(cursor.fetchone())

    def key_behaviour_groups(
        self, *, event_name: str, start: date, end: date, first_days: int, retained_from: int, retained_to: int
    ) -> dict[bool, tuple[int, int]]:
        """From the rollups only: did it in the first days is their first day of `event_name` (no
        event of theirs comes before signup) before `signup + first_days`."""
        params = {
            "start": start,
            "end": end,
            "event": event_name,
            "first_days": first_days,
            "retained_from": retained_from,
            "retained_to": retained_to,
        }
        with _connection().cursor() as cursor:
            cursor.execute(_KEY_BEHAVIOUR, params)
            return {did: (total, kept) for did, total, kept in cursor.fetchall()}

    def last_activity_day(self) -> date | None:
        with _connection().cursor() as cursor:
            cursor.execute("SELECT max(day) FROM tracking_activityday")
            return cursor.fetchone()[0]

    def churn_rows(self, *, start: date, end: date, churn_days: int, last_events: int, sample: int) -> ChurnRows:
        """The groups' sizes are the whole population's (`ActivityGap`). The last events are read
        for at most `sample` people of it (a fixed pseudo-random draw: the first by a hash of their
        person key), from their days' tails (`ActivityTail`) in the lowest hash buckets that hold
        that many people: a page costs about the same for a week as for a busy quarter."""
        params = {"start": start, "end": end, "churn_days": churn_days, "last": last_events}
        db = _connection()
        with transaction.atomic(using=db.alias), db.cursor() as cursor:
            # A few thousand rows from index ranges: compiling the statement costs more than running it.
            cursor.execute("SET LOCAL jit = off")
            cursor.execute(_CHURN_GROUPS, params)
            churned_total, retained_total = (int(n) for n in cursor.fetchone())
            population = churned_total + retained_total
            wanted = min(sample, population)
            # Buckets that hold a tenth more people than the sample, and one more (the hash spreads
            # people evenly); more when they turn out to hold too few.
            drawn = min(SAMPLE_BUCKETS, -(-SAMPLE_BUCKETS * 11 * wanted // (10 * population)) + 1) if population else 0
            while True:
                cursor.execute(_CHURN_LAST_NAMES, {**params, "buckets": drawn, "sample": sample})
                people = cursor.fetchall()
                if len(people) >= wanted or drawn >= SAMPLE_BUCKETS:
                    break
                drawn = min(SAMPLE_BUCKETS, drawn * 2)
        return ChurnRows(churned_total, retained_total, [(churned, list(names)) for churned, names in people])

    def source_windows(self, *, windows: Sequence[tuple[datetime, datetime]]) -> list[SourceWindow]:
        if not windows:
            return []
        params = {
            "starts": [start for start, _end in windows],
            "ends": [end for _start, end in windows],
            "pattern": STORED_AMOUNT_PATTERN,
        }
        with _connection().cursor() as cursor:
            cursor.execute(_SOURCE_WINDOWS, params)
            rows = cursor.fetchall()
        return [
            SourceWindow(source, int(window), int(events), int(people), int(orders), Decimal(revenue))
            for source, window, events, people, orders, revenue in rows
        ]

    def hourly_event_counts(self, *, start: datetime, end: datetime) -> dict[datetime, int]:
        with _connection().cursor() as cursor:
            cursor.execute(
                """
                SELECT date_trunc('hour', timestamp AT TIME ZONE 'UTC') AS hour, COUNT(*)
                FROM tracking_event WHERE timestamp >= %(start)s AND timestamp < %(end)s GROUP BY 1
                """,
                {"start": start, "end": end},
            )
            return {hour.replace(tzinfo=UTC): int(n) for hour, n in cursor.fetchall()}

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
        if not user_ids and not anonymous_ids:
            return []
        params = {
            "users": list(user_ids),
            "anonymous": list(anonymous_ids),
            "since": since,
            "first_until": first_until,
            "days_from": days_from,
            "days_until": days_until,
            "pattern": STORED_AMOUNT_PATTERN,
        }
        with _connection().cursor() as cursor:
            cursor.execute(_KEY_ACTIVITY, params)
            rows = cursor.fetchall()

        def moment(us: int) -> datetime:
            return _EPOCH + timedelta(microseconds=us)

        return [
            KeyActivity(
                user_id=user_id,
                anonymous_id=anonymous_id,
                first=(moment(first_us), first_id, first_source) if first_us is not None else None,
                orders=[
                    (moment(us), i, a) for us, i, a in zip(order_us or (), order_ids or (), amounts or (), strict=True)
                ],
                days={date.fromordinal(_EPOCH_DAY + d) for d in days} if days else set(),
            )
            for user_id, anonymous_id, first_us, first_id, first_source, order_us, order_ids, amounts, days in rows
        ]
