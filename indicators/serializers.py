"""Shapes of the indicator API: the query parameters (validated, so bad input is a 400 naming the
field) and the replies, which the OpenAPI schema describes exactly."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from indicators.analyses import CHURN_SAMPLE, MAX_CHURN_SAMPLE, MAX_PERIODS
from indicators.models import (
    GOAL_MAX_YEAR,
    GOAL_MIN_YEAR,
    CohortBasis,
    CohortGranularity,
    Funnel,
    FunnelStep,
    Goal,
    GoalMonth,
    GoalPeriod,
    GoalProfile,
    Sensitivity,
    goal_step,
)

EVENT_NAME = r"^[a-z0-9_.:\-]{1,64}$"


def _today():
    return datetime.now(UTC).date()


class WindowInput(serializers.Serializer):
    """`start` and `end` (inclusive UTC days); by default the 30 days ending today."""

    max_days = 366
    default_days = 30

    start = serializers.DateField(required=False, help_text="First day (YYYY-MM-DD), inclusive.")
    end = serializers.DateField(required=False, help_text="Last day (YYYY-MM-DD), inclusive; default today (UTC).")

    def validate(self, data):
        for field in ("start", "end"):
            if data.get(field) and not 1970 <= data[field].year <= 2200:
                raise serializers.ValidationError({field: ["must be between 1970 and 2200"]})
        end = data.get("end") or _today()
        start = data.get("start") or end - timedelta(days=self.default_days - 1)
        if end < start:
            raise serializers.ValidationError({"end": ["must not be before start"]})
        if (end - start).days + 1 > self.max_days:
            raise serializers.ValidationError({"end": [f"the window is at most {self.max_days} days"]})
        return {**data, "start": start, "end": end}


class AnalysisWindowInput(WindowInput):
    """Ad hoc analyses have shorter windows: funnels read raw events, churn reads every day of its
    window for its sample."""

    max_days = 92


class RetentionInput(WindowInput):
    max_days = 3 * 366
    default_days = 180

    granularity = serializers.ChoiceField(choices=CohortGranularity.choices, default=CohortGranularity.MONTH)
    basis = serializers.ChoiceField(choices=CohortBasis.choices, default=CohortBasis.ACTIVITY)
    periods = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=30,
        help_text="Periods after the cohort's first (default: 30 days, 12 weeks or months).",
    )

    def validate(self, data):
        data = super().validate(data)
        granularity = data["granularity"]
        periods = data.get("periods") or (30 if granularity == CohortGranularity.DAY else 12)
        if periods > MAX_PERIODS[granularity]:
            raise serializers.ValidationError(
                {"periods": [f"at most {MAX_PERIODS[granularity]} for {granularity} cohorts"]}
            )
        return {**data, "periods": periods}


class SearchInput(WindowInput):
    zero_results = serializers.BooleanField(default=False, help_text="Only queries that found nothing.")


class KeyBehaviourInput(AnalysisWindowInput):
    event = serializers.RegexField(EVENT_NAME, help_text="The behaviour: an event name, e.g. `search`.")
    first_days = serializers.IntegerField(
        default=7, min_value=1, max_value=30, help_text="Days after signup in which it counts."
    )
    retained_from = serializers.IntegerField(
        default=7, min_value=1, max_value=90, help_text="Retention is measured from this day after signup ..."
    )
    retained_days = serializers.IntegerField(default=7, min_value=1, max_value=90, help_text="... for this many days.")


class ChurnInput(AnalysisWindowInput):
    end = serializers.DateField(
        required=False,
        help_text="Last day (YYYY-MM-DD), inclusive; default `churn_days` before today (UTC), the last day "
        "whose churn days are over.",
    )
    churn_days = serializers.IntegerField(
        default=30, min_value=1, max_value=180, help_text="Churned: no activity in this many days after `end`."
    )
    last_events = serializers.IntegerField(
        default=3, min_value=1, max_value=20, help_text="How many of a person's last events count."
    )
    sample = serializers.IntegerField(
        default=CHURN_SAMPLE,
        min_value=100,
        max_value=MAX_CHURN_SAMPLE,
        help_text="At most this many people's last events are read (a fixed draw by a hash of their key); "
        "larger is more precise and slower.",
    )

    def validate(self, data):
        # A window ending today would call everyone churned: nobody has had the churn days to return.
        if not data.get("end"):
            end = default_churn_end(data["churn_days"])
            if data.get("start") and data["start"] > end:
                raise serializers.ValidationError(
                    {"start": [f"is after {end}, the last day whose churn days are over; give `end` for another"]}
                )
            data = {**data, "end": end}
        return super().validate(data)


def default_churn_end(churn_days: int) -> date:
    return _today() - timedelta(days=churn_days)


# --- replies --------------------------------------------------------------------------------------


class _Page(serializers.Serializer):
    count = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)


class IndicatorOutput(serializers.Serializer):
    key = serializers.CharField()
    label = serializers.CharField()
    unit = serializers.CharField()
    fold = serializers.CharField(help_text="How days fold into a month: sum, mean or last.")
    description = serializers.CharField()


class IndicatorPage(_Page):
    results = IndicatorOutput(many=True)


class DayValue(serializers.Serializer):
    day = serializers.DateField()
    value = serializers.CharField(help_text="A decimal string (money with two places).")


class SeriesPage(_Page):
    key = serializers.CharField()
    label = serializers.CharField()
    unit = serializers.CharField()
    fold = serializers.CharField()
    start = serializers.DateField()
    end = serializers.DateField()
    total = serializers.CharField(help_text="The window's days folded as the indicator says (a decimal string).")
    results = DayValue(many=True)


class RetentionPeriod(serializers.Serializer):
    period = serializers.IntegerField()
    users = serializers.IntegerField()
    percent = serializers.DecimalField(max_digits=5, decimal_places=1, allow_null=True)


class CohortOutput(serializers.Serializer):
    cohort = serializers.DateField(help_text="First day of the cohort's day, week (Monday) or month.")
    size = serializers.IntegerField()
    retention = RetentionPeriod(many=True)


class RetentionPage(_Page):
    granularity = serializers.CharField()
    basis = serializers.CharField()
    periods = serializers.IntegerField()
    results = CohortOutput(many=True)


class PurchaseSummary(serializers.Serializer):
    start = serializers.DateField()
    end = serializers.DateField()
    active_users = serializers.IntegerField()
    paying_users = serializers.IntegerField()
    orders = serializers.IntegerField()
    revenue = serializers.DecimalField(max_digits=20, decimal_places=2)
    arpu = serializers.DecimalField(max_digits=20, decimal_places=2, allow_null=True)
    arppu = serializers.DecimalField(max_digits=20, decimal_places=2, allow_null=True)
    repurchase_rate = serializers.DecimalField(max_digits=6, decimal_places=4, allow_null=True)


class SearchQueryOutput(serializers.Serializer):
    query = serializers.CharField()
    searches = serializers.IntegerField()
    zero_results = serializers.IntegerField()


class SearchPage(_Page):
    start = serializers.DateField()
    end = serializers.DateField()
    searches = serializers.IntegerField()
    zero_result_rate = serializers.DecimalField(max_digits=6, decimal_places=4, allow_null=True)
    results = SearchQueryOutput(many=True)


class FunnelStepOutput(serializers.ModelSerializer):
    class Meta:
        model = FunnelStep
        fields = ["position", "event_name", "label"]


class FunnelOutput(serializers.ModelSerializer):
    steps = FunnelStepOutput(many=True, read_only=True)

    class Meta:
        model = Funnel
        fields = ["id", "name", "description", "window_hours", "steps"]


class FunnelStepResult(serializers.Serializer):
    position = serializers.IntegerField()
    event_name = serializers.CharField()
    label = serializers.CharField()
    users = serializers.IntegerField()
    conversion_from_first = serializers.DecimalField(max_digits=6, decimal_places=4, allow_null=True)
    conversion_from_previous = serializers.DecimalField(max_digits=6, decimal_places=4, allow_null=True)


class FunnelReport(serializers.Serializer):
    funnel = serializers.IntegerField()
    name = serializers.CharField()
    window_hours = serializers.IntegerField()
    start = serializers.DateField()
    end = serializers.DateField()
    steps = FunnelStepResult(many=True)


class BehaviourGroup(serializers.Serializer):
    group = serializers.ChoiceField(choices=["did", "did_not"])
    users = serializers.IntegerField()
    retained = serializers.IntegerField()
    retention_rate = serializers.DecimalField(max_digits=6, decimal_places=4, allow_null=True)


class KeyBehaviourReport(serializers.Serializer):
    event_name = serializers.CharField()
    start = serializers.DateField()
    end = serializers.DateField()
    first_days = serializers.IntegerField()
    retained_from = serializers.IntegerField()
    retained_days = serializers.IntegerField()
    complete = serializers.BooleanField(help_text="False while the last signups' retention days are not over.")
    groups = BehaviourGroup(many=True)
    difference = serializers.DecimalField(max_digits=6, decimal_places=4, allow_null=True)
    test = serializers.ChoiceField(choices=["chi_square", "fisher_exact", "none"])
    p_value = serializers.FloatField(allow_null=True)


class ChurnBehaviour(serializers.Serializer):
    event_name = serializers.CharField()
    churned = serializers.IntegerField()
    churned_share = serializers.DecimalField(max_digits=6, decimal_places=4, allow_null=True)
    retained = serializers.IntegerField()
    retained_share = serializers.DecimalField(max_digits=6, decimal_places=4, allow_null=True)
    lift = serializers.DecimalField(max_digits=12, decimal_places=2, allow_null=True)


class ChurnPage(_Page):
    start = serializers.DateField()
    end = serializers.DateField()
    churn_days = serializers.IntegerField()
    last_events = serializers.IntegerField()
    complete = serializers.BooleanField(help_text="False while the churn days after `end` are not over.")
    churned_users = serializers.IntegerField()
    retained_users = serializers.IntegerField()
    sampled_users = serializers.IntegerField(
        help_text="People whose last events were read: the shares are of them (everyone, when fewer than "
        "`sample` were active)."
    )
    results = ChurnBehaviour(many=True)


class IndicatorErrorOutput(serializers.Serializer):
    reason = serializers.CharField()
    detail = serializers.CharField()


# --- goals ---------------------------------------------------------------------------------------

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


# --- anomaly alerts ------------------------------------------------------------------------------


class MoverOutput(serializers.Serializer):
    source = serializers.CharField(help_text="`utm_source` of the events, `(direct)` without one.")
    measure = serializers.CharField(help_text="`events`, `people`, `orders` or `revenue`.")
    value = serializers.CharField()
    usual = serializers.CharField(help_text="Mean of the compared windows (same weekday or hour before).")
    change = serializers.CharField()
    relative = serializers.FloatField(allow_null=True)


class AlertOutput(serializers.Serializer):
    id = serializers.IntegerField()
    indicator = serializers.CharField()
    granularity = serializers.CharField(help_text="`daily` or `hourly`.")
    period_start = serializers.DateTimeField()
    value = serializers.DecimalField(max_digits=20, decimal_places=4)
    expected = serializers.DecimalField(max_digits=20, decimal_places=4)
    low = serializers.DecimalField(max_digits=20, decimal_places=4)
    high = serializers.DecimalField(max_digits=20, decimal_places=4)
    score = serializers.FloatField()
    direction = serializers.CharField()
    movers = MoverOutput(many=True)
    status = serializers.CharField(help_text="`new` or `acknowledged`.")
    acknowledged_at = serializers.DateTimeField(allow_null=True)
    note = serializers.CharField()
    email_status = serializers.CharField()
    webhook_status = serializers.CharField()
    notify_error = serializers.CharField()


class AcknowledgeInput(serializers.Serializer):
    note = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)


class WatchInput(serializers.Serializer):
    muted = serializers.BooleanField(required=False)
    sensitivity = serializers.ChoiceField(choices=Sensitivity.choices, required=False)

    def validate(self, data):
        if not data:
            raise serializers.ValidationError({"non_field_errors": ["Give `muted`, `sensitivity` or both."]})
        return data


class WatchOutput(serializers.Serializer):
    indicator = serializers.CharField()
    muted = serializers.BooleanField()
    sensitivity = serializers.CharField()


class CheckRunOutput(serializers.Serializer):
    id = serializers.IntegerField()
    kind = serializers.CharField()
    period_start = serializers.DateTimeField()
    status = serializers.CharField(help_text="`queued`, `running`, `done` or `failed`.")
    requested_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    indicators_checked = serializers.IntegerField()
    alerts = serializers.IntegerField()
    error = serializers.CharField(help_text="Why it failed (`ExceptionClass: message`).")
