"""The API keys a process has recently checked, so a hot key costs no query per request.

A request's key is found by the SHA-256 digest of what it sent. An entry lives
`OPSLOOP_API_KEY_CACHE_SECONDS` (5 by default; 0 turns the cache off): a key revoked in this
process is forgotten at once, one revoked elsewhere (another worker, the admin of another
server) stops working here within that many seconds. Only keys that exist are kept, so an
unknown or forged key is looked up each time and never fills the cache.
"""

from __future__ import annotations

import threading
import time

from django.conf import settings

from access.models import ApiKey

MAX_ENTRIES = 10_000

_entries: dict[str, tuple[float, ApiKey]] = {}
_lock = threading.Lock()


def ttl_seconds() -> float:
    return float(getattr(settings, "OPSLOOP_API_KEY_CACHE_SECONDS", 5))


def cached(digest: str) -> ApiKey | None:
    """The key with this digest if it was read from the database less than the TTL ago."""
    entry = _entries.get(digest)
    if entry is None:
        return None
    if entry[0] <= time.monotonic():
        _entries.pop(digest, None)
        return None
    return entry[1]


def remember(digest: str, api_key: ApiKey) -> None:
    ttl = ttl_seconds()
    if ttl <= 0:
        return
    with _lock:
        if len(_entries) >= MAX_ENTRIES:
            _entries.clear()  # many distinct live keys: start over rather than grow without bound
        _entries[digest] = (time.monotonic() + ttl, api_key)


def forget(digest: str) -> None:
    _entries.pop(digest, None)


def clear() -> None:
    _entries.clear()
