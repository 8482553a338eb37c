"""The scratch database a benchmark works in: named after DATABASE_URL's, never the real one."""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit


def bench_database_url(suffix: str = "_bench") -> str:
    """DATABASE_URL with `suffix` appended to the database name (unless it already ends so)."""
    base = os.environ.get("DATABASE_URL", "postgres://opsloop@127.0.0.1:54329/opsloop")
    parts = urlsplit(base)
    name = parts.path.lstrip("/") or "opsloop"
    if not name.endswith(suffix):
        name = f"{name}{suffix}"
    return urlunsplit(parts._replace(path=f"/{name}"))


def ensure_database(url: str, *, fresh: bool = False) -> None:
    """Create the database named in `url` if missing (dropping it first when `fresh`)."""
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as conn:
        if fresh:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def require_workload(what: str, count: int, *, at_least: int = 1) -> None:
    """Stop the bench, printing no ratio, when what it is about to time is empty or too small to
    measure: a fast answer to an empty question proves nothing."""
    if count < at_least:
        raise SystemExit(
            f"the workload is empty or trivially small: {count:,} {what} (at least {at_least:,} needed); no ratio"
        )
