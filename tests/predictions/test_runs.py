"""The nightly run on a shop's history: every customer scored, predicted-value tiers with their
history, the churn tag, and what happens with too little data, a fit that does not converge and
a run that fails."""

from __future__ import annotations

import logging
from datetime import timedelta
from decimal import Decimal

import pandas as pd
import pytest
from django.core.management import call_command
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from access.models import AuditEntry
from predictions import clv, selectors, services
from predictions.errors import RunNotFailed
from predictions.models import PredictedTier, Prediction, PredictionChange, PredictionRun, PredictionSettings
from profiles.models import ProfileTag, TagChange
from tests.factories.crm import CustomerFactory
from tests.factories.predictions import one_order, shop_history

pytestmark = pytest.mark.django_db


@pytest.fixture
def now():
    return timezone.now().replace(microsecond=0)


@pytest.fixture
def shop(now):
    return shop_history(customers=500, now=now)


def test_a_run_scores_every_customer_with_fitted_models(shop, now):
    run = services.recompute_predictions(now=now)
    assert run.status == "done" and (run.clv_outcome, run.churn_outcome) == ("fitted", "fitted")
    assert run.customers == run.scored == 500 == Prediction.objects.count()
    bg = run.clv_params["bgnbd"]
    assert all(bg[k] > 0 for k in ("r", "alpha", "a", "b")) and run.clv_params["gamma_gamma"]["q"] > 1
    row = Prediction.objects.order_by("-value_365d").first()
    assert isinstance(row.value_365d, Decimal) and row.value_365d > row.value_90d > 0
    assert row.purchases_365d > row.purchases_90d > 0 and 0 <= row.p_alive <= 1
    assert Prediction.objects.filter(churn_risk__isnull=True).count() == 0
    assert set(run.timings) == set(services.RUN_STEPS)


def test_holdout_calibration_sets_predicted_against_actual_purchases_per_bucket(shop, now):
    run = services.recompute_predictions(now=now)
    buckets = run.clv_calibration["buckets"]
    assert [b["repeat_purchases"] for b in buckets][:3] == ["0", "1", "2"]
    assert sum(b["customers"] for b in buckets) > 0
    # A sound model predicts more for those who bought more, as they did buy more.
    assert buckets[0]["predicted"] < buckets[2]["predicted"] and buckets[0]["actual"] < buckets[2]["actual"]
    total_predicted = sum(b["predicted"] * b["customers"] for b in buckets)
    total_actual = sum(b["actual"] * b["customers"] for b in buckets)
    assert total_actual * 0.6 < total_predicted < total_actual * 1.6


def test_churn_model_reports_auc_baseline_calibration_and_features(shop, now):
    metrics = services.recompute_predictions(now=now).churn_metrics
    assert 0.5 < metrics["auc"] <= 1 and 0.5 < metrics["baseline_auc"] <= 1
    assert len(metrics["calibration"]) == 10 and metrics["calibration_error_max"] >= metrics["calibration_error_mean"]
    assert {row["feature"] for row in metrics["importances"]} >= {"recency_days", "orders", "spend", "messages_30d"}


def test_top_tier_holds_about_the_top_five_percent_by_predicted_value(shop, now):
    services.recompute_predictions(now=now)
    top = Prediction.objects.filter(tier__slug="top-5")
    assert 20 <= top.count() <= 30
    cut = min(p.value_365d for p in top)
    others = Prediction.objects.exclude(tier__slug="top-5")
    assert others.filter(value_365d__gt=cut).count() == 0


def test_high_value_at_risk_are_big_past_spenders_unlikely_alive(shop, now):
    services.recompute_predictions(now=now)
    at_risk = list(Prediction.objects.filter(tier__slug="high-value-at-risk"))
    assert at_risk
    spend = sorted(p.past_value for p in Prediction.objects.all())
    assert all(p.p_alive <= 0.5 and p.past_value >= spend[int(len(spend) * 0.8) - 1] for p in at_risk)


