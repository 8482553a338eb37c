"""Tag recomputation speed: a rule tag and a preference tag against hand-written SQL.

    .venv/bin/python bench/tags.py                         # 1,000,000 profiles, 10,000,000 events
    .venv/bin/python bench/tags.py --scale 0.1             # 100,000 profiles, 1,000,000 events
    .venv/bin/python bench/tags.py --profiles 50000 --events 400000 --repeat 5

It works in a database of its own, `<DATABASE_URL's name>_tagbench` (created and migrated on first
use), so it never touches real data. Profiles and events are generated with set-based SQL and
kept between runs of the same size (`--regenerate` forces new data).

Measured, each --repeat times, interleaved so that load from elsewhere on a shared machine hits
both sides alike (the best run of each is reported):

- rule tag "3+ order_paid in 30 days and city in [Shanghai, Beijing]":
  `profiles.services.recompute_tag_rule` (compile, select, upsert members, delete leavers, log
  changes) against one hand-written statement that materialises the same selection
  (`CREATE TEMP TABLE ... AS SELECT`).
- preference tag "article_read by properties.category, min count 5, p < 0.01":
  the service (one aggregate query, vectorised chi-square in numpy/scipy, one sync statement)
  against one hand-written SQL statement computing the same chi-square test with window functions
  and materialising the selected (user, category, effect size) rows.

The service is timed twice per round: from empty (all members inserted and logged, as on a
rule's first night) and in steady state (members unchanged). Both ratios to the best hand-written
run are printed; the target is at most 1.5.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchdb import bench_database_url, ensure_database, require_workload  # noqa: E402

CATEGORIES = ["technology", "sports", "finance", "culture", "travel", "food", "health", "auto"]
CITIES = ["Shanghai", "Beijing", "Shenzhen", "Guangzhou", "Hangzhou", "Chengdu", "Wuhan", "Xi'an"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", type=int, default=1_000_000, help="profiles (default 1,000,000)")
    parser.add_argument("--events", type=int, default=10_000_000, help="events (default 10,000,000)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply --profiles and --events (e.g. 0.1)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each side (default 3)")
    parser.add_argument("--regenerate", action="store_true", help="drop and generate the data again")
    parser.add_argument(
        "--fresh-db", action="store_true", help="drop and recreate the bench database (after migrations were rewritten)"
    )
    parser.add_argument("--seed", type=float, default=0.42, help="setseed() for the generator, in [-1, 1]")
    return parser.parse_args()


def event_defaults() -> tuple[list[str], list[str], list]:
    """Columns of tracking_event the generator does not set, with their model defaults, so the
    generator keeps working when the event table gains columns."""
    from tracking.models import Event

    generated = {"id", "event_id", "name", "kind", "timestamp", "received_at", "user_id", "anonymous_id", "properties"}
    columns, expressions, params = [], [], []
    from django.db import connection

    for field in Event._meta.concrete_fields:
        if field.column in generated:
            continue
        columns.append(field.column)
        if field.null:
            expressions.append("NULL")
            continue
        value = field.get_db_prep_save(field.get_default(), connection)
        expressions.append(f"%s::{field.db_type(connection)}")
        params.append(value)
    return columns, expressions, params


def generate(profiles: int, events: int, seed: float) -> None:
    from django.db import connection

    print(f"generating {profiles:,} profiles and {events:,} events ...", flush=True)
    started = time.monotonic()
    columns, expressions, params = event_defaults()
    extra_cols = "".join(f", {c}" for c in columns)
    extra_vals = "".join(f", {e}" for e in expressions)
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE profiles_tagchange, profiles_profiletag, profiles_tag, profiles_tagrule, "
            "profiles_identity, profiles_profilemerge, tracking_event, profiles_profile CASCADE"
        )
        cursor.execute("SELECT setseed(%s)", [seed])
        cursor.execute(
            """
            INSERT INTO profiles_profile (user_id, name, gender, region, city, timezone, phone, email,
                push_opt_in, sms_opt_in, email_opt_in, traits, trait_updated_at, created_at, updated_at,
                signup_at, first_seen_at, last_seen_at)
            SELECT 'b' || g, '', '', '', (%s::text[])[1 + (g %% 8)], 'Asia/Shanghai', '', '',
                   g %% 3 = 0, false, false, '{}', '{}', now(), now(),
                   now() - (g %% 700) * interval '1 day', now() - interval '90 days', now()
            FROM generate_series(1, %s) g
            """,
            [CITIES, profiles],
        )
        cursor.execute(
            "INSERT INTO profiles_identity (profile_id, kind, value, created_at) "
            "SELECT id, 'user_id', user_id, now() FROM profiles_profile"
        )
        # Events over 40 days: 8% order_paid, 50% article_read with a category, the rest app_open; people
        # drawn with a skew so that some are heavy users; a fifth of the readers lean strongly
        # towards one category (the one their number points at).
        cursor.execute(
            f"""
            INSERT INTO tracking_event (event_id, name, kind, timestamp, received_at, user_id,
                anonymous_id, properties{extra_cols})
            SELECT gen_random_uuid(), x.name,
                   CASE WHEN x.name = 'order_paid' THEN 'business' ELSE 'behavior' END,
                   now() - random() * interval '40 days', now(), 'b' || x.person, NULL,
                   CASE x.name
                     WHEN 'article_read' THEN jsonb_build_object('category',
                        CASE WHEN x.person %% 5 = 0 AND random() < 0.6
                             THEN (%s::text[])[1 + (x.person %% 8)]
                             ELSE (%s::text[])[1 + floor(random() * 8)::int] END)
                     WHEN 'order_paid' THEN jsonb_build_object('amount', (10 + floor(random() * 500))::text || '.00')
                     ELSE '{{}}'::jsonb END
                   {extra_vals}
            FROM (
                SELECT 1 + floor(power(random(), 1.6) * %s)::int AS person,
                       CASE WHEN r < 0.08 THEN 'order_paid' WHEN r < 0.58 THEN 'article_read'
                            ELSE 'app_open' END AS name
                FROM (SELECT random() AS r FROM generate_series(1, %s)) s
            ) x
            """,
            [CATEGORIES, CATEGORIES, *params, profiles, events],
        )
        cursor.execute("ANALYZE profiles_profile")
        cursor.execute("ANALYZE profiles_identity")
        cursor.execute("ANALYZE tracking_event")
    print(f"  generated in {time.monotonic() - started:.1f} s", flush=True)


def have_data(profiles: int, events: int) -> bool:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM profiles_profile")
        p = cursor.fetchone()[0]
        cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE relname = 'tracking_event'")
        e = cursor.fetchone()[0]
    return p == profiles and abs(e - events) <= events * 0.02


RULE_BASELINE = """
CREATE TEMP TABLE bench_rule_members AS
SELECT p.id AS profile_id
FROM profiles_profile p
JOIN (
    SELECT COALESCE(iu.profile_id, ia.profile_id) AS profile_id, count(*) AS n
    FROM tracking_event e
    LEFT JOIN profiles_identity iu ON iu.kind = 'user_id' AND iu.value = e.user_id
    LEFT JOIN profiles_identity ia ON ia.kind = 'anonymous_id' AND ia.value = e.anonymous_id
    WHERE e.name = 'order_paid' AND e.timestamp >= now() - interval '30 days'
    GROUP BY 1
    HAVING count(*) >= 3
) o ON o.profile_id = p.id
WHERE p.merged_into_id IS NULL AND p.city = ANY(ARRAY['Shanghai', 'Beijing'])
"""

PREFERENCE_BASELINE = """
CREATE TEMP TABLE bench_pref_members AS
WITH counts AS (
    SELECT COALESCE(iu.profile_id, ia.profile_id) AS profile_id, e.properties ->> 'category' AS category,
           count(*)::float8 AS n
    FROM tracking_event e
    LEFT JOIN profiles_identity iu ON iu.kind = 'user_id' AND iu.value = e.user_id
    LEFT JOIN profiles_identity ia ON ia.kind = 'anonymous_id' AND ia.value = e.anonymous_id
    WHERE e.name = 'article_read' AND e.timestamp >= now() - interval '30 days'
      AND e.properties ->> 'category' <> ''
    GROUP BY 1, 2
    HAVING COALESCE(iu.profile_id, ia.profile_id) IS NOT NULL
),
shares AS (
    SELECT profile_id, category, n,
           sum(n) OVER (PARTITION BY profile_id) AS n_user,
           sum(n) OVER (PARTITION BY category) / sum(n) OVER () AS share
    FROM counts
),
tests AS (
    SELECT profile_id, category, n, n_user, n_user * share AS expected, share,
           power(n - n_user * share, 2) / (n_user * share)
             + power(n - n_user * share, 2) / (n_user * (1 - share)) AS chi2
    FROM shares WHERE share < 1
)
SELECT profile_id, category, sqrt(chi2 / n_user) AS effect_size
FROM tests
WHERE n >= %(min_count)s AND n > expected AND chi2 > %(critical)s
"""


def timed_sql(sql: str, params: dict | None = None, table: str = "") -> tuple[float, int]:
    from django.db import connection, transaction

    with transaction.atomic(), connection.cursor() as cursor:
        started = time.perf_counter()
        cursor.execute(sql, params)
        elapsed = time.perf_counter() - started
        cursor.execute(f"SELECT count(*) FROM {table}")
        rows = cursor.fetchone()[0]
        cursor.execute(f"DROP TABLE {table}")
    return elapsed, rows


def timed_service(rule_id: int) -> tuple[float, int]:
    from profiles.services import recompute_tag_rule

    started = time.perf_counter()
    result = recompute_tag_rule(rule_id=rule_id)
    return time.perf_counter() - started, result.members


def main() -> None:
    args = parse_args()
    profiles = max(int(args.profiles * args.scale), 100)
    events = max(int(args.events * args.scale), 1000)
    db_url = bench_database_url("_tagbench")
    ensure_database(db_url, fresh=args.fresh_db)
    os.environ["DATABASE_URL"] = db_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.development")
    os.environ["OPSLOOP_DEBUG"] = "0"

    import django

    django.setup()
    from django.core.management import call_command
    from scipy import stats

    from profiles.models import ProfileTag, TagChange, TagRule, TagRuleKind

    call_command("migrate", verbosity=0)
    if args.regenerate or not have_data(profiles, events):
        generate(profiles, events, args.seed)
    TagRule.objects.all().delete()
    TagChange.objects.all().delete()
    rule = TagRule.objects.create(
        name="bench: big spenders in tier-1 cities",
        kind=TagRuleKind.RULE,
        tag_name="bench-buyer",
        conditions=[
            {"event": "order_paid", "within_days": 30, "op": "gte", "count": 3},
            {"trait": "city", "op": "in", "value": ["Shanghai", "Beijing"]},
        ],
    )
    pref = TagRule.objects.create(
        name="bench: reading preferences",
        kind=TagRuleKind.PREFERENCE,
        event_name="article_read",
        category_property="category",
        window_days=30,
        min_count=5,
        p_value_threshold=0.01,
        tag_prefix="bench_prefers_",
        tag_category="preference",
    )
    critical = float(stats.chi2.isf(0.01, 1))
    print(f"profiles: {profiles:,}  events: {events:,}  repeat: {args.repeat}", flush=True)

    # One untimed pass of each statement first, so the first timed service run does not pay for
    # reading the tables into the cache alone.
    timed_sql(RULE_BASELINE, None, "bench_rule_members")
    timed_sql(PREFERENCE_BASELINE, {"min_count": 5, "critical": critical}, "bench_pref_members")
    for label, rule_obj, baseline, params, table in [
        ("rule tag", rule, RULE_BASELINE, None, "bench_rule_members"),
        ("preference tag", pref, PREFERENCE_BASELINE, {"min_count": 5, "critical": critical}, "bench_pref_members"),
    ]:
        service_runs, empty_runs, sql_runs = [], [], []
        sql_rows = members = 0
        for _ in range(max(args.repeat, 1)):
            elapsed, sql_rows = timed_sql(baseline, params, table)
            sql_runs.append(elapsed)
            # From empty: every member is inserted and logged, as on a rule's first night.
            ProfileTag.objects.filter(tag__rule=rule_obj).delete()
            elapsed, members = timed_service(rule_obj.id)
            empty_runs.append(elapsed)
            # Steady state: the next night, when (here) nobody joined or left.
            elapsed, members = timed_service(rule_obj.id)
            service_runs.append(elapsed)
        best_sql = min(sql_runs)
        require_workload(f"members of the {label}", members, at_least=max(profiles // 1000, 10))
        if members != sql_rows:
            raise SystemExit(f"{label}: the service tagged {members:,}, the hand-written SQL selects {sql_rows:,}")
        print(f"\n{label}: {members:,} members (hand-written SQL selects {sql_rows:,})")
        print(f"  hand-written SQL          best {best_sql:8.3f} s   median {statistics.median(sql_runs):8.3f} s")
        for name, runs in [("service, from empty", empty_runs), ("service, steady state", service_runs)]:
            print(
                f"  {name:<24} best {min(runs):8.3f} s   median {statistics.median(runs):8.3f} s"
                f"   ratio {min(runs) / best_sql:5.2f}  (target <= 1.5)",
                flush=True,
            )


if __name__ == "__main__":
    main()
