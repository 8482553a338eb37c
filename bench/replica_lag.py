"""How far the replica falls behind while the primary works: runs a command (another bench, say)
and samples the replica's lag as the dashboards' check measures it (config/replica.py) meanwhile.

    scripts/services.sh start-replica; set -a; . .run/env; set +a
    .venv/bin/python bench/replica_lag.py -- .venv/bin/python bench/ingest.py --events 40000 --skip-http

It prints the samples taken, the lag's median, p99 and maximum in seconds, the WAL the primary
wrote per second, and the share of samples over OPSLOOP_REPLICA_MAX_LAG_SECONDS (the limit past
which the pages read the primary). It stops without figures when the command failed or too few
samples were taken.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time

import psycopg

LAG_SQL = """
SELECT CASE WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0
            ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0)
       END::float8
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--every", type=float, default=0.2, help="seconds between samples (default 0.2)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the workload, after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    replica_url = os.environ.get("OPSLOOP_REPLICA_DATABASE_URL")
    primary_url = os.environ.get("DATABASE_URL")
    if not command or not replica_url or not primary_url:
        parser.error("needs DATABASE_URL, OPSLOOP_REPLICA_DATABASE_URL (start-replica) and a command")
    limit = float(os.environ.get("OPSLOOP_REPLICA_MAX_LAG_SECONDS", "30"))

    samples: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        with psycopg.connect(replica_url, autocommit=True) as replica:
            while not stop.is_set():
                samples.append(replica.execute(LAG_SQL).fetchone()[0])
                stop.wait(args.every)

    with psycopg.connect(primary_url, autocommit=True) as primary:
        wal_start = primary.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        sampler = threading.Thread(target=sample)
        started = time.monotonic()
        sampler.start()
        try:
            result = subprocess.run(command)
        finally:
            stop.set()
            sampler.join()
        elapsed = time.monotonic() - started
        wal_bytes = primary.execute("SELECT pg_current_wal_lsn() - %s::pg_lsn", [str(wal_start)]).fetchone()[0]
    if result.returncode != 0:
        print(f"the command failed ({result.returncode}): no figures", file=sys.stderr)
        return 1
    if len(samples) < 10:
        print(f"only {len(samples)} samples: the workload was too short to say anything", file=sys.stderr)
        return 1
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    over = sum(1 for lag in samples if lag > limit) / len(samples)
    print(
        f"replica lag over {elapsed:.0f} s ({len(samples)} samples): median {statistics.median(samples):.2f} s, "
        f"p99 {p99:.2f} s, max {ordered[-1]:.2f} s; primary wrote {float(wal_bytes) / elapsed / 1e6:.1f} MB/s "
        f"of WAL; samples over the {limit:g} s limit: {over:.1%}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
