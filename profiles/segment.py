"""The Segment tracking spec: the messages of Segment's and RudderStack's libraries, mapped onto
our events (track, page, screen), `identify` (identify, group) and profile merges (alias).

It lives in `profiles` because that is the lowest layer that sees both ingestion (`tracking`)
and identities; events go through `tracking.services.ingest_events`, so every rule of our own
API applies to them unchanged. Spec: https://segment.com/docs/connections/spec/ and the HTTP
Tracking API (https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
from django.conf import settings
from django.db import connection, transaction

from profiles import services
from profiles.models import IdentityKind, Profile, SegmentRejection
from profiles.normalize import normalize_identity, parse_traits
from tracking.models import ORDER_EVENTS
from tracking.services import ingest_events
from tracking.validation import MAX_ID_LENGTH

logger = logging.getLogger(__name__)

# `event_id = uuid5(NAMESPACE, messageId)`: a message sent again (a library's retry, a replayed
# batch) maps to the same event id, which ingestion stores once. Never change it: ids already
# stored would stop matching their retries.
NAMESPACE = uuid.UUID("4d1c2b7e-8a3f-5e90-b6d4-1f0e9c8a7b65")
# The HTTP Tracking API's documented limits.
DEFAULT_MAX_BATCH_BYTES = 500 * 1024
MAX_MESSAGE_BYTES = 32 * 1024
MAX_MESSAGE_ID_LENGTH = 256
EVENT_TYPES = ("track", "page", "screen")
PROFILE_TYPES = ("identify", "alias", "group")
TYPES = EVENT_TYPES + PROFILE_TYPES
# Segment's e-commerce spec names whose events the layers above read under our own names.
WELL_KNOWN_EVENTS = {
    "Order Completed": "order_paid",
    "Order Refunded": "order_refunded",
    "Products Searched": "search",
}
# Where an order's amount comes from when the properties carry no `amount` of their own.
AMOUNT_SOURCES = ("total", "revenue")
# Segment's reserved traits that are known traits of ours under another name or shape.
TRAIT_NAMES = {"createdAt": "signup_at", "birthday": "birth_date"}
# Our validator names our fields; a Segment integrator reads the reason in theirs.
FIELD_NAMES = {
    "event_id": "messageId",
    "name": "event",
    "user_id": "userId",
    "anonymous_id": "anonymousId",
    "context.url": "context.page.url",
    "context.referrer": "context.page.referrer",
    "context.utm_source": "context.campaign.source",
    "context.utm_medium": "context.campaign.medium",
    "context.utm_campaign": "context.campaign.name",
}
REJECTIONS_KEPT_PER_KEY = 100

_NOT_NAME = re.compile(r"[^a-z0-9_.:\-]+")
# A product sends a few dozen names: each is turned into ours once (bounded, like the validator's).
_NAMES: dict[str, str] = {}
_NAMES_MAX = 10_000


def max_batch_bytes() -> int:
    return int(getattr(settings, "OPSLOOP_SEGMENT_MAX_BATCH_BYTES", DEFAULT_MAX_BATCH_BYTES))


@dataclass(frozen=True)
class Refusal:
    index: int
    type: str
    message_id: str
    errors: dict[str, list[str]]

    def __post_init__(self) -> None:
        # What a client sent comes back in the answer and is kept for the admin: text that
        # PostgreSQL cannot store (a lone surrogate, NUL) is kept escaped instead.
        object.__setattr__(self, "type", _storable(self.type))
        object.__setattr__(self, "message_id", _storable(self.message_id))
        errors = {_storable(k): [_storable(r) for r in reasons] for k, reasons in self.errors.items()}
        object.__setattr__(self, "errors", errors)

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "type": self.type, "messageId": self.message_id, "errors": self.errors}


@dataclass
class SegmentResult:
    accepted: int = 0  # events stored
    duplicates: int = 0  # events whose messageId was stored before
    profiles: int = 0  # identify, alias and group calls applied
    merged: int = 0  # profiles merged by them
    refused: list[Refusal] = field(default_factory=list)


def event_name(event: str) -> str:
    """Our name for a Segment event name: the e-commerce spec's orders and searches become our
    well-known events, others are lower-cased with runs of other characters as one `_`
    ("Product Viewed" -> `product_viewed`). A name of other scripts only comes out empty, and
    the validator refuses it."""
    name = _NAMES.get(event)
    if name is None:
        name = WELL_KNOWN_EVENTS.get(event) or _NOT_NAME.sub("_", event.strip().lower()).strip("_")
        if len(_NAMES) < _NAMES_MAX:
            _NAMES[event] = name
    return name


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _storable(text: str) -> str:
    if text.isascii():
        return text.replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def message_id_of(message: dict[str, Any], errors: dict[str, list[str]]) -> str:
    value = message.get("messageId")
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        errors["messageId"] = ["must be a string"]
    elif len(value) > MAX_MESSAGE_ID_LENGTH:
        errors["messageId"] = [f"is longer than {MAX_MESSAGE_ID_LENGTH} characters"]
    elif "\x00" in value:
        errors["messageId"] = ["must not contain NUL characters"]
    elif not value.isascii() and _LONE_SURROGATE.search(value):
        # A JSON escape such as \ud800 decodes to a character no UTF-8 text can hold.
        errors["messageId"] = ["is not valid Unicode (lone surrogate)"]
    else:
        return value
    return ""


def event_id_for(message_id: str) -> str:
    # Without a messageId (the libraries always send one) the event cannot be recognised when
    # sent again: it gets an id of its own, as Segment gives it one.
    if not message_id:
        return str(uuid.uuid4())
    return str(uuid.uuid5(NAMESPACE, message_id))


def parse_time(value: Any) -> tuple[datetime | None, str | None]:
    if not isinstance(value, str):
        return None, "must be an ISO 8601 string with a time zone, e.g. 2026-05-01T12:00:00Z"
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None, "is not an ISO 8601 date-time, e.g. 2026-05-01T12:00:00Z"
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        return None, "has no time zone; add an offset such as Z or +08:00"
    return parsed, None


def corrected_timestamp(
    message: dict[str, Any], *, batch_sent_at: datetime | None, received_at: datetime, errors: dict[str, list[str]]
) -> datetime | None:
    """When it happened, as the spec computes it: the device's `timestamp` moved by the gap
    between our clock and the device's when it sent (`receivedAt - sentAt`), so a device whose
    clock is off still lands its events at the right time; `receivedAt` without a timestamp."""
    sent_at = batch_sent_at
    if message.get("sentAt") is not None:
        sent_at, problem = parse_time(message["sentAt"])
        if problem:
            errors["sentAt"] = [problem]
            return None
    if message.get("timestamp") is None:
        return received_at
    timestamp, problem = parse_time(message["timestamp"])
    if problem:
        errors["timestamp"] = [problem]
        return None
    if sent_at is not None:
        try:
            timestamp = timestamp + (received_at - sent_at)
        except OverflowError:
            errors["timestamp"] = ["is out of range once corrected by receivedAt - sentAt"]
            return None
    return timestamp  # a datetime, which ingestion takes from Python callers as it is


def _summary(value: Any, keys: tuple[str, ...]) -> str:
    """A column's string from one of Segment's context objects (`device`, `os`): its non-empty
    strings under `keys`, in that order."""
    parts = []
    for key in keys:
        part = value.get(key)
        if part and isinstance(part, str):
            parts.append(part)
    return " ".join(parts)


_URL_KEYS = ("url", "referrer")
_CAMPAIGN_KEYS = (("utm_source", "source"), ("utm_medium", "medium"), ("utm_campaign", "name"))
_DEVICE_KEYS = ("model", "type", "manufacturer")
_OS_KEYS = ("name", "version")


def context_of(message: dict[str, Any], properties: Any, errors: dict[str, list[str]]) -> Any:
    """Our event context from Segment's: `page` gives url and referrer, `campaign` the UTM
    columns, `device`/`os` objects a short column each; the objects themselves stay in the
    context (its unknown keys are kept), so nothing the library sent is lost."""
    raw = message.get("context")
    if raw is None:
        raw = {}
    elif not isinstance(raw, dict):
        errors["context"] = ["must be an object"]
        return None
    context = raw.copy()
    if isinstance(page := raw.get("page"), dict):
        for key in _URL_KEYS:
            value = page.get(key)
            if value and isinstance(value, str):
                context[key] = value
    if isinstance(properties, dict) and properties:  # page calls carry them in the properties too
        for key in _URL_KEYS:
            if key not in context:
                value = properties.get(key)
                if value and isinstance(value, str):
                    context[key] = value
    if isinstance(campaign := raw.get("campaign"), dict):
        for ours, theirs in _CAMPAIGN_KEYS:
            value = campaign.get(theirs)
            if value and isinstance(value, str):
                context[ours] = value[:128]
    if isinstance(device := raw.get("device"), dict):
        context["device_detail"] = device  # the object, kept; the column gets its summary
        context["device"] = _summary(device, _DEVICE_KEYS)[:64]
    if isinstance(os_ := raw.get("os"), dict):
        context["os_detail"] = os_
        context["os"] = _summary(os_, _OS_KEYS)[:64]
    message_id = message.get("messageId")
    if message_id and isinstance(message_id, str):
        context["message_id"] = message_id
    return context


def _amount(value: Any) -> Any:
    """An order's total as our decimal string: JSON numbers are read exactly as written
    (Decimal of their shortest repr), never through binary floating point arithmetic."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value  # a string goes to the validator as it is; anything else is refused there
    try:
        return format(Decimal(repr(value)), "f")
    except (InvalidOperation, ValueError):
        return repr(value)


