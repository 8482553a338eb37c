"""The Segment HTTP Tracking API under `/ingest/segment/`, so that Segment's and RudderStack's
libraries send to opsloop when their host is switched (docs/segment.md).

Plain Django views rather than DRF ones: the protocol is Segment's, not ours. Its clients send
`text/plain` bodies (analytics.js, to spare the browser a CORS preflight), authenticate with
HTTP Basic (the write key as user name) or a `writeKey` in the body, and read `{"code",
"message"}` from a refusal; DRF's negotiation and error bodies would get in the way of each.
"""

from __future__ import annotations

import base64
import binascii
import re
import zlib
from pathlib import Path
from typing import Any

from django.conf import settings
from django.http import FileResponse, HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from rest_framework.exceptions import AuthenticationFailed

from access.authentication import api_key_for
from access.models import ApiKey, Scope
from access.services import touch_api_key
from profiles.segment import MAX_MESSAGE_BYTES, TYPES, ingest_segment_messages, max_batch_bytes, parse_time
from tracking import jsonio

# Every endpoint answers any origin: a product's pages post from their own, the write key is the
# credential (never a cookie), and the endpoints only take events in.
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, Content-Encoding, X-Retry-Count",
    "Access-Control-Max-Age": "86400",
}
# analytics.js posts single calls to `/v1/t`, `/v1/p`, ... and batches to `/v1/b`.
SHORT_TYPES = {t[0]: t for t in TYPES}
BUNDLE_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,120}\.js")


