"""The security matrix, generated from the URL conf (not from the schema, so a view left out of
the schema is not left out here): every route the project serves, by kind.

- API v1 endpoints and methods: no credentials, a key without the scope, a key with it, a staff
  session without and with the permissions the endpoint asks, a session write without its CSRF
  token.
- The admin's own pages (reports, exports, lookups, launches): no session and any key (the admin
  admits no key), a staff session without and with the permissions in ADMIN_VIEWS, and a POST
  without its CSRF token. The stock model pages are Django's (add/change/delete/view permissions).
- The Segment ingest: no key, a key without events:write, one with it, a staff session (never
  enough: ingestion takes a write key), and the same without a CSRF token.
- Public pages, each named with the reason.

A route of none of these kinds, or an API view without a permission class, an admin page missing
from ADMIN_VIEWS, fails `test_every_route_has_an_expectation`, so a new endpoint cannot be
forgotten: it joins the matrix, or the test names it."""

from __future__ import annotations

import re
import types

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, path
from rest_framework import viewsets
from rest_framework.test import APIClient
from rest_framework.views import APIView

from access.models import Scope
from access.permissions import StaffPermission

# Public by design: signed tracking links opened by message recipients.
PUBLIC = {"/api/v1/t/c/<str:token>", "/api/v1/t/o/<str:token>.gif"}
# Any caller with credentials, whatever its scopes or role: tells it who it is.
ANY_CALLER = {"/api/v1/auth/whoami"}
WRITES = {"post", "put", "patch", "delete"}

# Pages outside the API and the admin that anyone may open, and why.
PUBLIC_PAGES = {
    "/": "redirects to the admin, which asks for a login",
    "/^admin/tracking/(?P<model>goal|goalmonth|funnel|funnelstep|dailyindicator)/(?P<rest>.*)$": (
        "redirects old bookmarks into the admin, which asks for a login"
    ),
    "/healthz": "the load balancer's liveness probe: says up or down, nothing else",
    "/i18n/setlang/": "switches the reader's interface language; reads no data",
    "/i18n/js/": "the interface's translated strings (the JavaScript catalogue), no data",
    "/api/schema/": "the API's contract (API.md): paths and shapes, no data",
    "/api/docs/": "Swagger UI of that schema",
    "/ingest/segment/analytics-next/bundles/<str:name>": "analytics.js itself, a static file",
}
# The Segment tracking API: a write key (an API key with events:write) and nothing else.
SEGMENT_WRITES = {
    "/ingest/segment/v1/batch",
    "/ingest/segment/v1/import",
    "/ingest/segment/v1/b",
    "/ingest/segment/^v1/(?P<kind>track|identify|page|screen|alias|group|t|i|p|s|a|g)$",
}
SEGMENT_SETTINGS = "/ingest/segment/v1/projects/<str:write_key>/settings"

