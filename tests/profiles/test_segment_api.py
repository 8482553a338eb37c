"""The Segment HTTP Tracking API under /ingest/segment/: what each call stores, and how the
requests it refuses are answered."""

from __future__ import annotations

import base64
import gzip
import json
import logging
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.test import Client

from access import services as access_services
from profiles.models import Identity, Profile, ProfileMerge, SegmentRejection
from profiles.segment import NAMESPACE, REJECTIONS_KEPT_PER_KEY
from tracking.models import Event

pytestmark = pytest.mark.django_db

BASE = "/ingest/segment/v1"


@pytest.fixture
def write_key() -> str:
    return access_services.create_api_key(name="shop-web", scopes=["events:write"]).plaintext


def basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def post(path: str, body, *, key: str | None, gzipped: bool = False, content_type: str = "application/json"):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {}
    if key is not None:
        headers["HTTP_AUTHORIZATION"] = basic(key)
    if gzipped:
        data = gzip.compress(data)
        headers["HTTP_CONTENT_ENCODING"] = "gzip"
    return Client().post(f"{BASE}/{path}", data=data, content_type=content_type, **headers)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def now() -> datetime:
    return datetime.now(UTC)


def track(event: str = "Product Viewed", **extra) -> dict:
    return {"type": "track", "event": event, "userId": "u-1", "messageId": str(uuid.uuid4()), **extra}


def test_a_batch_of_every_call_type_is_stored_with_the_meaning_of_our_own_api(write_key):
    at = now() - timedelta(minutes=5)
    batch = [
        {
            "type": "page",
            "anonymousId": "anon-7",
            "messageId": "ajs-next-page-1",
            "name": "Home",
            "timestamp": iso(at),
            "properties": {"title": "Shop", "url": "https://shop.example.com/?utm_source=ignored"},
            "context": {
                "page": {"url": "https://shop.example.com/p/9?x=1", "referrer": "https://www.example.org/"},
                "campaign": {"source": "newsletter", "medium": "email", "name": "spring", "term": "tea"},
                "ip": "203.0.113.9",
                "locale": "zh-CN",
                "library": {"name": "analytics.js", "version": "next-1.84.3"},
            },
        },
        {
            "type": "screen",
            "userId": "u-1",
            "messageId": "screen-1",
            "name": "Cart",
            "context": {"device": {"model": "iPhone15,2", "type": "ios"}, "os": {"name": "iOS", "version": "18.1"}},
        },
        track("Product Viewed", properties={"sku": "sku-1", "price": 12.5}, timestamp=iso(at)),
        {
            "type": "identify",
            "userId": "u-1",
            "anonymousId": "anon-7",
            "traits": {
                "email": "Zhang.Wei@Example.com",
                "phone": "138 0013 8000",
                "firstName": "Wei",
                "lastName": "Zhang",
                "plan": "gold",
            },
        },
        {"type": "group", "userId": "u-1", "groupId": "acme", "traits": {"name": "Acme Ltd", "employees": 40}},
    ]
    response = post("batch", {"batch": batch, "sentAt": iso(now())}, key=write_key)

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["success"] is True
    assert (body["accepted"], body["duplicates"], body["profiles"], body["rejected"]) == (3, 0, 2, [])

    page = Event.objects.get(name="page_view")
    assert (page.kind, page.anonymous_id, page.user_id) == ("traffic", "anon-7", None)
    assert page.url == "https://shop.example.com/p/9?x=1" and page.path == "/p/9"
    assert page.referrer == "https://www.example.org/"
    assert (page.utm_source, page.utm_medium, page.utm_campaign) == ("newsletter", "email", "spring")
    assert (page.ip, page.locale) == ("203.0.113.9", "zh-CN")
    assert page.context_extra["page"]["url"] == "https://shop.example.com/p/9?x=1"
    assert page.context_extra["campaign"]["term"] == "tea"
    assert page.context_extra["message_id"] == "ajs-next-page-1"
    assert page.properties["name"] == "Home"
    assert page.event_id == uuid.uuid5(NAMESPACE, "ajs-next-page-1")

    screen = Event.objects.get(name="screen_view")
    assert (screen.kind, screen.device, screen.os) == ("traffic", "iPhone15,2 ios", "iOS 18.1")
    assert screen.context_extra["device_detail"]["model"] == "iPhone15,2"

    viewed = Event.objects.get(name="product_viewed")
    assert (viewed.kind, viewed.user_id, viewed.properties) == ("behavior", "u-1", {"sku": "sku-1", "price": 12.5})

    profile = Profile.objects.get(user_id="u-1")
    assert (profile.email, profile.phone, profile.name) == ("zhang.wei@example.com", "+8613800138000", "Wei Zhang")
    assert profile.traits["plan"] == "gold"
    assert profile.traits["group_id"] == "acme" and profile.traits["group_traits"]["employees"] == 40
    kinds = dict(Identity.objects.filter(profile=profile).values_list("kind", "value"))
    assert kinds["email"] == "zhang.wei@example.com" and kinds["phone"] == "+8613800138000"
    assert kinds["anonymous_id"] == "anon-7" and kinds["cookie"] == "anon-7"


