"""Indicator rollup speed: the nightly incremental run and a full rebuild, each against one
hand-written SQL aggregate over the same rows, and the dashboard pages rendered from the rollups.

    .venv/bin/python bench/indicators.py                       # 10,000,000 events over 180 days
    .venv/bin/python bench/indicators.py --events 2000000      # while developing
    .venv/bin/python bench/indicators.py --events 2000000 --repeat 3 --regenerate

It works in a database of its own, `<DATABASE_URL's name>_indbench` (created and migrated on first
use), so it never touches real data. Events are generated with set-based SQL and kept between runs
of the same size: `--days` days of history (app opens, page views, searches over a skewed set of
queries, orders and refunds) of `--events / 20` people drawn with a skew.

Measured, each --repeat times and interleaved with its baseline so that load from elsewhere on a
shared machine hits both alike (best and median reported):

- nightly: a new day's events (`--events / --days`, plus 1% late events with timestamps in the
  `--late-days` days before it: phones that were offline) arrive, and
  `tracking.rollups.fold_new_events` folds them in. Baseline: one hand-written statement that
  computes the same outputs for the touched days from the events (DAU, WAU and MAU from the 30
  days of events before each, new users by probing each person's earlier events, revenue); its
  answers are checked against the rollups'. The old baseline (per-day sums of the new rows
  only) is printed beside it.
- rebuild: `tracking.rollups.rebuild()` of every rollup from every event. Baseline: one statement
  computing per day the events, distinct people, orders and amounts of every event.
- dashboards: the real admin views (trends, retention heat map, searches, key behaviour, churn
  with its default sample and with 5,000 people) through Django's test client, logged in, median
  of 5 renders each (target under 200 ms); all of them read rollups only. (Funnels read raw
  events over the operator's window: not here.)

`--pages-only` times only the dashboards, on the rollups as the last run left them (rebuilt first
only if they do not hold every event).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchdb import bench_database_url, ensure_database, require_workload  # noqa: E402
from rfm import model_defaults  # noqa: E402

START = datetime(2026, 1, 1, tzinfo=UTC)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000, help="events of history (default 10,000,000)")
    parser.add_argument("--days", type=int, default=180, help="days of history (default 180)")
    parser.add_argument("--repeat", type=int, default=2, help="timed nightly runs and rebuilds (default 2)")
    parser.add_argument("--late-days", type=int, default=3, help="late events fall in the last N days (default 3)")
    parser.add_argument("--regenerate", action="store_true", help="drop and generate the data again")
    parser.add_argument("--seed", type=float, default=0.42, help="setseed() for the generator, in [-1, 1]")
    parser.add_argument(
        "--pages-only",
        action="store_true",
        help="only the dashboards (the rollups are rebuilt first only if they do not hold every event)",
    )
    return parser.parse_args()


ID_BLOCK = 1000  # the step of the event id sequence (tracking migration 0008)


def insert_events(cursor, *, count: int, start: datetime, span: timedelta, people: int, received: str) -> None:
    from tracking.models import Event

    cols, vals, params = model_defaults(
        Event, {"id", "event_id", "name", "kind", "timestamp", "received_at", "user_id", "anonymous_id", "properties"}
    )
    cursor.execute(
        f"""
        WITH blocks AS (
            -- Ids a block of the sequence at a time, as ingestion reserves them: consecutive runs.
            SELECT b - 1 AS block, nextval(pg_get_serial_sequence('tracking_event', 'id')) AS first
            FROM generate_series(1, ceil(%s::numeric / {ID_BLOCK})::int) b
        )
        INSERT INTO tracking_event (id, event_id, name, kind, timestamp, received_at, user_id, anonymous_id,
                                    properties{cols})
        SELECT blocks.first + (g - 1) %% {ID_BLOCK},
               gen_random_uuid(),
               CASE WHEN r < 0.50 THEN 'app_open' WHEN r < 0.75 THEN 'page_view' WHEN r < 0.87 THEN 'search'
                    WHEN r < 0.97 THEN 'order_paid' ELSE 'order_refunded' END,
               CASE WHEN r >= 0.87 THEN 'business' WHEN r >= 0.5 AND r < 0.75 THEN 'traffic' ELSE 'behavior' END,
               ts, {received}, 'b' || person, NULL,
               CASE WHEN r >= 0.75 AND r < 0.87
                        THEN jsonb_build_object('query', 'q' || floor(power(random(), 3) * 5000)::int,
                                                'results', floor(random() * 4)::int)
                    WHEN r >= 0.87
                        THEN jsonb_build_object('order_id', 'o' || g,
                                                'amount', ((100 + floor(random() * 50000)) / 100)::numeric(10, 2)::text)
                    ELSE '{{}}'::jsonb END
               {vals}
        FROM (SELECT g, random() AS r, %s::timestamptz + random() * %s::interval AS ts,
                     1 + floor(power(random(), 2) * %s)::int AS person
              FROM generate_series(1, %s) g) x
        JOIN blocks ON blocks.block = (x.g - 1) / {ID_BLOCK}
        """,
        [count, *params, start, span, people, count],
    )


def generate(events: int, days: int, seed: float) -> None:
    from django.db import connection

    print(f"generating {events:,} events over {days} days ...", flush=True)
    started = time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE tracking_event, tracking_rollupcursor, tracking_rollupbacklog")
        cursor.execute("SELECT setseed(%s)", [seed])
        insert_events(
            cursor,
            count=events,
            start=START,
            span=timedelta(days=days),
            people=events // 20,
            received="ts + interval '5 seconds'",
        )
        cursor.execute("ANALYZE tracking_event")
    print(f"  generated in {time.monotonic() - started:.1f} s", flush=True)


def have_data(events: int) -> bool:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = 'tracking_event'::regclass")
        estimate = cursor.fetchone()[0]
        if abs(estimate - events) > events * 0.05:
            return False
        cursor.execute("SELECT count(*) FROM tracking_event WHERE timestamp >= %s", [START])
        return cursor.fetchone()[0] >= events


_AMOUNT = "CASE WHEN e.properties->>'amount' ~ '^[0-9]+(\\.[0-9]+)?$' THEN (e.properties->>'amount')::numeric END"
BASELINE = f"""
CREATE TEMP TABLE bench_baseline AS
SELECT (e.timestamp AT TIME ZONE 'UTC')::date AS day, count(*) AS events,
       count(DISTINCT COALESCE(e.user_id, e.anonymous_id)) AS people,
       count(*) FILTER (WHERE e.name = 'order_paid') AS orders,
       sum({_AMOUNT}) FILTER (WHERE e.name = 'order_paid') AS paid
