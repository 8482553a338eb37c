"""Where the indicator pages read events from: `events_store()` is the engine the settings name
(`OPSLOOP_EVENTS_STORE`: `postgres`, the default, or `clickhouse` at `OPSLOOP_CLICKHOUSE_URL`)."""

from __future__ import annotations

from functools import cache

from django.conf import settings

from tracking.events_store.base import EventsStore

POSTGRES, CLICKHOUSE = "postgres", "clickhouse"


def clickhouse_enabled() -> bool:
    """Whether events are shipped to ClickHouse and the pages read them there."""
    return getattr(settings, "OPSLOOP_EVENTS_STORE", POSTGRES) == CLICKHOUSE


@cache
def _clickhouse(url: str):
    from tracking.events_store.clickhouse import ClickHouseEventsStore

    return ClickHouseEventsStore(url)


@cache
def _postgres():
    from tracking.events_store.postgres import PostgresEventsStore

    return PostgresEventsStore()


def clickhouse_store():
    """The ClickHouse engine of the settings (for shipping: also while the pages read PostgreSQL)."""
    return _clickhouse(settings.OPSLOOP_CLICKHOUSE_URL)


def events_store() -> EventsStore:
    """The engine the pages read; ClickHouse refuses (HistoryLoading: a 503 with how many events
    wait) until it holds the events stored before shipping was switched on."""
    if clickhouse_enabled():
        from tracking.shipping import ensure_history_loaded

        ensure_history_loaded()
        return clickhouse_store()
    return _postgres()
