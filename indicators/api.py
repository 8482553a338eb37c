"""Indicator API (scope `manage` for keys; staff sessions with the view permission of the
indicator dashboards): the registry, daily series, retention cohorts, purchases, searches,
funnels, key behaviours and churn. Every list is paginated."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.exceptions import ValidationError
from rest_framework.generics import ListAPIView
from rest_framework.permissions import BasePermission
from rest_framework.response import Response
from rest_framework.views import APIView

from access.models import ApiKey
from access.permissions import HasScope
from config.api import JsonParser, Pagination, id_from_path, object_or_404, query_int, request_actor
from config.replica import reading_from_replica
from indicators import analyses, selectors, services
from indicators import registry as indicators
from indicators import serializers as s
from indicators.errors import AlertNotFound, AnomalyCheckNotFound, FunnelNotFound, GoalNotFound, IndicatorNotFound
from indicators.models import AlertStatus, Anomaly, AnomalyCheckRun, Funnel, Goal
from indicators.serializers import GoalDecomposeInput, GoalInput, GoalOutput, GoalProgressOutput, progress_body

VIEW_PERMISSION = "indicators.view_dailyindicator"


class CanReadIndicators(BasePermission):
    """API keys with `manage`; staff sessions with the dashboards' view permission (Analyst and
    Operations roles)."""

    message = "This endpoint needs the 'manage' scope, or a staff session that may view indicators."
    required_scope = "manage"  # what the scope matrix of the suite reads
    required_perms = (VIEW_PERMISSION,)  # and what a staff session needs instead

    def has_permission(self, request, view) -> bool:
        if isinstance(request.auth, ApiKey):
            return "manage" in request.auth.scopes
        user = request.user
        return bool(
            user and user.is_authenticated and user.is_active and user.is_staff and user.has_perm(VIEW_PERMISSION)
        )


class SeriesPagination(Pagination):
    page_size = 366  # a whole window on one page unless asked otherwise


PAGE = [
    OpenApiParameter("page", int, description="Page number (from 1)."),
    OpenApiParameter("page_size", int, description="Rows per page, at most 500."),
]
BAD_REQUEST = OpenApiResponse(OpenApiTypes.OBJECT, description="Invalid parameters: each field with its reasons.")
DENIED = {
    401: OpenApiResponse(OpenApiTypes.OBJECT, description="No valid API key or session."),
    403: OpenApiResponse(
        OpenApiTypes.OBJECT, description="The key lacks `manage`, or the staff member may not view indicators."
    ),
}
NO_PAGE = OpenApiResponse(OpenApiTypes.OBJECT, description="No such page.")


def _params(serializer_class, request) -> dict:
    serializer = serializer_class(data=request.query_params)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


class _View(APIView):
    permission_classes = [CanReadIndicators]
    pagination_class = Pagination

    def page(self, rows, extra: dict, output: type, *, pagination_class=None) -> Response:
        """One page of `rows`, with `extra` fields beside the page's, rendered by `output`."""
        paginator = (pagination_class or self.pagination_class)()
        page = paginator.paginate_queryset(rows, self.request, view=self)
        body = paginator.get_paginated_response(page).data
        return Response(output({**extra, **body}).data)


class IndicatorListView(_View):
    @extend_schema(
        summary="The indicators dashboards chart and goals are set on",
        operation_id="indicators_list",
        parameters=PAGE,
        responses={200: s.IndicatorPage, 404: NO_PAGE, **DENIED},
    )
    def get(self, request):
        rows = [
            {"key": i.key, "label": i.label, "unit": i.unit, "fold": i.fold, "description": i.description}
            for i in indicators.all_indicators()
        ]
        return self.page(rows, {}, s.IndicatorPage)


