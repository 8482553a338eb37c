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
It prints events/s for each, events per CPU-second (this process and the whole PostgreSQL
server for (a) and (c), gunicorn and PostgreSQL for (b): what one core sustains, comparable
across machines and far less moved by other work than the wall clock), the load average, and
the ratios; its last line is `a/c <ratio> b/c <ratio> per_core_a <events/s>`.
--profile runs (a) once more with each stage timed (parse, validation, COPY, each listener and
the profiles statements, commit) and prints microseconds per event and shares.
After (b), gzip bodies of 1000 and of --gzip-sizes events (10,000) go through HTTP: the larger
bodies should keep at least the 1000-event rate.
It refuses fewer than 1000 events, and every phase checks that it stored every event.

--segment measures the Segment tracking API instead, on one gunicorn, back to back (--repeat
times, interleaved; best of each):
(b) our events API as above;
(s) `POST /ingest/segment/v1/batch` through the real `segment-analytics-python` library: the
    same events as track and page calls (messageId = event_id), sent by --clients processes
    with a `Client(write_key, host=...)` each, `upload_size` --segment-upload-size (the
    library's default is 100; up to its 475 KB batch limit). The library's own work (building,
    serialising and batching each message) is part of (s); (b) posts bodies serialised ahead.
(r) the requests the library made in (s), recorded (by pointing it at a recorder first) and
    posted again by --clients threads as (b) posts its bodies: the server's side of (s) alone.
    On a small machine the library's own CPU (about 100 us a message) competes with the server
    for the same cores in (s); (r) shows what the endpoint itself sustains.
It prints the rates and s/b, r/b (goal >= 0.8).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
    parser.add_argument("--profile", action="store_true", help="time each stage of (a) in one more run")
    parser.add_argument("--gzip-sizes", type=int, nargs="*", default=[10_000],
                        help="after (b): gzip bodies of 1000 and of these many events (10000)")  # fmt: skip
    parser.add_argument("--segment", action="store_true", help="(b) against the Segment API through its library")
    parser.add_argument("--segment-upload-size", type=int, default=500, help="messages per Segment batch (500)")
    return parser.parse_args()


def generate(count: int, seed: int) -> list[dict]:
    """Events as a product would send them: a long tail of people, mostly app opens and page
    views, some searches and orders, timestamps over the last 30 days; one in ten of the events
    that name a user also carries the browser's anonymous id, which ties the two."""
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
        draw = rng.random()
        if draw < 0.8:
            event["user_id"] = f"u{person}"
            if draw < 0.08:  # a signed-in visitor of the web shop: its browser's id comes along
                event["anonymous_id"] = f"web-{person}"
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


def _ticks(pid: int | str, *, children: bool) -> int:
    """CPU clock ticks a process used (and those of its children it has reaped, when asked)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return utime + stime + (cutime + cstime if children else 0)


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of `root` and every process below it, the finished ones included (a parent
    reaping a child adds the child's time to its own `cutime`)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue
    below, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in below:
                below.add(child)
                frontier.append(child)
    ticks = sum(_ticks(pid, children=True) for pid in below)
    return ticks / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds() -> float:
    """CPU seconds the whole PostgreSQL server (postmaster, backends, WAL writer, ...) has used,
    when it runs on this machine; 0.0 when its process cannot be found."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW data_directory")
        data = Path(cursor.fetchone()[0])
    try:
        postmaster = int((data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return tree_cpu_seconds(postmaster)


def load() -> str:
    """The 1, 5 and 15 minute load averages: benches on a shared machine say how busy it was."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


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


class Stages:
    """Wall seconds per stage of the service path, taken by wrapping the functions each stage
    runs. A stage's own time leaves out the stages it calls (the profiles listener's statements
    are stages of their own), so the stages add up to the whole."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._inner: list[float] = []

    def timed(self, stage: str, fn):
        def run(*args, **kwargs):
            self._inner.append(0.0)
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.perf_counter() - started
                inner = self._inner.pop()
                self.seconds[stage] = self.seconds.get(stage, 0.0) + spent - inner
                if self._inner:
                    self._inner[-1] += spent

        return run

    def statement(self, execute, sql, params, many, context):
        """A Django execute wrapper: the profiles listener's statements by what they do."""
        text = str(sql)
        if "profiles_seenbacklog" in text and "profiles_profile" in text:
            stage = ("profiles: user ids resolved, new profiles created, seen backlog queued, anonymous ids tied "
                     "(4 statements, one round trip)")  # fmt: skip
        else:
            return execute(sql, params, many, context)
        return self.timed(stage, execute)(sql, params, many, context)


# The stages in the order a batch goes through them, and the name each is printed under.
PARSE = "parse: JSON body to objects (msgspec; HTTP only, not in (a))"
VALIDATE = "validation (tracking.validation.validate_event)"
STORE = "COPY: ids reserved, rows written (tracking.services._copy_new)"
COMMIT = "commit"


def phase_profile(events: list[dict], size: int) -> None:
    """(a) once more with each stage timed (the timers cost a little, so this run is not one of
    the measured ones); prints microseconds per event and each stage's share."""
    from django.db import connection

    from tracking import hooks, jsonio
    from tracking import services as tracking_services

    bodies = [json.dumps({"events": chunk}).encode() for chunk in batches(events, size)]
    started = time.perf_counter()
    for body in bodies:
        jsonio.loads(body)
    parse = time.perf_counter() - started

    stages = Stages()
    saved = {
        "validate_event": tracking_services.validate_event,
        "_copy_new": tracking_services._copy_new,
        "_insert_skipping_conflicts": tracking_services._insert_skipping_conflicts,
    }
    listeners = dict(hooks._listeners)
    tracking_services.validate_event = stages.timed(VALIDATE, saved["validate_event"])
    tracking_services._copy_new = stages.timed(STORE, saved["_copy_new"])
    tracking_services._insert_skipping_conflicts = stages.timed(STORE, saved["_insert_skipping_conflicts"])
    for name, listener in listeners.items():
        hooks._listeners[name] = stages.timed(f"listener {name}", listener)
    connection.ensure_connection()
    commit = connection.commit  # each batch's transaction ends here
    connection.commit = stages.timed(COMMIT, commit)
    try:
        with connection.execute_wrapper(stages.statement):
            total = phase_service(events, size)
    finally:
        for name, fn in saved.items():
            setattr(tracking_services, name, fn)
        hooks._listeners.clear()
        hooks._listeners.update(listeners)
        del connection.commit
    rest = total - sum(stages.seconds.values())
    rows = [(PARSE, parse), *sorted(stages.seconds.items(), key=lambda kv: -kv[1]), ("the rest: batch loop, "
            "transaction begin, results", rest)]  # fmt: skip
    per = 1e6 / len(events)
    print(f"profile of (a), {len(events):,} events in batches of {size} ({total * per:.1f} us/event in all, "
          f"{len(events) / total:,.0f} events/s with the timers):")  # fmt: skip
    for stage, seconds in rows:
        share = "" if stage == PARSE else f"{100 * seconds / total:5.1f} %"
        print(f"    {seconds * per:7.1f} us/event  {share:>7}  {stage}")


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


@contextmanager
def serving(args: argparse.Namespace, db_url: str) -> Iterator[tuple[str, int]]:
    """gunicorn on --port against the bench database, as in production; yields its base URL and
    the process id of its master."""
    import requests

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
        yield base, server.pid
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def new_key() -> str:
    from access.services import create_api_key

    return create_api_key(name=f"bench-{uuid.uuid4().hex[:8]}", scopes=["events:write"]).plaintext


def http_rate(base: str, events: list[dict], args: argparse.Namespace, *, size: int = 1000,
              gzip: bool = False) -> float:  # fmt: skip
    """(b): events/s of `POST /api/v1/events`, bodies serialised (and gzipped) ahead, --clients
    threads."""
    import gzip as gz
    import threading

    import requests

    key = new_key()
    headers = {"Authorization": f"Api-Key {key}", "Content-Type": "application/json"}
    bodies = [json.dumps({"events": chunk}).encode() for chunk in batches(events, size)]
    if gzip:
        headers["Content-Encoding"] = "gzip"
        bodies = [gz.compress(body, compresslevel=6) for body in bodies]
    assert len(bodies) >= args.clients, f"{len(bodies)} bodies cannot keep {args.clients} clients busy"
    sessions: dict[int, requests.Session] = {}

    def send(body: bytes) -> int:
        session = sessions.setdefault(threading.get_ident(), requests.Session())
        response = session.post(f"{base}/api/v1/events", data=body, headers=headers, timeout=300)
        response.raise_for_status()
        return response.json()["accepted"]

    # Warm each worker (imports, connections) outside the measurement, with a tiny batch.
    warm = {k: v for k, v in headers.items() if k != "Content-Encoding"}
    for _ in range(args.workers * 2):
        body = json.dumps({"events": generate(1, seed=random.randrange(1 << 30))}).encode()
        requests.post(f"{base}/api/v1/events", data=body, headers=warm, timeout=60).raise_for_status()
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.clients) as pool:
        stored = sum(pool.map(send, bodies))
    elapsed = time.perf_counter() - started
    assert stored == len(events), f"http stored {stored} of {len(events)}"
    return len(events) / elapsed


