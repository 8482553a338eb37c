"""Segment's and RudderStack's own libraries, unchanged, pointed at a running opsloop: only their
host is switched, and their events, identities and merges arrive."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from access import services as access_services
from profiles.models import Identity, Profile, ProfileMerge, SegmentRejection
from profiles.segment import NAMESPACE
from tracking.models import Event

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture(scope="session")
def segment_sdks() -> Path:
    """The JavaScript libraries, installed by the project's own setup script (a no-op once they
    are in place; `make test` runs it too)."""
    subprocess.run([str(ROOT / "scripts" / "ensure-segment-sdks.sh")], check=True, timeout=600)
    return ROOT / ".node" / "node_modules"


@pytest.fixture
def write_key(transactional_db) -> str:
    """A write key: an opsloop API key with `events:write` only, as a product team gets one."""
    return access_services.create_api_key(name=f"web-{uuid.uuid4().hex[:8]}", scopes=["events:write"]).plaintext


@pytest.fixture(autouse=True)
def close_client_connections():
    """The libraries keep their HTTP connection open, and with it a thread of the live server
    and its database connection; closed after each test, so the test database can be dropped."""
    yield
    from rudderstack.analytics import request as rudder_request
    from segment.analytics import request as segment_request

    segment_request._session.close()
    rudder_request._session.close()


def send_every_call(client, prefix: str) -> str:
    """One of each call through a Python library (the two share analytics-python's interface);
    returns the messageId of the tracked order."""
    user = f"{prefix}-1"
    order_id = str(uuid.uuid4())
    client.identify(user, {"email": f"{prefix}@example.com", "phone": "+86 138 0013 8000", "plan": "pro"})
    client.track(user, "Order Completed", {"order_id": "o-1", "total": 99.9, "coupon": "SPRING"}, message_id=order_id)
    client.track(user, "Order Completed", {"order_id": "o-1", "total": 99.9}, message_id=order_id)  # a retry
    client.track(user, "下单")  # refused alone: no character of an event name survives
    client.page(
        anonymous_id=f"{prefix}-anon",
        name="Landing",
        properties={"url": "https://shop.example.com/?utm_source=wechat&utm_medium=social"},
        context={"campaign": {"source": "wechat", "medium": "social", "name": "moments"}},
    )
    client.screen(user, name="Cart", properties={"items": 2})
    client.group(user, "acme", {"employees": 40})
    client.alias(f"{prefix}-guest", user)
    client.identify(user, anonymous_id=f"{prefix}-anon")
    client.flush()
    return order_id


def assert_every_call_arrived(prefix: str, order_message_id: str) -> None:
    user = f"{prefix}-1"
    order = Event.objects.get(event_id=uuid.uuid5(NAMESPACE, order_message_id))
    assert (order.name, order.user_id, order.properties["amount"]) == ("order_paid", user, "99.9")
    assert order.properties["coupon_code"] == "SPRING"
    assert Event.objects.filter(name="order_paid").count() == 1  # the retry was a duplicate
    page = Event.objects.get(name="page_view")
    assert (page.anonymous_id, page.utm_source, page.utm_medium, page.utm_campaign) == (
        f"{prefix}-anon",
        "wechat",
        "social",
        "moments",
    )
    assert page.path == "/"
    screen = Event.objects.get(name="screen_view")
    assert (screen.kind, screen.properties["name"]) == ("traffic", "Cart")
    profile = Profile.objects.get(user_id=user)
    assert (profile.email, profile.phone) == (f"{prefix}@example.com", "+8613800138000")
    assert profile.traits["plan"] == "pro" and profile.traits["group_id"] == "acme"
    identities = set(Identity.objects.filter(profile=profile).values_list("kind", "value"))
    assert {
        ("email", f"{prefix}@example.com"),
        ("phone", "+8613800138000"),
        ("anonymous_id", f"{prefix}-anon"),
        ("cookie", f"{prefix}-anon"),
        ("anonymous_id", f"{prefix}-guest"),
    } <= identities
    refused = SegmentRejection.objects.get()
    assert (refused.message_type, list(refused.errors)) == ("track", ["event"])


def test_segment_analytics_python_sends_to_opsloop_when_its_host_is_switched(live_server, write_key):
    from segment.analytics import Client

    errors: list = []
    client = Client(
        write_key, host=f"{live_server.url}/ingest/segment", on_error=lambda e, _batch: errors.append(e), max_retries=1
    )
    order = send_every_call(client, "seg")
    client.shutdown()

    assert errors == []
    assert_every_call_arrived("seg", order)


def test_segment_analytics_python_gzipped_batches_are_accepted(live_server, write_key):
    from segment.analytics import Client

    errors: list = []
    client = Client(
        write_key, host=f"{live_server.url}/ingest/segment", gzip=True, on_error=lambda e, _b: errors.append(e)
    )
    for i in range(250):
        client.track(f"u-{i % 7}", "App Opened", {"n": i})
    client.flush()
    client.shutdown()

    assert errors == []
    assert Event.objects.filter(name="app_opened").count() == 250


def test_rudder_sdk_python_sends_to_opsloop_when_its_data_plane_url_is_switched(live_server, write_key):
    from rudderstack.analytics import Client

    errors: list = []
    # The module-level `rudder_analytics.dataPlaneUrl = ...` sets this same host.
    client = Client(
        write_key,
        host=f"{live_server.url}/ingest/segment",
        gzip=True,
        on_error=lambda e, _batch: errors.append(e),
        max_retries=1,
    )
    order = send_every_call(client, "rudder")
    client.shutdown()

    assert errors == []
    assert_every_call_arrived("rudder", order)


def test_a_python_client_with_a_wrong_write_key_is_told_401(live_server, write_key):
    from segment.analytics import Client

    errors: list = []
    client = Client(
        "olk_00000000_wrong", host=f"{live_server.url}/ingest/segment", on_error=lambda e, _b: errors.append(e)
    )
    client.track("u-1", "App Opened")
    client.flush()
    client.shutdown()

    assert [getattr(e, "status", None) for e in errors] == [401]
    assert not Event.objects.exists()


def test_segment_analytics_node_sends_to_opsloop_when_its_host_is_switched(live_server, write_key, segment_sdks):
    node = shutil.which("node")
    assert node, "Node.js is missing: scripts/ensure-segment-sdks.sh installs it where it may"
    script = Path(__file__).with_name("segment_node_client.js")
    done = subprocess.run(
        [node, str(script), live_server.url, write_key],
        env={**os.environ, "NODE_PATH": str(segment_sdks)},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"failures": []}
    order = Event.objects.get(name="order_paid")
    assert (order.user_id, order.properties["amount"], order.properties["order_id"]) == ("node-1", "42.5", "n-1")
    assert Event.objects.get(name="product_viewed").context_extra["library"]["name"] == "@segment/analytics-node"
    page = Event.objects.get(name="page_view")
    assert (page.anonymous_id, page.utm_source, page.properties["name"]) == ("node-anon", "node", "Pricing")
    assert Event.objects.filter(name="screen_view", user_id="node-1").exists()
    profile = Profile.objects.get(user_id="node-1")
    assert profile.email == "node@example.com" and profile.traits["group_id"] == "acme"
    assert Identity.objects.get(kind="cookie", value="node-anon").profile == profile
    assert Identity.objects.get(kind="anonymous_id", value="node-guest").profile == profile
    assert not ProfileMerge.objects.exists()  # nothing held those ids before: tied, not merged
