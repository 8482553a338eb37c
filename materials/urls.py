"""Routes of the material library, under /api/v1/."""

from django.urls import path

from materials import api

urlpatterns = [
    path("materials", api.MaterialListView.as_view(), name="material-list"),
    path("materials/<str:pk>", api.MaterialDetailView.as_view(), name="material-detail"),
    path("materials/<str:pk>/versions", api.MaterialVersionsView.as_view(), name="material-versions"),
    path("materials/<str:pk>/history", api.MaterialHistoryView.as_view(), name="material-history"),
    path("material-versions/<str:pk>", api.VersionDetailView.as_view(), name="material-version-detail"),
    path("material-versions/<str:pk>/approve", api.VersionApproveView.as_view(), name="material-version-approve"),
    path("material-versions/<str:pk>/preview", api.VersionPreviewView.as_view(), name="material-version-preview"),
]
