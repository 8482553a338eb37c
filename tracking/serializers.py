"""Shapes of the tracking API. Input is validated by `tracking.validation` (fast, per event); the
serializers here describe the same contract to the OpenAPI schema and render the reply."""

from __future__ import annotations

from decimal import Decimal

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from tracking.models import GOAL_MAX_YEAR, GOAL_MIN_YEAR, EventKind, Goal, GoalMonth, GoalPeriod, GoalProfile, goal_step
from tracking.validation import MAX_BATCH


class EventContextInput(serializers.Serializer):
    url = serializers.CharField(required=False, allow_null=True, max_length=4096)
    referrer = serializers.CharField(required=False, allow_null=True, max_length=4096)
    utm_source = serializers.CharField(required=False, allow_null=True, max_length=128)
    utm_medium = serializers.CharField(required=False, allow_null=True, max_length=128)
    utm_campaign = serializers.CharField(required=False, allow_null=True, max_length=128)
    device = serializers.CharField(required=False, allow_null=True, max_length=64)
    os = serializers.CharField(required=False, allow_null=True, max_length=64)
    ip = serializers.IPAddressField(required=False, allow_null=True)
    locale = serializers.CharField(required=False, allow_null=True, max_length=32)


class EventInput(serializers.Serializer):
    event_id = serializers.UUIDField(help_text="A repeated id is counted as a duplicate, not stored twice.")
    name = serializers.RegexField(r"^[a-z0-9_.:\-]{1,64}$", max_length=64)
    kind = serializers.ChoiceField(
        choices=EventKind.choices,
        required=False,
        help_text="Default `behavior`; `page_view` defaults to `traffic`, `order_paid`/`order_refunded` to `business`.",
    )
    timestamp = serializers.DateTimeField(help_text="With a time zone; at most 10 minutes in the future.")
    user_id = serializers.CharField(required=False, allow_null=True, max_length=128)
    anonymous_id = serializers.CharField(required=False, allow_null=True, max_length=128)
    properties = serializers.DictField(required=False, help_text="At most 32 KiB as JSON.")
    context = EventContextInput(
        required=False,
        help_text="Known keys become columns (the path is taken from `url`, and `utm_*` keys left out from "
        "the url's query); other keys are kept as they are.",
    )


class EventBatchInput(serializers.Serializer):
    events = serializers.ListField(child=EventInput(), min_length=1, max_length=MAX_BATCH)


class RejectedEventOutput(serializers.Serializer):
    index = serializers.IntegerField(help_text="Position of the event in the batch, from 0.")
    errors = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        help_text="Reasons per field; context keys are named `context.<key>`.",
    )


class IngestOutput(serializers.Serializer):
    accepted = serializers.IntegerField(help_text="Events stored by this call.")
    duplicates = serializers.IntegerField(help_text="Valid events whose event_id was already stored.")
    rejected = RejectedEventOutput(many=True)


# --- goals --------------------------------------------------------------------------------------

GOAL_TARGET_MAX = Decimal("999999999999999.9999")
GOAL_STATUSES = "`upcoming`, `on_track`, `behind`, `met` or `missed`."


