"""Writes of the predictions domain: the nightly fit and scoring of every customer, and the
operator actions around it (queue a run, retry a failed one).

A run reads every paid order once and computes every customer from it twice (as of the
reference date and as of the cut-off one horizon earlier), fits the purchase and spend models on
the first, checks them and trains the churn model on the second against what happened since,
scores every customer and writes the scores, the predicted-value tiers (with their history) and
the churn tag in one transaction.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, transaction
from django.utils import timezone
from threadpoolctl import threadpool_limits

from access.services import record_audit
from config import bulk_numbers
from config.celery import publish
from config.failures import log_failure
from predictions import churn, clv, features
from predictions.errors import RunNotFailed, RunNotFound
from predictions.models import ModelOutcome, PredictedTier, PredictionRun, PredictionSettings, RunStatus
from profiles import rules
from profiles.models import Tag, TagSource

logger = logging.getLogger(__name__)

# Names "the predictions run" among PostgreSQL advisory locks (crm's recompute uses another).
RUN_LOCK_KEY = 0x0C0FFEE6

# The steps of a run, in order, as `progress` names them and `PredictionRun.timings` keys them.
RUN_STEPS = ("customers", "purchase_model", "churn_model", "scores", "write", "churn_tag")

# Purchase times are fitted in whole weeks (see clv.fit_bgnbd_in_periods), predicted in days.
FIT_PERIOD_DAYS = 7.0

# Holdout buckets: customers by repeat purchases in the calibration period, the last open-ended.
CALIBRATION_BUCKETS = 7

DEFAULT_TIERS = [
    # slug, name, rank, conditions
    ("top-5", "Top 5 % predicted value", 20, {"min_value_percentile": 95}),
    (
        "high-value-at-risk",
        "High value at risk",
        10,
        {"min_past_value_percentile": 80, "max_p_alive": 0.5},
    ),
]

# Tonight's scores and tiers, as `config.bulk_numbers` writes them: NaN where a score is unknown,
# tier 0 for none.
SCORES_TABLE_SQL = """
CREATE TEMP TABLE pred_scores (
    profile_id bigint, purchases_90d float8, purchases_365d float8, value_90d float8, value_365d float8,
    p_alive float8, past_value float8, churn_risk float8, tier_id bigint
) ON COMMIT DROP
"""
SCORE_COLUMNS = ("purchases_90d", "purchases_365d", "value_90d", "value_365d", "p_alive", "past_value", "churn_risk")

# Every scored customer's row is written (their predictions move each night, if only because
# they grow a day older), tier changes are appended to the history, and rows of profiles that
# are no longer customers (every order refunded, merged away) go, their tier ending in the
# history too. All parts read the table as it was before the statement.
APPLY_SQL = """
WITH scored AS MATERIALIZED (
    SELECT t.profile_id, NULLIF(t.purchases_90d, 'NaN') AS purchases_90d,
           NULLIF(t.purchases_365d, 'NaN') AS purchases_365d,
           round(NULLIF(t.value_90d, 'NaN')::numeric, 2) AS value_90d,
           round(NULLIF(t.value_365d, 'NaN')::numeric, 2) AS value_365d, NULLIF(t.p_alive, 'NaN') AS p_alive,
           round(NULLIF(t.past_value, 'NaN')::numeric, 2) AS past_value,
           NULLIF(t.churn_risk, 'NaN')::smallint AS churn_risk, NULLIF(t.tier_id, 0) AS tier_id,
           old.tier_id AS old_tier_id, old.profile_id IS NOT NULL AS existed
    FROM pred_scores t
    LEFT JOIN predictions_prediction old ON old.profile_id = t.profile_id
    ORDER BY t.profile_id
),
written AS (
    INSERT INTO predictions_prediction AS p (profile_id, purchases_90d, purchases_365d, value_90d, value_365d,
                                             p_alive, past_value, churn_risk, tier_id, clv_run_id, churn_run_id,
                                             computed_at)
    SELECT s.profile_id, s.purchases_90d, s.purchases_365d, s.value_90d, s.value_365d, s.p_alive, s.past_value,
           s.churn_risk, s.tier_id, %(clv_run)s, %(churn_run)s, %(now)s
    FROM scored s
    ON CONFLICT (profile_id) DO UPDATE SET
        purchases_90d = EXCLUDED.purchases_90d, purchases_365d = EXCLUDED.purchases_365d,
        value_90d = EXCLUDED.value_90d, value_365d = EXCLUDED.value_365d, p_alive = EXCLUDED.p_alive,
        past_value = EXCLUDED.past_value, churn_risk = EXCLUDED.churn_risk, tier_id = EXCLUDED.tier_id,
        clv_run_id = EXCLUDED.clv_run_id, churn_run_id = EXCLUDED.churn_run_id, computed_at = EXCLUDED.computed_at
    RETURNING 1
),
gone AS (
    DELETE FROM predictions_prediction p
    WHERE NOT EXISTS (SELECT 1 FROM pred_scores t WHERE t.profile_id = p.profile_id)
    RETURNING p.profile_id, p.tier_id
),
moves AS (
    SELECT s.profile_id, s.old_tier_id, s.tier_id FROM scored s
    WHERE NOT s.existed OR s.old_tier_id IS DISTINCT FROM s.tier_id
    UNION ALL
    SELECT g.profile_id, g.tier_id, NULL FROM gone g WHERE g.tier_id IS NOT NULL
),
logged AS (
    INSERT INTO predictions_predictionchange (profile_id, from_value, to_value, at, run_id)
    SELECT m.profile_id, COALESCE(ot.slug, ''), COALESCE(nt.slug, ''), %(now)s, %(run_id)s
    FROM moves m
    LEFT JOIN predictions_predictedtier ot ON ot.id = m.old_tier_id
    LEFT JOIN predictions_predictedtier nt ON nt.id = m.tier_id
    WHERE COALESCE(ot.slug, '') <> COALESCE(nt.slug, '')
    RETURNING 1
)
SELECT (SELECT count(*) FROM written), (SELECT count(*) FROM logged), (SELECT count(*) FROM gone)
"""

# Members of the churn tag: customers whose risk reached the operator's threshold (score 0-1).
CHURN_TAG_SQL = """
SELECT p.profile_id, tag.id, p.churn_risk / 100.0
FROM predictions_prediction p CROSS JOIN unnest(%(tag_ids)s::bigint[]) AS tag(id)
WHERE p.churn_risk >= %(threshold)s
"""


@transaction.atomic
def ensure_default_setup() -> PredictionSettings:
    """The settings row and the two classic predicted-value tiers, where missing."""
    for slug, name, rank, conditions in DEFAULT_TIERS:
        PredictedTier.objects.get_or_create(slug=slug, defaults={"name": name, "rank": rank, **conditions})
    return current_settings()


def current_settings() -> PredictionSettings:
    found = PredictionSettings.objects.order_by("pk").first()
    return found or PredictionSettings.objects.create()


@transaction.atomic
def request_run(*, requested_by: AbstractBaseUser | None = None) -> PredictionRun:
    """Queue a run now (the admin's button); visible at once as queued."""
    from predictions import tasks  # tasks import services: import here to keep the module graph acyclic

    run = PredictionRun.objects.create(
        requested_by=requested_by if getattr(requested_by, "is_authenticated", False) else None
    )
    record_audit(actor=requested_by, action="predictions.run_requested", obj=run)
    transaction.on_commit(
        lambda: publish(f"prediction run {run.pk}", tasks.recompute_predictions, kwargs={"run_id": run.pk})
    )
    return run


@transaction.atomic
def retry_run(*, run_id: int, actor: AbstractBaseUser | None = None, api_key: Any = None) -> PredictionRun:
    """Queue a failed run again (admin action, API); it starts from the beginning, the failed
    run's transaction having written nothing."""
    from predictions import tasks  # tasks import services: import here to keep the module graph acyclic

    run = PredictionRun.objects.select_for_update().filter(pk=run_id).first()
    if run is None:
        raise RunNotFound(f"No prediction run {run_id}.")
    if run.status != RunStatus.FAILED:
        raise RunNotFailed(f"Prediction run {run_id} is {run.status}: only a failed run is retried.")
    previous = run.error
    run.status, run.error, run.started_at, run.finished_at = RunStatus.QUEUED, "", None, None
    run.save(update_fields=["status", "error", "started_at", "finished_at"])
    record_audit(
        actor=actor, api_key=api_key, action="predictions.run_retried", obj=run, details={"previous_error": previous}
    )
    transaction.on_commit(
        lambda: publish(f"prediction run {run.pk}", tasks.recompute_predictions, kwargs={"run_id": run.pk})
    )
    return run


def recompute_predictions(
    *,
    run_id: int | None = None,
    now: datetime | None = None,
    progress: Callable[[str], None] | None = None,
) -> PredictionRun:
    """Fit, check and score every customer as of `now`. A finished run is returned untouched and
    a run that finds another in progress is marked skipped, so redelivered tasks are harmless. A
    failed run is marked failed with the reason (traceback in the log), the error raised again,
    and stays failed until `retry_run` queues it. `progress(step)` follows `RUN_STEPS`."""
    now = now or timezone.now()
    if run_id is None:
        run = PredictionRun.objects.create(requested_at=now)
    else:
        run = PredictionRun.objects.get(pk=run_id)
        if run.status in (RunStatus.DONE, RunStatus.SKIPPED, RunStatus.FAILED):
            return run
    try:
        config = current_settings()
        PredictionRun.objects.filter(pk=run.pk).update(
            status=RunStatus.RUNNING, started_at=timezone.now(), reference_at=now, horizon_days=config.horizon_days
        )
        _run(run_id=run.pk, now=now, config=config, progress=progress or (lambda step: None))
    except Exception as exc:
        PredictionRun.objects.filter(pk=run.pk).update(
            status=RunStatus.FAILED,
            finished_at=timezone.now(),
            error=log_failure(logger, f"prediction run {run.pk}", exc),
        )
        raise
    run.refresh_from_db()
    return run


def last_good_clv_run(*, before: int) -> PredictionRun | None:
    return (
        PredictionRun.objects.filter(status=RunStatus.DONE, clv_outcome=ModelOutcome.FITTED, pk__lt=before)
        .order_by("-pk")
        .first()
    )


def last_good_churn_run(*, before: int) -> PredictionRun | None:
    return (
        PredictionRun.objects.filter(status=RunStatus.DONE, churn_outcome=ModelOutcome.FITTED, pk__lt=before)
        .exclude(churn_model=None)
        .order_by("-pk")
        .first()
    )


@transaction.atomic
def _run(*, run_id: int, now: datetime, config: PredictionSettings, progress: Callable[[str], None]) -> None:
    timings: dict[str, float] = {}
    started = time.monotonic()

    def done(step: str) -> None:
        nonlocal started
        timings[step] = round(time.monotonic() - started, 3)
        started = time.monotonic()
        progress(step)

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [RUN_LOCK_KEY])
        if not cursor.fetchone()[0]:
            PredictionRun.objects.filter(pk=run_id).update(status=RunStatus.SKIPPED, finished_at=timezone.now())
            return
        # As in crm's recompute: whole-table joins on freshly loaded data, where stale statistics
        # would lead the planner to nested loops and JIT compilation that only cost time.
        cursor.execute("SET LOCAL enable_nestloop = off")
        cursor.execute("SET LOCAL jit = off")
        cursor.execute("SELECT set_config('work_mem', '256MB', true)")

    horizon = config.horizon_days
    cutoff = now - timedelta(days=horizon)
    orders = features.load_orders(now)
    today = orders.customers_at(now, recent_days=horizon)
    before = orders.customers_at(cutoff, recent_days=horizon)
    bought = orders.purchase_days(start=cutoff, end=now)
    del orders
    done("customers")

    update: dict[str, Any] = {"customers": len(today)}
    bgnbd, gamma, clv_run = _purchase_model(run_id, today, before, bought, horizon, update)
    done("purchase_model")
    model, churn_run = _churn_model(run_id, before, bought, update, purchase_model=_calibration_params(update))
    done("churn_model")
    scores = _scores(today, bgnbd, gamma, model)
    done("scores")
    written, tier_changes = _write(scores, run_id=run_id, clv_run=clv_run, churn_run=churn_run, now=now)
    done("write")
    tagged, untagged = _sync_churn_tag(config, now=now, active=churn_run is not None)
    done("churn_tag")
    PredictionRun.objects.filter(pk=run_id).update(
        status=RunStatus.DONE,
        finished_at=timezone.now(),
        scored=written,
        tier_changes=tier_changes,
        tagged=tagged,
        untagged=untagged,
        timings=timings,
        **update,
    )
    logger.info("prediction run %s: %s customers scored, %s tier changes, %s", run_id, written, tier_changes, timings)


