"""Writes of the indicator rollups: events folded, incrementally, into per-person-per-day activity
and the per-day tables that dashboards, the API and goals read.

The person of an event-only indicator is its "person key": the product's `user_id`, else the
event's `anonymous_id`. Identity merges live in `profiles`; they are not applied here.

How a run stays small and exact:
- Ingestion queues the id runs of the events it stores (`RollupBacklog`, written by
  `queue_stored_events` in the storing transaction). A run takes backlog rows (about
  `chunk_events` events each chunk), folds their events and deletes the rows in the same
  transaction. No event is skipped however long an ingestion transaction stays open (its ids
  are taken before it commits): its rows become visible, and are folded, when it commits. So
  there is no settle delay to wait out any more.
- Additive facts (a person's events, orders and amounts of a day; searches per query and day) are
  added to with `INSERT ... SELECT ... ON CONFLICT DO UPDATE`. A late event (an old `timestamp`
  arriving now) is simply added to its own day.
- For the key-behaviour and churn pages: each person's first day of each event name (moves only
  back), each person-day's last `TAIL_EVENTS` events (merged, newest kept), and person-days
  counted by their next day of activity (moved for the rows between a person's day before the
  chunk's first new day and its last new day only).
- Everything derived (first days, cohort cells, the day's indicators, WAU/MAU) is recomputed only
  for the people and days that the chunk touched. Cohort cells are moved by the touched people's
  contribution: theirs before the chunk is subtracted, theirs after it added.
- Each chunk, with its backlog rows, is one transaction: a crashed run leaves the tables and the
  backlog as they were, and a second run finds nothing new. Runs queue on `RollupCursor`'s row
  lock. `rebuild()` computes the same tables from scratch, from one snapshot of the events, and
  empties the backlog of that snapshot.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from django.conf import settings
from django.db import OperationalError, connection, transaction
from django.utils import timezone

from tracking.models import SAMPLE_BUCKETS, TAIL_EVENTS, RollupCursor

CURSOR = "indicators"
DEFAULT_CHUNK_EVENTS = 500_000
DAY_PERIODS = 30  # daily cohorts keep day 0 to day 30

Progress = Callable[[int], None]

_PERSON = "COALESCE(e.user_id, e.anonymous_id)"
_DAY = "(e.timestamp AT TIME ZONE 'UTC')::date"
# Amounts are decimal strings by the API contract; anything else counts as 0 rather than failing
# the whole run on one bad event. (Braces doubled: the text goes through str.format once more.)
_AMOUNT = (
    "CASE WHEN e.properties->>'amount' ~ '^[0-9]{{1,15}}(\\.[0-9]{{1,12}})?$' "
    "THEN round((e.properties->>'amount')::numeric, 2) ELSE 0 END"
)

# Events aggregated per person and day. A day's tail is its events newest first: they come out
# of the subquery in that order within each person-day, and array_agg() keeps the order its input
# comes in (an ordered aggregate would sort each of the million groups on its own, several times
# slower); grouping needs no sort of its own, the input is already in the groups' order.
_AGGREGATE = f"""
SELECT e.person_key, e.day,
       count(*) AS events,
       count(*) FILTER (WHERE e.name = 'order_paid') AS orders,
       count(*) FILTER (WHERE e.name = 'order_refunded') AS refunds,
       COALESCE(sum(e.amount) FILTER (WHERE e.name = 'order_paid'), 0) AS paid_amount,
       COALESCE(sum(e.amount) FILTER (WHERE e.name = 'order_refunded'), 0) AS refunded_amount,
       min(e.timestamp) AS first_at, max(e.timestamp) AS last_at,
       (array_agg(e.name))[1:{TAIL_EVENTS}] AS tail_names,
       (array_agg(e.timestamp))[1:{TAIL_EVENTS}] AS tail_ats,
       (array_agg(e.id))[1:{TAIL_EVENTS}] AS tail_ids
