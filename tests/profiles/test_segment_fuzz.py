"""Whatever shape a Segment message takes, the batch endpoint stores each valid one once, refuses
each invalid one naming what is wrong, and never answers 500."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from access import services as access_services
from profiles.models import Profile
from profiles.segment import NAMESPACE
from tracking.models import Event

pytestmark = pytest.mark.django_db

NOW = datetime.now(UTC)
ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)


def values(text) -> st.SearchStrategy:
    scalars = st.none() | st.booleans() | st.integers(-(10**6), 10**6) | text(12)
    return st.recursive(
        scalars,
        lambda children: st.lists(children, max_size=3) | st.dictionaries(text(6), children, max_size=3),
        max_leaves=8,
    )


def any_text(max_size: int) -> st.SearchStrategy:
    return st.text(max_size=max_size)


def storable_text(max_size: int) -> st.SearchStrategy:
    """Text PostgreSQL can hold (no NUL): what a valid message carries."""
    return st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=max_size)


json_values = values(any_text)
storable_values = values(storable_text)
storable_scalars = st.none() | st.booleans() | st.integers(-(10**6), 10**6) | storable_text(12)
moments = st.integers(0, 30 * 86400).map(lambda s: (NOW - timedelta(seconds=s)).isoformat())
cents = st.integers(0, 10**8).map(lambda c: c / 100)
contexts = st.fixed_dictionaries(
    {},
    optional={
        "page": st.fixed_dictionaries(
            {"url": st.sampled_from(["https://shop.example.com/", "https://shop.example.com/p/1?utm_source=x"])}
        ),
        "campaign": st.fixed_dictionaries({"source": ids, "medium": ids}),
        "ip": st.sampled_from(["203.0.113.9", "2001:db8::1"]),
        "library": st.fixed_dictionaries({"name": st.sampled_from(["analytics-python", "analytics.js"])}),
        "device": st.fixed_dictionaries({"model": ids}) | ids,
    },
)
# Fields the spec allows that we ignore: they must not make a valid message invalid.
extras = st.dictionaries(
    st.sampled_from(["integrations", "version", "_metadata", "channel", "receivedAt"]), storable_values
)


def _common(draw) -> dict:
    message: dict = {"messageId": str(uuid.uuid4())}
    who = draw(st.sampled_from(["user", "anonymous", "both"]))
    if who in ("user", "both"):
        message["userId"] = draw(ids)
    if who in ("anonymous", "both"):
        message["anonymousId"] = draw(ids)
    if draw(st.booleans()):
        message["timestamp"] = draw(moments)
    if draw(st.booleans()):
        message["context"] = draw(contexts)
    message.update(draw(extras))
    return message


@st.composite
def valid_messages(draw) -> dict:
    kind = draw(st.sampled_from(["track", "page", "screen", "identify", "alias", "group"]))
    message = {"type": kind, **_common(draw)}
    if kind in ("identify", "alias", "group"):
        message["userId"] = draw(ids)
    if kind == "track":
        name = draw(st.sampled_from(["Product Viewed", "Order Completed", "Products Searched", "app_open"]))
        message["event"] = name
        properties = draw(st.dictionaries(storable_text(6), storable_values, max_size=3))
        if name == "Order Completed":
            properties = {"order_id": draw(ids), "total": draw(cents)}
        elif name == "Products Searched":
            properties = {"query": draw(storable_text(10))}
        message["properties"] = properties
    elif kind in ("page", "screen"):
        message["name"] = draw(storable_text(10))
    elif kind == "identify":
        message["traits"] = draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "email": st.sampled_from(["li@example.com", "Wang@Example.org"]),
                    "firstName": storable_text(10),
                    "plan": storable_scalars,
                },
            )
        )
    elif kind == "alias":
        message["previousId"] = draw(ids)
    else:
        message["groupId"] = draw(ids)
        message["traits"] = draw(st.dictionaries(ids, storable_scalars, max_size=2))
    return message


# (types it applies to, how it breaks the message, the field the refusal must name)
DEFECTS = [
    (("track",), lambda m: m.pop("event"), "event"),
    (("track",), lambda m: m.update(event=5), "event"),
    (("track",), lambda m: m.update(event="下单"), "event"),
    (("track", "page", "screen"), lambda m: (m.pop("userId", None), m.pop("anonymousId", None)), "userId"),
    (("track", "page", "screen"), lambda m: m.update(timestamp="last tuesday"), "timestamp"),
    (("track", "page", "screen"), lambda m: m.update(timestamp="2026-01-01T00:00:00"), "timestamp"),
    (("track", "page", "screen"), lambda m: m.update(sentAt=17), "sentAt"),
    (("track", "page", "screen"), lambda m: m.update(properties=[1, 2]), "properties"),
    (("track", "page", "screen"), lambda m: m.update(context="web"), "context"),
    (("track", "page", "screen"), lambda m: m.update(context={"ip": "300.1.1.1"}), "context.ip"),
    (("track", "page", "screen"), lambda m: m.update(userId={"id": 1}), "userId"),
    (("track", "page", "screen", "identify"), lambda m: m.update(messageId=12), "messageId"),
    (("identify", "alias", "group"), lambda m: m.pop("userId"), "userId"),
    (("identify",), lambda m: m.update(traits="gold"), "traits"),
    (("identify",), lambda m: m.update(traits={"email": "not-an-address"}), "traits.email"),
    (("identify",), lambda m: m.update(traits={"gender": "sometimes"}), "traits.gender"),
    (("alias",), lambda m: m.pop("previousId"), "previousId"),
    (("group",), lambda m: m.pop("groupId"), "groupId"),
    (("track", "page", "screen", "identify", "alias", "group"), lambda m: m.update(type="dance"), "type"),
]


@st.composite
def cases(draw) -> tuple[dict, str | None]:
    """A message, and the field its refusal must name (None: it is valid)."""
    message = draw(valid_messages())
    if draw(st.booleans()):
        return message, None
    applicable = [d for d in DEFECTS if message["type"] in d[0]]
    _types, breaks, field = draw(st.sampled_from(applicable))
    breaks(message)
    return message, field


junk = st.one_of(
    json_values,
    st.dictionaries(
        st.sampled_from(["type", "event", "userId", "anonymousId", "timestamp", "properties", "context", "traits"]),
        json_values,
    ),
)


@pytest.fixture(scope="module")
def write_key(django_db_setup, django_db_blocker) -> str:
    with django_db_blocker.unblock():
        issued = access_services.create_api_key(name=f"fuzz-{uuid.uuid4().hex[:8]}", scopes=["events:write"])
    return "Basic " + base64.b64encode(f"{issued.plaintext}:".encode()).decode()


def post(batch: list, auth: str):
    return Client().post(
        "/ingest/segment/v1/batch",
        data=json.dumps({"batch": batch, "sentAt": NOW.isoformat()}),
        content_type="application/json",
        HTTP_AUTHORIZATION=auth,
    )


def stored(message: dict) -> bool:
    if message["type"] in ("track", "page", "screen"):
        return Event.objects.filter(event_id=uuid.uuid5(NAMESPACE, message["messageId"])).count() == 1
    return Profile.objects.filter(user_id=message["userId"]).exists()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(cases(), min_size=1, max_size=6))
def test_each_valid_message_is_stored_once_and_each_invalid_one_refused_naming_its_field(write_key, batch):
    messages = [m for m, _field in batch]
    response = post(messages, write_key)

    assert response.status_code == 200, response.content
    body = response.json()
    refused = {r["index"]: r["errors"] for r in body["rejected"]}
    for index, (message, field) in enumerate(batch):
        if field is None:
            assert index not in refused, (message, refused.get(index))
            assert stored(message), message
        else:
            assert field in refused.get(index, {}), (message, field, refused.get(index))
            assert all(
                reasons and all(isinstance(r, str) and r for r in reasons) for reasons in refused[index].values()
            )
    events = sum(1 for m, f in batch if f is None and m["type"] in ("track", "page", "screen"))
    assert body["accepted"] + body["duplicates"] == events

    again = post(messages, write_key).json()
    assert (again["accepted"], again["duplicates"]) == (0, events)
    assert sorted(r["index"] for r in again["rejected"]) == sorted(refused)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(junk, min_size=1, max_size=5))
def test_any_batch_is_answered_with_a_verdict_per_message_never_a_500(write_key, batch):
    response = post(batch, write_key)

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["accepted"] + body["duplicates"] + body["profiles"] + len(body["rejected"]) == len(batch)
    assert all(r["errors"] for r in body["rejected"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["track", "page", "screen", "identify", "alias", "group", "t", "i"]), message=junk)
def test_any_single_call_is_answered_200_or_400_with_a_reason_never_a_500(write_key, kind, message):
    response = Client().post(
        f"/ingest/segment/v1/{kind}",
        data=json.dumps(message),
        content_type="application/json",
        HTTP_AUTHORIZATION=write_key,
    )
    assert response.status_code in (200, 400), response.content
    if response.status_code == 400:
        assert response.json()["message"]
