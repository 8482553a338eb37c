"""Customer-value recompute speed: the full recompute against one hand-written SQL query.

    .venv/bin/python bench/rfm.py                          # 1,000,000 customers, 5,000,000 orders
    .venv/bin/python bench/rfm.py --scale 0.1              # 100,000 customers, 500,000 orders
    .venv/bin/python bench/rfm.py --customers 200000 --orders 1000000 --repeat 2

It works in a database of its own, `<DATABASE_URL's name>_rfmbench` (created and migrated on first
use), so it never touches real data. Profiles, their `user_id` identities, `order_paid` events
(customers drawn with a skew, amounts 1-500, over 400 days) and refunds of 2% of the orders are
generated with set-based SQL and kept between runs of the same size (`--regenerate` forces new
data). About a third of the profiles have no order in the 365-day window.

Measured, each --repeat times, interleaved so that load from elsewhere on a shared machine hits
both sides alike (the best of each is reported):

- `crm.services.recompute_customer_values`: RFM, quintile scores, segments, tiers, lifecycle
  stages of every profile, the history of changes, the upsert and account managers.
  - from empty: the first run fills an empty table (every profile's row and first history rows);
  - steady state: each timed run after it is the next night: a day's new orders arrive
    (`--nightly-orders`, by default the generator's daily rate, to customers drawn alike) and
    the reference date moves on by a day, so orders leave the window, scores, tiers and stages
    move for some customers, and the rest stays as it was.
- the baseline: one hand-written statement that materialises the same r, f, m and segment of
  every customer (`CREATE TEMP TABLE ... AS SELECT`), nothing else.

After every recompute the baseline runs on the same data and its scores are compared with the
stored ones row by row (a difference stops the benchmark). Target: a ratio of at most 1.5.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchdb import bench_database_url, ensure_database, require_workload  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000, help="profiles (default 1,000,000)")
    parser.add_argument("--orders", type=int, default=5_000_000, help="order_paid events (default 5,000,000)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply --customers and --orders (e.g. 0.1)")
    parser.add_argument("--repeat", type=int, default=5, help="timed nights, each against the baseline (default 5)")
    parser.add_argument("--regenerate", action="store_true", help="drop and generate the data again")
    parser.add_argument("--seed", type=float, default=0.42, help="setseed() for the generator, in [-1, 1]")
    parser.add_argument(
        "--nightly-orders", type=int, default=None, help="orders arriving each night (default: orders / 400)"
    )
    return parser.parse_args()


def model_defaults(model, generated: set[str]) -> tuple[str, str, list]:
    """`, col, ...` / `, %s::type, ...` / params for the columns the generator leaves to the
    model's defaults, so the generator keeps working when a table gains columns."""
    from django.db import connection

    columns, expressions, params = [], [], []
    for field in model._meta.concrete_fields:
        if field.column in generated:
            continue
        columns.append(field.column)
        if field.null:
            expressions.append("NULL")
            continue
        columns_default = field.get_default()
        expressions.append(f"%s::{field.db_type(connection)}")
        params.append(field.get_db_prep_save(columns_default, connection))
    return "".join(f", {c}" for c in columns), "".join(f", {e}" for e in expressions), params


def generate(customers: int, orders: int, seed: float) -> None:
    from django.db import connection

    from profiles.models import Profile
    from tracking.models import Event

    print(f"generating {customers:,} profiles and {orders:,} orders ...", flush=True)
    started = time.monotonic()
    p_cols, p_vals, p_params = model_defaults(
        Profile, {"id", "user_id", "signup_at", "first_seen_at", "last_seen_at", "created_at", "updated_at"}
    )
    e_cols, e_vals, e_params = model_defaults(
        Event, {"id", "event_id", "name", "kind", "timestamp", "received_at", "user_id", "anonymous_id", "properties"}
    )
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE crm_valuechange, crm_customervalue, crm_recomputerun CASCADE")
        cursor.execute("TRUNCATE profiles_identity, tracking_event, profiles_profile CASCADE")
        cursor.execute("SELECT setseed(%s)", [seed])
        cursor.execute(
            f"""
            INSERT INTO profiles_profile (user_id, signup_at, first_seen_at, last_seen_at, created_at,
                                          updated_at{p_cols})
            SELECT 'b' || g, now() - (g %% 700) * interval '1 day', now() - (g %% 700) * interval '1 day',
                   now() - (g %% 200) * interval '1 day', now(), now(){p_vals}
            FROM generate_series(1, %s) g
            """,
            [*p_params, customers],
        )
        cursor.execute(
            "INSERT INTO profiles_identity (profile_id, kind, value, created_at) "
            "SELECT id, 'user_id', user_id, now() FROM profiles_profile"
        )
        cursor.execute(
            f"""
            INSERT INTO tracking_event (event_id, name, kind, timestamp, received_at, user_id, anonymous_id,
                                        properties{e_cols})
            SELECT gen_random_uuid(), 'order_paid', 'business', now() - random() * interval '400 days', now(),
                   'b' || (1 + floor(power(random(), 1.5) * 0.7 * %s)::int), NULL,
                   jsonb_build_object('order_id', 'o' || g,
                                      'amount', ((100 + floor(random() * 50000)) / 100)::numeric(10, 2)::text)
                   {e_vals}
            FROM generate_series(1, %s) g
            """,
            [customers, *e_params, orders],
        )
        cursor.execute(
            f"""
            INSERT INTO tracking_event (event_id, name, kind, timestamp, received_at, user_id, anonymous_id,
                                        properties{e_cols})
            SELECT gen_random_uuid(), 'order_refunded', 'business', e.timestamp + interval '1 hour', now(),
                   e.user_id, NULL, jsonb_build_object('order_id', e.properties->>'order_id'){e_vals}
            FROM tracking_event e WHERE e.name = 'order_paid' AND random() < 0.02
            """,
            e_params,
        )
        for table in ("profiles_profile", "profiles_identity", "tracking_event"):
            cursor.execute(f"ANALYZE {table}")
    print(f"  generated in {time.monotonic() - started:.1f} s", flush=True)