def properties_of(message: dict[str, Any], name: str, kind: str) -> tuple[Any, str | None]:
    """The event's properties, and the Segment property an order's amount was read from."""
    properties = message.get("properties")
    if properties is not None and not isinstance(properties, dict):
        return properties, None  # the validator names it
    properties = dict(properties or {})
    if kind in ("page", "screen"):
        for key in ("name", "category"):
            value = message.get(key)
            if value is not None and key not in properties:
                properties[key] = value
    source = None
    if name in ORDER_EVENTS:
        if "amount" not in properties:
            source = next((k for k in AMOUNT_SOURCES if properties.get(k) is not None), None)
            if source:
                properties["amount"] = _amount(properties[source])
        if "coupon_code" not in properties and isinstance(properties.get("coupon"), str):
            properties["coupon_code"] = properties["coupon"]
    return properties, source


def event_of(
    message: dict[str, Any], kind: str, *, batch_sent_at: datetime | None, received_at: datetime
) -> tuple[dict[str, Any] | None, str | None, dict[str, list[str]]]:
    """Our event for a track, page or screen message (validated by ingestion itself), the
    property its amount came from, or the reasons it cannot become one."""
    errors: dict[str, list[str]] = {}
    message_id = message_id_of(message, errors)
    if kind == "track":
        raw_name = message.get("event")
        if raw_name is None or raw_name == "":
            errors["event"] = ["is required for a track call"]
            name = ""
        elif not isinstance(raw_name, str):
            errors["event"] = ["must be a string"]
            name = ""
        else:
            name = event_name(raw_name)
            if not name:
                errors["event"] = ["needs at least one of the characters a-z 0-9 _ . : -"]
    else:
        name = "page_view" if kind == "page" else "screen_view"
    timestamp = corrected_timestamp(message, batch_sent_at=batch_sent_at, received_at=received_at, errors=errors)
    properties, source = properties_of(message, name, kind)
    context = context_of(message, properties, errors)
    if errors:
        return None, None, errors
    event = {
        "event_id": event_id_for(message_id),
        "name": name,
        "timestamp": timestamp,
        "user_id": message.get("userId"),
        "anonymous_id": message.get("anonymousId"),
        "properties": properties,
        "context": context,
    }
    if kind != "track":
        event["kind"] = "traffic"
    return event, source, {}


