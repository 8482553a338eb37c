"""What the claim path costs: claims against a minimal DRF view doing the same UPDATE in the same
gunicorn, latency at a fixed offered load, and the closed-loop figures of before.

    .venv/bin/python bench/coupons.py                    # 32 clients, 20,000 claims + redemptions
    .venv/bin/python bench/coupons.py --scale 0.25 --workers 3 --repeat 3
    .venv/bin/python bench/coupons.py --rate 150 --open-seconds 30

The two goals it reports:
- the ratio of claim throughput to the baseline's (goal >= 0.5): the baseline is a minimal DRF
  view (`bench/claim_baseline.py`, served by the same gunicorn through the same middleware,
  authentication and scope check) running the single conditional UPDATE of the ceiling below,
  driven by the same 32 closed-loop clients; the difference is what opsloop's claim adds;
- p50/p99 of claims at a fixed offered load (--rate, 150 claims/s) from an open-loop generator
  (goal p99 < 50 ms): a claim is sent at its scheduled time whatever the earlier ones are doing,
  on an idle keep-alive connection or a new one, and its latency is counted from that scheduled
  time, so a server that falls behind shows it (no coordinated omission).

It works in a database of its own, `<DATABASE_URL's name>_bench` (created and migrated on first
use), so it never touches real data. Phases:

(ceiling) --clients concurrent PostgreSQL connections in autocommit, each running the
    single-row conditional UPDATE a claim needs (`committed = committed + x WHERE committed +
    spent + x <= budget`) on one hot row: what the database alone allows at that concurrency.
    Measured twice, with pgbench (Debian's PostgreSQL client, `-M prepared`) when it is on PATH
    and with one asyncio process driving psycopg connections; the higher is the ceiling.
(claim)  gunicorn (gthread, keep-alive) started here on --port; --clients keep-alive
    connections each `POST /api/v1/coupon-rules/{id}/claim` for their own users (profiles
    created beforehand, as a product's users would be) against one budgeted rule.
(redeem) the same connections `POST /api/v1/coupons/redeem` every code they claimed.

(baseline) the same connections `POST /bench/claim-baseline` (the minimal view) as many times.
(open loop) --rate claims per second for --open-seconds, new users, as described above.

The load generator is one asyncio process (raw HTTP/1.1 on keep-alive connections), as light
as the ceiling's clients, so that it takes as little as possible of the cores the server and
PostgreSQL share. --repeat N runs the whole set N times on fresh users and reports each run
and the best and median. It prints requests/s, p50/p99 latency, the ratios to the ceiling (for
comparison with earlier runs) and to the baseline, and checks that the books balance: the rule's
counters equal what its rows add up to.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchdb import bench_database_url, ensure_database, require_workload  # noqa: E402

CEILING_SQL = (
    "UPDATE bench_ceiling SET committed = committed + 1 WHERE id = 1 AND committed + spent + 1 <= budget "
    "RETURNING committed"
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20_000, help="claims (and redemptions) per phase")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply --requests (e.g. 0.25)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn processes (default 4)")
    parser.add_argument("--threads", type=int, default=1, help="threads per gunicorn process (default 1)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of ceiling, claims and redemptions")
    parser.add_argument(
        "--no-db-health-checks",
        action="store_true",
        help="run gunicorn with OPSLOOP_DB_CONN_HEALTH_CHECKS=0 (no SELECT 1 at the start of each request)",
    )
    parser.add_argument("--port", type=int, default=8104)
    parser.add_argument("--rate", type=float, default=150.0, help="open-loop offered load, claims/s (default 150)")
    parser.add_argument("--open-seconds", type=float, default=30.0, help="open-loop duration (default 30 s)")
    return parser.parse_args()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --- CPU accounting: what each side spent per request, whatever else the machine runs -----------

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU the processes have used so far (0 for one that is gone)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICK


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (FileNotFoundError, ProcessLookupError):
                continue
    return found


def backends(db_url: str) -> list[int]:
    """The server processes of the other connections to the bench database (gunicorn's)."""
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return [pid for (pid,) in rows]


# --- the ceiling -------------------------------------------------------------------------------


def reset_ceiling_row(db_url: str, budget: int) -> None:
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_ceiling")
        conn.execute(
            "CREATE TABLE bench_ceiling (id int PRIMARY KEY, committed numeric(14,2) NOT NULL, "
            "spent numeric(14,2) NOT NULL, budget numeric(14,2) NOT NULL)"
        )
        conn.execute("INSERT INTO bench_ceiling VALUES (1, 0, 0, %s)", [budget])


def drop_ceiling_row(db_url: str) -> None:
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_ceiling")


def ceiling_psycopg(db_url: str, count: int, clients: int) -> tuple[float, list[float]]:
    """`count` UPDATEs from `clients` async connections of one process; (per second, latencies ms)."""
    import psycopg

    reset_ceiling_row(db_url, count)

    async def run() -> tuple[float, list[float]]:
        conns = [await psycopg.AsyncConnection.connect(db_url, autocommit=True) for _ in range(clients)]
        latencies: list[float] = []
        done = [0]

        async def client(conn, n: int) -> None:
            for _ in range(n):
                started = time.perf_counter()
                row = await (await conn.execute(CEILING_SQL, prepare=True)).fetchone()
                latencies.append((time.perf_counter() - started) * 1000)
                done[0] += row is not None

        shares = [count // clients + (i < count % clients) for i in range(clients)]
        pids = [conn.info.backend_pid for conn in conns]
        cpu_db, cpu_client = cpu_seconds(pids), time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(client(c, n) for c, n in zip(conns, shares, strict=True)))
        elapsed = time.perf_counter() - started
        cpu_db, cpu_client = cpu_seconds(pids) - cpu_db, time.process_time() - cpu_client
        for conn in conns:
            await conn.close()
        assert done[0] == count, f"ceiling updated {done[0]} of {count}"
        print(
            f"{'':<36} CPU per UPDATE: PostgreSQL {cpu_db / count * 1000:.2f} ms, "
            f"client {cpu_client / count * 1000:.2f} ms",
            flush=True,
        )
        return count / elapsed, latencies

    try:
        return asyncio.run(run())
    finally:
        drop_ceiling_row(db_url)


def ceiling_pgbench(db_url: str, count: int, clients: int) -> tuple[float, float] | None:
    """The same UPDATE from pgbench (C, `-M prepared`); (per second, mean latency ms), or None
    when pgbench is not installed."""
    pgbench = shutil.which("pgbench")
    if pgbench is None:
        return None
    per_client = max(count // clients, 1)
    reset_ceiling_row(db_url, per_client * clients)
    try:
        with tempfile.NamedTemporaryFile("w", suffix=".sql") as script:
            script.write(CEILING_SQL + ";\n")
            script.flush()
            out = subprocess.run(
                [pgbench, "-n", "-c", str(clients), "-j", str(min(clients, os.cpu_count() or 2)),
                 "-t", str(per_client), "-M", "prepared", "-f", script.name, db_url],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
    finally:
        drop_ceiling_row(db_url)
    tps = float(re.search(r"tps = ([\d.]+)", out).group(1))
    latency = float(re.search(r"latency average = ([\d.]+) ms", out).group(1))
    return tps, latency


# --- HTTP --------------------------------------------------------------------------------------


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
        "OPSLOOP_DB_CONN_HEALTH_CHECKS": "0" if args.no_db_health_checks else "1",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "claim_baseline:application", "--pythonpath", str(ROOT / "bench"),
         "-b", f"127.0.0.1:{args.port}", "-w", str(args.workers),
         "-k", "gthread", "--threads", str(args.threads), "--keep-alive", "120", "--backlog", "2048",
         "--timeout", "120", "--log-level", "warning"],
        cwd=ROOT, env=env, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 180  # a shared, busy machine can take long to import everything
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


class KeepAlive:
    """One HTTP/1.1 keep-alive connection: a request, then its response, read by Content-Length."""

    def __init__(self, port: int, key: str) -> None:
        self.port, self.key = port, key
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: dict) -> tuple[int, bytes]:
        data = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Api-Key {self.key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        ).encode()
        for attempt in range(2):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            try:
                self.writer.write(head + data)
                status_line = await self.reader.readline()
                if not status_line:
                    raise ConnectionResetError("closed by the server")
                status = int(status_line.split()[1])
                length, close = 0, False
                while (line := await self.reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    name = name.strip().lower()
                    if name == "content-length":
                        length = int(value)
                    elif name == "connection" and value.strip().lower() == "close":
                        close = True
                payload = await self.reader.readexactly(length)
                if close:
                    await self.close()
                return status, payload
            except (ConnectionError, asyncio.IncompleteReadError):
                # An idle keep-alive connection the server closed: once more on a new one (both
                # endpoints are idempotent: request_id, and the code with its order).
                await self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


async def drive(conns: list[KeepAlive], jobs: list[list], request_of, ok: tuple[int, ...]):
    """Each connection sends its job's requests one after the other; (elapsed, latencies ms,
    answers in job order)."""
    latencies: list[float] = []

    async def client(conn: KeepAlive, items: list) -> list:
        answers = []
        for item in items:
            path, body = request_of(item)
            started = time.perf_counter()
            status, payload = await conn.post(path, body)
            latencies.append((time.perf_counter() - started) * 1000)
            if status not in ok:
                raise RuntimeError(f"{status}: {payload[:300]!r}")
            answers.append(json.loads(payload))
        return answers

    started = time.perf_counter()
    answers = await asyncio.gather(*(client(c, items) for c, items in zip(conns, jobs, strict=True)))
    return time.perf_counter() - started, latencies, answers, {}


async def open_loop(port: int, key: str, rule_id: int, users: list[str], rate: float, pool: int = 16, most: int = 256):
    """One claim per user at `rate` per second, each sent at its scheduled time on an idle
    connection (a new one when all are busy, up to `most`; past that it waits for one, and that
    wait counts in its latency); (elapsed, latencies ms from the scheduled time, refused count,
    connections used)."""
    loop = asyncio.get_running_loop()
    warm = [KeepAlive(port, key) for _ in range(pool)]

    def claim_request(user: str) -> tuple[str, dict]:
        return f"/api/v1/coupon-rules/{rule_id}/claim", {"user_id": user, "request_id": f"r-{user}"}

    # Warm the pool's connections (and the workers behind them) on users of their own.
    await drive(warm, [[f"{users[0]}-warm-{i}"] for i in range(pool)], claim_request, (201,))
    idle: asyncio.Queue[KeepAlive] = asyncio.Queue()
    for conn in warm:
        idle.put_nowait(conn)
    every = list(warm)
    latencies: list[float] = []
    refused = [0]

    async def one(user: str, due: float) -> None:
        if idle.empty() and len(every) < most:
            every.append(KeepAlive(port, key))
            conn = every[-1]
        else:
            conn = await idle.get()
        status, _ = await conn.post(*claim_request(user))
        latencies.append((loop.time() - due) * 1000)
        refused[0] += status != 201
        idle.put_nowait(conn)

    tasks = []
    start = loop.time()
    for i, user in enumerate(users):
        due = start + i / rate
        if (delay := due - loop.time()) > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(user, due)))
    await asyncio.gather(*tasks)
    elapsed = loop.time() - start
    for conn in every:
        await conn.close()
    return elapsed, latencies, refused[0], len(every)


