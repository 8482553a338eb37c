"""Benchmark of campaign sending and segment evaluation.

1. Sends: a campaign to N recipients (default 200,000) delivered by two Celery worker processes
   to a local HTTP sink; prints deliveries per second and the ratio to a plain script that posts
   the same JSON to the same sink with the same concurrency (2 processes x T threads).
   Target: ratio >= 0.5.
2. Segments: a segment over M profiles (default 1,000,000) counted through the compiler, against
   hand-written SQL for the same question. Target: within 1.5x. The segment uses every kind of
   condition (all, any, not, tag, tier, predicted tier, lifecycle, RFM segment, a column trait, a
   JSON trait, an event count) and selects about 9 % of the profiles; the bench stops, with no
   ratio, when the answer falls outside 5-20 %, when the two answers differ, or when any one
   condition alone selects none or every profile (it would not be measuring that condition).

Runs against DATABASE_URL / REDIS_URL: a migrated database whose name ends in `_bench` (its
profile, event and campaign tables are emptied before and after). Example, smaller:
    python bench/sends.py --recipients 20000 --profiles 200000
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")


# --- the sink ----------------------------------------------------------------------------------


class _Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b'{"ok":true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def _serve(port_queue) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    server.daemon_threads = True
    port_queue.put(server.server_address[1])
    server.serve_forever()


def start_sink() -> tuple[mp.Process, str]:
    ctx = mp.get_context("fork")
    port_queue = ctx.Queue()
    proc = ctx.Process(target=_serve, args=(port_queue,), daemon=True)
    proc.start()
    return proc, f"http://127.0.0.1:{port_queue.get(timeout=10)}/send"


# --- baseline: a plain script posting the same requests ----------------------------------------


def _plain_worker(url: str, payloads: list[dict], threads: int) -> None:
    import requests

    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=threads)
    session.mount("http://", adapter)

    def post(p: dict) -> int:
        return session.post(url, json=p, headers={"Idempotency-Key": p["idempotency_key"]}, timeout=10).status_code

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(post, payloads))


def plain_baseline(url: str, payloads: list[dict], processes: int, threads: int) -> float:
    ctx = mp.get_context("fork")
    chunks = [payloads[i::processes] for i in range(processes)]
    started = time.perf_counter()
    procs = [ctx.Process(target=_plain_worker, args=(url, chunk, threads)) for chunk in chunks]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return len(payloads) / (time.perf_counter() - started)


# --- setup -------------------------------------------------------------------------------------


def setup_django() -> None:
    import django

    django.setup()


def clean(cursor) -> None:
    """Empty the tables the benchmark fills. Only ever on a database made for benchmarks."""
    name = cursor.connection.info.dbname
    if not name.endswith("_bench"):
        raise SystemExit(f"refusing to empty tables of {name!r}: point DATABASE_URL at a database named *_bench")
    cursor.execute(
        "TRUNCATE campaigns_delivery, campaigns_assignment, campaigns_dailysendcount, campaigns_variant,"
        " campaigns_campaign, campaigns_segment, tracking_event, profiles_profile, crm_customervalue,"
        " predictions_prediction CASCADE"
    )
    cursor.execute("DELETE FROM crm_valuetier WHERE slug LIKE 'bench-%%'")
    cursor.execute("DELETE FROM predictions_predictedtier WHERE slug LIKE 'bench-%%'")


def insert_select(cursor, model, own: dict[str, str], own_params: list, tail: str, tail_params: list) -> None:
    """INSERT ... SELECT into `model`'s table: the columns in `own` from the given SQL, every
    other column from its model default, so the script keeps working when a model grows."""
    from django.db import connection

    columns, values, params = [], [], list(own_params)
    for field in model._meta.concrete_fields:
        if (field.primary_key or field.is_relation) and field.name not in own:
            continue
        columns.append(field.column)
        if field.name in own:
            values.append(own[field.name])
        elif getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
            values.append("now()")
        elif field.null and not field.has_default():
            values.append("NULL")
        else:
            values.append("%s")
            params.append(field.get_db_prep_save(field.get_default(), connection))
    cursor.execute(
        f"INSERT INTO {model._meta.db_table} ({', '.join(columns)}) SELECT {', '.join(values)} {tail}",
        params + tail_params,
    )


def make_profiles(cursor, count: int, prefix: str, tag: str | None, tag_every: int = 1) -> None:
    """Profiles, their user_id identities and (every `tag_every`-th) a tag, set-based."""
    from profiles.models import Profile

    own = {
        "user_id": "%s || g",
        "city": "CASE WHEN g %% 4 = 0 THEN 'Beijing' ELSE 'Shanghai' END",
        "timezone": "'UTC'",
        "push_opt_in": "true",
        "traits": "jsonb_build_object('vip_level', g %% 5)",
    }
    insert_select(cursor, Profile, own, [prefix], "FROM generate_series(1, %s) g", [count])
    cursor.execute(
        "INSERT INTO profiles_identity (profile_id, kind, value, created_at)"
        " SELECT id, 'user_id', user_id, now() FROM profiles_profile WHERE user_id LIKE %s",
        [prefix + "%"],
    )
    if tag:
        cursor.execute(
            "INSERT INTO profiles_tag (name, category, description, source, created_at)"
            " VALUES (%s, 'bench', '', 'manual', now()) ON CONFLICT (name) DO NOTHING",
            [tag],
        )
        cursor.execute(
            "INSERT INTO profiles_profiletag (profile_id, tag_id, source, computed_at)"
            " SELECT p.id, t.id, 'manual', now() FROM profiles_profile p, profiles_tag t"
            " WHERE t.name = %s AND p.user_id LIKE %s AND p.id %% %s = 0",
            [tag, prefix + "%", tag_every],
        )
    cursor.execute("ANALYZE profiles_profile; ANALYZE profiles_identity; ANALYZE profiles_profiletag")


# --- 1. sends ----------------------------------------------------------------------------------


def bench_sends(recipients: int, threads: int, batch: int) -> None:
    from django.db import connection

    from campaigns import services
    from campaigns.models import Campaign, Channel, Delivery, Segment, Variant

    sink_proc, url = start_sink()
    with connection.cursor() as cursor:
        clean(cursor)
        t0 = time.perf_counter()
        make_profiles(cursor, recipients, "bench-r", "bench-send")
        print(f"[setup] {recipients:,} recipients in {time.perf_counter() - t0:.1f}s")
    Channel.objects.update_or_create(kind="push", defaults={"url": url, "rate_per_second": 0, "enabled": True})
    segment = Segment.objects.create(name="bench-send", definition={"tag": "bench-send"})
    campaign = Campaign.objects.create(
        name="bench-send",
        segment=segment,
        channel="push",
        holdout_percent=0,
        frequency_cap_per_day=0,
        respect_quiet_hours=False,
        status="running",
    )
    for i, name in enumerate(("A", "B")):
        Variant.objects.create(campaign=campaign, name=name, position=i, weight=50, title="Hi", body="Bench", url="")

    import redis
    from django.conf import settings

    redis.Redis.from_url(settings.REDIS_URL).delete("deliveries")
    env = dict(os.environ, OPSLOOP_DELIVERY_THREADS=str(threads), OPSLOOP_DELIVERY_BATCH_SIZE=str(batch))
    from tests.workers import WorkerProcess

    logdir = Path(tempfile.mkdtemp(prefix="opsloop-sends-"))
    workers = [
        WorkerProcess(
            env=env,
            log_path=logdir / f"worker{i}.log",
            queues="deliveries,default",
            name=f"bench{i}",
            loglevel="WARNING",
            concurrency=1,
        )
        for i in range(2)
    ]
    for w in workers:
        w.start()
    try:
        time.sleep(4)  # let both workers connect before the clock starts
        started = time.perf_counter()
        services.start_send(campaign_id=campaign.pk)
        queued = time.perf_counter() - started
        total = Delivery.objects.filter(campaign=campaign).count()
        while True:
            left = Delivery.objects.filter(campaign=campaign, status__in=["pending", "sending"]).count()
            if left == 0:
                break
            time.sleep(0.5)
        elapsed = time.perf_counter() - started
    finally:
        for w in workers:
            w.stop()
    sent = Delivery.objects.filter(campaign=campaign, status="sent").count()
    if sent == 0 or sent < total:
        raise SystemExit(f"only {sent:,} of {total:,} deliveries were sent: no ratio for a workload that did not run")
    rate = sent / elapsed
    print(
        f"[sends] {sent:,}/{total:,} sent in {elapsed:.1f}s (snapshot + queueing {queued:.1f}s):"
        f" {rate:,.0f} deliveries/s"
    )

    payloads = [
        {
            "delivery_id": d["id"],
            "idempotency_key": str(d["idempotency_key"]),
            "campaign": campaign.pk,
            "variant": "A",
            "user_id": d["user_id"],
            "channel": "push",
            "title": "Hi",
            "body": "Bench",
            "url": "",
        }
        for d in Delivery.objects.filter(campaign=campaign).values("id", "idempotency_key", "user_id")
    ]
    baseline = plain_baseline(url, payloads, processes=2, threads=threads)
    print(f"[sends] plain script, 2 processes x {threads} threads: {baseline:,.0f} requests/s")
    print(f"[sends] ratio campaign / plain = {rate / baseline:.2f} (target >= 0.5)")
    sink_proc.terminate()


# --- 2. segments -------------------------------------------------------------------------------


RFM_NAMED = [
    "important_value", "important_retention", "general_value", "general_retention", "important_development",
    "general_development",
]  # fmt: skip
# Which profiles each condition takes, by the profile's number g (user id `bench-s<g>`): each
# condition keys on g modulo its own prime, so the conditions are independent (the primes are
# coprime) and the share the segment selects is the product of their shares:
# 1/2 * 1/3 * 4/5 * 6/7 * 10/11 * 12/13 * 16/17 = 9.0 %.
SEGMENT = {
    "all": [
        {"tag": "bench-seg"},  # g % 2 = 0: 1/2
        {"trait": "city", "op": "eq", "value": "Beijing"},  # g % 3 = 0: 1/3
        {"any": [{"tier": "bench-gold"}, {"predicted_tier": "bench-rising"}]},  # g % 5 < 3, g % 5 = 3: 4/5
        {"not": {"lifecycle": "churned"}},  # churned where g % 7 = 0: 6/7
        {"rfm_segment": RFM_NAMED},  # g % 11 < 10: 10/11
        {"trait": "vip_level", "op": "gte", "value": 1},  # JSON trait g % 13: 12/13
        {"event": "bench_open", "within_days": 30, "op": "gte", "count": 2},  # two where g % 17 > 0: 16/17
    ]
}
EXPECTED_SHARE = 1 / 2 * 1 / 3 * 4 / 5 * 6 / 7 * 10 / 11 * 12 / 13 * 16 / 17
# The RFM segment of g % 11: the six the segment names, then two it does not (g % 11 >= 10 is
# general_winback, the last position of the list).
RFM_OF_RESIDUE = ["important_value", "important_retention", "general_value", "general_retention",
                  "important_development", "general_development", "important_value", "general_value",
                  "important_retention", "general_retention", "general_winback"]  # fmt: skip

HAND_SQL = """
SELECT count(*) FROM profiles_profile p
JOIN crm_customervalue cv ON cv.profile_id = p.id
WHERE p.merged_into_id IS NULL AND p.city = 'Beijing'
  AND EXISTS (SELECT 1 FROM profiles_profiletag pt WHERE pt.profile_id = p.id AND pt.tag_id = %(tag)s)
  AND (cv.tier_id = %(tier)s
       OR EXISTS (SELECT 1 FROM predictions_prediction pp WHERE pp.profile_id = p.id AND pp.tier_id = %(rising)s))
  AND cv.lifecycle <> 'churned'
  AND cv.segment IN ('important_value', 'important_retention', 'general_value', 'general_retention',
                     'important_development', 'general_development')
  AND (p.traits ->> 'vip_level')::numeric >= 1
  AND p.id IN (
    SELECT i.profile_id FROM tracking_event e
    JOIN profiles_identity i ON i.kind = 'user_id' AND i.value = e.user_id
    WHERE e.name = 'bench_open' AND e.timestamp >= now() - interval '30 days'
    GROUP BY i.profile_id HAVING count(*) >= 2)