def _segment_errors(errors: dict[str, list[str]], amount_source: str | None) -> dict[str, list[str]]:
    named: dict[str, list[str]] = {}
    for key, reasons in errors.items():
        if key == "properties.amount" and amount_source:
            key = f"properties.{amount_source}"
        named[FIELD_NAMES.get(key, key)] = reasons
    return named


# --- identify, alias, group ------------------------------------------------------------------


def _user_id(message: dict[str, Any], key: str, errors: dict[str, list[str]], why: str) -> str | None:
    value = message.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        errors[key] = [f"is required: {why}"]
        return None
    if not isinstance(value, str):
        errors[key] = ["must be a string"]
        return None
    value = value.strip()
    if len(value) > MAX_ID_LENGTH:
        errors[key] = [f"is longer than {MAX_ID_LENGTH} characters"]
    elif "\x00" in value:
        errors[key] = ["must not contain NUL characters"]
    else:
        return value
    return None


def _anonymous_id(message: dict[str, Any], errors: dict[str, list[str]]) -> str | None:
    value = message.get("anonymousId")
    if value is None or value == "":
        return None
    try:
        return normalize_identity(IdentityKind.ANONYMOUS_ID, value)
    except ValueError as exc:
        errors["anonymousId"] = [str(exc)]
        return None


