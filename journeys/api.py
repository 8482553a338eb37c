"""REST endpoints of journeys (scope `manage`): a campaign's steps, their counts, the launch."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from access.permissions import HasScope
from campaigns.models import Campaign
from config.api import object_or_404, request_actor
from config.views import JsonView
from journeys import errors, selectors, services
from journeys import serializers as s

PK = OpenApiParameter("pk", int, OpenApiParameter.PATH, description="The campaign's integer id.")
BAD_REQUEST = OpenApiResponse(OpenApiTypes.OBJECT, description="Invalid input: fields and reasons")
NOT_FOUND = OpenApiResponse(s.JourneyErrorOutput, description="Unknown campaign")
CONFLICT = OpenApiResponse(s.JourneyErrorOutput, description="The campaign is not a draft")
NOT_RUNNING = OpenApiResponse(s.JourneyErrorOutput, description="The journey is not running (paused or ended)")
REFUSED = OpenApiResponse(s.JourneyErrorOutput, description="INVALID_STEPS: `fields` names each step's problem")


def _campaign(pk: str | int) -> Campaign:
    return object_or_404(Campaign.objects.all(), pk, errors.CampaignNotFound, "campaign")


class JourneyView(JsonView):
    permission_classes = [HasScope("manage")]

    @extend_schema(parameters=[PK], responses={200: s.JourneyOutput, 404: NOT_FOUND}, summary="Steps with counts")
    def get(self, request, pk: str):
        return Response(selectors.journey(_campaign(pk)))

    @extend_schema(
        parameters=[PK],
        request=s.StepsInput,
        responses={200: s.JourneyOutput, 400: BAD_REQUEST, 404: NOT_FOUND, 409: CONFLICT, 422: REFUSED},
        summary="Replace a draft campaign's steps (send, wait, wait_event, branch); its goal event ends a run",
    )
    def put(self, request, pk: str):
        campaign = _campaign(pk)
        data = s.StepsInput(data=request.data)
        data.is_valid(raise_exception=True)
        variants = dict(campaign.variants.values_list("name", "pk"))
        steps = []
        for i, step in enumerate(data.validated_data["steps"]):
            name = step.pop("variant")
            if name is not None and name not in variants:
                raise ValidationError({"steps": {i: {"variant": [f"No variant {name!r} in this campaign."]}}})
            steps.append({**step, "variant": variants.get(name) if name is not None else None})
        who = request_actor(request)
        services.set_steps(campaign=campaign, steps=steps, actor=who["created_by"], api_key=who["api_key"])
        return Response(selectors.journey(campaign))


class JourneyLaunchView(JsonView):
    permission_classes = [HasScope("manage", "campaigns.send_campaign")]

    @extend_schema(
        parameters=[PK],
        request=None,
        responses={202: s.LaunchedOutput, 404: NOT_FOUND, 409: CONFLICT, 422: REFUSED},
        summary="Launch a draft journey: its segment's members enter the first step",
    )
    def post(self, request, pk: str):
        who = request_actor(request)
        entered = services.launch_journey(campaign=_campaign(pk), actor=who["created_by"], api_key=who["api_key"])
        return Response({"entered": entered}, status=status.HTTP_202_ACCEPTED)


class JourneyRetryView(JsonView):
    permission_classes = [HasScope("manage", "campaigns.send_campaign")]

    @extend_schema(
        parameters=[PK],
        request=None,
        responses={202: s.RetriedOutput, 404: NOT_FOUND, 409: NOT_RUNNING},
        summary="Try the journey's failing runs again now instead of after their back-off",
    )
    def post(self, request, pk: str):
        who = request_actor(request)
        retried = services.retry_failed_runs(campaign=_campaign(pk), actor=who["created_by"], api_key=who["api_key"])
        return Response({"retried": retried}, status=status.HTTP_202_ACCEPTED)
