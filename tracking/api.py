"""`POST /api/v1/events`: the product's servers send behaviour, traffic and business events."""

from __future__ import annotations

import json
import zlib
from typing import Any

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.exceptions import ParseError, ValidationError
from rest_framework.generics import ListAPIView
from rest_framework.parsers import BaseParser
from rest_framework.response import Response
from rest_framework.views import APIView

from access.models import ApiKey
from access.permissions import HasScope
from config.api import JsonParser, object_or_404, query_int
from tracking import selectors, services
from tracking.errors import BodyTooLarge, GoalNotFound
from tracking.models import Goal
from tracking.serializers import (
    EventBatchInput,
    GoalDecomposeInput,
    GoalInput,
    GoalOutput,
    GoalProgressOutput,
    IngestOutput,
    progress_body,
)
from tracking.validation import MAX_BATCH

DEFAULT_MAX_BODY_BYTES = 40 * 1024 * 1024  # 1000 events with full 32 KiB properties fit


def max_body_bytes() -> int:
    return int(getattr(settings, "OPSLOOP_EVENTS_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES))


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


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
            return json.loads(raw, parse_constant=_refuse_constant)
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
    "more than 1000 events (nothing stored). The offending field and the reason are in the body.",
)


class EventsView(APIView):
    permission_classes = [HasScope("events:write")]
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


# --- goals (scope `manage`) ----------------------------------------------------------------------

GOAL_BAD_INPUT = OpenApiResponse(OpenApiTypes.OBJECT, description="Invalid input: the offending fields and why.")
GOAL_NO_KEY = OpenApiResponse(OpenApiTypes.OBJECT, description="No valid credentials.")
GOAL_NO_SCOPE = OpenApiResponse(OpenApiTypes.OBJECT, description="The key lacks `manage`.")
GOAL_NOT_FOUND = OpenApiResponse(OpenApiTypes.OBJECT, description="Unknown goal (`reason` GOAL_NOT_FOUND).")
GOAL_ID = OpenApiParameter("goal_id", int, OpenApiParameter.PATH, description="Integer id.")


def _actor(request) -> dict:
    if isinstance(request.auth, ApiKey):
        return {"actor": None, "api_key": request.auth}
    return {"actor": request.user, "api_key": None}


def _goal(goal_id: str | int) -> Goal:
    return object_or_404(selectors.goals_with_months(), goal_id, GoalNotFound, "goal")


class GoalListView(ListAPIView):
    permission_classes = [HasScope("manage")]
    parser_classes = [JsonParser]
    serializer_class = GoalOutput
    filter_backends: list = []

    def get_queryset(self):
        queryset = selectors.goals_with_months().order_by("-year", "-quarter", "id")
        indicator = self.request.query_params.get("indicator")
        if indicator:
            queryset = queryset.filter(indicator=indicator[:64].replace("\x00", ""))
        year = query_int(self.request, "year", minimum=1, maximum=9999)
        if year is not None:
            queryset = queryset.filter(year=year)
        return queryset

    @extend_schema(
        operation_id="goals_list",
        parameters=[
            OpenApiParameter("indicator", str, required=False),
            OpenApiParameter("year", int, required=False),
        ],
        responses={200: GoalOutput(many=True), 401: GOAL_NO_KEY, 403: GOAL_NO_SCOPE, 404: GOAL_NOT_FOUND},
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    @extend_schema(
        operation_id="goals_create",
        request=GoalInput,
        responses={
            201: GoalOutput,
            400: GOAL_BAD_INPUT,
            401: GOAL_NO_KEY,
            403: GOAL_NO_SCOPE,
            409: OpenApiResponse(OpenApiTypes.OBJECT, description="The indicator already has a goal for this period."),
            422: OpenApiResponse(
                OpenApiTypes.OBJECT, description="`last_year` profile without last year's actuals (NO_HISTORY)."
            ),
        },
        summary="Set a yearly or quarterly goal on an indicator, spread over its months.",
    )
    def post(self, request):
        data = GoalInput(data=request.data)
        data.is_valid(raise_exception=True)
        goal = services.create_goal(**data.validated_data, **_actor(request))
        return Response(GoalOutput(_goal(goal.pk)).data, status=201)


class GoalDetailView(APIView):
    permission_classes = [HasScope("manage")]

    @extend_schema(
        operation_id="goal_detail",
        parameters=[GOAL_ID],
        responses={200: GoalOutput, 401: GOAL_NO_KEY, 403: GOAL_NO_SCOPE, 404: GOAL_NOT_FOUND},
    )
    def get(self, request, goal_id: str):
        return Response(GoalOutput(_goal(goal_id)).data)


class GoalDecomposeView(APIView):
    permission_classes = [HasScope("manage")]
    parser_classes = [JsonParser]

    @extend_schema(
        operation_id="goal_decompose",
        parameters=[GOAL_ID],
        request=GoalDecomposeInput,
        responses={
            200: GoalOutput,
            400: GOAL_BAD_INPUT,
            401: GOAL_NO_KEY,
            403: GOAL_NO_SCOPE,
            404: GOAL_NOT_FOUND,
            409: OpenApiResponse(OpenApiTypes.OBJECT, description="The goal's indicator is no longer registered."),
            422: OpenApiResponse(OpenApiTypes.OBJECT, description="`last_year` without last year's actuals."),
        },
        summary="Spread the goal over its months again (another profile, weights or target).",
    )
    def post(self, request, goal_id: str):
        goal = _goal(goal_id)
        data = GoalDecomposeInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.redecompose_goal(goal=goal, **data.validated_data, **_actor(request))
        return Response(GoalOutput(_goal(goal.pk)).data)


class GoalProgressView(APIView):
    permission_classes = [HasScope("manage")]

    @extend_schema(
        operation_id="goal_progress",
        parameters=[GOAL_ID],
        responses={
            200: GoalProgressOutput,
            401: GOAL_NO_KEY,
            403: GOAL_NO_SCOPE,
            404: GOAL_NOT_FOUND,
            409: OpenApiResponse(OpenApiTypes.OBJECT, description="The goal's indicator is no longer registered."),
        },
        summary="Actual against target per month, with the months behind as warnings.",
    )
    def get(self, request, goal_id: str):
        return Response(progress_body(selectors.goal_progress(_goal(goal_id))))