def phase_http(events: list[dict], args: argparse.Namespace, db_url: str, *, size: int = 1000,
               gzip: bool = False) -> tuple[float, float]:  # fmt: skip
    """(b)'s events/s, and its events per CPU-second of gunicorn and PostgreSQL together."""
    with serving(args, db_url) as (base, server_pid):
        gunicorn, postgres = tree_cpu_seconds(server_pid), postgres_cpu_seconds()
        rate = http_rate(base, events, args, size=size, gzip=gzip)
        used = tree_cpu_seconds(server_pid) - gunicorn + postgres_cpu_seconds() - postgres
    return rate, len(events) / used


def _segment_call(client, event: dict) -> None:
    """One of our generated events as the product would send it with Segment's library."""
    c = event["context"]
    context: dict = {"ip": c["ip"], "device": {"model": c["device"]}, "os": {"name": c["os"]}}
    if "url" in c:
        context["page"] = {"url": c["url"], "referrer": c["referrer"]}
    if c.get("utm_source"):
        context["campaign"] = {"source": c["utm_source"], "medium": c["utm_medium"], "name": c["utm_campaign"]}
    who = {"user_id": event.get("user_id"), "anonymous_id": event.get("anonymous_id")}
    timestamp = datetime.fromisoformat(event["timestamp"])
    if event["name"] == "page_view":
        client.page(**who, properties=event["properties"], context=context, timestamp=timestamp,
                    message_id=event["event_id"])  # fmt: skip
    else:
        client.track(**who, event=event["name"], properties=event["properties"], context=context,
                     timestamp=timestamp, message_id=event["event_id"])  # fmt: skip