async def measured(pids: list[int], count: int, coroutine):
    """Run a phase; print the CPU each side spent per request (gunicorn, PostgreSQL, this client)."""
    server, client = cpu_seconds(pids[0]), time.process_time()
    database = cpu_seconds(pids[1])
    result = await coroutine
    server, client = cpu_seconds(pids[0]) - server, time.process_time() - client
    database = cpu_seconds(pids[1]) - database
    result[3].update(
        {"server_ms": server / count * 1000, "database_ms": database / count * 1000, "client_ms": client / count * 1000}
    )
    return result


async def phases(
    port: int, key: str, clients: int, rule_id: int, warm: list[str], users: list[str], server_pid: int, db_url: str
):
    """Warm-up claims, then the measured claims, then the redemption of every code claimed, then
    as many baseline requests, on the same keep-alive connections; the (elapsed, latencies,
    answers) of the last three."""

    def claim_request(user: str) -> tuple[str, dict]:
        return f"/api/v1/coupon-rules/{rule_id}/claim", {"user_id": user, "request_id": f"r-{user}"}

    def redeem_request(pair: tuple[str, str]) -> tuple[str, dict]:
        code, user = pair
        body = {"code": code, "user_id": user, "order_id": f"o-{user}", "order_amount": "59.90"}
        return "/api/v1/coupons/redeem", body

    conns = [KeepAlive(port, key) for _ in range(clients)]
    try:
        # Warm every connection's worker (imports, database connection, the key).
        await drive(conns, [warm[i::clients] for i in range(clients)], claim_request, (201,))
        pids = (children(server_pid), backends(db_url))
        jobs = [users[i::clients] for i in range(clients)]
        claimed = await measured(pids, len(users), drive(conns, jobs, claim_request, (201,)))
        pairs = [
            [(answer["code"], user) for answer, user in zip(answers, job, strict=True)]
            for answers, job in zip(claimed[2], jobs, strict=True)
        ]
        redeemed = await measured(pids, len(users), drive(conns, pairs, redeem_request, (200,)))
        baseline = await measured(
            pids, len(users), drive(conns, jobs, lambda u: ("/bench/claim-baseline", {"user_id": u}), (201,))
        )
        return claimed, redeemed, baseline
    finally:
        for conn in conns:
            await conn.close()