# The admin's own pages: the method that exercises the permission check, and the permissions a
# staff member needs. Writes are tried by POST; pages that only read by GET.
ADMIN_VIEWS: dict[str, tuple[str, tuple[str, ...]]] = {
    "/admin/indicators/dailyindicator/": ("get", ("indicators.view_dailyindicator",)),
    "/admin/indicators/dailyindicator/retention/": ("get", ("indicators.view_dailyindicator",)),
    "/admin/indicators/dailyindicator/search/": ("get", ("indicators.view_dailyindicator",)),
    "/admin/indicators/dailyindicator/key-behaviour/": ("get", ("indicators.view_dailyindicator",)),
    "/admin/indicators/dailyindicator/churn/": ("get", ("indicators.view_dailyindicator",)),
    "/admin/indicators/funnel/<int:pk>/analyze/": ("get", ("indicators.view_funnel",)),
    "/admin/indicators/goal/<int:goal_id>/progress/": ("get", ("indicators.view_goal",)),
    "/admin/indicators/goal/<int:goal_id>/progress.csv": ("get", ("indicators.view_goal",)),
    "/admin/indicators/goal/export.csv": ("get", ("indicators.view_goal",)),
    "/admin/profiles/profile/lookup/": ("get", ("profiles.lookup_profile",)),
    "/admin/profiles/profiletag/process_import/": ("post", ("profiles.add_profiletag",)),
    "/admin/profiles/profiletag/import/": ("get", ("profiles.add_profiletag",)),
    "/admin/profiles/profiletag/export/": ("get", ("profiles.view_profiletag",)),
    "/admin/crm/customervalue/distribution/": ("get", ("crm.view_customervalue",)),
    "/admin/crm/customervalue/movements/": ("get", ("crm.view_customervalue",)),
    "/admin/crm/customervalue/recompute/": ("post", ("crm.recompute_values",)),
    "/admin/coupons/couponrule/<int:rule_id>/report/": ("get", ("coupons.view_couponrule",)),
    "/admin/coupons/couponrule/<int:rule_id>/issue/": ("get", ("coupons.add_issuancejob",)),
    "/admin/coupons/couponrule/<int:rule_id>/codes/": ("get", ("coupons.add_codebatch",)),
    "/admin/coupons/couponrule/campaign-report/": ("get", ("coupons.view_couponrule",)),
    "/admin/coupons/couponrule/roi/": ("get", ("coupons.view_couponrule",)),
    "/admin/coupons/couponrule/channels/": ("get", ("coupons.view_couponrule",)),
    "/admin/coupons/codebatch/<int:batch_id>/export/": ("get", ("coupons.export_codebatch",)),
    "/admin/materials/material/<int:material_id>/performance/": ("get", ("materials.view_material",)),
    "/admin/materials/materialversion/<int:version_id>/preview/": ("get", ("materials.view_materialversion",)),
    "/admin/materials/materialversion/<int:version_id>/approve/": ("post", ("materials.approve_material",)),
    "/admin/campaigns/segment/check/": ("post", ("campaigns.add_segment",)),
    "/admin/campaigns/campaign/<int:pk>/results/": ("get", ("campaigns.view_campaign",)),
    "/admin/campaigns/campaign/<int:pk>/history/": ("get", ("campaigns.view_campaign",)),
    "/admin/campaigns/campaign/<int:pk>/counters.json": ("get", ("campaigns.view_campaign",)),
    "/admin/campaigns/campaign/<int:pk>/rollout/": ("post", ("campaigns.view_campaign", "campaigns.send_campaign")),
    "/admin/campaigns/campaign/<int:pk>/launch/": ("post", ("campaigns.view_campaign", "campaigns.send_campaign")),
    "/admin/campaigns/campaign/<int:pk>/test-message/": (
        "post",
        ("campaigns.view_campaign", "campaigns.send_campaign"),
    ),
    "/admin/journeys/journey/<int:pk>/steps/": ("get", ("journeys.view_journey",)),
    "/admin/journeys/journey/<int:pk>/launch/": ("post", ("campaigns.send_campaign",)),
    "/admin/journeys/journey/<int:pk>/retry/": ("post", ("campaigns.send_campaign",)),
    "/admin/community/communitygroup/funnel/": ("get", ("community.view_communitygroup",)),
    "/admin/community/communitygroup/health/": ("get", ("community.view_communitygroup",)),
    "/admin/community/communitygroup/competitor-apps/": ("get", ("community.view_communitygroup",)),
    "/admin/community/scorerun/run/": ("post", ("community.add_scorerun",)),
    "/admin/community/contributionscore/export.csv": ("get", ("community.view_contributionscore",)),
    "/admin/planning/tactic/goal/<int:goal_id>/": ("get", ("planning.view_tactic",)),
    "/admin/planning/task/board/": ("get", ("planning.view_task",)),
    "/admin/planning/task/review/": ("get", ("planning.view_task",)),
    "/admin/planning/task/review.csv": ("get", ("planning.view_task",)),
}
# Django's own admin views: its model pages check the model's permissions, the site's pages
# (index, login, password change, catch-all) need a staff login or are the login itself.
STOCK_ADMIN_VIEWS = {"changelist_view", "add_view", "history_view", "delete_view", "change_view"}
STOCK_ADMIN_MODULES = (
    "django.contrib.admin.",
    "django.contrib.auth.admin",
    "django.contrib.contenttypes.views",
    "django.views.generic.base",
)