def _segment_sender(events: list[dict], host: str, key: str, upload_size: int, go, failures) -> None:
    """A product process: its own library client, all of its share of events, then flush."""
    from segment.analytics import Client

    errors: list = []
    client = Client(key, host=host, upload_size=upload_size, max_queue_size=len(events) + 1,
                    on_error=lambda e, _batch: errors.append(e), max_retries=0)  # fmt: skip
    go.wait()
    for event in events:
        _segment_call(client, event)
    client.flush()
    client.shutdown()
    with failures.get_lock():
        failures.value += len(errors)
    os._exit(0)  # no interpreter teardown: the forked parent's connections stay the parent's


def segment_rate(base: str, events: list[dict], args: argparse.Namespace) -> float:
    """(s): events/s of `v1/batch` through the real library, --clients processes."""
    import multiprocessing

    from django.db import connection

    key = new_key()
    shares = [events[i :: args.clients] for i in range(args.clients)]
    fork = multiprocessing.get_context("fork")
    go, failures = fork.Event(), fork.Value("i", 0)
    connection.close()  # not shared with the children
    senders = [
        fork.Process(target=_segment_sender, args=(share, f"{base}/ingest/segment", key, args.segment_upload_size,
                                                   go, failures))
        for share in shares
    ]  # fmt: skip
    for sender in senders:
        sender.start()
    time.sleep(1.0)  # the children import the library before the clock starts
    started = time.perf_counter()
    go.set()
    for sender in senders:
        sender.join()
    elapsed = time.perf_counter() - started
    errors = failures.value
    from tracking.models import Event

    stored = Event.objects.count()
    assert errors == 0 and stored == len(events), f"segment stored {stored} of {len(events)}, {errors} errors"
    return len(events) / elapsed


