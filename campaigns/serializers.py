"""Input and output shapes of the campaigns API (see the contract in API.md)."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from campaigns import validation
from campaigns.models import TRIGGER_TAG_PATTERN, AllocationKind, Campaign, ChannelKind, Segment, Variant
from campaigns.segments import DefinitionError, compile_definition
from campaigns.selectors import attribution_closes_at
from config.api import IdField
from coupons.models import CouponRule
from materials.models import MaterialVersion

EVENT_NAME = re.compile(r"^[a-z0-9_.:\-]{1,64}$")
TAG_NAME = re.compile(TRIGGER_TAG_PATTERN)
SCHEDULE_KINDS = ("at", "cron", "trigger_event", "trigger_tag")


class AwareDateTimeField(serializers.DateTimeField):
    """A timestamp that must carry its time zone (the contract refuses naive ones)."""

    def to_internal_value(self, value):
        if isinstance(value, str) and not re.search(r"(Z|[+-]\d{2}:?\d{2})$", value.strip()):
            raise serializers.ValidationError("Timestamp needs a time zone (e.g. Z or +08:00).")
        parsed = super().to_internal_value(value)
        return parsed.astimezone(dt.UTC)


class ErrorOutput(serializers.Serializer):
    reason = serializers.CharField()
    detail = serializers.CharField()
    fields = serializers.DictField(
        child=serializers.CharField(), required=False, help_text="INVALID_CONFIGURATION: field -> what is wrong"
    )


# --- segments ----------------------------------------------------------------------------------


class SegmentInput(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    definition = serializers.JSONField(help_text="The definition tree: all/any/not over conditions.")
    description = serializers.CharField(required=False, allow_blank=True, default="")

    def validate_definition(self, value):
        try:
            compile_definition(value)
        except DefinitionError as exc:
            raise serializers.ValidationError(exc.errors) from None
        return value


class SegmentCreated(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    size = serializers.IntegerField()


class SegmentOutput(serializers.ModelSerializer):
    class Meta:
        model = Segment
        fields = ["id", "name", "definition", "description", "created_at", "updated_at"]


class SegmentPreview(serializers.Serializer):
    size = serializers.IntegerField()
    sample = serializers.ListField(child=serializers.CharField())


# --- campaigns ---------------------------------------------------------------------------------


class VariantInput(serializers.Serializer):
    name = serializers.CharField(max_length=64)
    weight = serializers.IntegerField(min_value=1, max_value=10_000, default=50)
    title = serializers.CharField(max_length=200, allow_blank=True, default="")
    body = serializers.CharField(max_length=5000, allow_blank=True, default="")
    url = serializers.URLField(max_length=1000, allow_blank=True, default="")
    coupon_rule = IdField(exists=CouponRule.objects.all(), what="coupon rule", allow_null=True, default=None)
    material_version = IdField(
        exists=MaterialVersion.objects.all(),
        what="material version",
        allow_null=True,
        default=None,
        help_text="Send this material version, personalised per person (title, body and url are then unused); "
        "it must be approved by launch",
    )


class ScheduleInput(serializers.Serializer):
    at = AwareDateTimeField(required=False)
    cron = serializers.CharField(required=False, max_length=100)
    trigger_event = serializers.CharField(required=False, max_length=64)
    trigger_tag = serializers.RegexField(
        TAG_NAME,
        required=False,
        max_length=64,
        help_text="Send when a member gains this tag (after delay_minutes)",
        error_messages={"invalid": "A tag name: 1-64 chars of a-z A-Z 0-9 _ -"},
    )
    delay_minutes = serializers.IntegerField(required=False, min_value=0, max_value=60 * 24 * 30, default=0)

    def validate(self, attrs):
        kinds = [k for k in SCHEDULE_KINDS if k in attrs]
        if len(kinds) > 1:
            raise serializers.ValidationError(
                "Give at most one of at, cron, trigger_event or trigger_tag (none: at launch)."
            )
        if "cron" in attrs and (problem := validation.cron_problem(attrs["cron"])):
            raise serializers.ValidationError({"cron": [problem]})
        if "trigger_event" in attrs and not EVENT_NAME.match(attrs["trigger_event"]):
            raise serializers.ValidationError({"trigger_event": ["1-64 chars of a-z 0-9 _ . : -"]})
        return attrs


def _share(**kwargs):
    return serializers.DecimalField(
        max_digits=5,
        decimal_places=2,
        min_value=Decimal(0),
        max_value=Decimal("99.99"),
        coerce_to_string=False,
        **kwargs,
    )


class CampaignInput(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    segment = IdField(exists=Segment.objects.all(), what="segment")
    channel = serializers.ChoiceField(choices=ChannelKind.choices)
    goal_event = serializers.RegexField(EVENT_NAME, default="order_paid")
    attribution_hours = serializers.IntegerField(min_value=1, max_value=24 * 90, default=72)
    holdout_percent = _share(default=Decimal(10))
    pilot_percent = _share(default=Decimal(0))
    auto_rollout = serializers.BooleanField(default=False)
    alpha = serializers.FloatField(min_value=0.0001, max_value=0.5, default=0.05)
    min_sample = serializers.IntegerField(min_value=0, max_value=10_000_000, default=100)
    variants = VariantInput(many=True, min_length=validation.MIN_VARIANTS, max_length=validation.MAX_VARIANTS)
    schedule = ScheduleInput(required=False, allow_null=True)
    frequency_cap_per_day = serializers.IntegerField(min_value=0, max_value=100, default=1)
    respect_quiet_hours = serializers.BooleanField(default=True)
    quiet_start_hour = serializers.IntegerField(min_value=0, max_value=23, default=21)
    quiet_end_hour = serializers.IntegerField(min_value=0, max_value=23, default=8)
    allocation = serializers.ChoiceField(
        choices=AllocationKind.choices,
        default=AllocationKind.FIXED,
        help_text="fixed: the weights; thompson: a bandit moves newcomers to the variants with the best margin net of "
        "coupon cost (recurring and triggered campaigns only)",
    )
    bandit_floor_percent = _share(default=Decimal(5), help_text="thompson: least share of the audience per variant")
    bandit_interval_minutes = serializers.IntegerField(
        min_value=1,
        max_value=validation.MAX_BANDIT_INTERVAL_MINUTES,
        default=60,
        help_text="thompson: shares change at most this often",
    )
    margin_percent = serializers.DecimalField(
        max_digits=5,
        decimal_places=2,
        min_value=Decimal("0.01"),
        max_value=Decimal(100),
        coerce_to_string=False,
        default=Decimal(30),
        help_text="thompson: share of an order's amount that is margin",
    )
    bandit_seed = serializers.IntegerField(
        required=False,
        allow_null=True,
        default=None,
        min_value=0,
        max_value=2**63 - 1,
        help_text="thompson: fixes the random draws (reproducible shares)",
    )

    def validate_segment(self, value: int) -> Segment:
        segment = Segment.objects.filter(pk=value).first()
        if segment is None:  # deleted since the field's own check
            raise serializers.ValidationError(f"No segment {value}.")
        return segment

    def validate(self, attrs):
        problems = validation.variant_problems((v["name"], v["weight"]) for v in attrs["variants"])
        problems.update(validation.share_problems(attrs["holdout_percent"], attrs["pilot_percent"]))
        problems.update(
            validation.material_problems(
                attrs["channel"],
                [(v["name"], v["material_version"]) for v in attrs["variants"]],
                must_be_approved=False,
            )
        )
        if problem := validation.segment_problem(attrs["segment"].pk):
            problems["segment"] = problem
        schedule = attrs.get("schedule") or {}
        raw = self.initial_data.get("schedule") if isinstance(self.initial_data, dict) else None
        if isinstance(raw, dict):
            unknown = sorted(set(raw) - {*SCHEDULE_KINDS, "delay_minutes"})
            if unknown:
                problems["schedule"] = f"Unknown field(s): {', '.join(unknown)}."
        recurring = {"cron", "trigger_event", "trigger_tag"} & set(schedule)
        if attrs["pilot_percent"] > 0 and recurring and "pilot_percent" not in problems:
            problems["pilot_percent"] = "A pilot applies to one-off sends, not to recurring or triggered ones."
        kind = "cron" if "cron" in schedule else "trigger" if recurring else "at" if "at" in schedule else "now"
        for field, reason in validation.allocation_problems(
            allocation=attrs["allocation"],
            schedule_kind=kind,
            holdout_percent=attrs["holdout_percent"],
            floor_percent=attrs["bandit_floor_percent"],
            interval_minutes=attrs["bandit_interval_minutes"],
            margin_percent=attrs["margin_percent"],
            variant_count=len(attrs["variants"]),
        ).items():
            problems.setdefault(field, reason)
        if problems:
            raise serializers.ValidationError({field: [reason] for field, reason in problems.items()})
        return attrs


class VariantOutput(serializers.ModelSerializer):
    coupon_rule = serializers.IntegerField(source="coupon_rule_id", allow_null=True)
    material_version = serializers.IntegerField(source="material_version_id", allow_null=True)

    class Meta:
        model = Variant
        fields = ["id", "name", "weight", "title", "body", "url", "coupon_rule", "material_version"]


class ScheduleOutput(serializers.Serializer):
    """One of: {} (at launch), at, cron, or a trigger (event or tag) with its delay."""

    at = serializers.DateTimeField(required=False, allow_null=True)
    cron = serializers.CharField(required=False)
    trigger_event = serializers.CharField(required=False)
    trigger_tag = serializers.CharField(required=False)
    delay_minutes = serializers.IntegerField(required=False)


class CountersOutput(serializers.Serializer):
    assigned = serializers.IntegerField()
    pending = serializers.IntegerField()
    sending = serializers.IntegerField()
    sent = serializers.IntegerField()
    delivered = serializers.IntegerField()
    failed = serializers.IntegerField()
    skipped = serializers.IntegerField()
    unknown = serializers.IntegerField(
        help_text="Outcome unknown: the worker stopped while posting (at-most-once channels)"
    )


class CampaignOutput(serializers.ModelSerializer):
    segment = serializers.IntegerField(source="segment_id")
    holdout_percent = serializers.FloatField()
    pilot_percent = serializers.FloatField()
    bandit_floor_percent = serializers.FloatField()
    margin_percent = serializers.FloatField()
    variants = VariantOutput(many=True)
    schedule = serializers.SerializerMethodField()
    winner = serializers.CharField(source="winner.name", allow_null=True, default=None)
    parent = serializers.IntegerField(source="parent_id", allow_null=True)
    attribution_closes_at = serializers.SerializerMethodField()

    class Meta:
        model = Campaign
        fields = [
            "id",
            "name",
            "segment",
            "channel",
            "goal_event",
            "attribution_hours",
            "holdout_percent",
            "pilot_percent",
            "auto_rollout",
            "alpha",
            "min_sample",
            "variants",
            "schedule",
            "frequency_cap_per_day",
            "respect_quiet_hours",
            "quiet_start_hour",
            "quiet_end_hour",
            "allocation",
            "bandit_floor_percent",
            "bandit_interval_minutes",
            "margin_percent",
            "bandit_seed",
            "status",
            "failure_reason",
            "failed_at",
            "phase",
            "winner",
            "parent",
            "iteration",
            "launched_at",
            "pilot_sent_at",
            "rolled_out_at",
            "sent_at",
            "attribution_closes_at",
            "completed_at",
            "created_at",
        ]

    def get_attribution_closes_at(self, obj) -> dt.datetime | None:
        # Sent: results move until then; completed: they are final.
        return attribution_closes_at(obj)

    @extend_schema_field(ScheduleOutput)
    def get_schedule(self, obj) -> dict:
        if obj.schedule_kind == "at":
            return {"at": obj.send_at.isoformat() if obj.send_at else None}
        if obj.schedule_kind == "cron":
            return {"cron": obj.cron}
        if obj.schedule_kind == "trigger" and obj.trigger_tag:
            return {"trigger_tag": obj.trigger_tag, "delay_minutes": obj.delay_minutes}
        if obj.schedule_kind == "trigger":
            return {"trigger_event": obj.trigger_event, "delay_minutes": obj.delay_minutes}
        return {}


class AllocationOutput(serializers.Serializer):
    valid_from = serializers.DateTimeField()
    reason = serializers.ChoiceField(choices=["launch", "thompson", "budget"])
    shares = serializers.DictField(child=serializers.FloatField(), help_text="Group name -> share of newcomers")
    details = serializers.DictField(help_text="Per variant: members, orders, net value, P(best), out of budget")


class CampaignDetailOutput(CampaignOutput):
    counters = serializers.SerializerMethodField()
    warnings = serializers.SerializerMethodField(
        help_text="What may keep the campaign from sending though it is allowed, e.g. a trigger on an event "
        "name never recorded yet."
    )
    shares = serializers.SerializerMethodField(
        help_text="Shares of newcomers in force, by group name (a bandit's latest; the weights for a fixed split)"
    )
    allocation_history = serializers.SerializerMethodField(help_text="A bandit's shares over time, latest first")
    allocation_error = serializers.CharField(
        help_text="Why the bandit's last reallocation failed (the shares in force stay; retried every sweep)"
    )
    allocation_error_at = serializers.DateTimeField(allow_null=True)

    class Meta(CampaignOutput.Meta):
        fields = [
            *CampaignOutput.Meta.fields,
            "counters",
            "warnings",
            "shares",
            "allocation_history",
            "allocation_error",
            "allocation_error_at",
        ]

    @extend_schema_field(serializers.DictField(child=serializers.FloatField()))
    def get_shares(self, obj) -> dict:
        from campaigns.selectors import current_shares

        return current_shares(obj)

    @extend_schema_field(AllocationOutput(many=True))
    def get_allocation_history(self, obj) -> list:
        from campaigns.selectors import allocation_history

        return allocation_history(obj)

    def get_counters(self, obj) -> CountersOutput:
        from campaigns.selectors import delivery_counters

        return delivery_counters(obj)

    def get_warnings(self, obj) -> list[str]:
        from campaigns.selectors import campaign_warnings

        return campaign_warnings(obj)


class RolloutInput(serializers.Serializer):
    variant = serializers.CharField(required=False, allow_blank=True, max_length=64, help_text="Default: the winner")
    confirm = serializers.BooleanField(
        default=False,
        help_text="Roll out a variant the always-valid results do not support (the audit keeps the risk)",
    )


class ComparisonOutput(serializers.Serializer):
    name = serializers.CharField()
    estimate = serializers.FloatField(allow_null=True, help_text="This group's rate minus the other's")
    low = serializers.FloatField(allow_null=True)
    high = serializers.FloatField(allow_null=True)
    p_value = serializers.FloatField(allow_null=True)
    p_value_holm = serializers.FloatField(allow_null=True)
    beats = serializers.BooleanField()


class CupedOutput(serializers.Serializer):
    uplift = serializers.FloatField(allow_null=True, help_text="Adjusted for what was known before assignment")
    low = serializers.FloatField(allow_null=True, help_text="Always-valid interval, never wider than the raw one")
    high = serializers.FloatField(allow_null=True)
    p_value = serializers.FloatField(allow_null=True, help_text="Always valid")
    variance_ratio = serializers.FloatField(allow_null=True, help_text="Adjusted variance / raw variance")


class SequentialOutput(serializers.Serializer):
    ci_low = serializers.FloatField(allow_null=True, help_text="Always-valid interval of the rate")
    ci_high = serializers.FloatField(allow_null=True)
    uplift_ci_low = serializers.FloatField(allow_null=True, help_text="Always-valid interval of the uplift")
    uplift_ci_high = serializers.FloatField(allow_null=True)
    p_value = serializers.FloatField(allow_null=True, help_text="Always-valid p-value against the control")
    p_value_holm = serializers.FloatField(allow_null=True, help_text="Holm-adjusted over every comparison")
    beats_control = serializers.BooleanField()
    vs_others = ComparisonOutput(many=True)


class ResultGroupOutput(serializers.Serializer):
    name = serializers.CharField()
    variant_id = serializers.IntegerField(allow_null=True)
    expected_share = serializers.FloatField(allow_null=True)
    assigned = serializers.IntegerField()
    sent = serializers.IntegerField()
    delivered = serializers.IntegerField()
    failed = serializers.IntegerField()
    opened = serializers.IntegerField()
    clicked = serializers.IntegerField()
    converted = serializers.IntegerField()
    conversion_rate = serializers.FloatField(allow_null=True)
    ci_low = serializers.FloatField(
        allow_null=True, help_text="Fixed-horizon (Wilson); `sequential` holds the always-valid one"
    )
    ci_high = serializers.FloatField(allow_null=True)
    uplift_vs_holdout = serializers.FloatField(allow_null=True)
    relative_uplift = serializers.FloatField(allow_null=True)
    uplift_ci_low = serializers.FloatField(allow_null=True, help_text="Fixed-horizon (Newcombe)")
    uplift_ci_high = serializers.FloatField(allow_null=True)
    p_value = serializers.FloatField(allow_null=True, help_text="Fixed-horizon z-test: valid only when read once")
    significant = serializers.BooleanField(help_text="Fixed-horizon test (valid only when read once)")
    sequential = SequentialOutput(help_text="Always valid: may be read at every look")
    cuped = CupedOutput(allow_null=True, help_text="CUPED-adjusted uplift against the control (null for the control)")
    revenue = serializers.CharField()
    revenue_per_recipient = serializers.CharField()
    coupon_redemptions = serializers.IntegerField()
    coupon_discount = serializers.CharField()


class ResultsOutput(serializers.Serializer):
    campaign = serializers.IntegerField()
    status = serializers.CharField()
    phase = serializers.CharField(allow_blank=True)
    control = serializers.CharField()
    alpha = serializers.FloatField()
    min_sample = serializers.IntegerField()
    method = serializers.CharField(help_text="How the winner is chosen: sequential (always valid)")
    planned_sample = serializers.IntegerField(help_text="Where the confidence sequences are tightest")
    srm_p_value = serializers.FloatField(allow_null=True)
    srm_blocked = serializers.BooleanField(help_text="Sample-ratio mismatch p < 0.001: no roll-out")
    winner = serializers.CharField(allow_null=True)
    winner_reason = serializers.CharField(allow_null=True)
    fixed_winner = serializers.CharField(allow_null=True, help_text="The fixed-horizon rule's pick, for reference")
    cuped_covariates = serializers.ListField(child=serializers.CharField(), help_text="What CUPED adjusts for")
    rolled_out_variant = serializers.CharField(allow_null=True)
    rolled_out_at = serializers.CharField(allow_null=True)
    summary = serializers.CharField(help_text="What was decided and why, in words")
    groups = ResultGroupOutput(many=True)
    final = serializers.BooleanField(
        help_text="True once the attribution window (and its grace period) has closed: these results are "
        "frozen; false while conversions are still counted live"
    )


# --- experiments -------------------------------------------------------------------------------


class ExperimentGroupInput(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    assigned = serializers.IntegerField(min_value=0, max_value=10**12)
    converted = serializers.IntegerField(min_value=0, max_value=10**12)
    expected_share = serializers.FloatField(min_value=0.000001, max_value=1e9, required=False)

    def validate(self, attrs):
        if attrs["converted"] > attrs["assigned"]:
            raise serializers.ValidationError({"converted": ["Cannot exceed assigned."]})
        return attrs


class ExperimentInput(serializers.Serializer):
    alpha = serializers.FloatField(min_value=0.0001, max_value=0.5, default=0.05)
    control = serializers.CharField(max_length=100)
    min_sample = serializers.IntegerField(min_value=0, default=0)
    method = serializers.ChoiceField(
        choices=["fixed", "sequential"],
        default="fixed",
        help_text="fixed: read once at a planned size; sequential: always valid at every look",
    )
    planned_sample = serializers.IntegerField(
        min_value=1,
        max_value=10**12,
        default=2000,
        help_text="sequential: members of a comparison (both groups) where its intervals are tightest; fix it "
        "before the experiment starts",
    )
    groups = ExperimentGroupInput(many=True, min_length=2, max_length=50)

    def validate(self, attrs):
        names = [g["name"] for g in attrs["groups"]]
        if len(set(names)) != len(names):
            raise serializers.ValidationError({"groups": ["Group names must be unique."]})
        if attrs["control"] not in names:
            raise serializers.ValidationError({"control": [f"No group named {attrs['control']!r}."]})
        shares = [g.get("expected_share") for g in attrs["groups"]]
        if any(s is not None for s in shares) and any(s is None for s in shares):
            raise serializers.ValidationError({"groups": ["Give expected_share for every group or for none."]})
        return attrs


class ExperimentGroupOutput(serializers.Serializer):
    name = serializers.CharField()
    assigned = serializers.IntegerField()
    converted = serializers.IntegerField()
    conversion_rate = serializers.FloatField(allow_null=True)
    ci_low = serializers.FloatField(allow_null=True)
    ci_high = serializers.FloatField(allow_null=True)
    uplift_vs_control = serializers.FloatField(allow_null=True)
    relative_uplift = serializers.FloatField(allow_null=True)
    uplift_ci_low = serializers.FloatField(allow_null=True)
    uplift_ci_high = serializers.FloatField(allow_null=True)
    z = serializers.FloatField(allow_null=True, help_text="fixed only")
    p_value = serializers.FloatField(allow_null=True)
    p_value_holm = serializers.FloatField(allow_null=True, required=False, help_text="sequential only")
    significant = serializers.BooleanField()
    vs_others = ComparisonOutput(many=True, required=False, help_text="sequential only")


class ExperimentOutput(serializers.Serializer):
    method = serializers.CharField()
    groups = ExperimentGroupOutput(many=True)
    srm_p_value = serializers.FloatField(allow_null=True)
    srm_blocked = serializers.BooleanField(required=False, help_text="sequential only")
    winner = serializers.CharField(allow_null=True)
    reason = serializers.CharField(allow_null=True, required=False, help_text="sequential: why there is no winner")


# --- receipts ----------------------------------------------------------------------------------


class ReceiptInput(serializers.Serializer):
    delivery_id = IdField()
    status = serializers.ChoiceField(choices=["delivered", "failed", "opened", "clicked"])
    at = AwareDateTimeField()


class ReceiptsInput(serializers.Serializer):
    receipts = serializers.ListField(child=serializers.JSONField(), min_length=1, max_length=1000)


class ReceiptRejected(serializers.Serializer):
    index = serializers.IntegerField()
    errors = serializers.DictField()


class ReceiptsOutput(serializers.Serializer):
    accepted = serializers.IntegerField()
    rejected = ReceiptRejected(many=True)
