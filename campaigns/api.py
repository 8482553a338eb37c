"""REST endpoints of the campaigns app (scope `manage`; receipts `events:write`), and the public
signed tracking endpoints (click redirect and open pixel) that recipients' devices call."""

from __future__ import annotations

import base64

from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.response import Response

from access.permissions import HasScope
from campaigns import channels, errors, selectors, services
from campaigns import serializers as s
from campaigns.models import Campaign, Segment
from campaigns.stats import GroupCounts, analyze
from config.api import JsonParser, object_or_404, request_actor
from config.views import JsonView

BAD_REQUEST = OpenApiResponse(OpenApiTypes.OBJECT, description="Invalid input: fields and reasons")
NOT_FOUND = OpenApiResponse(s.ErrorOutput, description="Unknown object")
PAGE_NOT_FOUND = OpenApiResponse(OpenApiTypes.OBJECT, description="No such page")
CONFLICT = OpenApiResponse(s.ErrorOutput, description="Not allowed in the campaign's current status")
REFUSED = OpenApiResponse(s.ErrorOutput, description="Refused by the business rules (`reason`)")


PK = OpenApiParameter("pk", int, OpenApiParameter.PATH, description="Integer id.")


def _campaign(pk: str | int) -> Campaign:
    campaigns = Campaign.objects.select_related("winner").prefetch_related("variants")
    return object_or_404(campaigns, pk, errors.CampaignNotFound, "campaign")


# --- segments ----------------------------------------------------------------------------------


class SegmentListView(generics.ListAPIView):
    permission_classes = [HasScope("manage")]
    parser_classes = [JsonParser]
    serializer_class = s.SegmentOutput
    queryset = Segment.objects.order_by("-id")
    filterset_fields = ["name"]

    @extend_schema(responses={200: s.SegmentOutput(many=True), 400: BAD_REQUEST, 404: PAGE_NOT_FOUND})
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    @extend_schema(
        request=s.SegmentInput,
        responses={201: s.SegmentCreated, 400: BAD_REQUEST},
        summary="Create a segment; answers with its live size",
    )
    def post(self, request):
        data = s.SegmentInput(data=request.data)
        data.is_valid(raise_exception=True)
        who = request_actor(request)
        segment = services.create_segment(**data.validated_data, actor=who["created_by"], api_key=who["api_key"])
        size = selectors.segment_size(segment.definition)
        return Response({"id": segment.pk, "name": segment.name, "size": size}, status=status.HTTP_201_CREATED)


def _segment(pk: str | int) -> Segment:
    return object_or_404(Segment.objects.all(), pk, errors.SegmentNotFound, "segment")


class SegmentDetailView(JsonView):
    permission_classes = [HasScope("manage")]

    @extend_schema(parameters=[PK], responses={200: s.SegmentOutput, 404: NOT_FOUND})
    def get(self, request, pk: str):
        return Response(s.SegmentOutput(_segment(pk)).data)


class SegmentPreviewView(JsonView):
    permission_classes = [HasScope("manage")]

    @extend_schema(
        parameters=[PK], responses={200: s.SegmentPreview, 404: NOT_FOUND}, summary="Live size and a sample of user ids"
    )
    def get(self, request, pk: str):
        return Response(selectors.segment_preview(_segment(pk)))


# --- campaigns ---------------------------------------------------------------------------------


class CampaignListView(generics.ListAPIView):
    permission_classes = [HasScope("manage")]
    parser_classes = [JsonParser]
    serializer_class = s.CampaignOutput
    queryset = Campaign.objects.select_related("winner").prefetch_related("variants").order_by("-id")
    filterset_fields = ["status", "channel", "segment", "parent"]

    @extend_schema(responses={200: s.CampaignOutput(many=True), 400: BAD_REQUEST, 404: PAGE_NOT_FOUND})
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    @extend_schema(
        request=s.CampaignInput,
        responses={201: s.CampaignOutput, 400: BAD_REQUEST},
        summary="Create a draft campaign with its variants",
    )
    def post(self, request):
        data = s.CampaignInput(data=request.data)
        data.is_valid(raise_exception=True)
        who = request_actor(request)
        campaign = services.create_campaign(**data.validated_data, actor=who["created_by"], api_key=who["api_key"])
        return Response(s.CampaignOutput(_campaign(campaign.pk)).data, status=status.HTTP_201_CREATED)


