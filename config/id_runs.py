"""Runs of consecutive row ids, `(first, last)`: how the apps name a batch of stored events
(ids drawn from one sequence, so a batch is one run, a few when batches interleave) without
listing every id."""

from __future__ import annotations

from collections.abc import Iterable


def join_runs(runs: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The runs sorted, with overlapping or touching ones joined: fewer, longer ranges for an
    index scan."""
    joined: list[tuple[int, int]] = []
    for first, last in sorted(runs):
        if joined and first <= joined[-1][1] + 1:
            joined[-1] = (joined[-1][0], max(joined[-1][1], last))
        else:
            joined.append((first, last))
    return joined


def runs_of(ids: Iterable[int]) -> list[tuple[int, int]]:
    """The consecutive runs of these ids."""
    return join_runs((pk, pk) for pk in ids)


def in_runs_sql(runs: Iterable[tuple[int, int]], column: str = "e.id") -> str:
    """`column` within one of the runs, as a parenthesised SQL condition with the bounds written
    in (integers, so nothing to escape): the planner then sees how few rows each run holds."""
    return "(" + " OR ".join(f"{column} BETWEEN {int(a)} AND {int(b)}" for a, b in runs) + ")"
