"""The rollups' SQL, each statement once, as a named constant. Statements that read a slice of the
events take it as `{events}`, a condition on `tracking_event e` composed by `psycopg.sql` (the
id runs of a fold, a time range of a rebuild); the rest are complete as they stand."""

from __future__ import annotations

from psycopg import sql

from indicators.models import SAMPLE_BUCKETS, TAIL_EVENTS

DAY_PERIODS = 30  # daily cohorts keep day 0 to day 30

_PERSON = "COALESCE(e.user_id, e.anonymous_id)"
_DAY = "(e.timestamp AT TIME ZONE 'UTC')::date"
# Amounts are decimal strings by the API contract; anything else counts as 0 rather than failing
# the whole run on one bad event. (Braces doubled: the statements go through `sql.SQL.format`.)
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
    WHERE {{events}}
    ORDER BY 1, 2, e.timestamp DESC, e.id DESC
) e
GROUP BY 1, 2
"""
# A fold's chunk, aggregated once into a temporary table the other statements read.
STAGE_BATCH = sql.SQL("CREATE TEMP TABLE rollup_batch ON COMMIT DROP AS" + _AGGREGATE)
_COLUMNS = "person_key, day, events, orders, refunds, paid_amount, refunded_amount, first_at, last_at"
# The sample bucket of a person key (`ActivityTail.bucket`): the top bits of its hash, so that
# buckets go up with `hashtext`.


def _bucket(key: str) -> str:
    return f"((hashtext({key}) >> {32 - SAMPLE_BUCKETS.bit_length() + 1}) + {SAMPLE_BUCKETS // 2})::smallint"


_TAIL_COLUMNS = "bucket, day, person_key, names, ats, ids"
# Tails are written in key order: the churn page reads a few buckets, and a person's days side by
# side on disk (as a rebuild's runs of days leave them) are a page or two instead of one per day.
# A rebuild's run of days: its person-days are new rows, the activity and the tails of one aggregate.
INSERT_ACTIVITY = sql.SQL(f"""
WITH agg AS MATERIALIZED ({_AGGREGATE}), tails AS (
    INSERT INTO tracking_activitytail ({_TAIL_COLUMNS})
    SELECT {_bucket("person_key")} AS bucket, day, person_key, tail_names, tail_ats, tail_ids FROM agg
    ORDER BY bucket, person_key, day
)
INSERT INTO tracking_activityday ({_COLUMNS}) SELECT {_COLUMNS} FROM agg
""")

# A chunk's tails merged into the day's: the newest of both (an event is never in both twice:
# UNION drops a repeat, so merging the same events again changes nothing).
ADD_TAILS = f"""
INSERT INTO tracking_activitytail AS t ({_TAIL_COLUMNS})
SELECT {_bucket("person_key")} AS bucket, day, person_key, tail_names, tail_ats, tail_ids FROM rollup_batch
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
STAGE_FIRST_EVENTS = sql.SQL(f"""
INSERT INTO rollup_first_events (person_key, name, first_day)
SELECT {_PERSON}, e.name, min({_DAY}) FROM tracking_event e WHERE {{events}} GROUP BY 1, 2
""")
FIRST_EVENTS_FROM_STAGE = """
INSERT INTO tracking_activityfirstevent (person_key, name, first_day)
SELECT person_key, name, min(first_day) FROM rollup_first_events GROUP BY 1, 2
"""

# First day of each event name per person: only ever moves back.
ADD_FIRST_EVENTS = sql.SQL(f"""
INSERT INTO tracking_activityfirstevent AS f (person_key, name, first_day)
SELECT {_PERSON}, e.name, min({_DAY}) FROM tracking_event e WHERE {{events}} GROUP BY 1, 2
ON CONFLICT (person_key, name) DO UPDATE SET first_day = EXCLUDED.first_day WHERE EXCLUDED.first_day < f.first_day
""")