class CampaignDetailView(JsonView):
    permission_classes = [HasScope("manage")]

    @extend_schema(
        parameters=[PK], responses={200: s.CampaignDetailOutput, 404: NOT_FOUND}, summary="Status, phase and counters"
    )
    def get(self, request, pk: str):
        return Response(s.CampaignDetailOutput(_campaign(pk)).data)


def _action(summary: str, code: int = 200, request=None):
    return extend_schema(
        parameters=[PK],
        request=request,
        responses={code: s.CampaignOutput, 404: NOT_FOUND, 409: CONFLICT, 422: REFUSED, 400: BAD_REQUEST},
        summary=summary,
    )


class CampaignLaunchView(JsonView):
    permission_classes = [HasScope("manage")]

    @_action("Launch: send now, at its time, on its cron schedule or on its trigger", 202)
    def post(self, request, pk: str):
        who = request_actor(request)
        services.launch_campaign(campaign_id=_campaign(pk).pk, actor=who["created_by"], api_key=who["api_key"])
        return Response(s.CampaignOutput(_campaign(pk)).data, status=status.HTTP_202_ACCEPTED)


class CampaignPauseView(JsonView):
    permission_classes = [HasScope("manage")]

    @_action("Pause sending")
    def post(self, request, pk: str):
        who = request_actor(request)
        services.pause_campaign(campaign_id=_campaign(pk).pk, actor=who["created_by"], api_key=who["api_key"])
        return Response(s.CampaignOutput(_campaign(pk)).data)


class CampaignResumeView(JsonView):
    permission_classes = [HasScope("manage")]

    @_action("Resume a paused campaign")
    def post(self, request, pk: str):
        who = request_actor(request)
        services.resume_campaign(campaign_id=_campaign(pk).pk, actor=who["created_by"], api_key=who["api_key"])
        return Response(s.CampaignOutput(_campaign(pk)).data)


class CampaignCancelView(JsonView):
    permission_classes = [HasScope("manage")]

    @_action("Cancel: stop for good; pending messages are not sent")
    def post(self, request, pk: str):
        who = request_actor(request)
        services.cancel_campaign(campaign_id=_campaign(pk).pk, actor=who["created_by"], api_key=who["api_key"])
        return Response(s.CampaignOutput(_campaign(pk)).data)


class CampaignRetryView(JsonView):
    permission_classes = [HasScope("manage")]

    @_action("Retry a failed campaign from where it stopped (its failure_reason says why it stopped)")
    def post(self, request, pk: str):
        who = request_actor(request)
        services.retry_campaign(campaign_id=_campaign(pk).pk, actor=who["created_by"], api_key=who["api_key"])
        return Response(s.CampaignOutput(_campaign(pk)).data)


class CampaignRolloutView(JsonView):
    permission_classes = [HasScope("manage")]

    @_action("Send the winner (or the named variant) to the rest after the pilot", request=s.RolloutInput)
    def post(self, request, pk: str):
        data = s.RolloutInput(data=request.data if isinstance(request.data, dict) else {})
        data.is_valid(raise_exception=True)
        who = request_actor(request)
        services.rollout_campaign(
            campaign_id=_campaign(pk).pk,
            variant_name=data.validated_data.get("variant") or None,
            confirm=data.validated_data["confirm"],
            actor=who["created_by"],
            api_key=who["api_key"],
        )
        return Response(s.CampaignOutput(_campaign(pk)).data)


