"""ClickHouse's finished days: the rows of closed days kept once (`finish_days`, at the end of a
shipping run), trusted by the reads only before the least day an insert has touched since. The
daily series equal PostgreSQL's rollups whatever was finished when and whatever arrived late, a
late event counts at once, and shipping finishes the closed days and, now and then, the days a
late event made stale."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from indicators import rollups
from tests.tracking.test_clickhouse_aggregates import DAY0, EVENT, _store, ship_and_see_it_fail
from tracking import shipping
from tracking.events_store.base import DAILY_COLUMNS
from tracking.events_store.clickhouse import (
    DAILY,
    FINISHED_PERIODS,
    PERSON_DAYS,
    RETENTION,
    TOUCHED,
    _daily_values,
    _unit_start,
)
from tracking.models import Event

pytestmark = pytest.mark.django_db

WINDOWS = st.lists(
    st.tuples(st.integers(min_value=-5, max_value=80), st.integers(min_value=0, max_value=60)), min_size=1, max_size=3
)
# A retention table: its basis, granularity, first cohort (days from DAY0), last cohort and periods
# (up to one more than is kept finished, which is computed whole).
TABLES = st.lists(
    st.tuples(
        st.sampled_from(["activity", "purchase"]),
        st.sampled_from(["day", "week", "month"]),
        st.integers(min_value=-10, max_value=75),
        st.integers(min_value=0, max_value=60),
        st.integers(min_value=0, max_value=31),
    ),
    min_size=1,
    max_size=4,
)


def _ship_without_finishing(store) -> None:
    """Every waiting event inserted as shipping inserts it, batch by batch, without the run's
    finishing step (which would finish every day before today)."""
    result = shipping.ShippingResult()
    while (claimed := shipping._claim(7)) is not None:
        shipping._ship_batch(store, *claimed, result)


def _finish(store, through: int, **options) -> int:
    """Finish the days up to DAY0 + `through`, as a run with no insert beside it."""
    return store.finish_days(through=DAY0 + timedelta(days=through), touched_grace=timedelta(0), **options)


def _daily(store, start_offset: int = -3, days: int = 83) -> dict:
    start = DAY0 + timedelta(days=start_offset)
    return store.daily_rows(start=start, end=start + timedelta(days=days))


def _cells(store, basis: str, granularity: str, first: int, days: int, periods: int) -> list:
    start = _unit_start(DAY0 + timedelta(days=first), granularity)
    end = start + timedelta(days=days)
    return store.retention_cells(basis=basis, granularity=granularity, first_cohort=start, end=end, periods=periods)


def _every_table(store) -> dict:
    """Every basis and granularity over the whole draw, as far as is kept finished."""
    return {
        (basis, granularity): _cells(store, basis, granularity, -7, 90, FINISHED_PERIODS[granularity])
        for basis in ("activity", "purchase")
        for granularity in ("day", "week", "month")
    }


def _finished(store) -> dict:
    """The finished rows as they are kept, by day (ISO)."""
    columns = ", ".join(f"toString({c})" for c in DAILY_COLUMNS)
    return {
        day: _daily_values(values)
        for day, *values in store.client.rows(f"SELECT toString(day), {columns} FROM {DAILY} FINAL ORDER BY day")
    }


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    early=st.lists(EVENT, min_size=1, max_size=30),
    late=st.lists(EVENT, max_size=15),
    first_through=st.integers(min_value=-3, max_value=78),
    second_through=st.one_of(st.none(), st.integers(min_value=-3, max_value=78)),
    refinish_after=st.sampled_from([None, timedelta(0), timedelta(hours=1)]),
    windows=WINDOWS,
    tables=TABLES,
)
def test_finished_and_open_days_answer_as_postgresql_does_whatever_arrived_late(
    both_engines, early, late, first_through, second_through, refinish_after, windows, tables
):
    postgres, clickhouse = both_engines
    with clickhouse.held():
        Event.objects.all().delete()
        clickhouse.truncate()
        _store(early)
        _ship_without_finishing(clickhouse)
        written = _finish(clickhouse, first_through)
        first_day = min(day for day, *_ in early)
        last_day = max(day for day, *_ in early)
        # Every closed day from the first one held, quiet days included, and none after.
        assert written == max(0, min(first_through, last_day) - first_day + 1)
        assert clickhouse.client.rows(f"SELECT count() FROM {TOUCHED}") == [[0]]

        _store(late)  # any day: before, inside or after what was finished
        _ship_without_finishing(clickhouse)
        if second_through is not None:
            _finish(clickhouse, second_through, refinish_after=refinish_after)
        rollups.rebuild()

        ours = _daily(clickhouse)
        assert ours and ours == _daily(postgres)
        for start, days in windows:
            assert _daily(clickhouse, start, days) == _daily(postgres, start, days), (start, days)
        assert _every_table(clickhouse) == _every_table(postgres)
        for table in tables:
            assert _cells(clickhouse, *table) == _cells(postgres, *table), table
        # What is finished and not touched since is what PostgreSQL's rollups hold for the day.
        touched = clickhouse.client.rows(f"SELECT count(), toString(min(since)) FROM {TOUCHED}")[0]
        trusted = {day: values for day, values in _finished(clickhouse).items() if not touched[0] or day < touched[1]}
        pg = _daily(postgres)
        for day, values in trusted.items():
            assert values == pg[date.fromisoformat(day)], day


def test_a_read_takes_the_finished_rows_and_computes_only_the_days_after_them(both_engines):
    postgres, clickhouse = both_engines
    _store([(0, 60, "order_paid", ("u1", None), "12.50"), (5, 60, "app_open", ("u2", None), "0")])
    _store([(9, 60, "order_paid", ("u1", None), "3.333"), (50, 60, "app_open", ("u3", None), "0")])
    _store([(52, 60, "order_paid", ("u1", None), "100")])
    _ship_without_finishing(clickhouse)
    assert _finish(clickhouse, 40) == 41  # quiet days too
    rollups.rebuild()
    expected = _daily(postgres)
    assert _daily(clickhouse) == expected

    # The person-days of finished days gone (more than 30 days before the first open day, which
    # is computed from the 29 days before it): the reads still answer those days, from their rows.
    clickhouse.client.command(
        f"ALTER TABLE {PERSON_DAYS} DELETE WHERE day BETWEEN '2026-03-03' AND '2026-03-11' SETTINGS mutations_sync = 2"
    )
    assert _daily(clickhouse) == expected

    # A late event for a finished day: that day and every later one are computed again at once.
    _store([(5, 60, "app_open", ("u4", None), "0"), (5, 70, "app_open", ("u5", None), "0")])
    _ship_without_finishing(clickhouse)
    rollups.rebuild()
    late = _daily(postgres)
    day5 = DAY0 + timedelta(days=5)
    assert late[day5]["active_users"] == expected[day5]["active_users"] + 2 == 3
    # Neither the finished row (1) nor PostgreSQL's (3): the day's person-days as they are now,
    # the late events' and not u2's, deleted above.
    assert _daily(clickhouse)[day5]["active_users"] == 2
    for day in (50, 52):
        assert _daily(clickhouse)[DAY0 + timedelta(days=day)] == late[DAY0 + timedelta(days=day)]


def test_retention_reads_the_finished_cells_and_computes_only_the_periods_after_them(both_engines):
    postgres, clickhouse = both_engines
    _store([(0, 60, "order_paid", ("u1", None), "12.50"), (1, 60, "app_open", ("u1", None), "0")])
    _store([(2, 60, "order_paid", ("u2", None), "1"), (8, 60, "order_paid", ("u2", None), "2")])
    _store([(45, 60, "app_open", ("u1", None), "0"), (46, 60, "app_open", ("u3", None), "0")])
    _ship_without_finishing(clickhouse)
    _finish(clickhouse, 40)
    rollups.rebuild()
    expected = _every_table(postgres)
    assert _every_table(clickhouse) == expected
    # Every closed period has its cells, zeros included, up to the periods kept.
    day_cells = clickhouse.client.rows(
        f"SELECT count(), countIf(users > 0) FROM {RETENTION} FINAL WHERE basis = 'activity' AND granularity = 'day'"
    )
    # 41 closed days of 31 cells each; u1's cohort (day 0) holds periods 0 and 1, u2's (day 2) 0 and 6.
    assert day_cells == [[41 * 31, 4]]

    # The person-days of the first ten days gone: the closed periods' cells still answer them.
    clickhouse.client.command(
        f"ALTER TABLE {PERSON_DAYS} DELETE WHERE day BETWEEN '2026-03-02' AND '2026-03-11' SETTINGS mutations_sync = 2"
    )
    assert _every_table(clickhouse)["activity", "day"] == expected["activity", "day"]
    assert _every_table(clickhouse)["purchase", "week"] == expected["purchase", "week"]

    # A late first event for u3, before the finished periods: u3 moves to an earlier cohort, and
    # every period from that day on is computed again (the emptied cell of day 46's cohort too).
    _store([(20, 60, "app_open", ("u3", None), "0")])
    _ship_without_finishing(clickhouse)
    rollups.rebuild()
    late = _cells(postgres, "activity", "day", 15, 40, 30)
    assert (DAY0 + timedelta(days=46), 0, 1) not in late and (DAY0 + timedelta(days=20), 26, 1) in late
    assert _cells(clickhouse, "activity", "day", 15, 40, 30) == late


def test_shipping_finishes_the_closed_days_and_refinishes_a_late_events_days_now_and_then(both_engines, settings):
    postgres, clickhouse = both_engines
    _store([(0, 60, "order_paid", ("u1", None), "12.50"), (3, 60, "app_open", ("u2", None), "0")])
    shipping.ship_events()
    rollups.rebuild()
    # Every day held is before today: all of them finished, and no touched day is left.
    assert sorted(_finished(clickhouse)) == [(DAY0 + timedelta(days=d)).isoformat() for d in range(4)]
    assert clickhouse.client.rows(f"SELECT count() FROM {TOUCHED}") == [[0]]
    assert _daily(clickhouse) == _daily(postgres)

    _store([(1, 60, "order_paid", ("u3", None), "0.99")])  # late, for a finished day
    settings.OPSLOOP_CLICKHOUSE_REFINISH_MINUTES = 60
    shipping.ship_events()
    rollups.rebuild()
    day1 = (DAY0 + timedelta(days=1)).isoformat()
    # Finished a moment ago: not yet again. The reads count the late order all the same.
    assert _finished(clickhouse)[day1]["orders"] == 0
    assert clickhouse.client.rows(f"SELECT toString(min(since)) FROM {TOUCHED}") == [[day1]]
    assert _daily(clickhouse) == _daily(postgres)

    settings.OPSLOOP_CLICKHOUSE_REFINISH_MINUTES = 0
    shipping.ship_events()
    assert _finished(clickhouse)[day1]["orders"] == 1
    assert clickhouse.client.rows(f"SELECT count() FROM {TOUCHED}") == [[0]]
    assert _daily(clickhouse) == _daily(postgres)


def test_finishing_that_fails_shows_its_reason_ships_the_events_and_the_next_run_finishes(both_engines, caplog):
    postgres, clickhouse = both_engines
    _store([(0, 60, "order_paid", ("u1", None), "12.50")])
    # Something else holds the finished table's name: ClickHouse refuses its rows.
    clickhouse.client.command(f"DROP TABLE IF EXISTS {DAILY}")
    clickhouse.client.command(f"CREATE TABLE {DAILY} (x UInt8) ENGINE = Memory")

    ship_and_see_it_fail(caplog, "finishing the days")
    assert shipping.pending_events() == 0  # the events themselves went

    clickhouse.client.command(f"DROP TABLE {DAILY}")
    shipping.ship_events()
    rollups.rebuild()

    assert shipping.state().last_error == ""
    assert list(_finished(clickhouse)) == [DAY0.isoformat()]
    assert _daily(clickhouse) == _daily(postgres)


def test_touched_days_inserted_within_the_grace_stay_untrusted_until_the_next_run(both_engines):
    postgres, clickhouse = both_engines
    _store([(0, 60, "order_paid", ("u1", None), "12.50"), (3, 60, "app_open", ("u2", None), "0")])
    _ship_without_finishing(clickhouse)
    # As if the insert had run beside the finishing: within the grace, its day stays touched.
    clickhouse.finish_days(through=DAY0 + timedelta(days=3), touched_grace=timedelta(minutes=5))
    rollups.rebuild()

    assert len(_finished(clickhouse)) == 4
    assert clickhouse.client.rows(f"SELECT toString(min(since)) FROM {TOUCHED}") == [[DAY0.isoformat()]]
    assert _daily(clickhouse) == _daily(postgres)  # computed, not trusted

    _finish(clickhouse, 3)  # the next run, past the grace
    assert clickhouse.client.rows(f"SELECT count() FROM {TOUCHED}") == [[0]]
    assert _daily(clickhouse) == _daily(postgres) and _every_table(clickhouse) == _every_table(postgres)


def test_a_refinished_day_wins_over_rows_written_by_a_host_whose_clock_ran_ahead(both_engines):
    postgres, clickhouse = both_engines
    _store([(0, 60, "order_paid", ("u1", None), "12.50"), (3, 60, "app_open", ("u2", None), "0")])
    _ship_without_finishing(clickhouse)
    _finish(clickhouse, 3)
    # Written by a worker whose clock ran a day ahead.
    for table in (DAILY, RETENTION):
        clickhouse.client.command(
            f"INSERT INTO {table} SELECT * REPLACE (finished_at + INTERVAL 1 DAY AS finished_at) FROM {table}"
        )

    _store([(1, 60, "order_paid", ("u3", None), "0.99")])  # late, for a finished day
    _ship_without_finishing(clickhouse)
    _finish(clickhouse, 3)  # another worker, its clock right, writes the days from day 1 again
    rollups.rebuild()

    assert clickhouse.client.rows(f"SELECT count() FROM {TOUCHED}") == [[0]]
    assert _finished(clickhouse)[(DAY0 + timedelta(days=1)).isoformat()]["orders"] == 1
    assert _daily(clickhouse) == _daily(postgres)
    assert _every_table(clickhouse) == _every_table(postgres)


def test_finished_days_without_their_cells_are_finished_again_from_the_first_day(both_engines):
    postgres, clickhouse = both_engines
    _store([(0, 60, "order_paid", ("u1", None), "12.50"), (9, 60, "app_open", ("u1", None), "0")])
    _ship_without_finishing(clickhouse)
    _finish(clickhouse, 9)
    rollups.rebuild()
    # A store finished before the cells existed: its days, and no table of cells.
    clickhouse.client.command(f"DROP TABLE {RETENTION}")
    clickhouse._finished_ready = False  # as a process started on the new code finds it

    assert _every_table(clickhouse) == _every_table(postgres)  # not the missing cells as zeros
    assert _finished(clickhouse) == {}
    assert _finish(clickhouse, 9) == 10
    assert clickhouse.client.rows(f"SELECT countIf(users > 0) FROM {RETENTION} FINAL") != [[0]]
    assert _every_table(clickhouse) == _every_table(postgres)


def test_a_long_history_across_a_new_year_is_finished_in_steps_and_answers_as_postgresql_does(both_engines):
    postgres, clickhouse = both_engines
    # From late November to April: more days than one step finishes, and a year's end between.
    days = [-95, -94, -60, -57, -40, -33, -20, -2, 0, 5, 30, 40]
    people = [("u1", None), ("u2", None), (None, "a1"), ("u1", "a1")]
    names = ["app_open", "order_paid", "page_view", "order_paid"]
    _store(
        [(day, 3600 * (n % 24), names[n % 4], people[n % 4], "12.50") for n, day in enumerate(days)]
        + [(day + 7, 60, "app_open", people[(n + 1) % 4], "0") for n, day in enumerate(days)]
    )
    _ship_without_finishing(clickhouse)
    assert _finish(clickhouse, 40) == 136  # two steps of at most 92 days
    rollups.rebuild()

    for start, span in ((-100, 150), (-40, 45), (-10, 20)):
        assert _daily(clickhouse, start, span) == _daily(postgres, start, span), (start, span)
    for basis in ("activity", "purchase"):
        for granularity in ("day", "week", "month"):
            table = (basis, granularity, -100, 150, FINISHED_PERIODS[granularity])
            assert _cells(clickhouse, *table) == _cells(postgres, *table), table
