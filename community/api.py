"""The community API: funnel, cohorts, group health, competitor apps, unassigned accounts and
groups, contribution scores (with CSV export) and their runs. Scope `manage`."""

from __future__ import annotations

from datetime import UTC, datetime

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.generics import ListAPIView
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from access.permissions import HasScope
from community import exports, selectors, serializers, services
from community.errors import GroupNotFound, RunNotFound, ScoreNotFound
from community.models import CommunityGroup, ContributionScore, ScoreRun, ScoreSubject
from config.api import id_from_path, request_actor
from config.views import JsonView

ID = "Integer id."
NOT_FOUND = OpenApiResponse(OpenApiTypes.OBJECT, description="Unknown object (`reason` names which).")
BAD = OpenApiResponse(OpenApiTypes.OBJECT, description="Invalid query or body: the fields and reasons.")
RANGE = [
    OpenApiParameter("start", OpenApiTypes.DATE, description="First day (default: 90 days before end)"),
    OpenApiParameter("end", OpenApiTypes.DATE, description="Day after the last (default: tomorrow)"),
]
WINDOW = [
    OpenApiParameter("days", int, description="Window in days, 1-365 (default 30)"),
    OpenApiParameter("as_of", OpenApiTypes.DATETIME, description="End of the window (default now)"),
]
MONTH = OpenApiParameter("month", str, description="YYYY-MM (default: the latest month scored)")
SUBJECT = OpenApiParameter("subject", str, enum=["operator", "team"], description="Operators or teams")


class _View(JsonView):
    permission_classes = [HasScope("manage")]


def _actor(request: Request) -> dict:
    who = request_actor(request)
    return {"actor": who["created_by"], "api_key": who["api_key"]}


def _parse(serializer_class: type, data) -> dict:
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def _window(request: Request) -> tuple[datetime, int]:
    data = _parse(serializers.WindowQuery, request.query_params)
    return data.get("as_of") or datetime.now(tz=UTC), data["days"]


class FunnelView(_View):
    @extend_schema(
        operation_id="community_funnel",
        parameters=RANGE,
        responses={200: serializers.CommunityFunnelOutput, 400: BAD},
        summary="Paid -> in-product page -> added an operator -> active in a group -> bought again",
    )
    def get(self, request: Request) -> Response:
        data = _parse(serializers.RangeQuery, request.query_params)
        return Response(serializers.CommunityFunnelOutput(selectors.community_funnel(**data)).data)


class CohortsView(_View):
    @extend_schema(
        operation_id="community_cohorts",
        parameters=RANGE,
        responses={200: serializers.CommunityCohortOutput(many=True), 400: BAD},
        summary="Contacts by week of first contact: active in 7 days, bought again",
    )
    def get(self, request: Request) -> Response:
        data = _parse(serializers.RangeQuery, request.query_params)
        return Response(serializers.CommunityCohortOutput(selectors.contact_cohorts(**data), many=True).data)


class GroupHealthListView(ListAPIView):
    permission_classes = [HasScope("manage")]
    renderer_classes = [JSONRenderer]
    serializer_class = serializers.CommunityGroupHealthOutput
    filter_backends: list = []

    @extend_schema(
        operation_id="community_group_health_list",
        parameters=WINDOW,
        responses={200: serializers.CommunityGroupHealthOutput(many=True), 400: BAD},
    )
    def get(self, request: Request, *args, **kwargs) -> Response:
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        return CommunityGroup.objects.order_by("external_id", "id")

    def list(self, request: Request, *args, **kwargs) -> Response:
        as_of, days = _window(request)
        page = self.paginate_queryset(self.get_queryset())
        rows = selectors.group_health(as_of=as_of, days=days, group_ids=[g.pk for g in page])
        return self.get_paginated_response(serializers.CommunityGroupHealthOutput(rows, many=True).data)


