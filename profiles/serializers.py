"""Shapes of the profiles API: identify input (with its normalisation), profile and lookup replies."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from profiles.models import TagRule
from profiles.normalize import IDENTITY_KINDS, normalize_identity, parse_traits

MAX_IDENTITIES = 20


@extend_schema_field({"type": "string", "enum": list(IDENTITY_KINDS)})
class IdentityKindField(serializers.ChoiceField):
    """Described inline: a shared enum component would collide with the event `kind` enum."""


class IdentityInput(serializers.Serializer):
    kind = IdentityKindField(choices=IDENTITY_KINDS)
    value = serializers.CharField(max_length=256, help_text="Phones in any common format; e-mails in any case.")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        try:
            attrs["value"] = normalize_identity(attrs["kind"], attrs["value"])
        except ValueError as exc:
            raise serializers.ValidationError({"value": [str(exc)]}) from exc
        return attrs


class IdentifyInput(serializers.Serializer):
    user_id = serializers.CharField(max_length=128, help_text="The product's own id of the user.")
    anonymous_id = serializers.CharField(max_length=128, required=False, allow_null=True)
    identities = IdentityInput(many=True, required=False, max_length=MAX_IDENTITIES)
    traits = serializers.DictField(
        required=False,
        help_text=(
            "Known traits: name, gender (female|male|other), birth_date (YYYY-MM-DD), region, city, "
            "timezone (IANA), phone, email, signup_at (ISO 8601 with offset), push_opt_in, sms_opt_in, "
            "email_opt_in. Others are kept as custom traits (16 KiB at most). null clears a trait."
        ),
    )

    def validate_traits(self, value: dict[str, Any]) -> dict[str, Any]:
        known, custom, errors = parse_traits(value)
        if errors:
            raise serializers.ValidationError({k: [v] for k, v in errors.items()})
        return {"known": known, "custom": custom}


class IdentifyOutput(serializers.Serializer):
    user_id = serializers.CharField()
    merged_profiles = serializers.IntegerField(help_text="Profiles merged into this one by this call.")


class TagOutput(serializers.Serializer):
    name = serializers.CharField()
    category = serializers.CharField()
    score = serializers.FloatField(allow_null=True)


class RfmOutput(serializers.Serializer):
    recency_days = serializers.IntegerField(allow_null=True)
    frequency = serializers.IntegerField(allow_null=True)
    monetary = serializers.DecimalField(max_digits=14, decimal_places=2, allow_null=True)
    r = serializers.IntegerField(allow_null=True)
    f = serializers.IntegerField(allow_null=True)
    m = serializers.IntegerField(allow_null=True)
    segment = serializers.CharField(allow_null=True)


class PredictionsOutput(serializers.Serializer):
    purchases_90d = serializers.FloatField(allow_null=True, help_text="Expected orders (days with one) in 90 days")
    value_90d = serializers.DecimalField(max_digits=14, decimal_places=2, allow_null=True)
    value_365d = serializers.DecimalField(max_digits=14, decimal_places=2, allow_null=True)
    p_alive = serializers.FloatField(allow_null=True, help_text="Probability the customer is still active, 0-1")
    churn_risk = serializers.IntegerField(allow_null=True, help_text="0-100: chance of no order in the horizon")
    tier = serializers.CharField(allow_null=True, help_text="Predicted-value tier slug")
    model_version = serializers.CharField(allow_null=True)
    computed_at = serializers.DateTimeField(allow_null=True)


class ProfileOutput(serializers.Serializer):
    user_id = serializers.CharField(help_text="After a merge: the user id of the surviving profile.")
    traits = serializers.DictField(help_text="Known traits (all keys present) and custom traits.")
    tags = TagOutput(many=True)
    tier = serializers.CharField(allow_null=True, help_text="Value tier slug; null until computed.")
    rfm = RfmOutput(allow_null=True, help_text="null for profiles without orders in the window.")
    lifecycle = serializers.CharField(allow_null=True)
    predictions = PredictionsOutput(allow_null=True, help_text="Lifetime value and churn risk; null until computed.")
    first_seen_at = serializers.DateTimeField(allow_null=True)
    last_seen_at = serializers.DateTimeField(allow_null=True)


class IdentityOutput(serializers.Serializer):
    kind = serializers.CharField()
    value = serializers.CharField(help_text="Phones and e-mails masked unless the staff member may see them.")


class LatestEventOutput(serializers.Serializer):
    name = serializers.CharField()
    kind = serializers.CharField()
    timestamp = serializers.DateTimeField()
    properties = serializers.DictField()


class LookupResultOutput(serializers.Serializer):
    user_id = serializers.CharField()
    name = serializers.CharField(allow_blank=True)
    phone = serializers.CharField(allow_blank=True, help_text="Masked (138****5678) without the personal-data right.")
    email = serializers.CharField(allow_blank=True, help_text="Masked (z***@example.com) likewise.")
    tier = serializers.CharField(allow_null=True)
    lifecycle = serializers.CharField(allow_null=True)
    tags = TagOutput(many=True)
    traits = serializers.DictField()
    identities = IdentityOutput(many=True)
    rfm = RfmOutput(allow_null=True)
    first_seen_at = serializers.DateTimeField(allow_null=True)
    last_seen_at = serializers.DateTimeField(allow_null=True)
    sections = serializers.DictField(help_text="Sections other apps add: coupons, messages, ...")
    latest_events = LatestEventOutput(many=True)


class LookupOutput(serializers.Serializer):
    results = LookupResultOutput(many=True)


class TagRuleRunOutput(serializers.ModelSerializer):
    """A tag rule's last recompute: its status (blank before the first run), why it failed."""

    class Meta:
        model = TagRule
        fields = [
            "id",
            "name",
            "kind",
            "is_active",
            "last_status",
            "last_error",
            "last_run_at",
            "last_run_members",
            "last_run_seconds",
        ]
        read_only_fields = fields
