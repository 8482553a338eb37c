"""Where the workers may post: outbound HTTP goes only to hosts whoever deploys has allowed, so a
URL typed in the admin (a channel gateway, an alert webhook) cannot make a worker reach an
address inside the network."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from django.conf import settings


def url_host(url: str) -> str:
    """The host of `url`, lower case; "" for no URL or no host."""
    return (urlsplit(url).hostname or "").lower() if url else ""


def host_allowed(url: str, *, deployment_urls: Iterable[str] = ()) -> bool:
    """Whether `url`'s host is on OPSLOOP_GATEWAY_ALLOWED_HOSTS or is the host of one of
    `deployment_urls` (URLs from settings, which only whoever deploys can change)."""
    host = url_host(url)
    allowed = {h.lower() for h in settings.OPSLOOP_GATEWAY_ALLOWED_HOSTS}
    allowed |= {url_host(u) for u in deployment_urls if u}
    return bool(host) and host in allowed