FROM tracking_event e WHERE e.id > %s
GROUP BY 1
"""


# The nightly run's outputs for the days its new events touch, by hand from the events: DAU, WAU,
# MAU (distinct people of the 1/7/30 days ending on the day), new users (no event before the day,
# probed on the person indexes) and revenue.
_DAY = "(e.timestamp AT TIME ZONE 'UTC')::date"
_MIDNIGHT = "(t.day::timestamp AT TIME ZONE 'UTC')"
NIGHTLY_BASELINE = f"""
CREATE TEMP TABLE bench_baseline AS
WITH touched AS MATERIALIZED (
    SELECT DISTINCT {_DAY} AS day FROM tracking_event e WHERE e.id > %s
), ev AS MATERIALIZED (
    SELECT COALESCE(e.user_id, e.anonymous_id) AS person, {_DAY} AS day,
           CASE e.name WHEN 'order_paid' THEN {_AMOUNT} WHEN 'order_refunded' THEN -{_AMOUNT} END AS amount
    FROM tracking_event e
    WHERE e.timestamp >= (SELECT (min(day) - 29)::timestamp AT TIME ZONE 'UTC' FROM touched)
      AND e.timestamp < (SELECT (max(day) + 1)::timestamp AT TIME ZONE 'UTC' FROM touched)
)
SELECT t.day,
       (SELECT count(DISTINCT person) FROM ev WHERE ev.day = t.day) AS dau,
       (SELECT count(DISTINCT person) FROM ev WHERE ev.day BETWEEN t.day - 6 AND t.day) AS wau,
       (SELECT count(DISTINCT person) FROM ev WHERE ev.day BETWEEN t.day - 29 AND t.day) AS mau,
       (SELECT count(DISTINCT person) FROM ev WHERE ev.day = t.day AND NOT EXISTS (
            SELECT 1 FROM tracking_event e WHERE e.user_id = ev.person AND e.timestamp < {_MIDNIGHT})
          AND NOT EXISTS (
            SELECT 1 FROM tracking_event e WHERE e.anonymous_id = ev.person AND e.user_id IS NULL
              AND e.timestamp < {_MIDNIGHT})) AS new_users,
       (SELECT COALESCE(sum(amount), 0) FROM ev WHERE ev.day = t.day) AS revenue
