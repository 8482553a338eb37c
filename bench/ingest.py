"""Event ingestion throughput: the service path, HTTP, and a raw COPY baseline.

    .venv/bin/python bench/ingest.py                 # 200,000 events
    .venv/bin/python bench/ingest.py --events 50000 --clients 4 --workers 3

It works in a database of its own, `<DATABASE_URL's name>_bench` (created and migrated on first
use, emptied before each phase), so it never touches real data. Phases, each over the same
generated events:

(a) service: `tracking.services.ingest_events` in batches, in this process (validation, the
    set-based insert, and the ingestion listeners of the apps above unless --no-listeners);
(b) http: gunicorn started here on --port against the bench database, `POST /api/v1/events` in
    1000-event batches from --clients concurrent clients (listeners always on, as in production);
(c) copy: the same events mapped straight to columns (no validation) and `COPY`ed, one batch per
    transaction, into a scratch table created `LIKE tracking_event INCLUDING ALL` (same columns,
    indexes and constraints): what a hand-written loader would do, the floor to compare with.

The first/last seen of existing profiles is not updated in (a)'s transactions but by the minutely
background step (`profiles.tasks.rollup_seen_times`) from the backlog (a) leaves. So that the
whole cost shows, the step runs right after each (a) exactly as the task runs it
(`catch_up_seen_times`), and its own rate (events applied per second) is printed, together with
the rate of (a) and the step taken together.

--repeat N runs (c) and (a) N times, interleaved, and reports the best of each: on a machine
shared with other work the best run is the one least disturbed.
It prints events/s for each and the ratios a/c and b/c.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchdb import bench_database_url, ensure_database  # noqa: E402

NAMES = [  # name, kind, weight
    ("app_open", "behavior", 30),
    ("page_view", "traffic", 40),
    ("search", "behavior", 12),
    ("add_to_cart", "behavior", 8),
    ("order_paid", "business", 6),
    ("signup", "behavior", 3),
    ("order_refunded", "business", 1),
]
SOURCES = [("", "", ""), ("newsletter", "email", "spring"), ("wechat", "social", "moments"), ("baidu", "cpc", "brand")]
DEVICES = [("iPhone15,2", "iOS 18.1"), ("SM-S9180", "Android 14"), ("desktop", "Windows 11"), ("desktop", "macOS 15")]
WORDS = ["shoes", "rice cooker", "tea", "phone case", "jacket", "coffee", "lamp", "backpack"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000, help="events per phase (default 200000)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply --events (e.g. 0.25)")
    parser.add_argument("--batch", type=int, default=1000, help="events per batch / request (default 1000)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients (default 4)")
    parser.add_argument("--workers", type=int, default=3, help="gunicorn worker processes (default 3)")
    parser.add_argument("--port", type=int, default=8101)
    parser.add_argument("--no-listeners", action="store_true", help="(a) without the listeners of apps above")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--repeat", type=int, default=1, help="run (a) and (c) N times, interleaved; report the best")
    parser.add_argument("--seed", type=int, default=7)
    return parser.parse_args()


def generate(count: int, seed: int) -> list[dict]:
    """Events as a product would send them: a long tail of people, mostly app opens and page
    views, some searches and orders, timestamps over the last 30 days."""
    rng = random.Random(seed)
    names = [n for n, _k, w in NAMES for _ in range(w)]
    people = max(count // 20, 1)
    now = datetime.now(UTC)
    events = []
    for _ in range(count):
        name = rng.choice(names)
        person = rng.randrange(people)
        event: dict = {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "name": name,
            "timestamp": (now - timedelta(seconds=rng.randrange(30 * 86400))).isoformat(),
        }
        if rng.random() < 0.8:
            event["user_id"] = f"u{person}"
        else:
            event["anonymous_id"] = f"anon-{person}"
        device, os_name = rng.choice(DEVICES)
        context = {"device": device, "os": os_name, "ip": f"10.{rng.randrange(256)}.{rng.randrange(256)}.7"}
        properties: dict = {}
        if name == "page_view":
            source, medium, campaign = rng.choice(SOURCES)
            context["url"] = f"https://shop.example.com/p/{rng.randrange(5000)}?ref=home"
            context["referrer"] = "https://www.example.org/"
            if source:
                context.update(utm_source=source, utm_medium=medium, utm_campaign=campaign)
        elif name == "search":
            properties = {"query": rng.choice(WORDS), "results": rng.randrange(200)}
        elif name in ("order_paid", "order_refunded"):
            properties = {"order_id": f"o{rng.getrandbits(40)}", "amount": f"{rng.randrange(100, 99999) / 100:.2f}"}
            if rng.random() < 0.2:
                properties["coupon_code"] = f"C{rng.getrandbits(32):08X}"
        elif name == "add_to_cart":
            properties = {"sku": f"sku-{rng.randrange(5000)}", "quantity": rng.randrange(1, 4)}
        event["properties"] = properties
        event["context"] = context
        events.append(event)
    return events


def batches(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def empty_tables() -> None:
    from django.apps import apps
    from django.db import connection

    tables = ["tracking_event"]
    for label in ("profiles",):
        try:
            config = apps.get_app_config(label)
        except LookupError:
            continue
        tables += [m._meta.db_table for m in config.get_models() if m._meta.managed]
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(tables)} CASCADE")
        cursor.execute("VACUUM ANALYZE tracking_event")


def phase_service(events: list[dict], size: int) -> float:
    """Seconds (a) takes."""
    from tracking.services import ingest_events

    started = time.perf_counter()
    stored = 0
    for chunk in batches(events, size):
        stored += ingest_events(events=chunk).accepted
    elapsed = time.perf_counter() - started
    assert stored == len(events), f"service stored {stored} of {len(events)}"
    return elapsed


def phase_seen_upkeep(expected: int) -> float:
    """Seconds the background step takes to apply the backlog (a) left, as the task runs it."""
    from profiles.models import SeenBacklog
    from profiles.services import catch_up_seen_times

    started = time.perf_counter()
    applied = catch_up_seen_times(max_seconds=3600).events
    elapsed = time.perf_counter() - started
    assert applied == expected, f"upkeep applied {applied} of {expected}"
    assert not SeenBacklog.objects.exists()
    return elapsed


def phase_http(events: list[dict], args: argparse.Namespace, db_url: str) -> float:
    import requests

    from access.services import create_api_key

    key = create_api_key(name=f"bench-{uuid.uuid4().hex[:8]}", scopes=["events:write"]).plaintext
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "DJANGO_SETTINGS_MODULE": "config.settings.production",
        "OPSLOOP_SECRET_KEY": "bench-only-" + uuid.uuid4().hex,
        "OPSLOOP_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "OPSLOOP_SSL_REDIRECT": "0",
        "OPSLOOP_LOG_LEVEL": "WARNING",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "config.wsgi", "-b", f"127.0.0.1:{args.port}", "-w", str(args.workers),
         "--timeout", "120", "--log-level", "warning"],
        cwd=ROOT, env=env, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{args.port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{base}/healthz", timeout=10).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("gunicorn did not start")
            time.sleep(0.3)
        bodies = [json.dumps({"events": chunk}).encode() for chunk in batches(events, min(args.batch, 1000))]
        headers = {"Authorization": f"Api-Key {key}", "Content-Type": "application/json"}
        sessions: dict[int, requests.Session] = {}

        def send(body: bytes) -> int:
            import threading

            session = sessions.setdefault(threading.get_ident(), requests.Session())
            response = session.post(f"{base}/api/v1/events", data=body, headers=headers, timeout=120)
            response.raise_for_status()
            return response.json()["accepted"]

        # Warm each worker (imports, connections) outside the measurement, with a tiny batch.
        for _ in range(args.workers * 2):
            send(json.dumps({"events": generate(1, seed=random.randrange(1 << 30))}).encode())
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.clients) as pool:
            stored = sum(pool.map(send, bodies))
        elapsed = time.perf_counter() - started
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    assert stored == len(events), f"http stored {stored} of {len(events)}"
    return len(events) / elapsed


def copy_rows(events: list[dict]) -> list[tuple]:
    """The events in column order, as a hand-written loader would have them ready."""
    from urllib.parse import urlsplit as split

    received = datetime.now(UTC)
    kinds = dict(NAME_KINDS)
    rows = []
    for e in events:
        c = e["context"]
        url = c.get("url", "")
        rows.append(
            (
                e["event_id"], e["name"], kinds[e["name"]], e["timestamp"], received, e.get("user_id"),
                e.get("anonymous_id"), json.dumps(e["properties"]), "{}", url, split(url).path if url else "",
                c.get("referrer", ""), c.get("utm_source", ""), c.get("utm_medium", ""), c.get("utm_campaign", ""),
                c.get("device", ""), c.get("os", ""), c.get("ip"), "",
            )
        )  # fmt: skip
    return rows


NAME_KINDS = [(n, k) for n, k, _w in NAMES]
COPY_COLUMNS = (
    "event_id, name, kind, timestamp, received_at, user_id, anonymous_id, properties, context_extra, url, path, "
    "referrer, utm_source, utm_medium, utm_campaign, device, os, ip, locale"
)


def phase_copy(events: list[dict], size: int) -> float:
    from django.db import connection, transaction

    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS bench_event_copy")
        cursor.execute("CREATE TABLE bench_event_copy (LIKE tracking_event INCLUDING ALL)")
    raw = connection.connection
    started = time.perf_counter()
    rows = copy_rows(events)  # mapping fields to columns is part of any loader's work
    # Committed per batch like the other two, so each pays the same per-transaction costs.
    for chunk in batches(rows, size):
        with (
            transaction.atomic(),
            raw.cursor() as cursor,
            cursor.copy(f"COPY bench_event_copy ({COPY_COLUMNS}) FROM STDIN") as copy,
        ):
            for row in chunk:
                copy.write_row(row)
    elapsed = time.perf_counter() - started
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM bench_event_copy")
        assert cursor.fetchone()[0] == len(events)
        cursor.execute("DROP TABLE bench_event_copy")
    return len(events) / elapsed


def main() -> None:
    args = parse_args()
    count = max(int(args.events * args.scale), 1)
    db_url = bench_database_url()
    ensure_database(db_url)
    os.environ["DATABASE_URL"] = db_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.development")
    os.environ["OPSLOOP_DEBUG"] = "0"  # DEBUG keeps every query in memory and slows each one

    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    if args.no_listeners:
        from tracking import hooks

        hooks._listeners.clear()

    print(f"generating {count} events ...", flush=True)
    events = generate(count, args.seed)

    # Interleaved, so that a burst of load from elsewhere on a shared machine hits both alike.
    runs: dict[str, list[float]] = {"a": [], "c": [], "seen": [], "a+seen": []}
    for _ in range(max(args.repeat, 1)):
        empty_tables()
        runs["c"].append(phase_copy(events, args.batch))
        empty_tables()
        service = phase_service(events, args.batch)
        runs["a"].append(count / service)
        if not args.no_listeners:
            upkeep = phase_seen_upkeep(count)
            runs["seen"].append(count / upkeep)
            runs["a+seen"].append(count / (service + upkeep))
    results = {k: max(values) for k, values in runs.items() if values}
    listeners = "without listeners" if args.no_listeners else "with listeners"
    detail = {k: ", ".join(f"{v:,.0f}" for v in values) for k, values in runs.items()}
    print(f"(c) raw COPY into a scratch table:   {results['c']:>10,.0f} events/s   runs: {detail['c']}")
    print(f"(a) service path ({listeners}):  {results['a']:>10,.0f} events/s   runs: {detail['a']}", flush=True)
    if "seen" in results:
        print(f"    first/last seen step (deferred): {results['seen']:>10,.0f} events/s   runs: {detail['seen']}")
        print(f"    (a) and the step together:       {results['a+seen']:>10,.0f} events/s   runs: {detail['a+seen']}")

    if not args.skip_http:
        empty_tables()
        results["b"] = phase_http(events, args, db_url)
        print(f"(b) HTTP, {args.clients} clients, {args.workers} workers: {results['b']:>10,.0f} events/s", flush=True)

    print(f"a/c = {results['a'] / results['c']:.2f}   (target >= 0.5)")
    if "a+seen" in results:
        print(f"(a with the step)/c = {results['a+seen'] / results['c']:.2f}")
    if "b" in results:
        print(f"b/c = {results['b'] / results['c']:.2f}   (b target >= 10,000 events/s)")
    empty_tables()


if __name__ == "__main__":
    main()
