"""Output shapes of the predictions API."""

from __future__ import annotations

from rest_framework import serializers

from predictions.models import PredictionRun


class PredictionRunOutput(serializers.ModelSerializer):
    status = serializers.CharField(read_only=True, help_text="queued, running, done, skipped or failed")
    error = serializers.CharField(read_only=True, help_text="Why a failed run stopped (exception and message)")
    clv_outcome = serializers.CharField(
        read_only=True, help_text="fitted, not_enough_data or not_converged (the last good model is kept)"
    )
    churn_outcome = serializers.CharField(read_only=True, help_text="fitted or not_enough_data")

    class Meta:
        model = PredictionRun
        fields = [
            "id",
            "status",
            "error",
            "requested_at",
            "started_at",
            "finished_at",
            "reference_at",
            "horizon_days",
            "customers",
            "scored",
            "tier_changes",
            "tagged",
            "untagged",
            "clv_outcome",
            "clv_reason",
            "clv_params",
            "clv_calibration",
            "churn_outcome",
            "churn_reason",
            "churn_metrics",
            "timings",
        ]
        read_only_fields = fields


class ModelStateOutput(serializers.Serializer):
    state = serializers.ChoiceField(
        choices=["never_run", "ok", "not_enough_data", "not_converged", "failed"],
        help_text="How the latest finished run went",
    )
    detail = serializers.CharField(allow_blank=True, help_text="Why, when the state is not ok")
    latest_run = PredictionRunOutput(allow_null=True)