def test_a_message_id_sent_again_is_stored_once(write_key):
    batch = [track(), track("Added To Cart")]
    first = post("batch", {"batch": batch}, key=write_key).json()
    again = post("batch", {"batch": batch}, key=write_key).json()

    assert (first["accepted"], first["duplicates"]) == (2, 0)
    assert (again["accepted"], again["duplicates"]) == (0, 2)
    assert Event.objects.count() == 2
    assert set(Event.objects.values_list("event_id", flat=True)) == {
        uuid.uuid5(NAMESPACE, m["messageId"]) for m in batch
    }


def test_a_device_clock_an_hour_ahead_is_corrected_by_received_at_minus_sent_at(write_key):
    device_clock = now() + timedelta(hours=1)
    happened_on_device = device_clock - timedelta(minutes=10)
    message = track(timestamp=iso(happened_on_device))

    post("batch", {"batch": [message], "sentAt": iso(device_clock)}, key=write_key)

    stored = Event.objects.get().timestamp
    expected = now() - timedelta(minutes=10)
    assert abs((stored - expected).total_seconds()) < 30


def test_a_message_level_sent_at_wins_over_the_batch_one(write_key):
    device_clock = now() - timedelta(days=2)
    message = track(timestamp=iso(device_clock - timedelta(minutes=1)), sentAt=iso(device_clock))

    post("batch", {"batch": [message], "sentAt": iso(now())}, key=write_key)

    assert abs((Event.objects.get().timestamp - (now() - timedelta(minutes=1))).total_seconds()) < 30


def test_a_message_without_timestamp_happened_when_it_was_received(write_key):
    post("track", {"event": "Signed Up", "userId": "u-2", "messageId": "m-1"}, key=write_key)

    event = Event.objects.get()
    assert event.name == "signed_up"
    assert abs((event.timestamp - event.received_at).total_seconds()) < 1