class GroupHealthView(_View):
    @extend_schema(
        operation_id="community_group_health",
        parameters=[OpenApiParameter("group_id", int, OpenApiParameter.PATH, description=ID), *WINDOW],
        responses={200: serializers.CommunityGroupHealthOutput, 400: BAD, 404: NOT_FOUND},
    )
    def get(self, request: Request, group_id: str) -> Response:
        pk = id_from_path(group_id, GroupNotFound, "community group")
        if not CommunityGroup.objects.filter(pk=pk).exists():
            raise GroupNotFound(f"No community group {pk}.")
        as_of, days = _window(request)
        return Response(
            serializers.CommunityGroupHealthOutput(
                selectors.group_health(as_of=as_of, days=days, group_ids=[pk])[0]
            ).data
        )


class CompetitorAppsView(_View):
    @extend_schema(
        operation_id="community_competitor_apps",
        parameters=WINDOW,
        responses={200: serializers.CompetitorAppsOutput, 400: BAD},
        summary="Retention with vs without each installed app, sorted by overlap",
    )
    def get(self, request: Request) -> Response:
        as_of, days = _window(request)
        return Response(serializers.CompetitorAppsOutput(selectors.competitor_apps(as_of=as_of, days=days)).data)


class UnassignedView(_View):
    @extend_schema(operation_id="community_unassigned", responses={200: serializers.CommunityUnassignedOutput})
    def get(self, request: Request) -> Response:
        return Response(serializers.CommunityUnassignedOutput(selectors.unassigned()).data)


class AssignAccountView(_View):
    @extend_schema(
        operation_id="community_account_assign",
        parameters=[OpenApiParameter("account_id", int, OpenApiParameter.PATH, description=ID)],
        request=serializers.OperatorAssignInput,
        responses={
            200: serializers.OperatorAccountOutput,
            400: BAD,
            404: NOT_FOUND,
            422: OpenApiResponse(OpenApiTypes.OBJECT, description="`reason` NOT_STAFF"),
        },
    )
    def post(self, request: Request, account_id: str) -> Response:
        from community.errors import AccountNotFound

        pk = id_from_path(account_id, AccountNotFound, "operator account")
        data = _parse(serializers.OperatorAssignInput, request.data)
        account = services.assign_account(account_id=pk, operator_id=data["operator"], **_actor(request))
        return Response(serializers.OperatorAccountOutput(account).data)


class AssignGroupView(_View):
    @extend_schema(
        operation_id="community_group_assign",
        parameters=[OpenApiParameter("group_id", int, OpenApiParameter.PATH, description=ID)],
        request=serializers.OperatorAssignInput,
        responses={
            200: serializers.CommunityGroupOutput,
            400: BAD,
            404: NOT_FOUND,
            422: OpenApiResponse(OpenApiTypes.OBJECT, description="`reason` NOT_STAFF"),
        },
    )
    def post(self, request: Request, group_id: str) -> Response:
        pk = id_from_path(group_id, GroupNotFound, "community group")
        data = _parse(serializers.OperatorAssignInput, request.data)
        group = services.assign_group(group_id=pk, operator_id=data["operator"], **_actor(request))
        return Response(serializers.CommunityGroupOutput(group).data)


def _scores_query(request: Request):
    month_text = request.query_params.get("month")
    subject = request.query_params.get("subject")
    if subject not in (None, "", *ScoreSubject.values):
        from rest_framework.exceptions import ValidationError

        raise ValidationError({"subject": [f"One of {', '.join(ScoreSubject.values)}."]})
    if month_text:
        month = serializers.parse_month(month_text)
    else:
        month = ContributionScore.objects.order_by("-month").values_list("month", flat=True).first()
    queryset = ContributionScore.objects.select_related("operator", "team").filter(month=month)
    if subject:
        queryset = queryset.filter(subject=subject)
    return queryset.order_by("subject", "rank", "id")


