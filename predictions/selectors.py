"""Reads of the predictions domain: one profile's predictions for the API and customer service,
the state of the models, and the distribution by predicted-value tier."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import connection
from django.utils.translation import gettext

from predictions.models import ModelOutcome, PredictedTier, Prediction, PredictionRun, RunStatus
from profiles.models import Profile


def _prediction_row(profile: Profile) -> Prediction | None:
    """Read once per profile instance: the profile API and the lookup ask separately."""
    relation = Profile.prediction.related
    if relation.is_cached(profile):
        return relation.get_cached_value(profile)
    row = Prediction.objects.select_related("tier").filter(profile_id=profile.pk).first()
    relation.set_cached_value(profile, row)
    return row


def _money(value: Decimal | None) -> str | None:
    return None if value is None else f"{value:.2f}"


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def predictions_of(profile: Profile) -> dict[str, Any] | None:
    """The profile API's `predictions`: null until a run has scored this customer."""
    row = _prediction_row(profile)
    if row is None:
        return None
    return {
        "purchases_90d": _round(row.purchases_90d, 4),
        "value_90d": _money(row.value_90d),
        "value_365d": _money(row.value_365d),
        "p_alive": _round(row.p_alive, 4),
        "churn_risk": row.churn_risk,
        "tier": row.tier.slug if row.tier else None,
        "model_version": row.model_version,
        "computed_at": row.computed_at.isoformat(),
    }


def predictions_section(profile: Profile) -> dict[str, Any] | None:
    """The "predictions" section of the customer-service 360 view."""
    data = predictions_of(profile)
    if data is None:
        return None
    row = _prediction_row(profile)
    return {
        **data,
        "purchases_365d": _round(row.purchases_365d, 4),
        "tier_name": row.tier.name if row.tier else None,
        "past_value": _money(row.past_value),
    }


def predicted_tier_slug(profile_id: int) -> str | None:
    """The predicted-value tier of one profile (coupon eligibility asks this)."""
    return (
        Prediction.objects.filter(profile_id=profile_id, tier__isnull=False)
        .values_list("tier__slug", flat=True)
        .first()
    )


def latest_run() -> PredictionRun | None:
    return (
        PredictionRun.objects.exclude(status__in=[RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.SKIPPED])
        .order_by("-pk")
        .first()
    )


def model_state() -> dict[str, Any]:
    """What operators and the API see of the models: the latest run's outcome per model and why,
    and the run whose models are in use."""
    latest = latest_run()
    if latest is None:
        return {"state": "never_run", "detail": "No prediction run has finished yet.", "latest_run": None}
    if latest.status == RunStatus.FAILED:
        state, detail = "failed", latest.error
    elif ModelOutcome.NOT_ENOUGH_DATA in (latest.clv_outcome, latest.churn_outcome):
        state = "not_enough_data"
        detail = " ".join(reason for reason in (latest.clv_reason, latest.churn_reason) if reason)
    elif ModelOutcome.NOT_CONVERGED in (latest.clv_outcome, latest.churn_outcome):
        state, detail = "not_converged", " ".join(r for r in (latest.clv_reason, latest.churn_reason) if r)
    else:
        state, detail = "ok", ""
    return {"state": state, "detail": detail, "latest_run": latest}


def tier_distribution() -> dict[str, Any]:
    """Customers, spend so far and predicted 365-day value per predicted-value tier."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT tier_id, count(*), COALESCE(sum(past_value), 0), COALESCE(sum(value_365d), 0)
            FROM predictions_prediction GROUP BY tier_id
            """
        )
        rows = {row[0]: row[1:] for row in cursor.fetchall()}
    total = sum(row[0] for row in rows.values())
    predicted = sum((row[2] for row in rows.values()), Decimal(0))
    tiers = []
    for tier in PredictedTier.objects.all():
        count, past, value = rows.pop(tier.pk, (0, Decimal(0), Decimal(0)))
        tiers.append(_tier_row(tier.pk, tier.slug, tier.name, count, past, value, total, predicted))
    if None in rows:
        count, past, value = rows.pop(None)
        tiers.append(_tier_row("", "", "(no predicted tier)", count, past, value, total, predicted))
    return {"customers": total, "predicted_value": predicted, "tiers": tiers}


def _tier_row(pk, slug, name, count, past, value, total, predicted) -> dict[str, Any]:
    return {
        "id": pk,
        "key": slug,
        "label": name,
        "count": count,
        "count_share": count / total if total else 0.0,
        "past_value": past,
        "value_365d": value,
        "value_share": float(value / predicted) if predicted else 0.0,
    }


TIER_AT_SQL = """
SELECT DISTINCT ON (profile_id) profile_id, to_value AS tier
FROM predictions_predictionchange WHERE at <= %s
ORDER BY profile_id, at DESC, id DESC
"""


def tier_on(profile_id: int, at: datetime) -> str:
    """A profile's predicted-value tier at a past moment, rebuilt from the history ("" for none)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT to_value FROM predictions_predictionchange WHERE profile_id = %s AND at <= %s "
            "ORDER BY at DESC, id DESC LIMIT 1",
            [profile_id, at],
        )
        row = cursor.fetchone()
    return row[0] if row else ""


def tier_counts_on(at: datetime) -> dict[str, int]:
    """Customers per predicted-value tier at a past moment, rebuilt from the history."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT tier, count(*) FROM ({TIER_AT_SQL}) t WHERE tier <> '' GROUP BY tier", [at])
        return dict(cursor.fetchall())


def tier_panel() -> dict[str, Any]:
    """The predicted-value tiers as a table of crm's tier page, beside the RFM tiers."""
    from django.urls import reverse

    data = tier_distribution()
    base = reverse("admin:predictions_prediction_changelist")
    return {
        "name": "predicted-tiers",
        "title": gettext("Predicted-value tiers"),
        "columns": [
            gettext("Customers"),
            gettext("Share of customers"),
            gettext("Spend so far"),
            gettext("Predicted 365-day value"),
            gettext("Share of value"),
        ],
        "rows": [
            {
                "label": row["label"],
                "url": f"{base}?tier__id__exact={row['id']}" if row["id"] != "" else f"{base}?tier__isnull=True",
                "cells": [
                    row["count"],
                    f"{row['count_share'] * 100:.0f}%",
                    f"{row['past_value']:.2f}",
                    f"{row['value_365d']:.2f}",
                    f"{row['value_share'] * 100:.0f}%",
                ],
            }
            for row in data["tiers"]
        ],
    }
