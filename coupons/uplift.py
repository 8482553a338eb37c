"""Who a coupon persuades: per-person uplift from past campaigns with holdouts.

A two-model learner (scikit-learn's HistGradientBoostingRegressor, one model on the treated and
one on the held out, each predicting the margin a person brings in the attribution window): the
uplift of a person is the difference of the two predictions. Features are the portrait's: value
tier, predicted value and churn risk, RFM frequency and spend, days since last seen, and tags.

The report's evidence is out-of-fold (two folds: each half is scored by the models fitted on the
other), so the Qini curve and the uplift by decile are not flattered by the fit itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor

Z95 = 1.959963984540054
TOP_TAGS = 10


@dataclass
class TwoModel:
    """The fitted pair; `predict` is treated minus held out."""

    treated: HistGradientBoostingRegressor
    control: HistGradientBoostingRegressor

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.treated.predict(x) - self.control.predict(x)


def _regressor(seed: int) -> HistGradientBoostingRegressor:
    # Shallow and regularised: the treated/held-out difference is a small signal in noisy margins.
    return HistGradientBoostingRegressor(
        max_iter=150,
        learning_rate=0.05,
        max_leaf_nodes=15,
        min_samples_leaf=40,
        l2_regularization=1.0,
        random_state=seed,
    )


def fit(x: np.ndarray, treated: np.ndarray, y: np.ndarray, *, seed: int = 0) -> TwoModel:
    """Fit the two models on people `x` (rows), their group (`treated`, bool) and outcome `y`."""
    treated = treated.astype(bool)
    if treated.sum() < 2 or (~treated).sum() < 2:
        raise ValueError("both the treated and the held-out group need at least two people")
    t_model = _regressor(seed).fit(x[treated], y[treated])
    c_model = _regressor(seed + 1).fit(x[~treated], y[~treated])
    return TwoModel(t_model, c_model)


def out_of_fold(x: np.ndarray, treated: np.ndarray, y: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """Each person's predicted uplift from models that never saw them (two folds)."""
    rng = np.random.default_rng(seed)
    fold = rng.integers(0, 2, size=len(y))
    scores = np.zeros(len(y))
    for k in (0, 1):
        train = fold != k
        scores[~train] = fit(x[train], treated[train], y[train], seed=seed + k).predict(x[~train])
    return scores


def _diff(y: np.ndarray, treated: np.ndarray) -> tuple[float | None, float | None]:
    """Mean treated minus mean held out, and its standard error (None when a side is too small)."""
    yt, yc = y[treated], y[~treated]
    if len(yt) < 2 or len(yc) < 2:
        return None, None
    return float(yt.mean() - yc.mean()), float(np.sqrt(yt.var(ddof=1) / len(yt) + yc.var(ddof=1) / len(yc)))


def evidence(scores: np.ndarray, treated: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Uplift by decile of predicted uplift (observed, with 95 % intervals) and the Qini curve:
    for the top k tenths, the treated's total outcome minus the held-out's scaled to the treated
    count, against random targeting (the straight line to the overall gain)."""
    treated = treated.astype(bool)
    order = np.argsort(-scores, kind="stable")
    deciles = []
    for k, part in enumerate(np.array_split(order, 10)):
        observed, se = _diff(y[part], treated[part])
        deciles.append(
            {
                "decile": k + 1,
                "people": len(part),
                "predicted": round(float(scores[part].mean()), 4) if len(part) else None,
                "observed": None if observed is None else round(observed, 4),
                "ci_low": None if se is None else round(observed - Z95 * se, 4),
                "ci_high": None if se is None else round(observed + Z95 * se, 4),
            }
        )
    qini = [{"share": 0.0, "gain": 0.0}]
    for k in range(1, 11):
        top = order[: round(len(order) * k / 10)]
        t, c = treated[top], ~treated[top]
        gain = float(y[top][t].sum() - (y[top][c].sum() * t.sum() / c.sum() if c.sum() else 0.0))
        qini.append({"share": k / 10, "gain": round(gain, 2)})
    overall = qini[-1]["gain"]
    for point in qini:
        point["random"] = round(overall * point["share"], 2)
    # The Qini coefficient: area between the model's curve and random targeting, per person.
    area = sum((a["gain"] - a["random"] + b["gain"] - b["random"]) / 2 * 0.1 for a, b in pairwise(qini))
    return {"deciles": deciles, "qini": qini, "qini_coefficient": round(area / max(len(y), 1), 4)}


def top_tags(tag_lists: Sequence[Sequence[str]], k: int = TOP_TAGS) -> list[str]:
    counts: dict[str, int] = {}
    for tags in tag_lists:
        for tag in tags:
            counts[tag] = counts.get(tag, 0) + 1
    return sorted(counts, key=lambda t: (-counts[t], t))[:k]


def matrix(rows: Sequence[Sequence[Any]], tiers: Sequence[str], tags: Sequence[str]) -> np.ndarray:
    """Rows of (tier, predicted value, churn risk, frequency, monetary, days since seen, tags) as
    numbers: the tier one-hot, the numbers as they are (missing: NaN, which the trees handle), the
    most common tags one-hot."""
    out = np.full((len(rows), len(tiers) + 5 + len(tags)), np.nan)
    tier_index = {t: i for i, t in enumerate(tiers)}
    tag_index = {t: i for i, t in enumerate(tags)}
    for r, (tier, value, churn, frequency, monetary, days, person_tags) in enumerate(rows):
        out[r, : len(tiers)] = 0
        if tier in tier_index:
            out[r, tier_index[tier]] = 1
        base = len(tiers)
        for j, x in enumerate((value, churn, frequency, monetary, days)):
            out[r, base + j] = np.nan if x is None else float(x)
        out[r, base + 5 :] = 0
        for tag in person_tags or ():
            if tag in tag_index:
                out[r, base + 5 + tag_index[tag]] = 1
    # A number nobody has (no predictions yet, say) is a constant, not a column of gaps: the
    # binning of the trees cannot take a column without any value.
    out[:, np.isnan(out).all(axis=0)] = 0
    return out