FROM (
    SELECT {_PERSON} AS person_key, {_DAY} AS day, e.name, e.timestamp, e.id,
           CASE WHEN e.name IN ('order_paid', 'order_refunded') THEN {_AMOUNT} END AS amount
    FROM tracking_event e
    WHERE {{where}}
    ORDER BY 1, 2, e.timestamp DESC, e.id DESC
) e
GROUP BY 1, 2
"""
_STAGE = "CREATE TEMP TABLE rollup_batch ON COMMIT DROP AS" + _AGGREGATE
_COLUMNS = "person_key, day, events, orders, refunds, paid_amount, refunded_amount, first_at, last_at"
# The sample bucket of a person key (`ActivityTail.bucket`): the top bits of its hash, so that
# buckets go up with `hashtext`.
_BUCKET = f"((hashtext({{key}}) >> {32 - SAMPLE_BUCKETS.bit_length() + 1}) + {SAMPLE_BUCKETS // 2})::smallint"
_TAIL_COLUMNS = "bucket, day, person_key, names, ats, ids"
# Tails are written in key order: the churn page reads a few buckets, and a person's days side by
# side on disk (as a rebuild's runs of days leave them) are a page or two instead of one per day.
# A rebuild's run of days: its person-days are new rows, the activity and the tails of one aggregate.
_INSERT_ACTIVITY = f"""
WITH agg AS MATERIALIZED ({_AGGREGATE}), tails AS (
    INSERT INTO tracking_activitytail ({_TAIL_COLUMNS})
    SELECT {_BUCKET.format(key="person_key")} AS bucket, day, person_key, tail_names, tail_ats, tail_ids FROM agg
    ORDER BY bucket, person_key, day
)
INSERT INTO tracking_activityday ({_COLUMNS}) SELECT {_COLUMNS} FROM agg
"""

# A chunk's tails merged into the day's: the newest of both (an event is never in both twice:
# UNION drops a repeat, so merging the same events again changes nothing).
_ADD_TAILS = f"""
INSERT INTO tracking_activitytail AS t ({_TAIL_COLUMNS})
SELECT {_BUCKET.format(key="person_key")} AS bucket, day, person_key, tail_names, tail_ats, tail_ids FROM rollup_batch
ORDER BY bucket, person_key, day
ON CONFLICT (bucket, person_key, day) DO UPDATE SET (names, ats, ids) = (
    SELECT (array_agg(u.n ORDER BY u.at DESC, u.i DESC))[1:{TAIL_EVENTS}],
           (array_agg(u.at ORDER BY u.at DESC, u.i DESC))[1:{TAIL_EVENTS}],
           (array_agg(u.i ORDER BY u.at DESC, u.i DESC))[1:{TAIL_EVENTS}]
    FROM (SELECT * FROM unnest(t.names, t.ats, t.ids)
          UNION SELECT * FROM unnest(EXCLUDED.names, EXCLUDED.ats, EXCLUDED.ids)) AS u(n, at, i)
)
"""

# A full rebuild's runs stage each one's first days without any index, folded into the table once.
_STAGE_FIRST_EVENTS = f"""
INSERT INTO rollup_first_events (person_key, name, first_day)
SELECT {_PERSON}, e.name, min({_DAY}) FROM tracking_event e WHERE {{where}} GROUP BY 1, 2
"""
_FIRST_EVENTS_FROM_STAGE = """
INSERT INTO tracking_activityfirstevent (person_key, name, first_day)
SELECT person_key, name, min(first_day) FROM rollup_first_events GROUP BY 1, 2
"""

# First day of each event name per person: only ever moves back.
_ADD_FIRST_EVENTS = f"""
INSERT INTO tracking_activityfirstevent AS f (person_key, name, first_day)
SELECT {_PERSON}, e.name, min({_DAY}) FROM tracking_event e WHERE {{where}} GROUP BY 1, 2
ON CONFLICT (person_key, name) DO UPDATE SET first_day = EXCLUDED.first_day WHERE EXCLUDED.first_day < f.first_day
"""

# Person-days by day and next day of activity. A chunk's new person-days change the next day of
# their people's rows from the one before the first new day (`lo`) to the last new one (`hi`)
# only: those rows' pairs are subtracted before the chunk's activity is added and added after
# it. The next day after `hi` (no new day there) is probed once, before.
_GAP_PEOPLE = """
CREATE TEMP TABLE rollup_gaps ON COMMIT DROP AS
SELECT n.person_key, COALESCE(prev.day, n.min_new) AS lo, n.max_new AS hi, nxt.day AS after_hi
FROM (SELECT b.person_key, min(b.day) AS min_new, max(b.day) AS max_new
      FROM rollup_batch b
      WHERE NOT EXISTS (SELECT 1 FROM tracking_activityday a WHERE a.person_key = b.person_key AND a.day = b.day)
      GROUP BY b.person_key) n
LEFT JOIN LATERAL (SELECT a.day FROM tracking_activityday a WHERE a.person_key = n.person_key AND a.day < n.min_new
                   ORDER BY a.day DESC LIMIT 1) prev ON true
LEFT JOIN LATERAL (SELECT a.day FROM tracking_activityday a WHERE a.person_key = n.person_key AND a.day > n.max_new
                   ORDER BY a.day LIMIT 1) nxt ON true
"""
_GAP_PAIRS = """
SELECT day, next_day, count(*) AS users FROM (
    SELECT a.day, COALESCE(lead(a.day) OVER (PARTITION BY a.person_key ORDER BY a.day), g.after_hi,
                           DATE '9999-12-31') AS next_day
    FROM rollup_gaps g JOIN tracking_activityday a ON a.person_key = g.person_key AND a.day BETWEEN g.lo AND g.hi
) p GROUP BY 1, 2
"""
_SUBTRACT_GAPS = f"""
UPDATE tracking_activitygap c SET users = c.users - p.users FROM ({_GAP_PAIRS}) p
WHERE c.day = p.day AND c.next_day = p.next_day
"""
_ADD_GAPS = f"""
INSERT INTO tracking_activitygap AS c (day, next_day, users) {_GAP_PAIRS}
ON CONFLICT (day, next_day) DO UPDATE SET users = c.users + EXCLUDED.users
"""

_ADD_ACTIVITY = """
INSERT INTO tracking_activityday AS a
    (person_key, day, events, orders, refunds, paid_amount, refunded_amount, first_at, last_at)
SELECT person_key, day, events, orders, refunds, paid_amount, refunded_amount, first_at, last_at
FROM rollup_batch
ON CONFLICT (person_key, day) DO UPDATE SET
    events = a.events + EXCLUDED.events,
    orders = a.orders + EXCLUDED.orders,
    refunds = a.refunds + EXCLUDED.refunds,
    paid_amount = a.paid_amount + EXCLUDED.paid_amount,
    refunded_amount = a.refunded_amount + EXCLUDED.refunded_amount,
    first_at = LEAST(a.first_at, EXCLUDED.first_at),
    last_at = GREATEST(a.last_at, EXCLUDED.last_at)
"""

_RESULTS_ZERO = (
    "CASE jsonb_typeof(e.properties->'results') "
    "WHEN 'number' THEN (e.properties->>'results')::numeric = 0 "
    "WHEN 'array' THEN jsonb_array_length(e.properties->'results') = 0 ELSE false END"
)
_ADD_SEARCHES = f"""
INSERT INTO tracking_searchday AS s (day, query, searches, zero_results)
SELECT {_DAY}, left(lower(btrim(e.properties->>'query')), 200), count(*), count(*) FILTER (WHERE {_RESULTS_ZERO})
FROM tracking_event e
WHERE ({{where}}) AND e.name = 'search' AND btrim(COALESCE(e.properties->>'query', '')) <> ''
GROUP BY 1, 2
ON CONFLICT (day, query) DO UPDATE SET
    searches = s.searches + EXCLUDED.searches,
    zero_results = s.zero_results + EXCLUDED.zero_results
