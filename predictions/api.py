"""The predictions API: the models' state, a run's state, and the retry of a failed run."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from access.models import ApiKey
from access.permissions import HasScope
from config.api import JsonParser, id_from_path
from predictions import selectors, services
from predictions.errors import RunNotFound
from predictions.models import PredictionRun
from predictions.serializers import ModelStateOutput, PredictionRunOutput

RUN_ID = OpenApiParameter("run_id", int, OpenApiParameter.PATH, description="Integer id.")
NOT_FOUND = OpenApiResponse(OpenApiTypes.OBJECT, description="Unknown run (`reason` RUN_NOT_FOUND).")
CONFLICT = OpenApiResponse(OpenApiTypes.OBJECT, description="The run has not failed (`reason` NOT_FAILED).")


class _JsonView(APIView):
    parser_classes = [JsonParser]
    renderer_classes = [JSONRenderer]
    permission_classes = [HasScope("manage")]


class ModelStateView(_JsonView):
    @extend_schema(
        operation_id="prediction_model_state",
        responses={200: ModelStateOutput},
        summary="State of the lifetime-value and churn models: ok, not enough data, not converged or failed",
    )
    def get(self, request: Request) -> Response:
        return Response(ModelStateOutput(selectors.model_state()).data)


class PredictionRunDetailView(_JsonView):
    @extend_schema(
        parameters=[RUN_ID],
        operation_id="prediction_run_detail",
        responses={200: PredictionRunOutput, 404: NOT_FOUND},
    )
    def get(self, request: Request, run_id: str) -> Response:
        run = PredictionRun.objects.filter(pk=id_from_path(run_id, RunNotFound, "prediction run")).first()
        if run is None:
            raise RunNotFound(f"No prediction run {run_id}.")
        return Response(PredictionRunOutput(run).data)


class PredictionRunRetryView(_JsonView):
    @extend_schema(
        parameters=[RUN_ID],
        operation_id="prediction_run_retry",
        request=None,
        responses={202: PredictionRunOutput, 404: NOT_FOUND, 409: CONFLICT},
        summary="Queue a failed prediction run again (409 NOT_FAILED unless it failed).",
    )
    def post(self, request: Request, run_id: str) -> Response:
        key = request.auth if isinstance(request.auth, ApiKey) else None
        run = services.retry_run(
            run_id=id_from_path(run_id, RunNotFound, "prediction run"), actor=None if key else request.user, api_key=key
        )
        return Response(PredictionRunOutput(run).data, status=status.HTTP_202_ACCEPTED)