def _purchase_model(
    run_id: int,
    today: pd.DataFrame,
    before: pd.DataFrame,
    bought: dict[int, int],
    horizon: int,
    update: dict[str, Any],
) -> tuple[clv.BgNbdParams | None, clv.GammaGammaParams | None, int | None]:
    """Tonight's BG/NBD and Gamma-Gamma fit, else the last good one (and why not tonight's)."""
    previous = last_good_clv_run(before=run_id)
    # Last night's parameters are where tonight's search starts: a night moves them little.
    start = clv.BgNbdParams(**previous.clv_params["bgnbd"]) if previous is not None else None
    try:
        bgnbd = clv.fit_bgnbd_in_periods(today["x"], today["t_x"], today["T"], period=FIT_PERIOD_DAYS, start=start)
        gamma = clv.fit_gamma_gamma(today["x"], today["repeat_mean"].fillna(0))
    except (clv.NotEnoughData, clv.FitFailed) as exc:
        outcome = ModelOutcome.NOT_ENOUGH_DATA if isinstance(exc, clv.NotEnoughData) else ModelOutcome.NOT_CONVERGED
        kept = f" Kept the model of run {previous.pk}." if previous else " No earlier model: no value predictions."
        update.update(clv_outcome=outcome, clv_reason=f"{exc}.{kept}")
        logger.warning("prediction run %s: purchase model %s: %s%s", run_id, outcome, exc, kept)
        if previous is None:
            return None, None, None
        stored = previous.clv_params
        return (
            clv.BgNbdParams(**stored["bgnbd"]),
            clv.GammaGammaParams(**stored["gamma_gamma"]),
            previous.pk,
        )
    update.update(
        clv_outcome=ModelOutcome.FITTED,
        clv_params={"bgnbd": bgnbd.as_dict(), "gamma_gamma": gamma.as_dict(), "time_unit": "day"},
        clv_calibration=_holdout(before, bought, horizon, start=bgnbd),
    )
    return bgnbd, gamma, run_id