class CampaignCloneView(JsonView):
    permission_classes = [HasScope("manage")]

    @_action("Clone a finished campaign as its next iteration (winner as the new control)", 201)
    def post(self, request, pk: str):
        who = request_actor(request)
        clone = services.clone_campaign(campaign_id=_campaign(pk).pk, actor=who["created_by"], api_key=who["api_key"])
        return Response(s.CampaignOutput(_campaign(clone.pk)).data, status=status.HTTP_201_CREATED)


class CampaignResultsView(JsonView):
    permission_classes = [HasScope("manage")]

    @extend_schema(
        parameters=[PK], responses={200: s.ResultsOutput, 404: NOT_FOUND}, summary="Per-group results with statistics"
    )
    def get(self, request, pk: str):
        campaign = _campaign(pk)
        # One result set after completion: the snapshot frozen when the window closed.
        return Response({**selectors.current_results(campaign), "final": selectors.results_are_final(campaign)})


# --- experiments and receipts ------------------------------------------------------------------


class ExperimentAnalyzeView(JsonView):
    permission_classes = [HasScope("manage")]

    @extend_schema(
        request=s.ExperimentInput,
        responses={200: s.ExperimentOutput, 400: BAD_REQUEST},
        summary="The campaign statistics for an experiment run elsewhere",
    )
    def post(self, request):
        data = s.ExperimentInput(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        result = analyze(
            [GroupCounts(g["name"], g["assigned"], g["converted"], g.get("expected_share")) for g in v["groups"]],
            control=v["control"],
            alpha=v["alpha"],
            min_sample=v["min_sample"],
            method=v["method"],
            planned_sample=v["planned_sample"],
        )
        for g in result["groups"]:
            g["uplift_vs_control"] = g.pop("uplift")
        return Response(result)


class ReceiptsView(JsonView):
    permission_classes = [HasScope("events:write")]
    rate_scope = "ingest"  # the product calls it in bulk: its own request limit (access.throttling)

    @extend_schema(
        request=s.ReceiptsInput,
        responses={200: s.ReceiptsOutput, 400: BAD_REQUEST},
        summary="Provider callbacks (delivered, failed, opened, clicked); idempotent",
    )
    def post(self, request):
        outer = s.ReceiptsInput(data=request.data)
        outer.is_valid(raise_exception=True)
        valid, rejected = [], []
        for index, item in enumerate(outer.validated_data["receipts"]):
            one = s.ReceiptInput(data=item if isinstance(item, dict) else {})
            if one.is_valid():
                valid.append((index, one.validated_data))
            else:
                rejected.append({"index": index, "errors": one.errors})
        known = selectors.known_delivery_ids({r["delivery_id"] for _, r in valid})
        accepted = []
        for index, receipt in valid:
            if receipt["delivery_id"] in known:
                accepted.append(receipt)
            else:
                rejected.append({"index": index, "errors": {"delivery_id": ["Unknown delivery."]}})
        if accepted:
            services.record_receipts(receipts=accepted)
        rejected.sort(key=lambda r: r["index"])
        return Response({"accepted": len(accepted), "rejected": rejected})


# --- public tracking (plain Django views: no API key, the signature is the credential) --------

_PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")


@require_GET
@never_cache
def click_redirect(request: HttpRequest, token: str) -> HttpResponse:
    """A tracked link: note the click, then send the person to the variant's URL (taken from
    our database, never from the link, so the redirect cannot be pointed elsewhere)."""
    delivery_id = channels.unsign_click(token)
    if delivery_id is None or not selectors.known_delivery_ids({delivery_id}):
        raise Http404("Unknown link")
    target = services.record_click(delivery_id=delivery_id)
    if not target:
        raise Http404("This message has no link")
    return HttpResponseRedirect(target)


@require_GET
@never_cache
def open_pixel(request: HttpRequest, token: str) -> HttpResponse:
    delivery_id = channels.unsign_open(token)
    if delivery_id is None or not selectors.known_delivery_ids({delivery_id}):
        raise Http404("Unknown pixel")
    services.record_open(delivery_id=delivery_id)
    return HttpResponse(_PIXEL, content_type="image/gif")