def _traits(raw: Any, errors: dict[str, list[str]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Segment's traits as our known and custom traits."""
    if raw is None:
        return {}, {}
    if not isinstance(raw, dict):
        errors["traits"] = ["must be an object"]
        return {}, {}
    traits: dict[str, Any] = {}
    for key, value in raw.items():
        traits[TRAIT_NAMES.get(key, key)] = value
    if "name" not in traits:
        full = " ".join(raw[k] for k in ("firstName", "lastName") if isinstance(raw.get(k), str) and raw[k])
        if full:
            traits["name"] = full
    address = raw.get("address")
    if isinstance(address, dict) and "city" not in traits and isinstance(address.get("city"), str):
        traits["city"] = address["city"]
    if isinstance(traits.get("birth_date"), str):
        traits["birth_date"] = traits["birth_date"][:10]  # "1990-05-01T00:00:00Z" is a date too
    known, custom, problems = parse_traits(traits)
    for key, reason in problems.items():
        errors[f"traits.{key}" if key != "traits" else "traits"] = [reason]
    return known, custom


def _identify_traits(message: dict[str, Any]) -> Any:
    """An identify's traits: RudderStack's libraries send them as `context.traits`, Segment's at
    the top; both are read, the top ones winning."""
    traits = message.get("traits")
    context = message.get("context")
    in_context = context.get("traits") if isinstance(context, dict) else None
    if not isinstance(in_context, dict) or not in_context:
        return traits
    if traits is None:
        return in_context
    return {**in_context, **traits} if isinstance(traits, dict) else traits


@dataclass(frozen=True)
class ProfileCall:
    """An identify, alias or group message, checked and ready for `profiles.services.identify`."""

    user_id: str
    anonymous_id: str | None
    identities: list[tuple[str, str]]
    traits: dict[str, Any]
    custom_traits: dict[str, Any]
    source: str  # identify, alias or group: the merge record says which call merged


def profile_call_of(message: dict[str, Any], kind: str) -> tuple[ProfileCall | None, dict[str, list[str]]]:
    errors: dict[str, list[str]] = {}
    message_id_of(message, errors)
    why = {
        "identify": "opsloop ties traits and identities to the product's user id",
        "group": "a group is a trait of the user's profile",
        "alias": "alias merges previousId into this user",
    }[kind]
    user_id = _user_id(message, "userId", errors, why)
    anonymous_id = _anonymous_id(message, errors)
    identities: list[tuple[str, str]] = []
    known: dict[str, Any] = {}
    custom: dict[str, Any] = {}
    if kind == "identify":
        known, custom = _traits(_identify_traits(message), errors)
        # Phones and e-mails are identities too: a second account with the same phone is the
        # same person (`identify` merges them). `parse_traits` has normalised them already.
        for identity in ("phone", "email"):
            if known.get(identity):
                identities.append((identity, known[identity]))
    elif kind == "group":
        group_id = message.get("groupId")
        if group_id is None or group_id == "":
            errors["groupId"] = ["is required for a group call"]
        elif not isinstance(group_id, str | int) or isinstance(group_id, bool):
            errors["groupId"] = ["must be a string"]
        else:
            group_traits = message.get("traits")
            if group_traits is not None and not isinstance(group_traits, dict):
                errors["traits"] = ["must be an object"]
            group = {"group_id": str(group_id)}
            if group_traits:
                group["group_traits"] = group_traits
            _known, custom, problems = parse_traits(group)
            for key, reason in problems.items():
                errors["traits" if key in ("traits", "group_traits") else key] = [reason]
    else:  # alias
        previous = _user_id(message, "previousId", errors, "the id the user had before")
        if previous:
            # The spec's previousId is "either anonymous or not": it is claimed as an anonymous
            # id, and as a user id when a profile goes by it, so whichever it was merges.
            identities.append((IdentityKind.ANONYMOUS_ID.value, previous))
            if Profile.objects.filter(user_id=previous).exists():
                identities.append((IdentityKind.USER_ID.value, previous))
    if anonymous_id:
        # A browser's anonymousId is its `ajs_anonymous_id` cookie: the visitor's cookie identity.
        identities.append((IdentityKind.COOKIE.value, anonymous_id))
    if errors:
        return None, errors
    return (
        ProfileCall(
            user_id=user_id,  # type: ignore[arg-type]
            anonymous_id=anonymous_id,
            identities=identities,
            traits=known,
            custom_traits=custom,
            source=kind,
        ),
        {},
    )


# --- a batch -----------------------------------------------------------------------------------


def _size_problem(message: Any) -> str | None:
    try:
        size = len(orjson.dumps(message))  # compact UTF-8, exactly what the limit counts
    except (orjson.JSONEncodeError, TypeError):
        size = None  # lone surrogates, integers beyond 64 bits: the standard library measures them
    if size is not None:
        return _too_large(size)
    try:
        # ASCII-escaped JSON is never shorter than UTF-8 JSON, and this is the C encoder's
        # quickest path: only a message near the limit pays for the exact size.
        size = len(json.dumps(message, separators=(",", ":")))
        if size > MAX_MESSAGE_BYTES:
            size = len(json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass"))
    except (ValueError, TypeError, RecursionError):
        return None  # the validator names what is wrong with it
    return _too_large(size)


def _too_large(size: int) -> str | None:
    if size > MAX_MESSAGE_BYTES:
        return f"is {size} bytes as JSON; at most {MAX_MESSAGE_BYTES} bytes per message are accepted"
    return None


def ingest_segment_messages(
    *,
    messages: Sequence[Any],
    received_at: datetime,
    batch_sent_at: datetime | None = None,
    kind: str | None = None,
    api_key: Any = None,
    check_sizes: bool = True,
) -> SegmentResult:
    """Store a batch of Segment messages: track, page and screen as events (one ingestion
    transaction for all of them, duplicates of a messageId stored once), then identify, alias
    and group through `identify`, each in its own transaction, in the batch's order. A message
    that cannot be stored is refused alone, with its reasons; the others are stored.

    `kind` is the type of a single-call endpoint (`/v1/track`); in a batch each message names
    its own. Refusals are logged (one line per batch) and kept per key for the admin."""
    result = SegmentResult()
    events: list[dict[str, Any]] = []
    event_origins: list[tuple[int, str, str, str | None]] = []  # index, type, messageId, amount source
    calls: list[tuple[int, str, str, ProfileCall]] = []

    def refuse(index: int, message: Any, type_: str, errors: dict[str, list[str]]) -> None:
        message_id = message.get("messageId") if isinstance(message, dict) else None
        result.refused.append(
            Refusal(
                index=index, type=type_, message_id=message_id if isinstance(message_id, str) else "", errors=errors
            )
        )

    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            refuse(index, message, "", {"non_field_errors": ["a message must be a JSON object"]})
            continue
        type_ = kind or message.get("type")
        if type_ not in TYPES:
            refuse(index, message, str(type_ or "")[:16], {"type": [f"must be one of {', '.join(TYPES)}"]})
            continue
        if check_sizes and (problem := _size_problem(message)):
            refuse(index, message, type_, {"non_field_errors": [f"the message {problem}"]})
            continue
        if type_ in EVENT_TYPES:
            event, source, errors = event_of(message, type_, batch_sent_at=batch_sent_at, received_at=received_at)
            if event is None:
                refuse(index, message, type_, errors)
            else:
                events.append(event)
                event_origins.append((index, type_, message.get("messageId") or "", source))
        else:
            call, errors = profile_call_of(message, type_)
            if call is None:
                refuse(index, message, type_, errors)
            else:
                calls.append((index, type_, message.get("messageId") or "", call))

    if events:
        ingested = ingest_events(events=events, now=received_at)
        result.accepted, result.duplicates = ingested.accepted, ingested.duplicates
        for rejection in ingested.rejected:
            index, type_, message_id, source = event_origins[rejection.index]
            result.refused.append(
                Refusal(
                    index=index,
                    type=type_,
                    message_id=message_id if isinstance(message_id, str) else "",
                    errors=_segment_errors(rejection.errors, source),
                )
            )
    for _index, _type, _message_id, call in calls:
        outcome = services.identify(
            user_id=call.user_id,
            anonymous_id=call.anonymous_id,
            identities=call.identities,
            traits=call.traits,
            custom_traits=call.custom_traits,
            source=f"segment {call.source}",
        )
        result.profiles += 1
        result.merged += outcome.merged_profiles
    result.refused.sort(key=lambda r: r.index)
    if result.refused:
        _record_refusals(result.refused, total=len(messages), api_key=api_key)
    return result


def _record_refusals(refused: list[Refusal], *, total: int, api_key: Any) -> None:
    first = refused[0]
    # The reasons name fields and say what is wrong; they never carry the key.
    logger.warning(
        "segment: refused %d of %d messages (key %s); first at index %d (%s): %s",
        len(refused),
        total,
        getattr(api_key, "prefix", "-"),
        first.index,
        first.type or "?",
        first.errors,
    )
    record_rejections(refused=refused, api_key=api_key)


_TRIM_SQL = """
DELETE FROM profiles_segmentrejection
WHERE api_key_id = %(key)s AND id < (
    SELECT id FROM profiles_segmentrejection WHERE api_key_id = %(key)s
    ORDER BY id DESC OFFSET %(keep)s LIMIT 1
)
"""


@transaction.atomic
def record_rejections(*, refused: Sequence[Refusal], api_key: Any) -> None:
    """Keep the last refusals of each key for the admin (*Profiles > Segment rejections*), so an
    integrator's mistakes are visible where operators look, not only in the log."""
    if api_key is None:
        return
    SegmentRejection.objects.bulk_create(
        [
            SegmentRejection(
                api_key=api_key,
                index=r.index,
                message_type=r.type[:16],
                message_id=r.message_id[:MAX_MESSAGE_ID_LENGTH],
                errors=r.errors,
            )
            for r in refused[-REJECTIONS_KEPT_PER_KEY:]
        ]
    )
    with connection.cursor() as cursor:
        cursor.execute(_TRIM_SQL, {"key": api_key.pk, "keep": REJECTIONS_KEPT_PER_KEY - 1})
