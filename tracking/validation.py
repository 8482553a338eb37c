"""The one validator of incoming events, shared by the API and the historical import.

It is hand-written rather than a DRF serializer because it runs for every event of every batch:
a serializer costs tens of microseconds per field, this costs a few per event, which is what lets
one worker keep up with tens of thousands of events a second. Every refusal names the field
(dotted for context keys, e.g. `context.ip`) and says why, in words an integrator can act on.
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from django.conf import settings

from tracking import jsonio
from tracking.models import ORDER_EVENTS, EventKind

MAX_BATCH = 10_000
MAX_PROPERTIES_BYTES = 32 * 1024
MAX_CONTEXT_EXTRA_BYTES = 8 * 1024
MAX_JSON_DEPTH = 32
MAX_ID_LENGTH = 128
MAX_URL_LENGTH = 4096

NAME_RE = re.compile(r"[a-z0-9_.:\-]{1,64}")
# A product sends a few dozen names; checked once each, not once per event (bounded, so that a
# flood of made-up names cannot grow it without end).
_KNOWN_GOOD_NAMES: set[str] = set()
_KNOWN_GOOD_NAMES_MAX = 10_000
KINDS = frozenset(EventKind.values)
_BEHAVIOR = EventKind.BEHAVIOR.value
# The contract's well-known events imply their kind when the product leaves it out.
KIND_OF_WELL_KNOWN = {
    "page_view": EventKind.TRAFFIC.value,
    "order_paid": EventKind.BUSINESS.value,
    "order_refunded": EventKind.BUSINESS.value,
}
# Context keys stored as columns, with the most characters each column keeps.
CONTEXT_COLUMNS = {
    "url": MAX_URL_LENGTH,
    "referrer": MAX_URL_LENGTH,
    "utm_source": 128,
    "utm_medium": 128,
    "utm_campaign": 128,
    "device": 64,
    "os": 64,
    "ip": 64,
    "locale": 32,
}
# A NUL is refused by PostgreSQL in text and JSONB alike; find an escaped one in dumped JSON
# (an even run of backslashes before it means the backslash itself was escaped).
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# What PostgreSQL text cannot hold: NUL, and lone surrogates (JSON "\ud800" decodes to one).
_UNSTORABLE_TEXT = re.compile("[\x00\ud800-\udfff]")
# ASCII digits only, as PostgreSQL's numeric reads them (Python's Decimal also takes "1_000", "1e3"
# and other scripts' digits); at most 15 before the point, as the database's own check allows.
_AMOUNT = re.compile(r"([0-9]{1,15})(?:\.([0-9]+))?")
# Fast paths for the common spellings; anything else goes through the standard library parsers,
# which are exact but cost several microseconds per call, a lot at tens of thousands a second.
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_PLAIN_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


@dataclass(slots=True)
class CleanEvent:
    """An event that passed validation, in the shape of the table's columns."""

    event_id: str  # canonical: lower-case hex with hyphens
    name: str
    kind: str
    timestamp: datetime
    user_id: str | None
    anonymous_id: str | None
    properties: dict[str, Any]
    properties_json: str
    context_extra_json: str
    url: str
    path: str
    referrer: str
    utm_source: str
    utm_medium: str
    utm_campaign: str
    device: str
    os: str
    ip: str | None
    locale: str


def max_future_skew() -> timedelta:
    return timedelta(seconds=int(getattr(settings, "OPSLOOP_EVENTS_MAX_FUTURE_SECONDS", 600)))


def _text_problem(value: str) -> str | None:
    # Most values are ASCII, where only a NUL can be wrong; `isascii` and `in` cost a fraction of
    # a regex search, which this runs several times per event.
    if value.isascii():
        return "must not contain NUL characters" if "\x00" in value else None
    bad = _UNSTORABLE_TEXT.search(value)
    if bad is None:
        return None
    if bad.group() == "\x00":
        return "must not contain NUL characters"
    return "is not valid Unicode (lone surrogate)"