def add_nightly_orders(customers: int, count: int, since, until) -> None:
    """`count` new orders in (since, until], to customers drawn as the generator draws them."""
    from django.db import connection

    from tracking.models import Event

    e_cols, e_vals, e_params = model_defaults(
        Event, {"id", "event_id", "name", "kind", "timestamp", "received_at", "user_id", "anonymous_id", "properties"}
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO tracking_event (event_id, name, kind, timestamp, received_at, user_id, anonymous_id,
                                        properties{e_cols})
            SELECT gen_random_uuid(), 'order_paid', 'business', %s + random() * (%s - %s), now(),
                   'b' || (1 + floor(power(random(), 1.5) * 0.7 * %s)::int), NULL,
                   jsonb_build_object('order_id', 'night-' || gen_random_uuid(),
                                      'amount', ((100 + floor(random() * 50000)) / 100)::numeric(10, 2)::text)
                   {e_vals}
            FROM generate_series(1, %s) g
            """,
            [since, until, since, customers, *e_params, count],
        )


def drop_nightly_orders() -> None:
    """Orders added by an earlier benchmark's nights (all later than the generated profiles)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            """
            DELETE FROM tracking_event
            WHERE name = 'order_paid' AND timestamp > (SELECT max(created_at) FROM profiles_profile)
              AND properties->>'order_id' LIKE 'night-%%'
            """
        )


def have_data(customers: int, orders: int) -> bool:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM profiles_profile")
        profiles = cursor.fetchone()[0]
        cursor.execute("SELECT count(*) FROM tracking_event WHERE name = 'order_paid'")
        paid = cursor.fetchone()[0]
    return profiles == customers and paid == orders


# The same definition written out by hand in one statement: orders by id (a repeat counts once)
# in (ref - 365 days, ref], minus refunded order ids, per current profile; quintile scores of the
# percent rank with ties at their lowest rank; segments against the mean scores.
BASELINE = """
CREATE TEMP TABLE bench_rfm_baseline AS
WITH paid AS (
    SELECT COALESCE(iu.profile_id, ia.profile_id) AS profile_id, e.properties->>'order_id' AS order_id,
           min(e.timestamp) AS at, max((e.properties->>'amount')::numeric) AS amount
    FROM tracking_event e
    LEFT JOIN profiles_identity iu ON iu.kind = 'user_id' AND iu.value = e.user_id
    LEFT JOIN profiles_identity ia ON ia.kind = 'anonymous_id' AND ia.value = e.anonymous_id
    WHERE e.name = 'order_paid' AND e.timestamp > %(ref)s - interval '365 days' AND e.timestamp <= %(ref)s
    GROUP BY 1, 2
),
per AS (
    SELECT p.profile_id, count(*) AS f, sum(p.amount) AS m,
           floor(extract(epoch FROM %(ref)s - max(p.at)) / 86400)::int AS rd
    FROM paid p
    WHERE p.profile_id IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM tracking_event x
        WHERE x.name = 'order_refunded' AND x.timestamp <= %(ref)s AND x.properties->>'order_id' = p.order_id)
    GROUP BY p.profile_id
),
scored AS (
    SELECT profile_id, n,
           greatest(1, (5 * (rank() OVER (ORDER BY rd DESC) - 1) + n - 2) / greatest(n - 1, 1)) AS r,
           greatest(1, (5 * (rank() OVER (ORDER BY f) - 1) + n - 2) / greatest(n - 1, 1)) AS f,
           greatest(1, (5 * (rank() OVER (ORDER BY m) - 1) + n - 2) / greatest(n - 1, 1)) AS m
    FROM (SELECT *, count(*) OVER () AS n FROM per) x
)
SELECT profile_id, r, f, m,
       CASE ((r > avg(r) OVER ())::int * 4 + (f > avg(f) OVER ())::int * 2 + (m > avg(m) OVER ())::int)
            WHEN 7 THEN 'important_value' WHEN 5 THEN 'important_development'
            WHEN 3 THEN 'important_retention' WHEN 1 THEN 'important_winback'
            WHEN 6 THEN 'general_value' WHEN 4 THEN 'general_development'
            WHEN 2 THEN 'general_retention' ELSE 'general_winback' END AS segment
