"""Dashboards read from a PostgreSQL streaming replica that the project's script starts, while every
write, the money paths and anything in a transaction stay on the primary (config/replica.py)."""

from __future__ import annotations

import logging
import os
import runpy
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import timedelta
from pathlib import Path

import dj_database_url
import pytest
from django.db import connections, router, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.replica import PRIMARY, REPLICA, analytics_alias, forget_replica_state, reading_from_replica
from coupons import services as coupons
from coupons.models import Coupon
from indicators.models import DailyIndicator
from monitoring import selectors as health
from tests.factories.coupons import CouponRuleFactory

pytestmark = pytest.mark.django_db(transaction=True, databases=[PRIMARY, REPLICA])

ROOT = Path(__file__).resolve().parents[2]

STREAM_TIMEOUT = 15  # seconds a committed write may take to show on the replica (load included)


def _saved_port() -> str:
    for line in (ROOT / ".run" / "ports").read_text().splitlines() if (ROOT / ".run" / "ports").exists() else []:
        if line.startswith("SAVED_PG_PORT="):
            return line.split("=", 1)[1]
    return ""


def _services(*args: str) -> subprocess.CompletedProcess:
    # The script copies this checkout's cluster: the test database must live there.
    port = str(connections[PRIMARY].settings_dict["PORT"] or 5432)
    if port != _saved_port():
        pytest.fail(
            f"the test database is on port {port}, not on this checkout's cluster ({_saved_port() or 'none'}, "
            ".run/ports): load .run/env (set -a; . .run/env; set +a) before the tests"
        )
    return subprocess.run(
        [str(ROOT / "scripts" / "services.sh"), *args],
        env={**os.environ, "OPSLOOP_PG_PORT": port},
        capture_output=True,
        text=True,
        timeout=600,
    )


def _replica_url_from_env_file() -> str:
    for line in (ROOT / ".run" / "env").read_text().splitlines():
        if line.startswith("OPSLOOP_REPLICA_DATABASE_URL="):
            return line.split("=", 1)[1]
    return ""


@pytest.fixture(scope="session")
def replica_server() -> Iterator[str]:
    """The replica started by `scripts/services.sh start-replica`; its URL from .run/env."""
    was_running = "replica running" in _services("status").stdout
    started = _services("start-replica")
    if started.returncode != 0:
        pytest.fail(f"scripts/services.sh start-replica failed ({started.returncode}):\n{started.stderr}")
    url = _replica_url_from_env_file()
    if not url:
        pytest.fail(f"start-replica wrote no OPSLOOP_REPLICA_DATABASE_URL to .run/env:\n{started.stderr}")
    yield url
    if not was_running:
        _services("stop-replica")


@pytest.fixture(scope="module")
def replica_alias(replica_server, django_db_setup) -> Iterator[dict]:
    """The `replica` alias as the settings make it from the URL, pointed like Django's test mirror
    at the test database. The suite's settings leave it out (config/settings/test.py), and it is
    gone again after this module."""
    conf = dj_database_url.parse(replica_server, conn_max_age=0)
    conf.setdefault("OPTIONS", {})["connect_timeout"] = 2
    conf["TEST"] = {"MIRROR": PRIMARY}
    connections.settings[REPLICA] = connections.configure_settings({PRIMARY: conf})[PRIMARY]
    connections[REPLICA].creation.set_as_test_mirror(connections[PRIMARY].settings_dict)
    forget_replica_state()
    yield connections.settings[REPLICA]
    connections[REPLICA].close()
    del connections[REPLICA]
    del connections.settings[REPLICA]
    forget_replica_state()


@pytest.fixture(autouse=True)
def fresh_check(replica_alias) -> Iterator[None]:
    forget_replica_state()
    yield
    forget_replica_state()


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = STREAM_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"within {timeout} s: {what}")
        time.sleep(0.05)


def _on_replica(day, value: int) -> bool:
    return DailyIndicator.objects.using(REPLICA).filter(day=day, active_users=value).exists()


def _server(alias: str) -> tuple[int, bool]:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT inet_server_port(), pg_is_in_recovery()")
        return cursor.fetchone()


def _replica_behind() -> bool:
    with connections[REPLICA].cursor() as cursor:
        cursor.execute("SELECT pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn()")
        return cursor.fetchone()[0]


def _trends_url(day) -> str:
    return reverse("admin:indicators_dailyindicator_changelist") + f"?indicator=dau&start={day}&end={day}"


def _tables(queries: CaptureQueriesContext) -> str:
    return " ".join(q["sql"] for q in queries.captured_queries)


@pytest.fixture
def superuser_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("replica-reader", password="pw-for-tests"))
    return client


@contextmanager
def claims_on_the_primary(rule_id: int) -> Iterator[dict]:
    """Coupon claims in a thread of their own, one after another, until the block ends."""
    stop = threading.Event()
    done: dict = {"claims": 0, "server": None, "error": None}

    def claim() -> None:
        try:
            done["server"] = _server(PRIMARY)
            while not stop.is_set():
                coupons.claim_coupon(rule_id=rule_id, user_id=f"claimer-{done['claims']}")
                done["claims"] += 1
        except Exception as exc:  # reported by the test, not lost in the thread
            done["error"] = exc
        finally:
            connections.close_all()

    thread = threading.Thread(target=claim)
    thread.start()
    try:
        yield done
    finally:
        stop.set()
        thread.join(30)


