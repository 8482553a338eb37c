"""Channel quality, the ROI overview and the coupon indicators: exact numbers on hand-made rows,
checked against an independent computation from those rows."""

from __future__ import annotations

import csv
import io
import uuid
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from coupons import selectors, services
from coupons.models import Redemption
from indicators.registry import daily_values, get_indicator
from profiles.selectors import profile_for_user_id
from tests.factories.coupons import CouponRuleFactory, person
from tracking import services as tracking_services
from tracking.models import Event

pytestmark = pytest.mark.django_db
D = Decimal
START, END, TODAY = date(2026, 9, 1), date(2026, 9, 10), date(2026, 9, 12)


def at(day: int, hour: int = 10, month: int = 9) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=UTC)


def send(user_id: str, name: str, when: datetime, source: str = "", **properties) -> None:
    """One event through the product's ingestion path (profiles and first-seen times included)."""
    event = {"event_id": str(uuid.uuid4()), "name": name, "timestamp": when.isoformat(), "user_id": user_id}
    if source:
        event["context"] = {"utm_source": source}
    if properties:
        event["properties"] = properties
    result = tracking_services.ingest_events(events=[event])
    assert result.accepted == 1, result.rejected


def redeem(user_id: str, rule, order_id: str, amount: str) -> Redemption:
    coupon = services.issue_coupon(rule=rule, profile=profile_for_user_id(user_id))
    return services.redeem_coupon(code=coupon.code, user_id=user_id, order_id=order_id, order_amount=D(amount))


@pytest.fixture
def channels():
    twenty, five = CouponRuleFactory(value=D("20.00")), CouponRuleFactory(value=D("5.00"))
    # ads: three people joined; one converted with a coupon and came back on day 7.
    send("a1", "page_view", at(1), "ads")
    send("a1", "page_view", at(4), "newsletter")  # a later touch does not move the first
    send("a1", "order_paid", at(3), order_id="o-a1-1", amount="100.00")
    send("a1", "order_paid", at(9), order_id="o-a1-2", amount="50.00")
    send("a1", "app_open", at(8, 23))  # day 7 after 09-01
    redeem("a1", twenty, "o-a1-1", "100.00")
    send("a2", "page_view", at(2), "ads")
    send("a2", "app_open", at(10))  # day 8: not day 7
    redeem("a2", five, "o-a2-x", "40.00")  # a redemption without a paid order: a2 is not converted
    send("a3", "app_open", at(5), "ads")
    send("a3", "app_open", at(12))  # day 7 is today: not complete, a3 is not in the retention base
    # newsletter: converted, retained; its coupon order was rolled back, so it cost nothing.
    send("n1", "page_view", at(3), "newsletter")
    send("n1", "order_paid", at(4), order_id="o-n1", amount="80.00")
    send("n1", "app_open", at(10, 0))
    redeem("n1", twenty, "o-n1", "80.00")
    services.rollback_order(order_id="o-n1")
    # direct: no source on the first event.
    send("d1", "app_open", at(6))
    send("d1", "order_paid", at(7), order_id="o-d1", amount="30.00")
    redeem("d1", five, "o-d1", "30.00")
    # Outside the window: joined before it, or after it.
    send("old", "page_view", at(20, month=8), "ads")
    send("old", "order_paid", at(5), order_id="o-old", amount="999.00")
    send("late", "page_view", at(11), "ads")
    return twenty, five


def independent(today: date) -> dict[str, dict]:
    """The same numbers from the raw rows, in Python."""
    by_user = defaultdict(list)
    for e in Event.objects.order_by("timestamp", "id"):
        by_user[e.user_id].append(e)
    cost = defaultdict(lambda: D("0"))
    for r in Redemption.objects.filter(rolled_back_at__isnull=True):
        cost[r.user_id] += r.discount
    out: dict[str, dict] = {}
    for user, events in by_user.items():
        first = events[0]
        joined = first.timestamp.astimezone(UTC)
        if not START <= joined.date() <= END:
            continue
        source = first.utm_source or "(direct)"
        row = out.setdefault(
            source,
            {"new_users": 0, "converted": 0, "retention_base": 0, "retained": 0, "coupon_cost": D(0), "revenue": D(0)},
        )
        orders = [e for e in events if e.name == "order_paid" and e.timestamp >= first.timestamp]
        day7 = joined.date() + timedelta(days=7)
        row["new_users"] += 1
        if orders:
            row["converted"] += 1
            row["coupon_cost"] += cost[user]
            row["revenue"] += sum(D(e.properties["amount"]) for e in orders)
        if day7 < today:
            row["retention_base"] += 1
            row["retained"] += any(e.timestamp.astimezone(UTC).date() == day7 for e in events)
    return out


