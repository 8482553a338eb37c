"""`POST /api/v1/events`: the batch contract, per-event refusals and duplicates."""

from __future__ import annotations

import gzip
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from tests.factories.tracking import EventPayloadFactory, payloads
from tracking.models import Event

URL = "/api/v1/events"
pytestmark = pytest.mark.django_db


@pytest.fixture
def client(make_api_client):
    return make_api_client("events:write")


def post(client, body, **extra):
    raw = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.post(URL, data=raw, content_type="application/json", **extra)


def errors_of(response, index=0):
    rejected = {item["index"]: item["errors"] for item in response.json()["rejected"]}
    return rejected[index]


def test_a_valid_batch_is_stored_and_counted(client):
    events = payloads(3)
    response = post(client, {"events": events})
    assert response.status_code == 200
    assert response.json() == {"accepted": 3, "duplicates": 0, "rejected": []}
    stored = set(Event.objects.values_list("event_id", flat=True))
    assert stored == {uuid.UUID(e["event_id"]) for e in events}


def test_a_mixed_batch_keeps_its_valid_events_and_names_each_rejected_one(client):
    good = payloads(2)
    bad_kind = EventPayloadFactory(kind="purchase")
    no_person = EventPayloadFactory(user_id=None)
    response = post(client, {"events": [good[0], bad_kind, good[1], no_person]})
    body = response.json()
    assert response.status_code == 200
    assert body["accepted"] == 2
    assert [item["index"] for item in body["rejected"]] == [1, 3]
    assert "kind" in errors_of(response, 1)
    assert "user_id" in errors_of(response, 3)
    assert Event.objects.count() == 2


def test_a_batch_sent_twice_is_stored_once_and_counted_as_duplicates(client):
    events = payloads(4)
    post(client, {"events": events})
    again = post(client, {"events": events}).json()
    assert again == {"accepted": 0, "duplicates": 4, "rejected": []}
    assert Event.objects.count() == 4


def test_an_id_repeated_within_a_batch_is_stored_once(client):
    event = EventPayloadFactory()
    twin = {**event, "name": "signup"}
    body = post(client, {"events": [event, twin]}).json()
    assert (body["accepted"], body["duplicates"]) == (1, 1)
    assert Event.objects.get().name == event["name"]


def test_an_offset_timestamp_is_stored_as_utc(client):
    event = EventPayloadFactory(timestamp="2026-01-02T08:30:00+08:00")
    post(client, {"events": [event]})
    assert Event.objects.get().timestamp == datetime(2026, 1, 2, 0, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    "timestamp",
    ["2026-01-02T08:30:00", "2026-01-02", "yesterday", 1767312000, None],
    ids=["naive", "date-only", "words", "epoch-number", "missing"],
)
def test_a_timestamp_without_a_time_zone_or_not_iso_is_refused(client, timestamp):
    response = post(client, {"events": [EventPayloadFactory(timestamp=timestamp)]})
    assert response.status_code == 200
    assert "timestamp" in errors_of(response)
    assert not Event.objects.exists()


def test_an_event_more_than_ten_minutes_in_the_future_is_refused(client):
    soon = EventPayloadFactory(timestamp=(timezone.now() + timedelta(minutes=9)).isoformat())
    late = EventPayloadFactory(timestamp=(timezone.now() + timedelta(minutes=11)).isoformat())
    response = post(client, {"events": [soon, late]})
    assert response.json()["accepted"] == 1
    assert "future" in errors_of(response, 1)["timestamp"][0]


def test_properties_over_32_kib_are_refused_and_just_under_is_kept(client):
    fits = EventPayloadFactory(properties={"blob": "x" * (32 * 1024 - 20)})
    too_big = EventPayloadFactory(properties={"blob": "x" * (32 * 1024)})
    response = post(client, {"events": [fits, too_big]})
    assert response.json()["accepted"] == 1
    assert "32768" in errors_of(response, 1)["properties"][0]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("event_id", "not-a-uuid"),
        ("event_id", 12),
        ("event_id", None),
        ("name", "Page View"),
        ("name", "x" * 65),
        ("name", ""),
        ("kind", "purchase"),
        ("kind", 3),
        ("user_id", 42),
        ("user_id", "u" * 129),
        ("properties", ["a"]),
        ("properties", "text"),
        ("context", "text"),
    ],
)
def test_a_field_of_the_wrong_type_or_shape_is_refused_with_its_name(client, field, value):
    response = post(client, {"events": [EventPayloadFactory(**{field: value})]})
    assert response.status_code == 200
    assert field in errors_of(response)
    assert not Event.objects.exists()


