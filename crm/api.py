"""The customer-value API: a recompute run's state, and the retry of a failed one."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response

from access.permissions import HasScope
from config.api import id_from_path, object_or_404, request_actor
from config.views import JsonView
from crm import services
from crm.errors import RunNotFound
from crm.models import RecomputeRun
from crm.serializers import RecomputeRunOutput

RUN_ID = OpenApiParameter("run_id", int, OpenApiParameter.PATH, description="Integer id.")
NOT_FOUND = OpenApiResponse(OpenApiTypes.OBJECT, description="Unknown run (`reason` RUN_NOT_FOUND).")
CONFLICT = OpenApiResponse(OpenApiTypes.OBJECT, description="The run has not failed (`reason` NOT_FAILED).")


class _ManageView(JsonView):
    permission_classes = [HasScope("manage")]


class RecomputeRunDetailView(_ManageView):
    @extend_schema(
        parameters=[RUN_ID],
        operation_id="value_recompute_run_detail",
        responses={200: RecomputeRunOutput, 404: NOT_FOUND},
    )
    def get(self, request: Request, run_id: str) -> Response:
        run = object_or_404(RecomputeRun.objects.select_related("scheme"), run_id, RunNotFound, "recompute run")
        return Response(RecomputeRunOutput(run).data)


class RecomputeRunRetryView(_ManageView):
    @extend_schema(
        parameters=[RUN_ID],
        operation_id="value_recompute_run_retry",
        request=None,
        responses={202: RecomputeRunOutput, 404: NOT_FOUND, 409: CONFLICT},
        summary="Queue a failed value recompute again (409 NOT_FAILED unless it failed).",
    )
    def post(self, request: Request, run_id: str) -> Response:
        who = request_actor(request)
        run = services.retry_recompute(
            run_id=id_from_path(run_id, RunNotFound, "recompute run"), actor=who["created_by"], api_key=who["api_key"]
        )
        return Response(RecomputeRunOutput(run).data, status=status.HTTP_202_ACCEPTED)