"""


def make_segment_workload(cursor, profiles: int) -> dict[str, int]:
    """Profiles `bench-s1` .. `bench-s<profiles>` with the tags, values, predictions, traits and
    events the segment reads (see SEGMENT); returns the ids of the tag and tiers made."""
    from crm.models import CustomerValue, ValueTier
    from predictions.models import PredictedTier, Prediction
    from profiles.models import Profile
    from tracking.models import Event

    g = "substr(p.user_id, 8)::int"  # the number of a `bench-s<g>` profile
    own = {
        "user_id": "'bench-s' || g",
        "city": "CASE WHEN g %% 3 = 0 THEN 'Beijing' ELSE 'Shanghai' END",
        "timezone": "'UTC'",
        "push_opt_in": "true",
        "traits": "jsonb_build_object('vip_level', g %% 13)",
    }
    insert_select(cursor, Profile, own, [], "FROM generate_series(1, %s) g", [profiles])
    cursor.execute(
        "INSERT INTO profiles_identity (profile_id, kind, value, created_at)"
        " SELECT id, 'user_id', user_id, now() FROM profiles_profile WHERE user_id LIKE 'bench-s%%'"
    )
    cursor.execute(
        "INSERT INTO profiles_tag (name, category, description, source, created_at)"
        " VALUES ('bench-seg', 'bench', '', 'manual', now()) ON CONFLICT (name) DO NOTHING RETURNING id"
    )
    cursor.execute("SELECT id FROM profiles_tag WHERE name = 'bench-seg'")
    tag = cursor.fetchone()[0]
    cursor.execute(
        "INSERT INTO profiles_profiletag (profile_id, tag_id, source, computed_at)"
        f" SELECT p.id, %s, 'manual', now() FROM profiles_profile p WHERE p.user_id LIKE 'bench-s%%' AND {g} %% 2 = 0",
        [tag],
    )  # fmt: skip
    gold = ValueTier.objects.create(slug="bench-gold", name="Bench gold", rank=90).pk
    silver = ValueTier.objects.create(slug="bench-silver", name="Bench silver", rank=10).pk
    rising = PredictedTier.objects.create(slug="bench-rising", name="Bench rising", rank=90).pk
    steady = PredictedTier.objects.create(slug="bench-steady", name="Bench steady", rank=10).pk
    rfm = "(ARRAY[" + ", ".join(f"'{name}'" for name in RFM_OF_RESIDUE) + f"])[{g} %% 11 + 1]"
    insert_select(
        cursor,
        CustomerValue,
        {
            "profile": "p.id",
            "tier": f"CASE WHEN {g} %% 5 < 3 THEN %s ELSE %s END",
            "lifecycle": f"CASE WHEN {g} %% 7 = 0 THEN 'churned' ELSE 'active' END",
            "segment": rfm,
        },
        [gold, silver],
        "FROM profiles_profile p WHERE p.user_id LIKE 'bench-s%%'",
        [],
    )
    insert_select(
        cursor,
        Prediction,
        {"profile": "p.id", "tier": f"CASE WHEN {g} %% 5 = 3 THEN %s ELSE %s END"},
        [rising, steady],
        "FROM profiles_profile p WHERE p.user_id LIKE 'bench-s%%'",
        [],
    )
    # Two events in the last 30 days for most, one for the profiles whose g % 17 = 0.
    insert_select(
        cursor,
        Event,
        {
            "event_id": "gen_random_uuid()",
            "name": "'bench_open'",
            "timestamp": "now() - (g %% 20) * interval '1 day' - k * interval '1 hour'",
            "user_id": "'bench-s' || g",
        },
        [],
        "FROM generate_series(1, %s) g, generate_series(1, 2) k WHERE g %% 17 <> 0 OR k = 1",
        [profiles],
    )
    cursor.execute(
        "ANALYZE profiles_profile; ANALYZE profiles_identity; ANALYZE profiles_profiletag; ANALYZE tracking_event;"
        " ANALYZE crm_customervalue; ANALYZE predictions_prediction"
    )
    return {"tag": tag, "tier": gold, "rising": rising}


def leaves(node: dict) -> list[dict]:
    """The conditions of a definition that are not groups, each to be counted alone."""
    for group in ("all", "any"):
        if group in node:
            return [leaf for child in node[group] for leaf in leaves(child)]
    if "not" in node:
        return leaves(node["not"])
    return [node]


def check_workload(profiles: int, size: int, hand_size: int) -> None:
    """Stop with no ratio when the segment's answer could not tell a fast query from a wrong or
    empty one: outside 5-20 % of the profiles, different from the hand-written answer, or with a
    condition that alone selects none or all."""
    from campaigns.selectors import segment_size

    if size != hand_size:
        raise SystemExit(f"[segments] the compiled segment counts {size:,}, the hand-written SQL {hand_size:,}")
    share = size / profiles
    if not 0.05 <= share <= 0.20:
        raise SystemExit(f"[segments] the segment selects {share:.1%} of the profiles ({size:,}), not 5-20 %")
    if abs(share - EXPECTED_SHARE) > 0.01:
        raise SystemExit(f"[segments] the segment selects {share:.1%}, the workload was built for {EXPECTED_SHARE:.1%}")
    for leaf in leaves(SEGMENT):
        alone = segment_size(leaf)
        if not 0 < alone < profiles:
            raise SystemExit(f"[segments] the condition {leaf} alone selects {alone:,} of {profiles:,} profiles")
    kinds = set()
    stack = [SEGMENT]
    while stack:
        node = stack.pop()
        kind = next(k for k in node if k not in ("op", "value", "within_days", "count"))
        kinds.add(kind)
        children = node[kind] if kind in ("all", "any") else [node[kind]] if kind == "not" else []
        stack.extend(children)
    from campaigns.segments import CONDITION_KEYS

    missing = set(CONDITION_KEYS) - kinds
    if missing:
        raise SystemExit(f"[segments] the segment leaves out the condition kinds {sorted(missing)}")
    print(f"[segments] workload: {size:,} of {profiles:,} profiles ({share:.1%}), every condition kind used, "
          f"each condition alone selecting some but not all")  # fmt: skip


def bench_segments(profiles: int, repeats: int) -> None:
    from django.db import connection

    from campaigns.selectors import segment_size

    if profiles < 10_000:
        raise SystemExit("--profiles must be at least 10,000 for a segment worth timing")
    with connection.cursor() as cursor:
        clean(cursor)
        t0 = time.perf_counter()
        ids = make_segment_workload(cursor, profiles)
        print(f"[setup] {profiles:,} profiles with values, predictions and events in {time.perf_counter() - t0:.1f}s")

    def compiled() -> int:
        return segment_size(SEGMENT)

    def hand() -> int:
        with connection.cursor() as cursor:
            cursor.execute(HAND_SQL, ids)
            return cursor.fetchone()[0]

    results = {}
    for label, fn in (("compiled", compiled), ("hand-written", hand)):
        fn()  # warm the cache
        times, size = [], None
        for _ in range(repeats):
            started = time.perf_counter()
            size = fn()
            times.append(time.perf_counter() - started)
        results[label] = (min(times), size)
        print(f"[segments] {label}: size {size:,}, best of {repeats}: {min(times) * 1000:.0f} ms")
    check_workload(profiles, results["compiled"][1], results["hand-written"][1])
    ratio = results["compiled"][0] / results["hand-written"][0]
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"[segments] compiled / hand-written = {ratio:.2f}x (target <= 1.5x)   load: {load}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipients", type=int, default=200_000)
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument(
        "--threads", type=int, default=8, help="HTTP threads per worker process (and per plain process)"
    )
    parser.add_argument("--batch", type=int, default=200, help="deliveries per task")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-sends", action="store_true")
    parser.add_argument("--skip-segments", action="store_true")
    parser.add_argument("--keep", action="store_true", help="leave the bench rows in the database")
    args = parser.parse_args()
    setup_django()
    if not args.skip_sends:
        bench_sends(args.recipients, args.threads, args.batch)
    if not args.skip_segments:
        bench_segments(args.profiles, args.repeats)
    if not args.keep:
        from django.db import connection

        with connection.cursor() as cursor:
            clean(cursor)


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
