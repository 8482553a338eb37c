"""Fixtures of the tracking tests that read events on both engines."""

from __future__ import annotations

import pytest

from tracking import shipping
from tracking.events_store import _postgres, clickhouse_store


@pytest.fixture
def both_engines(settings, chdb_url):
    """PostgreSQL's rollups and an empty embedded ClickHouse that has its history (nothing was
    stored before shipping). No insert runs beside these tests' finishing runs, so what was
    inserted before one is forgotten at once and the reads take the finished rows (the grace has
    a test of its own)."""
    settings.OPSLOOP_EVENTS_STORE = "clickhouse"
    settings.OPSLOOP_CLICKHOUSE_URL = chdb_url
    settings.OPSLOOP_CLICKHOUSE_TOUCHED_GRACE_SECONDS = 0
    clickhouse = clickhouse_store()
    clickhouse.truncate()
    shipping.ship_history()
    return _postgres(), clickhouse
