"""Channel quality speed: `coupons.selectors.channel_quality` against the least any answer reads.

    .venv/bin/python bench/channels.py                    # 200,000 profiles, about 2,000,000 events
    .venv/bin/python bench/channels.py --scale 0.25 --repeat 5

It works in a database of its own, `<DATABASE_URL's name>_channelsbench` (created and migrated on
first use), so it never touches real data. Profiles join over 180 days, each from one of eight
sources (or none); each has about 8 events over the following weeks, a third pay an order and a
tenth of those redeem a coupon. The data is kept between runs of the same size (`--regenerate`
forces new data).

Measured, interleaved, each --repeat times (best reported): the channel quality of a 30-day
signup window, and as the baseline one statement that reads the same rows without the
definitions: the window's people and a count of their events since the window start, grouped by
the source of their first event column-wise (no ordering by time, no day-7 or coupon joins).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import UTC, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchdb import bench_database_url, ensure_database, require_workload  # noqa: E402
from rfm import model_defaults  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", type=int, default=200_000, help="profiles (default 200,000)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply --profiles (e.g. 0.25)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each side (default 3)")
    parser.add_argument("--regenerate", action="store_true", help="drop and generate the data again")
    parser.add_argument(
        "--clickhouse",
        action="store_true",
        help="also ship the events to an embedded ClickHouse (.run/channelsbench-chdb) and time the report there",
    )
    return parser.parse_args()


def generate(profiles: int) -> None:
    from django.db import connection, transaction

    from profiles.models import Profile
    from tracking.models import Event

    print(f"generating {profiles:,} profiles and their events ...", flush=True)
    started = time.monotonic()
    p_cols, p_vals, p_params = model_defaults(
        Profile, {"id", "user_id", "signup_at", "first_seen_at", "last_seen_at", "created_at", "updated_at"}
    )
    e_cols, e_vals, e_params = model_defaults(
        Event,
        {"id", "event_id", "name", "kind", "timestamp", "received_at", "user_id", "anonymous_id", "properties"}
        | {"utm_source"},
    )
    # One transaction: a failed generation leaves no half data set to be taken for a whole one.
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("TRUNCATE coupons_redemption, coupons_coupon, coupons_couponrule CASCADE")
        cursor.execute("TRUNCATE profiles_identity, tracking_event, profiles_profile CASCADE")
        cursor.execute("SELECT setseed(0.42)")
        cursor.execute(
            f"""
            INSERT INTO profiles_profile (user_id, signup_at, first_seen_at, last_seen_at, created_at,
                                          updated_at{p_cols})
            SELECT 'c' || g, NULL, now() - interval '200 days' + (g %% 180) * interval '1 day',
                   now(), now(), now(){p_vals}
            FROM generate_series(1, %s) g
            """,
            [*p_params, profiles],
        )
        cursor.execute(
            "INSERT INTO profiles_identity (profile_id, kind, value, created_at) "
            "SELECT id, 'user_id', user_id, now() FROM profiles_profile"
        )
        # The first event at first_seen_at carries the source; then 7 more over 30 days; a third
        # of the people pay an order within 20 days.
        insert = f"""
            INSERT INTO tracking_event (event_id, name, kind, timestamp, received_at, user_id, anonymous_id,
                                        properties, utm_source{e_cols})
            SELECT gen_random_uuid(), %s, 'behavior', {{at}}, now(), p.user_id, NULL, {{properties}}, {{source}}{e_vals}
            FROM profiles_profile p {{more}}
        """
        sources = "(ARRAY['', 'ads', 'newsletter', 'search', 'partner', 'social', 'affiliate', 'tv', 'radio'])"
        for name, at, properties, source, more in (
            ("page_view", "p.first_seen_at", "'{}'", f"{sources}[1 + (p.id %% 9)]", ""),
            (
                "app_open",
                "p.first_seen_at + random() * interval '30 days'",
                "'{}'",
                "''",
                "CROSS JOIN generate_series(1, 7)",
            ),
            (
                "order_paid",
                "p.first_seen_at + random() * interval '20 days'",
                "jsonb_build_object('order_id', 'o' || p.id, 'amount', (10 + p.id %% 300)::text || '.50')",
                "''",
                "WHERE p.id %% 3 = 0",
            ),
        ):
            sql = insert.format(at=at, properties=properties, source=source, more=more)
            cursor.execute(sql, [name, *e_params])
        cursor.execute(
            """
            INSERT INTO coupons_couponrule (name, description, kind, value, min_spend, first_order_only,
                eligible_tiers, eligible_tags, per_user_limit, state, issued_count, redeemed_count, committed,
                spent, created_at, updated_at)
            VALUES ('bench', '', 'fixed', 5, 0, false, '{}', '{}', 1, 'active', 0, 0, 0, 0, now(), now())
            """
        )
        cursor.execute(
            """
            INSERT INTO coupons_coupon (code, rule_id, profile_id, status, reserved, issued_at, starts_at, source,
                                        source_ref)
            SELECT 'B' || p.id, r.id, p.id, 'redeemed', 0, now(), now(), 'bench', ''
            FROM profiles_profile p, coupons_couponrule r WHERE p.id % 30 = 0
            """
        )
        cursor.execute(
            """
            INSERT INTO coupons_redemption (coupon_id, rule_id, profile_id, user_id, order_id, order_amount,
                                            discount, redeemed_at)
            SELECT c.id, c.rule_id, c.profile_id, p.user_id, 'o' || p.id, 100, 5, now()
            FROM coupons_coupon c JOIN profiles_profile p ON p.id = c.profile_id
            """
        )
        for table in ("profiles_profile", "profiles_identity", "tracking_event", "coupons_redemption"):
            cursor.execute(f"ANALYZE {table}")
        cursor.execute("SELECT count(*) FROM tracking_event")
        events = cursor.fetchone()[0]
    print(f"  generated {events:,} events in {time.monotonic() - started:.1f} s", flush=True)


def have_data(profiles: int) -> bool:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM profiles_profile")
        return cursor.fetchone()[0] == profiles


BASELINE = """
WITH cohort AS (
    SELECT p.id, p.user_id FROM profiles_profile p
    WHERE p.merged_into_id IS NULL AND p.first_seen_at >= %(since)s AND p.first_seen_at < %(until)s
)
SELECT max(e.utm_source), count(*)
FROM cohort c JOIN profiles_identity i ON i.profile_id = c.id AND i.kind = 'user_id'
JOIN tracking_event e ON e.user_id = i.value
WHERE e.timestamp >= %(since)s
GROUP BY c.id
"""


def main() -> None:
    args = parse_args()
    profiles = int(args.profiles * args.scale)
    url = bench_database_url("_channelsbench")
    ensure_database(url)
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.development")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone

    from coupons.selectors import channel_quality

    call_command("migrate", verbosity=0)
    if args.regenerate or not have_data(profiles):
        generate(profiles)
    today = timezone.now().astimezone(UTC).date()
    start, end = today - timedelta(days=120), today - timedelta(days=91)
    since = timezone.now() - timedelta(days=120)

    def baseline() -> float:
        with connection.cursor() as cursor:
            started = time.monotonic()
            cursor.execute(BASELINE, {"since": since, "until": since + timedelta(days=30)})
            cursor.fetchall()
            return time.monotonic() - started

    ours, theirs = [], []
    for i in range(args.repeat):
        started = time.monotonic()
        rows = channel_quality(start=start, end=end, today=today)
        ours.append(time.monotonic() - started)
        theirs.append(baseline())
        print(f"  run {i + 1}: channel quality {ours[-1]:.2f} s, baseline {theirs[-1]:.2f} s", flush=True)
    people = sum(r.new_users for r in rows)
    require_workload("people who joined in the window", people, at_least=100)
    require_workload("sources with new users", sum(1 for r in rows if r.new_users), at_least=2)
    print(f"{people:,} people joined in the window, {len(rows)} sources")
    print(f"channel quality: best {min(ours):.2f} s, median {statistics.median(ours):.2f} s")
    print(f"baseline:        best {min(theirs):.2f} s, median {statistics.median(theirs):.2f} s")
    print(f"ratio of the best runs: {min(ours) / min(theirs):.2f}")

    if args.clickhouse:
        on_clickhouse(args, rows, start=start, end=end, today=today)


def on_clickhouse(args, expected, *, start, end, today) -> None:
    """The same report with the events read from an embedded ClickHouse fed by the real shipping
    path (people and coupons stay in PostgreSQL): its time, and whether it answers the same."""
    from django.conf import settings
    from django.db import connection

    from coupons.selectors import channel_quality
    from tracking import shipping
    from tracking.events_store import clickhouse_store

    settings.OPSLOOP_EVENTS_STORE = "clickhouse"
    settings.OPSLOOP_CLICKHOUSE_URL = f"chdb://{ROOT / '.run' / 'channelsbench-chdb'}"
    store = clickhouse_store()
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM tracking_event")
        stored = cursor.fetchone()[0]
    if store.event_count() != stored:
        store.truncate()
        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE tracking_shippingbacklog")
            # The outbox as ingestion writes it: a row per run of consecutive ids.
            cursor.execute("""
                INSERT INTO tracking_shippingbacklog (first_event_id, last_event_id, created_at)
                SELECT min(id), max(id), now() FROM (SELECT id, id - row_number() OVER (ORDER BY id) AS island
                                                     FROM tracking_event) ids
                GROUP BY island
            """)
        started = time.monotonic()
        shipped = shipping.ship_events(batch_events=100_000)
        print(f"ClickHouse: {shipped.events:,} events shipped in {time.monotonic() - started:.1f} s", flush=True)
    shipping.ship_history()  # every id is held: only marks the history loaded
    require_workload("events in ClickHouse", store.event_count(), at_least=stored)
    timings = []
    with store.held():
        for i in range(args.repeat):
            started = time.monotonic()
            rows = channel_quality(start=start, end=end, today=today)
            timings.append(time.monotonic() - started)
            print(f"  run {i + 1}: channel quality on ClickHouse {timings[-1]:.2f} s", flush=True)
    same = "yes" if rows == expected else "NO"
    print(f"channel quality on ClickHouse: best {min(timings):.2f} s, median {statistics.median(timings):.2f} s")
    print(f"same answer as on PostgreSQL: {same}")


if __name__ == "__main__":
    main()
