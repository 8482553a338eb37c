"""ClickHouse's daily aggregates (a row per person and day, a row per person, kept by materialised
views): the rollup reads answered from them equal PostgreSQL's rollups on drawn events shipped in
drawn batches, a batch inserted again under its token leaves them as they were, a ClickHouse that
holds events from before the aggregates existed gets them built by the next shipping run, and a
read before that says why it waits."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from indicators import rollups
from tests.factories.tracking import EventFactory
from tracking import shipping
from tracking.events_store.clickhouse import (
    AGGREGATE_VIEWS,
    PEOPLE,
    PERSON_DAYS,
    PERSON_DAYS_OF_EVENTS,
    TABLE,
    HistoryLoading,
)
from tracking.models import Event, ShippingBacklog

pytestmark = pytest.mark.django_db

DAY0 = date(2026, 3, 2)  # a Monday
NAMES = ["app_open", "page_view", "order_paid", "order_paid", "order_refunded", "signup"]
# Keys with the characters a statement could misread (braces, a quote, a backslash) among them.
PEOPLE_DRAWN = [("u1", None), ("u2", None), ("u{3}'", None), (None, "a1"), (None, "a\\2"), ("u1", "a\\2")]
EVENT = st.tuples(
    st.integers(min_value=0, max_value=75),  # day
    st.integers(min_value=0, max_value=24 * 3600 - 1),  # second of the day
    st.sampled_from(NAMES),
    st.sampled_from(PEOPLE_DRAWN),
    st.sampled_from(["12.50", "0.99", "100", "3.333"]),
)


def _store(events) -> None:
    for day, second, name, (user, anonymous), amount in events:
        at = datetime.combine(DAY0 + timedelta(days=day), datetime.min.time(), tzinfo=UTC) + timedelta(seconds=second)
        properties = {"amount": amount, "order_id": f"o{day}-{second}"} if name.startswith("order_") else {}
        EventFactory(name=name, timestamp=at, user_id=user, anonymous_id=anonymous, properties=properties)


READS = st.fixed_dictionaries(
    {
        "start": st.integers(min_value=-5, max_value=80),
        "days": st.integers(min_value=0, max_value=60),
        "first_cohort": st.integers(min_value=-10, max_value=70),
        "periods": st.integers(min_value=0, max_value=12),
        "first_days": st.integers(min_value=1, max_value=10),
        "retained_from": st.integers(min_value=0, max_value=10),
        "retained_days": st.integers(min_value=1, max_value=14),
        "event": st.sampled_from(["order_paid", "signup", "page_view"]),
        "sample": st.integers(min_value=1, max_value=8),
    }
)
DEFAULT_READS = {
    "start": 0,
    "days": 40,
    "first_cohort": 0,
    "periods": 6,
    "first_days": 7,
    "retained_from": 7,
    "retained_days": 7,
    "event": "order_paid",
    "sample": 3,
}


def _reads(store, drawn: dict | None = None) -> dict:
    r = drawn or DEFAULT_READS
    start = DAY0 + timedelta(days=r["start"])
    end = start + timedelta(days=r["days"])
    first = DAY0 + timedelta(days=r["first_cohort"])
    churn = store.churn_rows(start=start, end=end, churn_days=7, last_events=2, sample=r["sample"])
    out = {
        "daily": store.daily_rows(start=DAY0 - timedelta(days=3), end=DAY0 + timedelta(days=80)),
        "window": store.daily_rows(start=start, end=end),
        "last": store.last_activity_day(),
        "purchases": store.purchase_totals(start=start, end=end),
        "key": store.key_behaviour_groups(
            event_name=r["event"],
            start=start,
            end=end,
            first_days=r["first_days"],
            retained_from=r["retained_from"],
            retained_to=r["retained_from"] + r["retained_days"] - 1,
        ),
        # The sampled people themselves (their last events), not only the counts.
        "churn": (churn.churned_total, churn.retained_total, sorted(churn.people)),
    }
    for basis in ("activity", "purchase"):
        for granularity, cohort in (
            ("day", first),
            ("week", first - timedelta(days=first.weekday())),
            ("month", first.replace(day=1)),
        ):
            out[basis, granularity] = store.retention_cells(
                basis=basis, granularity=granularity, first_cohort=cohort, end=end, periods=r["periods"]
            )
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    events=st.lists(EVENT, min_size=1, max_size=40),
    batch=st.integers(min_value=1, max_value=15),
    resend=st.booleans(),
    reads=st.lists(READS, min_size=1, max_size=3),
)
def test_the_aggregates_answer_as_postgresql_does_on_drawn_events_and_batches(
    both_engines, events, batch, resend, reads
):
    postgres, clickhouse = both_engines
    with clickhouse.held():
        Event.objects.all().delete()
        clickhouse.truncate()
        _store(events)
        if resend:  # a run that died after its insert: the next one sends the batch again
            claimed, runs = shipping._claim(batch)
            data, _count = shipping._export(runs)
            clickhouse.insert_batch(data, token=str(claimed))
        shipping.ship_events(batch_events=batch)
        assert shipping.pending_events() == 0
        rollups.rebuild()

        ours = _reads(clickhouse)
        assert ours["daily"] and ours["last"] is not None  # the draw is never empty
        assert ours == _reads(postgres)
        for drawn in reads:
            assert _reads(clickhouse, drawn) == _reads(postgres, drawn), drawn
        # And the aggregates are what the raw events hold (summed over the rows not merged yet).
        assert _person_days(clickhouse) == _person_days_of_raw(clickhouse)
        assert _people(clickhouse) == _people_of_raw(clickhouse)


def ship_and_see_it_fail(caplog, reason: str) -> None:
    """A shipping run that fails: it raises, and its reason is on the shipping state (the first
    failure in a row) and in the log."""
    with caplog.at_level("ERROR", logger="tracking.shipping"), pytest.raises(shipping.ShippingFailed):
        shipping.ship_events()
    state = shipping.state()
    assert reason in state.last_error and state.failures == 1
    assert reason in caplog.text


def _person_days(store) -> list:
    return store.client.rows(
        f"SELECT toString(day), person, sum(events), sum(orders), sum(refunds), toString(sum(paid)), "
        f"toString(sum(refunded)) FROM {PERSON_DAYS} GROUP BY day, person ORDER BY day, person"
    )


def _people(store) -> list:
    return store.client.rows(
        f"SELECT person, toString(min(first_day)), toString(min(first_order_day)) FROM {PEOPLE} "
        "GROUP BY person ORDER BY person"
    )


def _person_days_of_raw(store) -> list:
    """Each person's days from the raw events, written here, not with the views' statement."""
    return store.client.rows(
        "SELECT toString(toDate(timestamp)) AS d, person, count(), countIf(name = 'order_paid'), "
        "countIf(name = 'order_refunded'), toString(sumIf(amount, name = 'order_paid')), "
        f"toString(sumIf(amount, name = 'order_refunded')) FROM {TABLE} FINAL GROUP BY d, person ORDER BY d, person"
    )


def _people_of_raw(store) -> list:
    return store.client.rows(
        "SELECT person, toString(min(toDate(timestamp))), "
        "toString(if(countIf(name = 'order_paid') > 0, minIf(toDate(timestamp), name = 'order_paid'), "
        f"toDate('2149-06-06'))) FROM {TABLE} FINAL GROUP BY person ORDER BY person"
    )


def test_a_batch_sent_again_under_its_token_leaves_the_aggregates_as_they_were(both_engines):
    _postgres_store, clickhouse = both_engines
    _store([(0, 60, "order_paid", ("u1", None), "12.50"), (1, 60, "app_open", ("u2", None), "0")])
    claimed, runs = shipping._claim(1000)
    data, _count = shipping._export(runs)
    clickhouse.insert_batch(data, token=str(claimed))
    once = _person_days(clickhouse)

    clickhouse.insert_batch(data, token=str(claimed))
    shipping.ship_events()  # the outbox still names the batch: it goes a third time

    assert once == [
        [DAY0.isoformat(), "u1", 1, 1, 0, "12.5", "0"],
        [(DAY0 + timedelta(days=1)).isoformat(), "u2", 1, 0, 0, "0", "0"],
    ]
    assert _person_days(clickhouse) == once
    assert _people(clickhouse) == [["u1", DAY0.isoformat(), DAY0.isoformat()], ["u2", "2026-03-03", "2149-06-06"]]


def _drop_aggregates(store) -> None:
    for name in AGGREGATE_VIEWS:
        store.client.command(f"DROP VIEW IF EXISTS {name}")
    store.client.command(f"DROP TABLE IF EXISTS {PERSON_DAYS}")
    store.client.command(f"DROP TABLE IF EXISTS {PEOPLE}")
    store._aggregates_ready = False


def test_events_held_before_the_aggregates_existed_are_aggregated_by_the_next_shipping_run(both_engines, caplog):
    postgres, clickhouse = both_engines
    _store([(0, 60, "order_paid", ("u1", None), "12.50"), (35, 60, "app_open", ("u1", None), "0")])
    shipping.ship_events()
    rollups.rebuild()
    expected = _reads(postgres)
    _drop_aggregates(clickhouse)  # as a ClickHouse filled by an earlier version holds them

    with pytest.raises(HistoryLoading, match="building its daily aggregates") as refused:
        clickhouse.daily_rows(start=DAY0, end=DAY0 + timedelta(days=40))
    assert refused.value.status_code == 503 and refused.value.reason == "EVENTS_STORE_LOADING"

    _store([(36, 60, "order_paid", ("u2", None), "0.99")])  # and one more event waits in the outbox
    with caplog.at_level("INFO", logger="tracking.shipping"):
        result = shipping.ship_events()
    rollups.rebuild()

    assert result.events == 1
    assert "daily aggregates were built" in caplog.text
    assert _reads(clickhouse) == _reads(postgres) != expected  # the held events and the new one
    assert _person_days(clickhouse) == _person_days_of_raw(clickhouse)


def test_a_build_that_stopped_half_way_is_made_again_from_empty_tables(both_engines):
    postgres, clickhouse = both_engines
    _store([(0, 60, "order_paid", ("u1", None), "12.50"), (2, 60, "app_open", ("u3", None), "0")])
    shipping.ship_events()
    rollups.rebuild()
    _drop_aggregates(clickhouse)
    # Half a build: the tables made and partly filled, no views (the build's last step).
    from tracking.events_store.clickhouse import CREATE_PEOPLE, CREATE_PERSON_DAYS

    clickhouse.client.command(CREATE_PERSON_DAYS)
    clickhouse.client.command(CREATE_PEOPLE)
    clickhouse.client.command(f"INSERT INTO {PERSON_DAYS} " + PERSON_DAYS_OF_EVENTS.format(final="", where=""))

    assert clickhouse.ensure_aggregates() is True
    assert clickhouse.ensure_aggregates() is False  # built: nothing to do

    assert _person_days(clickhouse) == _person_days_of_raw(clickhouse)
    assert _reads(clickhouse) == _reads(postgres)


def test_a_batch_left_claimed_before_the_aggregates_existed_is_counted_once(both_engines):
    postgres, clickhouse = both_engines
    _store([(0, 60, "order_paid", ("u1", None), "12.50"), (1, 60, "app_open", ("u2", None), "0")])
    _drop_aggregates(clickhouse)
    # A run of the earlier version inserted its batch and died before clearing the outbox.
    claimed, runs = shipping._claim(1000)
    data, _count = shipping._export(runs)
    clickhouse.insert_batch(data, token=str(claimed))

    result = shipping.ship_events()  # the batch again under its token, and the build
    rollups.rebuild()

    assert result.events == 2 and shipping.pending_events() == 0
    assert _person_days(clickhouse) == [
        [DAY0.isoformat(), "u1", 1, 1, 0, "12.5", "0"],
        [(DAY0 + timedelta(days=1)).isoformat(), "u2", 1, 0, 0, "0", "0"],
    ]
    assert _reads(clickhouse) == _reads(postgres)


def test_a_row_held_twice_and_not_merged_yet_is_built_into_the_aggregates_once(both_engines):
    _postgres_store, clickhouse = both_engines
    _store([(0, 60, "order_paid", ("u1", None), "12.50")])
    _drop_aggregates(clickhouse)
    _claimed, runs = shipping._claim(1000)
    data, _count = shipping._export(runs)
    clickhouse.insert_batch(data, token="first")
    clickhouse.insert_batch(data, token="second")  # two parts, one event: merged away later
    ShippingBacklog.objects.all().delete()  # the outbox forgets them: no run ships them again
    assert len(clickhouse.client.rows(f"SELECT id FROM {TABLE}")) == 2

    assert clickhouse.ensure_aggregates() is True

    assert _person_days(clickhouse) == [[DAY0.isoformat(), "u1", 1, 1, 0, "12.5", "0"]]


def test_emptying_the_store_inside_a_held_block_builds_missing_aggregates_and_keeps_it_open(both_engines):
    _postgres_store, clickhouse = both_engines
    _drop_aggregates(clickhouse)
    with clickhouse.held():
        clickhouse.truncate()  # builds the aggregates, itself holding the engine
        assert clickhouse.aggregates_ready()
        assert clickhouse.client.rows(f"SELECT count() FROM {PERSON_DAYS}") == [[0]]


def test_a_build_that_fails_leaves_its_reason_on_the_shipping_state_and_the_next_run_builds(both_engines, caplog):
    postgres, clickhouse = both_engines
    _store([(0, 60, "order_paid", ("u1", None), "12.50")])
    _drop_aggregates(clickhouse)
    # Something else holds a view's name: ClickHouse refuses the build.
    clickhouse.client.command(f"CREATE TABLE {PERSON_DAYS}_mv (x UInt8) ENGINE = Memory")

    ship_and_see_it_fail(caplog, "building the daily aggregates")
    assert shipping.pending_events() == 1  # the event waits for the next run
    with pytest.raises(HistoryLoading, match="building its daily aggregates"):
        clickhouse.daily_rows(start=DAY0, end=DAY0)

    clickhouse.client.command(f"DROP TABLE {PERSON_DAYS}_mv")
    shipping.ship_events()
    rollups.rebuild()

    assert shipping.pending_events() == 0 and shipping.state().last_error == ""
    assert _reads(clickhouse) == _reads(postgres)
