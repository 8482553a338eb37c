"""Events stored before ClickHouse was switched on (or by a process still on the old setting)
reach it through the history backfill, each once; until it has run ClickHouse answers nothing
(a 503 that says how many events wait), and retention deletes only what ClickHouse holds, what
the rollups and profiles have folded, and never the kept names."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.factories.tracking import EventFactory, payloads
from tracking import checks, services, shipping
from tracking.events_store import clickhouse as clickhouse_module
from tracking.events_store import clickhouse_store, events_store
from tracking.events_store.clickhouse import TABLE, HistoryLoading
from tracking.models import Event, ShippingBacklog, ShippingState

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 5, 1, tzinfo=UTC)


@pytest.fixture
def clickhouse(settings, chdb_url):
    settings.OPSLOOP_CLICKHOUSE_URL = chdb_url
    store = clickhouse_store()
    store.truncate()
    return store


def switch_on(settings) -> None:
    settings.OPSLOOP_EVENTS_STORE = "clickhouse"


def shipped_ids(store) -> list[int]:
    """Every row in ClickHouse, duplicates included (no FINAL)."""
    return sorted(int(row[0]) for row in store.client.rows(f"SELECT id FROM {TABLE}"))


def stored_ids() -> list[int]:
    return sorted(Event.objects.values_list("id", flat=True))


def fold() -> None:
    """The rollups and the profiles' first/last seen take in what was stored (their backlogs)."""
    from indicators import rollups
    from profiles.services import update_seen_times

    rollups.fold_new_events()
    update_seen_times()


def stored_unqueued(**fields) -> Event:
    """An event stored as a web process on the old setting stores it: in no outbox."""
    return Event.objects.create(**{"name": "app_open", "kind": "track", "user_id": "old", "timestamp": NOW, **fields})


def test_events_stored_before_the_switch_reach_clickhouse_once_and_it_refuses_until_then(
    clickhouse, settings, api_client
):
    services.ingest_events(events=payloads(25))  # ClickHouse off: queued nowhere
    switch_on(settings)
    services.ingest_events(events=payloads(5))  # on: queued
    shipping.ship_events()
    assert len(shipped_ids(clickhouse)) == 5

    # Not looked at yet: the 25 and the 5 (the backfill will find those in ClickHouse).
    with pytest.raises(HistoryLoading, match="ClickHouse is still loading history: 30 events wait"):
        events_store()
    reply = api_client.get("/api/v1/indicators/dau?start=2026-03-01&end=2026-03-02")
    assert reply.status_code == 503
    assert reply.json()["reason"] == "EVENTS_STORE_LOADING" and "30 events wait" in reply.json()["detail"]

    call_command("ship_history", "--chunk", "1000", "--no-progress")

    assert shipped_ids(clickhouse) == stored_ids()  # every event, none twice (no FINAL needed)
    state = ShippingState.objects.get(name=shipping.STATE)
    assert state.history_loaded_at is not None and state.history_through == max(stored_ids())
    assert events_store() is clickhouse
    assert api_client.get("/api/v1/indicators/dau?start=2026-03-01&end=2026-03-02").status_code == 200
    assert shipping.ship_history().queued == 0  # again: nothing is missing


def test_the_backfill_skips_what_waits_in_the_outbox_and_from_start_finds_holes_below_the_mark(clickhouse, settings):
    switch_on(settings)
    drawn = stored_unqueued()  # an id drawn by a process on the old setting ...
    drawn_id = drawn.id
    drawn.delete()
    waiting = services.ingest_events(events=payloads(4)).stored  # queued, not shipped yet
    shipping.ship_history(chunk=1000)
    hole = stored_unqueued(id=drawn_id)  # ... that commits late, below the mark
    assert shipping.ship_history(chunk=1000).queued == 0  # resumes after its mark: sees nothing new
    assert shipping.pending_events() == len(waiting)

    assert shipping.ship_history(chunk=1000, from_start=True).queued == 1
    shipping.ship_events()
    assert shipped_ids(clickhouse) == stored_ids() and hole.id in stored_ids()


def test_the_backfill_pages_through_stored_ids_however_far_apart_they_lie(clickhouse, settings):
    # Ids are reserved a block per batch, so small batches leave wide gaps: the backfill's steps
    # follow the stored events, not the id ranges between them.
    switch_on(settings)
    far = [stored_unqueued(id=n).id for n in (7, 10**12, 10**12 + 5, 4 * 10**14)]
    with CaptureQueriesContext(connection) as queries:
        result = shipping.ship_history(chunk=1000)
    assert result.queued == len(far) and result.through == max(stored_ids())
    assert len([q for q in queries.captured_queries if "FROM tracking_event WHERE id >" in q["sql"]]) == 1
    shipping.ship_events()
    assert shipped_ids(clickhouse) == stored_ids()


def test_a_backfill_in_small_pages_queues_each_missing_event_once(clickhouse, settings):
    switch_on(settings)
    events = [stored_unqueued(id=10 * n + 3) for n in range(2500)]
    assert shipping.ship_history(chunk=1000).queued == len(events)
    assert ShippingState.objects.get(name=shipping.STATE).history_through == max(e.id for e in events)
    shipping.ship_events()
    assert shipped_ids(clickhouse) == stored_ids()


def test_clickhouse_is_asked_about_the_ids_themselves_in_slices(clickhouse, settings, monkeypatch):
    switch_on(settings)
    shipped = [e.id for e in services.ingest_events(events=payloads(5)).stored]
    shipping.ship_events()
    monkeypatch.setattr(clickhouse_module, "IDS_PER_QUESTION", 2)  # several slices, one of them partial
    asked = [*shipped, max(shipped) + 1, 10**15]  # two ids ClickHouse does not hold
    assert clickhouse.ids_held(asked) == set(shipped)
    assert clickhouse.ids_held([]) == set()