def _holdout(before: pd.DataFrame, bought: dict[int, int], horizon: int, *, start: clv.BgNbdParams) -> dict[str, Any]:
    """Fit on what was known at the cut-off, predict the purchases of the horizon since, and set
    them against the actual ones per bucket of earlier repeat purchases (the classic plot)."""
    try:
        params = clv.fit_bgnbd_in_periods(before["x"], before["t_x"], before["T"], period=FIT_PERIOD_DAYS, start=start)
    except (clv.NotEnoughData, clv.FitFailed) as exc:
        return {"reason": str(exc), "buckets": []}
    predicted = clv.expected_purchases(params, horizon, before["x"], before["t_x"], before["T"])
    actual = before["profile_id"].map(bought).fillna(0).to_numpy(dtype=float)
    bucket = np.minimum(before["x"].to_numpy(), CALIBRATION_BUCKETS - 1)
    rows = []
    for b in range(CALIBRATION_BUCKETS):
        chosen = bucket == b
        if not chosen.any():
            continue
        label = f"{b}+" if b == CALIBRATION_BUCKETS - 1 else str(b)
        rows.append(
            {
                "repeat_purchases": label,
                "customers": int(chosen.sum()),
                "predicted": round(float(predicted[chosen].mean()), 4),
                "actual": round(float(actual[chosen].mean()), 4),
            }
        )
    return {"horizon_days": horizon, "params": params.as_dict(), "buckets": rows}


