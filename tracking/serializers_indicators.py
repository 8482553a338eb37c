"""Shapes of the indicator API: the query parameters (validated, so bad input is a 400 naming the
field) and the replies, which the OpenAPI schema describes exactly."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from rest_framework import serializers

from tracking.analyses import CHURN_SAMPLE, MAX_CHURN_SAMPLE, MAX_PERIODS
from tracking.models import CohortBasis, CohortGranularity, Funnel, FunnelStep

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