def test_an_event_that_is_not_an_object_is_refused_by_index(client):
    response = post(client, {"events": [EventPayloadFactory(), "page_view", None]})
    assert response.json()["accepted"] == 1
    assert [item["index"] for item in response.json()["rejected"]] == [1, 2]


def test_an_anonymous_event_is_accepted_without_user_id(client):
    event = EventPayloadFactory(user_id=None, anonymous_id="device-cookie-1")
    assert post(client, {"events": [event]}).json()["accepted"] == 1
    assert Event.objects.get().anonymous_id == "device-cookie-1"


def test_known_context_keys_become_columns_and_the_path_is_parsed_from_the_url(client):
    context = {
        "url": "https://shop.example.com/p/42?utm_source=mail#top",
        "referrer": "https://search.example.org/",
        "utm_source": "newsletter",
        "utm_medium": "email",
        "utm_campaign": "spring",
        "device": "iPhone15,2",
        "os": "iOS 18",
        "ip": "2001:db8::1",
        "locale": "zh-CN",
        "library": {"name": "web-sdk", "version": "2.1"},
    }
    post(client, {"events": [EventPayloadFactory(name="page_view", context=context)]})
    event = Event.objects.get()
    assert (event.url, event.path, event.referrer) == (context["url"], "/p/42", context["referrer"])
    assert (event.utm_source, event.utm_medium, event.utm_campaign) == ("newsletter", "email", "spring")
    assert (event.device, event.os, event.ip, event.locale) == ("iPhone15,2", "iOS 18", "2001:db8::1", "zh-CN")
    assert event.context_extra == {"library": {"name": "web-sdk", "version": "2.1"}}
    assert event.kind == "traffic"


@pytest.mark.parametrize("ip", ["300.1.1.1", "localhost", "10.0.0", "fe80::1%eth0", "01.2.3.4"])
def test_an_invalid_ip_is_refused(client, ip):
    response = post(client, {"events": [EventPayloadFactory(context={"ip": ip})]})
    assert "context.ip" in errors_of(response)


def test_an_order_paid_needs_an_order_id_and_a_decimal_string_amount(client):
    good = EventPayloadFactory(name="order_paid", properties={"order_id": "o-1", "amount": "20.00"})
    float_amount = EventPayloadFactory(name="order_paid", properties={"order_id": "o-2", "amount": 20.0})
    no_order = EventPayloadFactory(name="order_paid", properties={"amount": "5.00"})
    no_properties = EventPayloadFactory(name="order_paid")
    del no_properties["properties"]
    response = post(client, {"events": [good, float_amount, no_order, no_properties]})
    assert response.json()["accepted"] == 1
    assert "properties.amount" in errors_of(response, 1)
    assert "properties.order_id" in errors_of(response, 2)
    assert {"properties.order_id", "properties.amount"} <= set(errors_of(response, 3))
    assert Event.objects.get().kind == "business"


@pytest.mark.parametrize(
    ("amount", "reason"),
    [
        ("1_000", "digits 0-9"),
        ("١٢", "digits 0-9"),
        ("1e3", "digits 0-9"),
        (" 12", "digits 0-9"),
        ("5.", "digits 0-9"),
        ("20.505", "two decimal places"),
        ("-5", "at least 0"),
        ("1234567890123456", "15 digits"),
    ],
)
def test_an_amount_postgresql_reads_otherwise_or_not_at_all_is_refused_naming_why(client, amount, reason):
    good = EventPayloadFactory(name="order_paid", properties={"order_id": "o-1", "amount": "123456789012345.25"})
    bad = EventPayloadFactory(name="order_paid", properties={"order_id": "o-2", "amount": amount})
    response = post(client, {"events": [good, bad]})
    assert response.status_code == 200
    assert response.json()["accepted"] == 1
    assert any(reason in message for message in errors_of(response, 1)["properties.amount"])
    assert Event.objects.get().properties["amount"] == "123456789012345.25"


def test_text_that_postgresql_cannot_store_is_refused_not_a_server_error(client):
    nul_property = EventPayloadFactory(properties={"q": "a\x00b"})
    nul_user = EventPayloadFactory(user_id="a\x00b")
    surrogate = '{"events": [' + json.dumps(EventPayloadFactory())[:-1] + ', "anonymous_id": "\\ud800"}]}'
    response = post(client, {"events": [nul_property, nul_user]})
    assert "properties" in errors_of(response, 0)
    assert "user_id" in errors_of(response, 1)
    response = post(client, surrogate)
    assert response.status_code == 200
    assert "anonymous_id" in errors_of(response, 0)
    assert not Event.objects.exists()


