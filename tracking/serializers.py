"""Shapes of the tracking API. Input is validated by `tracking.validation` (fast, per event); the
serializers here describe the same contract to the OpenAPI schema and render the reply."""

from __future__ import annotations

from rest_framework import serializers

from tracking.models import EventKind
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