def report(
    label: str, rate: float, latencies: list[float] | None, ceiling: float | None = None, baseline: float | None = None
) -> None:
    ratio = f"   ratio to ceiling {rate / ceiling:.2f}" if ceiling else ""
    ratio += f"   ratio to baseline {rate / baseline:.2f} (goal >= 0.5)" if baseline else ""
    spread = (
        f"   p50 {statistics.median(latencies):6.1f} ms   p99 {percentile(latencies, 0.99):6.1f} ms"
        if latencies
        else ""
    )
    print(f"{label:<36} {rate:>9,.0f} /s{spread}{ratio}", flush=True)


def load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


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

    print(
        f"{count} claims and {count} redemptions, {args.clients} clients, gunicorn gthread "
        f"{args.workers} workers x {args.threads} threads, database health checks "
        f"{'off' if args.no_db_health_checks else 'on'}, {os.cpu_count()} CPUs",
        flush=True,
    )
    key = create_api_key(name=f"bench-{uuid.uuid4().hex[:8]}", scopes=["coupons:redeem"]).plaintext
    server = start_server(args, db_url)
    runs = []
    try:
        for run in range(args.repeat):
            print(f"-- run {run + 1} of {args.repeat} (load average {load()})", flush=True)
            tag = uuid.uuid4().hex[:8]
            users = [f"bench-{tag}-{i}" for i in range(count)]
            warm = [f"bench-{tag}-warm-{i}" for i in range(args.clients * 4)]
            paced = [f"bench-{tag}-open-{i}" for i in range(int(args.rate * args.open_seconds))]
            assert users and paced, "the bench has no claims to make"
            services._profile_ids_for_user_ids(users + warm + paced)
            rule = services.create_rule(
                name=f"bench {tag}",
                kind="fixed",
                value=Decimal("5.00"),
                budget=Decimal("5.00") * (count + len(warm) + len(paced) + 64),
                per_user_limit=1,
            )

            pg = ceiling_pgbench(db_url, count, args.clients)
            if pg is not None:
                report("(ceiling) UPDATE, pgbench", pg[0], None)
            py_rate, py_latencies = ceiling_psycopg(db_url, count, args.clients)
            report("(ceiling) UPDATE, asyncio psycopg", py_rate, py_latencies)
            ceiling = max(py_rate, pg[0] if pg else 0.0)

            reset_ceiling_row(db_url, count)  # the baseline view's row
            try:
                claimed, redeemed, baseline = asyncio.run(
                    phases(args.port, key, args.clients, rule.pk, warm, users, server.pid, db_url)
                )
            finally:
                drop_ceiling_row(db_url)
            (c_elapsed, c_latencies, _, c_cpu), (r_elapsed, r_latencies, _, r_cpu) = claimed, redeemed
            b_elapsed, b_latencies, _, b_cpu = baseline
            claims_rate, redeem_rate, baseline_rate = count / c_elapsed, count / r_elapsed, count / b_elapsed
            for label, rate, latencies, cpu in (
                ("(baseline) minimal DRF UPDATE, HTTP", baseline_rate, b_latencies, b_cpu),
                ("(claim) HTTP", claims_rate, c_latencies, c_cpu),
                ("(redeem) HTTP", redeem_rate, r_latencies, r_cpu),
            ):
                report(label, rate, latencies, ceiling, baseline_rate if label.startswith("(claim)") else None)
                print(
                    f"{'':<36} CPU per request: gunicorn {cpu['server_ms']:.2f} ms, PostgreSQL "
                    f"{cpu['database_ms']:.2f} ms, client {cpu['client_ms']:.2f} ms",
                    flush=True,
                )

            o_elapsed, o_latencies, o_refused, o_conns = asyncio.run(
                open_loop(args.port, key, rule.pk, paced, args.rate)
            )
            o_p99 = percentile(o_latencies, 0.99)
            print(
                f"{'(open loop) claim at ' + format(args.rate, 'g') + '/s offered':<36} "
                f"{len(paced) / o_elapsed:>9,.0f} /s   p50 {statistics.median(o_latencies):6.1f} ms   "
                f"p99 {o_p99:6.1f} ms (goal < 50 ms)   {o_conns} connections, {o_refused} refused",
                flush=True,
            )
            assert o_refused == 0, "open-loop claims were refused"

            rule = CouponRule.objects.get(pk=rule.pk)
            ledger = selectors.ledger_from_rows(rule=rule)
            balanced = (ledger.committed, ledger.spent, ledger.issued) == (
                rule.committed,
                rule.spent,
                rule.issued_count,
            )
            print(
                f"books: issued {rule.issued_count}, redeemed {rule.redeemed_count}, committed {rule.committed}, "
                f"spent {rule.spent} of budget {rule.budget}; re-derived from rows: "
                f"{'equal' if balanced else 'DIFFERENT'}",
                flush=True,
            )
            assert balanced and rule.committed + rule.spent <= rule.budget
            # Every claim issued a coupon and every redemption spent one: otherwise the rates timed
            # refusals, not the work.
            require_workload("coupons issued by the claims", rule.issued_count - len(warm), at_least=count)
            require_workload("coupons redeemed", rule.redeemed_count, at_least=count)
            runs.append(
                {
                    "ceiling_per_s": round(ceiling),
                    "claims_per_s": round(claims_rate),
                    "claim_p50_ms": round(statistics.median(c_latencies), 1),
                    "claim_p99_ms": round(percentile(c_latencies, 0.99), 1),
                    "redemptions_per_s": round(redeem_rate),
                    "redeem_p50_ms": round(statistics.median(r_latencies), 1),
                    "redeem_p99_ms": round(percentile(r_latencies, 0.99), 1),
                    "claim_cpu_ms": {k: round(v, 2) for k, v in c_cpu.items()},
                    "redeem_cpu_ms": {k: round(v, 2) for k, v in r_cpu.items()},
                    "baseline_per_s": round(baseline_rate),
                    "claim_to_baseline": round(claims_rate / baseline_rate, 3),
                    "open_rate_per_s": args.rate,
                    "open_p50_ms": round(statistics.median(o_latencies), 1),
                    "open_p99_ms": round(o_p99, 1),
                    "claim_ratio": round(claims_rate / ceiling, 3),
                    "redeem_ratio": round(redeem_rate / ceiling, 3),
                    "load": load(),
                }
            )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)

    for run in runs:
        print(json.dumps(run))
    if len(runs) > 1:
        for name in (
            "claim_to_baseline",
            "open_p99_ms",
            "claim_ratio",
            "redeem_ratio",
            "claim_p99_ms",
            "redeem_p99_ms",
        ):
            values = [run[name] for run in runs]
            best = min(values) if name.endswith("_ms") else max(values)
            print(f"{name:<14} best {best:<8} median {round(statistics.median(values), 3)}")


if __name__ == "__main__":
    main()