def test_tier_history_records_first_tiers_and_rebuilds_the_tier_at_a_moment(shop, now):
    run = services.recompute_predictions(now=now)
    tiered = Prediction.objects.filter(tier__isnull=False).count()
    assert run.tier_changes == tiered == PredictionChange.objects.filter(from_value="").count()
    row = Prediction.objects.filter(tier__isnull=False).select_related("tier").first()
    assert selectors.tier_on(row.profile_id, now) == row.tier.slug
    assert selectors.tier_on(row.profile_id, now - timedelta(seconds=1)) == ""
    again = services.recompute_predictions(now=now)
    assert again.tier_changes == 0  # the same night again moves nobody


def test_churn_tag_holds_exactly_the_customers_at_the_threshold_and_records_gains(shop, now):
    PredictionSettings.objects.update(churn_threshold=50, churn_tag="likely-to-leave")
    run = services.recompute_predictions(now=now)
    members = set(ProfileTag.objects.filter(tag__name="likely-to-leave").values_list("profile_id", flat=True))
    risky = set(Prediction.objects.filter(churn_risk__gte=50).values_list("profile_id", flat=True))
    assert members == risky and run.tagged == len(risky) > 0
    assert TagChange.objects.filter(tag__name="likely-to-leave", action="added").count() == len(risky)
    PredictionSettings.objects.update(churn_threshold=100)
    later = services.recompute_predictions(now=now)
    assert later.untagged == len(risky) and not ProfileTag.objects.filter(tag__name="likely-to-leave").exists()


def test_a_new_shop_gets_not_enough_data_without_a_crash(now, caplog):
    for i in range(3):
        one_order(CustomerFactory(), at=now - timedelta(days=10 + i))
    with caplog.at_level(logging.WARNING, logger="predictions.services"):
        run = services.recompute_predictions(now=now)
    assert run.status == "done" and (run.clv_outcome, run.churn_outcome) == ("not_enough_data", "not_enough_data")
    assert "3 customers; at least 50" in run.clv_reason and "No earlier model" in run.clv_reason
    assert not Prediction.objects.exists()
    state = selectors.model_state()
    assert state["state"] == "not_enough_data" and "at least 50" in state["detail"]
    assert any("not_enough_data" in r.getMessage() for r in caplog.records)


def test_a_young_shop_where_nobody_had_bought_twice_by_the_cut_off_still_gets_a_churn_model(now):
    # Every customer's first and only purchase day before the cut-off (90 days ago): no gap
    # between purchase days is known there, so that feature is missing for everyone trained on.
    for i in range(260):
        customer = CustomerFactory()
        one_order(customer, at=now - timedelta(days=100 + i % 60, hours=i % 7))
        if i % 3 == 0:
            one_order(customer, at=now - timedelta(days=5 + i % 50))
    run = services.recompute_predictions(now=now)
    assert run.status == "done" and run.churn_outcome == "fitted", (run.status, run.error, run.churn_reason)
    assert run.churn_metrics["customers"] == 260
    risks = list(Prediction.objects.values_list("churn_risk", flat=True))
    assert len(risks) == 260 and all(r is not None and 0 <= r <= 100 for r in risks)


def test_a_fit_that_does_not_converge_keeps_the_last_good_model_and_says_so(shop, now, monkeypatch):
    good = services.recompute_predictions(now=now)
    before = {p.profile_id: p.value_365d for p in Prediction.objects.all()}

    def diverging(*args, **kwargs):
        raise clv.FitFailed("BG/NBD did not converge: maximum number of function evaluations exceeded")

    monkeypatch.setattr(clv, "fit_bgnbd", diverging)
    later = services.recompute_predictions(now=now + timedelta(days=1))
    assert later.status == "done" and later.clv_outcome == "not_converged"
    assert f"Kept the model of run {good.pk}" in later.clv_reason and later.clv_params == {}
    assert set(Prediction.objects.values_list("clv_run_id", flat=True)) == {good.pk}
    # Scored again with the kept parameters a day later: a day older, no purchase, worth less.
    after = {p.profile_id: p.value_365d for p in Prediction.objects.all()}
    assert sum(after.values()) < sum(before.values())
    assert selectors.model_state()["state"] == "not_converged"


