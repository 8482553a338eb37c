"""How far the replica falls behind while the primary works: runs a command (another bench, say)
and samples the replica's lag meanwhile, as the dashboards' check measures it (config/replica.py:
WAL behind the primary) and in seconds.

    scripts/services.sh start-replica; set -a; . .run/env; set +a
    .venv/bin/python bench/replica_lag.py -- .venv/bin/python bench/ingest.py --events 40000 --skip-http

It prints the samples taken, the WAL the primary wrote per second, and the median, p99 and
maximum of three measures: the check's (MB of WAL the replica has yet to replay, with the share of
samples over OPSLOOP_REPLICA_MAX_LAG_MB, past which the pages read the primary); PostgreSQL's
`replay_lag` as the primary sees it (`pg_stat_replication`, a privileged role: the time from a
commit on the primary to its replay there); and the age of the last transaction the replica
replayed while it holds WAL it has not replayed, the usual replica-side measure in seconds, which
counts a quiet spell on the primary as lag. It stops without figures when the command failed or
too few samples were taken.
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

REPLICA_SQL = """
SELECT GREATEST(pg_wal_lsn_diff(%s::pg_lsn, pg_last_wal_replay_lsn()), 0)::float8 / 1e6,
       CASE WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0
            ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0)
       END::float8
"""
PRIMARY_SQL = """
SELECT pg_current_wal_lsn()::text,
       (SELECT COALESCE(EXTRACT(EPOCH FROM max(replay_lag)), 0)::float8 FROM pg_stat_replication)
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
    limit = float(os.environ.get("OPSLOOP_REPLICA_MAX_LAG_MB", "16"))

    samples: list[float] = []
    replay_lags: list[float] = []
    replica_seconds: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        with (
            psycopg.connect(replica_url, autocommit=True) as replica,
            psycopg.connect(primary_url, autocommit=True) as primary,
        ):
            while not stop.is_set():
                position, replay_lag = primary.execute(PRIMARY_SQL).fetchone()
                behind, seconds = replica.execute(REPLICA_SQL, [position]).fetchone()
                samples.append(behind)
                replay_lags.append(replay_lag)
                replica_seconds.append(seconds)
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
    over = sum(1 for lag in samples if lag > limit) / len(samples)
    wal_rate = float(wal_bytes) / elapsed / 1e6
    print(
        f"{len(samples)} samples over {elapsed:.0f} s; the primary wrote {float(wal_bytes) / 1e6:.0f} MB of WAL, "
        f"{wal_rate:.1f} MB/s"
    )
    print(f"WAL behind (config/replica.py's check): {_spread(samples, 'MB')}; over {limit:g} MB: {over:.1%}")
    print(f"replay_lag seen by the primary:         {_spread(replay_lags, 's')}")
    print(f"age of the last replayed transaction:   {_spread(replica_seconds, 's')}")
    return 0


def _spread(values: list[float], unit: str) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"median {statistics.median(ordered):.2f} {unit}, p99 {p99:.2f} {unit}, max {ordered[-1]:.2f} {unit}"


if __name__ == "__main__":
    sys.exit(main())
