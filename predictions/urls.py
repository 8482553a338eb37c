"""Predictions endpoints, included under /api/v1/."""

from django.urls import path

from predictions import api

urlpatterns = [
    path("predictions/model", api.ModelStateView.as_view(), name="prediction-model-state"),
    path("prediction-runs/<str:run_id>", api.PredictionRunDetailView.as_view(), name="prediction-run"),
    path("prediction-runs/<str:run_id>/retry", api.PredictionRunRetryView.as_view(), name="prediction-run-retry"),
]
