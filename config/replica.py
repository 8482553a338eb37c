"""Reads from a PostgreSQL streaming replica: which reads may go there, and what happens when it is
down or behind.

The replica is the database alias `replica`, configured by `OPSLOOP_REPLICA_DATABASE_URL`; without
it everything reads and writes the primary as before. Reads go to the replica only where a caller
asked for it, with `reading_from_replica()` around a dashboard view or an analysis, because the
replica is a little behind the primary and most code must read what it has just written. Even
inside that scope these stay on the primary:

- every write (`db_for_write` is always the primary, for objects read from the replica too);
- ORM reads of models outside `OPSLOOP_REPLICA_APPS` (by default the indicators' and the events'
  tables): a coupon claim, a send or a login called from a dashboard reads what it just wrote;
- every read while a transaction is open on the primary (a service's `transaction.atomic`, so
  the money paths of coupons and campaign sends, and each test of a `TestCase`);
- every read while the replica is unusable: unreachable (connect timeout
  `OPSLOOP_REPLICA_CONNECT_TIMEOUT`), not a standby, not streaming from the primary, or more than
  `OPSLOOP_REPLICA_MAX_LAG_MB` of WAL behind the primary. A process checks this at most every
  `OPSLOOP_REPLICA_CHECK_SECONDS` (after a failure, every `OPSLOOP_REPLICA_RETRY_SECONDS`, so a
  dead replica costs one connect timeout per interval, not one per page) and logs each change
  between the replica and the primary as a warning.

Raw-SQL analyses pick their connection with `connections[analytics_alias()]`; ORM reads inside
the scope are routed by `ReplicaRouter` (settings.DATABASE_ROUTERS). Migrations never run on the
replica (it is read-only and receives the primary's schema by streaming).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections

logger = logging.getLogger(__name__)

PRIMARY = DEFAULT_DB_ALIAS
REPLICA = "replica"

_reading: ContextVar[bool] = ContextVar("opsloop_reading_from_replica", default=False)

# Lag in bytes of WAL: how far the replica's replay is behind the primary's current position.
# Not in seconds: the standby's only clock, the commit time of the last transaction it replayed,
# counts a quiet spell on the primary as lag (bench/replica_lag.py measured 66 s where the
# primary's own replay_lag said 0.26 s), and the primary's replay_lag needs a privileged role.
# The WAL receiver's row is visible to every role (its details only to privileged ones), so the
# check needs no extra grants.
PRIMARY_POSITION_SQL = "SELECT pg_current_wal_lsn()"
LAG_SQL = """
SELECT pg_is_in_recovery(),
       EXISTS (SELECT FROM pg_stat_wal_receiver WHERE pid IS NOT NULL),
       GREATEST(pg_wal_lsn_diff(%s::pg_lsn, pg_last_wal_replay_lsn()), 0)::float8,
       inet_server_port()
"""


@dataclass(frozen=True)
class ReplicaState:
    """What the last check found. `reason` says why the replica is not used ("" when it is)."""

    configured: bool
    usable: bool
    lag_bytes: float | None
    reason: str
    checked_at: float  # time.monotonic() of the check
    port: int | None = None


_state: ReplicaState | None = None
_state_lock = threading.Lock()


def replica_configured() -> bool:
    return REPLICA in connections.settings


def _check() -> ReplicaState:
    now = time.monotonic()
    with connections[PRIMARY].cursor() as cursor:
        cursor.execute(PRIMARY_POSITION_SQL)
        (position,) = cursor.fetchone()
    connection = connections[REPLICA]
    try:
        with connection.cursor() as cursor:
            cursor.execute(LAG_SQL, [position])
            in_recovery, receiving, lag, port = cursor.fetchone()
    except DatabaseError as exc:
        # A broken connection is not reused: the next check connects afresh.
        connection.close()
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        return ReplicaState(True, False, None, f"unreachable: {reason}", now)
    if not in_recovery:
        return ReplicaState(True, False, None, "not a standby (promoted, or the primary itself)", now, port)
    if not receiving:
        return ReplicaState(True, False, lag, "not streaming from the primary", now, port)
    limit = settings.OPSLOOP_REPLICA_MAX_LAG_MB
    if lag > limit * 1e6:
        reason = f"{lag / 1e6:.1f} MB of WAL behind the primary (limit {limit:g} MB)"
        return ReplicaState(True, False, lag, reason, now, port)
    return ReplicaState(True, True, lag, "", now, port)


def replica_state(*, fresh: bool = False) -> ReplicaState:
    """The replica's state, checked again when the last check is older than its interval."""
    global _state
    if not replica_configured():
        return ReplicaState(False, False, None, "no replica configured", time.monotonic())
    state = _state
    if not fresh and state is not None:
        interval = settings.OPSLOOP_REPLICA_CHECK_SECONDS if state.usable else settings.OPSLOOP_REPLICA_RETRY_SECONDS
        if time.monotonic() - state.checked_at < interval:
            return state
    with _state_lock:
        new = _check()
        old, _state = _state, new
    if new.usable and (old is None or not old.usable):
        logger.info("replica: reading dashboards and analyses from the replica (%d bytes behind)", new.lag_bytes or 0)
    elif not new.usable and (old is None or old.usable or old.reason.split(":")[0] != new.reason.split(":")[0]):
        logger.warning("replica: %s; reading dashboards and analyses from the primary", new.reason)
    return new


def forget_replica_state() -> None:
    """Check the replica again at its next use (after its settings changed, in tests)."""
    global _state
    with _state_lock:
        _state = None


def _use_replica() -> bool:
    # The cheap conditions first: outside the scope, or in a transaction, no check is made.
    return (
        _reading.get() and replica_configured() and not connections[PRIMARY].in_atomic_block and replica_state().usable
    )


def analytics_alias() -> str:
    """The database alias a raw-SQL analysis reads from: the replica inside `reading_from_replica()`
    while it is usable and no transaction is open on the primary, else the primary."""
    return REPLICA if _use_replica() else PRIMARY


F = TypeVar("F", bound=Callable[..., Any])


class reading_from_replica:
    """`with reading_from_replica(): ...` or `@reading_from_replica()` on a view: its reads may go to
    the replica. As a decorator it also renders a lazy TemplateResponse inside the scope."""

    def __enter__(self) -> None:
        self._tokens = getattr(self, "_tokens", [])
        self._tokens.append(_reading.set(True))

    def __exit__(self, *exc_info: object) -> None:
        _reading.reset(self._tokens.pop())

    def __call__(self, view: F) -> F:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            with _scope():
                response = view(*args, **kwargs)
                # A template's response (not an API's, which DRF renders once it has chosen
                # the format) is rendered here, so that the template's queries read where the
                # view's did.
                if getattr(response, "template_name", None) and not response.is_rendered:
                    response.render()
                return response

        return wrapped  # type: ignore[return-value]


@contextmanager
def _scope() -> Iterator[None]:
    token = _reading.set(True)
    try:
        yield
    finally:
        _reading.reset(token)


class ReplicaRouter:
    """Django's database router for the replica (see the module's docstring)."""

    def db_for_read(self, model: type, **hints: Any) -> str | None:
        if model._meta.app_label not in settings.OPSLOOP_REPLICA_APPS:
            return PRIMARY
        return REPLICA if _use_replica() else PRIMARY

    def db_for_write(self, model: type, **hints: Any) -> str:
        return PRIMARY

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        # The replica holds the primary's rows: an object read there may point at one read here.
        if {obj1._state.db, obj2._state.db} <= {PRIMARY, REPLICA}:
            return True
        return None

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None, **hints: Any) -> bool | None:
        return False if db == REPLICA else None
