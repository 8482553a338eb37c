"""Coupon claims and redemptions per second over HTTP against one hot rule, and the ceiling.

    .venv/bin/python bench/coupons.py                    # 32 clients, 20,000 claims + redemptions
    .venv/bin/python bench/coupons.py --scale 0.25 --workers 3 --threads 4

It works in a database of its own, `<DATABASE_URL's name>_bench` (created and migrated on first
use), so it never touches real data. Phases:

(ceiling) --clients threads, each with its own PostgreSQL connection in autocommit, run the
    single-row conditional UPDATE a claim needs (`committed = committed + x WHERE committed +
    spent + x <= budget`) on one hot row: what the database alone allows at that concurrency.
(claim)  gunicorn (gthread, keep-alive) started here on --port; --clients clients each
    `POST /api/v1/coupon-rules/{id}/claim` for their own users (profiles created beforehand,
    as a product's users would be) against one budgeted rule.
(redeem) the same clients `POST /api/v1/coupons/redeem` every code they claimed.

It prints requests/s, p50/p99 latency, the ratio to the ceiling (target >= 0.3; p99 < 50 ms),
and checks that the books balance: the rule's counters equal what its rows add up to.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchdb import bench_database_url, ensure_database  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20_000, help="claims (and redemptions) per phase")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply --requests (e.g. 0.25)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--workers", type=int, default=max(os.cpu_count() or 2, 2), help="gunicorn processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn process")
    parser.add_argument("--port", type=int, default=8104)
    return parser.parse_args()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_clients(clients: int, jobs: list[list], work) -> tuple[float, list[float], list]:
    """Run `work(conn_state, item)` over each client's list of items; returns (elapsed, latencies
    in ms, results)."""
    barrier = threading.Barrier(clients + 1)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    results: list[list] = [[] for _ in range(clients)]

    def client(i: int) -> None:
        state: dict = {}
        barrier.wait()
        for item in jobs[i]:
            started = time.perf_counter()
            results[i].append(work(state, item))
            latencies[i].append((time.perf_counter() - started) * 1000)
        if "close" in state:
            state["close"]()

    with ThreadPoolExecutor(max_workers=clients) as pool:
        futures = [pool.submit(client, i) for i in range(clients)]
        barrier.wait()
        started = time.perf_counter()
        for future in futures:
            future.result()
        elapsed = time.perf_counter() - started
    return elapsed, [x for per in latencies for x in per], [x for per in results for x in per]


def phase_ceiling(db_url: str, count: int, clients: int) -> tuple[float, list[float]]:
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_ceiling")
        conn.execute(
            "CREATE TABLE bench_ceiling (id int PRIMARY KEY, committed numeric(14,2) NOT NULL, "
            "spent numeric(14,2) NOT NULL, budget numeric(14,2) NOT NULL)"
        )
        conn.execute("INSERT INTO bench_ceiling VALUES (1, 0, 0, %s)", [count])

    def work(state: dict, _item) -> bool:
        if "conn" not in state:
            state["conn"] = psycopg.connect(db_url, autocommit=True)
            state["close"] = state["conn"].close
        row = (
            state["conn"]
            .execute(
                "UPDATE bench_ceiling SET committed = committed + 1 WHERE id = 1 AND committed + spent + 1 <= budget "
                "RETURNING committed"
            )
            .fetchone()
        )
        return row is not None

    jobs = [list(range(i, count, clients)) for i in range(clients)]
    elapsed, latencies, results = run_clients(clients, jobs, work)
    assert sum(results) == count, f"ceiling updated {sum(results)} of {count}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("DROP TABLE bench_ceiling")
    return count / elapsed, latencies


def start_server(args: argparse.Namespace, db_url: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "DJANGO_SETTINGS_MODULE": "config.settings.production",
        "OPSLOOP_SECRET_KEY": "bench-only-" + uuid.uuid4().hex,
        "OPSLOOP_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "OPSLOOP_SSL_REDIRECT": "0",
        "OPSLOOP_LOG_LEVEL": "WARNING",
        "OPSLOOP_DB_CONN_MAX_AGE": "600",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "config.wsgi", "-b", f"127.0.0.1:{args.port}", "-w", str(args.workers),
         "-k", "gthread", "--threads", str(args.threads), "--keep-alive", "30", "--backlog", "2048",
         "--timeout", "120", "--log-level", "warning"],
        cwd=ROOT, env=env, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=5)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                conn.close()
                return server
        except OSError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            os.killpg(server.pid, signal.SIGTERM)
            raise RuntimeError("gunicorn did not start")
        time.sleep(0.3)


def http_work(port: int, key: str, path_of, body_of, ok: tuple[int, ...]):
    headers = {"Authorization": f"Api-Key {key}", "Content-Type": "application/json"}

    def work(state: dict, item) -> dict:
        if "conn" not in state:
            state["conn"] = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            state["close"] = state["conn"].close
        conn = state["conn"]
        conn.request("POST", path_of(item), body=json.dumps(body_of(item)), headers=headers)
        response = conn.getresponse()
        payload = response.read()
        if response.status not in ok:
            raise RuntimeError(f"{response.status}: {payload[:300]!r}")
        return json.loads(payload)

    return work


def report(label: str, rate: float, latencies: list[float], ceiling: float | None = None) -> None:
    ratio = f"   ratio to ceiling {rate / ceiling:.2f}" if ceiling else ""
    print(
        f"{label:<34} {rate:>9,.0f} /s   p50 {statistics.median(latencies):6.1f} ms   "
        f"p99 {percentile(latencies, 0.99):6.1f} ms{ratio}",
        flush=True,
    )


def main() -> None:
    args = parse_args()
    count = max(int(args.requests * args.scale), args.clients)
    db_url = bench_database_url()
    ensure_database(db_url)
    os.environ["DATABASE_URL"] = db_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.development")
    os.environ["OPSLOOP_DEBUG"] = "0"

    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from access.services import create_api_key
    from coupons import selectors, services
    from coupons.models import CouponRule

    print(f"{count} claims and {count} redemptions, {args.clients} clients, "
          f"gunicorn {args.workers} workers x {args.threads} threads, {os.cpu_count()} CPUs", flush=True)  # fmt: skip
    tag = uuid.uuid4().hex[:8]
    users = [f"bench-{tag}-{i}" for i in range(count)]
    services._profile_ids_for_user_ids(users)
    rule = services.create_rule(
        name=f"bench {tag}",
        kind="fixed",
        value=Decimal("5.00"),
        budget=Decimal("5.00") * (count + args.workers * args.threads * 2),
        per_user_limit=1,
    )
    key = create_api_key(name=f"bench-{tag}", scopes=["coupons:redeem"]).plaintext

    ceiling, ceiling_latencies = phase_ceiling(db_url, count, args.clients)
    report("(ceiling) conditional UPDATE", ceiling, ceiling_latencies)

    server = start_server(args, db_url)
    try:
        claim = http_work(
            args.port,
            key,
            lambda u: f"/api/v1/coupon-rules/{rule.pk}/claim",
            lambda u: {"user_id": u, "request_id": f"r-{u}"},
            (200, 201),
        )
        # Warm every worker (imports, connections) outside the measurement.
        warm = [f"bench-{tag}-warm-{i}" for i in range(args.workers * args.threads * 2)]
        services._profile_ids_for_user_ids(warm)
        run_clients(
            min(args.clients, len(warm)),
            [warm[i :: min(args.clients, len(warm))] for i in range(min(args.clients, len(warm)))],
            claim,
        )
        jobs = [users[i :: args.clients] for i in range(args.clients)]
        elapsed, latencies, coupons = run_clients(args.clients, jobs, claim)
        claims_rate = count / elapsed
        report("(claim) HTTP", claims_rate, latencies, ceiling)

        redeem = http_work(
            args.port,
            key,
            lambda c: "/api/v1/coupons/redeem",
            lambda c: {"code": c[0], "user_id": c[1], "order_id": f"order-{c[1]}", "order_amount": "59.90"},
            (200,),
        )
        pairs = [(c["code"], u) for c, u in zip(coupons, [u for job in jobs for u in job], strict=True)]
        redeem_jobs = [pairs[i :: args.clients] for i in range(args.clients)]
        elapsed, latencies, _ = run_clients(args.clients, redeem_jobs, redeem)
        redeem_rate = count / elapsed
        report("(redeem) HTTP", redeem_rate, latencies, ceiling)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)

    rule = CouponRule.objects.get(pk=rule.pk)
    ledger = selectors.ledger_from_rows(rule=rule)
    balanced = (ledger.committed, ledger.spent, ledger.issued) == (rule.committed, rule.spent, rule.issued_count)
    print(
        f"books: issued {rule.issued_count}, redeemed {rule.redeemed_count}, committed {rule.committed}, "
        f"spent {rule.spent} of budget {rule.budget}; re-derived from rows: {'equal' if balanced else 'DIFFERENT'}"
    )
    print(json.dumps({"claims_per_s": round(claims_rate), "redemptions_per_s": round(redeem_rate),
                      "ceiling_per_s": round(ceiling), "claim_ratio": round(claims_rate / ceiling, 3),
                      "redeem_ratio": round(redeem_rate / ceiling, 3)}))  # fmt: skip


if __name__ == "__main__":
    main()
