"""analytics.js (`@segment/analytics-next`), served by opsloop itself, on a shop's page in a real
headless Chromium: the page view with its UTM source, a tracked click and an identify arrive, and
the anonymous visitor becomes the identified user."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import pytest

from access import services as access_services
from profiles.models import Identity, ProfileMerge
from profiles.services import identify
from tracking.models import Event

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parent.parent.parent

# Segment's snippet, reduced to what it does: a queue of calls under `window.analytics` that the
# library replays once loaded. Only the two marked lines differ from a page sending to Segment.
PAGE = """<!doctype html>
<html><head><title>Shop</title>
<script>
  !function(){
    var analytics = window.analytics = window.analytics || [];
    analytics.methods = ["track", "page", "identify", "alias", "group", "screen", "ready", "reset", "trackClick"];
    analytics.factory = function (method) {
      return function () {
        var args = Array.prototype.slice.call(arguments); args.unshift(method); analytics.push(args); return analytics;
      };
    };
    for (var i = 0; i < analytics.methods.length; i++) {
      var name = analytics.methods[i]; analytics[name] = analytics.factory(name);
    }
    analytics._writeKey = "%(write_key)s";
    analytics._cdn = "%(origin)s/ingest/segment";                          // opsloop, not cdn.segment.com
    analytics.page("Landing");
  }();
</script>
<script async src="/ingest/segment/analytics-next/bundles/standalone.js"></script>
</head>
<body>
  <button id="buy">Buy</button>
  <form id="login"><input id="user" value="web-u1"><input id="email" value="Web@Example.com">
    <button id="sign-in" type="button">Sign in</button></form>
  <script>
    document.getElementById("buy").addEventListener("click", function () {
      analytics.track("Buy Clicked", {sku: "sku-1", price: 12.5});
    });
    document.getElementById("sign-in").addEventListener("click", function () {
      analytics.identify(document.getElementById("user").value, {email: document.getElementById("email").value});
    });
  </script>
</body></html>
"""


@pytest.fixture(scope="module")
def analytics_js() -> None:
    """The library as the project's setup installs it (a no-op once it is in place)."""
    subprocess.run([str(ROOT / "scripts" / "ensure-segment-sdks.sh")], check=True, timeout=600)


def wait_for(condition, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the events")
        time.sleep(0.25)


def test_analytics_js_served_by_opsloop_sends_page_views_clicks_and_identify(analytics_js, page, live_server):
    write_key = access_services.create_api_key(name=f"web-{uuid.uuid4().hex[:6]}", scopes=["events:write"]).plaintext
    # An earlier visit of the same person on another device, already known by e-mail.
    identify(user_id="web-old", identities=[("email", "web@example.com")])
    landing = f"{live_server.url}/shop/landing?utm_source=newsletter&utm_medium=email&utm_campaign=spring"
    html = PAGE % {"write_key": write_key, "origin": live_server.url}
    page.route(
        f"{live_server.url}/shop/**", lambda route: route.fulfill(status=200, content_type="text/html", body=html)
    )
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))

    page.goto(landing)
    view = wait_for(lambda: Event.objects.filter(name="page_view").first())
    page.click("#buy")
    click = wait_for(lambda: Event.objects.filter(name="buy_clicked").first())
    page.click("#sign-in")
    anonymous = view.anonymous_id
    profile = wait_for(lambda: Identity.objects.filter(kind="cookie", value=anonymous).first()).profile

    assert anonymous and view.user_id is None
    assert (view.kind, view.path, view.url) == ("traffic", "/shop/landing", landing)
    assert (view.utm_source, view.utm_medium, view.utm_campaign) == ("newsletter", "email", "spring")
    assert view.properties["name"] == "Landing" and view.context_extra["library"]["name"] == "analytics.js"
    assert (click.anonymous_id, click.properties) == (anonymous, {"sku": "sku-1", "price": 12.5})
    assert click.utm_source == "newsletter"
    assert profile.user_id == "web-u1" and profile.email == "web@example.com"
    assert Identity.objects.get(kind="anonymous_id", value=anonymous).profile == profile
    merge = ProfileMerge.objects.get()
    assert (merge.merged_user_id, merge.into) == ("web-old", profile)
    # Everything came from opsloop, the library included: no CDN, no request anywhere else.
    assert f"{live_server.url}/ingest/segment/analytics-next/bundles/standalone.js" in requests
    assert f"{live_server.url}/ingest/segment/v1/projects/{write_key}/settings" in requests
    assert all(url.startswith(live_server.url) for url in requests), requests