FROM scored
"""


def run_baseline(ref) -> float:
    """Seconds of the hand-written query; stops the benchmark if its scores differ from ours."""
    from django.db import connection, transaction

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT set_config('work_mem', %s, true)", [os.environ.get("BENCH_WORK_MEM", "256MB")])
        started = time.monotonic()
        cursor.execute(BASELINE, {"ref": ref})
        elapsed = time.monotonic() - started
        cursor.execute(
            """
            SELECT (SELECT count(*) FROM bench_rfm_baseline),
                   (SELECT count(*) FROM crm_customervalue WHERE frequency IS NOT NULL),
                   (SELECT count(*) FROM bench_rfm_baseline b
                    LEFT JOIN crm_customervalue c ON c.profile_id = b.profile_id
                    WHERE (b.r, b.f, b.m, b.segment) IS DISTINCT FROM (c.r, c.f, c.m, c.segment))
            """
        )
        baseline_rows, ours_rows, differing = cursor.fetchone()
        cursor.execute("DROP TABLE bench_rfm_baseline")
    if baseline_rows != ours_rows or differing:
        raise SystemExit(f"scores differ: baseline {baseline_rows} rows, ours {ours_rows}, {differing} differ")
    return elapsed


def main() -> None:
    args = parse_args()
    customers = int(args.customers * args.scale)
    orders = int(args.orders * args.scale)
    nightly = orders // 400 if args.nightly_orders is None else args.nightly_orders
    url = bench_database_url("_rfmbench")
    ensure_database(url)
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.development")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone

    from crm import services
    from crm.models import ScoringScheme

    call_command("migrate", verbosity=0)
    drop_nightly_orders()
    if args.regenerate or not have_data(customers, orders):
        generate(customers, orders, args.seed)
    services.ensure_default_setup()
    ScoringScheme.objects.filter(is_active=True).update(reference_at=None, window_days=365, method="quintiles")

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE crm_valuechange, crm_customervalue, crm_recomputerun CASCADE")
        cursor.execute("VACUUM ANALYZE crm_customervalue")
    ref = timezone.now()
    started = time.monotonic()
    first = services.recompute_customer_values(now=ref)
    first_seconds = time.monotonic() - started
    first_baseline = run_baseline(ref)
    require_workload("customers with orders scored", first.customers, at_least=max(customers // 100, 10))
    print(
        f"from empty: recompute {first_seconds:.2f} s ({first.profiles:,} profiles, {first.customers:,} customers, "
        f"{first.changes:,} history rows), baseline {first_baseline:.2f} s",
        flush=True,
    )
    print(f"  steps (s): {first.timings}", flush=True)

    ours, theirs = [], [first_baseline]
    for night in range(1, args.repeat + 1):
        add_nightly_orders(customers, nightly, ref, ref + timedelta(days=1))
        ref = ref + timedelta(days=1)
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE tracking_event")  # as autovacuum would after a day's inserts
        started = time.monotonic()
        run = services.recompute_customer_values(now=ref)
        ours.append(time.monotonic() - started)
        theirs.append(run_baseline(ref))
        require_workload("history rows from a night's new orders", run.changes)
        print(
            f"night {night}: recompute {ours[-1]:.2f} s ({run.changes:,} history rows), baseline {theirs[-1]:.2f} s",
            flush=True,
        )
        print(f"  steps (s): {run.timings}", flush=True)
    print(f"customers with orders: {first.customers:,} of {first.profiles:,} profiles; {orders:,} orders")
    print(f"nights: {args.repeat}, {nightly:,} new orders each")
    # Load from elsewhere comes and goes: each run is set against the baseline run right after it,
    # on the same data; the best runs of both sides are compared too.
    best_theirs = min(theirs)
    print(f"hand-written SQL:         best {best_theirs:.2f} s, median {statistics.median(theirs):.2f} s")
    print(
        f"from empty:               {first_seconds:.2f} s, ratio {first_seconds / first_baseline:.2f} "
        f"(to the best baseline {first_seconds / best_theirs:.2f})"
    )
    if ours:
        ratios = [a / b for a, b in zip(ours, theirs[1:], strict=True)]
        best_ours, median_ours = min(ours), statistics.median(ours)
        print(
            f"steady state (a night):   best {best_ours:.2f} s, median {median_ours:.2f} s "
            f"= {first.profiles / best_ours:,.0f} profiles/s"
        )
        print(
            f"ratio, steady state: each night {', '.join(f'{r:.2f}' for r in ratios)}; "
            f"best {min(ratios):.2f}, median {statistics.median(ratios):.2f}; "
            f"best runs {best_ours / best_theirs:.2f} (target <= 1.5)"
        )


if __name__ == "__main__":
    main()