def test_a_bad_message_is_refused_alone_with_its_reason_and_the_rest_stored(write_key, caplog):
    good = track()
    batch = [
        good,
        {"type": "track", "userId": "u-1", "messageId": "no-event"},
        {"type": "track", "event": "Viewed", "messageId": "nobody"},
        track(messageId="bad-time", timestamp="yesterday"),
        {"type": "dance", "userId": "u-1", "messageId": "what"},
        track(messageId="bad-ip", context={"ip": "999.1.1.1"}),
        {"type": "identify", "anonymousId": "anon-1", "messageId": "anon-identify", "traits": {"email": "a@b.co"}},
        {"type": "identify", "userId": "u-3", "messageId": "bad-phone", "traits": {"phone": "12"}},
        "not an object",
    ]
    with caplog.at_level(logging.WARNING):
        response = post("batch", {"batch": batch}, key=write_key)

    assert response.status_code == 200
    body = response.json()
    assert body["accepted"] == 1
    refused = {r["index"]: r for r in body["rejected"]}
    assert sorted(refused) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert refused[1]["errors"] == {"event": ["is required for a track call"]}
    assert refused[1]["messageId"] == "no-event"
    assert refused[2]["errors"] == {"userId": ["user_id or anonymous_id is required"]}
    assert "ISO 8601" in refused[3]["errors"]["timestamp"][0]
    assert refused[4]["errors"]["type"][0].startswith("must be one of track")
    assert refused[5]["errors"] == {"context.ip": ["is not an IPv4 or IPv6 address"]}
    assert refused[6]["errors"]["userId"][0].startswith("is required")
    assert "phone" in refused[7]["errors"]["traits.phone"][0]
    assert refused[8]["errors"] == {"non_field_errors": ["a message must be a JSON object"]}
    assert Event.objects.get().event_id == uuid.uuid5(NAMESPACE, good["messageId"])
    assert not Profile.objects.filter(user_id="u-3").exists()

    kept = SegmentRejection.objects.order_by("index")
    assert [r.index for r in kept] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert kept[0].message_id == "no-event" and kept[0].errors == refused[1]["errors"]
    logged = [r.getMessage() for r in caplog.records if "segment: refused" in r.getMessage()]
    assert logged and "refused 8 of 9 messages" in logged[0]
    secret = write_key.split("_", 2)[2]  # olk_<prefix>_<secret>; the secret may hold "_" itself
    assert write_key not in caplog.text and secret not in caplog.text


def test_the_last_refusals_of_a_key_are_kept_and_older_ones_dropped(write_key):
    for round_ in range(3):
        bad = [{"type": "track", "userId": "u", "messageId": f"r{round_}-{i}"} for i in range(60)]
        post("batch", {"batch": bad}, key=write_key)

    kept = SegmentRejection.objects.all()
    assert kept.count() == REJECTIONS_KEPT_PER_KEY
    assert {r.message_id for r in kept} >= {f"r2-{i}" for i in range(60)}


def test_order_completed_is_our_order_paid_with_its_total_as_a_decimal_amount(write_key):
    order = track("Order Completed", properties={"order_id": "o-1", "total": 27.5, "coupon": "SPRING", "revenue": 25})
    refund = track("Order Refunded", properties={"order_id": "o-1", "total": 27.5})
    searched = track("Products Searched", properties={"query": "tea"})
    body = post("batch", {"batch": [order, refund, searched]}, key=write_key).json()

    assert body["accepted"] == 3, body
    paid = Event.objects.get(name="order_paid")
    assert (paid.kind, paid.properties["amount"], paid.properties["coupon_code"]) == ("business", "27.5", "SPRING")
    assert Event.objects.get(name="order_refunded").properties["amount"] == "27.5"
    assert Event.objects.get(name="search").properties["query"] == "tea"


def test_an_order_total_with_fractions_of_a_cent_is_refused_naming_the_total(write_key):
    order = track("Order Completed", properties={"order_id": "o-2", "total": 19.999})
    body = post("batch", {"batch": [order]}, key=write_key).json()

    assert body["rejected"][0]["errors"] == {"properties.total": ["has more than two decimal places"]}
    assert not Event.objects.exists()


def test_alias_merges_the_previous_user_into_the_new_one(write_key):
    post("track", {"event": "Viewed", "userId": "guest-42", "messageId": "g1"}, key=write_key)
    response = post("alias", {"previousId": "guest-42", "userId": "u-9", "messageId": "alias-1"}, key=write_key)

    assert response.status_code == 200 and response.json() == {"success": True}
    merge = ProfileMerge.objects.get()
    assert (merge.merged_user_id, merge.into.user_id) == ("guest-42", "u-9")
    assert merge.reason.startswith("segment alias")
    assert Identity.objects.get(kind="anonymous_id", value="guest-42").profile.user_id == "u-9"