# Person-days by day and next day of activity. A chunk's new person-days change the next day of
# their people's rows from the one before the first new day (`lo`) to the last new one (`hi`)
# only: those rows' pairs are subtracted before the chunk's activity is added and added after
# it. The next day after `hi` (no new day there) is probed once, before.
GAP_PEOPLE = """
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
SUBTRACT_GAPS = f"""
UPDATE tracking_activitygap c SET users = c.users - p.users FROM ({_GAP_PAIRS}) p
WHERE c.day = p.day AND c.next_day = p.next_day
"""
ADD_GAPS = f"""
INSERT INTO tracking_activitygap AS c (day, next_day, users) {_GAP_PAIRS}
ON CONFLICT (day, next_day) DO UPDATE SET users = c.users + EXCLUDED.users
"""

ADD_ACTIVITY = """
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
_SEARCHES_BY_DAY = f"""
SELECT {_DAY}, left(lower(btrim(e.properties->>'query')), 200), count(*), count(*) FILTER (WHERE {_RESULTS_ZERO})
FROM tracking_event e
WHERE ({{events}}) AND e.name = 'search' AND btrim(COALESCE(e.properties->>'query', '')) <> ''
GROUP BY 1, 2
"""
ADD_SEARCHES = sql.SQL(f"""
INSERT INTO tracking_searchday AS s (day, query, searches, zero_results) {_SEARCHES_BY_DAY}
ON CONFLICT (day, query) DO UPDATE SET
    searches = s.searches + EXCLUDED.searches,
    zero_results = s.zero_results + EXCLUDED.zero_results
""")
# A full rebuild's runs of days are new rows: nothing to merge into.
INSERT_SEARCHES = sql.SQL(f"INSERT INTO tracking_searchday (day, query, searches, zero_results) {_SEARCHES_BY_DAY}")

# The same searches by month (additive too).
ADD_SEARCH_MONTHS = sql.SQL(f"""
INSERT INTO tracking_searchmonth AS s (month, query, searches, zero_results)
SELECT date_trunc('month', {_DAY})::date, left(lower(btrim(e.properties->>'query')), 200), count(*),
       count(*) FILTER (WHERE {_RESULTS_ZERO})
FROM tracking_event e
WHERE ({{events}}) AND e.name = 'search' AND btrim(COALESCE(e.properties->>'query', '')) <> ''
GROUP BY 1, 2
ON CONFLICT (month, query) DO UPDATE SET
    searches = s.searches + EXCLUDED.searches,
    zero_results = s.zero_results + EXCLUDED.zero_results
""")
# A rebuild sums the months again from the days.
SEARCH_MONTHS = """
INSERT INTO tracking_searchmonth (month, query, searches, zero_results)
SELECT date_trunc('month', day)::date, query, sum(searches), sum(zero_results)
FROM tracking_searchday WHERE day >= %(since)s GROUP BY 1, 2
"""

# First and last days of every person, from their activity: into an emptied table (a rebuild that
# set its indexes aside: no conflict to look for), or over the rows there are.
_PERSONS_OF_ACTIVITY = """
SELECT a.person_key, min(a.day), max(a.day), min(a.day) FILTER (WHERE a.orders > 0)
FROM tracking_activityday a
GROUP BY a.person_key
"""
INSERT_PERSONS = f"""
INSERT INTO tracking_activityperson (person_key, first_day, last_day, first_order_day) {_PERSONS_OF_ACTIVITY}
"""
UPSERT_PERSONS = f"""
INSERT INTO tracking_activityperson AS p (person_key, first_day, last_day, first_order_day) {_PERSONS_OF_ACTIVITY}
ON CONFLICT (person_key) DO UPDATE SET
    first_day = EXCLUDED.first_day, last_day = EXCLUDED.last_day, first_order_day = EXCLUDED.first_order_day
"""


# Weeks and months of dates in date and integer arithmetic: date_trunc() goes through a
# timestamp with time zone and extract() through numeric, several times slower over a million rows.
# 0001-01-01 was a Monday.
def _week(d: str) -> str:
    return f"({d} - (({d} - DATE '0001-01-01') % 7))"


def _month(d: str) -> str:
    return f"({d} - (date_part('day', {d})::int - 1))"


def _month_index(d: str) -> str:
    return f"(date_part('year', {d}) * 12 + date_part('month', {d}))::int"