def test_channel_quality_matches_the_raw_rows(events_engine, channels):
    events_engine.ready()
    rows = selectors.channel_quality(start=START, end=END, today=TODAY)
    got = {
        r.source: {
            k: getattr(r, k) for k in ("new_users", "converted", "retention_base", "retained", "coupon_cost", "revenue")
        }
        for r in rows
    }
    assert got == independent(TODAY)
    ads, direct, newsletter = (next(r for r in rows if r.source == s) for s in ("ads", "(direct)", "newsletter"))
    assert [r.source for r in rows] == ["ads", "(direct)", "newsletter"]  # most new users first
    assert (ads.new_users, ads.converted, ads.retention_base, ads.retained) == (3, 1, 2, 1)
    assert (ads.coupon_cost, ads.revenue, ads.coupon_cost_per_converted) == (D("20.00"), D("150.00"), D("20.00"))
    assert ads.conversion_rate == round(1 / 3, 4) and ads.retention_d7 == 0.5
    assert (newsletter.coupon_cost, newsletter.revenue, newsletter.retention_d7) == (D("0.00"), D("80.00"), 1.0)
    assert (direct.coupon_cost, direct.retention_base, direct.retention_d7) == (D("5.00"), 0, None)


def test_channel_quality_a_day_later_counts_the_completed_day_7(events_engine, channels):
    events_engine.ready()
    rows = {r.source: r for r in selectors.channel_quality(start=START, end=END, today=TODAY + timedelta(days=1))}
    assert (rows["ads"].retention_base, rows["ads"].retained) == (3, 2)  # a3 came back on its day 7
    assert rows["(direct)"].retention_base == 0  # d1's day 7 is 09-13, today
    assert {s: (r.retention_base, r.retained) for s, r in rows.items()} == {
        s: (v["retention_base"], v["retained"]) for s, v in independent(TODAY + timedelta(days=1)).items()
    }


def _event(name: str, when: datetime, *, user=None, anonymous=None, source: str = "", **properties) -> dict:
    event = {"event_id": str(uuid.uuid4()), "name": name, "timestamp": when.isoformat(), "properties": properties}
    event |= {"user_id": user} if user else {}
    event |= {"anonymous_id": anonymous} if anonymous else {}
    event |= {"context": {"utm_source": source}} if source else {}
    return event


def test_channel_quality_follows_the_identity_mapping_on_both_engines(events_engine, monkeypatch):
    from tracking.events_store import clickhouse as clickhouse_store

    # Keys asked about a few at a time: a pair found in two slices counts once.
    monkeypatch.setattr(clickhouse_store, "KEY_BYTES_PER_QUESTION", 10)
    result = tracking_services.ingest_events(
        events=[
            _event("page_view", at(2, 10), user="u1", source="ads"),
            _event("app_open", at(2, 11), user="u1", anonymous="cookie-1"),  # cookie-1 is u1's
            _event("page_view", at(3, 10), user="u2", source="search"),
            # On u1's day 7, an event with u1's cookie and u2's user id: u2's, by the user id.
            _event("app_open", at(9, 10), user="u2", anonymous="cookie-1"),
            _event("page_view", at(1, 8), anonymous="cookie-9", source="partner"),  # no profile
        ]
    )
    assert result.accepted == 5
    send("u2", "order_paid", at(4), order_id="o-u2", amount="12.34")
    # An order found through both of its keys, each in a slice of its own, counts once.
    send_order = _event("order_paid", at(5), user="u2", anonymous="cookie-1", order_id="o-u2b", amount="0.01")
    assert tracking_services.ingest_events(events=[send_order]).accepted == 1
    events_engine.ready()

    rows = {r.source: r for r in selectors.channel_quality(start=START, end=END, today=TODAY)}

    assert set(rows) == {"ads", "search"}
    ads, search = rows["ads"], rows["search"]
    assert (ads.new_users, ads.converted, ads.retention_base, ads.retained) == (1, 0, 1, 0)
    assert (search.new_users, search.converted, search.revenue) == (1, 1, D("12.35"))


