"""Input and output shapes of the journeys API."""

from __future__ import annotations

from rest_framework import serializers

from journeys.models import BranchOn, StepKind, TraitOperator


class StepInput(serializers.Serializer):
    kind = serializers.ChoiceField(choices=StepKind.choices)
    variant = serializers.CharField(
        required=False,
        allow_null=True,
        default=None,
        help_text="send: the variant's name in this campaign (none: each person's own variant, their arm); "
        "branch on the variant: which one",
    )
    wait_minutes = serializers.IntegerField(required=False, min_value=0, max_value=60 * 24 * 90, default=0)
    event = serializers.RegexField(r"^[a-z0-9_.:\-]{1,64}$", required=False, allow_blank=True, default="")
    branch_on = serializers.ChoiceField(choices=BranchOn.choices, required=False, allow_blank=True, default="")
    tag = serializers.CharField(required=False, allow_blank=True, max_length=100, default="")
    trait = serializers.CharField(required=False, allow_blank=True, max_length=64, default="")
    trait_operator = serializers.ChoiceField(
        choices=TraitOperator.choices,
        required=False,
        allow_blank=True,
        default="",
        help_text="branch on a trait: how it is compared (default eq); gt/gte/lt/lte take a number or a date "
        "(YYYY-MM-DD), in a comma-separated list, exists and missing no value",
    )
    trait_value = serializers.CharField(required=False, allow_blank=True, max_length=200, default="")
    goto = serializers.IntegerField(required=False, allow_null=True, min_value=0, max_value=100, default=None)


class StepsInput(serializers.Serializer):
    steps = StepInput(many=True, min_length=1, max_length=50)


class SendCountsOutput(serializers.Serializer):
    created = serializers.IntegerField()
    sent = serializers.IntegerField()
    delivered = serializers.IntegerField()
    opened = serializers.IntegerField()
    clicked = serializers.IntegerField()
    failed = serializers.IntegerField()
    skipped = serializers.IntegerField()


class StepOutput(serializers.Serializer):
    position = serializers.IntegerField()
    kind = serializers.CharField()
    label = serializers.CharField()
    variant = serializers.CharField(allow_null=True)
    wait_minutes = serializers.IntegerField()
    event = serializers.CharField()
    branch_on = serializers.CharField()
    tag = serializers.CharField()
    trait = serializers.CharField()
    trait_operator = serializers.CharField()
    trait_value = serializers.CharField()
    goto = serializers.IntegerField(allow_null=True)
    reached = serializers.IntegerField(help_text="People who reached this step")
    waiting = serializers.IntegerField(help_text="People at this step now")
    exited = serializers.IntegerField(help_text="People who left on the goal event while at this step")
    deliveries = SendCountsOutput(allow_null=True, help_text="Send steps: this step's messages")


class RunCountsOutput(serializers.Serializer):
    active = serializers.IntegerField()
    completed = serializers.IntegerField()
    exited = serializers.IntegerField()
    merged = serializers.IntegerField(help_text="Runs folded into the run of the profile they merged into")


class JourneyResultGroupOutput(serializers.Serializer):
    name = serializers.CharField(help_text="holdout, or the variant the arm entered with")
    variant_id = serializers.IntegerField(allow_null=True)
    entered = serializers.IntegerField(help_text="People of this group who entered the journey (holdout: none)")
    assigned = serializers.IntegerField()
    sent = serializers.IntegerField(help_text="People sent at least one of the journey's messages")
    converted = serializers.IntegerField(help_text="People who did the goal event within the attribution window")
    conversion_rate = serializers.FloatField(allow_null=True, help_text="A fraction (0.12 = 12 %)")
    rate_ci_low = serializers.FloatField(allow_null=True, help_text="Always-valid interval of the rate")
    rate_ci_high = serializers.FloatField(allow_null=True)
    uplift_points = serializers.FloatField(allow_null=True, help_text="Rate minus the control's, in percentage points")
    uplift_ci_low_points = serializers.FloatField(allow_null=True, help_text="Always-valid interval of the uplift")
    uplift_ci_high_points = serializers.FloatField(allow_null=True)
    p_value = serializers.FloatField(allow_null=True, help_text="Always-valid p-value against the control")
    beats_control = serializers.BooleanField()


class JourneyResultsOutput(serializers.Serializer):
    control = serializers.CharField(allow_null=True)
    has_holdout = serializers.BooleanField()
    goal_event = serializers.CharField()
    attribution_hours = serializers.IntegerField()
    alpha = serializers.FloatField(allow_null=True)
    method = serializers.CharField(allow_null=True)
    uplift_unit = serializers.CharField()
    summary = serializers.CharField()
    groups = JourneyResultGroupOutput(many=True)


class FailingRunOutput(serializers.Serializer):
    run = serializers.IntegerField()
    user_id = serializers.CharField()
    position = serializers.IntegerField(help_text="The step it is stuck at")
    failures = serializers.IntegerField(help_text="Advances in a row that failed")
    last_error = serializers.CharField(help_text="Why the last advance failed")
    failed_at = serializers.DateTimeField()
    retry_at = serializers.DateTimeField(allow_null=True, help_text="When it is tried again (back-off)")


class FailingRunsOutput(serializers.Serializer):
    runs = serializers.IntegerField(help_text="Runs in the journey whose last advance failed")
    latest = FailingRunOutput(many=True, help_text="The latest 20, newest failure first")


class RetriedOutput(serializers.Serializer):
    retried = serializers.IntegerField(help_text="Failing runs queued to be tried again now")


class JourneyOutput(serializers.Serializer):
    campaign = serializers.IntegerField()
    status = serializers.CharField()
    goal_event = serializers.CharField(help_text="Leaving event: the campaign's goal")
    runs = RunCountsOutput()
    failing = FailingRunsOutput(help_text="Runs that fail to advance, with their reasons")
    results = JourneyResultsOutput(allow_null=True, help_text="Each arm against the holdout; null before the launch")
    steps = StepOutput(many=True)


class LaunchedOutput(serializers.Serializer):
    entered = serializers.IntegerField()


class JourneyErrorOutput(serializers.Serializer):
    reason = serializers.CharField()
    detail = serializers.CharField()
    fields = serializers.DictField(child=serializers.CharField(), required=False)
