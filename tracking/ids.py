"""Runs of consecutive event ids. A stored batch's ids are consecutive (reserved a block at a
time, see `tracking.services.RESERVE_IDS`), so the layers above queue and read stored events as
a few (first, last) runs rather than as lists of ids."""

from __future__ import annotations

from collections.abc import Iterable

from psycopg import sql

IdRun = tuple[int, int]


def join_runs(runs: Iterable[IdRun]) -> list[IdRun]:
    """Sorted runs with the overlapping and touching ones joined: fewer, longer ranges."""
    joined: list[IdRun] = []
    for first, last in sorted(runs):
        if joined and first <= joined[-1][1] + 1:
            joined[-1] = (joined[-1][0], max(joined[-1][1], last))
        else:
            joined.append((first, last))
    return joined


def runs_of(ids: Iterable[int]) -> list[IdRun]:
    """The runs of consecutive ids among `ids` (one run for a batch stored alone)."""
    ordered = sorted(ids)
    if ordered and ordered[-1] - ordered[0] + 1 == len(ordered):  # the usual case, in one step
        return [(ordered[0], ordered[-1])]
    return join_runs((pk, pk) for pk in ordered)


def id_in_runs(runs: Iterable[IdRun], *, column: str = "e.id") -> sql.Composed:
    """`column` within one of the runs, with the bounds written in as literals (integers) so that
    the planner sees how few rows each run holds and probes the primary key."""
    target = sql.SQL(column)
    clauses = [
        sql.SQL("{} BETWEEN {} AND {}").format(target, sql.Literal(int(a)), sql.Literal(int(b))) for a, b in runs
    ]
    if not clauses:
        return sql.Composed([sql.SQL("false")])
    return sql.Composed([sql.SQL("("), sql.SQL(" OR ").join(clauses), sql.SQL(")")])