def _walk(resolver, prefix: str = ""):
    for entry in resolver.url_patterns:
        if isinstance(entry, URLResolver):
            yield from _walk(entry, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            yield "/" + prefix + str(entry.pattern), entry.callback


def routes(urlconf=None):
    """Every route of the URL conf (the project's, or one a test builds) with its view."""
    return list(_walk(get_resolver(urlconf)))


def endpoints(urlconf=None):
    for route, callback in routes(urlconf):
        if not route.startswith("/api/v1/"):
            continue
        view = getattr(callback, "cls", None)
        if view is None or not issubclass(view, APIView):
            yield route, "get", None  # a plain Django view: must be PUBLIC
            continue
        # A ViewSet (by hand or from a router) answers the methods its route maps to actions;
        # it has no `get`/`post` of its own, so without this it would escape the matrix.
        actions = getattr(callback, "actions", None) or {}
        for method in ("get", "post", "put", "patch", "delete"):
            if method in actions or hasattr(view, method):
                yield route, method, view


ENDPOINTS = list(endpoints())
GUARDED = [(r, m, v) for r, m, v in ENDPOINTS if r not in PUBLIC | ANY_CALLER]


def requirements(view) -> tuple[set[str], tuple[str, ...], bool]:
    """The scopes a key needs, the permissions a staff session needs, whether keys are refused."""
    scopes: set[str] = set()
    perms: list[str] = []
    staff_only = False
    for permission in view.permission_classes:
        if scope := getattr(permission, "required_scope", None):
            scopes.add(scope)
            perms.extend(permission.required_perms)
        if issubclass(permission, StaffPermission):
            staff_only = True
            perms.extend(permission.perms)
    return scopes, tuple(perms), staff_only


def concrete(route: str) -> str:
    return re.sub(r"<(?:\w+:)?\w+>", "1", route)


def call(client, method: str, route: str):
    return client.generic(method.upper(), concrete(route), data="{}", content_type="application/json")


def params(rows):
    return [pytest.param(r, m, v, id=f"{m.upper()} {r}") for r, m, v in rows]


def _is_stock_admin(callback) -> bool:
    if getattr(callback, "model_admin", None) is not None and callback.__name__ in STOCK_ADMIN_VIEWS:
        return True
    return (getattr(callback, "__module__", "") or "").startswith(STOCK_ADMIN_MODULES)


def unexpected(urlconf=None) -> list[str]:
    """The routes the matrix has no expectation for, each with why; empty when every route is
    tried below. The same judgement for the project's URL conf and for one a test builds."""
    found = []
    for route, callback in routes(urlconf):
        if route.startswith("/api/v1/"):
            view = getattr(callback, "cls", None)
            if view is None or not issubclass(view, APIView) or not view.permission_classes:
                if route not in PUBLIC:
                    found.append(f"{route}: not guarded by a permission class (name it in PUBLIC if meant)")
            elif route not in ANY_CALLER and not (requirements(view)[0] or requirements(view)[2]):
                found.append(f"{route}: no scope and not staff-only")
        elif route.startswith("/admin/"):
            if route not in ADMIN_VIEWS and not _is_stock_admin(callback):
                found.append(f"{route}: an admin page without an entry in ADMIN_VIEWS")
        elif route not in PUBLIC_PAGES and route not in SEGMENT_WRITES and route != SEGMENT_SETTINGS:
            found.append(f"{route}: served outside the API and the admin, and not named")
    return found


def test_the_matrix_sees_every_route_of_the_url_conf():
    seen = {r for r, _c in routes()}
    assert "/api/v1/auth/whoami" in seen and "/api/v1/events" in seen
    assert len({r for r, _m, _v in ENDPOINTS}) > 40
    # Every named expectation is a route that exists: none is left behind by a rename.
    assert set(ADMIN_VIEWS) <= seen, set(ADMIN_VIEWS) - seen
    assert set(PUBLIC_PAGES) | SEGMENT_WRITES | {SEGMENT_SETTINGS} | PUBLIC <= seen


def test_every_route_has_an_expectation():
    assert unexpected() == []


class _Unguarded(APIView):
    permission_classes: list = []

    def get(self, request):  # pragma: no cover - never called: the matrix flags it unread
        raise AssertionError


class _UnguardedSet(viewsets.ViewSet):
    permission_classes: list = []

    def list(self, request):  # pragma: no cover - never called: the matrix flags it unread
        raise AssertionError

    def create(self, request):  # pragma: no cover - as above
        raise AssertionError


def _unguarded_admin_page(request):  # pragma: no cover - as above
    raise AssertionError


def _urlconf_with(*extra) -> types.ModuleType:
    from config import urls

    module = types.ModuleType("urls_with_a_new_endpoint")
    module.urlpatterns = [*extra, *urls.urlpatterns]
    return module


@pytest.mark.parametrize(
    ("extra", "flagged"),
    [
        (path("api/v1/new-report", _Unguarded.as_view()), "/api/v1/new-report"),
        (
            path("admin/coupons/couponrule/new-export.csv", _unguarded_admin_page),
            "/admin/coupons/couponrule/new-export.csv",
        ),
        (path("exports/everything.csv", _unguarded_admin_page), "/exports/everything.csv"),
        (path("api/v1/new-things", _UnguardedSet.as_view({"get": "list", "post": "create"})), "/api/v1/new-things"),
    ],
    ids=["api view without permission", "admin page", "page elsewhere", "viewset without permission"],
)
def test_a_new_unprotected_endpoint_fails_the_matrix(extra, flagged):
    found = unexpected(_urlconf_with(extra))
    assert [f for f in found if f.startswith(flagged + ":")], found
    assert len(found) == 1, found  # that one, and nothing of the project's own


@pytest.mark.django_db
@pytest.mark.parametrize(("route", "method", "view"), params(GUARDED))
def test_no_credentials_401(client, route, method, view):
    assert call(client, method, route).status_code == 401


@pytest.mark.django_db
@pytest.mark.parametrize(("route", "method", "view"), params(GUARDED))
def test_wrong_scope_403(make_api_client, route, method, view):
    scopes, _perms, staff_only = requirements(view)
    client = make_api_client(*[s for s in Scope.values if staff_only or s not in scopes])
    assert call(client, method, route).status_code == 403


# Staff-only endpoints admit no key: test_wrong_scope_403 tries them with every scope.
@pytest.mark.django_db
@pytest.mark.parametrize(("route", "method", "view"), params([e for e in GUARDED if not requirements(e[2])[2]]))
def test_right_scope_passes(make_api_client, route, method, view):
    scopes, _perms, _staff_only = requirements(view)
    response = call(make_api_client(*scopes), method, route)
    assert response.status_code not in (401, 403) and response.status_code < 500, response.content


@pytest.mark.django_db
@pytest.mark.parametrize(("route", "method", "view"), params(GUARDED))
def test_staff_session_without_the_permission_403(make_staff, route, method, view):
    client = APIClient()
    client.force_login(make_staff())  # staff, in no role
    assert call(client, method, route).status_code == 403


def _staff_with(make_staff, perms):
    user = make_staff()
    for name in perms:
        app_label, codename = name.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return user


@pytest.mark.django_db
@pytest.mark.parametrize(("route", "method", "view"), params(GUARDED))
def test_staff_session_with_the_permission_passes(make_staff, route, method, view):
    _scopes, perms, _staff_only = requirements(view)
    client = APIClient()
    client.force_login(_staff_with(make_staff, perms))
    response = call(client, method, route)
    assert response.status_code not in (401, 403) and response.status_code < 500, response.content


@pytest.mark.django_db
@pytest.mark.parametrize(("route", "method", "view"), params([e for e in GUARDED if e[1] in WRITES]))
def test_session_write_without_csrf_token_403(make_staff, route, method, view):
    _scopes, perms, _staff_only = requirements(view)
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(_staff_with(make_staff, perms))
    response = call(client, method, route)
    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]


