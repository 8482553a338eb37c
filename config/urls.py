"""Root URLs: the admin, the REST API v1 (one include per app), its schema and the health check."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from config.api import healthz

admin.site.site_header = "opsloop"
admin.site.site_title = "opsloop"
admin.site.index_title = "Operations back office"

api_v1 = [
    path("", include("access.urls")),
    path("", include("tracking.urls")),
    path("", include("profiles.urls")),
    path("", include("crm.urls")),
    path("", include("coupons.urls")),
    path("", include("campaigns.urls")),
    path("", include("community.urls")),
]

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("healthz", healthz, name="healthz"),
]
