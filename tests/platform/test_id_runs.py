"""Runs of consecutive ids are joined one way for every app (`config.id_runs`)."""

from config.id_runs import in_runs_sql, join_runs, runs_of


def test_touching_and_overlapping_runs_are_joined_and_sorted():
    assert join_runs([(10, 12), (1, 3), (4, 5), (11, 20), (30, 30)]) == [(1, 5), (10, 20), (30, 30)]


def test_ids_become_their_consecutive_runs_whatever_their_order():
    assert runs_of([7, 3, 4, 5, 9, 8, 20]) == [(3, 5), (7, 9), (20, 20)]
    assert runs_of([]) == []


def test_the_sql_condition_names_each_run_with_integer_bounds():
    assert in_runs_sql([(1, 5), (9, 9)]) == "(e.id BETWEEN 1 AND 5 OR e.id BETWEEN 9 AND 9)"
    assert in_runs_sql([(2, 3)], column="b.event_id") == "(b.event_id BETWEEN 2 AND 3)"
