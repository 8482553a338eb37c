"""Churn risk: a gradient-boosted classifier on behaviour features, calibrated so that a risk of
70 means seven in ten such customers place no order within the horizon.

Training uses a time split: features as of the cut-off (the reference minus the horizon), the
label whether the customer ordered in the horizon after it. The reported AUC and calibration
are out-of-fold: every customer is scored by a model that did not train on them. The baseline is
a plain logistic regression on recency, frequency and value, on the same folds.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.inspection import permutation_importance
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

MIN_CUSTOMERS = 200
MIN_PER_CLASS = 30
FOLDS = 3
# Beyond these many customers a sample trains and evaluates the model: the fit's quality stops
# improving long before a million rows, and the nightly window is bounded.
MAX_TRAIN_ROWS = 15_000
SEED = 20050101
# The plain baseline the churn model must beat: recency, frequency and value alone.
RFM_COLUMNS = ["recency_days", "orders", "spend"]


class NotEnoughData(ValueError):
    """Too few customers, or too few of either outcome, to learn churn from."""


@dataclass
class ChurnModel:
    estimator: Any
    columns: list[str]
    metrics: dict[str, Any] = field(default_factory=dict)

    def risk(self, matrix: pd.DataFrame) -> np.ndarray:
        """Churn risk 0-100 per row; columns the model was not trained on are ignored, and
        missing ones (a feature provider gone, no purchase model tonight) read as unknown (NaN),
        which the boosted trees send down the branch most customers took."""
        frame = matrix.reindex(columns=self.columns, fill_value=np.nan)
        return np.clip(np.rint(self.estimator.predict_proba(frame)[:, 1] * 100), 0, 100).astype(int)

    def dumps(self) -> bytes:
        return pickle.dumps({"estimator": self.estimator, "columns": self.columns})

    @classmethod
    def loads(cls, blob: bytes) -> ChurnModel:
        # Only ever bytes this module wrote to the run table, never user input.
        stored = pickle.loads(blob)  # noqa: S301
        return cls(estimator=stored["estimator"], columns=stored["columns"])


class FillEmptyColumns(TransformerMixin, BaseEstimator):
    """Columns with no value at all in the rows a model is fitted on become zeros. The boosted
    trees read a missing value as its own case, but their binning fails on a column that is
    missing everywhere: a young shop, say, where no customer had two purchase days by the
    cut-off, so none has a gap between them (in a fold of the cross-validation, too few rows may
    be enough). Such a column then carries no information, which is what a constant says."""

    def fit(self, X: Any, y: Any = None) -> FillEmptyColumns:
        self.empty_ = np.isnan(np.asarray(X, dtype=float)).all(axis=0)
        return self

    def transform(self, X: Any) -> np.ndarray:
        values = np.array(X, dtype=float)
        values[:, self.empty_] = 0.0
        return values


def _classifier() -> CalibratedClassifierCV:
    boosted = HistGradientBoostingClassifier(
        # Trees of two levels (each sees one interaction, such as lateness given spend), slowly:
        # on a few thousand customers deeper ones learn noise. Chosen by the mean out-of-fold AUC
        # over five splits of the Online Retail benchmark (`bench/churn.py --splits 5`).
        max_iter=100,
        learning_rate=0.05,
        max_depth=2,
        min_samples_leaf=50,
        l2_regularization=1.0,
        random_state=SEED,
    )
    # Calibration on held-out folds: boosted trees rank well but their raw scores are not
    # probabilities. Platt's sigmoid: isotonic steps overfit the few thousand customers of a
    # small shop.
    return CalibratedClassifierCV(make_pipeline(FillEmptyColumns(), boosted), method="sigmoid", cv=3)


def _baseline() -> Any:
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))


def calibration_deciles(y: np.ndarray, p: np.ndarray) -> list[dict[str, float]]:
    """Customers in ten equal groups by predicted risk: mean predicted against observed churn,
    in points (0-100)."""
    order = np.argsort(p, kind="stable")
    rows = []
    for i, chunk in enumerate(np.array_split(order, 10), start=1):
        if len(chunk) == 0:
            continue
        predicted, observed = float(p[chunk].mean() * 100), float(y[chunk].mean() * 100)
        rows.append(
            {
                "decile": i,
                "customers": len(chunk),
                "predicted": round(predicted, 2),
                "observed": round(observed, 2),
                "error": round(abs(predicted - observed), 2),
            }
        )
    return rows


def train(matrix: pd.DataFrame, churned: np.ndarray) -> ChurnModel:
    """Evaluate out of fold, then fit on every (sampled) customer. NotEnoughData when the history
    cannot support a model."""
    y = np.asarray(churned, dtype=int)
    n = len(y)
    if n < MIN_CUSTOMERS:
        raise NotEnoughData(f"{n} customers with an order before the cut-off; at least {MIN_CUSTOMERS} are needed")
    positives = int(y.sum())
    if min(positives, n - positives) < MIN_PER_CLASS:
        raise NotEnoughData(
            f"{positives} churned and {n - positives} retained customers; at least {MIN_PER_CLASS} of each are needed"
        )
    rng = np.random.default_rng(SEED)
    if n > MAX_TRAIN_ROWS:
        keep = np.sort(rng.choice(n, MAX_TRAIN_ROWS, replace=False))
        matrix, y = matrix.iloc[keep].reset_index(drop=True), y[keep]
    columns = list(matrix.columns)
    oof, oof_baseline = out_of_fold(matrix, y)
    estimator = _classifier().fit(matrix, y)
    deciles = calibration_deciles(y, oof)
    metrics = {
        "customers": len(y),
        "churn_rate": round(float(y.mean()), 4),
        "auc": round(float(roc_auc_score(y, oof)), 4),
        "baseline_auc": round(float(roc_auc_score(y, oof_baseline)), 4),
        "calibration": deciles,
        "calibration_error_max": max(row["error"] for row in deciles),
        "calibration_error_mean": round(float(np.mean([row["error"] for row in deciles])), 2),
        "importances": _importances(estimator, matrix, y, rng),
    }
    return ChurnModel(estimator=estimator, columns=columns, metrics=metrics)


def out_of_fold(matrix: pd.DataFrame, churned: np.ndarray, *, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Each customer's churn probability from the model and from the baseline, each fitted on
    the other folds only (customers split at random by `seed`, stratified by outcome)."""
    y = np.asarray(churned, dtype=int)
    X = matrix.to_numpy(dtype=float)
    X_rfm = matrix[RFM_COLUMNS].to_numpy(dtype=float)
    oof = np.zeros(len(y))
    oof_baseline = np.zeros(len(y))
    for train_index, test_index in StratifiedKFold(FOLDS, shuffle=True, random_state=seed).split(X, y):
        model = _classifier().fit(X[train_index], y[train_index])
        oof[test_index] = model.predict_proba(X[test_index])[:, 1]
        baseline = _baseline().fit(X_rfm[train_index], y[train_index])
        oof_baseline[test_index] = baseline.predict_proba(X_rfm[test_index])[:, 1]
    return oof, oof_baseline


def _importances(estimator: Any, matrix: pd.DataFrame, y: np.ndarray, rng: np.random.Generator) -> list[dict]:
    """Permutation importance (drop in AUC when a feature is shuffled), on a bounded sample:
    the features that tell the model most, largest first."""
    sample = rng.choice(len(y), min(len(y), 3000), replace=False)
    if len(set(y[sample])) < 2:
        return []
    result = permutation_importance(
        estimator, matrix.iloc[sample], y[sample], scoring="roc_auc", n_repeats=2, random_state=SEED
    )
    rows = [
        {"feature": name, "importance": round(float(value), 4)}
        for name, value in zip(matrix.columns, result.importances_mean, strict=True)
    ]
    return sorted(rows, key=lambda row: -row["importance"])