def _dump_json(value: Any, *, limit: int) -> tuple[str | None, str | None]:
    """JSON text for a JSONB column, or the reason it cannot be stored."""
    try:
        dumped = jsonio.dumps(value)
    except (ValueError, TypeError, RecursionError):
        return None, "must be JSON without NaN or Infinity"
    try:
        size = len(dumped.encode("utf-8"))
    except UnicodeEncodeError:
        return None, "is not valid Unicode (lone surrogate)"
    if size > limit:
        return None, f"is {size} bytes as JSON; at most {limit} bytes are accepted"
    if "\\u0000" in dumped and _JSON_NUL.search(dumped):
        return None, "must not contain NUL characters"
    # Only deep documents can break PostgreSQL's recursion limit; counting brackets is a cheap
    # pre-check that spares the walk for ordinary, flat properties.
    if dumped.count("{") + dumped.count("[") > MAX_JSON_DEPTH and _depth(value) > MAX_JSON_DEPTH:
        return None, f"is nested deeper than {MAX_JSON_DEPTH} levels"
    return dumped, None


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_JSON_DEPTH:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest


def parse_timestamp(value: Any, *, now: datetime, latest: datetime | None = None) -> tuple[datetime | None, str | None]:
    if isinstance(value, datetime):
        parsed = value  # from a Python caller that parsed it already (the Segment mapping); JSON has none
    elif not isinstance(value, str):
        return None, "must be an ISO 8601 string with a time zone, e.g. 2026-05-01T12:00:00+08:00"
    else:
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            return None, "is not an ISO 8601 date-time, e.g. 2026-05-01T12:00:00+08:00"
    if parsed.tzinfo is UTC:
        pass  # already in UTC (`fromisoformat` gives this very object for Z and +00:00)
    elif parsed.tzinfo is None or parsed.utcoffset() is None:
        return None, "has no time zone; add an offset such as Z or +08:00"
    else:
        try:
            parsed = parsed.astimezone(UTC)
        except OverflowError:
            return None, "is out of range"
    if parsed > (latest or now + max_future_skew()):
        minutes = int(max_future_skew().total_seconds() // 60)
        return None, f"is more than {minutes} minutes in the future (clock skew?)"
    if parsed < _EPOCH:
        return None, "is before 1970"
    return parsed, None


def _person_id(event: dict, field: str, errors: dict[str, list[str]]) -> str | None:
    value = event.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        errors[field] = ["must be a string"]
        return None
    value = value.strip()
    if not value:
        return None
    if len(value) > MAX_ID_LENGTH:
        errors[field] = [f"is longer than {MAX_ID_LENGTH} characters"]
        return None
    if problem := _text_problem(value):
        errors[field] = [problem]
        return None
    return value


def _decimal_string(value: Any) -> str | None:
    """Why `value` is not a non-negative decimal string, or None when it is one."""
    if not isinstance(value, str):
        return 'must be a decimal string such as "20.00", not a number'
    if match := _AMOUNT.fullmatch(value):
        if match.group(2) is not None and len(match.group(2)) > 2:
            return "has more than two decimal places"
        return None
    try:
        amount = Decimal(value)
    except InvalidOperation:
        return "is not a decimal number"
    if not amount.is_finite() or amount < 0:
        return "must be a finite amount of at least 0"
    if re.fullmatch(r"[0-9]{16,}(\.[0-9]*)?", value):
        return "has more than 15 digits before the decimal point"
    return 'must be written with the digits 0-9 and at most one decimal point, such as "20.00"'


# Community events name the operator's contact account or group they happen in; without that
# id they cannot be kept, so they are refused like any invalid event (the rest are stored).
COMMUNITY_ID_PROPERTIES = {
    "community_contact_added": "account_id",
    "community_joined": "group_id",
    "community_left": "group_id",
    "community_message": "group_id",
}


def _check_community(name: str, properties: dict, errors: dict[str, list[str]]) -> None:
    key = COMMUNITY_ID_PROPERTIES[name]
    value = properties.get(key)
    if not isinstance(value, str) or not value.strip():
        errors[f"properties.{key}"] = [f"is required for {name}: the operator's {key[:-3]} id as a string"]
    elif len(value) > MAX_ID_LENGTH:
        errors[f"properties.{key}"] = [f"is longer than {MAX_ID_LENGTH} characters"]


def _check_well_known(name: str, properties: dict, errors: dict[str, list[str]]) -> None:
    """The properties that the layers above read from well-known events must be usable."""
    if name in ORDER_EVENTS:
        order_id = properties.get("order_id")
        if not isinstance(order_id, str | int) or isinstance(order_id, bool) or str(order_id) == "":
            errors["properties.order_id"] = [f"is required for {name}"]
        amount_expected = "amount" in properties or name == "order_paid"
        if amount_expected and (reason := _decimal_string(properties.get("amount"))):
            errors["properties.amount"] = [reason]
        coupon = properties.get("coupon_code")
        if coupon is not None and not isinstance(coupon, str):
            errors["properties.coupon_code"] = ["must be a string"]
    elif name == "search":
        if "query" in properties and not isinstance(properties["query"], str):
            errors["properties.query"] = ["must be a string"]
        results = properties.get("results")
        if results is not None and (not isinstance(results, int) or isinstance(results, bool) or results < 0):
            errors["properties.results"] = ["must be a whole number of at least 0"]
    elif name in COMMUNITY_ID_PROPERTIES:
        _check_community(name, properties, errors)


def _context(
    raw: Any, errors: dict[str, list[str]]
) -> tuple[dict[str, str], str, str | None]:  # columns, extra JSON, ip
    if raw is None:
        return {}, "{}", None
    if not isinstance(raw, dict):
        errors["context"] = ["must be an object"]
        return {}, "{}", None
    columns: dict[str, str] = {}
    extra: dict[str, Any] = {}
    for key, value in raw.items():
        limit = CONTEXT_COLUMNS.get(key)
        if limit is None:
            extra[key] = value  # kept, not lost: a later analysis may want it
            continue
        # The usual value first, in one condition: a short ASCII string without NUL (this runs
        # for several keys of every event, where each function call and branch adds up).
        if type(value) is str and len(value) <= limit and value.isascii() and "\x00" not in value:
            columns[key] = value.strip()
            continue
        if value is None:
            continue
        if not isinstance(value, str):
            errors[f"context.{key}"] = ["must be a string"]
            continue
        if len(value) > limit:
            errors[f"context.{key}"] = [f"is longer than {limit} characters"]
            continue
        if problem := _text_problem(value):
            errors[f"context.{key}"] = [problem]
            continue
        columns[key] = value.strip()
    ip = None
    if columns.get("ip"):
        ip = columns["ip"]
        if not _PLAIN_IPV4.fullmatch(ip):
            try:
                address = ipaddress.ip_address(ip)
            except ValueError:
                errors["context.ip"] = ["is not an IPv4 or IPv6 address"]
            else:
                if getattr(address, "scope_id", None):  # fe80::1%eth0: PostgreSQL's inet has no zones
                    errors["context.ip"] = ["must not carry a zone index (%...)"]
                ip = str(address)
    extra_json = "{}"
    if extra:
        dumped, problem = _dump_json(extra, limit=MAX_CONTEXT_EXTRA_BYTES)
        if problem:
            errors["context"] = [f"unknown keys {problem}"]
        else:
            extra_json = dumped  # type: ignore[assignment]
    return columns, extra_json, ip


def _path_of(url: str, errors: dict[str, list[str]]) -> str:
    for scheme in ("https://", "http://"):
        if url.startswith(scheme) and "[" not in url:
            rest = url[len(scheme) :]
            end = len(rest)
            for mark in ("?", "#"):
                found = rest.find(mark)
                if found != -1 and found < end:
                    end = found
            slash = rest.find("/", 0, end)
            return rest[slash:end] if slash != -1 else "/"
    try:
        parts = urlsplit(url)
    except ValueError:
        errors["context.url"] = ["is not a URL"]
        return ""
    return parts.path or ("/" if parts.netloc else "")


UTM_KEYS = ("utm_source", "utm_medium", "utm_campaign")


def _utm_from_url(url: str, context: dict[str, str]) -> None:
    """Campaign parameters of the landing URL fill the UTM columns the product left empty, as web
    analytics tools do: many SDKs send the URL and nothing else."""
    try:
        query = urlsplit(url).query
    except ValueError:
        return
    for key, value in parse_qsl(query):
        if key in UTM_KEYS and not context.get(key) and value and _text_problem(value) is None:
            context[key] = value[: CONTEXT_COLUMNS[key]].strip()


def validate_event(
    raw: Any, *, now: datetime, latest: datetime | None = None
) -> tuple[CleanEvent | None, dict[str, list[str]]]:
    """Check one event; return it cleaned, or None and the reasons per field. `latest` is the
    last acceptable timestamp (`now` plus the allowed clock skew), computed once per batch."""
    if not isinstance(raw, dict):
        return None, {"non_field_errors": ["an event must be a JSON object"]}
    errors: dict[str, list[str]] = {}

    event_id = None
    value = raw.get("event_id")
    if value is None or value == "":
        errors["event_id"] = ["is required"]
    elif not isinstance(value, str):
        errors["event_id"] = ["must be a UUID string"]
    else:
        if _CANONICAL_UUID.fullmatch(value):
            event_id = value
        else:
            try:
                event_id = str(uuid.UUID(value))
            except ValueError:
                errors["event_id"] = ["is not a UUID"]

    name = raw.get("name")
    if name is None or name == "":
        errors["name"] = ["is required"]
    elif isinstance(name, str) and name in _KNOWN_GOOD_NAMES:
        pass
    elif not isinstance(name, str) or not NAME_RE.fullmatch(name):
        errors["name"] = ["must be 1-64 characters of a-z 0-9 _ . : -"]
    elif len(_KNOWN_GOOD_NAMES) < _KNOWN_GOOD_NAMES_MAX:
        _KNOWN_GOOD_NAMES.add(name)

    kind = raw.get("kind")
    if kind is None or kind == "":
        kind = KIND_OF_WELL_KNOWN.get(name, _BEHAVIOR) if isinstance(name, str) else _BEHAVIOR
    elif not isinstance(kind, str) or kind not in KINDS:
        errors["kind"] = [f"is not one of {', '.join(sorted(KINDS))}"]

    timestamp = None
    if raw.get("timestamp") is None:
        errors["timestamp"] = ["is required"]
    else:
        timestamp, problem = parse_timestamp(raw["timestamp"], now=now, latest=latest)
        if problem:
            errors["timestamp"] = [problem]

    user_id = _person_id(raw, "user_id", errors)
    anonymous_id = _person_id(raw, "anonymous_id", errors)
    if user_id is None and anonymous_id is None and "user_id" not in errors and "anonymous_id" not in errors:
        errors["user_id"] = ["user_id or anonymous_id is required"]

    properties = raw.get("properties")
    properties_json = "{}"
    if properties is None:
        properties = {}
    elif not isinstance(properties, dict):
        errors["properties"] = ["must be an object"]
    elif properties:
        dumped, problem = _dump_json(properties, limit=MAX_PROPERTIES_BYTES)
        if problem:
            errors["properties"] = [problem]
        else:
            properties_json = dumped  # type: ignore[assignment]
    if "properties" not in errors and "name" not in errors:
        _check_well_known(name, properties, errors)  # type: ignore[arg-type]

    context, context_extra_json, ip = _context(raw.get("context"), errors)
    url = context.get("url", "")
    path = _path_of(url, errors) if url else ""
    if "utm_" in url and "context.url" not in errors:
        _utm_from_url(url, context)

    if errors:
        return None, errors
    # Positional: a dataclass built with keywords costs half as much again, once per event.
    get = context.get
    return CleanEvent(
        event_id,  # type: ignore[arg-type]
        name,  # type: ignore[arg-type]
        kind,  # type: ignore[arg-type]
        timestamp,  # type: ignore[arg-type]
        user_id,
        anonymous_id,
        properties,
        properties_json,
        context_extra_json,
        url,
        path,
        get("referrer", ""),
        get("utm_source", ""),
        get("utm_medium", ""),
        get("utm_campaign", ""),
        get("device", ""),
        get("os", ""),
        ip,
        get("locale", ""),
    ), {}
