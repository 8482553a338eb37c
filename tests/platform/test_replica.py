"""Dashboards read from a PostgreSQL streaming replica that the project's script starts, while every
write, the money paths and anything in a transaction stay on the primary (config/replica.py)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import runpy
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from django.apps import apps as apps_registry
from django.conf import settings as django_settings
from django.core.management import CommandError, call_command
from django.db import OperationalError, connections, router, transaction
from django.test import RequestFactory, override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import URLResolver, get_resolver, reverse
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config import replica as replica_module
from config.replica import (
    PRIMARY,
    REPLICA,
    analytics_alias,
    forget_replica_state,
    reading_from_replica,
    replica_state,
)
from coupons import services as coupons
from coupons.models import Coupon
from indicators.models import DailyIndicator, Funnel, FunnelStep
from monitoring import selectors as health
from tests.factories.coupons import CouponRuleFactory
from tests.factories.indicators import goal as indicator_goal

pytestmark = pytest.mark.django_db(transaction=True, databases=[PRIMARY, REPLICA])

ROOT = Path(__file__).resolve().parents[2]

STREAM_TIMEOUT = 15  # seconds a committed write may take to show on the replica (load included)


def _saved_port() -> str:
    for line in (ROOT / ".run" / "ports").read_text().splitlines() if (ROOT / ".run" / "ports").exists() else []:
        if line.startswith("SAVED_PG_PORT="):
            return line.split("=", 1)[1]
    return ""


def _services(*args: str, env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess:
    # The script copies this checkout's cluster: the test database must live there.
    port = str(connections[PRIMARY].settings_dict["PORT"] or 5432)
    if port != _saved_port():
        pytest.fail(
            f"the test database is on port {port}, not on this checkout's cluster ({_saved_port() or 'none'}, "
            ".run/ports): load .run/env (set -a; . .run/env; set +a) before the tests"
        )
    environment = {**os.environ, "OPSLOOP_PG_PORT": port}
    for name, value in (env or {}).items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    return subprocess.run(
        [str(ROOT / "scripts" / "services.sh"), *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _replica_settings(url: str) -> dict:
    """The `replica` alias config/settings/base.py makes of this URL (its OPTIONS included)."""
    saved = os.environ.get("OPSLOOP_REPLICA_DATABASE_URL")
    os.environ["OPSLOOP_REPLICA_DATABASE_URL"] = url
    try:
        return runpy.run_path(str(ROOT / "config" / "settings" / "base.py"))["DATABASES"][REPLICA]
    finally:
        if saved is None:
            del os.environ["OPSLOOP_REPLICA_DATABASE_URL"]
        else:
            os.environ["OPSLOOP_REPLICA_DATABASE_URL"] = saved


def _replica_log_tail() -> str:
    # scripts/services.sh keeps it beside the replica's data directory (.run/pg-replica, or where
    # that links to).
    log = Path(f"{(ROOT / '.run' / 'pg-replica').resolve()}.log")
    return log.read_text(errors="replace")[-3000:] if log.exists() else f"({log} does not exist)"


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
        pytest.fail(
            f"scripts/services.sh start-replica failed ({started.returncode}):\n{started.stderr}\n"
            f"the replica's log:\n{_replica_log_tail()}"
        )
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
    conf = {**_replica_settings(replica_server), "CONN_MAX_AGE": 0}
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


def _slots() -> list[tuple[str, bool]]:
    with connections[PRIMARY].cursor() as cursor:
        cursor.execute("SELECT slot_name, active FROM pg_replication_slots ORDER BY slot_name")
        return cursor.fetchall()


def test_the_replica_streams_through_a_slot_that_stop_replica_drops_and_a_restart_reuses_its_copy():
    _wait_for(lambda: _slots() == [("opsloop_replica", True)], "the replica streams through its slot")
    log = Path(f"{(ROOT / '.run' / 'pg-replica').resolve()}.log")
    assert log.exists() and not (ROOT / ".run" / "pg-replica" / "server.log").exists()
    connections[REPLICA].close()
    stopped = _services("stop-replica")
    assert stopped.returncode == 0, stopped.stderr
    assert _slots() == []  # a stopped replica does not hold the primary's WAL
    DailyIndicator.objects.create(day=timezone.now().date() - timedelta(days=8), active_users=808)
    again = _services("start-replica")
    assert again.returncode == 0, again.stderr
    assert "pg_basebackup" not in again.stderr and "streaming" in again.stderr  # the copy was kept
    assert _slots() == [("opsloop_replica", True)]
    _wait_for(lambda: _on_replica(timezone.now().date() - timedelta(days=8), 808), "the row written while stopped")


def _saved_replica_port() -> str:
    for line in (ROOT / ".run" / "ports").read_text().splitlines():
        if line.startswith("SAVED_PG_REPLICA_PORT="):
            return line.split("=", 1)[1]
    return ""


def test_a_replica_port_held_by_another_process_moves_the_replica_unless_the_port_was_named(replica_alias):
    port = int(replica_alias["PORT"])
    connections[REPLICA].close()
    assert _services("stop-replica").returncode == 0
    ports = ROOT / ".run" / "ports"
    saved = ports.read_text()
    # What a test run can meet: the default port lies in the ephemeral range, and an outgoing
    # connection (here one to the primary, on a port the kernel picks) holds it.
    holder = socket.create_connection(("127.0.0.1", int(connections[PRIMARY].settings_dict["PORT"])))
    held = holder.getsockname()[1]
    try:
        named = _services("start-replica", env={"OPSLOOP_PG_REPLICA_PORT": str(held)})
        assert named.returncode == 1
        assert f"port {held} is in use by another process" in named.stderr

        ports.write_text(re.sub(r"(?m)^SAVED_PG_REPLICA_PORT=.*$", f"SAVED_PG_REPLICA_PORT={held}", saved))
        moved = _services("start-replica", env={"OPSLOOP_PG_REPLICA_PORT": None})
        assert moved.returncode == 0, f"{moved.stderr}\n{_replica_log_tail()}"
        url = _replica_url_from_env_file()
        now = int(url.rsplit(":", 1)[1].split("/")[0])
        assert now != held and f"port {held} is in use by another process: the replica listens on {now}" in moved.stderr
        assert _saved_replica_port() == str(now)
        with psycopg.connect(url, connect_timeout=5) as connection:
            assert connection.execute("SELECT pg_is_in_recovery(), inet_server_port()").fetchone() == (True, now)
    finally:
        holder.close()
        _services("stop-replica")
        back = _services("start-replica", env={"OPSLOOP_PG_REPLICA_PORT": str(port)})
    assert back.returncode == 0, back.stderr
    assert f":{port}/" in _replica_url_from_env_file() and _saved_replica_port() == str(port)


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
        # The claims went on around the page: one finished before it and another after it, with
        # the thread never stopped. (How many land inside a fast page is timing, not behaviour.)
        _wait_for(lambda: claimed["claims"] > before or claimed["error"], "a claim after the page")
    assert claimed["error"] is None

    assert response.status_code == 200
    assert "48213" in response.content.decode()
    # The page's rows came from the replica; the primary served only the session and the user.
    assert "tracking_dailyindicator" in _tables(on_replica)
    assert "tracking_dailyindicator" not in _tables(on_primary)
    assert "django_session" in _tables(on_primary)
    assert _server(REPLICA)[1] is True
    # The money path went on writing to the primary, and only there.
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
    model=st.sampled_from([DailyIndicator, Funnel, Coupon]),
    models=st.sets(st.sampled_from(["indicators.dailyindicator", "indicators.funnel", "coupons.coupon"])),
)
def test_reads_go_to_the_replica_exactly_when_every_condition_holds(in_scope, in_transaction, reachable, model, models):
    port = connections.settings[REPLICA]["PORT"] if reachable else _free_port()
    with (
        replica_port(port),
        override_settings(OPSLOOP_REPLICA_MODELS=sorted(models)),
        reading_from_replica() if in_scope else nullcontext(),
        transaction.atomic() if in_transaction else nullcontext(),
    ):
        alias = analytics_alias()
        read_from = model.objects.all().db
        written_to = router.db_for_write(model)
    usable = in_scope and not in_transaction and reachable
    assert alias == (REPLICA if usable else PRIMARY)
    assert read_from == (REPLICA if usable and model._meta.label_lower in models else PRIMARY)
    assert written_to == PRIMARY


def _replica_cells(page: str) -> dict[str, str]:
    table = page[page.index('id="health-replica"') :]
    table = table[: table.index("</table>")]
    return {
        name: re.search(rf'<td class="replica-{name}">(.*?)</td>', table, re.S).group(1).strip()
        for name in ("source", "lag", "reason")
    }


def test_the_health_page_shows_the_replica_and_its_lag_in_mb(superuser_client):
    response = superuser_client.get(reverse("admin:monitoring_health_changelist"))
    assert response.status_code == 200
    cells = _replica_cells(response.content.decode())
    assert cells["source"] == "the replica"
    assert cells["reason"] == "-"
    # MB of 10^6 bytes, the unit of OPSLOOP_REPLICA_MAX_LAG_MB.
    assert re.fullmatch(r"\d+\.\d{3} MB", cells["lag"]), cells["lag"]
    assert health.replica().usable is True


def test_the_health_page_says_the_primary_and_why_when_the_replica_is_unusable(superuser_client):
    with replica_port(connections[PRIMARY].settings_dict["PORT"]):
        response = superuser_client.get(reverse("admin:monitoring_health_changelist"))
    cells = _replica_cells(response.content.decode())
    assert cells["source"] == "the primary"
    assert cells["reason"].startswith("not a standby")
    assert cells["lag"] == "-"


def test_opsloop_health_states_the_lag_in_mb():
    out = io.StringIO()
    # A problem elsewhere would make it exit 1; the replica's line is printed all the same.
    with contextlib.suppress(CommandError):
        call_command("opsloop_health", stdout=out)
    line = next(line for line in out.getvalue().splitlines() if line.startswith("Replica:"))
    assert re.fullmatch(r"Replica: lag \d+\.\d{3} MB of WAL; dashboards read the replica", line), line


def test_migrations_never_run_on_the_replica_and_tests_mirror_the_primary(monkeypatch):
    assert router.allow_migrate(REPLICA, "coupons", model_name="coupon") is False
    assert router.allow_migrate(PRIMARY, "coupons", model_name="coupon") is True
    monkeypatch.setenv("OPSLOOP_REPLICA_DATABASE_URL", "postgres://reader@replica.internal:5433/opsloop")
    configured = runpy.run_path(str(ROOT / "config" / "settings" / "base.py"))["DATABASES"]
    assert configured[REPLICA]["HOST"] == "replica.internal" and configured[REPLICA]["PORT"] == 5433
    assert configured[REPLICA]["TEST"] == {"MIRROR": PRIMARY}
    options = configured[REPLICA]["OPTIONS"]
    assert options["connect_timeout"] == 2
    # A vanished host or a runaway query ends within seconds, not the kernel's minutes.
    assert options["keepalives"] == 1 and options["tcp_user_timeout"] == 10_000
    assert options["options"] == "-c statement_timeout=60000"
    monkeypatch.delenv("OPSLOOP_REPLICA_DATABASE_URL")
    assert REPLICA not in runpy.run_path(str(ROOT / "config" / "settings" / "base.py"))["DATABASES"]


# --- a replica that fails in the middle of a read -------------------------------------------------


@contextmanager
def replica_dies_at(table: str) -> Iterator[list]:
    """The replica's server ends this thread's connection at its first query of `table`: the query
    fails as it would when the replica is restarted or its host vanishes."""
    killed: list = []

    def die(execute, sql, params, many, context):
        if table in sql and not killed:
            killed.append(sql)
            return execute("SELECT pg_terminate_backend(pg_backend_pid())", None, False, context)
        return execute(sql, params, many, context)

    with connections[REPLICA].execute_wrapper(die):
        yield killed


@pytest.mark.parametrize(
    "url, table",
    [
        ("trends", "tracking_dailyindicator"),
        ("/api/v1/indicators/retention", "tracking_retentioncell"),
    ],
)
def test_a_replica_failing_mid_read_is_passed_over_at_once_and_the_page_answers_from_the_primary(
    url, table, superuser_client, caplog
):
    day = timezone.now().date() - timedelta(days=5)
    DailyIndicator.objects.create(day=day, active_users=61616)
    _wait_for(lambda: _on_replica(day, 61616), "the row streamed")
    path = _trends_url(day) if url == "trends" else url
    with (
        caplog.at_level(logging.WARNING, "config.replica"),
        replica_dies_at(table) as killed,
        CaptureQueriesContext(connections[PRIMARY]) as on_primary,
    ):
        response = superuser_client.get(path)
    assert killed, "the page read the replica"
    assert response.status_code == 200, response.content[:500]
    assert table in _tables(on_primary)  # the view ran again, on the primary
    if url == "trends":
        assert "61616" in response.content.decode()
    assert "replica: failed during a read: terminating connection" in caplog.text
    # Process-wide and at once: the next page does not try the replica again.
    state = replica_state()
    assert state.usable is False and state.reason.startswith("failed during a read")
    with CaptureQueriesContext(connections[REPLICA]) as on_replica:
        assert superuser_client.get(path).status_code == 200
    assert on_replica.captured_queries == []


def test_a_replica_failing_in_a_scoped_analysis_is_marked_unusable():
    with pytest.raises(OperationalError), replica_dies_at("tracking_dailyindicator"), reading_from_replica():
        list(DailyIndicator.objects.all())
    assert replica_state().usable is False
    with reading_from_replica():
        assert analytics_alias() == PRIMARY


def test_a_post_is_not_run_twice_when_the_replica_fails():
    calls = []

    @reading_from_replica()
    def post_view(request):
        calls.append(request)
        return list(DailyIndicator.objects.all())

    request = RequestFactory().post("/")
    with pytest.raises(OperationalError), replica_dies_at("tracking_dailyindicator"):
        post_view(request)
    assert len(calls) == 1
    assert replica_state().usable is False


@contextmanager
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers: a host that hangs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock.getsockname()[1]


def test_threads_waiting_for_a_check_take_its_result_instead_of_each_paying_the_timeout(monkeypatch):
    checks = []
    real_check = replica_module._check

    def counted():
        checks.append(threading.get_ident())
        return real_check()

    monkeypatch.setattr(replica_module, "_check", counted)
    results: list = []

    def ask() -> None:
        try:
            results.append(replica_state())
        finally:
            connections.close_all()

    with silent_server() as port, replica_port(port):
        threads = [threading.Thread(target=ask) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert len(results) == 4
    assert len(checks) == 1  # one connect timeout for all four, not four in turn
    assert {id(r) for r in results} == {id(results[0])}
    assert results[0].reason.startswith("unreachable")


# --- a replica that does not follow this primary --------------------------------------------------


@pytest.mark.parametrize(
    "primary_sql, reason",
    [
        # The primary's answer as another cluster's would be: a different system identifier.
        (
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)::float8 + 0 * length(%s), 42::bigint",
            "a copy of another cluster (system identifier",
        ),
        # A position the replica has replayed past: it follows another server.
        (
            "SELECT pg_wal_lsn_diff('0/1'::pg_lsn, %s::pg_lsn)::float8 + 0 * length(%s),"
            " (SELECT system_identifier FROM pg_control_system())",
            "ahead of the primary by",
        ),
    ],
)
def test_a_replica_not_following_this_primary_is_passed_over(primary_sql, reason, monkeypatch, caplog):
    assert replica_state(fresh=True).usable is True
    monkeypatch.setattr(replica_module, "PRIMARY_SQL", primary_sql)
    with caplog.at_level(logging.WARNING, "config.replica"):
        state = replica_state(fresh=True)
    assert state.usable is False and state.reason.startswith(reason)
    assert f"replica: {reason}" in caplog.text
    with reading_from_replica():
        assert analytics_alias() == PRIMARY


def test_a_busy_primary_never_makes_a_healthy_follower_look_ahead():
    # WAL the primary writes while it is being checked streams on to the replica; the check must
    # not read that as the replica having replayed more than the primary wrote.
    rule = CouponRuleFactory()
    states = []
    with claims_on_the_primary(rule.pk) as claimed:
        _wait_for(lambda: claimed["claims"] > 0 or claimed["error"], "a first claim")
        while len(states) < 60:
            states.append(replica_state(fresh=True))
        _wait_for(lambda: claimed["claims"] > 5 or claimed["error"], "claims during the checks")
    assert claimed["error"] is None
    assert [s.reason for s in states if not s.usable] == []
    assert all(s.lag_bytes is not None and s.lag_bytes >= 0 for s in states)


def test_a_replica_that_stopped_streaming_is_passed_over_with_that_reason(superuser_client):
    day = timezone.now().date() - timedelta(days=6)
    DailyIndicator.objects.create(day=day, active_users=3131)
    with connections[PRIMARY].cursor() as cursor:
        # The replication role may no longer log in, and its stream is ended: the replica keeps
        # serving reads of what it has, but follows the primary no more.
        cursor.execute("ALTER ROLE opsloop_replicator NOLOGIN")
        cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_replication")
    try:
        _wait_for(
            lambda: replica_state(fresh=True).reason == "not streaming from the primary",
            "the replica noticed its stream ended",
        )
        with CaptureQueriesContext(connections[REPLICA]) as on_replica:
            response = superuser_client.get(_trends_url(day))
        report = health.health_report()
    finally:
        with connections[PRIMARY].cursor() as cursor:
            cursor.execute("ALTER ROLE opsloop_replicator LOGIN")
    assert response.status_code == 200 and "3131" in response.content.decode()
    assert "tracking_dailyindicator" not in _tables(on_replica)
    assert "replica not used, dashboards read the primary: not streaming from the primary" in report.problems
    _wait_for(lambda: replica_state(fresh=True).usable, "the replica streams again", timeout=60)


# --- what operators edit is read from the primary -------------------------------------------------


def test_a_funnel_edited_just_now_is_analysed_as_edited_while_the_events_come_from_the_replica(superuser_client):
    funnel = Funnel.objects.create(name="replica-funnel")
    FunnelStep.objects.create(funnel=funnel, position=1, event_name="view", label="seen it")
    _wait_for(lambda: Funnel.objects.using(REPLICA).filter(pk=funnel.pk).exists(), "the funnel streamed")
    with connections[REPLICA].cursor() as cursor:
        cursor.execute("SELECT pg_wal_replay_pause()")
    try:
        # The operator adds a step and analyses at once; the replica has not replayed it.
        FunnelStep.objects.create(funnel=funnel, position=2, event_name="order", label="bought it")
        Funnel.objects.filter(pk=funnel.pk).update(window_hours=48)
        _wait_for(_replica_behind, "the replica received the edit without replaying it")
        assert FunnelStep.objects.using(REPLICA).filter(funnel=funnel).count() == 1
        with (
            CaptureQueriesContext(connections[REPLICA]) as on_replica,
            CaptureQueriesContext(connections[PRIMARY]) as on_primary,
        ):
            api = superuser_client.get(f"/api/v1/funnels/{funnel.pk}/analyze")
            page = superuser_client.get(reverse("admin:indicators_funnel_analyze", args=[funnel.pk]))
    finally:
        with connections[REPLICA].cursor() as cursor:
            cursor.execute("SELECT pg_wal_replay_resume()")
    assert api.status_code == 200, api.content[:500]
    assert "bought it" in api.content.decode()
    assert page.status_code == 200
    assert "bought it" in page.content.decode()
    assert "tracking_funnel" in _tables(on_primary) and "tracking_funnel" not in _tables(on_replica)
    assert "tracking_event" in _tables(on_replica)  # the analysis itself read the replica


def test_operator_edited_models_are_never_routed_to_the_replica():
    from django.apps import apps

    routed = set(django_settings.OPSLOOP_REPLICA_MODELS)
    with reading_from_replica():
        for model in apps.get_app_config("indicators").get_models():
            expected = REPLICA if model._meta.label_lower in routed else PRIMARY
            assert router.db_for_read(model) == expected, model
    edited = {
        "indicators.funnel",
        "indicators.funnelstep",
        "indicators.goal",
        "indicators.goalmonth",
        "indicators.alertrecipient",
        "indicators.indicatorwatch",
        "indicators.anomaly",
        "indicators.anomalycheckrun",
        "indicators.rollupstate",
        "indicators.rollupbacklog",
    }
    assert not routed & edited
    assert "tracking.event" in routed and "indicators.dailyindicator" in routed


# --- every view that reads from the replica -------------------------------------------------------


def _replica_views() -> list[tuple[str, str]]:
    """(route, view name) of every URL whose GET is wrapped by `reading_from_replica`, from the
    URL conf: a view decorated later is covered without naming it here."""
    found = []

    def walk(patterns, prefix: str) -> None:
        for entry in patterns:
            if isinstance(entry, URLResolver):
                walk(entry.url_patterns, prefix + str(entry.pattern))
                continue
            callback = entry.callback
            view_class = getattr(callback, "view_class", None)
            get = getattr(view_class, "get", None) if view_class else callback
            if getattr(get, "reads_from_replica", False):
                found.append((prefix + str(entry.pattern), entry.name or callback.__name__))

    walk(get_resolver().url_patterns, "/")
    return found


REPLICA_VIEWS = _replica_views()
# The query a view needs to answer 200 (a new view that needs one fails with its 400 until added).
QUERY = {"key-behaviour": "?event=view"}


def test_the_views_reading_from_the_replica_are_found():
    names = {name for _, name in REPLICA_VIEWS}
    assert {"indicators_dashboard_retention", "indicators_funnel_analyze", "indicator-retention"} <= names
    assert len(REPLICA_VIEWS) >= 10


@pytest.mark.parametrize("route, name", REPLICA_VIEWS, ids=[name for _, name in REPLICA_VIEWS])
def test_every_view_reading_from_the_replica_reads_its_event_tables_there(route, name, superuser_client):
    day = timezone.now().date() - timedelta(days=7)
    DailyIndicator.objects.create(day=day, active_users=7)
    funnel = Funnel.objects.create(name=f"funnel-{name}")
    FunnelStep.objects.create(funnel=funnel, position=1, event_name="view")
    goal = indicator_goal(name=f"goal-{name}", indicator="dau")
    _wait_for(lambda: _on_replica(day, 7), "the rows streamed")
    values = {"pk": funnel.pk, "key": "dau", "goal_id": goal.pk}
    path = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: str(values[m.group(1)]), route.replace("^", "").replace("$", ""))
    path += QUERY.get(name, "")
    event_tables = {apps_registry.get_model(label)._meta.db_table for label in django_settings.OPSLOOP_REPLICA_MODELS}
    with (
        CaptureQueriesContext(connections[REPLICA]) as on_replica,
        CaptureQueriesContext(connections[PRIMARY]) as on_primary,
    ):
        response = superuser_client.get(path)
    assert response.status_code == 200, (path, response.content[:500])
    # The check ran on the replica and found it usable, and no event table was read on the primary.
    assert replica_state().usable is True
    on_primary_sql = _tables(on_primary)
    assert not [t for t in event_tables if f'"{t}"' in on_primary_sql], (path, on_primary_sql[:2000])
    assert on_replica.captured_queries, path
