"""Reads from a PostgreSQL streaming replica: which reads may go there, and what happens when it is
down, behind, or not a copy of this primary.

The replica is the database alias `replica`, configured by `OPSLOOP_REPLICA_DATABASE_URL`; without
it everything reads and writes the primary as before. Reads go to the replica only where a caller
asked for it, with `reading_from_replica()` around a dashboard view or an analysis, because the
replica is a little behind the primary and most code must read what it has just written. Even
inside that scope these stay on the primary:

- every write (`db_for_write` is always the primary, for objects read from the replica too);
- ORM reads of models outside `OPSLOOP_REPLICA_MODELS` (by default the events and the tables
  rolled up from them): a funnel or goal an operator has just edited, a coupon claim, a send or a
  login called from a dashboard reads what it just wrote. Raw SQL that does not go through
  `analytics_alias()` (the coupons' money paths, the sends) uses the default connection, the
  primary;
- every read while a transaction is open on the primary (a service's `transaction.atomic`, and
  each test of a `TestCase`);
- every read while the replica is unusable: unreachable (connect timeout
  `OPSLOOP_REPLICA_CONNECT_TIMEOUT`), not a standby, a copy of another cluster (its
  `system_identifier` differs from the primary's), not streaming from the primary, ahead of the
  primary's WAL position (it follows another server), or more than `OPSLOOP_REPLICA_MAX_LAG_MB`
  of WAL (MB = 10^6 bytes) behind the primary. A process checks this at most every
  `OPSLOOP_REPLICA_CHECK_SECONDS` (after a failure, every `OPSLOOP_REPLICA_RETRY_SECONDS`, so a
  dead replica costs one connect timeout per interval, not one per page; threads that wait for
  a check under way take its result) and logs each change between the replica and the primary
  as a warning. A connection or protocol error from the replica in the middle of a scoped read
  marks it unusable at once, for the whole process; a GET view wrapped by the decorator is then
  run again on the primary, so the page is answered rather than failing.

Raw-SQL analyses pick their connection with `connections[analytics_alias()]`; ORM reads inside
the scope are routed by `ReplicaRouter` (settings.DATABASE_ROUTERS). Migrations never run on the
replica (it is read-only and receives the primary's schema by streaming).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, DatabaseError, InterfaceError, OperationalError, connections

logger = logging.getLogger(__name__)

PRIMARY = DEFAULT_DB_ALIAS
REPLICA = "replica"

_reading: ContextVar[bool] = ContextVar("opsloop_reading_from_replica", default=False)
# Set once a read inside the scope was sent to the replica, so that a connection error in the
# scope is laid at the replica's door only when the replica was read.
_routed: ContextVar[list[bool] | None] = ContextVar("opsloop_routed_to_replica", default=None)

# Lag in bytes of WAL: how far the replica's replay is behind the primary's current position.
# Not in seconds: the standby's only clock, the commit time of the last transaction it replayed,
# counts a quiet spell on the primary as lag (bench/replica_lag.py measured 66 s where the
# primary's own replay_lag said 0.26 s), and the primary's replay_lag needs a privileged role.
# The WAL receiver's row is visible to every role (its details only to privileged ones), so the
# check needs no extra grants. A negative difference means the replica has replayed WAL this
# primary has not written: it follows another server.
# The replica is asked first and the primary second: WAL the primary writes between the two
# questions only makes the lag look larger. Asked the other way round, a busy primary's newest WAL
# could reach the replica in between and a healthy follower would look "ahead".
REPLICA_SQL = """
SELECT pg_is_in_recovery(),
       EXISTS (SELECT FROM pg_stat_wal_receiver WHERE pid IS NOT NULL),
       pg_last_wal_replay_lsn(),
       inet_server_port(),
       (SELECT system_identifier FROM pg_control_system())
"""
PRIMARY_SQL = """
SELECT CASE WHEN %s::pg_lsn IS NULL THEN NULL ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)::float8 END,
       (SELECT system_identifier FROM pg_control_system())
