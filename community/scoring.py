"""How contribution scores are normalised and combined (pure functions, no database).

Raw dimension values have different units (money, counts, shares), so each becomes a percentile
rank among the peers scored that month (operators among operators, teams among teams): 0-100,
50 for the middle, the mean percentile for ties (scipy's `percentileofscore(kind="mean")`). The
composite is the weighted mean of the percentiles, so it is 0-100 whatever the weights, and
multiplying every weight by the same factor changes nothing.

A team's raw value is the mean over its members (per-member mean), not the sum: a team of 20
does not outscore a team of 2 by having ten times the people, and a team whose members all
perform alike scores what one such member would.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
from scipy.stats import rankdata

from community.errors import NoWeights

CENT = Decimal("0.01")


@dataclass(frozen=True)
class SubjectScore:
    key: Hashable
    score: Decimal
    rank: int
    percentiles: dict[str, float]
    raw: dict[str, Decimal]


def per_member_mean(members: Sequence[Mapping[str, Decimal]], dimensions: Sequence[str]) -> dict[str, Decimal]:
    """A team's raw value per dimension: the mean of its members' values (a member with no value
    counts 0: an idle member lowers the mean as an idle person would in any team)."""
    if not members:
        return {d: Decimal(0) for d in dimensions}
    n = Decimal(len(members))
    return {d: sum((Decimal(m.get(d, 0)) for m in members), Decimal(0)) / n for d in dimensions}


def percentile_ranks(values: Mapping[Hashable, Decimal]) -> dict[Hashable, float]:
    """Each value's percentile rank among all (0-100, ties share the mean percentile)."""
    if not values:
        return {}
    keys = list(values)
    ranks = rankdata(np.array([float(values[k]) for k in keys]), method="average")
    n = len(keys)
    # (average rank - 0.5) / n is percentileofscore(kind="mean"): the share strictly below plus
    # half the share equal.
    return {k: float((r - 0.5) / n * 100) for k, r in zip(keys, ranks, strict=True)}


def composite(percentiles: Mapping[str, float], weights: Mapping[str, Decimal]) -> Decimal:
    total = sum((w for w in weights.values() if w > 0), Decimal(0))
    if total <= 0:
        raise NoWeights("Every score dimension has weight 0; give at least one a positive weight.")
    value = sum((Decimal(repr(percentiles[d])) * w for d, w in weights.items() if w > 0), Decimal(0)) / total
    return min(Decimal(100), max(Decimal(0), value)).quantize(CENT, rounding=ROUND_HALF_UP)


def score_subjects(raw: Mapping[Hashable, Mapping[str, Decimal]], weights: Mapping[str, Decimal]) -> list[SubjectScore]:
    """Scores of peers from their raw values, best first; equal scores share a rank (1, 2, 2, 4)."""
    dimensions = [d for d, w in weights.items() if w > 0]
    if not dimensions:
        raise NoWeights("Every score dimension has weight 0; give at least one a positive weight.")
    per_dimension = {d: percentile_ranks({k: Decimal(v.get(d, 0)) for k, v in raw.items()}) for d in dimensions}
    rows = []
    for key, values in raw.items():
        pct = {d: per_dimension[d][key] for d in dimensions}
        rows.append((key, composite(pct, weights), pct, {d: Decimal(values.get(d, 0)) for d in weights}))
    rows.sort(key=lambda r: (-r[1], str(r[0])))
    scored, rank = [], 0
    for position, (key, score, pct, values) in enumerate(rows, start=1):
        if position == 1 or score != scored[-1].score:
            rank = position
        scored.append(SubjectScore(key=key, score=score, rank=rank, percentiles=pct, raw=values))
    return scored
