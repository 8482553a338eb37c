"""`/ingest/segment/`: the Segment HTTP Tracking API (see `profiles.segment_api`)."""

from django.urls import path, re_path

from profiles import segment_api

urlpatterns = [
    path("v1/batch", segment_api.batch, name="segment-batch"),
    path("v1/import", segment_api.batch, name="segment-import"),
    path("v1/b", segment_api.batch, name="segment-b"),
    re_path(
        r"^v1/(?P<kind>track|identify|page|screen|alias|group|t|i|p|s|a|g)$", segment_api.single, name="segment-call"
    ),
    path("v1/projects/<str:write_key>/settings", segment_api.project_settings, name="segment-settings"),
    path("analytics-next/bundles/<str:name>", segment_api.analytics_bundle, name="segment-bundle"),
]
