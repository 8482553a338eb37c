"""`POST /api/v1/events`: the product's servers send behaviour, traffic and business events."""

from __future__ import annotations

import zlib
from typing import Any

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework.exceptions import ParseError, ValidationError
from rest_framework.parsers import BaseParser
from rest_framework.response import Response
from rest_framework.views import APIView

from access.permissions import HasScope
from tracking import jsonio, services
from tracking.errors import BodyTooLarge
from tracking.serializers import (
    EventBatchInput,
    IngestOutput,
)
from tracking.validation import MAX_BATCH

DEFAULT_MAX_BODY_BYTES = 40 * 1024 * 1024  # 1000 events with full 32 KiB properties fit


def max_body_bytes() -> int:
    return int(getattr(settings, "OPSLOOP_EVENTS_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES))


class EventBatchParser(BaseParser):
    """JSON, optionally sent with `Content-Encoding: gzip`, with a size limit of its own.

    Django's `DATA_UPLOAD_MAX_MEMORY_SIZE` (2.5 MB) would refuse legitimate full batches, and
    DRF's JSON parser lets deeply nested input raise a RecursionError; both become a plain 400.
    """

    media_type = "application/json"

    def parse(self, stream, media_type=None, parser_context=None) -> Any:
        limit = max_body_bytes()
        meta = parser_context["request"].META if parser_context else {}
        try:
            declared = int(meta.get("CONTENT_LENGTH") or 0)
        except ValueError:
            declared = 0
        if declared > limit:
            raise BodyTooLarge(f"The body is {declared} bytes; at most {limit} are accepted.")
        raw = stream.read(limit + 1)
        if len(raw) > limit:
            raise BodyTooLarge(f"The body is over {limit} bytes.")
        if meta.get("HTTP_CONTENT_ENCODING", "").strip().lower() == "gzip":
            raw = self._gunzip(raw, limit)
        try:
            return jsonio.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise ParseError(f"JSON parse error - {exc}") from exc

    @staticmethod
    def _gunzip(raw: bytes, limit: int) -> bytes:
        # Bounded, so a small "zip bomb" cannot expand into gigabytes in memory.
        inflater = zlib.decompressobj(wbits=31)
        try:
            body = inflater.decompress(raw, limit + 1)
        except zlib.error as exc:
            raise ParseError(f"The body is not valid gzip: {exc}") from exc
        if len(body) > limit or inflater.unconsumed_tail:
            raise BodyTooLarge(f"The body is over {limit} bytes once decompressed.")
        return body


def events_of(data: Any) -> list[Any]:
    """The events of a batch body, or a 400 that names what is wrong with the batch as a whole."""
    if not isinstance(data, dict):
        raise ValidationError({"non_field_errors": ['The body must be a JSON object such as {"events": [...]}.']})
    if "events" not in data:
        raise ValidationError({"events": ["This field is required."]})
    events = data["events"]
    if not isinstance(events, list):
        raise ValidationError({"events": ["Must be a list of events."]})
    if not 1 <= len(events) <= MAX_BATCH:
        raise ValidationError({"events": [f"Send 1 to {MAX_BATCH} events per batch; this one has {len(events)}."]})
    return events


BAD_BATCH = OpenApiResponse(
    OpenApiTypes.OBJECT,
    description="Malformed JSON, a body that is not an object, `events` missing or not a list, or "
    "more than 10,000 events (nothing stored). The offending field and the reason are in the body.",
)


class EventsView(APIView):
    permission_classes = [HasScope("events:write")]
    rate_scope = "ingest"  # the product calls it in bulk: its own request limit (access.throttling)
    parser_classes = [EventBatchParser]

    @extend_schema(
        summary="Send a batch of events",
        description="Stores the valid events of the batch once each; invalid ones are listed with "
        "their index and reasons, events whose id is already stored count as duplicates.",
        request=EventBatchInput,
        responses={
            200: IngestOutput,
            400: BAD_BATCH,
            401: OpenApiResponse(OpenApiTypes.OBJECT, description="No valid API key."),
            403: OpenApiResponse(OpenApiTypes.OBJECT, description="The key lacks `events:write`."),
            415: OpenApiResponse(OpenApiTypes.OBJECT, description="The body is not JSON."),
        },
        examples=[
            OpenApiExample(
                "A page view",
                request_only=True,
                value={
                    "events": [
                        {
                            "event_id": "6f1c1b1e-3d5a-4c59-9b8e-0a4a3c1d2e3f",
                            "name": "page_view",
                            "timestamp": "2026-05-01T12:00:00+08:00",
                            "anonymous_id": "a-42",
                            "context": {"url": "https://shop.example.com/p/1?utm_source=x", "ip": "203.0.113.9"},
                        }
                    ]
                },
            )
        ],
    )
    def post(self, request):
        result = services.ingest_events(events=events_of(request.data))
        return Response(
            {
                "accepted": result.accepted,
                "duplicates": result.duplicates,
                "rejected": [{"index": r.index, "errors": r.errors} for r in result.rejected],
            }
        )