class IndicatorSeriesView(_View):
    @extend_schema(
        summary="An indicator's value per day",
        operation_id="indicator_series",
        parameters=[
            OpenApiParameter("key", str, OpenApiParameter.PATH, description="e.g. `dau`."),
            s.WindowInput,
            *PAGE,
        ],
        responses={
            200: s.SeriesPage,
            400: BAD_REQUEST,
            404: OpenApiResponse(
                OpenApiTypes.OBJECT, description="Unknown indicator (`reason` UNKNOWN_INDICATOR) or page."
            ),
            **DENIED,
        },
    )
    @reading_from_replica()
    def get(self, request, key: str):
        try:
            indicator = indicators.get_indicator(key)
        except indicators.UnknownIndicator:
            raise IndicatorNotFound(f"No indicator {key[:64]!r}; GET /api/v1/indicators lists them.") from None
        window = _params(s.WindowInput, request)
        values = indicators.daily_values(key, start=window["start"], end=window["end"])
        total = indicators.fold_days(indicator.fold, [value for _day, value in values])
        rows = [{"day": day, "value": indicators.value_text(value, indicator.unit)} for day, value in values]
        extra = {
            "key": indicator.key,
            "label": indicator.label,
            "unit": indicator.unit,
            "fold": indicator.fold,
            "start": window["start"],
            "end": window["end"],
            "total": indicators.value_text(total, indicator.unit),
        }
        return self.page(rows, extra, s.SeriesPage, pagination_class=SeriesPagination)


class RetentionView(_View):
    @extend_schema(
        summary="Retention cohorts (by signup day, week or month)",
        description="A person's signup is their first activity (`basis=activity`, retained when active) or "
        "their first `order_paid` (`basis=purchase`, retained when ordering again).",
        parameters=[s.RetentionInput, *PAGE],
        responses={200: s.RetentionPage, 400: BAD_REQUEST, 404: NO_PAGE, **DENIED},
    )
    @reading_from_replica()
    def get(self, request):
        params = _params(s.RetentionInput, request)
        rows = analyses.retention_cohorts(
            granularity=params["granularity"],
            basis=params["basis"],
            start=params["start"],
            end=params["end"],
            periods=params["periods"],
        )
        extra = {"granularity": params["granularity"], "basis": params["basis"], "periods": params["periods"]}
        return self.page(rows, extra, s.RetentionPage)


class PurchaseSummaryView(_View):
    @extend_schema(
        summary="Revenue, ARPU and repurchase rate over a window",
        parameters=[s.WindowInput],
        responses={200: s.PurchaseSummary, 400: BAD_REQUEST, **DENIED},
    )
    @reading_from_replica()
    def get(self, request):
        window = _params(s.WindowInput, request)
        summary = analyses.purchase_summary(start=window["start"], end=window["end"])
        return Response(s.PurchaseSummary({**summary, **window}).data)


class SearchQueriesView(_View):
    @extend_schema(
        summary="Search queries: most searched, or those that found nothing",
        parameters=[s.SearchInput, *PAGE],
        responses={200: s.SearchPage, 400: BAD_REQUEST, 404: NO_PAGE, **DENIED},
    )
    @reading_from_replica()
    def get(self, request):
        params = _params(s.SearchInput, request)
        report = analyses.search_report(
            start=params["start"], end=params["end"], zero_results_only=params["zero_results"]
        )
        rows = report.pop("queries")
        extra = {"start": params["start"], "end": params["end"], **report}
        return self.page(rows, extra, s.SearchPage)


def _funnel(pk: str) -> Funnel:
    funnel = selectors.funnel_with_steps(funnel_id=id_from_path(pk, FunnelNotFound, "funnel"))
    if funnel is None:
        raise FunnelNotFound(f"No funnel {pk}.")
    return funnel


class FunnelListView(_View):
    @extend_schema(
        summary="Funnels defined by operators (in the admin)",
        parameters=PAGE,
        responses={200: s.FunnelOutput(many=True), 404: NO_PAGE, **DENIED},
    )
    def get(self, request):
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(selectors.funnels_with_steps(), request, view=self)
        return paginator.get_paginated_response(s.FunnelOutput(page, many=True).data)


class FunnelAnalyzeView(_View):
    @extend_schema(
        summary="How many people went through each step of a funnel, in order",
        parameters=[
            OpenApiParameter("pk", str, OpenApiParameter.PATH, description="The funnel's id."),
            s.AnalysisWindowInput,
        ],
        responses={
            200: s.FunnelReport,
            400: BAD_REQUEST,
            404: OpenApiResponse(s.IndicatorErrorOutput, description="Unknown funnel."),
            **DENIED,
        },
    )
    @reading_from_replica()
    def get(self, request, pk: str):
        funnel = _funnel(pk)
        window = _params(s.AnalysisWindowInput, request)
        return Response(s.FunnelReport(analyses.funnel_report(funnel=funnel, **window)).data)


