"""The churn model on the UCI Online Retail transactions (Chen 2015, CC BY 4.0; see
shared/data/SOURCES.md), through the nightly run's own code path, as `bench/churn.py` runs it:
features as of 2011-09-01, churn = no order in the 90 days after, customers with an order before
the cut-off, quality measured out of fold."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from predictions import services
from predictions.models import Prediction

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import churn as churn_bench

pytestmark = pytest.mark.django_db(transaction=True)

CUTOFF = datetime(2011, 9, 1, tzinfo=UTC)


def test_the_nightly_run_on_online_retail_scores_everyone_and_its_churn_model_beats_logistic_rfm():
    # One load and one run for both halves: the run is the expensive part (about 20 s).
    assert churn_bench.load(churn_bench.DATA) == 18536
    run = services.recompute_predictions(now=CUTOFF + timedelta(days=90))

    metrics = run.churn_metrics
    # 3,317 customers ordered before the cut-off; 43.8 % of them did not order in the 90 days after.
    assert (metrics["customers"], metrics["churn_rate"]) == (3317, 0.438)
    assert metrics["auc"] > metrics["baseline_auc"] > 0.7
    assert metrics["auc"] >= 0.745
    # Gap between predicted and observed churn in each of the ten deciles of predicted risk: the
    # purchase model's features (fitted on the same history) keep every decile within 5 points.
    assert metrics["calibration_error_max"] <= 5
    assert {"p_alive", "expected_purchases_90d"} <= {row["feature"] for row in metrics["importances"]}

    assert run.customers == run.scored == Prediction.objects.count() == 4293
    assert run.clv_outcome == "fitted"
    bg = run.clv_params["bgnbd"]
    # A wholesaler's customers hardly drop out: the dropout probability a / (a + b) is tiny.
    assert bg["a"] / (bg["a"] + bg["b"]) < 0.05
