"""Events at scale on both events stores: N events loaded into PostgreSQL (the rollups folded from
them) and shipped to ClickHouse through the real shipping path, then every indicator page's
analysis timed on each engine, p95 of `--repeat` runs after one untimed call, with the ratios.

    .venv/bin/python bench/scale.py                          # 100,000,000 events over 365 days
    .venv/bin/python bench/scale.py --events 2000000 --days 120

It works in a database of its own, `<DATABASE_URL's name>_scalebench`, and an embedded ClickHouse
(chdb) under `.run/scalebench-chdb` unless `--clickhouse-url` names a server. Loading:

- PostgreSQL: events generated server-side by set-based SQL (`bench/indicators.py`'s generator:
  app opens, page views, searches over a skewed set of queries, orders and refunds of N/20 people
  drawn with a skew; ids a sequence block at a time, as ingestion reserves them), then
  `indicators.rollups.rebuild()`, which is what the PostgreSQL engine's pages read.
- ClickHouse: every event through `tracking.shipping.ship_events` (the outbox, COPY out of
  PostgreSQL, batched inserts with deduplication tokens): the throughput printed is the real
  shipping path's, in events/s, over the whole load.

Pages (the analyses behind the dashboards, called as the views call them): DAU and revenue series
of 90 days, monthly and daily retention, searches, purchases, key behaviour, churn (the default
sample), a 3-step funnel, and one window the rollups do not cover, distinct people over 45 days
from raw events (PostgreSQL's raw scan against ClickHouse's). The PostgreSQL pages are also timed
"before" (the statements as the analyses ran them before the events store existed) interleaved
with "after", so the default path's cost of the interface shows.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from benchdb import bench_database_url, ensure_database, require_workload  # noqa: E402

START = datetime(2026, 1, 1, tzinfo=UTC)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000_000, help="events (default 100,000,000)")
    parser.add_argument("--days", type=int, default=365, help="days of history (default 365)")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per page and engine (default 7)")
    parser.add_argument("--batch", type=int, default=100_000, help="events per shipping batch (default 100,000)")
    parser.add_argument("--clickhouse-url", default=f"chdb://{ROOT / '.run' / 'scalebench-chdb'}")
    parser.add_argument("--regenerate", action="store_true", help="generate and load again")
    parser.add_argument("--seed", type=float, default=0.42, help="setseed() for the generator, in [-1, 1]")
    return parser.parse_args()


def p95(timings: list[float]) -> float:
    return statistics.quantiles(timings, n=20, method="inclusive")[18] if len(timings) > 1 else timings[0]


def _generator():
    """`bench/indicators.py`'s event generator (its file name is the Django app's, so by path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_indicators", ROOT / "bench" / "indicators.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load(args) -> tuple[int, float, float, float]:
    """Generate into PostgreSQL, rebuild the rollups, ship everything to ClickHouse: the counts
    and seconds of each step."""
    from django.conf import settings
    from django.db import connection

    from indicators import rollups
    from tracking import shipping
    from tracking.events_store import clickhouse_store

    started = time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE tracking_event, tracking_rollupcursor, tracking_rollupbacklog, tracking_shippingbacklog"
        )
        cursor.execute("SELECT setseed(%s)", [args.seed])
        _generator().insert_events(
            cursor,
            count=args.events,
            start=START,
            span=timedelta(days=args.days),
            people=max(args.events // 20, 1),
            received="ts + interval '5 seconds'",
        )
        cursor.execute("ANALYZE tracking_event")
    generated = time.monotonic() - started
    print(f"PostgreSQL: {args.events:,} events generated in {generated:.1f} s", flush=True)

    started = time.monotonic()
    rollups.rebuild()
    rebuilt = time.monotonic() - started
    print(f"PostgreSQL: rollups rebuilt in {rebuilt:.1f} s", flush=True)

    settings.OPSLOOP_EVENTS_STORE = "clickhouse"
    store = clickhouse_store()
    store.truncate()
    with connection.cursor() as cursor:
        # The outbox as ingestion would have written it: a row per run of consecutive ids.
        cursor.execute("""
            INSERT INTO tracking_shippingbacklog (first_event_id, last_event_id, created_at)
            SELECT min(id), max(id), now() FROM (SELECT id, id - row_number() OVER (ORDER BY id) AS island
                                                 FROM tracking_event) ids
            GROUP BY island
        """)
    started = time.monotonic()
    result = shipping.ship_events(batch_events=args.batch)
    shipped = time.monotonic() - started
    print(
        f"ClickHouse: {result.events:,} events shipped in {result.batches} batches, {shipped:.1f} s "
        f"= {result.events / shipped:,.0f} events/s through the shipping path",
        flush=True,
    )
    # The pages read ClickHouse once its history is marked loaded: every id is shipped, so the
    # backfill finds nothing missing and only sets the mark (outside the timing).
    assert shipping.ship_history().queued == 0
    settings.OPSLOOP_EVENTS_STORE = "postgres"
    return result.events, generated + rebuilt, shipped, result.events / shipped


# --- the pages ------------------------------------------------------------------------------------


def pages(last: date) -> list[tuple[str, object]]:
    from indicators import analyses
    from indicators import registry as indicators
    from indicators.models import Funnel, FunnelStep

    funnel, created = Funnel.objects.get_or_create(name="bench: open, search, buy", defaults={"window_hours": 24})
    if created:
        for position, name in enumerate(["app_open", "search", "order_paid"], start=1):
            FunnelStep.objects.create(funnel=funnel, position=position, event_name=name)
    d90, d180, d30, d45 = (last - timedelta(days=n - 1) for n in (90, 180, 30, 45))
    return [
        ("trends: DAU, 90 days", lambda: indicators.daily_values("dau", start=d90, end=last)),
        ("trends: revenue, 90 days", lambda: indicators.daily_values("revenue", start=d90, end=last)),
        (
            "retention: monthly, 180 days",
            lambda: analyses.retention_cohorts(granularity="month", basis="activity", start=d180, end=last, periods=6),
        ),
        (
            "retention: daily, 30 days",
            lambda: analyses.retention_cohorts(granularity="day", basis="activity", start=d30, end=last, periods=30),
        ),
        ("searches: 90 days", lambda: analyses.search_report(start=d90, end=last, limit=50)),
        ("purchases: 90 days", lambda: analyses.purchase_summary(start=d90, end=last)),
        (
            "key behaviour: 90 days",
            lambda: analyses.key_behaviour(event_name="order_paid", start=d90, end=last - timedelta(days=21)),
        ),
        (
            "churn: 90 days",
            lambda: analyses.churn_behaviours(start=d90, end=last - timedelta(days=30), churn_days=30, last_events=5),
        ),
        ("funnel (raw events): 30 days", lambda: analyses.funnel_report(funnel=funnel, start=d30, end=last)),
        ("people over 45 days (raw events)", lambda: distinct_people(d45, last)),
    ]


def distinct_people(start: date, end: date) -> int:
    """A window no rollup covers, from the raw events of the engine in use."""
    from django.db import connection

    from tracking.events_store import clickhouse_enabled, clickhouse_store

    if clickhouse_enabled():
        store = clickhouse_store()
        return int(
            store._rows(
                "SELECT uniqExact(person) FROM {table} WHERE toDate(timestamp) BETWEEN {start} AND {end}",
                start=start,
                end=end,
            )[0][0]
        )
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(DISTINCT COALESCE(user_id, anonymous_id)) FROM tracking_event "
            "WHERE timestamp >= %s AND timestamp < %s",
            [
                datetime.combine(start, datetime.min.time(), UTC),
                datetime.combine(end + timedelta(1), datetime.min.time(), UTC),
            ],
        )
        return cursor.fetchone()[0]


