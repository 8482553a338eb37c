"""Shipping stored events to ClickHouse (the embedded engine): the outbox is written with the
events and only then, a run ships it in batches exactly once, a run against a ClickHouse that is
down fails visibly and leaves the backlog for the next, a run that dies between the insert and
clearing the outbox ships nothing twice, and retention deletes only shipped events."""

from __future__ import annotations

import logging
import socket
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from tests.factories.tracking import EventFactory, payloads
from tracking import services, shipping
from tracking.events_store import clickhouse_store
from tracking.events_store.clickhouse import TABLE
from tracking.models import Event, ShippingBacklog, ShippingState

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 5, 1, tzinfo=UTC)


@pytest.fixture
def clickhouse(settings, chdb_url):
    settings.OPSLOOP_EVENTS_STORE = "clickhouse"
    settings.OPSLOOP_CLICKHOUSE_URL = chdb_url
    store = clickhouse_store()
    store.truncate()
    return store


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shipped_ids(store) -> list[int]:
    """Every row in ClickHouse, duplicates included (no FINAL)."""
    return sorted(int(row[0]) for row in store.client.rows(f"SELECT id FROM {TABLE}"))


def stored_ids() -> list[int]:
    return sorted(Event.objects.values_list("id", flat=True))


def test_ingestion_queues_events_for_clickhouse_only_when_it_is_on(settings, chdb_url):
    services.ingest_events(events=payloads(5))
    assert not ShippingBacklog.objects.exists()

    settings.OPSLOOP_EVENTS_STORE = "clickhouse"
    settings.OPSLOOP_CLICKHOUSE_URL = chdb_url
    result = services.ingest_events(events=payloads(7))

    assert shipping.pending_events() == 7
    assert {(r.first_event_id, r.last_event_id) for r in ShippingBacklog.objects.all()} == {
        (min(e.id for e in result.stored), max(e.id for e in result.stored))
    }


def test_a_closed_port_fails_visibly_and_the_backlog_drains_once_clickhouse_is_back(clickhouse, settings, caplog):
    settings.OPSLOOP_CLICKHOUSE_URL = f"http://127.0.0.1:{closed_port()}"
    for _ in range(3):  # ingestion does not wait on ClickHouse: every batch is stored
        assert services.ingest_events(events=payloads(40)).accepted == 40

    with caplog.at_level(logging.ERROR, logger="tracking.shipping"), pytest.raises(shipping.ShippingFailed):
        shipping.ship_events(batch_events=50)

    state = ShippingState.objects.get(name=shipping.STATE)
    assert state.failures == 1 and state.last_error and state.last_error_at is not None
    assert "127.0.0.1" in state.last_error or "onnect" in state.last_error
    assert shipping.pending_events() == 120  # nothing lost, nothing marked shipped
    assert any("shipping to ClickHouse failed, 120 events wait" in r.getMessage() for r in caplog.records)

    settings.OPSLOOP_CLICKHOUSE_URL = clickhouse.url
    result = shipping.ship_events(batch_events=50)

    assert result.events == 120 and result.batches == 3  # 50 + 50 + 20, the failed batch first
    assert shipped_ids(clickhouse) == stored_ids()  # exactly once
    assert shipping.pending_events() == 0
    state.refresh_from_db()
    assert (state.failures, state.last_error, state.shipped_events) == (0, "", 120)


def test_a_run_that_dies_after_the_insert_ships_its_batch_once(clickhouse):
    services.ingest_events(events=payloads(30))
    batch, runs = shipping._claim(1000)
    data, _events = shipping._export(runs)
    clickhouse.insert_batch(data, token=str(batch))  # ... and the worker dies before clearing the outbox
    assert ShippingBacklog.objects.filter(batch=batch).exists()

    result = shipping.ship_events()

    assert result.events == 30  # the same batch again, under the same token: dropped by ClickHouse
    assert shipped_ids(clickhouse) == stored_ids()
    assert not ShippingBacklog.objects.exists()


def test_rows_shipped_twice_under_another_token_merge_away_on_the_event_id(clickhouse):
    services.ingest_events(events=payloads(10))
    _batch, runs = shipping._claim(1000)
    data, _events = shipping._export(runs)
    clickhouse.insert_batch(data, token="first")
    clickhouse.insert_batch(data, token="second")  # past the deduplication window, say

    assert len(shipped_ids(clickhouse)) == 20
    assert clickhouse.event_count() == 10  # read with FINAL: one row per event_id
    clickhouse.client.command(f"OPTIMIZE TABLE {TABLE} FINAL")
    assert shipped_ids(clickhouse) == stored_ids()


def test_the_shipped_rows_carry_what_the_rollups_derive(clickhouse):
    EventFactory(name="order_paid", user_id=None, anonymous_id="a1", timestamp=NOW, properties={"amount": "12.345"})
    EventFactory(name="search", user_id="u1", timestamp=NOW, properties={"query": "  Red SHOES ", "results": []})
    EventFactory(name="search", user_id="u1", timestamp=NOW, properties={"query": "hat", "results": 3})
    shipping.ship_events()

    rows = clickhouse.client.rows(
        f"SELECT name, person, toInt64(amount * 100), search_query, search_zero, person_hash FROM {TABLE} ORDER BY id"
    )
    with connection.cursor() as cursor:
        cursor.execute("SELECT hashtext('a1'), hashtext('u1')")
        a1, u1 = cursor.fetchone()

    assert rows == [  # the amount rounded to cents, the query trimmed and in lower case
        ["order_paid", "a1", 1235, "", 0, a1],
        ["search", "u1", 0, "red shoes", 1, u1],
        ["search", "u1", 0, "hat", 0, u1],
    ]
    assert a1 != u1