def _cohort_contributions(base: str) -> str:
    """Cohort cells (basis, granularity, cohort, period, users) of the activity rows `base`
    selects (person_key, day, orders, first_day, first_order_day). Week and month periods count a
    person once however many days they were active."""
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
            f"SELECT DISTINCT '{basis}', 'week', {_week(first)}, "
            f"({_week('b.day')} - {_week(first)}) / 7, b.person_key "
            f"FROM base b WHERE {first} IS NOT NULL AND {active}"
        )
        parts.append(
            f"SELECT DISTINCT '{basis}', 'month', {_month(first)}, "
            f"{_month_index('b.day')} - {_month_index(first)}, b.person_key "
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
CHUNK_PEOPLE = """
CREATE TEMP TABLE rollup_people ON COMMIT DROP AS
SELECT b.person_key, b.min_day, b.max_day, b.min_order_day, p.first_day, p.first_order_day,
       (p.person_key IS NULL OR b.min_day < p.first_day) AS first_moves,
       (b.min_order_day IS NOT NULL AND (p.first_order_day IS NULL OR b.min_order_day < p.first_order_day))
       AS first_order_moves
FROM (SELECT person_key, min(day) AS min_day, max(day) AS max_day, min(day) FILTER (WHERE orders > 0) AS min_order_day
      FROM rollup_batch GROUP BY person_key) b
LEFT JOIN tracking_activityperson p ON p.person_key = b.person_key
"""
RANGES = """
CREATE TEMP TABLE rollup_ranges ON COMMIT DROP AS
SELECT person_key, DATE '0001-01-01' AS lo, DATE '9999-12-31' AS hi FROM rollup_people
WHERE first_moves OR first_order_moves
"""

# Anyone else keeps their cohort: each cell they are not yet counted in gains them. A day cell when
# the chunk brings a day they had no row for (for `purchase`: no order on), a week (month) cell when
# they had no such day in that week (month): one probe of the (person, day) key each, run before
# the chunk's activity is added.
STAYER_CELLS = f"""
INSERT INTO tracking_retentioncell AS c (basis, granularity, cohort, period, users)
WITH rows AS MATERIALIZED (
    SELECT b.person_key, b.day, b.orders > 0 AS ordered, p.first_day, p.first_order_day,
           old.day IS NOT NULL AS had_day, COALESCE(old.orders, 0) > 0 AS had_order
    FROM rollup_batch b
    JOIN rollup_people p ON p.person_key = b.person_key AND NOT (p.first_moves OR p.first_order_moves)
    LEFT JOIN tracking_activityday old ON old.person_key = b.person_key AND old.day = b.day
), spans AS (
    SELECT DISTINCT person_key, 'week' AS granularity, {_week("day")} AS lo,
           {_week("day")} + 6 AS hi, ordered, first_day, first_order_day
    FROM rows
    UNION
    SELECT DISTINCT person_key, 'month', {_month("day")},
           ({_month("day")} + interval '1 month - 1 day')::date, ordered, first_day, first_order_day
    FROM rows
), cells AS (
    SELECT 'activity' AS basis, 'day' AS granularity, first_day AS cohort, day - first_day AS period
    FROM rows WHERE NOT had_day AND day - first_day <= {DAY_PERIODS}
    UNION ALL
    SELECT 'purchase', 'day', first_order_day, day - first_order_day
    FROM rows WHERE ordered AND NOT had_order AND day - first_order_day <= {DAY_PERIODS}
    UNION ALL
    SELECT DISTINCT ON (s.person_key, s.granularity, s.lo) 'activity', s.granularity,
           CASE s.granularity WHEN 'week' THEN {_week("s.first_day")}
                ELSE {_month("s.first_day")} END,
           CASE s.granularity WHEN 'week' THEN (s.lo - {_week("s.first_day")}) / 7
                ELSE {_month_index("s.lo")} - {_month_index("s.first_day")} END
    FROM spans s
    WHERE NOT EXISTS (SELECT 1 FROM tracking_activityday a
                      WHERE a.person_key = s.person_key AND a.day BETWEEN s.lo AND s.hi)
    UNION ALL
    SELECT DISTINCT ON (s.person_key, s.granularity, s.lo) 'purchase', s.granularity,
           CASE s.granularity WHEN 'week' THEN {_week("s.first_order_day")}
                ELSE {_month("s.first_order_day")} END,
           CASE s.granularity WHEN 'week' THEN (s.lo - {_week("s.first_order_day")}) / 7
                ELSE {_month_index("s.lo")} - {_month_index("s.first_order_day")} END
    FROM spans s
    WHERE s.ordered AND NOT EXISTS (SELECT 1 FROM tracking_activityday a
                                    WHERE a.person_key = s.person_key AND a.day BETWEEN s.lo AND s.hi AND a.orders > 0)
)
SELECT basis, granularity, cohort, period, count(*) FROM cells GROUP BY 1, 2, 3, 4
ON CONFLICT (basis, granularity, cohort, period) DO UPDATE SET users = c.users + EXCLUDED.users
"""
# Activity only ever grows, so a person's first and last days move with the chunk's alone.
PERSONS_FROM_CHUNK = """
INSERT INTO tracking_activityperson AS p (person_key, first_day, last_day, first_order_day)
SELECT person_key, min_day, max_day, min_order_day FROM rollup_people
ON CONFLICT (person_key) DO UPDATE SET
    first_day = LEAST(p.first_day, EXCLUDED.first_day),
    last_day = GREATEST(p.last_day, EXCLUDED.last_day),
    first_order_day = LEAST(p.first_order_day, EXCLUDED.first_order_day)
"""


def _add_cells(base: str) -> str:
    return f"""
INSERT INTO tracking_retentioncell AS c (basis, granularity, cohort, period, users)
{_cohort_contributions(base)}
ON CONFLICT (basis, granularity, cohort, period) DO UPDATE SET users = c.users + EXCLUDED.users
"""


# Cohort cells moved by a chunk: its people's rows within their ranges subtracted before the
# chunk and added after it; a rebuild adds every row's.
ADD_CELLS_OF_RANGES = _add_cells(_RANGE_ROWS)
ADD_CELLS_OF_ALL = _add_cells(_ALL_ROWS)
SUBTRACT_CELLS_OF_RANGES = f"""
UPDATE tracking_retentioncell c SET users = c.users - old.users
FROM ({_cohort_contributions(_RANGE_ROWS)}) old
WHERE c.basis = old.basis AND c.granularity = old.granularity AND c.cohort = old.cohort AND c.period = old.period
"""


# The day's indicators that depend only on that day's activity: of the days a chunk touched, or
# of every day (a rebuild).
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
"""
_DAYS_CONFLICT = """
GROUP BY a.day
ON CONFLICT (day) DO UPDATE SET
    events = EXCLUDED.events, active_users = EXCLUDED.active_users, new_users = EXCLUDED.new_users,
    orders = EXCLUDED.orders, refunds = EXCLUDED.refunds, paid_amount = EXCLUDED.paid_amount,
    refunded_amount = EXCLUDED.refunded_amount, revenue = EXCLUDED.revenue,
    paying_users = EXCLUDED.paying_users, repeat_buyers = EXCLUDED.repeat_buyers, updated_at = now()
"""
DAYS_TOUCHED = _DAYS + "WHERE a.day IN (SELECT day FROM rollup_days)" + _DAYS_CONFLICT
DAYS_ALL = _DAYS + _DAYS_CONFLICT

# WAU and MAU of every day from %(lo)s to %(hi)s. Each activity day of a person covers the 7 (30)
# days from it, cut short where that person's next activity day takes over, so the pieces never
# overlap and a running sum of +1/-1 at their ends counts distinct people without a self-join.
_WINDOW_ROWS = """
r AS (
    SELECT day, lead(day) OVER (PARTITION BY person_key ORDER BY day) AS nxt
    FROM tracking_activityday WHERE day BETWEEN %(lo)s::date - 29 AND %(hi)s::date
)"""
_WINDOW_COUNTS = """
cover AS (
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
# A rebuild's pass over every person-day (from the first day on) counts the person-days by their
# next day too (`ActivityGap`).
_GAPS_OF_WINDOW_ROWS = """
gaps AS (
    INSERT INTO tracking_activitygap (day, next_day, users)
    SELECT day, COALESCE(nxt, DATE '9999-12-31'), count(*) FROM r GROUP BY 1, 2
)"""
ACTIVE_WINDOWS = f"WITH {_WINDOW_ROWS}, {_WINDOW_COUNTS}"
ACTIVE_WINDOWS_AND_GAPS = f"WITH {_WINDOW_ROWS}, {_GAPS_OF_WINDOW_ROWS}, {_WINDOW_COUNTS}"

# A chunk's change to the WAU and MAU of days already counted (run before its activity is added):
# a person of the chunk joins the 7 (30) day window of day x when the chunk brings them a day in
# it and their latest earlier activity day up to x (one backward probe of the (person, day) key)
# is older than the window. Only the days within 29 days after a chunk's day can change.
ADD_ACTIVE_WINDOWS = """
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
LAST_DAY_WINDOWS = """
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
BULK_TABLES = (
    "tracking_activityday",
    "tracking_searchday",
    "tracking_activityperson",
    "tracking_activitytail",
    "tracking_activityfirstevent",
)
TABLES = (
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
