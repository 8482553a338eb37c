"""Soak: sends that survive faults.

Three campaigns of different shapes (an A/B push with a holdout; three SMS variants with a small
holdout sent at a time; a one-message webhook triggered by an event for every member) reach
`--recipients` people (default 100,000) through two Celery worker processes and a local gateway
that answers 503, times out and is slow at random, and is down for `--outage` seconds (default
120) part way through, while one worker is killed with SIGKILL `--kills` times (default 3) and
started again. The beat sweeper's work is done by this script every two seconds.

At the end it prints, from the gateway's own log of what it accepted:
- each recipient's count of distinct idempotency keys accepted (all must be exactly 1);
- re-posts of a message the gateway had already accepted, against what was in flight in the
  killed worker at each kill (re-posts must not exceed it);
- stuck rows (pending or sending after the drain: must be 0), failed and unknown ones;
- the drain time, and its ratio to a plain script posting the same messages through the same
  faults (same outage, same fault rates, 2 processes x 8 threads, retrying until accepted).

A timed-out post is one the gateway holds past the client's timeout and then drops without
accepting (its upstream timed out too), so a re-post is only ever caused by a lost record.

It works in a database of its own, `<DATABASE_URL's name>_bench` (created and migrated on first
use; its campaign and profile tables are emptied). Example, smaller:
    python bench/soak.py --recipients 20000 --kills 2 --outage 30
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

# Shares of the recipients per campaign, and the gateway's faults.
SHARES = {"soak-ab": 0.5, "soak-sms": 0.3, "soak-trigger": 0.2}
CLIENT_TIMEOUT = 1.0


# --- the gateway -------------------------------------------------------------------------------


@dataclass
class Faults:
    p503: float = 0.05
    p_timeout: float = 0.01
    p_slow: float = 0.05
    seed: int = 7


def _gateway_main(port_queue, log_path: str, down, faults: Faults) -> None:
    rng = random.Random(faults.seed)
    lock = threading.Lock()
    log = open(log_path, "a", buffering=1)  # noqa: SIM115  (lives as long as the process)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if down.value:
                self.close_connection = True  # down: no answer at all
                return
            with lock:
                r = rng.random()
                slow = rng.uniform(0.1, 0.4)
            if r < faults.p503:
                return self._answer(503, b'{"error":"busy"}')
            if r < faults.p503 + faults.p_timeout:
                time.sleep(CLIENT_TIMEOUT * 1.5)
                self.close_connection = True
                return
            if r < faults.p503 + faults.p_timeout + faults.p_slow:
                time.sleep(slow)
            import json

            payload = json.loads(body)
            with lock:
                log.write(f"{payload['idempotency_key']}\t{payload['user_id']}\t{payload['delivery_id']}\n")
            self._answer(200, b'{"ok":true}')

        def _answer(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request, client_address) -> None:
            pass  # a client that gave up (its timeout) or was killed resets the connection

    server = Server(("127.0.0.1", 0), Handler)
    port_queue.put(server.server_address[1])
    server.serve_forever()


class Gateway:
    def __init__(self, faults: Faults, log_path: Path) -> None:
        ctx = mp.get_context("fork")
        self.down = ctx.Value("b", 0)
        self.log_path = log_path
        port_queue = ctx.Queue()
        self.proc = ctx.Process(target=_gateway_main, args=(port_queue, str(log_path), self.down, faults), daemon=True)
        self.proc.start()
        self.url = f"http://127.0.0.1:{port_queue.get(timeout=10)}/send"

    def accepted(self) -> list[tuple[str, str, int]]:
        if not self.log_path.exists():
            return []
        rows = []
        for line in self.log_path.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) == 3:
                rows.append((parts[0], parts[1], int(parts[2])))
        return rows

    def accepted_count(self) -> int:
        return self.log_path.read_text().count("\n") if self.log_path.exists() else 0

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.join(timeout=10)


# --- the run -----------------------------------------------------------------------------------


@dataclass
class Report:
    recipients: int = 0
    deliveries: int = 0
    keys_per_recipient: Counter = field(default_factory=Counter)
    reposts: int = 0
    in_flight_at_kills: list[int] = field(default_factory=list)
    stuck: int = 0
    failed: int = 0
    unknown: int = 0
    drain_seconds: float = 0.0
    requests_accepted: int = 0
    campaigns: dict[str, str] = field(default_factory=dict)

    @property
    def all_exactly_once(self) -> bool:
        return set(self.keys_per_recipient) == {1}


def make_audience(recipients: int) -> dict[str, list[int]]:
    """`recipients` people split over the three campaigns' tags, consented to push and SMS."""
    from django.db import connection
    from sends import insert_select

    from profiles.models import Profile

    run = f"soak{time.monotonic_ns() % 10**8}-"
    with connection.cursor() as cursor:
        insert_select(
            cursor,
            Profile,
            {
                "user_id": "%s || g",
                "timezone": "'UTC'",
                "push_opt_in": "true",
                "sms_opt_in": "true",
                "phone": "'+86139' || lpad(g::text, 8, '0')",
            },
            [run],
            "FROM generate_series(1, %s) g",
            [recipients],
        )
        cursor.execute(
            "INSERT INTO profiles_identity (profile_id, kind, value, created_at)"
            " SELECT id, 'user_id', user_id, now() FROM profiles_profile WHERE user_id LIKE %s",
            [run + "%"],
        )
        cursor.execute("SELECT id FROM profiles_profile WHERE user_id LIKE %s ORDER BY id", [run + "%"])
        ids = [r[0] for r in cursor.fetchall()]
        groups, start = {}, 0
        for i, (tag, share) in enumerate(SHARES.items()):
            end = len(ids) if i == len(SHARES) - 1 else start + round(len(ids) * share)
            groups[tag] = ids[start:end]
            start = end
            cursor.execute(
                "INSERT INTO profiles_tag (name, category, description, source, created_at)"
                " VALUES (%s, 'soak', '', 'manual', now()) ON CONFLICT (name) DO NOTHING",
                [tag],
            )
            cursor.execute(
                "INSERT INTO profiles_profiletag (profile_id, tag_id, source, computed_at)"
                " SELECT p, t.id, 'manual', now() FROM unnest(%s::bigint[]) p, profiles_tag t WHERE t.name = %s",
                [groups[tag], tag],
            )
        cursor.execute("ANALYZE profiles_profile; ANALYZE profiles_identity; ANALYZE profiles_profiletag")
    return groups


