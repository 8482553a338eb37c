"""Throttling: the admin login is locked per user name and per address after repeated failures
(django-axes), and the API limits each key (and each staff member) per minute in Redis, answering
429 with `Retry-After`; the ingestion endpoints have a limit of their own, far above the
benchmarked rates."""

from __future__ import annotations

import pytest
import redis
from django.conf import settings as django_settings
from django.test import Client

from access.throttling import per_minute


@pytest.fixture(autouse=True)
def _fresh_counters():
    """The counters live in the real Redis: start every test from none."""
    connection = redis.Redis.from_url(django_settings.REDIS_URL)
    for key in connection.scan_iter("*throttle:*"):
        connection.delete(key)
    yield


def _login(client: Client, username: str, password: str, address: str = "10.0.0.1"):
    return client.post(
        "/admin/login/?next=/admin/",
        {"username": username, "password": password},
        REMOTE_ADDR=address,
    )


@pytest.mark.django_db
def test_admin_login_locks_a_user_name_after_repeated_failures(make_staff, settings):
    settings.AXES_FAILURE_LIMIT = 3
    make_staff("Operations", username="alice")
    client = Client()
    # From three addresses: the user name alone trips the lock, at the third failure.
    statuses = [_login(client, "alice", "wrong", address=f"10.0.1.{i}").status_code for i in range(3)]
    assert statuses == [200, 200, 429]
    response = _login(client, "alice", "pw-for-tests", address="10.0.1.9")
    assert response.status_code == 429
    assert "_auth_user_id" not in client.session


@pytest.mark.django_db
def test_admin_login_locks_an_address_guessing_many_user_names(make_staff, settings):
    settings.AXES_FAILURE_LIMIT = 3
    make_staff("Operations", username="bob")
    client = Client()
    for name in ("x1", "x2", "x3"):
        _login(client, name, "guess", address="10.0.2.1")
    assert _login(client, "bob", "pw-for-tests", address="10.0.2.1").status_code == 429
    # Another address is not locked out, nor is bob.
    assert _login(Client(), "bob", "pw-for-tests", address="10.0.2.2").status_code == 302


@pytest.mark.django_db
def test_a_trusted_proxy_header_names_the_address(make_staff, settings):
    settings.AXES_FAILURE_LIMIT = 2
    settings.OPSLOOP_CLIENT_IP_HEADER = "X-Real-IP"
    make_staff("Operations", username="carol")
    for name in ("y1", "y2"):
        Client().post(
            "/admin/login/", {"username": name, "password": "p"}, REMOTE_ADDR="10.9.9.9", HTTP_X_REAL_IP="1.2.3.4"
        )
    # Same proxy, another client: not locked.
    ok = Client().post(
        "/admin/login/",
        {"username": "carol", "password": "pw-for-tests"},
        REMOTE_ADDR="10.9.9.9",
        HTTP_X_REAL_IP="5.6.7.8",
    )
    assert ok.status_code == 302


@pytest.mark.django_db
def test_an_api_key_over_its_limit_gets_429_with_retry_after(make_api_client, settings):
    settings.OPSLOOP_API_RATE = "3/m"
    client = make_api_client("profiles:read")
    other = make_api_client("profiles:read")
    for _ in range(3):
        assert client.get("/api/v1/auth/whoami").status_code == 200
    response = client.get("/api/v1/auth/whoami")
    assert response.status_code == 429
    assert 1 <= int(response["Retry-After"]) <= 60
    assert other.get("/api/v1/auth/whoami").status_code == 200  # per key


@pytest.mark.django_db
def test_a_staff_session_is_limited_per_member(staff_client, settings):
    settings.OPSLOOP_API_RATE = "2/m"
    client = staff_client("Analyst")
    assert client.get("/api/v1/auth/whoami").status_code == 200
    assert client.get("/api/v1/auth/whoami").status_code == 200
    assert client.get("/api/v1/auth/whoami").status_code == 429


@pytest.mark.django_db
def test_ingestion_has_its_own_limit(make_api_client, settings):
    settings.OPSLOOP_API_RATE = "1/m"
    settings.OPSLOOP_API_INGEST_RATE = "2/m"
    client = make_api_client("events:write")
    for _ in range(2):
        assert client.post("/api/v1/events", {"events": []}, format="json").status_code != 429
    assert client.post("/api/v1/events", {"events": []}, format="json").status_code == 429


def test_default_limits_are_far_above_the_benchmarked_rates():
    # bench/ingest.py over HTTP: at most about 16 batches of 1000 events a second; the demo's
    # loader about 60 identify calls a second; bench/coupons.py some hundreds of claims a second.
    assert per_minute(django_settings.OPSLOOP_API_INGEST_RATE) >= 20 * 16 * 60
    assert per_minute(django_settings.OPSLOOP_API_RATE) >= 2 * 500 * 60