FROM touched t
"""


def run_baseline(after: int, sql: str = BASELINE) -> float:
    from django.db import connection, transaction

    with transaction.atomic(), connection.cursor() as cursor:
        started = time.monotonic()
        cursor.execute(sql, [after])
        elapsed = time.monotonic() - started
        if sql is NIGHTLY_BASELINE:
            check_nightly(cursor)
        cursor.execute("DROP TABLE bench_baseline")
    return elapsed


def check_nightly(cursor) -> None:
    """The baseline's answers are the rollups' (after the run that follows it): checked next time."""
    cursor.execute("CREATE TEMP TABLE IF NOT EXISTS bench_nightly_expected AS TABLE bench_baseline WITH NO DATA")
    cursor.execute("TRUNCATE bench_nightly_expected")
    cursor.execute("INSERT INTO bench_nightly_expected SELECT * FROM bench_baseline")


def check_nightly_against_rollups() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT count(*) FROM bench_nightly_expected b
            LEFT JOIN tracking_dailyindicator d ON d.day = b.day
            WHERE (b.dau, b.wau, b.mau, b.new_users) IS DISTINCT FROM
                  (d.active_users, d.weekly_active_users, d.monthly_active_users, d.new_users)
               OR round(b.revenue, 2) <> d.revenue
            """
        )
        differing = cursor.fetchone()[0]
    if differing:
        raise SystemExit(f"{differing} touched day(s) of the nightly run differ from the hand-written aggregate")