def test_a_failed_run_is_visible_logged_and_retried(
    shop, now, monkeypatch, caplog, admin_user, django_capture_on_commit_callbacks
):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(services, "_write", broken)
    with caplog.at_level(logging.ERROR, logger="predictions.services"), pytest.raises(RuntimeError):
        services.recompute_predictions(now=now)
    run = PredictionRun.objects.get()
    assert (run.status, run.error) == ("failed", "RuntimeError: disk full")
    assert any(f"prediction run {run.pk} failed" in r.getMessage() and r.exc_info for r in caplog.records)
    assert services.recompute_predictions(run_id=run.pk).status == "failed"  # a redelivery leaves it
    monkeypatch.undo()
    with django_capture_on_commit_callbacks() as queued:
        services.retry_run(run_id=run.pk, actor=admin_user)
    assert len(queued) == 1
    with pytest.raises(RunNotFailed):
        services.retry_run(run_id=run.pk)
    assert services.recompute_predictions(run_id=run.pk, now=now).status == "done"
    assert AuditEntry.objects.filter(action="predictions.run_retried").exists()


def test_customers_whose_orders_were_all_refunded_lose_their_predictions(shop, now):
    services.recompute_predictions(now=now)
    gone = shop.profiles[0]
    from tracking.models import Event

    for event in Event.objects.filter(user_id=gone.user_id, name="order_paid"):
        Event.objects.create(
            event_id=__import__("uuid").uuid4(),
            name="order_refunded",
            kind="business",
            timestamp=now,
            user_id=gone.user_id,
            properties={"order_id": event.properties["order_id"]},
        )
    services.recompute_predictions(now=now + timedelta(seconds=1))
    assert not Prediction.objects.filter(profile_id=gone.pk).exists()


def test_command_shows_progress_and_the_fitted_models(shop, capsys):
    call_command("recompute_predictions")
    captured = capsys.readouterr()
    assert "predictions" in captured.err and "6/6" in captured.err  # the progress bar
    assert "Purchases (BG/NBD): r " in captured.out and "Churn model: AUC " in captured.out
    assert PredictionRun.objects.get().status == "done"


def test_the_nightly_run_is_scheduled_on_the_analytics_queue():
    task = PeriodicTask.objects.get(task="predictions.tasks.recompute_predictions")
    assert task.enabled and task.queue == "analytics" and (task.crontab.hour, task.crontab.minute) == ("3", "30")


def test_a_failed_run_shows_on_the_health_page_until_a_later_run_succeeds(shop, now, monkeypatch):
    from monitoring.selectors import health_report

    monkeypatch.setattr(services, "_write", lambda *args, **kwargs: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        services.recompute_predictions(now=now)
    section = next(s for s in health_report().sections if s.title == "failed prediction run(s)")
    assert [item.reason for item in section.items] == ["ZeroDivisionError: division by zero"]
    monkeypatch.undo()
    services.recompute_predictions(now=now)
    section = next(s for s in health_report().sections if s.title == "failed prediction run(s)")
    assert section.items == []


def test_customers_whose_stored_values_are_equal_get_the_same_tier():
    # Past values 0.10, 0.10, 0.10 and two of 0.30, one of them 0.304999 before rounding to
    # cents; one probability alive just over 0.5 before rounding to six decimals.
    tier = PredictedTier.objects.create(slug="spent-most", name="Spent most", rank=99, min_past_value_percentile=80)
    alive = PredictedTier.objects.create(slug="alive-half", name="Alive half", rank=98, max_p_alive=0.5)
    scores = pd.DataFrame(
        {
            "profile_id": [1, 2, 3, 4, 5],
            "past_value_micros": [100_000, 100_000, 100_000, 300_000, 304_999],
            "p_alive": [0.5000004, 0.6, 0.6, 0.6, 0.6],
            **{name: [1.0] * 5 for name in ("purchases_90d", "purchases_365d", "value_90d", "value_365d")},
            "churn_risk": pd.array([10] * 5, dtype="Int16"),
        }
    )
    stored = services._as_stored(scores)
    assert stored["past_value"].tolist() == [0.1, 0.1, 0.1, 0.3, 0.3]
    # Both 0.30 customers rank at 75 (three of the four others below), under 80: neither is in,
    # where ranking 0.304999 above 0.30 would have put one of them in at 100.
    assert services._tiers(stored).tolist() == [alive.pk, 0, 0, 0, 0]
    assert tier.pk not in services._tiers(stored).tolist()
