"""The anomaly detector's reads of events (the sources that moved, events per hour) on each events
store: the same answers from PostgreSQL and from ClickHouse fed through the real shipping path,
on chosen edge cases and on drawn events and windows."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from indicators import anomalies
from tests.factories.tracking import EventFactory
from tracking.events_store import events_store
from tracking.events_store.base import SourceWindow

H = datetime(2026, 3, 2, 10, tzinfo=UTC)  # the window checked: [10:00, 11:00)
BEFORE = H - timedelta(days=1)  # its comparison: the same hour the day before


def store(at: datetime, *, name: str = "app_open", source: str = "", user=None, anonymous=None, **properties):
    return EventFactory(
        name=name, timestamp=at, utm_source=source, user_id=user, anonymous_id=anonymous, properties=properties
    )


def store_json(at: datetime, properties: str, **fields):
    """An event whose properties are this JSON text as PostgreSQL keeps it (a number of more digits
    than a float holds)."""
    from django.db import connection

    event = store(at, **fields)
    with connection.cursor() as cursor:
        cursor.execute("UPDATE tracking_event SET properties = %s::jsonb WHERE id = %s", [properties, event.pk])
    return event


@pytest.fixture
def edge_events(events_engine, stored_before_amount_check):
    """Events at the edges of both reads, stored and made readable on the engine under test."""
    m = timedelta(minutes=1)
    store(H + 5 * m, source="ads", user="u1")
    store(H + 6 * m, source="ads", anonymous="a1")  # anonymous only
    store(H + 7 * m, source="ads", anonymous="a1")  # the same person again
    store(H + 8 * m, source="ads", user="u3", anonymous="a1")  # the user id decides: another person
    store(H + 9 * m, name="order_paid", source="ads", anonymous="a1", amount="12.50")
    # A JSON number of 27 digits: its text as written, not a double's, rounded to cents.
    store_json(H + 10 * m, '{"amount": 123456789012345.123456789012}', name="order_paid", source="ads", user="u1")
    store(H + 11 * m, name="order_paid", source="", user="u2", amount="0.000000000001")  # no source
    store(H + 12 * m, name="order_paid", source="", user="u2", amount=1e-05)  # jsonb reads it 0.00001
    store(H + 13 * m, name="order_paid", source="", user="u2", note={"amount": "5"})  # only a nested amount
    store(H + 14 * m, name="order_paid", source="", user="u2", amount=None)
    store(H + 15 * m, name="order_refunded", source="ads", user="u1", amount="3.00")  # not an order paid
    store(H + 16 * m, name="app_open", source="ads", user="u1", amount="99.00")  # not an order
    with stored_before_amount_check():  # amounts of another form, as older events may hold
        store(H + 20 * m, name="order_paid", source="ads", user="u4", amount="12,50")
        store(H + 21 * m, name="order_paid", source="ads", user="u4", amount="1234567890123456")  # 16 digits
        store(H + 22 * m, name="order_paid", source="ads", user="u4", amount="1.1234567890123")  # 13 decimals
        store(H + 23 * m, name="order_paid", source="ads", user="u4", amount={"value": "7"})
    store(H + timedelta(hours=1), source="ads", user="u9")  # at the window's end: the next hour's
    store(H + timedelta(hours=3, minutes=59, seconds=59, microseconds=999_999), source="social", user="u9")
    store(H + timedelta(hours=4), source="social", user="u9")  # the end of the hours read
    store(BEFORE + 30 * m, source="ads", user="u1")
    store(BEFORE + 31 * m, name="order_paid", source="social", user="u5", amount="8.00")
    events_engine.ready()
    return events_engine


def test_the_sources_of_each_window_count_events_people_orders_and_valid_amounts(edge_events):
    rows = events_store().source_windows(windows=[(H, H + timedelta(hours=1)), (BEFORE, BEFORE + timedelta(hours=1))])

    assert sorted(rows, key=lambda r: (r.window, r.source)) == [
        # Each valid amount rounded to cents, as shipping and the revenue rollups take it: the two
        # tiny ones count 0.00, the 27-digit one 123456789012345.12.
        SourceWindow("(direct)", 0, events=4, people=1, orders=4, revenue=Decimal("0.00")),
        SourceWindow("ads", 0, events=12, people=4, orders=6, revenue=Decimal("12.50") + Decimal("123456789012345.12")),
        SourceWindow("ads", 1, events=1, people=1, orders=0, revenue=Decimal(0)),
        SourceWindow("social", 1, events=1, people=1, orders=1, revenue=Decimal("8.00")),
    ]


def test_overlapping_windows_each_count_the_event_and_no_window_gives_no_rows(edge_events):
    reads = events_store()
    whole = (H, H + timedelta(hours=2))
    rows = reads.source_windows(windows=[whole, whole, (H + timedelta(hours=1), H + timedelta(hours=1))])

    by_window = {(r.window, r.source): r.events for r in rows}
    assert by_window == {(0, "(direct)"): 4, (0, "ads"): 13, (1, "(direct)"): 4, (1, "ads"): 13}
    assert reads.source_windows(windows=[]) == []


def test_the_movers_name_the_sources_by_their_measure(edge_events):
    windows = [(H, H + timedelta(hours=1)), (BEFORE, BEFORE + timedelta(hours=1))]

    revenue = anomalies.source_movers(windows=windows, measure="revenue")
    people = anomalies.source_movers(windows=windows, measure="people")

    assert [(m["source"], m["value"], m["usual"]) for m in revenue] == [
        ("ads", "123456789012357.62", "0.00"),
        ("social", "0.00", "8.00"),
        ("(direct)", "0.00", "0.00"),
    ]
    assert [(m["source"], m["change"]) for m in people] == [("ads", "3.00"), ("(direct)", "1.00"), ("social", "-1.00")]


def test_events_per_hour_count_an_event_on_the_hour_in_that_hour_and_an_empty_hour_as_zero(edge_events):
    counts = events_store().hourly_event_counts(start=H, end=H + timedelta(hours=4))

    assert counts == {H: 16, H + timedelta(hours=1): 1, H + timedelta(hours=3): 1}
    assert anomalies.hourly_event_counts(start=H, hours=4) == [16.0, 1.0, 0.0, 1.0]


def test_the_hourly_check_on_each_engine_alerts_a_drop_and_names_the_source_that_fell(db, events_engine):
    from indicators import services
    from indicators.models import Anomaly, CheckKind
    from tracking.models import Event
    from tracking.shipping import queue_for_shipping

    hour = datetime(2026, 3, 2, 14, tzinfo=UTC)
    rows = []
    for h in range(7 * 24 + 1):
        at = hour - timedelta(hours=7 * 24 - h) + timedelta(minutes=10)
        busy = 9 <= at.hour <= 21
        search = 2 if h == 7 * 24 else 20 + 10 * busy  # the checked hour: search falls to 2
        rows += EventFactory.build_batch(search, timestamp=at, utm_source="search")
        rows += EventFactory.build_batch(5, timestamp=at, utm_source="")
    stored = Event.objects.bulk_create(rows)
    queue_for_shipping([e.pk for e in stored])
    events_engine.ready()

    run = services.request_anomaly_check(kind=CheckKind.HOURLY, period_start=hour + timedelta(minutes=40))
    anomalies.run_check(run_id=run.pk)

    alert = Anomaly.objects.get(indicator="event_volume")
    assert (alert.direction, alert.period_start, alert.value) == ("drop", hour, 7)
    assert [(m["source"], m["value"], m["usual"]) for m in alert.movers] == [
        ("search", "2.00", "30.00"),
        ("(direct)", "5.00", "5.00"),
    ]


# --- drawn events and windows: both engines give the same answers ------------------------------------

# Decimal texts of up to 17 digits before the point and 13 after: valid ones (15 and 12 at most)
# and ones a digit too long, many with more digits than a double keeps; and a few chosen ones.
DECIMALS = st.one_of(
    st.tuples(st.integers(min_value=0, max_value=10**17), st.text("0123456789", max_size=13)).map(
        lambda parts: f"{parts[0]}.{parts[1]}" if parts[1] else str(parts[0])
    ),
    st.sampled_from(["0.000000000001", "0.00001", "1.50", "100", "007.5", "999999999999999.999999999999"]),
)
# The properties of an event as JSON text: its amount a string, a number as written (jsonb keeps
# its digits), absent, null, only nested, or of another form.
PROPERTIES = st.one_of(
    st.just("{}"),
    st.just('{"amount": null}'),
    DECIMALS.map(lambda d: json.dumps({"amount": d})),
    # A JSON number must not start with a zero: "007.5" is left to the strings.
    DECIMALS.filter(lambda d: not d.startswith("00")).map(lambda d: '{"amount": ' + d + "}"),
    # jsonb writes the shorter key first: the nested amount comes first in the text.
    DECIMALS.filter(lambda d: not d.startswith("00")).map(lambda d: '{"items": [{"amount": 3}], "amount": ' + d + "}"),
    st.sampled_from(["12,50", "1e3", "-1.00", " 2.00", "1.", "", "\\u0031\\u0032"]).map(
        lambda text: '{"amount": "' + text + '"}'
    ),
    st.sampled_from(['{"amount": {"value": "7"}}', '{"amount": ["7"]}', '{"amount": true}', '{"amount": 1e-5}']),
)
# When, from an hour before the first window can start: on a quarter hour (the hours' and the
# windows' edges), or anywhere to the microsecond.
OFFSET = st.one_of(
    st.integers(min_value=0, max_value=6 * 4).map(lambda q: timedelta(minutes=15 * q)),
    st.integers(min_value=0, max_value=6 * 3600 * 10**6).map(lambda us: timedelta(microseconds=us)),
)
EVENT = st.tuples(
    OFFSET,
    st.sampled_from(["app_open", "order_paid", "order_paid", "order_refunded"]),
    st.sampled_from(["", "ads", "Ads", "search"]),
    st.sampled_from([("u1", None), ("u2", None), (None, "a1"), (None, "a2"), ("u1", "a2")]),
    PROPERTIES,
)
WINDOW = st.tuples(st.integers(min_value=-2, max_value=24), st.integers(min_value=0, max_value=12))
# quarter hours


@pytest.fixture
def both_engines(settings, chdb_url, db, stored_before_amount_check):
    """PostgreSQL and an embedded ClickHouse that receives what is stored (shipping on)."""
    from tracking import shipping
    from tracking.events_store import _postgres, clickhouse_store

    settings.OPSLOOP_EVENTS_STORE = "clickhouse"
    settings.OPSLOOP_CLICKHOUSE_URL = chdb_url
    clickhouse = clickhouse_store()
    clickhouse.truncate()
    shipping.ship_history()
    with stored_before_amount_check():  # drawn amounts include forms older events may hold
        yield _postgres(), clickhouse


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    events=st.lists(EVENT, min_size=1, max_size=12),
    windows=st.lists(WINDOW, min_size=1, max_size=3),
    hours=st.integers(1, 7),
)
def test_both_engines_give_the_same_sources_and_hours_on_drawn_events(both_engines, events, windows, hours):
    from tracking import shipping
    from tracking.models import Event

    postgres, clickhouse = both_engines
    base = H - timedelta(hours=1)
    with clickhouse.held():  # one opening of the embedded engine for the example
        Event.objects.all().delete()
        clickhouse.truncate()
        for offset, name, source, (user, anonymous), properties in events:
            store_json(base + offset, properties, name=name, source=source, user=user, anonymous=anonymous)
        shipping.ship_events()
        assert shipping.pending_events() == 0
        spans = [(base + timedelta(minutes=15 * a), base + timedelta(minutes=15 * (a + n))) for a, n in windows]
        start = base + timedelta(hours=1)

        def key(row: SourceWindow):
            return row.window, row.source

        assert sorted(clickhouse.source_windows(windows=spans), key=key) == sorted(
            postgres.source_windows(windows=spans), key=key
        )
        assert clickhouse.hourly_event_counts(start=start, end=start + timedelta(hours=hours)) == (
            postgres.hourly_event_counts(start=start, end=start + timedelta(hours=hours))
        )
