"""Input and output shapes of the materials API."""

from __future__ import annotations

import re

from rest_framework import serializers

from materials.models import Material, MaterialChannel, MaterialVersion

TAG = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class TagsField(serializers.ListField):
    child = serializers.RegexField(TAG, error_messages={"invalid": "A tag: 1-64 chars of a-z A-Z 0-9 _ -"})

    def __init__(self, **kwargs):
        kwargs.setdefault("max_length", 32)
        super().__init__(**kwargs)


class DefaultsField(serializers.DictField):
    """Variable name -> the text used when a person has no value for it."""

    child = serializers.CharField(max_length=1000, allow_blank=True)

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        bad = sorted(k for k in value if not VARIABLE.match(k))
        if bad:
            raise serializers.ValidationError(f"Not a variable name: {', '.join(bad)}.")
        if len(value) > 64:
            raise serializers.ValidationError("At most 64 defaults.")
        return value


class MaterialInput(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    channel = serializers.ChoiceField(choices=MaterialChannel.choices)
    tags = TagsField(default=list)
    description = serializers.CharField(max_length=5000, allow_blank=True, default="")


class MaterialChange(serializers.Serializer):
    name = serializers.CharField(max_length=200, required=False)
    tags = TagsField(required=False)
    description = serializers.CharField(max_length=5000, allow_blank=True, required=False)
    archived = serializers.BooleanField(required=False)


class VersionInput(serializers.Serializer):
    title = serializers.CharField(max_length=500, allow_blank=True, default="", help_text="Push title, e-mail subject")
    body = serializers.CharField(
        max_length=20_000, allow_blank=True, default="", help_text="Push body, SMS text, e-mail text, webhook JSON"
    )
    html = serializers.CharField(max_length=100_000, allow_blank=True, default="", help_text="E-mail HTML")
    url = serializers.URLField(max_length=1000, allow_blank=True, default="", help_text="Where {{ link }} leads")
    defaults = DefaultsField(default=dict)


class VersionChange(serializers.Serializer):
    title = serializers.CharField(max_length=500, allow_blank=True, required=False)
    body = serializers.CharField(max_length=20_000, allow_blank=True, required=False)
    html = serializers.CharField(max_length=100_000, allow_blank=True, required=False)
    url = serializers.URLField(max_length=1000, allow_blank=True, required=False)
    defaults = DefaultsField(required=False)


class VersionOutput(serializers.ModelSerializer):
    material = serializers.IntegerField(source="material_id")
    created_by = serializers.CharField(source="created_by.get_username", allow_null=True, default=None)
    approved_by = serializers.CharField(source="approved_by.get_username", allow_null=True, default=None)

    class Meta:
        model = MaterialVersion
        fields = [
            "id",
            "material",
            "number",
            "status",
            "title",
            "body",
            "html",
            "url",
            "defaults",
            "created_by",
            "created_at",
            "approved_by",
            "approved_at",
        ]


class MaterialOutput(serializers.ModelSerializer):
    owner = serializers.CharField(source="owner.get_username", allow_null=True, default=None)
    latest_version = serializers.IntegerField(allow_null=True, read_only=True, default=None)

    class Meta:
        model = Material
        fields = ["id", "name", "channel", "tags", "owner", "description", "archived", "latest_version", "created_at"]


class MaterialDetailOutput(MaterialOutput):
    versions = VersionOutput(many=True)

    class Meta(MaterialOutput.Meta):
        fields = [*MaterialOutput.Meta.fields, "versions"]


class PreviewInput(serializers.Serializer):
    user_id = serializers.CharField(
        max_length=128, required=False, help_text="Render for this person; sample values if omitted"
    )


class SmsSizeOutput(serializers.Serializer):
    encoding = serializers.CharField()
    characters = serializers.IntegerField()
    segments = serializers.IntegerField()


class LimitProblemOutput(serializers.Serializer):
    field = serializers.CharField()
    reason = serializers.CharField()


class PreviewOutput(serializers.Serializer):
    rendered = serializers.DictField(child=serializers.CharField(), help_text="Each template field, rendered")
    error = serializers.CharField(help_text="Why this person's message cannot be made (empty if it can)")
    problems = LimitProblemOutput(many=True, help_text="Channel limits the rendered message exceeds")
    sms = SmsSizeOutput(allow_null=True)


class HistoryRowOutput(serializers.Serializer):
    campaign = serializers.IntegerField()
    campaign_name = serializers.CharField()
    campaign_status = serializers.CharField()
    variant = serializers.CharField()
    version = serializers.IntegerField()
    assigned = serializers.IntegerField()
    sent = serializers.IntegerField()
    opened = serializers.IntegerField()
    clicked = serializers.IntegerField()
    converted = serializers.IntegerField()
    conversion_rate = serializers.FloatField(allow_null=True)
    uplift_vs_holdout = serializers.FloatField(allow_null=True, help_text="Absolute; null without a holdout")
    p_value = serializers.FloatField(allow_null=True)
    had_holdout = serializers.BooleanField()


class ProblemOutput(serializers.Serializer):
    field = serializers.CharField()
    line = serializers.IntegerField(allow_null=True)
    reason = serializers.CharField()


class InvalidTemplateOutput(serializers.Serializer):
    reason = serializers.CharField(help_text="INVALID_TEMPLATE")
    detail = serializers.CharField()
    problems = ProblemOutput(many=True)


class MaterialErrorOutput(serializers.Serializer):
    reason = serializers.CharField()
    detail = serializers.CharField()