def test_channel_quality_takes_keys_with_braces_quotes_and_backslashes_on_both_engines(events_engine):
    # Keys are the product's strings: none of their characters may be read as the statement's.
    result = tracking_services.ingest_events(
        events=[
            _event("page_view", at(2, 10), user="u{0}'x", anonymous="c{ookie}\\1", source="ads"),
            _event("app_open", at(9, 10), anonymous="c{ookie}\\1"),  # the user's own cookie, on day 7
            _event("page_view", at(3, 10), user="{start}", source="search"),
        ]
    )
    assert result.accepted == 3
    send("{start}", "order_paid", at(4), order_id="o-brace", amount="7.50")
    events_engine.ready()

    rows = {r.source: r for r in selectors.channel_quality(start=START, end=END, today=TODAY)}

    ads, search = rows["ads"], rows["search"]
    assert (ads.new_users, ads.retention_base, ads.retained) == (1, 1, 1)
    assert (search.new_users, search.converted, search.revenue) == (1, 1, D("7.50"))


def test_channel_quality_answers_503_with_the_reason_while_clickhouse_loads_its_history(
    channels, settings, chdb_url, make_api_client
):
    from tracking.events_store import clickhouse_store

    settings.OPSLOOP_EVENTS_STORE = "clickhouse"  # switched on after the events were stored
    settings.OPSLOOP_CLICKHOUSE_URL = chdb_url
    clickhouse_store().truncate()

    reply = make_api_client("manage").get("/api/v1/channel-quality", {"start": "2026-09-01", "end": "2026-09-10"})

    assert reply.status_code == 503 and reply["Retry-After"]
    assert reply.json()["reason"] == "EVENTS_STORE_LOADING" and "events wait" in reply.json()["detail"]


def test_channel_quality_api_and_its_bad_input(channels, make_api_client):
    client = make_api_client("manage")
    body = client.get("/api/v1/channel-quality", {"start": "2026-09-01", "end": "2026-09-10"}).json()
    ads = next(r for r in body["channels"] if r["source"] == "ads")
    assert ads["new_users"] == 3 and ads["coupon_cost"] == "20.00" and ads["revenue"] == "150.00"
    assert client.get("/api/v1/channel-quality", {"start": "2026-09-10", "end": "2026-09-01"}).json() == {
        "end": ["Must be on or after start."]
    }
    missing = client.get("/api/v1/channel-quality", {"end": "2026-09-01"})
    assert missing.status_code == 400 and "start" in missing.json()
    assert make_api_client("profiles:read").get("/api/v1/channel-quality").status_code == 403


def test_channel_quality_admin_page_has_the_table_chart_and_csv(channels, client, make_staff):
    client.force_login(make_staff("Analyst"))
    url = reverse("admin:coupons_channel_quality")
    page = client.get(url, {"start": "2026-09-01", "end": "2026-09-10"})
    html = page.content.decode()
    assert page.status_code == 200 and 'id="channel-chart"' in html and "chart.umd.min.js" in html
    assert page.context["chart_data"]["sources"] == ["ads", "(direct)", "newsletter"]
    exported = client.get(url, {"start": "2026-09-01", "end": "2026-09-10", "format": "csv"})
    lines = list(csv.reader(io.StringIO(exported.content.decode())))
    assert lines[0][:4] == ["Source", "New users (people)", "Converted (people)", "Conversion rate (fraction of 1)"]
    assert lines[0][-1] == "Revenue (¥)"
    assert {row[0]: row[1] for row in lines[1:]} == {"ads": "3", "(direct)": "1", "newsletter": "1"}


# --- ROI overview --------------------------------------------------------------------------------