class _Recorder(BaseHTTPRequestHandler):
    """Stands in for opsloop while the library's requests are recorded for (r)."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.recorded.append((body, dict(self.headers)))  # type: ignore[attr-defined]
        reply = b'{"success": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args) -> None:
        pass


def record_segment_requests(events: list[dict], args: argparse.Namespace, key: str) -> list[tuple[bytes, dict]]:
    import multiprocessing
    import threading

    recorder = ThreadingHTTPServer(("127.0.0.1", args.port + 1), _Recorder)
    recorder.recorded = []  # type: ignore[attr-defined]
    threading.Thread(target=recorder.serve_forever, daemon=True).start()
    fork = multiprocessing.get_context("fork")
    go, failures = fork.Event(), fork.Value("i", 0)
    from django.db import connection

    connection.close()
    host = f"http://127.0.0.1:{args.port + 1}"
    senders = [
        fork.Process(target=_segment_sender, args=(events[i :: args.clients], host, key, args.segment_upload_size,
                                                   go, failures))
        for i in range(args.clients)
    ]  # fmt: skip
    for sender in senders:
        sender.start()
    go.set()
    for sender in senders:
        sender.join()
    recorder.shutdown()
    return recorder.recorded  # type: ignore[attr-defined]


def replay_rate(base: str, recorded: list[tuple[bytes, dict]], count: int, args: argparse.Namespace) -> float:
    """(r): the library's recorded requests posted again, --clients threads."""
    import threading

    import requests

    sessions: dict[int, requests.Session] = {}
    keep = ("Authorization", "Content-Type", "Content-Encoding", "User-Agent")

    def send(item: tuple[bytes, dict]) -> int:
        body, headers = item
        session = sessions.setdefault(threading.get_ident(), requests.Session())
        response = session.post(f"{base}/ingest/segment/v1/batch", data=body,
                                headers={k: v for k, v in headers.items() if k in keep}, timeout=120)  # fmt: skip
        response.raise_for_status()
        return response.json()["accepted"]

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.clients) as pool:
        stored = sum(pool.map(send, recorded))
    elapsed = time.perf_counter() - started
    assert stored == count, f"replay stored {stored} of {count}"
    return count / elapsed