"""

# The same searches by month (additive too).
_ADD_SEARCH_MONTHS = f"""
INSERT INTO tracking_searchmonth AS s (month, query, searches, zero_results)
SELECT date_trunc('month', {_DAY})::date, left(lower(btrim(e.properties->>'query')), 200), count(*),
       count(*) FILTER (WHERE {_RESULTS_ZERO})
FROM tracking_event e
WHERE ({{where}}) AND e.name = 'search' AND btrim(COALESCE(e.properties->>'query', '')) <> ''
GROUP BY 1, 2
ON CONFLICT (month, query) DO UPDATE SET
    searches = s.searches + EXCLUDED.searches,
    zero_results = s.zero_results + EXCLUDED.zero_results
"""
# A rebuild sums the months again from the days.
_SEARCH_MONTHS = """
INSERT INTO tracking_searchmonth (month, query, searches, zero_results)
SELECT date_trunc('month', day)::date, query, sum(searches), sum(zero_results)
FROM tracking_searchday WHERE day >= %(since)s GROUP BY 1, 2
"""

# First and last days of people, from their activity ({filter}: all or the touched ones).
_PERSONS = """
INSERT INTO tracking_activityperson AS p (person_key, first_day, last_day, first_order_day)
SELECT a.person_key, min(a.day), max(a.day), min(a.day) FILTER (WHERE a.orders > 0)
FROM tracking_activityday a
WHERE {filter}
GROUP BY a.person_key
ON CONFLICT (person_key) DO UPDATE SET
    first_day = EXCLUDED.first_day, last_day = EXCLUDED.last_day, first_order_day = EXCLUDED.first_order_day
"""

# Weeks and months of dates in date and integer arithmetic: date_trunc() goes through a
# timestamp with time zone and extract() through numeric, several times slower over a million rows.
# 0001-01-01 was a Monday.
_WEEK = "({d} - (({d} - DATE '0001-01-01') % 7))"
_MONTH = "({d} - (date_part('day', {d})::int - 1))"
_MONTH_INDEX = "(date_part('year', {d}) * 12 + date_part('month', {d}))::int"


def _cohort_contributions(base: str) -> str:
    """Cohort cells (basis, granularity, cohort, period, users) of the activity rows `base`
    selects (person_key, day, orders, first_day, first_order_day). Week and month periods count a
    person once however many days they were active."""
    week = _WEEK
    parts = []
    for basis, first, active in (
        ("activity", "b.first_day", "true"),
        ("purchase", "b.first_order_day", "b.orders > 0"),
    ):
        parts.append(
            f"SELECT '{basis}' AS basis, 'day' AS granularity, {first} AS cohort, b.day - {first} AS period, "
            f"b.person_key FROM base b WHERE {first} IS NOT NULL AND {active} AND b.day - {first} <= {DAY_PERIODS}"
        )
        parts.append(
            f"SELECT DISTINCT '{basis}', 'week', {week.format(d=first)}, "
            f"({week.format(d='b.day')} - {week.format(d=first)}) / 7, b.person_key "
            f"FROM base b WHERE {first} IS NOT NULL AND {active}"
        )
        parts.append(
            f"SELECT DISTINCT '{basis}', 'month', {_MONTH.format(d=first)}, "
            f"{_MONTH_INDEX.format(d='b.day')} - {_MONTH_INDEX.format(d=first)}, b.person_key "
            f"FROM base b WHERE {first} IS NOT NULL AND {active}"
        )
    union = "\nUNION ALL\n".join(parts)
    return f"""
WITH base AS MATERIALIZED ({base}), cells AS ({union})
SELECT basis, granularity, cohort, period, count(*) AS users FROM cells GROUP BY 1, 2, 3, 4
"""


# Every activity row, or (incrementally) the rows of the chunk's people within their ranges.
_ALL_ROWS = """
SELECT a.person_key, a.day, a.orders, p.first_day, p.first_order_day
FROM tracking_activityday a JOIN tracking_activityperson p ON p.person_key = a.person_key
"""
_RANGE_ROWS = """
SELECT DISTINCT a.person_key, a.day, a.orders, p.first_day, p.first_order_day
FROM rollup_ranges r
JOIN tracking_activityday a ON a.person_key = r.person_key AND a.day BETWEEN r.lo AND r.hi
JOIN tracking_activityperson p ON p.person_key = a.person_key
"""

# The chunk's people. One whose first day (or first order day) moves, or who is new, has every
# cohort cell moved: all their rows are subtracted before and added after the chunk.
_CHUNK_PEOPLE = """
CREATE TEMP TABLE rollup_people ON COMMIT DROP AS
SELECT b.person_key, b.min_day, b.max_day, b.min_order_day, p.first_day, p.first_order_day,
       (p.person_key IS NULL OR b.min_day < p.first_day) AS first_moves,
       (b.min_order_day IS NOT NULL AND (p.first_order_day IS NULL OR b.min_order_day < p.first_order_day))
       AS first_order_moves
FROM (SELECT person_key, min(day) AS min_day, max(day) AS max_day, min(day) FILTER (WHERE orders > 0) AS min_order_day
      FROM rollup_batch GROUP BY person_key) b