def test_roi_overview_gives_each_rule_its_report_numbers(channels):
    twenty, five = channels
    overview = dict(selectors.roi_overview())
    for rule in (twenty, five):
        assert overview[rule].as_dict() == selectors.rule_report(rule=rule).as_dict()
    assert (overview[twenty].spent, overview[twenty].order_revenue, overview[twenty].roi) == (
        D("20.00"),
        D("100.00"),
        4.0,
    )
    assert (overview[five].issued, overview[five].redeemed, overview[five].spent) == (2, 2, D("10.00"))


def _admin_queries(client, url) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url).status_code == 200
    return len(queries)


def test_roi_overview_page_runs_the_same_queries_for_one_rule_or_many(client, make_staff):
    client.force_login(make_staff("Operations"))
    url = reverse("admin:coupons_couponrule_roi")
    rule = CouponRuleFactory()
    services.issue_coupon(rule=rule, profile=person())
    one = _admin_queries(client, url)
    for _ in range(5):
        services.issue_coupon(rule=CouponRuleFactory(), profile=person())
    assert _admin_queries(client, url) == one


def test_roi_overview_page_and_csv(channels, client, make_staff):
    twenty, _ = channels
    client.force_login(make_staff("Analyst"))
    url = reverse("admin:coupons_couponrule_roi")
    page = client.get(url)
    assert page.status_code == 200 and 'id="roi-chart"' in page.content.decode()
    assert page.context["chart_data"]["spent"] == [10.0, 20.0]  # newest rule first
    lines = list(csv.reader(io.StringIO(client.get(url, {"format": "csv"}).content.decode())))
    assert lines[0] == [
        "Rule id", "Rule", "State", "Issued (coupons)", "Redeemed (coupons)",
        "Spent (¥)", "Order revenue (¥)", "ROI (ratio)",
    ]  # fmt: skip
    assert lines[2] == [str(twenty.pk), twenty.name, "active", "2", "1", "20.00", "100.00", "4.0"]


def test_roi_overview_needs_the_report_permission(client, make_staff):
    client.force_login(make_staff("Customer service"))
    assert client.get(reverse("admin:coupons_couponrule_roi")).status_code == 403


# --- indicators ----------------------------------------------------------------------------------


def test_coupon_indicators_are_registered_and_count_standing_redemptions_per_day(channels):
    moved = {"o-a1-1": at(3), "o-a2-x": at(3, 23), "o-d1": at(7), "o-n1": at(4)}
    for order_id, when in moved.items():
        Redemption.objects.filter(order_id=order_id).update(redeemed_at=when)
    spend = dict(daily_values("coupon_spend", start=START, end=END))
    assert spend[date(2026, 9, 3)] == D("25.00")
    assert spend[date(2026, 9, 4)] == D("0")  # n1's redemption was rolled back
    assert spend[date(2026, 9, 7)] == D("5.00")
    assert sum(spend.values()) == D("30.00")
    redeemed = dict(daily_values("coupons_redeemed", start=START, end=END))
    assert redeemed[date(2026, 9, 3)] == 2 and sum(redeemed.values()) == 3
    revenue = dict(daily_values("coupon_order_revenue", start=START, end=END))
    assert revenue[date(2026, 9, 3)] == D("140.00")
    assert get_indicator("coupon_spend").fold == "sum" and get_indicator("coupon_spend").unit == "money"
    assert get_indicator("coupons_issued").daily(START, END) == {}  # issued today, outside the window


def test_roi_and_channel_pages_write_money_percentages_and_ratios_through_the_helper(channels, client, make_staff):
    twenty, _ = channels
    client.force_login(make_staff("Analyst"))
    roi = client.get(reverse("admin:coupons_couponrule_roi"))
    row = next(r for r in roi.context["rows"] if r["rule"] == twenty)
    assert (row["spent"], row["revenue"], row["roi"]) == ("¥20.00", "¥100.00", "4.00")
    assert roi.context["totals"]["spent"] == "¥30.00"
    page = client.get(reverse("admin:coupons_channel_quality"), {"start": "2026-09-01", "end": "2026-09-10"})
    rows = {r["source"]: r for r in page.context["rows"]}
    # ads: 3 joined, 1 converted; its coupon cost is the 20.00 discount of a1's order.
    assert rows["ads"]["conversion_rate"] == "33.3 %" and rows["ads"]["coupon_cost"] == "¥20.00"
    assert "33.3 %" in page.content.decode()