def before_dau(start: date, end: date) -> dict:
    """The DAU series as `indicators.analyses` read it before the events store (the ORM)."""
    from indicators.models import DailyIndicator

    rows = DailyIndicator.objects.filter(day__range=(start, end)).values_list("day", "active_users")
    return {day: Decimal(value) for day, value in rows}


def before_retention(start: date, end: date) -> list:
    """Retention cells as `indicators.analyses` read them before the events store."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT cohort, period, users FROM tracking_retentioncell
            WHERE basis = %s AND granularity = %s AND cohort BETWEEN %s AND %s AND period BETWEEN 0 AND %s
            ORDER BY cohort, period
            """,
            ["activity", "month", start.replace(day=1), end, 6],
        )
        return cursor.fetchall()


def raw_events_reads():
    """ClickHouse's reads as they were before its daily aggregates: the same answers computed over
    every raw event (kept here verbatim, so the aggregates' gain is measured in one run)."""
    from tracking.events_store.base import DAILY_COLUMNS
    from tracking.events_store.clickhouse import ClickHouseEventsStore, _cents, _day

    _DAY = "toDate(timestamp)"

    class RawEventsReads(ClickHouseEventsStore):
        def daily_rows(self, *, start: date, end: date) -> dict[date, dict[str, Decimal]]:
            # The days PostgreSQL has rows for: from the first day with an event to the last one.
            bounds = self._rows(f"SELECT toString(min({_DAY})), toString(max({_DAY})), count() FROM {{table}}")
            if not bounds or not int(bounds[0][2]):
                return {}
            lo, hi = max(start, _day(bounds[0][0])), min(end, _day(bounds[0][1]))
            if lo > hi:
                return {}
            # The day's own values: people of the window with their first day and first order day
            # over all their events.
            per_day = self._rows(
                """
                WITH per_day AS (
                    SELECT person, toDate(timestamp) AS day, count() AS events,
                           countIf(name = 'order_paid') AS orders, countIf(name = 'order_refunded') AS refunds,
                           sumIf(amount, name = 'order_paid') AS paid,
                           sumIf(amount, name = 'order_refunded') AS refunded
                    FROM {table} WHERE toDate(timestamp) BETWEEN {lo} AND {hi} GROUP BY person, day
                ), people AS (
                    SELECT person, min(toDate(timestamp)) AS first_day,
                           minIf(toDate(timestamp), name = 'order_paid') AS first_order_day
                    FROM {table}
                    WHERE person IN (SELECT person FROM {table} WHERE toDate(timestamp) BETWEEN {lo} AND {hi})
                    GROUP BY person
                )
                SELECT toString(d.day), sum(d.events), count(), countIf(p.first_day = d.day), sum(d.orders),
                       sum(d.refunds), toString(sum(d.paid)), toString(sum(d.refunded)),
                       toString(sum(d.paid) - sum(d.refunded)), countIf(d.orders > 0),
                       countIf(d.orders > 0 AND p.first_order_day < d.day)
                FROM per_day d JOIN people p ON p.person = d.person GROUP BY d.day
                """,
                lo=lo,
                hi=hi,
            )
            # WAU and MAU without a join of days to days: a person active on `day` and next on `next`
            # is counted in the trailing week (month) of the days from `day` up to the earlier of
            # `next` and `day` + 7 (30), each day once. So each person-day adds 1 from its day and
            # takes it back from that end: a handful of changes per day, summed up in order.
            changes = self._rows(
                """
                SELECT toString(x.1), sum(x.2), sum(x.3) FROM (
                    SELECT day, leadInFrame(day, 1, day + 1000) OVER (
                        PARTITION BY person ORDER BY day ROWS BETWEEN CURRENT ROW AND 1 FOLLOWING
                    ) AS next
                    FROM (
                        SELECT DISTINCT person, toDate(timestamp) AS day FROM {table}
                        WHERE toDate(timestamp) BETWEEN {lo} - 29 AND {hi}
                    )
                )
                ARRAY JOIN [(day, 1, 1), (least(next, day + 7), -1, 0), (least(next, day + 30), 0, -1)] AS x
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
            quiet = ["0"] * 11
            own = {day: values for day, *values in per_day}
            out = {}
            for day, wau, mau in trailing:
                own_day = own.get(day) or quiet
                events, active, new, orders, refunds, paid, refunded, revenue, paying, repeat = own_day[:10]
                values = (events, active, wau, mau, new, orders, refunds, paid, refunded, revenue, paying, repeat)
                row = dict(zip(DAILY_COLUMNS, (Decimal(v) for v in values), strict=True))
                for money in ("paid_amount", "refunded_amount", "revenue"):
                    row[money] = _cents(row[money])
                out[date.fromisoformat(day)] = row
            return out

        def retention_cells(
            self, *, basis: str, granularity: str, first_cohort: date, end: date, periods: int
        ) -> list[tuple[date, int, int]]:
            only_orders = "WHERE name = 'order_paid'" if basis == "purchase" else ""
            # The cohort of a first day, and the period of an active day `a.day` in the cohort of `c.first`.
            cohort, period = {
                "day": ("first", "dateDiff('day', c.first, a.day)"),
                "week": ("toMonday(first)", "intDiv(dateDiff('day', toMonday(c.first), toMonday(a.day)), 7)"),
                "month": (
                    "toStartOfMonth(first)",
                    "(toYear(a.day) * 12 + toMonth(a.day)) - (toYear(c.first) * 12 + toMonth(c.first))",
                ),
            }[granularity]
            rows = self._rows(
                f"""
                WITH firsts AS (
                    SELECT person, min(toDate(timestamp)) AS first FROM {{table}} {only_orders} GROUP BY person
                ), cohorts AS (
                    SELECT person, first, {cohort} AS cohort FROM firsts
                    WHERE cohort BETWEEN {{first_cohort}} AND {{end}}
                )
                SELECT toString(c.cohort) AS cohort, {period} AS period,
                       uniqExact(a.person) AS users
                FROM (SELECT DISTINCT person, toDate(timestamp) AS day FROM {{table}} {only_orders}) a
                JOIN cohorts c ON c.person = a.person
                WHERE period BETWEEN 0 AND {{periods}}
                GROUP BY cohort, period ORDER BY cohort, period
                """,
                first_cohort=first_cohort,
                end=end,
                periods=periods,
            )
            return [(date.fromisoformat(c), int(p), int(u)) for c, p, u in rows]

    return RawEventsReads


def finish_all_but_the_last_day(last: date) -> None:
    """ClickHouse's finished days and retention cells as a dashboard meets them: every day closed
    but the last one, which plays today (a shipping run has finished every day before today)."""
    from django.conf import settings

    from tracking.events_store import clickhouse_store
    from tracking.events_store.clickhouse import DAILY, RETENTION, TOUCHED

    settings.OPSLOOP_EVENTS_STORE = "clickhouse"
    store = clickhouse_store()
    store._ensure_finished_days()
    for table in (DAILY, RETENTION, TOUCHED):
        store.client.command(f"TRUNCATE TABLE {table}")
    started = time.monotonic()
    written = store.finish_days(through=last - timedelta(days=1))
    require_workload("finished days", written, at_least=30)
    print(
        f"ClickHouse: {written} days finished (all but the last, which plays today) in "
        f"{time.monotonic() - started:.1f} s",
        flush=True,
    )
    settings.OPSLOOP_EVENTS_STORE = "postgres"


def timed(call, repeat: int) -> tuple[float, object]:
    timings, answer = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        answer = call()
        timings.append(time.perf_counter() - started)
    return p95(timings), answer


def main() -> None:
    args = parse_args()
    url = bench_database_url("_scalebench")
    ensure_database(url, fresh=args.regenerate)
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.development")
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    from tracking.events_store import clickhouse_store

    settings.OPSLOOP_CLICKHOUSE_URL = args.clickhouse_url
    call_command("migrate", verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM tracking_event")
        have = cursor.fetchone()[0]
    settings.OPSLOOP_EVENTS_STORE = "clickhouse"
    shipped_before = clickhouse_store().event_count()
    settings.OPSLOOP_EVENTS_STORE = "postgres"
    if args.regenerate or have != args.events or shipped_before != args.events:
        load(args)
    settings.OPSLOOP_EVENTS_STORE = "clickhouse"
    started = time.monotonic()
    if clickhouse_store().ensure_aggregates():  # what shipping does first on an engine loaded without them
        print(f"ClickHouse: daily aggregates built from the events held in {time.monotonic() - started:.1f} s")
    settings.OPSLOOP_EVENTS_STORE = "postgres"
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*), max(timestamp)::date FROM tracking_event")
        total, last = cursor.fetchone()
    finish_all_but_the_last_day(last)
    settings.OPSLOOP_EVENTS_STORE = "clickhouse"
    in_clickhouse = clickhouse_store().event_count()
    settings.OPSLOOP_EVENTS_STORE = "postgres"
    require_workload("events in PostgreSQL", total, at_least=10_000)
    require_workload("events in ClickHouse", in_clickhouse, at_least=total)
    load_avg = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{total:,} events in each engine, last day {last}; load {load_avg}", flush=True)

    print(f"\n{'page':40} {'PostgreSQL p95':>15} {'ClickHouse p95':>15} {'PG / CH':>8}  same answer")
    for label, call in pages(last):
        # One untimed call first on each engine: a server (and PostgreSQL) is warm when a page is
        # asked for; the embedded engine, opened afresh here, would spend its first call filling
        # its caches (0.1-0.3 s at 2M events), and the p95 of a few runs is that call.
        settings.OPSLOOP_EVENTS_STORE = "postgres"
        call()
        pg, pg_answer = timed(call, args.repeat)
        settings.OPSLOOP_EVENTS_STORE = "clickhouse"
        store = clickhouse_store()
        with store.held():  # a server keeps its connection; chdb would open its directory per statement
            call()
            ch, ch_answer = timed(call, args.repeat)
        settings.OPSLOOP_EVENTS_STORE = "postgres"
        same = "yes" if pg_answer == ch_answer else "no (sampled or differs)"
        print(f"{label:40} {pg * 1000:>12.1f} ms {ch * 1000:>12.1f} ms {pg / ch:>7.1f}x  {same}", flush=True)

    settings.OPSLOOP_EVENTS_STORE = "clickhouse"
    store = clickhouse_store()
    raw = raw_events_reads()(args.clickhouse_url)
    print("\nClickHouse: raw events against the daily aggregates (interleaved, p95):")
    d90, d180 = last - timedelta(days=89), last - timedelta(days=179)
    with store.held():
        for label, call in [
            ("daily rows, 90 days", lambda engine: engine.daily_rows(start=d90, end=last)),
            (
                "retention cells, monthly",
                lambda engine: engine.retention_cells(
                    basis="activity", granularity="month", first_cohort=d180.replace(day=1), end=last, periods=6
                ),
            ),
            (
                "retention cells, daily purchases",
                lambda engine: engine.retention_cells(
                    basis="purchase", granularity="day", first_cohort=last - timedelta(days=29), end=last, periods=30
                ),
            ),
        ]:
            r, a, answers = [], [], []
            for _ in range(args.repeat):
                seconds, answer_raw = timed(lambda c=call: c(raw), 1)
                r.append(seconds)
                seconds, answer = timed(lambda c=call: c(store), 1)
                a.append(seconds)
                answers.append(answer == answer_raw)
            require_workload(f"{label} answers", len(answer), at_least=1)
            print(
                f"  {label:34} raw {p95(r) * 1000:8.1f} ms  aggregates {p95(a) * 1000:8.1f} ms  "
                f"raw / aggregates {p95(r) / p95(a):5.1f}x  same answer {'yes' if all(answers) else 'NO'}",
                flush=True,
            )
        # The daily series three ways: every person-day of the window (the aggregates without
        # finished days), the finished rows with the open day computed, the open day alone.
        live, finished, open_day, same = [], [], [], []
        for _ in range(args.repeat):
            seconds, answer_live = timed(lambda: store._live_rows(d90, last), 1)
            live.append(seconds)
            seconds, answer = timed(lambda: store.daily_rows(start=d90, end=last), 1)
            finished.append(seconds)
            open_day.append(timed(lambda: store._live_rows(last, last), 1)[0])
            same.append(answer == answer_live)
        require_workload("daily rows, 90 days", len(answer), at_least=90)
        print(
            f"  {'daily rows, 90 days':34} person-days {p95(live) * 1000:8.1f} ms  finished days + the open one "
            f"{p95(finished) * 1000:8.1f} ms  ratio {p95(live) / p95(finished):5.1f}x  "
            f"the open day alone {p95(open_day) * 1000:8.1f} ms  same answer {'yes' if all(same) else 'NO'}",
            flush=True,
        )
        # Monthly retention two ways: every person-day of the table, the finished cells with the
        # cells of the month still open computed.
        first_cohort = d180.replace(day=1)
        horizon = last + timedelta(days=31 * 7)
        live, finished, same = [], [], []
        for _ in range(args.repeat):
            seconds, answer_live = timed(
                lambda: store._live_cells("activity", "month", first_cohort, last, 6, first_cohort, horizon), 1
            )
            live.append(seconds)
            seconds, answer = timed(
                lambda: store.retention_cells(
                    basis="activity", granularity="month", first_cohort=first_cohort, end=last, periods=6
                ),
                1,
            )
            finished.append(seconds)
            same.append(answer == answer_live)
        require_workload("retention cells, monthly", len(answer), at_least=1)
        print(
            f"  {'retention cells, monthly':34} person-days {p95(live) * 1000:8.1f} ms  finished cells + the open "
            f"month {p95(finished) * 1000:8.1f} ms  ratio {p95(live) / p95(finished):5.1f}x  "
            f"same answer {'yes' if all(same) else 'NO'}",
            flush=True,
        )
        rows = store.client.rows(
            "SELECT (SELECT count() FROM opsloop_person_days), (SELECT count() FROM opsloop_people)"
        )[0]
    print(f"  rows read instead of {in_clickhouse:,} events: {int(rows[0]):,} person-days, {int(rows[1]):,} people")
    settings.OPSLOOP_EVENTS_STORE = "postgres"

    print("\nPostgreSQL before/after the events store (interleaved, p95):")
    d90 = last - timedelta(days=89)
    from indicators import analyses
    from indicators import registry as indicators

    for label, before, after in [
        ("DAU, 90 days", lambda: before_dau(d90, last), lambda: indicators.daily_values("dau", start=d90, end=last)),
        (
            "retention cells, monthly",
            lambda: before_retention(last - timedelta(days=179), last),
            lambda: analyses.retention_cohorts(
                granularity="month", basis="activity", start=last - timedelta(days=179), end=last, periods=6
            ),
        ),
    ]:
        b, a = [], []
        for _ in range(args.repeat):
            b.append(timed(before, 1)[0])
            a.append(timed(after, 1)[0])
        print(
            f"  {label:30} before {p95(b) * 1000:7.2f} ms  after {p95(a) * 1000:7.2f} ms  ratio {p95(a) / p95(b):.2f}"
        )


if __name__ == "__main__":
    main()