class GoalInput(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    indicator = serializers.CharField(max_length=64, help_text="Key of a registered indicator (`GET /indicators`).")
    period = serializers.ChoiceField(choices=GoalPeriod.choices)
    year = serializers.IntegerField(min_value=GOAL_MIN_YEAR, max_value=GOAL_MAX_YEAR)
    quarter = serializers.IntegerField(
        min_value=1, max_value=4, required=False, allow_null=True, help_text="Required for a quarterly goal."
    )
    target = serializers.DecimalField(
        max_digits=19,
        decimal_places=4,
        min_value=Decimal("0.0001"),
        max_value=GOAL_TARGET_MAX,
        help_text="Money and counts take at most 2 decimals, ratios 4.",
    )
    profile = serializers.ChoiceField(choices=GoalProfile.choices, required=False, default=GoalProfile.EVEN)
    weights = serializers.ListField(
        child=serializers.DecimalField(max_digits=19, decimal_places=6, min_value=Decimal(0)),
        required=False,
        max_length=12,
        help_text="One weight per month of the period, for `profile: weights`.",
    )

    def validate(self, data):
        if data["period"] == GoalPeriod.QUARTER and not data.get("quarter"):
            raise serializers.ValidationError({"quarter": ["A quarterly goal needs its quarter (1 to 4)."]})
        if data["period"] == GoalPeriod.YEAR and data.get("quarter"):
            raise serializers.ValidationError({"quarter": ["A yearly goal has no quarter."]})
        if data.get("profile") == GoalProfile.WEIGHTS and not data.get("weights"):
            raise serializers.ValidationError({"weights": ["Give the weights per month for `profile: weights`."]})
        return data


class GoalDecomposeInput(serializers.Serializer):
    profile = serializers.ChoiceField(choices=GoalProfile.choices)
    weights = serializers.ListField(
        child=serializers.DecimalField(max_digits=19, decimal_places=6, min_value=Decimal(0)),
        required=False,
        max_length=12,
    )
    target = serializers.DecimalField(
        max_digits=19, decimal_places=4, min_value=Decimal("0.0001"), max_value=GOAL_TARGET_MAX, required=False
    )

    def validate(self, data):
        if data["profile"] == GoalProfile.WEIGHTS and not data.get("weights"):
            raise serializers.ValidationError({"weights": ["Give the weights per month for `profile: weights`."]})
        return data


def goal_value(value: Decimal | None, unit: str) -> str | None:
    """Values as decimal strings: two places (money, counts), four for ratios."""
    return None if value is None else str(value.quantize(goal_step(unit)))


class GoalMonthOutput(serializers.Serializer):
    month = serializers.DateField(help_text="First day of the month.")
    weight = serializers.DecimalField(max_digits=20, decimal_places=6, help_text="Share of the weights.")
    target = serializers.SerializerMethodField(help_text="A share of the goal (sum) or a level (mean, last).")

    def get_target(self, row: GoalMonth) -> str:
        return goal_value(row.target, self.context.get("unit") or row.goal.unit)


class GoalOutput(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    indicator = serializers.CharField()
    unit = serializers.CharField()
    fold = serializers.CharField()
    period = serializers.CharField()
    year = serializers.IntegerField()
    quarter = serializers.IntegerField(allow_null=True)
    target = serializers.SerializerMethodField()
    profile = serializers.CharField()
    weights = serializers.ListField(child=serializers.CharField())
    months = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()

    def get_target(self, goal: Goal) -> str:
        return goal_value(goal.target, goal.unit)

    @extend_schema_field(GoalMonthOutput(many=True))
    def get_months(self, goal: Goal) -> list[dict]:
        return GoalMonthOutput(goal.month_targets.all(), many=True, context={"unit": goal.unit}).data


class MonthProgressOutput(serializers.Serializer):
    month = serializers.DateField()
    days = serializers.IntegerField()
    elapsed_days = serializers.IntegerField()
    target = serializers.CharField()
    expected = serializers.CharField(allow_null=True, help_text="What the elapsed days should have made.")
    actual = serializers.CharField(allow_null=True)
    status = serializers.CharField(help_text=GOAL_STATUSES)


class GoalProgressOutput(serializers.Serializer):
    goal = GoalOutput()
    indicator_label = serializers.CharField()
    as_of = serializers.DateField(help_text="The last complete day (UTC) counted.")
    actual = serializers.CharField(allow_null=True)
    expected = serializers.CharField(allow_null=True)
    progress = serializers.FloatField(allow_null=True, help_text="Actual so far over the goal's target.")
    status = serializers.CharField(help_text=GOAL_STATUSES)
    warnings = serializers.ListField(child=serializers.CharField())
    months = MonthProgressOutput(many=True)


def progress_body(progress) -> dict:
    unit = progress.goal.unit
    return {
        "goal": GoalOutput(progress.goal).data,
        "indicator_label": progress.label,
        "as_of": progress.as_of,
        "actual": goal_value(progress.actual, unit),
        "expected": goal_value(progress.expected, unit),
        "progress": None if progress.progress is None else round(progress.progress, 4),
        "status": progress.status,
        "warnings": progress.warnings,
        "months": [
            {
                "month": m.month,
                "days": m.days,
                "elapsed_days": m.elapsed_days,
                "target": goal_value(m.target, unit),
                "expected": goal_value(m.expected, unit),
                "actual": goal_value(m.actual, unit),
                "status": m.status,
            }
            for m in progress.months
        ],
    }
