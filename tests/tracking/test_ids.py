"""Runs of consecutive event ids are joined one way for every app (`tracking.ids`)."""

from itertools import pairwise

from django.db import connection
from hypothesis import given
from hypothesis import strategies as st

from tracking.ids import id_in_runs, join_runs, runs_of


def test_touching_and_overlapping_runs_are_joined_and_sorted():
    assert join_runs([(10, 12), (1, 3), (4, 5), (11, 20), (30, 30)]) == [(1, 5), (10, 20), (30, 30)]


def test_ids_become_their_consecutive_runs_whatever_their_order():
    assert runs_of([7, 3, 4, 5, 9, 8, 20]) == [(3, 5), (7, 9), (20, 20)]
    assert runs_of([5, 6, 7]) == [(5, 7)]
    assert runs_of([]) == []


@given(st.sets(st.integers(min_value=1, max_value=200), max_size=60))
def test_runs_cover_exactly_the_ids_and_never_touch(ids):
    runs = runs_of(ids)
    assert {pk for first, last in runs for pk in range(first, last + 1)} == ids
    assert all(earlier[1] + 1 < later[0] for earlier, later in pairwise(runs))


def test_the_sql_condition_names_each_run_with_integer_bounds(db):
    with connection.cursor() as cursor:
        assert id_in_runs([(1, 5), (9, 9)]).as_string(cursor.connection) == (
            "(e.id BETWEEN 1 AND 5 OR e.id BETWEEN 9 AND 9)"
        )
        assert id_in_runs([(2, 3)], column="b.event_id").as_string(cursor.connection) == "(b.event_id BETWEEN 2 AND 3)"
        assert id_in_runs([]).as_string(cursor.connection) == "false"