def _calibration_params(update: dict[str, Any]) -> clv.BgNbdParams | None:
    """The BG/NBD fitted on what was known at the cut-off (the holdout calibration's), if any."""
    params = (update.get("clv_calibration") or {}).get("params")
    return clv.BgNbdParams(**params) if params else None


def _churn_model(
    run_id: int,
    before: pd.DataFrame,
    bought: dict[int, int],
    update: dict[str, Any],
    *,
    purchase_model: clv.BgNbdParams | None = None,
) -> tuple[churn.ChurnModel | None, int | None]:
    """Tonight's churn model, trained on the customers at the cut-off with the purchase model
    fitted on the same history (so its features mean at training what they mean when tonight's
    purchase model scores today's customers), else the last good model."""
    churned = (~before["profile_id"].isin(bought.keys())).to_numpy()
    try:
        with threadpool_limits(limits=settings.OPSLOOP_PREDICTION_THREADS):
            model = churn.train(features.model_matrix(before, purchase_model=purchase_model), churned)
    except churn.NotEnoughData as exc:
        previous = last_good_churn_run(before=run_id)
        kept = f" Kept the model of run {previous.pk}." if previous else " No earlier model: no churn risk."
        update.update(churn_outcome=ModelOutcome.NOT_ENOUGH_DATA, churn_reason=f"{exc}.{kept}")
        logger.warning("prediction run %s: churn model not trained: %s%s", run_id, exc, kept)
        if previous is None:
            return None, None
        return churn.ChurnModel.loads(bytes(previous.churn_model)), previous.pk
    update.update(churn_outcome=ModelOutcome.FITTED, churn_metrics=model.metrics, churn_model=model.dumps())
    return model, run_id