LEFT JOIN tracking_activityperson p ON p.person_key = b.person_key
"""
_RANGES = """
CREATE TEMP TABLE rollup_ranges ON COMMIT DROP AS
SELECT person_key, DATE '0001-01-01' AS lo, DATE '9999-12-31' AS hi FROM rollup_people
WHERE first_moves OR first_order_moves
"""

# Anyone else keeps their cohort: each cell they are not yet counted in gains them. A day cell when
# the chunk brings a day they had no row for (for `purchase`: no order on), a week (month) cell when
# they had no such day in that week (month): one probe of the (person, day) key each, run before
# the chunk's activity is added.
_STAYER_CELLS = f"""
INSERT INTO tracking_retentioncell AS c (basis, granularity, cohort, period, users)
WITH rows AS MATERIALIZED (
    SELECT b.person_key, b.day, b.orders > 0 AS ordered, p.first_day, p.first_order_day,
           old.day IS NOT NULL AS had_day, COALESCE(old.orders, 0) > 0 AS had_order
    FROM rollup_batch b
    JOIN rollup_people p ON p.person_key = b.person_key AND NOT (p.first_moves OR p.first_order_moves)
    LEFT JOIN tracking_activityday old ON old.person_key = b.person_key AND old.day = b.day
), spans AS (
    SELECT DISTINCT person_key, 'week' AS granularity, {_WEEK.format(d="day")} AS lo,
           {_WEEK.format(d="day")} + 6 AS hi, ordered, first_day, first_order_day
    FROM rows
    UNION
    SELECT DISTINCT person_key, 'month', {_MONTH.format(d="day")},
           ({_MONTH.format(d="day")} + interval '1 month - 1 day')::date, ordered, first_day, first_order_day
    FROM rows
), cells AS (
    SELECT 'activity' AS basis, 'day' AS granularity, first_day AS cohort, day - first_day AS period
    FROM rows WHERE NOT had_day AND day - first_day <= {DAY_PERIODS}
    UNION ALL
    SELECT 'purchase', 'day', first_order_day, day - first_order_day
    FROM rows WHERE ordered AND NOT had_order AND day - first_order_day <= {DAY_PERIODS}
    UNION ALL
    SELECT DISTINCT ON (s.person_key, s.granularity, s.lo) 'activity', s.granularity,
           CASE s.granularity WHEN 'week' THEN {_WEEK.format(d="s.first_day")}
                ELSE {_MONTH.format(d="s.first_day")} END,
           CASE s.granularity WHEN 'week' THEN (s.lo - {_WEEK.format(d="s.first_day")}) / 7
                ELSE {_MONTH_INDEX.format(d="s.lo")} - {_MONTH_INDEX.format(d="s.first_day")} END
    FROM spans s
    WHERE NOT EXISTS (SELECT 1 FROM tracking_activityday a
                      WHERE a.person_key = s.person_key AND a.day BETWEEN s.lo AND s.hi)
    UNION ALL
    SELECT DISTINCT ON (s.person_key, s.granularity, s.lo) 'purchase', s.granularity,
           CASE s.granularity WHEN 'week' THEN {_WEEK.format(d="s.first_order_day")}
                ELSE {_MONTH.format(d="s.first_order_day")} END,
           CASE s.granularity WHEN 'week' THEN (s.lo - {_WEEK.format(d="s.first_order_day")}) / 7
                ELSE {_MONTH_INDEX.format(d="s.lo")} - {_MONTH_INDEX.format(d="s.first_order_day")} END
    FROM spans s
    WHERE s.ordered AND NOT EXISTS (SELECT 1 FROM tracking_activityday a
                                    WHERE a.person_key = s.person_key AND a.day BETWEEN s.lo AND s.hi AND a.orders > 0)
)
SELECT basis, granularity, cohort, period, count(*) FROM cells GROUP BY 1, 2, 3, 4
ON CONFLICT (basis, granularity, cohort, period) DO UPDATE SET users = c.users + EXCLUDED.users
"""
# Activity only ever grows, so a person's first and last days move with the chunk's alone.
_PERSONS_FROM_CHUNK = """
INSERT INTO tracking_activityperson AS p (person_key, first_day, last_day, first_order_day)
SELECT person_key, min_day, max_day, min_order_day FROM rollup_people
ON CONFLICT (person_key) DO UPDATE SET
    first_day = LEAST(p.first_day, EXCLUDED.first_day),
    last_day = GREATEST(p.last_day, EXCLUDED.last_day),
    first_order_day = LEAST(p.first_order_day, EXCLUDED.first_order_day)
"""


def _add_cells_sql(base: str) -> str:
    return f"""
INSERT INTO tracking_retentioncell AS c (basis, granularity, cohort, period, users)
{_cohort_contributions(base)}
ON CONFLICT (basis, granularity, cohort, period) DO UPDATE SET users = c.users + EXCLUDED.users
"""


def _subtract_cells_sql(base: str) -> str:
    return f"""
UPDATE tracking_retentioncell c SET users = c.users - old.users
FROM ({_cohort_contributions(base)}) old
WHERE c.basis = old.basis AND c.granularity = old.granularity AND c.cohort = old.cohort AND c.period = old.period
"""


# The day's indicators that depend only on that day's activity ({filter} on `a.day`).
_DAYS = """
INSERT INTO tracking_dailyindicator AS d
    (day, events, active_users, weekly_active_users, monthly_active_users, new_users, orders, refunds,
     paid_amount, refunded_amount, revenue, paying_users, repeat_buyers, updated_at)
SELECT a.day, sum(a.events), count(*), 0, 0,
       count(*) FILTER (WHERE p.first_day = a.day),
       sum(a.orders), sum(a.refunds), sum(a.paid_amount), sum(a.refunded_amount),
       sum(a.paid_amount) - sum(a.refunded_amount),
       count(*) FILTER (WHERE a.orders > 0),
       count(*) FILTER (WHERE a.orders > 0 AND p.first_order_day < a.day),
       now()