def test_deeply_nested_properties_are_refused(client):
    deep: dict = {}
    node = deep
    for _ in range(40):
        node["n"] = {}
        node = node["n"]
    response = post(client, {"events": [EventPayloadFactory(properties=deep)]})
    assert "nested" in errors_of(response)["properties"][0]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"events": [', "detail"),
        ("[]", "non_field_errors"),
        ('"events"', "non_field_errors"),
        ("{}", "events"),
        ('{"events": {"a": 1}}', "events"),
        ('{"events": []}', "events"),
        ('{"events": [{"event_id": NaN}]}', "detail"),
        ("[" * 100_000 + "]" * 100_000, "detail"),
    ],
    ids=["malformed", "list", "string", "no-events", "events-object", "empty", "nan", "deep-nesting"],
)
def test_a_body_that_is_not_a_batch_is_a_400_naming_the_problem(client, body, field):
    response = post(client, body)
    assert response.status_code == 400
    assert field in response.json()


def test_more_than_10000_events_is_a_400_and_nothing_is_stored(client):
    response = post(client, {"events": payloads(10_001)})
    assert response.status_code == 400
    assert "10001" in response.json()["events"][0]
    assert not Event.objects.exists()


def test_a_full_batch_of_1000_events_over_djangos_upload_limit_is_stored(client, settings):
    body = json.dumps({"events": payloads(1000, properties={"note": "x" * 3000})})
    assert len(body) > settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    assert post(client, body).json()["accepted"] == 1000


def test_a_body_over_the_size_limit_is_a_400(client, settings):
    settings.OPSLOOP_EVENTS_MAX_BODY_BYTES = 2000
    response = post(client, {"events": payloads(20)})
    assert response.status_code == 400
    assert "2000" in response.json()["detail"]
    assert not Event.objects.exists()


def test_a_body_that_is_not_json_is_a_415(client):
    response = client.post(URL, data="events=1", content_type="text/plain")
    assert response.status_code == 415


def test_a_key_without_events_write_is_refused(make_api_client):
    response = post(make_api_client("profiles:read"), {"events": payloads(1)})
    assert response.status_code == 403
    assert not Event.objects.exists()


def test_a_gzipped_batch_is_accepted(client):
    body = gzip.compress(json.dumps({"events": payloads(3)}).encode())
    response = post(client, body, HTTP_CONTENT_ENCODING="gzip")
    assert response.json()["accepted"] == 3


def test_a_gzipped_batch_of_10000_events_is_stored_once_each(client):
    events = payloads(9_999)
    events[17]["timestamp"] = "yesterday"  # refused alone, by its index
    body = gzip.compress(json.dumps({"events": [*events, events[3]]}).encode())
    response = post(client, body, HTTP_CONTENT_ENCODING="gzip")
    assert response.status_code == 200
    answer = response.json()
    assert (answer["accepted"], answer["duplicates"]) == (9_998, 1)
    assert [item["index"] for item in answer["rejected"]] == [17]
    assert Event.objects.count() == 9_998


def test_a_gzipped_body_that_expands_past_the_limit_or_is_corrupt_is_a_400(client, settings):
    settings.OPSLOOP_EVENTS_MAX_BODY_BYTES = 10_000
    bomb = gzip.compress(b'{"events": [' + b" " * 1_000_000 + b"]}")
    assert len(bomb) < 10_000
    response = post(client, bomb, HTTP_CONTENT_ENCODING="gzip")
    assert response.status_code == 400
    assert "decompressed" in response.json()["detail"]
    assert post(client, b"not gzip", HTTP_CONTENT_ENCODING="gzip").status_code == 400


def test_null_context_values_and_blank_ids_count_as_absent(client):
    event = EventPayloadFactory(user_id="  ", anonymous_id="anon-1", context={"url": None, "os": "iOS"})
    assert post(client, {"events": [event]}).json()["accepted"] == 1
    stored = Event.objects.get()
    assert (stored.user_id, stored.url, stored.os) == (None, "", "iOS")


def test_an_explicit_kind_wins_over_the_default_of_a_well_known_name(client):
    post(client, {"events": [EventPayloadFactory(name="page_view", kind="behavior")]})
    assert Event.objects.get().kind == "behavior"


def test_utm_parameters_of_the_url_fill_the_utm_columns_left_empty(client):
    url = "https://shop.example.com/sale?utm_source=wechat&utm_medium=social&utm_campaign=double%2011"
    event = EventPayloadFactory(name="page_view", context={"url": url, "utm_source": "moments-ad"})
    post(client, {"events": [event]})
    stored = Event.objects.get()
    assert (stored.utm_source, stored.utm_medium, stored.utm_campaign) == ("moments-ad", "social", "double 11")