def test_the_script_starts_a_streaming_standby_on_its_own_port(replica_alias):
    port, in_recovery = _server(REPLICA)
    assert in_recovery is True
    assert port == int(replica_alias["PORT"]) != int(connections[PRIMARY].settings_dict["PORT"])
    assert _server(PRIMARY)[1] is False
    # Idempotent: a second start finds it running and streaming, and leaves it be.
    again = _services("start-replica")
    assert again.returncode == 0, again.stderr
    assert "streaming" in again.stderr and "pg_basebackup" not in again.stderr


def test_a_dashboard_page_is_served_from_the_replica_while_the_primary_takes_claims(superuser_client):
    day = timezone.now().date() - timedelta(days=1)
    DailyIndicator.objects.create(day=day, active_users=48213)
    _wait_for(lambda: _on_replica(day, 48213), "the day's row streamed to the replica")
    rule = CouponRuleFactory()

    with claims_on_the_primary(rule.pk) as claimed:
        _wait_for(lambda: claimed["claims"] > 0 or claimed["error"], "a first claim")
        before = claimed["claims"]
        with (
            CaptureQueriesContext(connections[REPLICA]) as on_replica,
            CaptureQueriesContext(connections[PRIMARY]) as on_primary,
        ):
            response = superuser_client.get(_trends_url(day))
        during = claimed["claims"] - before
    assert claimed["error"] is None

    assert response.status_code == 200
    assert "48213" in response.content.decode()
    # The page's rows came from the replica; the primary served only the session and the user.
    assert "tracking_dailyindicator" in _tables(on_replica)
    assert "tracking_dailyindicator" not in _tables(on_primary)
    assert "django_session" in _tables(on_primary)
    assert _server(REPLICA)[1] is True
    # The money path went on writing to the primary during the page, and only there.
    assert during > 0
    assert claimed["server"] == (int(connections[PRIMARY].settings_dict["PORT"]), False)
    assert Coupon.objects.using(PRIMARY).filter(rule=rule).count() == claimed["claims"]
    _wait_for(
        lambda: Coupon.objects.using(REPLICA).filter(rule=rule).count() == claimed["claims"],
        "the claims streamed to the replica",
    )


@pytest.mark.parametrize(
    "url, table",
    [
        ("admin:indicators_dashboard_retention", "tracking_retentioncell"),
        ("/api/v1/indicators/retention", "tracking_retentioncell"),
        ("/api/v1/churn", "tracking_activitygap"),  # in a transaction of its own, on the replica
        ("/api/v1/search/queries", "tracking_search"),
    ],
)
def test_the_analyses_raw_sql_reads_the_replica_from_pages_and_the_api(url, table, superuser_client):
    path = reverse(url) if url.startswith("admin:") else url
    with (
        CaptureQueriesContext(connections[REPLICA]) as on_replica,
        CaptureQueriesContext(connections[PRIMARY]) as on_primary,
    ):
        response = superuser_client.get(path)
    assert response.status_code == 200, response.content[:500]
    assert table in _tables(on_replica)
    assert table not in _tables(on_primary)


def test_in_the_scope_writes_transactions_and_money_stay_on_the_primary():
    day = timezone.now().date() - timedelta(days=2)
    DailyIndicator.objects.create(day=day, active_users=5)
    _wait_for(lambda: _on_replica(day, 5), "the row streamed")
    rule = CouponRuleFactory()

    with reading_from_replica():
        assert analytics_alias() == REPLICA
        row = DailyIndicator.objects.get(day=day)
        assert row._state.db == REPLICA
        row.active_users = 6
        row.save()  # an object read from the replica is written to the primary
        with CaptureQueriesContext(connections[REPLICA]) as on_replica:
            coupon = coupons.claim_coupon(rule_id=rule.pk, user_id="in-scope")
            with transaction.atomic():
                assert analytics_alias() == PRIMARY
                assert DailyIndicator.objects.get(day=day).active_users == 6
                assert DailyIndicator.objects.all().db == PRIMARY
    assert "coupon" not in _tables(on_replica) and "dailyindicator" not in _tables(on_replica)
    assert Coupon.objects.using(PRIMARY).filter(pk=coupon.pk).exists()
    assert DailyIndicator.objects.using(PRIMARY).get(day=day).active_users == 6
    # Outside the scope nothing reads the replica.
    assert analytics_alias() == PRIMARY
    assert DailyIndicator.objects.all().db == PRIMARY