def _scores(
    today: pd.DataFrame,
    bgnbd: clv.BgNbdParams | None,
    gamma: clv.GammaGammaParams | None,
    model: churn.ChurnModel | None,
) -> pd.DataFrame:
    scores = pd.DataFrame({"profile_id": today["profile_id"]})
    x, t_x, T = today["x"], today["t_x"], today["T"]
    if bgnbd is not None and gamma is not None:
        spend = clv.expected_spend(gamma, x, today["repeat_mean"].fillna(0))
        scores["purchases_90d"] = clv.expected_purchases(bgnbd, 90, x, t_x, T)
        scores["purchases_365d"] = clv.expected_purchases(bgnbd, 365, x, t_x, T)
        scores["value_90d"] = scores["purchases_90d"] * spend
        scores["value_365d"] = scores["purchases_365d"] * spend
        scores["p_alive"] = clv.probability_alive(bgnbd, x, t_x, T)
    else:
        for column in ("purchases_90d", "purchases_365d", "value_90d", "value_365d", "p_alive"):
            scores[column] = np.nan
    scores["past_value_micros"] = today["spend_micros"]
    with threadpool_limits(limits=settings.OPSLOOP_PREDICTION_THREADS):
        matrix = features.model_matrix(today, purchase_model=bgnbd)
        risk = model.risk(matrix) if model is not None and len(today) else None
    scores["churn_risk"] = (
        pd.array(risk, dtype="Int16")
        if model is not None and len(today)
        else pd.array([None] * len(today), dtype="Int16")
    )
    return scores


def _write(
    scores: pd.DataFrame, *, run_id: int, clv_run: int | None, churn_run: int | None, now: datetime
) -> tuple[int, int]:
    """Decide each customer's tier on the scores as they will be stored, COPY both into a
    scratch table and apply them in set-based SQL."""
    if clv_run is None and churn_run is None:
        return 0, 0  # nothing was predicted: rows of an earlier model stay as they are
    stored = _as_stored(scores)
    with connection.cursor() as cursor:
        cursor.execute(SCORES_TABLE_SQL)
    bulk_numbers.write_columns(
        "pred_scores",
        {
            "profile_id": ("int8", scores["profile_id"].to_numpy(dtype=np.int64)),
            **{name: ("float8", stored[name]) for name in SCORE_COLUMNS},
            "tier_id": ("int8", _tiers(stored)),
        },
    )
    with connection.cursor() as cursor:
        cursor.execute(APPLY_SQL, {"clv_run": clv_run, "churn_run": churn_run, "now": now, "run_id": run_id})
        written, logged, _gone = cursor.fetchone()
        cursor.execute("DROP TABLE pred_scores")
    return written, logged