def test_identify_ties_the_anonymous_visitor_and_merges_a_profile_sharing_the_email(write_key):
    post("identify", {"userId": "old-account", "traits": {"email": "li@example.com"}}, key=write_key)
    post("page", {"anonymousId": "anon-3", "properties": {"url": "https://shop.example.com/"}}, key=write_key)
    response = post(
        "identify", {"userId": "u-5", "anonymousId": "anon-3", "traits": {"email": "LI@example.com"}}, key=write_key
    )

    assert response.status_code == 200
    assert ProfileMerge.objects.get().merged_user_id == "old-account"
    survivor = Identity.objects.get(kind="anonymous_id", value="anon-3").profile
    assert survivor.user_id == "u-5"
    assert Identity.objects.get(kind="cookie", value="anon-3").profile == survivor


@pytest.mark.parametrize("path", ["t", "track"])
def test_analytics_js_plain_text_calls_with_the_write_key_in_the_body_are_accepted(write_key, path):
    message = {"event": "Clicked", "anonymousId": "a-1", "messageId": f"m-{path}", "writeKey": write_key}
    response = post(path, message, key=None, content_type="text/plain")

    assert response.status_code == 200
    assert response.json() == {"success": True}
    assert response["Access-Control-Allow-Origin"] == "*"
    assert Event.objects.get().name == "clicked"


def test_a_refused_single_call_answers_400_with_the_reason(write_key):
    response = post("track", {"userId": "u-1", "messageId": "m"}, key=write_key)

    assert response.status_code == 400
    body = response.json()
    assert (body["success"], body["code"]) == (False, "invalid_request")
    assert "event is required for a track call" in body["message"]
    assert body["errors"] == {"event": ["is required for a track call"]}
    assert SegmentRejection.objects.count() == 1


def test_gzip_bodies_are_accepted(write_key):
    response = post("batch", {"batch": [track()]}, key=write_key, gzipped=True)

    assert response.status_code == 200 and response.json()["accepted"] == 1


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"", "invalid_json"),
        (b'{"batch": [NaN]}', "invalid_json"),
        (b"[1, 2]", "invalid_request"),
        (b'{"batch": []}', "invalid_request"),
        (b'{"batch": {"type": "track"}}', "invalid_request"),
        (b'{"batch": [{"type": "track"}], "sentAt": "soon"}', "invalid_request"),
    ],
)
def test_a_body_that_is_no_batch_is_refused_with_400_and_nothing_stored(write_key, body, code):
    response = post("batch", body, key=write_key)

    assert response.status_code == 400
    assert response.json()["code"] == code and response.json()["message"]
    assert not Event.objects.exists()


def test_a_body_that_is_not_gzip_though_it_says_so_is_refused(write_key):
    response = Client().post(
        f"{BASE}/batch",
        data=b"plain",
        content_type="application/json",
        HTTP_AUTHORIZATION=basic(write_key),
        HTTP_CONTENT_ENCODING="gzip",
    )
    assert response.status_code == 400 and response.json()["code"] == "invalid_gzip"


def test_a_batch_over_500_kb_is_refused_whole(write_key):
    batch = [track(properties={"blob": "x" * 20_000}) for _ in range(26)]
    response = post("batch", {"batch": batch}, key=write_key)

    assert response.status_code == 400
    assert response.json()["code"] == "payload_too_large"
    assert not Event.objects.exists()


def test_a_gzipped_batch_over_500_kb_once_decompressed_is_refused_whole(write_key):
    batch = [track(properties={"blob": "x" * 20_000}) for _ in range(26)]
    response = post("batch", {"batch": batch}, key=write_key, gzipped=True)

    assert response.status_code == 400 and "decompressed" in response.json()["message"]


def test_a_message_over_32_kb_is_refused_alone_in_a_batch_and_with_400_alone(write_key):
    big = track(properties={"blob": "x" * 33_000})
    body = post("batch", {"batch": [track(), big]}, key=write_key).json()

    assert body["accepted"] == 1
    assert body["rejected"][0]["index"] == 1
    assert "at most 32768 bytes per message" in body["rejected"][0]["errors"]["non_field_errors"][0]
    single = post("track", {k: v for k, v in big.items() if k != "type"}, key=write_key)
    assert single.status_code == 400 and single.json()["code"] == "payload_too_large"


