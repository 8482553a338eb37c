"""Channel adapters: push / SMS / generic webhook as an HTTP POST of the contract's JSON, e-mail
through Django's e-mail backend; a Redis token bucket per channel; signed tracking links.

An adapter answers with an `Outcome`: sent, retry (429, 5xx, timeouts, connection errors) or
failed for good (other 4xx), with the reason kept on the delivery.
"""

from __future__ import annotations

import smtplib
import time
from dataclasses import dataclass
from typing import Any

import redis
import requests
import urllib3
from django.conf import settings
from django.core import signing
from django.core.mail import EmailMultiAlternatives, get_connection
from django.utils.html import escape

from campaigns.models import Channel, ChannelKind, gateway_host_allowed
from config.outbound import url_host

SENT, RETRY, FAILED = "sent", "retry", "failed"
_CLICK_SALT = "campaigns.click"
_OPEN_SALT = "campaigns.open"


@dataclass(frozen=True)
class Outcome:
    kind: str
    reason: str = ""
    # A retry whose post may have reached the provider all the same (no answer after the request
    # went out): an at-most-once channel must not post it again.
    ambiguous: bool = False


def channel_config(kind: str) -> Channel:
    """The channel's configuration row; an unsaved one with the settings' defaults if none."""
    return Channel.objects.filter(kind=kind).first() or Channel(kind=kind)


# --- tracking links ----------------------------------------------------------------------------


def _signer(salt: str) -> signing.Signer:
    return signing.Signer(key=getattr(settings, "OPSLOOP_LINK_SIGNING_KEY", settings.SECRET_KEY), salt=salt)


def click_token(delivery_id: int) -> str:
    return _signer(_CLICK_SALT).sign(str(delivery_id))


def open_token(delivery_id: int) -> str:
    return _signer(_OPEN_SALT).sign(str(delivery_id))


def unsign_click(token: str) -> int | None:
    return _unsign(_CLICK_SALT, token)


def unsign_open(token: str) -> int | None:
    return _unsign(_OPEN_SALT, token)


def _unsign(salt: str, token: str) -> int | None:
    try:
        return int(_signer(salt).unsign(token))
    except (signing.BadSignature, ValueError):
        return None


def public_url(path: str) -> str:
    return getattr(settings, "OPSLOOP_PUBLIC_URL", "").rstrip("/") + path


def click_url(delivery_id: int) -> str:
    return public_url(f"/api/v1/t/c/{click_token(delivery_id)}")


def open_pixel_url(delivery_id: int) -> str:
    return public_url(f"/api/v1/t/o/{open_token(delivery_id)}.gif")


# --- rate limit --------------------------------------------------------------------------------

# Token bucket in one atomic script: refill by elapsed time, take one token or say how long to wait.
_BUCKET = """
local rate = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or rate
local ts = tonumber(state[2]) or now
tokens = math.min(rate, tokens + (now - ts) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', now)
redis.call('EXPIRE', KEYS[1], 60)
return tostring(wait)
"""
_redis_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _redis_client
    if _redis_client is None:
        _redis_client = redis.Redis.from_url(settings.REDIS_URL)
    return _redis_client


def acquire_send_slot(kind: str, rate_per_second: int, *, max_wait: float = 30.0) -> bool:
    """Block until the channel's bucket grants one send (shared by every worker through Redis)."""
    if rate_per_second <= 0:
        return True
    deadline = time.monotonic() + max_wait
    script = _redis().register_script(_BUCKET)
    while True:
        wait = float(script(keys=[f"opsloop:ratelimit:{kind}"], args=[rate_per_second, time.time()]))
        if wait <= 0:
            return True
        if time.monotonic() + wait > deadline:
            return False
        time.sleep(wait)


# --- adapters ----------------------------------------------------------------------------------


def http_post(session: requests.Session, channel: Channel, payload: dict[str, Any]) -> Outcome:
    url = channel.effective_url()
    if not url:
        return Outcome(FAILED, f"CHANNEL_NOT_CONFIGURED: no URL for {channel.kind}")
    headers = {"Idempotency-Key": payload["idempotency_key"]}
    if token := channel.effective_token():
        if not gateway_host_allowed(url):
            # Neither the token nor the recipient's data go to a host nobody who deploys approved;
            # the message waits (and is retried within its window) until the URL or the list is fixed.
            return Outcome(RETRY, f"GATEWAY_HOST_NOT_ALLOWED: {url_host(url)} is not in OPSLOOP_GATEWAY_ALLOWED_HOSTS")
        headers["Authorization"] = f"Bearer {token}"
    try:
        response = session.post(url, json=payload, headers=headers, timeout=channel.timeout_seconds)
    except requests.ConnectTimeout:
        return Outcome(RETRY, "connect timeout")
    except requests.Timeout:
        return Outcome(RETRY, "timeout", ambiguous=True)
    except requests.ConnectionError as exc:
        cause = getattr(exc.args[0], "reason", None) if exc.args else None
        # Refused or unreachable before the request went out: surely not received.
        before = isinstance(cause, urllib3.exceptions.ConnectTimeoutError)
        return Outcome(RETRY, f"connection error: {exc.__class__.__name__}", ambiguous=not before)
    except requests.RequestException as exc:
        return Outcome(RETRY, f"connection error: {exc.__class__.__name__}")
    code = response.status_code
    if 200 <= code < 300:
        return Outcome(SENT)
    reason = f"HTTP {code}: {response.text[:300]}"
    if code == 429 or code >= 500:
        return Outcome(RETRY, reason)
    return Outcome(FAILED, reason)


def send_email(connection: Any, *, to: str, payload: dict[str, Any], delivery_id: int) -> Outcome:
    if not to:
        return Outcome(FAILED, "NO_RECIPIENT: profile has no e-mail address")
    text = payload["body"] + (f"\n\n{payload['url']}" if payload.get("url") else "")
    link = f'<p><a href="{escape(payload["url"])}">{escape(payload["url"])}</a></p>' if payload.get("url") else ""
    pixel = f'<img src="{escape(open_pixel_url(delivery_id))}" width="1" height="1" alt="">'
    # A material's HTML was rendered with autoescape; a plain body is escaped here.
    html = (payload["html"] + pixel) if payload.get("html") else f"<p>{escape(payload['body'])}</p>{link}{pixel}"
    message = EmailMultiAlternatives(
        subject=payload["title"],
        body=text,
        to=[to],
        connection=connection,
        headers={"X-Idempotency-Key": payload["idempotency_key"]},
    )
    message.attach_alternative(html, "text/html")
    try:
        message.send()
    except smtplib.SMTPRecipientsRefused as exc:
        # A 4xx refusal (greylisting, a full mailbox) is temporary; only 5xx is for good.
        temporary = all(400 <= code < 500 for code, _msg in exc.recipients.values())
        return Outcome(RETRY if temporary else FAILED, f"recipient refused: {exc.recipients}"[:300])
    except smtplib.SMTPResponseException as exc:
        kind = RETRY if exc.smtp_code >= 400 and exc.smtp_code < 500 else FAILED
        return Outcome(kind, f"SMTP {exc.smtp_code}: {exc.smtp_error!r}"[:300])
    except (smtplib.SMTPException, OSError) as exc:
        return Outcome(RETRY, f"SMTP error: {exc.__class__.__name__}")
    return Outcome(SENT)


def email_connection() -> Any:
    return get_connection(fail_silently=False)


def is_http(kind: str) -> bool:
    return kind in (ChannelKind.PUSH, ChannelKind.SMS, ChannelKind.WEBHOOK)