def check_against_events() -> None:
    """The rollups' days against a direct aggregate of the events (the sums must agree)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(BASELINE, [0])
        cursor.execute(
            """
            SELECT count(*) FROM bench_baseline b
            LEFT JOIN tracking_dailyindicator d ON d.day = b.day
            WHERE (b.events, b.people, b.orders) IS DISTINCT FROM (d.events, d.active_users, d.orders)
               OR round(COALESCE(b.paid, 0), 2) <> d.paid_amount
            """
        )
        differing = cursor.fetchone()[0]
        cursor.execute("DROP TABLE bench_baseline")
    if differing:
        raise SystemExit(f"{differing} day(s) of the rollups differ from the events")


# The key-behaviour groups and the churn groups' sizes worked out from the raw events, to check
# the rollups' answers on the bench's data.
_KEY_BEHAVIOUR_FROM_EVENTS = """
WITH cohort AS (
    SELECT person_key, first_day FROM tracking_activityperson WHERE first_day BETWEEN %(start)s AND %(end)s
), did AS (
    SELECT DISTINCT c.person_key FROM cohort c
    JOIN tracking_event e ON COALESCE(e.user_id, e.anonymous_id) = c.person_key
         AND e.timestamp >= (c.first_day::timestamp AT TIME ZONE 'UTC')
         AND e.timestamp < ((c.first_day + %(first_days)s)::timestamp AT TIME ZONE 'UTC')
    WHERE e.name = %(event)s
), kept AS (
    SELECT DISTINCT c.person_key FROM cohort c
    JOIN tracking_activityday a ON a.person_key = c.person_key
         AND a.day BETWEEN c.first_day + %(retained_from)s AND c.first_day + %(retained_to)s
)
SELECT d.person_key IS NOT NULL, count(*), count(k.person_key)
FROM cohort c LEFT JOIN did d ON d.person_key = c.person_key LEFT JOIN kept k ON k.person_key = c.person_key
GROUP BY 1
"""
_CHURN_GROUPS_FROM_EVENTS = f"""
SELECT count(*) FILTER (WHERE churned), count(*) FILTER (WHERE NOT churned) FROM (
    SELECT NOT bool_or({_DAY} > %(end)s) AS churned FROM tracking_event e
    WHERE e.timestamp >= (%(start)s::date::timestamp AT TIME ZONE 'UTC')
      AND e.timestamp < ((%(end)s::date + %(churn_days)s + 1)::timestamp AT TIME ZONE 'UTC')
    GROUP BY COALESCE(e.user_id, e.anonymous_id) HAVING bool_or({_DAY} <= %(end)s)
) p
"""


def check_behaviours(last_day) -> None:
    from django.db import connection

    from indicators import analyses

    start, end = last_day - timedelta(days=89), last_day - timedelta(days=30)
    report = analyses.key_behaviour(event_name="order_paid", start=start, end=end, first_days=7, retained_days=14)
    churn = analyses.churn_behaviours(start=start, end=end, churn_days=30, last_events=5)
    with connection.cursor() as cursor:
        cursor.execute(
            _KEY_BEHAVIOUR_FROM_EVENTS,
            {"start": start, "end": end, "event": "order_paid", "first_days": 7, "retained_from": 7, "retained_to": 20},
        )
        groups = {did: (total, kept) for did, total, kept in cursor.fetchall()}
        cursor.execute(_CHURN_GROUPS_FROM_EVENTS, {"start": start, "end": end, "churn_days": 30})
        churn_groups = cursor.fetchone()
    got = {g["group"] == "did": (g["users"], g["retained"]) for g in report["groups"]}
    if got != groups:
        raise SystemExit(f"key behaviour from the rollups {got} differs from the events {groups}")
    if (churn["churned_users"], churn["retained_users"]) != churn_groups:
        raise SystemExit(f"churn groups from the rollups differ from the events: {churn_groups}")
    print(f"key behaviour and churn groups ({start} to {end}) checked against the events", flush=True)


def time_pages(days_end) -> list[tuple[str, float, int]]:
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.test import Client

    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    user, _ = get_user_model().objects.get_or_create(
        username="bench-admin", defaults={"is_staff": True, "is_superuser": True}
    )
    client = Client()
    client.force_login(user)
    end = days_end.isoformat()
    start90 = (days_end - timedelta(days=89)).isoformat()
    start180 = (days_end - timedelta(days=179)).isoformat()
    start14 = (days_end - timedelta(days=13)).isoformat()
    start30 = (days_end - timedelta(days=29)).isoformat()
    pages = [
        ("trends: DAU, 90 days", f"/admin/indicators/dailyindicator/?indicator=dau&start={start90}&end={end}"),
        ("trends: revenue, 90 days", f"/admin/indicators/dailyindicator/?indicator=revenue&start={start90}&end={end}"),
        (
            "retention: monthly, 180 days",
            f"/admin/indicators/dailyindicator/retention/?granularity=month&basis=activity&start={start180}&end={end}&periods=6",
        ),
        (
            "retention: daily, 30 days",
            f"/admin/indicators/dailyindicator/retention/?granularity=day&basis=activity&start={start30}&end={end}&periods=30",
        ),
        ("searches: 90 days", f"/admin/indicators/dailyindicator/search/?start={start90}&end={end}"),
        (
            "key behaviour: 90 days",
            f"/admin/indicators/dailyindicator/key-behaviour/?event=order_paid&start={start90}&end={end}&first_days=7&retained_from=7&retained_days=14",
        ),
        (
            "churn: 90 days",
            f"/admin/indicators/dailyindicator/churn/?start={start90}&end={end}&churn_days=30&last_events=5",
        ),
        (
            "churn: 90 days, sample of 5,000 people",
            f"/admin/indicators/dailyindicator/churn/?start={start90}&end={end}&churn_days=30&last_events=5&sample=5000",
        ),
        (
            "key behaviour: 14 days",
            f"/admin/indicators/dailyindicator/key-behaviour/?event=search&start={start14}&end={end}&first_days=7&retained_from=7&retained_days=7",
        ),
        (
            "churn: 14 days",
            f"/admin/indicators/dailyindicator/churn/?start={start14}&end={end}&churn_days=7&last_events=3",
        ),
    ]
    out = []
    for label, url in pages:
        timings = []
        for _ in range(5):
            started = time.monotonic()
            reply = client.get(url)
            timings.append(time.monotonic() - started)
            if reply.status_code != 200:
                raise SystemExit(f"{url}: {reply.status_code}")
        out.append((label, statistics.median(timings), len(reply.content)))
    return out


def steps(result) -> str:
    return ", ".join(f"{name} {seconds:.2f}" for name, seconds in sorted(result.timings.items(), key=lambda kv: -kv[1]))


def main() -> None:
    args = parse_args()
    url = bench_database_url("_indbench")
    ensure_database(url)
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.development")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from indicators import rollups

    call_command("migrate", verbosity=0)
    if args.regenerate or not have_data(args.events):
        generate(args.events, args.days, args.seed)
    if args.pages_only:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM tracking_event")
            total = cursor.fetchone()[0]
        if not rollups_hold_every_event(total):
            started = time.monotonic()
            rollups.rebuild()
            print(f"rebuild: {time.monotonic() - started:.1f} s", flush=True)
        require_workload("events", total, at_least=10_000)
        print(f"{total:,} events")
        with connection.cursor() as cursor:
            cursor.execute("SELECT max(day) FROM tracking_dailyindicator")
            check_behaviours(cursor.fetchone()[0])
        print_pages()
        return
    with connection.cursor() as cursor:
        # History only: drop the "new days" a previous run of the bench added.
        cursor.execute(
            "DELETE FROM tracking_event WHERE timestamp >= %s OR received_at > %s",
            [START + timedelta(days=args.days), START + timedelta(days=args.days + 1)],
        )
        cursor.execute("SELECT count(*) FROM tracking_event")
        total = cursor.fetchone()[0]
    require_workload("events of the history", total, at_least=10_000)

    print(
        f"{total:,} events; load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}",
        flush=True,
    )
    started = time.monotonic()
    first = rollups.rebuild()
    print(f"first rebuild: {time.monotonic() - started:.1f} s ({first.days} days); steps: {steps(first)}", flush=True)
    check_against_events()

    nightly, nightly_base, nightly_rows_base, rebuilds, rebuild_base = [], [], [], [], []
    per_day = args.events // args.days
    for i in range(args.repeat):
        day = START + timedelta(days=args.days + i)
        with connection.cursor() as cursor:
            cursor.execute("SELECT COALESCE(max(id), 0) FROM tracking_event")
            after = cursor.fetchone()[0]
            insert_events(
                cursor, count=per_day, start=day, span=timedelta(days=1), people=args.events // 20, received="now()"
            )
            insert_events(
                cursor,
                count=per_day // 100,
                start=day - timedelta(days=args.late_days),
                span=timedelta(days=args.late_days),
                people=args.events // 20,
                received="now()",
            )
            # Queued for the rollups as ingestion queues what it stores (one run: nothing else writes here).
            cursor.execute(
                "INSERT INTO tracking_rollupbacklog (first_event_id, last_event_id) "
                "SELECT min(id), max(id) FROM tracking_event WHERE id > %s",
                [after],
            )
            cursor.execute("ANALYZE tracking_event")
        new = per_day + per_day // 100
        nightly_base.append(run_baseline(after, NIGHTLY_BASELINE))
        nightly_rows_base.append(run_baseline(after))
        started = time.monotonic()
        result = rollups.fold_new_events()
        nightly.append(time.monotonic() - started)
        assert result.events == new, (result.events, new)
        check_nightly_against_rollups()
        print(
            f"  nightly {i + 1}: {nightly[-1]:.2f} s for {new:,} events ({result.days} days touched); "
            f"baseline (same outputs) {nightly_base[-1]:.2f} s, (per-day sums of the new rows) "
            f"{nightly_rows_base[-1]:.2f} s; steps: {steps(result)}",
            flush=True,
        )

        rebuild_base.append(run_baseline(0))
        started = time.monotonic()
        rebuilt = rollups.rebuild()
        rebuilds.append(time.monotonic() - started)
        print(
            f"  rebuild {i + 1}: {rebuilds[-1]:.1f} s; baseline {rebuild_base[-1]:.1f} s; steps: {steps(rebuilt)}",
            flush=True,
        )
    check_against_events()

    with connection.cursor() as cursor:
        cursor.execute("SELECT max(day) FROM tracking_dailyindicator")
        check_behaviours(cursor.fetchone()[0])
        cursor.execute("SELECT count(*) FROM tracking_event")
        total = cursor.fetchone()[0]
        cursor.execute("SELECT count(*) FROM tracking_activityday")
        activity_rows = cursor.fetchone()[0]
    print(f"events: {total:,}; activity rows (person x day): {activity_rows:,}")
    print(
        f"nightly incremental: best {min(nightly):.2f} s, median {statistics.median(nightly):.2f} s; "
        f"ratio to one hand-written statement of the same outputs (DAU/WAU/MAU/new users/revenue of "
        f"the touched days): {min(nightly) / min(nightly_base):.2f} (best), "
        f"{statistics.median(nightly) / statistics.median(nightly_base):.2f} (median); "
        f"to per-day sums of the new rows only: {min(nightly) / min(nightly_rows_base):.2f} (best)"
    )
    print(
        f"full rebuild: best {min(rebuilds):.1f} s; ratio to one aggregate of every event: "
        f"{min(rebuilds) / min(rebuild_base):.2f} (best), "
        f"{statistics.median(rebuilds) / statistics.median(rebuild_base):.2f} (median)"
    )
    print(f"nightly vs rebuild: {min(rebuilds) / min(nightly):.0f}x less work")
    print_pages()


def rollups_hold_every_event(total: int) -> bool:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT (SELECT COALESCE(sum(events), 0) FROM tracking_dailyindicator), "
            "EXISTS (SELECT 1 FROM tracking_rollupbacklog)"
        )
        folded, queued = cursor.fetchone()
    return folded == total and not queued


def print_pages() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT max(day) FROM tracking_dailyindicator")
        last_day = cursor.fetchone()[0]
    print(f"load: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    for label, seconds, size in time_pages(last_day):
        target = "  ok" if seconds < 0.2 else "  OVER 200 ms"
        print(f"page {label}: {seconds * 1000:.0f} ms ({size:,} bytes){target}", flush=True)
    print(f"load: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
