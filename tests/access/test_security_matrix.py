"""The security matrix, generated from the URL conf (not from the schema, so a view left out of
the schema is not left out here): every API endpoint and method against no credentials, a key
without the scope, a key with it, a staff session without and with the permissions the endpoint
asks, and a session write without its CSRF token. A new endpoint joins the matrix by existing;
a new public one fails until it is named in PUBLIC."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import Permission
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient
from rest_framework.views import APIView

from access.models import Scope
from access.permissions import StaffPermission

# Public by design: signed tracking links opened by message recipients.
PUBLIC = {"/api/v1/t/c/<str:token>", "/api/v1/t/o/<str:token>.gif"}
# Any caller with credentials, whatever its scopes or role: tells it who it is.
ANY_CALLER = {"/api/v1/auth/whoami"}
WRITES = {"post", "put", "patch", "delete"}


def _walk(resolver, prefix: str = ""):
    for entry in resolver.url_patterns:
        if isinstance(entry, URLResolver):
            yield from _walk(entry, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            yield "/" + prefix + str(entry.pattern), entry.callback


def endpoints():
    for route, callback in _walk(get_resolver()):
        if not route.startswith("/api/v1/"):
            continue
        view = getattr(callback, "cls", None)
        if view is None or not issubclass(view, APIView):
            yield route, "get", None  # a plain Django view: must be PUBLIC
            continue
        for method in ("get", "post", "put", "patch", "delete"):
            if hasattr(view, method):
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


def test_the_matrix_sees_every_api_route_of_the_url_conf():
    routes = {r for r, _m, _v in ENDPOINTS}
    assert "/api/v1/auth/whoami" in routes and "/api/v1/events" in routes
    assert len(routes) > 40


def test_every_unguarded_route_is_named_public():
    for route, _method, view in ENDPOINTS:
        if view is None or not view.permission_classes:
            assert route in PUBLIC, f"{route} is not guarded by a permission class; name it in PUBLIC if meant"
        else:
            scopes, _perms, staff_only = requirements(view)
            assert scopes or staff_only or route in ANY_CALLER, f"{route}: no scope and not staff-only"


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