def _in_flight() -> dict[int, object]:
    from campaigns.models import Delivery

    return dict(
        Delivery.objects.filter(status="sending", posting_since__isnull=False).values_list("id", "posting_since")
    )


def run_soak(
    *,
    recipients: int,
    kills: int,
    outage_seconds: float,
    worker_env: dict[str, str],
    workdir: Path,
    faults: Faults | None = None,
    timeout: float = 1800,
    progress=print,
) -> Report:
    """The soak itself, on the database Django is connected to (its workers on `worker_env`'s)."""
    import datetime as dt

    from django.utils import timezone

    from campaigns import services, tasks
    from campaigns.models import Campaign, Channel, Delivery, PendingTrigger
    from config.celery import publish

    faults = faults or Faults()
    gateway = Gateway(faults, workdir / "gateway-accepted.log")
    groups = make_audience(recipients)
    for kind in ("push", "sms", "webhook"):
        Channel.objects.update_or_create(
            kind=kind,
            defaults={
                "url": gateway.url,
                "enabled": True,
                "rate_per_second": 0,
                "timeout_seconds": CLIENT_TIMEOUT,
                "backoff_base_seconds": 0.5,
                "backoff_max_seconds": 8.0,
                "max_attempts": 1000,
                "retry_window_minutes": 180,
                "at_most_once": False,
            },
        )
    segments = {tag: services.create_segment(name=tag, definition={"tag": tag}) for tag in SHARES}
    common = {"respect_quiet_hours": False, "frequency_cap_per_day": 0, "min_sample": 0}
    ab = services.create_campaign(
        name="soak A/B push",
        segment=segments["soak-ab"],
        channel="push",
        variants=[{"name": "A", "weight": 50, "body": "a"}, {"name": "B", "weight": 50, "body": "b"}],
        holdout_percent=10,
        **common,
    )
    sms = services.create_campaign(
        name="soak SMS, three variants, at a time",
        segment=segments["soak-sms"],
        channel="sms",
        variants=[{"name": n, "weight": w, "body": n} for n, w in (("X", 50), ("Y", 30), ("Z", 20))],
        holdout_percent=5,
        schedule={"at": timezone.now()},
        **common,
    )
    triggered = services.create_campaign(
        name="soak webhook, triggered",
        segment=segments["soak-trigger"],
        channel="webhook",
        variants=[{"name": "Only", "weight": 100, "body": "t"}],
        holdout_percent=0,
        schedule={"trigger_event": "soak_signal"},
        **common,
    )
    campaigns = [ab, sms, triggered]
    from tests.workers import WorkerProcess

    workers = [
        WorkerProcess(
            env=worker_env,
            log_path=workdir / f"worker{i}.log",
            queues="default,deliveries",
            name=f"soak{i}",
            loglevel="WARNING",
            concurrency=1,
        )
        for i in range(2)
    ]
    for w in workers:
        w.start()
    time.sleep(4)  # both workers connected before the clock starts
    from django.db import connection

    started = time.monotonic()
    for c in (ab, sms, triggered):
        services.launch_campaign(campaign_id=c.pk)
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO campaigns_pendingtrigger (campaign_id, user_id, event_id, at, created_at)"
            " SELECT %s, p.user_id, 'soak-' || p.id, %s, now() FROM profiles_profile p WHERE p.id = ANY(%s)",
            [triggered.pk, now, groups["soak-trigger"]],
        )
    publish("soak triggers", tasks.start_triggered)
    expected = round(len(groups["soak-ab"]) * 0.9) + round(len(groups["soak-sms"]) * 0.95) + len(groups["soak-trigger"])
    report = Report(recipients=recipients)
    kill_points = [expected * (k + 1) / (kills + 1) for k in range(kills)]
    outage_at, outage_until = expected * 0.4, None
    last_sweep, next_progress = 0.0, time.monotonic() + 10
    try:
        while True:
            accepted = gateway.accepted_count()
            if kill_points and accepted >= kill_points[0]:
                kill_points.pop(0)
                victim = workers[len(report.in_flight_at_kills) % 2]
                victim.kill()
                # Read after the kill, not before: a post the victim began between a reading and the
                # kill would be in flight and not counted. The dead worker's rows keep their mark;
                # the living worker's posts of then have returned after the wait.
                before = _in_flight()
                time.sleep(CLIENT_TIMEOUT * 2 + 1)
                after = _in_flight()
                dead = {pk for pk, since in before.items() if after.get(pk) == since}
                report.in_flight_at_kills.append(len(dead))
                progress(f"[soak] killed {victim.name} at {accepted:,} accepted; {len(dead)} posts were in flight")
                victim.start()
            if outage_until is None and accepted >= outage_at:
                gateway.down.value = 1
                outage_until = time.monotonic() + outage_seconds
                progress(f"[soak] gateway down for {outage_seconds:.0f}s at {accepted:,} accepted")
            if outage_until is not None and gateway.down.value and time.monotonic() >= outage_until:
                gateway.down.value = 0
                progress("[soak] gateway back")
            if time.monotonic() - last_sweep >= 2:
                services.sweep(stale_after=dt.timedelta(seconds=10), requeue_after=dt.timedelta(seconds=30))
                last_sweep = time.monotonic()
            left = Delivery.objects.filter(campaign__in=campaigns, status__in=["pending", "sending"]).count()
            started_all = all(c.phase for c in Campaign.objects.filter(pk__in=[ab.pk, sms.pk]))
            if (
                left == 0
                and started_all
                and not PendingTrigger.objects.exists()
                and not kill_points
                and outage_until is not None
                and not gateway.down.value
                and Delivery.objects.filter(campaign=triggered).exists()
            ):
                break
            if time.monotonic() > next_progress:
                progress(f"[soak] {accepted:,}/{expected:,} accepted, {left:,} deliveries pending or sending")
                next_progress = time.monotonic() + 10
            if time.monotonic() - started > timeout:
                progress("[soak] timed out before the drain ended")
                break
            time.sleep(0.5)
        report.drain_seconds = time.monotonic() - started
    finally:
        for w in workers:
            w.stop()
        gateway.stop()
    rows = Delivery.objects.filter(campaign__in=campaigns)
    report.deliveries = rows.count()
    report.stuck = rows.filter(status__in=["pending", "sending"]).count()
    report.failed = rows.filter(status="failed").count()
    report.unknown = rows.filter(status="unknown").count()
    report.campaigns = dict(Campaign.objects.filter(pk__in=[c.pk for c in campaigns]).values_list("name", "status"))
    accepted_rows = gateway.accepted()
    report.requests_accepted = len(accepted_rows)
    keys_by_user: dict[str, set[str]] = defaultdict(set)
    for key, user, _delivery in accepted_rows:
        keys_by_user[user].add(key)
    recipients_expected = set(rows.values_list("user_id", flat=True))
    report.keys_per_recipient = Counter(len(keys_by_user.get(u, ())) for u in recipients_expected)
    per_key = Counter(key for key, _u, _d in accepted_rows)
    report.reposts = sum(n - 1 for n in per_key.values())
    return report