FROM tracking_activityday a JOIN tracking_activityperson p ON p.person_key = a.person_key
WHERE {filter}
GROUP BY a.day
ON CONFLICT (day) DO UPDATE SET
    events = EXCLUDED.events, active_users = EXCLUDED.active_users, new_users = EXCLUDED.new_users,
    orders = EXCLUDED.orders, refunds = EXCLUDED.refunds, paid_amount = EXCLUDED.paid_amount,
    refunded_amount = EXCLUDED.refunded_amount, revenue = EXCLUDED.revenue,
    paying_users = EXCLUDED.paying_users, repeat_buyers = EXCLUDED.repeat_buyers, updated_at = now()
"""

# WAU and MAU of every day from %(lo)s to %(hi)s. Each activity day of a person covers the 7 (30)
# days from it, cut short where that person's next activity day takes over, so the pieces never
# overlap and a running sum of +1/-1 at their ends counts distinct people without a self-join.
_ACTIVE_WINDOWS = """
WITH r AS (
    SELECT day, lead(day) OVER (PARTITION BY person_key ORDER BY day) AS nxt
    FROM tracking_activityday WHERE day BETWEEN %(lo)s::date - 29 AND %(hi)s::date
), cover AS (
    SELECT GREATEST(day, %(lo)s::date) AS s,
           LEAST(day + 6, COALESCE(nxt - 1, %(hi)s::date), %(hi)s::date) AS we,
           LEAST(day + 29, COALESCE(nxt - 1, %(hi)s::date), %(hi)s::date) AS me
    FROM r
), delta AS (
    SELECT s AS d, 1 AS w, 0 AS m FROM cover WHERE s <= we
    UNION ALL SELECT we + 1, -1, 0 FROM cover WHERE s <= we
    UNION ALL SELECT s, 0, 1 FROM cover WHERE s <= me
    UNION ALL SELECT me + 1, 0, -1 FROM cover WHERE s <= me
), per_day AS (
    SELECT d, sum(w) AS w, sum(m) AS m FROM delta GROUP BY d
), days AS (
    SELECT g::date AS day FROM generate_series(%(lo)s::date, %(hi)s::date, interval '1 day') g
)
INSERT INTO tracking_dailyindicator AS d
    (day, events, active_users, weekly_active_users, monthly_active_users, new_users, orders, refunds,
     paid_amount, refunded_amount, revenue, paying_users, repeat_buyers, updated_at)
SELECT days.day, 0, 0,
       sum(COALESCE(per_day.w, 0)) OVER (ORDER BY days.day),
       sum(COALESCE(per_day.m, 0)) OVER (ORDER BY days.day),
       0, 0, 0, 0, 0, 0, 0, 0, now()
FROM days LEFT JOIN per_day ON per_day.d = days.day
ON CONFLICT (day) DO UPDATE SET
    weekly_active_users = EXCLUDED.weekly_active_users,
    monthly_active_users = EXCLUDED.monthly_active_users,
    updated_at = now()
