"""Fixtures shared by the whole suite: API clients holding real keys, staff users in their roles,
and a real Celery worker process consuming the real Redis against the test database."""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import Group
from rest_framework.test import APIClient

from access import services as access_services
from access.models import Scope
from tests.workers import WorkerProcess

ROOT = Path(__file__).resolve().parent.parent

pytest_plugins = ["tests.browser_fixtures"]


class EventsEngine:
    """The events store a test reads through: `ready()` makes what was stored readable, as the
    background steps do (the rollups folded; with ClickHouse, the outbox shipped too)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def ready(self) -> None:
        from indicators import rollups
        from tracking import shipping

        rollups.fold_new_events()
        if self.name == "clickhouse":
            shipping.ship_events()
            assert shipping.pending_events() == 0


@pytest.fixture(scope="session", autouse=True)
def _no_session_outlives_the_test_database(django_db_setup, django_db_blocker) -> Iterator[None]:
    """At the end, sessions the tests left open on the test database (a thread's connection that
    was never closed) are ended, so that dropping the database does not wait for them and warn."""
    yield
    from django.db import connection

    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid, application_name, state, left(query, 80) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        left_open = cursor.fetchall()
        for pid, *_rest in left_open:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    if left_open:
        print(f"\nsessions left open on the test database, ended: {left_open}")


@pytest.fixture(scope="session")
def chdb_url(tmp_path_factory) -> str:
    """One embedded ClickHouse for the session (its table emptied for each test that uses it)."""
    return f"chdb://{tmp_path_factory.mktemp('chdb')}"


@pytest.fixture(params=["postgres", "clickhouse"])
def events_engine(request, settings, chdb_url) -> EventsEngine:
    """Run the test on each events store: PostgreSQL's rollups, and ClickHouse (embedded) fed
    through the real shipping path."""
    if request.param == "clickhouse":
        from tracking import shipping
        from tracking.events_store import clickhouse_store

        settings.OPSLOOP_EVENTS_STORE = "clickhouse"
        settings.OPSLOOP_CLICKHOUSE_URL = chdb_url
        clickhouse_store().truncate()
        if "db" in request.fixturenames or request.node.get_closest_marker("django_db"):
            request.getfixturevalue("db")
            shipping.ship_history()  # nothing stored before: ClickHouse has the history at once
    return EventsEngine(request.param)


@pytest.fixture
def stored_before_amount_check(db) -> Callable[[], AbstractContextManager[None]]:
    """`with stored_before_amount_check(): EventFactory(...)` stores events as a database held them
    before migration tracking 0010, which then left its amount constraint NOT VALID: it holds for
    new events only. DDL is transactional, so the test's rollback restores the constraint."""
    from django.db import connection

    migration = importlib.import_module("tracking.migrations.0010_order_amount_decimal")

    @contextmanager
    def stored() -> Iterator[None]:
        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE tracking_event DROP CONSTRAINT event_order_amount_decimal")
        yield
        with connection.cursor() as cursor:
            cursor.execute(migration.CONSTRAINT)

    return stored


@pytest.fixture
def make_api_client() -> Callable[..., APIClient]:
    """`make_api_client("events:write", ...)` -> an APIClient sending a fresh key with those scopes."""
    counter = iter(range(1_000_000))

    def make(*scopes: str) -> APIClient:
        issued = access_services.create_api_key(name=f"test-key-{next(counter)}", scopes=list(scopes))
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Api-Key {issued.plaintext}")
        client.api_key = issued.api_key
        return client

    return make


@pytest.fixture
def api_client(db, make_api_client) -> APIClient:
    """A client whose key holds every scope."""
    return make_api_client(*Scope.values)


@pytest.fixture
def make_staff(db, django_user_model) -> Callable[..., object]:
    """`make_staff("Customer service")` -> a staff user in that role (group)."""

    def make(*roles: str, username: str | None = None, superuser: bool = False):
        name = username or f"staff-{django_user_model.objects.count() + 1}"
        user = django_user_model.objects.create_user(
            username=name, password="pw-for-tests", is_staff=True, is_superuser=superuser
        )
        for role in roles:
            user.groups.add(Group.objects.get(name=role))
        return user

    return make


@pytest.fixture
def staff_client(make_staff) -> Callable[..., APIClient]:
    """`staff_client("Operations")` -> an APIClient logged in with a session as such a staff member."""

    def make(*roles: str, superuser: bool = False) -> APIClient:
        client = APIClient()
        client.force_login(make_staff(*roles, superuser=superuser))
        return client

    return make


def _worker_env(db_name: str) -> dict[str, str]:
    db = settings.DATABASES["default"]
    env = dict(os.environ)
    env["DATABASE_URL"] = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db_name}"
    env["REDIS_URL"] = settings.REDIS_URL
    env["DJANGO_SETTINGS_MODULE"] = "config.settings.test"
    env["OPSLOOP_DB_CONN_MAX_AGE"] = "0"
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="session")
def celery_worker_process(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[WorkerProcess]:
    """A real worker, started once per session, against the test database and the real Redis.
    Tests that use it need `transactional_db` so the worker sees their committed rows."""
    from config.celery import app

    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    worker = WorkerProcess(
        env=_worker_env(settings.DATABASES["default"]["NAME"]),
        log_path=tmp_path_factory.mktemp("celery") / "worker.log",
    )
    worker.start()
    deadline = time.monotonic() + 60
    while True:
        try:
            if app.send_task("config.celery.ping").get(timeout=5) == "pong":
                break
        except Exception:
            if time.monotonic() > deadline or worker.proc.poll() is not None:
                worker.stop()
                raise RuntimeError(f"Celery worker did not start:\n{worker.log()[-4000:]}") from None
    yield worker
    worker.stop()


@pytest.fixture
def celery_worker(celery_worker_process, transactional_db) -> WorkerProcess:
    proc = celery_worker_process
    if proc.proc is None or proc.proc.poll() is not None:  # a test killed it: bring it back
        proc.start()
    return proc


@pytest.fixture
def broker_down():
    """Point the Celery app at a port where no broker listens (as when Redis is down), then back."""
    from config.celery import app

    old = app.conf.broker_url
    app.amqp._producer_pool = None
    app.conf.broker_url = "redis://127.0.0.1:9/0"
    yield
    app.amqp._producer_pool = None
    app.conf.broker_url = old