def main_segment(args: argparse.Namespace, events: list[dict], db_url: str) -> None:
    runs: dict[str, list[float]] = {"b": [], "s": [], "r": []}
    # Events per CPU-second of gunicorn and PostgreSQL (the server's side), and for (s) the
    # library's own CPU per message: on a small shared machine, the comparison that holds.
    server: dict[str, list[float]] = {"b": [], "s": [], "r": []}
    library: list[float] = []
    with serving(args, db_url) as (base, pid):

        def server_side(key: str, phase, *phase_args) -> None:
            before = tree_cpu_seconds(pid) + postgres_cpu_seconds()
            runs[key].append(phase(*phase_args))
            server[key].append(len(events) / (tree_cpu_seconds(pid) + postgres_cpu_seconds() - before))

        for _ in range(max(args.repeat, 1)):
            empty_tables()
            server_side("b", http_rate, base, events, args)
            empty_tables()
            children = os.times()
            server_side("s", segment_rate, base, events, args)
            after = os.times()  # the sender processes, joined, are counted as this one's children
            used = after.children_user + after.children_system - children.children_user - children.children_system
            library.append(used / len(events) * 1e6)
            recorded = record_segment_requests(events, args, new_key())
            gzipped = sum(1 for _body, headers in recorded if headers.get("Content-Encoding") == "gzip")
            print(f"    the library sent {len(recorded)} requests, {len(events) / len(recorded):,.0f} messages each on "
                  f"average, {gzipped} gzipped", flush=True)  # fmt: skip
            empty_tables()
            server_side("r", replay_rate, base, recorded, len(events), args)
    best = {k: max(v) for k, v in runs.items()}
    core = {k: max(v) for k, v in server.items()}
    detail = {k: ", ".join(f"{v:,.0f}" for v in values) for k, values in runs.items()}
    print(f"(b) POST /api/v1/events, {args.clients} clients, {args.workers} workers: "
          f"{best['b']:>10,.0f} events/s   runs: {detail['b']}")  # fmt: skip
    print(f"(s) Segment v1/batch via segment-analytics-python, {args.clients} processes, "
          f"upload_size {args.segment_upload_size}: {best['s']:>10,.0f} events/s   runs: {detail['s']}")  # fmt: skip
    print(f"(r) the same library requests, recorded and posted again by {args.clients} threads: "
          f"{best['r']:>10,.0f} events/s   runs: {detail['r']}")  # fmt: skip
    print(f"per core of the server (events per CPU-second of gunicorn and PostgreSQL): (b) {core['b']:,.0f}   "
          f"(s) {core['s']:,.0f}   (r) {core['r']:,.0f}   r/b by CPU {core['r'] / core['b']:.2f}")  # fmt: skip
    print(f"the library's own CPU per message in (s): {min(library):.0f} us "
          f"(at most {1e6 / min(library):,.0f} messages/s per core it has)")  # fmt: skip
    print(f"s/b = {best['s'] / best['b']:.2f}   r/b = {best['r'] / best['b']:.2f}   (goal >= 0.8)   "
          f"load: {load()}")  # fmt: skip
    empty_tables()


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


MIN_EVENTS = 1000  # fewer, and a run measures start-up costs rather than ingestion


def cpu_of(phase, *args) -> tuple[float, float]:
    """Run `phase` (which returns its events/s); return that rate and the events it stored per
    CPU-second of this process and the database server together: the rate one core would
    sustain, comparable across machines whatever else they run."""
    client, server = time.process_time(), postgres_cpu_seconds()
    rate = phase(*args)
    used = time.process_time() - client + postgres_cpu_seconds() - server
    return rate, used