"""


@dataclass(frozen=True)
class ReplicaState:
    """What the last check found. `reason` says why the replica is not used ("" when it is)."""

    configured: bool
    usable: bool
    lag_bytes: float | None
    reason: str
    checked_at: float  # time.monotonic() when the check ended
    port: int | None = None


_state: ReplicaState | None = None
_state_lock = threading.Lock()


def replica_configured() -> bool:
    return REPLICA in connections.settings


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


def _check() -> ReplicaState:
    connection = connections[REPLICA]
    try:
        with connection.cursor() as cursor:
            cursor.execute(REPLICA_SQL)
            in_recovery, receiving, replayed, port, replica_system = cursor.fetchone()
    except DatabaseError as exc:
        # A broken connection is not reused: the next check connects afresh.
        connection.close()
        return ReplicaState(True, False, None, f"unreachable: {_first_line(exc)}", time.monotonic())
    with connections[PRIMARY].cursor() as cursor:
        cursor.execute(PRIMARY_SQL, [replayed, replayed])
        lag, primary_system = cursor.fetchone()
    now = time.monotonic()
    if not in_recovery:
        return ReplicaState(True, False, None, "not a standby (promoted, or the primary itself)", now, port)
    if replica_system != primary_system:
        reason = f"a copy of another cluster (system identifier {replica_system}, the primary's {primary_system})"
        return ReplicaState(True, False, None, reason, now, port)
    if not receiving:
        return ReplicaState(True, False, lag, "not streaming from the primary", now, port)
    if lag is not None and lag < 0:
        reason = f"ahead of the primary by {-lag / 1e6:.1f} MB of WAL: it follows another server"
        return ReplicaState(True, False, lag, reason, now, port)
    limit = settings.OPSLOOP_REPLICA_MAX_LAG_MB
    if lag is None or lag > limit * 1e6:
        behind = "an unknown amount" if lag is None else f"{lag / 1e6:.1f} MB"
        reason = f"{behind} of WAL behind the primary (limit {limit:g} MB)"
        return ReplicaState(True, False, lag, reason, now, port)
    return ReplicaState(True, True, lag, "", now, port)


def _current(state: ReplicaState | None) -> bool:
    if state is None:
        return False
    interval = settings.OPSLOOP_REPLICA_CHECK_SECONDS if state.usable else settings.OPSLOOP_REPLICA_RETRY_SECONDS
    return time.monotonic() - state.checked_at < interval


def _log_change(old: ReplicaState | None, new: ReplicaState) -> None:
    if new.usable and (old is None or not old.usable):
        logger.info("replica: reading dashboards and analyses from the replica (%d bytes behind)", new.lag_bytes or 0)
    elif not new.usable and (old is None or old.usable or old.reason.split(":")[0] != new.reason.split(":")[0]):
        logger.warning("replica: %s; reading dashboards and analyses from the primary", new.reason)


def replica_state(*, fresh: bool = False) -> ReplicaState:
    """The replica's state, checked again when the last check is older than its interval.

    One thread checks at a time; the threads that waited for it take its result instead of each
    paying a connect timeout of their own in turn."""
    global _state
    if not replica_configured():
        return ReplicaState(False, False, None, "no replica configured", time.monotonic())
    asked = time.monotonic()
    state = _state
    if not fresh and _current(state):
        return state
    with _state_lock:
        state = _state
        if state is not None and (state.checked_at >= asked or (not fresh and _current(state))):
            return state
        new = _check()
        old, _state = _state, new
    _log_change(old, new)
    return new


def mark_replica_unusable(reason: str) -> ReplicaState:
    """The replica failed a read: pass it over at once, in every thread of this process, until the
    retry interval has passed."""
    global _state
    new = ReplicaState(True, False, None, reason, time.monotonic())
    with _state_lock:
        old, _state = _state, new
    _log_change(old, new)
    # This thread's connection is broken; the next use connects afresh.
    connections[REPLICA].close()
    return new


def forget_replica_state() -> None:
    """Check the replica again at its next use (after its settings changed, in tests)."""
    global _state
    with _state_lock:
        _state = None


def _use_replica() -> bool:
    # The cheap conditions first: outside the scope, or in a transaction, no check is made.
    use = (
        _reading.get() and replica_configured() and not connections[PRIMARY].in_atomic_block and replica_state().usable
    )
    if use:
        routed = _routed.get()
        if routed is not None:
            routed.append(True)
    return use


def analytics_alias() -> str:
    """The database alias a raw-SQL analysis reads from: the replica inside `reading_from_replica()`
    while it is usable and no transaction is open on the primary, else the primary."""
    return REPLICA if _use_replica() else PRIMARY


F = TypeVar("F", bound=Callable[..., Any])

REPLICA_ERRORS = (OperationalError, InterfaceError)


def _replica_failed(exc: BaseException) -> None:
    mark_replica_unusable(f"failed during a read: {_first_line(exc)}")


def _request_method(args: tuple) -> str | None:
    # A function view's first argument is the request; a class-based view's method's second.
    for arg in args[:2]:
        method = getattr(arg, "method", None)
        if isinstance(method, str) and hasattr(arg, "META"):
            return method
    return None


class reading_from_replica:
    """`with reading_from_replica(): ...` or `@reading_from_replica()` on a view: its reads may go to
    the replica. As a decorator it also renders a lazy TemplateResponse inside the scope, and
    answers a GET from the primary when the replica fails in the middle of it."""

    def __enter__(self) -> None:
        self._tokens = getattr(self, "_tokens", [])
        self._tokens.append((_reading.set(True), _routed.set([])))

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        reading, routed = self._tokens.pop()
        replica_read = bool(_routed.get())
        _reading.reset(reading)
        _routed.reset(routed)
        self.replica_failed = exc is not None and isinstance(exc, REPLICA_ERRORS) and replica_read
        if self.replica_failed:
            _replica_failed(exc)

    def __call__(self, view: F) -> F:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            scope = self.__class__()
            try:
                with scope:
                    return _render(view(*args, **kwargs))
            except REPLICA_ERRORS:
                # Only when the replica was read: otherwise the error is the primary's, and
                # running the view again would not help.
                if not scope.replica_failed or _request_method(args) not in ("GET", "HEAD"):
                    raise
            return _render(view(*args, **kwargs))

        wrapped.reads_from_replica = True  # type: ignore[attr-defined]
        return wrapped  # type: ignore[return-value]


def _render(response: Any) -> Any:
    # A template's response (not an API's, which DRF renders once it has chosen the format) is
    # rendered where the view ran, so that the template's queries read where the view's did.
    if getattr(response, "template_name", None) and not response.is_rendered:
        response.render()
    return response


class ReplicaRouter:
    """Django's database router for the replica (see the module's docstring)."""

    def db_for_read(self, model: type, **hints: Any) -> str | None:
        if model._meta.label_lower not in settings.OPSLOOP_REPLICA_MODELS:
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