"""

# The same over every person-day (a rebuild's, from the first day on), counting the person-days
# by their next day too (`ActivityGap`).
_ACTIVE_WINDOWS_AND_GAPS = _ACTIVE_WINDOWS.replace(
    "\n), cover AS (",
    """
), gaps AS (
    INSERT INTO tracking_activitygap (day, next_day, users)
    SELECT day, COALESCE(nxt, DATE '9999-12-31'), count(*) FROM r GROUP BY 1, 2
), cover AS (""",
    1,
)
assert "gaps AS" in _ACTIVE_WINDOWS_AND_GAPS

# A chunk's change to the WAU and MAU of days already counted (run before its activity is added):
# a person of the chunk joins the 7 (30) day window of day x when the chunk brings them a day in
# it and their latest earlier activity day up to x (one backward probe of the (person, day) key)
# is older than the window. Only the days within 29 days after a chunk's day can change.
_ADD_ACTIVE_WINDOWS = """
WITH pairs AS (
    SELECT b.person_key, x.day AS x, bool_or(b.day >= x.day - 6) AS in_week
    FROM rollup_batch b
    JOIN tracking_dailyindicator x ON x.day BETWEEN b.day AND b.day + 29 AND x.day <= %(old_hi)s
    GROUP BY 1, 2
), joined AS (
    SELECT pr.x,
           pr.in_week AND (prev.day IS NULL OR prev.day < pr.x - 6) AS week_new,
           prev.day IS NULL OR prev.day < pr.x - 29 AS month_new
    FROM pairs pr
    LEFT JOIN LATERAL (
        SELECT a.day FROM tracking_activityday a
        WHERE a.person_key = pr.person_key AND a.day <= pr.x AND a.day >= pr.x - 29
        ORDER BY a.day DESC LIMIT 1
    ) prev ON true
), per_day AS (
    SELECT x, count(*) FILTER (WHERE week_new) AS w, count(*) FILTER (WHERE month_new) AS m
    FROM joined GROUP BY x
)
UPDATE tracking_dailyindicator d
SET weekly_active_users = d.weekly_active_users + per_day.w,
    monthly_active_users = d.monthly_active_users + per_day.m, updated_at = now()
FROM per_day WHERE d.day = per_day.x AND (per_day.w > 0 OR per_day.m > 0)
"""

# WAU and MAU of the last day of activity: nobody has a later day, so a person was active in its
# 7 (30) day window exactly when their last day falls in it (a range count on `last_day`).
_LAST_DAY_WINDOWS = """
INSERT INTO tracking_dailyindicator AS d
    (day, events, active_users, weekly_active_users, monthly_active_users, new_users, orders, refunds,
     paid_amount, refunded_amount, revenue, paying_users, repeat_buyers, updated_at)
SELECT %(hi)s::date, 0, 0,
       count(*) FILTER (WHERE last_day >= %(hi)s::date - 6), count(*), 0, 0, 0, 0, 0, 0, 0, 0, now()
FROM tracking_activityperson WHERE last_day >= %(hi)s::date - 29
ON CONFLICT (day) DO UPDATE SET
    weekly_active_users = EXCLUDED.weekly_active_users,
    monthly_active_users = EXCLUDED.monthly_active_users,
    updated_at = now()
"""

# Tables a full rebuild fills with a million rows: built without their indexes.
_BULK_TABLES = (
    "tracking_activityday",
    "tracking_searchday",
    "tracking_activityperson",
    "tracking_activitytail",
    "tracking_activityfirstevent",
)
_TABLES = (
    "tracking_activityfirstevent",
    "tracking_activitygap",
    "tracking_activitytail",
    "tracking_activityday",
    "tracking_activityperson",
    "tracking_dailyindicator",
    "tracking_retentioncell",
    "tracking_searchday",
    "tracking_searchmonth",
)


@dataclass
class RollupResult:
    events: int = 0
    chunks: int = 0
    days: int = 0
    last_event_id: int = 0
    timings: dict[str, float] = field(default_factory=lambda: defaultdict(float))


class _Steps:
    """Runs statements and adds up the seconds of each step (printed by the bench)."""

    def __init__(self, cursor, timings: dict[str, float]) -> None:
        self.cursor = cursor
        self.timings = timings

    def execute(self, step_or_sql: str, sql: str | None = None, params=None) -> None:
        """`execute(step, sql, params)` is timed as `step`; `execute(sql[, params])` is not."""
        if sql is None or not isinstance(sql, str):
            self.cursor.execute(step_or_sql, sql)
            return
        started = time.monotonic()
        self.cursor.execute(sql, params)
        self.timings[step_or_sql] += time.monotonic() - started

    def fetchone(self):
        return self.cursor.fetchone()


def _work_mem(cursor) -> None:
    """Memory for this transaction's sorts and hashes: with the default 4 MB the per-person-day
    aggregates and the cohorts' DISTINCTs spill to disk."""
    cursor.execute(
        "SELECT set_config('work_mem', %s, true)", [str(getattr(settings, "OPSLOOP_ROLLUP_WORK_MEM", "256MB"))]
    )


def _locked_cursor() -> RollupCursor:
    RollupCursor.objects.get_or_create(name=CURSOR)
    return RollupCursor.objects.select_for_update().get(name=CURSOR)


def queue_stored_events(ids: Sequence[int]) -> None:
    """Queue just-stored events for the rollups, in the transaction that stores them: one
    backlog row per run of consecutive ids (one per batch, unless a concurrent batch drew ids
    from the sequence in between). One small insert per batch."""
    if not ids:
        return
    ordered = sorted(ids)
    if ordered[-1] - ordered[0] + 1 == len(ordered):
        runs = [(ordered[0], ordered[-1])]
    else:
        runs = []
        for pk in ordered:
            if runs and pk == runs[-1][1] + 1:
                runs[-1] = (runs[-1][0], pk)
            elif not runs or pk != runs[-1][1]:
                runs.append((pk, pk))
    values = ", ".join(f"({int(a)}, {int(b)})" for a, b in runs)
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO tracking_rollupbacklog (first_event_id, last_event_id) VALUES {values}")


MAX_RUNS = 1000  # backlog rows per chunk


def _claim(cursor, *, budget: int) -> list[tuple[int, int]]:
    """Take backlog runs of about `budget` event ids (at least one id) for this transaction: the
    whole rows are deleted, a row that would overshoot is cut and keeps its rest. The rows are
    locked (SKIP LOCKED: a run that waits for nothing), and deleted or cut only together with
    the fold that commits them."""
    cursor.execute(
        "SELECT id, first_event_id, last_event_id FROM tracking_rollupbacklog "
        "ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED",
        [MAX_RUNS],
    )
    taken: list[tuple[int, int]] = []
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
            cursor.execute("UPDATE tracking_rollupbacklog SET first_event_id = %s WHERE id = %s", [upto + 1, row_id])
            break
    if done:
        cursor.execute("DELETE FROM tracking_rollupbacklog WHERE id = ANY(%s)", [done])
    return _joined(taken)


def _joined(runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted runs with the touching ones joined: fewer, longer ranges for the index scan."""
    out: list[tuple[int, int]] = []
    for first, last in sorted(runs):
        if out and first <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], last))
        else:
            out.append((first, last))
    return out


def _in_runs(runs: list[tuple[int, int]]) -> str:
    """`e.id` within one of the runs, as SQL with the bounds written in (they are integers), so
    that the planner sees how few rows each holds."""
    return "(" + " OR ".join(f"e.id BETWEEN {int(a)} AND {int(b)}" for a, b in runs) + ")"


def _fold_chunk(cursor, *, runs: list[tuple[int, int]]) -> tuple[int, int]:
    """Fold the events of the id `runs` into the rollups; returns (events, days touched)."""
    where = _in_runs(runs)
    params = None
    cursor.execute("DROP TABLE IF EXISTS rollup_batch, rollup_people, rollup_days, rollup_ranges, rollup_gaps")
    cursor.execute("stage", _STAGE.format(where=where), params)
    cursor.execute("SELECT COALESCE(sum(events), 0) FROM rollup_batch")
    (events,) = cursor.fetchone()
    if not events:  # ids reserved and never used (a batch that fell back to the other insert)
        cursor.execute("DROP TABLE rollup_batch")
        return 0, 0
    cursor.execute("ANALYZE rollup_batch")
    cursor.execute("persons", _CHUNK_PEOPLE)
    cursor.execute("ALTER TABLE rollup_people ADD PRIMARY KEY (person_key)")
    cursor.execute("ANALYZE rollup_people")
    # Days whose indicators may change: those of the chunk, and the former first days of people
    # whose first day moves (a late event makes someone new on an earlier day, not on that one).
    cursor.execute(
        """
        CREATE TEMP TABLE rollup_days ON COMMIT DROP AS
        SELECT day FROM rollup_batch
        UNION SELECT first_day FROM rollup_people WHERE first_moves AND first_day IS NOT NULL
        UNION SELECT first_order_day FROM rollup_people WHERE first_order_moves AND first_order_day IS NOT NULL
        """
    )
    cursor.execute("SELECT min(day), max(day) FROM tracking_dailyindicator")
    old_lo, old_hi = cursor.fetchone()
    cursor.execute("SELECT min(day) FROM rollup_batch")
    (first,) = cursor.fetchone()
    # Days counted before whose window the chunk reaches are moved by the chunk's people alone
    # (before their days are added, to see what they had); a chunk reaching before the first
    # counted day is rare (a very late event) and recounts every day from its first on.
    recount_from = None
    if old_hi is None or first < old_lo:
        recount_from = first
    else:
        cursor.execute("active_windows", _ADD_ACTIVE_WINDOWS, {"old_hi": old_hi})

    cursor.execute("cohorts", _RANGES)
    cursor.execute("CREATE INDEX ON rollup_ranges (person_key)")
    cursor.execute("ANALYZE rollup_ranges")
    cursor.execute("cohorts", _subtract_cells_sql(_RANGE_ROWS))
    cursor.execute("cohorts", _STAYER_CELLS)
    cursor.execute("gaps", _GAP_PEOPLE)
    cursor.execute("gaps", _SUBTRACT_GAPS)
    cursor.execute("activity", _ADD_ACTIVITY)
    cursor.execute("gaps", _ADD_GAPS)
    cursor.execute("DELETE FROM tracking_activitygap WHERE users = 0")
    cursor.execute("tails", _ADD_TAILS)
    cursor.execute("first_events", _ADD_FIRST_EVENTS.format(where=where), params)
    cursor.execute("persons", _PERSONS_FROM_CHUNK)
    cursor.execute("cohorts", _add_cells_sql(_RANGE_ROWS))
    cursor.execute("DELETE FROM tracking_retentioncell WHERE users = 0")
    cursor.execute("searches", _ADD_SEARCHES.format(where=where), params)
    cursor.execute("searches", _ADD_SEARCH_MONTHS.format(where=where), params)
    cursor.execute("days", _DAYS.format(filter="a.day IN (SELECT day FROM rollup_days)"))

    cursor.execute("SELECT count(*) FROM rollup_days")
    (days,) = cursor.fetchone()
    # Days not counted yet (the chunk's new days, quiet days before them): the last day of all
    # from the people's last days, a longer run with the running count over its 30-day reach.
    cursor.execute("SELECT max(day) FROM tracking_activityday")
    (hi,) = cursor.fetchone()
    lo = recount_from if recount_from is not None else old_hi + timedelta(days=1)
    if lo == hi:
        cursor.execute("active_windows", _LAST_DAY_WINDOWS, {"hi": hi})
    elif lo < hi:
        cursor.execute("active_windows", _ACTIVE_WINDOWS, {"lo": lo, "hi": hi})
    # Dropped here too: inside an outer transaction ON COMMIT comes only at its end.
    cursor.execute("DROP TABLE rollup_batch, rollup_people, rollup_days, rollup_ranges, rollup_gaps")
    return events, days


def fold_new_events(*, chunk_events: int = DEFAULT_CHUNK_EVENTS, progress: Progress | None = None) -> RollupResult:
    """Fold every queued event into the rollups, one transaction per chunk of about
    `chunk_events` events. Safe to run at any time, twice, or concurrently (runs queue on the
    cursor's lock; each takes backlog rows another has not taken)."""
    result = RollupResult()
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            state = _locked_cursor()
            _work_mem(cursor)
            runs = _claim(cursor, budget=chunk_events)
            if not runs:
                result.last_event_id = state.last_event_id
                return result
            count, days = _fold_chunk(_Steps(cursor, result.timings), runs=runs)
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
        cursor.execute("SELECT COALESCE(sum(last_event_id - first_event_id + 1), 0) FROM tracking_rollupbacklog")
        return int(cursor.fetchone()[0])


class _IndexesSetAside:
    """The indexes (and primary keys) of emptied tables, dropped while they are filled and built
    again after: one sorted build instead of a million random insertions into each. Only for
    tables emptied in this transaction, which holds their exclusive lock throughout."""

    def __init__(self, steps: _Steps, tables: tuple[str, ...]) -> None:
        self.steps = steps
        self.saved: dict[str, list[str]] = {}
        cursor = steps.cursor
        for table in tables:
            cursor.execute(
                "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conrelid = %s::regclass AND contype IN ('p', 'u')",
                [table],
            )
            constraints = cursor.fetchall()
            cursor.execute(
                "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i "
                "JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = %s::regclass "
                "AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)",
                [table],
            )
            indexes = cursor.fetchall()
            for name, _definition in constraints:
                cursor.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
            for name, _definition in indexes:
                cursor.execute(f'DROP INDEX "{name}"')
            self.saved[table] = [
                *(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}' for name, definition in constraints),
                *(definition for _name, definition in indexes),
            ]

    def restore(self, table: str) -> None:
        for statement in self.saved.pop(table, []):
            self.steps.execute("indexes", statement)
        self.steps.execute(f"ANALYZE {table}")


def _derive_all(cursor, *, indexes: _IndexesSetAside | None = None) -> None:
    """Everything derived from the activity rows, from scratch."""
    cursor.execute(
        "TRUNCATE tracking_activityperson, tracking_retentioncell, tracking_dailyindicator, tracking_activitygap"
    )
    if indexes is not None:
        # Emptied and filled once: no conflicts to look for, no index to keep up while filling.
        cursor.execute("persons", _PERSONS.format(filter="true").split("ON CONFLICT")[0])
        indexes.restore("tracking_activityperson")
    else:
        cursor.execute("persons", _PERSONS.format(filter="true"))
    cursor.execute("cohorts", _add_cells_sql(_ALL_ROWS))
    cursor.execute("days", _DAYS.format(filter="true"))
    cursor.execute("SELECT min(day), max(day) FROM tracking_activityday")
    lo, hi = cursor.fetchone()
    if lo is not None:
        # The windows' pass over every person-day and its next one counts the gaps too.
        cursor.execute("active_windows", _ACTIVE_WINDOWS_AND_GAPS, {"lo": lo, "hi": hi})


REBUILD_ATTEMPTS = 5


def rebuild(
    *, since: date | None = None, chunk_events: int = DEFAULT_CHUNK_EVENTS, progress: Progress | None = None
) -> RollupResult:
    """Recompute the rollups from the events in one transaction (a crash leaves the old tables;
    dashboards wait for it to commit): all of them, or with `since` the days from that day on (the earlier days are
    kept; first days, cohorts and the daily indicators are re-derived from the activity rows).

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
        cursor = _Steps(raw, result.timings)
        state = _locked_cursor()
        _work_mem(raw)
        indexes = None
        if since is None:
            cursor.execute("TRUNCATE " + ", ".join(_TABLES))
            cursor.execute("DELETE FROM tracking_rollupbacklog")  # every event of the snapshot is read below
            indexes = _IndexesSetAside(cursor, _BULK_TABLES)
            cursor.execute(
                "CREATE TEMP TABLE rollup_first_events (person_key text, name text, first_day date) ON COMMIT DROP"
            )
        else:
            # What was queued since the fold above, folded in this snapshot: then every event it
            # sees is in the rollups and the days from `since` can be read again from all of them.
            while runs := _claim(raw, budget=chunk_events):
                _fold_chunk(cursor, runs=runs)
            cursor.execute("DELETE FROM tracking_activityday WHERE day >= %s", [since])
            cursor.execute("DELETE FROM tracking_activitytail WHERE day >= %s", [since])
            cursor.execute("DELETE FROM tracking_activityfirstevent WHERE first_day >= %s", [since])
            cursor.execute("DELETE FROM tracking_searchday WHERE day >= %s", [since])
        first, last, total = _day_span(cursor, since=since)
        if first is not None:
            days = (last - first).days + 1
            step = max(1, min(days, round(days * chunk_events / max(total, 1))))
            for offset in range(0, days, step):
                lo = first + timedelta(days=offset)
                hi = min(lo + timedelta(days=step), last + timedelta(days=1))
                where = "e.timestamp >= %(lo)s AND e.timestamp < %(hi)s"
                params = {"lo": _midnight(lo), "hi": _midnight(hi)}
                cursor.execute("activity", _INSERT_ACTIVITY.format(where=where), params)
                searches = _ADD_SEARCHES.format(where=where)
                if indexes is not None:  # each run of days is new rows: nothing to merge into
                    searches = searches.split("ON CONFLICT")[0]
                cursor.execute("searches", searches, params)
                if indexes is not None:
                    cursor.execute("first_events", _STAGE_FIRST_EVENTS.format(where=where), params)
                else:  # from `since` on: the earlier first days kept win where they are earlier
                    cursor.execute("first_events", _ADD_FIRST_EVENTS.format(where=where), params)
                result.chunks += 1
                if progress:
                    progress((hi - lo).days)
        if indexes is not None:
            indexes.restore("tracking_activityday")
            indexes.restore("tracking_searchday")
            indexes.restore("tracking_activitytail")
            cursor.execute("first_events", _FIRST_EVENTS_FROM_STAGE)
            cursor.execute("DROP TABLE rollup_first_events")
            indexes.restore("tracking_activityfirstevent")
        month = date(1, 1, 1) if since is None else since.replace(day=1)
        cursor.execute("DELETE FROM tracking_searchmonth WHERE month >= %s", [month])
        cursor.execute("searches", _SEARCH_MONTHS, {"since": month})
        _derive_all(cursor, indexes=indexes)
        cursor.execute("SELECT count(*), COALESCE(sum(events), 0) FROM tracking_dailyindicator")
        result.days, result.events = cursor.fetchone()
        cursor.execute("SELECT COALESCE(max(id), 0) FROM tracking_event")
        (highest,) = cursor.fetchone()
        state.events_folded = result.events
        state.last_event_id = highest
        state.updated_at = timezone.now()
        state.save()
        result.last_event_id = highest
    return result


def _midnight(day: date):
    return datetime.combine(day, datetime.min.time(), tzinfo=UTC)


def _day_span(cursor, *, since: date | None) -> tuple[date | None, date | None, int]:
    """First and last UTC day of the events to read, and how many there are (the chunk size)."""
    cursor.execute(
        f"SELECT min({_DAY}), max({_DAY}), count(*) FROM tracking_event e "
        "WHERE %(since)s::timestamptz IS NULL OR e.timestamp >= %(since)s::timestamptz",
        {"since": _midnight(since) if since else None},
    )
    return cursor.fetchone()


def days_to_rebuild(*, since: date | None = None) -> int:
    """How many days a rebuild reads (for the progress bar)."""
    with connection.cursor() as cursor:
        first, last, _count = _day_span(cursor, since=since)
    return 0 if first is None else (last - first).days + 1
