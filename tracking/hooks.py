"""Listeners that apps above `tracking` attach to ingestion, since `tracking` may not import them.

`profiles` creates profiles for new user ids and queues the batch for the first/last seen of
the existing ones (applied by a background step); `campaigns` starts triggered sends. A
listener is called inside the ingestion transaction, once per stored batch, with only the
events that were actually stored (duplicates left out); it must work set-based over the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, NamedTuple


class StoredEvent(NamedTuple):
    """One stored event as the listeners see it (a named tuple: ingestion builds one per event,
    and a frozen dataclass costs twice as much to build)."""

    id: int
    event_id: str
    name: str
    kind: str
    timestamp: datetime
    user_id: str | None
    anonymous_id: str | None
    properties: dict[str, Any]


IngestListener = Callable[[Sequence[StoredEvent]], None]
_listeners: dict[str, IngestListener] = {}


def register_ingest_listener(name: str, listener: IngestListener) -> None:
    """Attach (or replace) a listener under a unique name, from the app's AppConfig.ready()."""
    _listeners[name] = listener


def notify_ingested(events: Sequence[StoredEvent]) -> None:
    if not events:
        return
    for _name, listener in sorted(_listeners.items()):
        listener(events)
