"""Where predictions show and act: the profile API, the customer-service lookup, the model-state
and run API, segments, coupon eligibility, crm's tier page and the admin's model charts."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from campaigns.segments import audience_sql
from config import formatting
from coupons import services as coupon_services
from predictions import services
from predictions.models import Prediction, PredictionRun
from tests.factories.coupons import CouponRuleFactory
from tests.factories.crm import CustomerFactory
from tests.factories.predictions import shop_history

pytestmark = pytest.mark.django_db

KEYS = {"purchases_90d", "value_90d", "value_365d", "p_alive", "churn_risk", "model_version", "computed_at"}


@pytest.fixture(scope="module")
def scored(django_db_setup, django_db_blocker):
    """One shop scored once for the whole module (the models take seconds to train), removed at
    the end so that other modules start from empty tables."""
    from django.apps import apps

    from crm.services import ensure_default_setup as crm_setup

    with django_db_blocker.unblock():
        apps.get_app_config("predictions").ready()
        crm_setup()
        services.ensure_default_setup()
        now = timezone.now().replace(microsecond=0)
        shop = shop_history(customers=400, now=now, prefix="surface")
        run = services.recompute_predictions(now=now)
        yield shop, run
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute(
                "TRUNCATE predictions_prediction, predictions_predictionchange, predictions_predictionrun, "
                "profiles_profiletag, profiles_tagchange, profiles_tag, profiles_identity, tracking_event, "
                "profiles_profile CASCADE"
            )


def _top(shop) -> Prediction:
    return Prediction.objects.select_related("profile").filter(tier__slug="top-5").first()


def test_profile_api_shows_predictions_with_money_as_decimal_strings(scored, api_client):
    shop, run = scored
    row = _top(shop)
    body = api_client.get(f"/api/v1/profiles/{row.profile.user_id}").json()
    predictions = body["predictions"]
    assert set(predictions) >= KEYS
    assert predictions["value_365d"] == f"{row.value_365d:.2f}" and predictions["churn_risk"] == row.churn_risk
    assert predictions["tier"] == "top-5" and predictions["model_version"] == f"clv-{run.pk}.churn-{run.pk}"


def test_profile_api_predictions_are_null_until_computed(scored, api_client):
    fresh = CustomerFactory()
    assert api_client.get(f"/api/v1/profiles/{fresh.user_id}").json()["predictions"] is None


def test_the_lookup_shows_the_predictions_section(scored, staff_client):
    row = _top(scored[0])
    result = staff_client("Customer service").get("/api/v1/support/lookup", {"q": row.profile.user_id})
    section = result.json()["results"][0]["sections"]["predictions"]
    assert section["tier_name"] == "Top 5 % predicted value" and section["value_90d"] == f"{row.value_90d:.2f}"


def test_model_state_and_run_api(scored, make_api_client):
    _shop, run = scored
    ops = make_api_client("manage")
    state = ops.get("/api/v1/predictions/model").json()
    assert state["state"] == "ok" and state["latest_run"]["id"] == run.pk
    assert state["latest_run"]["churn_metrics"]["auc"] > 0.5
    shown = ops.get(f"/api/v1/prediction-runs/{run.pk}").json()
    assert shown["clv_params"]["bgnbd"]["r"] > 0
    assert ops.post(f"/api/v1/prediction-runs/{run.pk}/retry").json()["reason"] == "NOT_FAILED"
    assert ops.get("/api/v1/prediction-runs/424242").json()["reason"] == "RUN_NOT_FOUND"
    assert ops.get("/api/v1/prediction-runs/x").status_code == 404


def test_failed_run_shows_in_api_and_admin_state(scored, make_api_client, client, make_staff):
    failed = PredictionRun.objects.create(status="failed", error="RuntimeError: disk full")
    try:
        state = make_api_client("manage").get("/api/v1/predictions/model").json()
        assert (state["state"], state["detail"]) == ("failed", "RuntimeError: disk full")
        client.force_login(make_staff("Operations"))
        page = client.get(reverse("admin:predictions_predictionrun_changelist")).content.decode()
        assert "Last run failed" in page and "RuntimeError: disk full" in page
        retried = client.post(
            reverse("admin:predictions_predictionrun_changelist"), {"action": "retry", "_selected_action": [failed.pk]}
        )
        assert retried.status_code == 302
        failed.refresh_from_db()
        assert failed.status == "queued"
    finally:
        failed.delete()


def test_segments_select_by_predicted_tier(scored):
    from django.db import connection

    sql, params = audience_sql({"predicted_tier": ["top-5"]})
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        members = {row[0] for row in cursor.fetchall()}
    assert members == set(Prediction.objects.filter(tier__slug="top-5").values_list("profile_id", flat=True))
    assert members


def test_coupon_eligibility_admits_a_predicted_tier(scored):
    rule = CouponRuleFactory(eligible_tiers=["high-value-at-risk"])
    at_risk = Prediction.objects.select_related("profile").filter(tier__slug="high-value-at-risk").first()
    other = Prediction.objects.select_related("profile").filter(tier__isnull=True).first()
    assert coupon_services.eligibility_refusal(rule=rule, profile=at_risk.profile) is None
    refusal = coupon_services.eligibility_refusal(rule=rule, profile=other.profile)
    assert refusal is not None and refusal.reason == "TIER_NOT_ELIGIBLE"


def test_crm_tier_page_lists_the_predicted_tiers(scored, client, make_staff):
    client.force_login(make_staff("Operations"))
    html = client.get(reverse("admin:crm_customervalue_distribution")).content.decode()
    top = Prediction.objects.filter(tier__slug="top-5").count()
    assert "Predicted-value tiers" in html and "Top 5 % predicted value" in html
    assert f'<td style="text-align: right">{top}</td>' in html


def test_admin_run_page_draws_holdout_calibration_auc_and_features(scored, client, make_staff):
    _shop, run = scored
    client.force_login(make_staff("Analyst"))
    html = client.get(reverse("admin:predictions_predictionrun_change", args=[run.pk])).content.decode()
    assert 'id="holdout"' in html and 'id="churn-calibration"' in html and 'id="importances"' in html
    assert f'AUC <strong id="churn-auc">{formatting.number(run.churn_metrics["auc"], 3)}</strong>' in html
    assert "recency_days" in html
    listing = client.get(reverse("admin:predictions_prediction_changelist")).content.decode()
    assert 'id="predicted-tiers"' in listing and "High value at risk" in listing
    # Money with its currency, shares as percentages, P(alive) as a percentage (config/formatting.py).
    best = Prediction.objects.order_by("-value_365d").first()
    assert formatting.money(best.value_365d) in listing and formatting.percent(best.p_alive, 0) in listing
    assert "floatformat" not in listing and " %</td>" in listing


def test_tier_page_moves_are_in_the_history(scored):
    from predictions.selectors import tier_counts_on

    counts = tier_counts_on(timezone.now() + timedelta(seconds=1))
    assert counts == {
        slug: Prediction.objects.filter(tier__slug=slug).count() for slug in ("top-5", "high-value-at-risk")
    }