class ScoreListView(ListAPIView):
    permission_classes = [HasScope("manage")]
    renderer_classes = [JSONRenderer]
    serializer_class = serializers.ContributionScoreOutput
    filter_backends: list = []

    @extend_schema(
        operation_id="community_scores",
        parameters=[MONTH, SUBJECT],
        responses={200: serializers.ContributionScoreOutput(many=True), 400: BAD},
    )
    def get(self, request: Request, *args, **kwargs) -> Response:
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        return _scores_query(self.request)


class ScoreDetailView(_View):
    @extend_schema(
        operation_id="community_score_detail",
        parameters=[OpenApiParameter("score_id", int, OpenApiParameter.PATH, description=ID)],
        responses={200: serializers.ContributionScoreDetailOutput, 404: NOT_FOUND},
        summary="One score with its breakdown and the sources of each dimension",
    )
    def get(self, request: Request, score_id: str) -> Response:
        pk = id_from_path(score_id, ScoreNotFound, "contribution score")
        score = ContributionScore.objects.select_related("operator", "team").filter(pk=pk).first()
        if score is None:
            raise ScoreNotFound(f"No contribution score {pk}.")
        return Response(serializers.ContributionScoreDetailOutput(score).data)


class _CsvNegotiation(BaseContentNegotiation):
    """The export answers CSV (an HttpResponse) whatever the Accept header says, so no client is
    refused with a 406; its errors are JSON like every other endpoint's."""

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class ScoreExportView(_View):
    content_negotiation_class = _CsvNegotiation

    @extend_schema(
        operation_id="community_scores_csv",
        parameters=[MONTH, SUBJECT],
        responses={(200, "text/csv"): OpenApiTypes.STR, 400: BAD},
    )
    def get(self, request: Request) -> HttpResponse:
        return exports.scores_csv_response(_scores_query(request))


class ScoreRunCreateView(_View):
    @extend_schema(
        operation_id="community_score_run_create",
        request=serializers.ContributionScoreRunInput,
        responses={
            202: serializers.ContributionScoreRunOutput,
            400: BAD,
            409: OpenApiResponse(OpenApiTypes.OBJECT, description="`reason` RUN_IN_PROGRESS"),
        },
    )
    def post(self, request: Request) -> Response:
        data = _parse(serializers.ContributionScoreRunInput, request.data)
        who = request_actor(request)
        run = services.request_score_run(month=data["month"], requested_by=who["created_by"], api_key=who["api_key"])
        return Response(serializers.ContributionScoreRunOutput(run).data, status=status.HTTP_202_ACCEPTED)


class ScoreRunDetailView(_View):
    @extend_schema(
        operation_id="community_score_run_detail",
        parameters=[OpenApiParameter("run_id", int, OpenApiParameter.PATH, description=ID)],
        responses={200: serializers.ContributionScoreRunOutput, 404: NOT_FOUND},
    )
    def get(self, request: Request, run_id: str) -> Response:
        pk = id_from_path(run_id, RunNotFound, "score run")
        run = ScoreRun.objects.filter(pk=pk).first()
        if run is None:
            raise RunNotFound(f"No score run {pk}.")
        return Response(serializers.ContributionScoreRunOutput(run).data)


class ScoreRunRetryView(_View):
    @extend_schema(
        operation_id="community_score_run_retry",
        parameters=[OpenApiParameter("run_id", int, OpenApiParameter.PATH, description=ID)],
        request=None,
        responses={
            202: serializers.ContributionScoreRunOutput,
            404: NOT_FOUND,
            409: OpenApiResponse(OpenApiTypes.OBJECT, description="`reason` NOT_FAILED"),
        },
    )
    def post(self, request: Request, run_id: str) -> Response:
        run = services.retry_score_run(run_id=id_from_path(run_id, RunNotFound, "score run"), **_actor(request))
        return Response(serializers.ContributionScoreRunOutput(run).data, status=status.HTTP_202_ACCEPTED)
