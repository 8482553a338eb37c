"""Every API operation, whatever app adds it, answers 401 without credentials and 403 to a key
that lacks its scope (staff-only operations refuse every key); a key with the scope gets past
authorisation."""

import re

import pytest
from drf_spectacular.generators import EndpointEnumerator

from access.models import Scope
from access.permissions import StaffPermission


def api_operations():
    for path, _regex, method, view in EndpointEnumerator().get_api_endpoints():
        if not path.startswith("/api/v1/"):
            continue
        classes = view.cls.permission_classes
        scopes = {getattr(p, "required_scope", None) for p in classes} - {None}
        staff_only = any(issubclass(p, StaffPermission) for p in classes)
        yield path, method, scopes, staff_only


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


OPERATIONS = list(api_operations())
ALL = [pytest.param(p, m, id=f"{m} {p}") for p, m, _s, _st in OPERATIONS]
SCOPED = [pytest.param(p, m, s, id=f"{m} {p}") for p, m, s, st in OPERATIONS if s and not st]
STAFF_ONLY = [pytest.param(p, m, id=f"{m} {p}") for p, m, _s, st in OPERATIONS if st]
OPEN_TO_KEYS = [pytest.param(p, m, id=f"{m} {p}") for p, m, s, st in OPERATIONS if not s and not st]


def call(client, method: str, path: str):
    return client.generic(method, concrete(path), data="{}", content_type="application/json")


def test_the_matrix_sees_the_api():
    assert ("/api/v1/auth/whoami", "GET") in {(p, m) for p, m, _s, _st in OPERATIONS}


@pytest.mark.django_db
@pytest.mark.parametrize(("path", "method"), ALL)
def test_operation_requires_credentials(client, path, method):
    assert call(client, method, path).status_code == 401


@pytest.mark.django_db
@pytest.mark.parametrize(("path", "method", "scopes"), SCOPED)
def test_operation_refuses_a_key_without_its_scope(make_api_client, path, method, scopes):
    client = make_api_client(*[s for s in Scope.values if s not in scopes])
    assert call(client, method, path).status_code == 403


@pytest.mark.django_db
@pytest.mark.parametrize(("path", "method", "scopes"), SCOPED)
def test_operation_admits_a_key_with_its_scope(make_api_client, path, method, scopes):
    response = call(make_api_client(*scopes), method, path)
    assert response.status_code not in (401, 403), response.content
    assert response.status_code < 500


@pytest.mark.django_db
@pytest.mark.parametrize(("path", "method"), STAFF_ONLY)
def test_staff_only_operation_refuses_every_key(make_api_client, path, method):
    assert call(make_api_client(*Scope.values), method, path).status_code == 403


@pytest.mark.django_db
@pytest.mark.parametrize(("path", "method"), OPEN_TO_KEYS)
def test_unscoped_operation_admits_any_valid_key(make_api_client, path, method):
    assert call(make_api_client("events:write"), method, path).status_code == 200


@pytest.mark.django_db
def test_staff_session_is_limited_by_role_permissions(staff_client):
    analyst = staff_client("Analyst")
    assert analyst.get("/api/v1/auth/whoami").json()["scopes"] == ["profiles:read"]
    operations = staff_client("Operations")
    assert set(operations.get("/api/v1/auth/whoami").json()["scopes"]) == {"coupons:redeem", "manage"}