class KeyBehaviourView(_View):
    @extend_schema(
        summary="Retention of people who did a behaviour in their first days against those who did not",
        parameters=[s.KeyBehaviourInput],
        responses={200: s.KeyBehaviourReport, 400: BAD_REQUEST, **DENIED},
    )
    @reading_from_replica()
    def get(self, request):
        params = _params(s.KeyBehaviourInput, request)
        report = analyses.key_behaviour(
            event_name=params["event"],
            start=params["start"],
            end=params["end"],
            first_days=params["first_days"],
            retained_from=params["retained_from"],
            retained_days=params["retained_days"],
        )
        return Response(s.KeyBehaviourReport(report).data)


class ChurnView(_View):
    @extend_schema(
        summary="The last behaviours of people who churned against those who stayed",
        parameters=[s.ChurnInput, *PAGE],
        responses={200: s.ChurnPage, 400: BAD_REQUEST, 404: NO_PAGE, **DENIED},
    )
    @reading_from_replica()
    def get(self, request):
        params = _params(s.ChurnInput, request)
        report = analyses.churn_behaviours(
            start=params["start"],
            end=params["end"],
            churn_days=params["churn_days"],
            last_events=params["last_events"],
            sample=params["sample"],
        )
        rows = report.pop("behaviours")
        return self.page(rows, report, s.ChurnPage)


# --- goals (scope `manage`) ----------------------------------------------------------------------

GOAL_BAD_INPUT = OpenApiResponse(OpenApiTypes.OBJECT, description="Invalid input: the offending fields and why.")
GOAL_NO_KEY = OpenApiResponse(OpenApiTypes.OBJECT, description="No valid credentials.")
GOAL_NO_SCOPE = OpenApiResponse(OpenApiTypes.OBJECT, description="The key lacks `manage`.")
GOAL_NOT_FOUND = OpenApiResponse(OpenApiTypes.OBJECT, description="Unknown goal (`reason` GOAL_NOT_FOUND).")
GOAL_ID = OpenApiParameter("goal_id", int, OpenApiParameter.PATH, description="Integer id.")


def _actor(request) -> dict:
    who = request_actor(request)
    return {"actor": who["created_by"], "api_key": who["api_key"]}


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


# --- anomaly alerts --------------------------------------------------------------------------------

ALERT_ID = OpenApiParameter("alert_id", int, OpenApiParameter.PATH, description="Integer id.")
ALERT_NOT_FOUND = OpenApiResponse(OpenApiTypes.OBJECT, description="Unknown alert (`reason` ALERT_NOT_FOUND).")


def _alert(alert_id: str | int) -> Anomaly:
    return object_or_404(Anomaly.objects.all(), alert_id, AlertNotFound, "alert")