def _as_stored(scores: pd.DataFrame) -> dict[str, np.ndarray]:
    """The scores as they will be stored (NaN for unknown): money in whole cents, half a cent
    away from zero (the past value exactly, from the spend in millionths; predicted values on
    their float, which PostgreSQL then stores unchanged), purchases and the probability alive to
    six decimals. Tiers are decided on these, so that customers whose stored values are equal are
    treated alike."""

    def cents(values: np.ndarray) -> np.ndarray:
        return np.sign(values) * np.floor(np.abs(values) * 100 + 0.5) / 100

    stored = {
        name: np.round(scores[name].to_numpy(dtype=float, na_value=np.nan), 6)
        for name in ("purchases_90d", "purchases_365d", "p_alive")
    }
    stored["value_90d"] = cents(scores["value_90d"].to_numpy(dtype=float, na_value=np.nan))
    stored["value_365d"] = cents(scores["value_365d"].to_numpy(dtype=float, na_value=np.nan))
    # Spend is never negative: whole cents by integer division, half a cent up.
    stored["past_value"] = ((scores["past_value_micros"].to_numpy(dtype=np.int64) + 5_000) // 10_000) / 100
    stored["churn_risk"] = scores["churn_risk"].to_numpy(dtype=float, na_value=np.nan)
    return stored


def _tiers(stored: dict[str, np.ndarray]) -> np.ndarray:
    """Each scored customer's predicted-value tier (its id, 0 for none): the highest-ranked whose
    conditions all hold, percentiles among the customers scored tonight. An unknown score meets
    no condition on it."""
    value_pct = _percent_rank(stored["value_365d"])
    past_pct = _percent_rank(stored["past_value"])
    p_alive, risk = stored["p_alive"], stored["churn_risk"]
    count = len(p_alive)
    tier = np.zeros(count, dtype=np.int64)
    # From the lowest priority up, each tier taking whom it holds for: the last one wins.
    for candidate in PredictedTier.objects.order_by("rank", "-id"):
        holds = np.ones(count, dtype=bool)
        with np.errstate(invalid="ignore"):
            if candidate.min_value_percentile is not None:
                holds &= value_pct >= candidate.min_value_percentile
            if candidate.min_past_value_percentile is not None:
                holds &= past_pct >= candidate.min_past_value_percentile
            if candidate.max_p_alive is not None:
                holds &= p_alive <= candidate.max_p_alive
            if candidate.min_churn_risk is not None:
                holds &= risk >= candidate.min_churn_risk
        tier[holds] = candidate.pk
    return tier


def _percent_rank(values: np.ndarray) -> np.ndarray:
    """100 x each known value's percent_rank() among the known ones (the share of the others
    below it, as PostgreSQL's); NaN stays NaN."""
    ranked = pd.Series(values, dtype=float)
    return ((ranked.rank(method="min") - 1) / max(ranked.count() - 1, 1) * 100).to_numpy()


def _sync_churn_tag(config: PredictionSettings, *, now: datetime, active: bool) -> tuple[int, int]:
    """The churn tag's members become exactly the customers at or over the threshold; each gain
    is a tag change, so tag-gain triggers react the same night."""
    if not active:
        return 0, 0
    tag, _ = Tag.objects.get_or_create(
        name=config.churn_tag,
        defaults={
            "category": "prediction",
            "source": TagSource.STATISTICAL,
            "description": "Churn risk at or over the threshold set under Predictions > Prediction settings.",
        },
    )
    result = rules.sync_members(
        target_sql=CHURN_TAG_SQL,
        params={"threshold": config.churn_threshold},
        tag_ids=[tag.id],
        source=TagSource.STATISTICAL,
        at=now,
    )
    Tag.objects.filter(pk=tag.pk).update(computed_at=now)
    return result.added, result.removed