@hypothesis_settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batches=st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=5),
    budget=st.integers(min_value=1, max_value=100),
    fail_after=st.one_of(st.none(), st.integers(min_value=0, max_value=3)),
)
def test_any_batch_size_and_any_failed_run_ship_every_event_exactly_once(
    clickhouse, settings, batches, budget, fail_after
):
    clickhouse.truncate()
    Event.objects.all().delete()
    ShippingBacklog.objects.all().delete()
    for size in batches:
        services.ingest_events(events=payloads(size))
    if fail_after is not None:  # some batches go, then ClickHouse goes away
        shipping.ship_events(batch_events=budget, max_batches=fail_after)
        settings.OPSLOOP_CLICKHOUSE_URL = f"http://127.0.0.1:{closed_port()}"
        if shipping.pending_events():
            with pytest.raises(shipping.ShippingFailed):
                shipping.ship_events(batch_events=budget)
        settings.OPSLOOP_CLICKHOUSE_URL = clickhouse.url

    shipping.ship_events(batch_events=budget)

    assert shipped_ids(clickhouse) == stored_ids()
    assert shipping.pending_events() == 0


def test_retention_deletes_old_events_in_batches_and_keeps_those_not_shipped(clickhouse, settings):
    from indicators import rollups
    from profiles.services import update_seen_times

    settings.OPSLOOP_EVENTS_RETENTION_DAYS = 30
    shipping.ship_history()
    old = NOW - timedelta(days=40)
    for n in range(5):
        EventFactory(user_id=f"old{n}", timestamp=old, received_at=old)
    shipping.ship_events()
    waiting = EventFactory(user_id="old-unshipped", timestamp=old, received_at=old)
    late = EventFactory(user_id="late", timestamp=old, received_at=NOW)  # an old event that arrived now
    recent = EventFactory(user_id="recent", timestamp=NOW, received_at=NOW)
    rollups.fold_new_events()
    update_seen_times()

    deleted = shipping.delete_expired_events(now=NOW, batch_size=2)

    assert deleted == 5
    assert set(Event.objects.values_list("id", flat=True)) == {waiting.id, late.id, recent.id}
    assert ShippingState.objects.get(name=shipping.STATE).deleted_events == 5
    shipping.ship_events()
    assert shipping.delete_expired_events(now=NOW) == 1  # shipped now, so past the window it goes


def test_retention_unset_keeps_every_event(settings):
    settings.OPSLOOP_EVENTS_RETENTION_DAYS = None
    EventFactory(timestamp=NOW - timedelta(days=4000), received_at=NOW - timedelta(days=4000))
    assert shipping.delete_expired_events(now=NOW) == 0
    assert Event.objects.count() == 1


def test_the_admin_page_shows_the_backlog_and_the_last_error_and_queues_a_retry(
    clickhouse, settings, client, make_staff
):
    settings.OPSLOOP_CLICKHOUSE_URL = f"http://127.0.0.1:{closed_port()}"
    services.ingest_events(events=payloads(12))
    with pytest.raises(shipping.ShippingFailed):
        shipping.ship_events()
    client.force_login(make_staff(superuser=True))

    page = client.get("/admin/tracking/shippingstate/")
    detail = client.get(f"/admin/tracking/shippingstate/{shipping.STATE}/change/")
    retried = client.post(
        "/admin/tracking/shippingstate/",
        {"action": "ship_now", "_selected_action": [shipping.STATE]},
        follow=True,
    )

    assert page.status_code == 200
    # The list's own cells: the engine in use and the 12 events waiting (the page title names
    # ClickHouse whatever the engine, so the text alone would prove nothing).
    assert b'<td class="field-engine">ClickHouse</td>' in page.content
    assert b'<td class="field-backlog">12</td>' in page.content
    assert detail.status_code == 200 and b"127.0.0.1" in detail.content  # the reason
    assert [str(m) for m in retried.context["messages"]] == [
        "Shipping is queued: the page shows its outcome when it has run."
    ]


def test_the_admin_page_shows_the_last_finished_day_and_says_why_when_clickhouse_cannot_answer(
    clickhouse, settings, client, make_staff
):
    client.force_login(make_staff(superuser=True))
    url = f"/admin/tracking/shippingstate/{shipping.STATE}/change/"
    assert b"none yet: the next shipping run finishes them" in client.get(url).content

    EventFactory(timestamp=datetime(2026, 3, 2, 12, tzinfo=UTC))
    shipping.ship_events()
    assert b"through 2 Mar 2026 (written " in client.get(url).content

    settings.OPSLOOP_CLICKHOUSE_URL = f"http://127.0.0.1:{closed_port()}"
    page = client.get(url)
    assert page.status_code == 200 and b"unknown: " in page.content and b"127.0.0.1" in page.content
