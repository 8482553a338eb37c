"""Per-caller request limits of the API, counted in Redis (the default cache) so that every web
process shares them: each API key, and each staff member calling with a session, may make so many
requests a minute; beyond that the API answers 429 with `Retry-After` (DRF's `Throttled`).

A fixed one-minute window is one `INCR` per request; DRF's `SimpleRateThrottle` instead stores
the time of every request in the window, which at ingestion rates would be a list of thousands
read and written on every call."""

from __future__ import annotations

import logging
import time

from django.conf import settings
from django.core.cache import cache
from rest_framework.throttling import BaseThrottle

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60


def client_ip(request) -> str | None:
    """The client's address for the admin login's lockout (django-axes): the header named by
    OPSLOOP_CLIENT_IP_HEADER when a trusted proxy sets it, else the connection's address."""
    header = settings.OPSLOOP_CLIENT_IP_HEADER
    if header:
        value = request.headers.get(header, "").split(",")[0].strip()
        if value:
            return value
    return request.META.get("REMOTE_ADDR")


def per_minute(rate: str) -> int:
    """`"6000/m"` or `"100/s"` -> requests a minute."""
    count, _, period = rate.partition("/")
    seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400}[(period or "m")[0]]
    return max(1, round(int(count) * WINDOW_SECONDS / seconds))


class PerCallerRateThrottle(BaseThrottle):
    """Counts the requests of the caller (its key, else its staff user) in the current minute.
    A view sets `rate_scope = "ingest"` for the high-volume endpoints the product calls in bulk
    (events, identify, delivery receipts), which have a limit of their own."""

    def __init__(self) -> None:
        self.retry_after: float | None = None

    @staticmethod
    def caller(request) -> str | None:
        user = getattr(request, "user", None)
        api_key = getattr(user, "api_key", None)
        if api_key is not None:
            return f"key:{api_key.pk}"
        if user is not None and user.is_authenticated:
            return f"user:{user.pk}"
        return None  # refused by authentication anyway

    @staticmethod
    def limit(view) -> int:
        if getattr(view, "rate_scope", None) == "ingest":
            return per_minute(settings.OPSLOOP_API_INGEST_RATE)
        return per_minute(settings.OPSLOOP_API_RATE)

    def allow_request(self, request, view) -> bool:
        caller = self.caller(request)
        if caller is None:
            return True
        now = time.time()
        window = int(now // WINDOW_SECONDS)
        scope = getattr(view, "rate_scope", None) or "api"
        key = f"throttle:{scope}:{caller}:{window}"
        try:
            cache.add(key, 0, timeout=WINDOW_SECONDS * 2)
            count = cache.incr(key)
        except Exception:
            # Redis down: the request goes on unthrottled rather than failing with a 500.
            logger.warning("Rate limit not checked: the cache is unreachable.", exc_info=True)
            return True
        if count <= self.limit(view):
            return True
        self.retry_after = WINDOW_SECONDS - (now % WINDOW_SECONDS)
        return False

    def wait(self) -> float | None:
        return self.retry_after