@pytest.mark.django_db
@pytest.mark.parametrize("route", sorted(ANY_CALLER))
def test_any_caller_routes_need_credentials_only(client, make_api_client, make_staff, route):
    assert client.get(concrete(route)).status_code == 401
    assert make_api_client("events:write").get(concrete(route)).status_code == 200
    session = APIClient()
    session.force_login(make_staff())
    assert session.get(concrete(route)).status_code == 200


# --- the admin's own pages ---------------------------------------------------------------------

ADMIN_ROWS = [pytest.param(route, method, perms, id=route) for route, (method, perms) in sorted(ADMIN_VIEWS.items())]


def _admin_call(client, method: str, route: str):
    return getattr(client, method)(concrete(route))


def _is_login_redirect(response) -> bool:
    return response.status_code == 302 and response["Location"].startswith("/admin/login/")


@pytest.mark.django_db
@pytest.mark.parametrize(("route", "method", "perms"), ADMIN_ROWS)
def test_admin_page_without_a_session_asks_for_a_login(client, route, method, perms):
    assert _is_login_redirect(_admin_call(client, method, route))


@pytest.mark.django_db
@pytest.mark.parametrize(("route", "method", "perms"), ADMIN_ROWS)
def test_admin_page_admits_no_key_whatever_its_scopes(route, method, perms):
    client = Client(HTTP_AUTHORIZATION=f"Api-Key {_key(*Scope.values)}")
    assert _is_login_redirect(_admin_call(client, method, route))


@pytest.mark.django_db
@pytest.mark.parametrize(("route", "method", "perms"), ADMIN_ROWS)
def test_admin_page_staff_without_the_permission_403(make_staff, route, method, perms):
    client = Client()
    client.force_login(make_staff())
    assert _admin_call(client, method, route).status_code == 403