def main() -> None:
    args = parse_args()
    count = max(int(args.events * args.scale), 1)
    if count < MIN_EVENTS:
        raise SystemExit(f"--events {count} is too few to measure ingestion: use at least {MIN_EVENTS}")
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

    print(f"generating {count} events ...  load: {load()}", flush=True)
    events = generate(count, args.seed)
    assert len({e["event_id"] for e in events}) == count, "the generated events must be distinct"
    assert sum(1 for e in events if e.get("user_id")) > count // 2, "most events name a user"
    # The generated events are the bench's, not the service's: kept out of the garbage collector's
    # generations (as a gunicorn worker keeps the framework, config/wsgi.py), so that (a) does
    # not pay for walking them at each full collection.
    gc.freeze()
    if args.segment:
        main_segment(args, events, db_url)
        return

    # Interleaved, so that a burst of load from elsewhere on a shared machine hits both alike.
    runs: dict[str, list[float]] = {"a": [], "c": [], "seen": [], "a+seen": []}
    cpu: dict[str, list[float]] = {"a": [], "c": []}  # events per CPU-second, each run
    for _ in range(max(args.repeat, 1)):
        empty_tables()
        rate, used = cpu_of(phase_copy, events, args.batch)
        runs["c"].append(rate)
        cpu["c"].append(count / used)
        empty_tables()
        rate, used = cpu_of(lambda: count / phase_service(events, args.batch))
        runs["a"].append(rate)
        cpu["a"].append(count / used)
        if not args.no_listeners:
            upkeep = phase_seen_upkeep(count)
            runs["seen"].append(count / upkeep)
            runs["a+seen"].append(count / (count / rate + upkeep))
    results = {k: max(values) for k, values in runs.items() if values}
    per_core = {k: max(values) for k, values in cpu.items() if values}
    listeners = "without listeners" if args.no_listeners else "with listeners"
    detail = {k: ", ".join(f"{v:,.0f}" for v in values) for k, values in runs.items()}
    print(f"(c) raw COPY into a scratch table:   {results['c']:>10,.0f} events/s   runs: {detail['c']}")
    print(f"(a) service path ({listeners}):  {results['a']:>10,.0f} events/s   runs: {detail['a']}", flush=True)
    if "seen" in results:
        print(f"    first/last seen step (deferred): {results['seen']:>10,.0f} events/s   runs: {detail['seen']}")
        print(f"    (a) and the step together:       {results['a+seen']:>10,.0f} events/s   runs: {detail['a+seen']}")
    print(
        f"per core (events per CPU-second of this process and PostgreSQL): (c) {per_core['c']:,.0f}   "
        f"(a) {per_core['a']:,.0f}   (a)/(c) by CPU {per_core['a'] / per_core['c']:.2f}   load: {load()}"
    )

    if args.profile:
        empty_tables()
        phase_profile(events, args.batch)

    if not args.skip_http:
        empty_tables()
        results["b"], per_core["b"] = phase_http(events, args, db_url)
        print(f"(b) HTTP, {args.clients} clients, {args.workers} workers: {results['b']:>10,.0f} events/s   "
              f"per core (gunicorn and PostgreSQL): {per_core['b']:,.0f}", flush=True)  # fmt: skip
        # Every client sends several bodies of the largest size, so that the clients keep the
        # workers busy until the end as they do with smaller bodies: the same events for each size.
        sizes = sorted({1000, *args.gzip_sizes})
        gzip_events = generate(max(count, sizes[-1] * args.clients * 3), args.seed + 1)
        for size in sizes:
            empty_tables()
            rate = phase_http(gzip_events, args, db_url, size=size, gzip=True)[0]
            results[f"gzip {size}"] = rate
            print(f"(b) HTTP, gzip bodies of {size:,} events ({len(gzip_events):,} events): {rate:>10,.0f} events/s"
                  f"   load: {load()}", flush=True)  # fmt: skip
        for size in sizes[1:]:
            print(f"gzip {size:,}-event bodies / gzip 1,000-event bodies = "
                  f"{results[f'gzip {size}'] / results['gzip 1000']:.2f}   (target >= 1)")  # fmt: skip

    print(f"a/c = {results['a'] / results['c']:.2f}   (target >= 0.5)")
    if "a+seen" in results:
        print(f"(a with the step)/c = {results['a+seen'] / results['c']:.2f}")
    if "b" in results:
        print(f"b/c = {results['b'] / results['c']:.2f}   (target >= 0.6)")
    empty_tables()
    b_over_c = f"{results['b'] / results['c']:.2f}" if "b" in results else "-"
    print(f"a/c {results['a'] / results['c']:.2f} b/c {b_over_c} per_core_a {per_core['a']:.0f}")


if __name__ == "__main__":
    main()