# --- the baseline: a plain script through the same faults --------------------------------------


def _plain_poster(url: str, payloads: list[dict], threads: int) -> None:
    import requests

    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=threads)
    session.mount("http://", adapter)

    def post(p: dict) -> None:
        while True:
            try:
                r = session.post(url, json=p, headers={"Idempotency-Key": p["idempotency_key"]}, timeout=CLIENT_TIMEOUT)
                if r.status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(post, payloads))


def plain_baseline(payloads: list[dict], outage_seconds: float, faults: Faults, workdir: Path) -> float:
    gateway = Gateway(faults, workdir / "baseline-accepted.log")
    ctx = mp.get_context("fork")
    started = time.monotonic()
    procs = [ctx.Process(target=_plain_poster, args=(gateway.url, payloads[i::2], 8)) for i in range(2)]
    for p in procs:
        p.start()
    down_at, back_at = None, None
    while any(p.is_alive() for p in procs):
        if down_at is None and gateway.accepted_count() >= len(payloads) * 0.4:
            gateway.down.value, down_at = 1, time.monotonic()
        if down_at and back_at is None and time.monotonic() - down_at >= outage_seconds:
            gateway.down.value, back_at = 0, time.monotonic()
        time.sleep(0.1)
    elapsed = time.monotonic() - started
    gateway.stop()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--outage", type=float, default=120, help="seconds the gateway is down")
    args = parser.parse_args()

    from benchdb import bench_database_url, ensure_database

    url = bench_database_url()
    ensure_database(url)
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.development")
    os.environ["OPSLOOP_DELIVERY_STALE_SECONDS"] = "10"
    os.environ["OPSLOOP_DELIVERY_HEARTBEAT_SECONDS"] = "2"
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE campaigns_delivery, campaigns_assignment, campaigns_dailysendcount, campaigns_pendingtrigger,"
            " campaigns_variant, campaigns_campaign, campaigns_segment, profiles_profile CASCADE"
        )
    import redis
    from django.conf import settings

    redis.Redis.from_url(settings.REDIS_URL).delete("deliveries", "default")
    workdir = Path(tempfile.mkdtemp(prefix="opsloop-soak-"))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    faults = Faults()
    report = run_soak(
        recipients=args.recipients, kills=args.kills, outage_seconds=args.outage, worker_env=env, workdir=workdir
    )
    from campaigns.models import Delivery

    if report.deliveries == 0 or report.requests_accepted == 0:
        raise SystemExit("the soak sent nothing: its workload is not real")
    print(f"[soak] recipients {report.recipients:,}, deliveries {report.deliveries:,}, campaigns {report.campaigns}")
    print(f"[soak] distinct idempotency keys accepted per recipient: {dict(report.keys_per_recipient)}")
    print(f"[soak] all exactly once: {report.all_exactly_once}")
    print(
        f"[soak] re-posts of an accepted message: {report.reposts} (in flight at the kills: "
        f"{report.in_flight_at_kills}, total {sum(report.in_flight_at_kills)})"
    )
    print(f"[soak] stuck rows: {report.stuck}; failed {report.failed}; unknown {report.unknown}")
    payloads = [
        {"delivery_id": pk, "idempotency_key": str(key), "user_id": user, "body": "plain"}
        for pk, key, user in Delivery.objects.filter(status="sent").values_list("id", "idempotency_key", "user_id")
    ]
    baseline = plain_baseline(payloads, args.outage, faults, workdir)
    print(f"[soak] drain {report.drain_seconds:.1f}s; plain script through the same faults {baseline:.1f}s")
    print(f"[soak] ratio drain / plain = {report.drain_seconds / baseline:.2f}")
    print(f"[soak] logs in {workdir}")


if __name__ == "__main__":
    main()