def test_a_lagging_replica_is_passed_over_for_the_primary(superuser_client, caplog):
    day = timezone.now().date() - timedelta(days=3)
    DailyIndicator.objects.create(day=day, active_users=1)
    _wait_for(lambda: _on_replica(day, 1), "the row streamed")
    with connections[REPLICA].cursor() as cursor:
        cursor.execute("SELECT pg_wal_replay_pause()")
    try:
        DailyIndicator.objects.filter(day=day).update(active_users=777)
        # The replica received the change but does not apply it: it falls behind.
        _wait_for(_replica_behind, "the replica received WAL it has not replayed")
        with override_settings(OPSLOOP_REPLICA_MAX_LAG_MB=0), caplog.at_level(logging.WARNING, "config.replica"):
            with CaptureQueriesContext(connections[REPLICA]) as on_replica:
                response = superuser_client.get(_trends_url(day))
            state = health.replica()
    finally:
        with connections[REPLICA].cursor() as cursor:
            cursor.execute("SELECT pg_wal_replay_resume()")
    assert response.status_code == 200
    assert "777" in response.content.decode()  # the primary's value, not the replica's 1
    assert "tracking_dailyindicator" not in _tables(on_replica)
    assert "of WAL behind the primary (limit 0 MB)" in caplog.text
    assert state.usable is False and state.lag_bytes > 0
    _wait_for(lambda: _on_replica(day, 777), "replay resumed")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def replica_port(port: int) -> Iterator[None]:
    settings_dict = connections.settings[REPLICA]
    saved = settings_dict["PORT"]
    connections[REPLICA].close()
    settings_dict["PORT"] = port
    forget_replica_state()
    try:
        yield
    finally:
        connections[REPLICA].close()
        settings_dict["PORT"] = saved
        forget_replica_state()


@pytest.mark.parametrize(
    "where, reason",
    [
        ("nothing listening", "unreachable"),
        ("the primary itself", "not a standby"),
    ],
)
def test_an_unusable_replica_leaves_the_pages_on_the_primary_with_a_log_line(where, reason, superuser_client, caplog):
    day = timezone.now().date() - timedelta(days=4)
    DailyIndicator.objects.create(day=day, active_users=9191)
    port = _free_port() if where == "nothing listening" else connections[PRIMARY].settings_dict["PORT"]
    with replica_port(port), caplog.at_level(logging.WARNING, "config.replica"):
        started = time.monotonic()
        response = superuser_client.get(_trends_url(day))
        elapsed = time.monotonic() - started
        with reading_from_replica():
            assert analytics_alias() == PRIMARY
        report = health.health_report()
    assert response.status_code == 200
    assert "9191" in response.content.decode()
    assert f"replica: {reason}" in caplog.text
    assert elapsed < 10  # a refused connection fails at once, not after retries
    assert any(line.startswith("replica not used") and reason in line for line in report.problems)
    assert report.as_dict()["replica"]["usable"] is False


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    in_scope=st.booleans(),
    in_transaction=st.booleans(),
    reachable=st.booleans(),
    model=st.sampled_from([DailyIndicator, Coupon]),
    apps=st.sets(st.sampled_from(["indicators", "tracking", "coupons", "campaigns"])),
)
def test_reads_go_to_the_replica_exactly_when_every_condition_holds(in_scope, in_transaction, reachable, model, apps):
    port = connections.settings[REPLICA]["PORT"] if reachable else _free_port()
    with (
        replica_port(port),
        override_settings(OPSLOOP_REPLICA_APPS=sorted(apps)),
        reading_from_replica() if in_scope else nullcontext(),
        transaction.atomic() if in_transaction else nullcontext(),
    ):
        alias = analytics_alias()
        read_from = model.objects.all().db
        written_to = router.db_for_write(model)
    usable = in_scope and not in_transaction and reachable
    assert alias == (REPLICA if usable else PRIMARY)
    assert read_from == (REPLICA if usable and model._meta.app_label in apps else PRIMARY)
    assert written_to == PRIMARY


def test_the_health_page_shows_the_replica_and_its_lag(superuser_client):
    response = superuser_client.get(reverse("admin:monitoring_health_changelist"))
    assert response.status_code == 200
    page = response.content.decode()
    assert 'id="health-replica"' in page
    assert "the replica" in page
    assert health.replica().usable is True


def test_migrations_never_run_on_the_replica_and_tests_mirror_the_primary(monkeypatch):
    assert router.allow_migrate(REPLICA, "coupons", model_name="coupon") is False
    assert router.allow_migrate(PRIMARY, "coupons", model_name="coupon") is True
    monkeypatch.setenv("OPSLOOP_REPLICA_DATABASE_URL", "postgres://reader@replica.internal:5433/opsloop")
    configured = runpy.run_path(str(ROOT / "config" / "settings" / "base.py"))["DATABASES"]
    assert configured[REPLICA]["HOST"] == "replica.internal" and configured[REPLICA]["PORT"] == 5433
    assert configured[REPLICA]["TEST"] == {"MIRROR": PRIMARY}
    assert configured[REPLICA]["OPTIONS"]["connect_timeout"] == 2
    monkeypatch.delenv("OPSLOOP_REPLICA_DATABASE_URL")
    assert REPLICA not in runpy.run_path(str(ROOT / "config" / "settings" / "base.py"))["DATABASES"]