@pytest.mark.django_db
@pytest.mark.parametrize(("route", "method", "perms"), ADMIN_ROWS)
def test_admin_page_staff_missing_one_of_the_permissions_403(make_staff, route, method, perms):
    for left_out in perms:
        client = Client()
        client.force_login(_staff_with(make_staff, [p for p in perms if p != left_out]))
        assert _admin_call(client, method, route).status_code == 403, f"passes without {left_out}"


@pytest.mark.django_db
@pytest.mark.parametrize(("route", "method", "perms"), ADMIN_ROWS)
def test_admin_page_staff_with_the_permission_passes(make_staff, route, method, perms):
    client = Client()
    client.force_login(_staff_with(make_staff, perms))
    response = _admin_call(client, method, route)
    assert response.status_code not in (401, 403) and response.status_code < 500
    assert not _is_login_redirect(response)


@pytest.mark.django_db
@pytest.mark.parametrize(("route", "method", "perms"), ADMIN_ROWS)
def test_admin_page_post_without_csrf_token_403(make_staff, route, method, perms):
    client = Client(enforce_csrf_checks=True)
    client.force_login(_staff_with(make_staff, perms))
    response = client.post(concrete(route))
    assert response.status_code == 403 and b"CSRF" in response.content


# --- the Segment ingest ----------------------------------------------------------------------

SEGMENT_ROWS = [pytest.param(r, id=r) for r in sorted(SEGMENT_WRITES)]
SEGMENT_BODY = '{"batch": [], "type": "track", "event": "x", "userId": "u", "messageId": "m"}'


def _segment_post(client, route: str, key: str | None = None):
    route = route.replace("^v1/(?P<kind>track|identify|page|screen|alias|group|t|i|p|s|a|g)$", "v1/track")
    headers = {}
    if key is not None:
        import base64

        headers["HTTP_AUTHORIZATION"] = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
    return client.post(route, data=SEGMENT_BODY, content_type="application/json", **headers)


def _key(*scopes: str) -> str:
    from access import services as access_services

    return access_services.create_api_key(name=f"segment-{'-'.join(scopes) or 'none'}", scopes=list(scopes)).plaintext


@pytest.mark.django_db
@pytest.mark.parametrize("route", SEGMENT_ROWS)
def test_segment_ingest_against_every_caller(client, make_staff, route):
    assert _segment_post(client, route).status_code == 401
    assert _segment_post(client, route, "not-a-key").status_code == 401
    others = [s for s in Scope.values if s != Scope.EVENTS_WRITE]
    assert _segment_post(client, route, _key(*others)).status_code == 403
    right = _segment_post(client, route, _key(Scope.EVENTS_WRITE))
    assert right.status_code not in (401, 403) and right.status_code < 500, right.content
    # A staff session is no write key, with or without its CSRF token.
    for session in (Client(), Client(enforce_csrf_checks=True)):
        session.force_login(make_staff(superuser=True))
        assert _segment_post(session, route).status_code == 401


@pytest.mark.django_db
def test_segment_settings_need_a_write_key(client, make_staff):
    def get(key):
        return client.get(SEGMENT_SETTINGS.replace("<str:write_key>", key))

    assert get("not-a-key").status_code == 401
    assert get(_key(Scope.PROFILES_READ, Scope.MANAGE)).status_code == 403
    assert get(_key(Scope.EVENTS_WRITE)).status_code == 200
    session = Client()
    session.force_login(make_staff(superuser=True))
    assert session.get(SEGMENT_SETTINGS.replace("<str:write_key>", "not-a-key")).status_code == 401


# --- public pages ----------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("route", sorted(r for r in PUBLIC_PAGES if "(?P" not in r))
def test_public_pages_answer_without_credentials(client, route):
    response = client.get(concrete(route).replace("<str:name>", "missing.js"))
    assert response.status_code in (200, 301, 302, 404), route
    if response.status_code in (301, 302):
        # The language switch goes back to "/", which itself redirects into the admin.
        assert response["Location"].startswith("/admin/") or response["Location"] == "/", response["Location"]


def test_viewset_routes_are_enumerated_with_the_methods_of_their_actions():
    """A ViewSet route is tried like any API view: each method its actions answer is in the
    matrix (and so in the 401/403 checks once it is guarded)."""
    found = [(m, v) for r, m, v in endpoints(_urlconf_with(_VIEWSET_ROUTE)) if r == "/api/v1/new-things"]
    assert found == [("get", _UnguardedSet), ("post", _UnguardedSet)]
    assert [f for f in unexpected(_urlconf_with(_VIEWSET_ROUTE)) if f.startswith("/api/v1/new-things:")]


_VIEWSET_ROUTE = path("api/v1/new-things", _UnguardedSet.as_view({"get": "list", "post": "create"}))
