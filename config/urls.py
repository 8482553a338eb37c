"""Root URLs: the admin, the REST API v1 (one include per app), its schema and the health check."""

from django.contrib import admin
from django.urls import include, path, re_path
from django.utils.translation import gettext_lazy as _
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from config.api import healthz

admin.site.site_header = "opsloop"
admin.site.site_title = "opsloop"
admin.site.index_title = _("Operations back office")
# The back office is the whole site: no public front end for a "View site" link to lead to.
admin.site.site_url = None

api_v1 = [
    path("", include("access.urls")),
    path("", include("tracking.urls")),
    path("", include("indicators.urls")),
    path("", include("profiles.urls")),
    path("", include("crm.urls")),
    path("", include("predictions.urls")),
    path("", include("coupons.urls")),
    path("", include("materials.urls")),
    path("", include("campaigns.urls")),
    path("", include("journeys.urls")),
    path("", include("community.urls")),
    path("", include("planning.urls")),
]

# Admin pages of the models that moved from `tracking` to `indicators`: bookmarks keep working.
MOVED_TO_INDICATORS = "goal|goalmonth|funnel|funnelstep|dailyindicator"

urlpatterns = [
    # The root of the server is the back office (a bare host name must not meet a 404).
    path("", RedirectView.as_view(pattern_name="admin:index", permanent=False), name="home"),
    re_path(
        rf"^admin/tracking/(?P<model>{MOVED_TO_INDICATORS})/(?P<rest>.*)$",
        RedirectView.as_view(url="/admin/indicators/%(model)s/%(rest)s", query_string=True, permanent=True),
    ),
    path("admin/", admin.site.urls),
    # The language switch in the admin header (Django's set_language, remembered per staff member).
    path("i18n/", include("access.i18n_urls")),
    path("api/v1/", include(api_v1)),
    # The Segment tracking spec, for products that send with Segment's or RudderStack's libraries.
    path("ingest/segment/", include("profiles.segment_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("healthz", healthz, name="healthz"),
]
