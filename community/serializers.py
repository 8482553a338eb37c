"""Input and output shapes of the community API."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from community.models import CommunityGroup, ContributionScore, OperatorAccount, ScoreRun
from config.api import IdField

MONTH_RE = re.compile(r"([0-9]{4})-(0[1-9]|1[0-2])")
MAX_RANGE_DAYS = 366
# Dates far outside any data would overflow the window arithmetic (a year-1 date minus 90 days).
EARLIEST, LATEST = date(1971, 1, 1), date(2999, 12, 31)


def parse_month(value: Any, field: str = "month") -> date:
    if not isinstance(value, str) or not MONTH_RE.fullmatch(value):
        raise serializers.ValidationError({field: ["A month as YYYY-MM, e.g. 2026-05."]})
    year, month = map(int, value.split("-"))
    if not EARLIEST.year <= year <= LATEST.year:
        raise serializers.ValidationError({field: [f"A month from {EARLIEST.year} to {LATEST.year}."]})
    return date(year, month, 1)


@extend_schema_field({"type": "string", "pattern": "^[0-9]{4}-(0[1-9]|1[0-2])$", "example": "2026-05"})
class MonthField(serializers.Field):
    def to_internal_value(self, data: Any) -> date:
        try:
            return parse_month(data)
        except serializers.ValidationError as exc:
            raise serializers.ValidationError(exc.detail["month"]) from None

    def to_representation(self, value: date) -> str:
        return f"{value:%Y-%m}"


class RangeQuery(serializers.Serializer):
    """`start`/`end` dates (end exclusive); the last 90 days by default."""

    start = serializers.DateField(required=False)
    end = serializers.DateField(required=False)

    def validate_start(self, value: date) -> date:
        return _in_range(value)

    def validate_end(self, value: date) -> date:
        return _in_range(value)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        today = datetime.now(tz=UTC).date()
        end = attrs.get("end") or today + timedelta(days=1)
        start = attrs.get("start") or end - timedelta(days=90)
        if start >= end:
            raise serializers.ValidationError({"end": ["Must be after start."]})
        if (end - start).days > MAX_RANGE_DAYS:
            raise serializers.ValidationError({"end": [f"At most {MAX_RANGE_DAYS} days after start."]})
        return {
            "start": datetime(start.year, start.month, start.day, tzinfo=UTC),
            "end": datetime(end.year, end.month, end.day, tzinfo=UTC),
        }


def _in_range(value: date) -> date:
    if not EARLIEST <= value <= LATEST:
        raise serializers.ValidationError(f"A date from {EARLIEST} to {LATEST}.")
    return value


class WindowQuery(serializers.Serializer):
    days = serializers.IntegerField(required=False, min_value=1, max_value=365, default=30)
    as_of = serializers.DateTimeField(required=False)

    def validate_as_of(self, value: datetime) -> datetime:
        _in_range(value.date())
        return value


class CommunityFunnelStepOutput(serializers.Serializer):
    step = serializers.CharField()
    label = serializers.CharField()
    count = serializers.IntegerField()
    rate_from_previous = serializers.FloatField(allow_null=True)
    rate_from_start = serializers.FloatField(allow_null=True)


class CommunityFunnelSliceOutput(serializers.Serializer):
    key = serializers.JSONField(allow_null=True)
    label = serializers.CharField()
    steps = CommunityFunnelStepOutput(many=True)


class CommunityFunnelOutput(serializers.Serializer):
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    as_of = serializers.DateTimeField()
    overall = CommunityFunnelStepOutput(many=True)
    by_channel = CommunityFunnelSliceOutput(many=True)
    by_operator = CommunityFunnelSliceOutput(many=True, help_text="From 'added an operator' on")
    by_group = CommunityFunnelSliceOutput(many=True, help_text="From 'active in a group' on")


class CommunityCohortOutput(serializers.Serializer):
    week = serializers.DateField()
    contacts = serializers.IntegerField()
    active = serializers.IntegerField()
    active_rate = serializers.FloatField(allow_null=True)
    bought_again = serializers.IntegerField()
    bought_again_rate = serializers.FloatField(allow_null=True)


class GroupRepurchaseOutput(serializers.Serializer):
    window_days = serializers.IntegerField()
    members = serializers.IntegerField()
    matched_members = serializers.IntegerField()
    member_rate = serializers.FloatField(allow_null=True)
    matched_non_member_rate = serializers.FloatField(allow_null=True)
    difference = serializers.FloatField(allow_null=True)
    ci_low = serializers.FloatField(allow_null=True)
    ci_high = serializers.FloatField(allow_null=True)
    p_value = serializers.FloatField(allow_null=True)


class CommunityGroupHealthOutput(serializers.Serializer):
    id = serializers.IntegerField()
    external_id = serializers.CharField()
    name = serializers.CharField()
    operator = serializers.CharField(allow_null=True)
    members = serializers.IntegerField()
    joins = serializers.IntegerField()
    leaves = serializers.IntegerField()
    active_members = serializers.IntegerField()
    active_share = serializers.FloatField(allow_null=True)
    messages = serializers.IntegerField()
    lifecycle = serializers.DictField(child=serializers.IntegerField())
    repurchase = GroupRepurchaseOutput()


class CompetitorAppOutput(serializers.Serializer):
    app = serializers.CharField()
    users = serializers.IntegerField()
    overlap_share = serializers.FloatField(allow_null=True)
    retention_with = serializers.FloatField()
    retention_without = serializers.FloatField(allow_null=True)
    difference = serializers.FloatField(allow_null=True)
    ci_low = serializers.FloatField(allow_null=True)
    ci_high = serializers.FloatField(allow_null=True)
    p_value = serializers.FloatField(allow_null=True)
    significant = serializers.BooleanField()


class CompetitorAppsOutput(serializers.Serializer):
    as_of = serializers.DateTimeField()
    window_days = serializers.IntegerField()
    people = serializers.IntegerField()
    retained = serializers.IntegerField()
    retention = serializers.FloatField(allow_null=True)
    apps = CompetitorAppOutput(many=True)


class OperatorAccountOutput(serializers.ModelSerializer):
    class Meta:
        model = OperatorAccount
        fields = ["id", "external_id", "name", "operator", "first_seen_at", "created_at"]


class CommunityGroupOutput(serializers.ModelSerializer):
    class Meta:
        model = CommunityGroup
        fields = ["id", "external_id", "name", "operator", "first_seen_at", "created_at"]


class CommunityUnassignedOutput(serializers.Serializer):
    accounts = OperatorAccountOutput(many=True)
    groups = CommunityGroupOutput(many=True)


class OperatorAssignInput(serializers.Serializer):
    operator = IdField(allow_null=True, help_text="A staff user's id; null to unassign")


class ContributionScoreRunInput(serializers.Serializer):
    month = MonthField(help_text="YYYY-MM")


class ContributionScoreRunOutput(serializers.ModelSerializer):
    month = MonthField()

    class Meta:
        model = ScoreRun
        fields = [
            "id",
            "month",
            "status",
            "requested_at",
            "started_at",
            "finished_at",
            "operators",
            "teams",
            "weights",
            "error",
        ]


class ContributionScoreOutput(serializers.ModelSerializer):
    month = MonthField()
    name = serializers.CharField(source="subject_name")
    score = serializers.DecimalField(max_digits=6, decimal_places=2)

    class Meta:
        model = ContributionScore
        fields = ["id", "month", "subject", "operator", "team", "name", "members", "score", "rank", "breakdown", "run"]


class ContributionScoreDetailOutput(ContributionScoreOutput):
    class Meta(ContributionScoreOutput.Meta):
        fields = [*ContributionScoreOutput.Meta.fields, "sources"]
