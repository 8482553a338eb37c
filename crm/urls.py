"""Customer-value endpoints, included under /api/v1/."""

from django.urls import path

from crm import api

urlpatterns = [
    path("value-recompute-runs/<str:run_id>", api.RecomputeRunDetailView.as_view(), name="value-recompute-run"),
    path(
        "value-recompute-runs/<str:run_id>/retry",
        api.RecomputeRunRetryView.as_view(),
        name="value-recompute-run-retry",
    ),
]
