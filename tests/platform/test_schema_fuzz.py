"""Fuzz every operation of the served OpenAPI schema: no 5xx, and every response must match what
the schema says (status code, content type, body). New endpoints are picked up automatically."""

import pytest
import schemathesis
from django.core import signals
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from access import services as access_services
from access.models import Scope
from config.wsgi import application

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

# Loaded from the running application itself, so the schema under test is the one served.
schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)


@pytest.fixture
def all_scopes_key(db) -> str:
    # As Django's test client does: the WSGI calls share the test's transaction, so the
    # end-of-request hook must not close the connection under it.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield access_services.create_api_key(name="fuzz", scopes=list(Scope.values)).plaintext
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)
@pytest.mark.django_db
def test_every_operation_honours_its_schema(case, all_scopes_key):
    case.call_and_validate(headers={"Authorization": f"Api-Key {all_scopes_key}"}, checks=CHECKS)
