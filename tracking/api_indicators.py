"""Indicator API (scope `manage` for keys; staff sessions with the view permission of the
indicator dashboards): the registry, daily series, retention cohorts, purchases, searches,
funnels, key behaviours and churn. Every list is paginated."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.permissions import BasePermission
from rest_framework.response import Response
from rest_framework.views import APIView

from access.models import ApiKey
from config.api import Pagination, id_from_path
from tracking import analyses, indicators, selectors
from tracking import serializers_indicators as s
from tracking.errors import FunnelNotFound, IndicatorNotFound
from tracking.models import Funnel

VIEW_PERMISSION = "tracking.view_dailyindicator"


class CanReadIndicators(BasePermission):
    """API keys with `manage`; staff sessions with the dashboards' view permission (Analyst and
    Operations roles)."""

    message = "This endpoint needs the 'manage' scope, or a staff session that may view indicators."
    required_scope = "manage"  # what the scope matrix of the suite reads

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