class AlertListView(ListAPIView):
    permission_classes = [HasScope("manage")]
    serializer_class = s.AlertOutput
    filter_backends: list = []

    def get_queryset(self):
        rows = Anomaly.objects.order_by("-period_start", "indicator")
        status = self.request.query_params.get("status")
        if status:
            if status not in AlertStatus.values:
                raise ValidationError({"status": [f"One of {AlertStatus.values}."]})
            rows = rows.filter(status=status)
        indicator = self.request.query_params.get("indicator")
        if indicator:
            rows = rows.filter(indicator=indicator[:64].replace("\x00", ""))
        return rows

    @extend_schema(
        operation_id="alerts_list",
        parameters=[
            OpenApiParameter("status", str, required=False, description="`new` or `acknowledged`."),
            OpenApiParameter("indicator", str, required=False),
        ],
        summary="Anomaly alerts, newest first",
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class AlertDetailView(APIView):
    permission_classes = [HasScope("manage")]

    @extend_schema(
        operation_id="alert_detail", parameters=[ALERT_ID], responses={200: s.AlertOutput, 404: ALERT_NOT_FOUND}
    )
    def get(self, request, alert_id: str):
        return Response(s.AlertOutput(_alert(alert_id)).data)


class AlertAcknowledgeView(APIView):
    permission_classes = [HasScope("manage")]
    parser_classes = [JsonParser]

    @extend_schema(
        operation_id="alert_acknowledge",
        parameters=[ALERT_ID],
        request=s.AcknowledgeInput,
        responses={
            200: s.AlertOutput,
            404: ALERT_NOT_FOUND,
            409: OpenApiResponse(OpenApiTypes.OBJECT, description="Already acknowledged (ALREADY_ACKNOWLEDGED)."),
        },
        summary="Acknowledge an alert, with a note saying why it moved",
    )
    def post(self, request, alert_id: str):
        alert = _alert(alert_id)
        data = s.AcknowledgeInput(data=request.data)
        data.is_valid(raise_exception=True)
        alert = services.acknowledge_alert(alert_id=alert.pk, note=data.validated_data["note"], **_actor(request))
        return Response(s.AlertOutput(alert).data)


class AlertResendView(APIView):
    permission_classes = [HasScope("manage")]

    @extend_schema(
        operation_id="alert_resend",
        parameters=[ALERT_ID],
        request=None,
        responses={
            202: s.AlertOutput,
            404: ALERT_NOT_FOUND,
            409: OpenApiResponse(OpenApiTypes.OBJECT, description="No failed notification (NOT_FAILED)."),
        },
        summary="Send an alert's failed e-mail or webhook again",
    )
    def post(self, request, alert_id: str):
        alert = services.resend_alert(alert_id=_alert(alert_id).pk, **_actor(request))
        return Response(s.AlertOutput(alert).data, status=202)


class WatchView(APIView):
    permission_classes = [HasScope("manage")]
    parser_classes = [JsonParser]

    @extend_schema(
        operation_id="indicator_watch_set",
        parameters=[
            OpenApiParameter("key", str, OpenApiParameter.PATH, description="Indicator key or `event_volume`.")
        ],
        request=s.WatchInput,
        responses={200: s.WatchOutput, 404: OpenApiResponse(OpenApiTypes.OBJECT, description="Unknown indicator.")},
        summary="Mute an indicator's anomaly checks, or set their sensitivity",
    )
    def put(self, request, key: str):
        if key not in services.watched_keys():
            raise IndicatorNotFound(f"No indicator {key[:64]!r}; GET /api/v1/indicators lists them.")
        data = s.WatchInput(data=request.data)
        data.is_valid(raise_exception=True)
        watch = services.set_indicator_watch(indicator=key, **data.validated_data, **_actor(request))
        return Response(s.WatchOutput(watch).data)


CHECK_ID = OpenApiParameter("run_id", int, OpenApiParameter.PATH, description="Integer id.")
CHECK_NOT_FOUND = OpenApiResponse(OpenApiTypes.OBJECT, description="Unknown run (ANOMALY_CHECK_NOT_FOUND).")


class CheckRunView(APIView):
    permission_classes = [HasScope("manage")]

    @extend_schema(
        operation_id="anomaly_check_detail",
        parameters=[CHECK_ID],
        responses={200: s.CheckRunOutput, 404: CHECK_NOT_FOUND},
    )
    def get(self, request, run_id: str):
        return Response(
            s.CheckRunOutput(
                object_or_404(AnomalyCheckRun.objects.all(), run_id, AnomalyCheckNotFound, "anomaly check run")
            ).data
        )


class CheckRunRetryView(APIView):
    permission_classes = [HasScope("manage")]

    @extend_schema(
        operation_id="anomaly_check_retry",
        parameters=[CHECK_ID],
        request=None,
        responses={
            202: s.CheckRunOutput,
            404: CHECK_NOT_FOUND,
            409: OpenApiResponse(OpenApiTypes.OBJECT, description="The run has not failed (NOT_FAILED)."),
        },
        summary="Queue a failed anomaly check again",
    )
    def post(self, request, run_id: str):
        run = object_or_404(AnomalyCheckRun.objects.all(), run_id, AnomalyCheckNotFound, "anomaly check run")
        return Response(
            s.CheckRunOutput(services.retry_anomaly_check(run_id=run.pk, **_actor(request))).data, status=202
        )