def test_no_write_key_answers_401_asking_for_basic_auth():
    response = post("batch", {"batch": [track()]}, key=None)

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Basic realm="opsloop"'
    assert response.json()["success"] is False


@pytest.mark.parametrize(
    "header",
    ["Basic " + base64.b64encode(b"olk_nope_nope:").decode(), "Basic %%%", "Bearer abc", "Api-Key olk_a_b"],
)
def test_a_wrong_write_key_answers_401(header):
    response = Client().post(
        f"{BASE}/batch",
        data=json.dumps({"batch": [track()]}),
        content_type="application/json",
        HTTP_AUTHORIZATION=header,
    )
    assert response.status_code == 401
    assert not Event.objects.exists()


def test_a_revoked_key_answers_401(write_key):
    from access.models import ApiKey

    access_services.revoke_api_key(api_key=ApiKey.objects.get(name="shop-web"))

    assert post("batch", {"batch": [track()]}, key=write_key).status_code == 401


def test_a_key_without_events_write_answers_403():
    key = access_services.create_api_key(name="reader", scopes=["profiles:read"]).plaintext

    response = post("batch", {"batch": [track()]}, key=key)

    assert response.status_code == 403
    assert "events:write" in response.json()["message"]
    assert not Event.objects.exists()


def test_a_cors_preflight_is_answered_for_any_origin():
    response = Client().options(f"{BASE}/t", HTTP_ORIGIN="https://shop.example.com")

    assert response.status_code == 204
    assert response["Access-Control-Allow-Origin"] == "*"
    assert "Authorization" in response["Access-Control-Allow-Headers"]


def test_project_settings_point_analytics_js_at_this_server(write_key):
    response = Client().get(f"{BASE}/projects/{write_key}/settings")

    assert response.status_code == 200
    segment_io = response.json()["integrations"]["Segment.io"]
    assert segment_io["apiHost"] == "testserver/ingest/segment/v1"
    assert segment_io["protocol"] == "http"
    assert list(response.json()["integrations"]) == ["Segment.io"]  # no destination bundles to load
    assert Client().get(f"{BASE}/projects/olk_x_y/settings").status_code == 401
    reader = access_services.create_api_key(name="reader", scopes=["profiles:read"]).plaintext
    assert Client().get(f"{BASE}/projects/{reader}/settings").status_code == 403


def test_the_analytics_js_bundle_is_served_and_nothing_outside_its_folder(settings, tmp_path):
    (tmp_path / "standalone.js").write_text("window.loaded = true;")
    (tmp_path.parent / "secret.js").write_text("nope")
    settings.OPSLOOP_ANALYTICS_NEXT_DIR = str(tmp_path)

    response = Client().get("/ingest/segment/analytics-next/bundles/standalone.js")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/javascript"
    assert b"".join(response.streaming_content) == b"window.loaded = true;"
    for name in ("..%2Fsecret.js", "missing.js", "standalone.css"):
        assert Client().get(f"/ingest/segment/analytics-next/bundles/{name}").status_code == 404


def test_a_message_id_no_utf8_text_can_hold_is_refused_alone(write_key):
    # json.dumps writes the lone surrogate as the escape \ud800, as a client might send it.
    batch = [track(messageId="bad-\ud800-id"), track("Added To Cart"), {**track(), "type": "tr\udfffack"}]
    reply = post("batch", {"batch": batch}, key=write_key)
    body = reply.json()
    assert reply.status_code == 200 and body["accepted"] == 1
    first, third = body["rejected"]
    assert first["index"] == 0 and first["errors"] == {"messageId": ["is not valid Unicode (lone surrogate)"]}
    assert first["messageId"] == "bad-\\ud800-id"  # answered and kept escaped, as it can be stored
    assert third["index"] == 2 and third["type"] == "tr\\udfffack"
    assert Event.objects.count() == 1
    assert SegmentRejection.objects.filter(message_id="bad-\\ud800-id").exists()