class Refusal(Exception):
    """A request refused as a whole, answered as Segment answers: `{"success": false, "code",
    "message"}` (its Python library reads `code` and `message`)."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def _answer(status: int, body: dict[str, Any], **headers: str) -> JsonResponse:
    response = JsonResponse(body, status=status)
    for name, value in {**CORS, **headers}.items():
        response[name] = value
    return response


def _refused(exc: Refusal) -> JsonResponse:
    headers = {"WWW-Authenticate": 'Basic realm="opsloop"'} if exc.status == 401 else {}
    body = {"success": False, "code": exc.code, "message": exc.message, **exc.extra}
    return _answer(exc.status, body, **headers)


def read_body(request: HttpRequest) -> tuple[Any, int]:
    """The JSON body, gzipped or not, within the batch limit of the spec (500 KB), and its size
    in bytes once decompressed."""
    limit = max_batch_bytes()
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    too_large = f"The body is over {limit} bytes; send at most {limit} bytes per request."
    if declared > limit:
        raise Refusal(400, "payload_too_large", too_large)
    raw = request.read(limit + 1)
    if len(raw) > limit:
        raise Refusal(400, "payload_too_large", too_large)
    encoding = request.META.get("HTTP_CONTENT_ENCODING", "").strip().lower()
    if encoding == "gzip":
        # Bounded, so that a small "zip bomb" cannot expand into gigabytes in memory.
        inflater = zlib.decompressobj(wbits=31)
        try:
            raw = inflater.decompress(raw, limit + 1)
        except zlib.error as exc:
            raise Refusal(400, "invalid_gzip", f"The body is not valid gzip: {exc}") from exc
        if len(raw) > limit or inflater.unconsumed_tail:
            raise Refusal(400, "payload_too_large", f"The body is over {limit} bytes once decompressed.")
    elif encoding not in ("", "identity"):
        raise Refusal(400, "unsupported_encoding", f"Content-Encoding {encoding[:20]!r} is not supported; use gzip.")
    if not raw:
        raise Refusal(400, "invalid_json", "The body is empty; send a JSON object.")
    try:
        return jsonio.loads(raw), len(raw)
    except (ValueError, RecursionError) as exc:
        raise Refusal(400, "invalid_json", f"The body is not valid JSON: {str(exc)[:200]}") from exc


def _basic_user(header: str) -> str:
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "basic":
        raise Refusal(401, "unauthorized", "Use HTTP Basic authentication with the write key as the user name.")
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise Refusal(401, "unauthorized", "The Basic credentials are not valid base64.") from exc
    return decoded.partition(":")[0]


def authenticate(request: HttpRequest, body: Any = None) -> ApiKey:
    """The API key the write key names: HTTP Basic (user name) first, else the body's
    `writeKey`; it must hold `events:write`. Found as `Api-Key` headers are (by digest)."""
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if header:
        write_key = _basic_user(header)
    elif isinstance(body, dict) and isinstance(body.get("writeKey"), str):
        write_key = body["writeKey"]
    else:
        raise Refusal(401, "unauthorized", "No write key: send it as the Basic user name (or `writeKey`).")
    try:
        api_key = api_key_for(write_key.strip())
    except AuthenticationFailed as exc:
        raise Refusal(401, "unauthorized", str(exc.detail)) from exc
    if Scope.EVENTS_WRITE not in api_key.scopes:
        raise Refusal(403, "forbidden", "This key lacks the events:write scope that a write key needs.")
    touch_api_key(api_key=api_key)
    return api_key


def _authenticate_and_read(request: HttpRequest) -> tuple[ApiKey, Any, int]:
    if request.META.get("HTTP_AUTHORIZATION"):
        api_key = authenticate(request)  # before reading: an unknown caller costs no parsing
        return api_key, *read_body(request)
    body, size = read_body(request)
    return authenticate(request, body), body, size


def _batch_sent_at(body: dict[str, Any]) -> Any:
    if body.get("sentAt") is None:
        return None
    sent_at, problem = parse_time(body["sentAt"])
    if problem:
        raise Refusal(400, "invalid_request", f"sentAt {problem}.")
    return sent_at


def _with_batch_context(messages: list[Any], context: Any) -> list[Any]:
    """A batch's own `context` applies to each message, under the message's own keys."""
    if not isinstance(context, dict) or not context:
        return messages
    merged = []
    for message in messages:
        if isinstance(message, dict) and isinstance(message.get("context", {}), dict):
            message = {**message, "context": {**context, **(message.get("context") or {})}}
        merged.append(message)
    return merged


def _preflight() -> HttpResponse:
    response = HttpResponse(status=204)
    for name, value in CORS.items():
        response[name] = value
    return response


@csrf_exempt
def batch(request: HttpRequest) -> HttpResponse:
    """`POST v1/batch` (also `v1/import` and analytics.js's `v1/b`): `{"batch": [messages],
    "sentAt", "context"}`. 200 `{"success": true, "accepted", "duplicates", "rejected"}`: each
    refused message with its index, type, messageId and reasons; the others are stored."""
    if request.method == "OPTIONS":
        return _preflight()
    if request.method != "POST":
        return _answer(405, {"success": False, "code": "method_not_allowed", "message": "Use POST."})
    try:
        api_key, body, size = _authenticate_and_read(request)
        if not isinstance(body, dict):
            raise Refusal(400, "invalid_request", 'The body must be a JSON object such as {"batch": [...]}.')
        messages = body.get("batch")
        if not isinstance(messages, list) or not messages:
            raise Refusal(400, "invalid_request", "`batch` must be a list of at least one message.")
        result = ingest_segment_messages(
            messages=_with_batch_context(messages, body.get("context")),
            received_at=timezone.now(),
            batch_sent_at=_batch_sent_at(body),
            api_key=api_key,
            check_sizes=size > MAX_MESSAGE_BYTES,  # a body within the limit holds no message over it
        )
    except Refusal as exc:
        return _refused(exc)
    return _answer(
        200,
        {
            "success": True,
            "accepted": result.accepted,
            "duplicates": result.duplicates,
            "profiles": result.profiles,
            "rejected": [r.as_dict() for r in result.refused],
        },
    )


@csrf_exempt
def single(request: HttpRequest, kind: str) -> HttpResponse:
    """`POST v1/track` and the other calls, one message each: 200 `{"success": true}`, or 400
    with the reasons when it cannot be stored."""
    if request.method == "OPTIONS":
        return _preflight()
    if request.method != "POST":
        return _answer(405, {"success": False, "code": "method_not_allowed", "message": "Use POST."})
    kind = SHORT_TYPES.get(kind, kind)
    try:
        api_key, body, size = _authenticate_and_read(request)
        if not isinstance(body, dict):
            raise Refusal(400, "invalid_request", f"The body must be one {kind} message as a JSON object.")
        if size > MAX_MESSAGE_BYTES:
            raise Refusal(400, "payload_too_large", f"A message may take at most {MAX_MESSAGE_BYTES} bytes as JSON.")
        result = ingest_segment_messages(
            messages=[body], received_at=timezone.now(), kind=kind, api_key=api_key, check_sizes=False
        )
        if result.refused:
            refusal = result.refused[0]
            reasons = "; ".join(f"{name} {' '.join(why)}" for name, why in refusal.errors.items())
            raise Refusal(400, "invalid_request", f"The {kind} message was refused: {reasons}", errors=refusal.errors)
    except Refusal as exc:
        return _refused(exc)
    return _answer(200, {"success": True})


def project_settings(request: HttpRequest, write_key: str) -> HttpResponse:
    """`GET v1/projects/<writeKey>/settings`: what analytics.js asks its CDN before it starts,
    answered so that it sends to this server (`Segment.io`'s apiHost) and loads nothing else."""
    if request.method == "OPTIONS":
        return _preflight()
    try:
        api_key = api_key_for(write_key)
    except AuthenticationFailed as exc:
        return _refused(Refusal(401, "unauthorized", str(exc.detail)))
    if Scope.EVENTS_WRITE not in api_key.scopes:
        return _refused(Refusal(403, "forbidden", "This key lacks the events:write scope that a write key needs."))
    host = getattr(settings, "OPSLOOP_SEGMENT_API_HOST", "") or f"{request.get_host()}/ingest/segment/v1"
    return _answer(
        200,
        {
            "integrations": {
                "Segment.io": {"apiKey": write_key, "apiHost": host, "protocol": request.scheme, "retryQueue": True}
            },
            "plan": {"track": {"__default": {"enabled": True}}, "identify": {"__default": {"enabled": True}}},
            "edgeFunction": {},
            "analyticsNextEnabled": True,
            "middlewareSettings": {},
            "enabledMiddleware": {},
            "metrics": {"sampleRate": 0},
        },
        **{"Cache-Control": "max-age=60"},
    )


def bundle_directory() -> Path:
    return Path(settings.OPSLOOP_ANALYTICS_NEXT_DIR)


def analytics_bundle(request: HttpRequest, name: str) -> HttpResponse:
    """`GET analytics-next/bundles/<file>.js`: analytics.js (`@segment/analytics-next`'s
    standalone bundle and the chunks it loads), served from the package the setup installed
    (`scripts/ensure-segment-sdks.sh`), so pages load it from opsloop and never from a CDN."""
    if not BUNDLE_NAME.fullmatch(name):
        return _answer(404, {"success": False, "code": "not_found", "message": "No such bundle."})
    directory = bundle_directory()
    path = directory / name
    if not path.is_file():
        message = "No such bundle." if directory.is_dir() else "analytics.js is not installed on this server."
        return _answer(404, {"success": False, "code": "not_found", "message": message})
    response = FileResponse(path.open("rb"), content_type="application/javascript")
    response["Access-Control-Allow-Origin"] = "*"
    response["Cache-Control"] = "max-age=3600"
    return response
