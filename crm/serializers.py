"""Output shapes of the customer-value API."""

from __future__ import annotations

from rest_framework import serializers

from crm.models import RecomputeRun


class RecomputeRunOutput(serializers.ModelSerializer):
    status = serializers.CharField(read_only=True, help_text="queued, running, done, skipped or failed")
    error = serializers.CharField(read_only=True, help_text="Why a failed run stopped (exception and message)")
    scheme = serializers.CharField(source="scheme.name", default=None, read_only=True)

    class Meta:
        model = RecomputeRun
        fields = [
            "id",
            "status",
            "error",
            "scheme",
            "requested_at",
            "started_at",
            "finished_at",
            "reference_at",
            "window_days",
            "profiles",
            "customers",
            "changes",
            "managers_assigned",
            "unassigned_for_capacity",
            "timings",
        ]
        read_only_fields = fields