def test_a_backfill_with_clickhouse_off_is_refused(settings):
    settings.OPSLOOP_EVENTS_STORE = "postgres"
    with pytest.raises(shipping.HistoryRefused):
        shipping.ship_history()


def test_retention_waits_for_clickhouse_and_its_history(clickhouse, settings):
    settings.OPSLOOP_EVENTS_RETENTION_DAYS = 30
    old = NOW - timedelta(days=40)
    EventFactory(user_id="old", timestamp=old, received_at=old)
    assert shipping.delete_expired_events(now=NOW) == 0  # ClickHouse off: the only copy
    switch_on(settings)
    assert shipping.delete_expired_events(now=NOW) == 0  # on, the history not loaded
    shipping.ship_history()
    shipping.ship_events()
    assert shipping.delete_expired_events(now=NOW) == 0  # not folded yet
    fold()
    assert shipping.delete_expired_events(now=NOW) == 1


def test_retention_deletes_only_what_clickhouse_holds_and_what_is_folded(clickhouse, settings):
    settings.OPSLOOP_EVENTS_RETENTION_DAYS = 30
    switch_on(settings)
    shipping.ship_history()
    old = NOW - timedelta(days=40)
    gone = [EventFactory(user_id=f"o{n}", timestamp=old, received_at=old) for n in range(4)]
    order = EventFactory(user_id="o", name="order_paid", timestamp=old, received_at=old, properties={"amount": "5"})
    shipping.ship_events()
    hole = stored_unqueued(timestamp=old, received_at=old)  # in no outbox and not in ClickHouse
    unfolded = EventFactory(user_id="u", timestamp=old, received_at=old)
    shipping.ship_events()
    fold()
    with connection.cursor() as cursor:  # shipped, but the rollups have not folded this one yet
        cursor.execute(
            "INSERT INTO tracking_rollupbacklog (first_event_id, last_event_id) VALUES (%s, %s)",
            [unfolded.id, unfolded.id],
        )
    assert clickhouse.ids_held([e.id for e in gone] + [unfolded.id]) == {e.id for e in gone} | {unfolded.id}

    deleted = shipping.delete_expired_events(now=NOW, batch_size=2)

    assert deleted == 4
    assert set(stored_ids()) == {order.id, hole.id, unfolded.id}
    assert ShippingState.objects.get(name=shipping.STATE).deleted_events == 4


def test_the_retention_check_refuses_a_window_the_postgresql_readers_need(settings):
    settings.OPSLOOP_SEGMENT_MAX_LOOKBACK_DAYS = 400
    settings.OPSLOOP_EVENTS_RETENTION_DAYS = 399
    errors = [m for m in checks.check_events_retention() if m.id == "tracking.E001"]
    assert len(errors) == 1 and "segment" in errors[0].msg

    settings.OPSLOOP_EVENTS_RETENTION_DAYS = 400
    assert not [m for m in checks.check_events_retention() if m.id == "tracking.E001"]

    settings.OPSLOOP_EVENTS_KEPT_NAMES = ("order_paid",)  # refunds would go: the predictions read them all
    errors = [m for m in checks.check_events_retention() if m.id == "tracking.E001"]
    assert len(errors) == 1 and "predictions" in errors[0].msg

    settings.OPSLOOP_SEGMENT_MAX_LOOKBACK_DAYS = 300
    settings.OPSLOOP_EVENTS_RETENTION_DAYS = 300  # and RFM's 365 days of orders
    errors = [m for m in checks.check_events_retention() if m.id == "tracking.E001"]
    assert sorted("RFM" in m.msg for m in errors) == [False, True]


def test_shipping_does_not_hold_chdb_open_while_it_exports(clickhouse, settings, monkeypatch):
    switch_on(settings)
    shipping.ship_history()
    services.ingest_events(events=payloads(6))
    reads: list[object] = []
    export = shipping._export

    def export_while_a_page_reads(runs):
        reader = threading.Thread(target=lambda: reads.append(clickhouse.event_count()))
        reader.start()
        reader.join(timeout=5)  # held across the run, the engine would keep this page waiting
        reads.append("joined" if not reader.is_alive() else "blocked")
        return export(runs)

    monkeypatch.setattr(shipping, "_export", export_while_a_page_reads)
    shipping.ship_events()
    assert reads == [0, "joined"]


def test_a_chdb_that_cannot_be_opened_fails_the_run_visibly_and_keeps_the_outbox(clickhouse, settings, tmp_path):
    switch_on(settings)
    shipping.ship_history()
    services.ingest_events(events=payloads(3))
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    settings.OPSLOOP_CLICKHOUSE_URL = f"chdb://{blocked}"

    with pytest.raises(shipping.ShippingFailed):
        shipping.ship_events()

    state = ShippingState.objects.get(name=shipping.STATE)
    assert state.failures == 1 and "not-a-directory" in state.last_error
    assert shipping.pending_events() == 3 and ShippingBacklog.objects.count() == 1


def test_a_dashboard_shows_why_clickhouse_cannot_answer(clickhouse, settings, client, make_staff):
    services.ingest_events(events=payloads(3))
    switch_on(settings)
    client.force_login(make_staff("Analyst"))

    page = client.get("/admin/indicators/dailyindicator/?indicator=revenue&start=2026-03-01&end=2026-03-10")

    assert page.status_code == 503
    assert b"ClickHouse is still loading history: 3 events wait" in page.content
