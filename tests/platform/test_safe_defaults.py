"""Safe defaults: the WSGI application and the Celery app run with the production settings unless
the environment names others, and an API client never sees Django's debug page: an unexpected
exception answers a JSON 500 whose error id is in the log."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
from django.http import HttpRequest
from django.urls import path
from rest_framework.decorators import api_view, permission_classes
from rest_framework.permissions import AllowAny

from access.api import WhoAmIView
from tests.conftest import ROOT
from tests.platform.test_deploy_check import PRODUCTION


def _boom_view(request: HttpRequest):
    raise RuntimeError("secret-local-value in a plain view")


@api_view(["GET"])
@permission_classes([AllowAny])
def _boom_api(request):
    raise RuntimeError("secret-local-value in an API view")


urlpatterns = [path("api/boom", _boom_view), path("api/boom-drf", _boom_api), path("page/boom", _boom_view)]


def _settings_module_of(import_line: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSLOOP_") and k != "DJANGO_SETTINGS_MODULE"}
    env.update(PRODUCTION)
    result = subprocess.run(
        [sys.executable, "-c", f"{import_line}\nfrom django.conf import settings\nprint(settings.SETTINGS_MODULE)"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


# The Celery app names its default itself, before its loader sets Django up.
@pytest.mark.parametrize("import_line", ["import config.wsgi", "import config.celery\nimport django; django.setup()"])
def test_servers_default_to_production_settings(import_line):
    assert _settings_module_of(import_line) == "config.settings.production"


def test_manage_py_still_chooses_development():
    assert 'setdefault("DJANGO_SETTINGS_MODULE", "config.settings.development")' in (ROOT / "manage.py").read_text()


@pytest.mark.django_db
def test_a_failing_api_view_answers_json_with_a_logged_error_id(staff_client, settings, monkeypatch, caplog):
    settings.DEBUG = True  # as development runs: the debug page must still not reach an API client

    def fail(self, request):
        raise RuntimeError("secret-local-value")

    monkeypatch.setattr(WhoAmIView, "get", fail)
    client = staff_client("Analyst")
    client.raise_request_exception = False
    with caplog.at_level(logging.ERROR):
        response = client.get("/api/v1/auth/whoami")
    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body["reason"] == "INTERNAL_ERROR"
    assert "secret-local-value" not in response.content.decode()
    logged = [r for r in caplog.records if body["error_id"] in r.getMessage()]
    assert logged and logged[0].exc_info is not None


@pytest.mark.django_db
@pytest.mark.urls("tests.platform.test_safe_defaults")
@pytest.mark.parametrize("url", ["/api/boom", "/api/boom-drf"])
def test_a_failing_view_outside_drf_answers_json_too(client, settings, caplog, url):
    settings.DEBUG = True
    client.raise_request_exception = False
    with caplog.at_level(logging.ERROR):
        response = client.get(url, HTTP_ACCEPT="text/html,application/json")
    assert response.status_code == 500
    body = response.json()
    assert "secret-local-value" not in response.content.decode()
    assert any(body["error_id"] in r.getMessage() for r in caplog.records)


@pytest.mark.django_db
@pytest.mark.urls("tests.platform.test_safe_defaults")
def test_a_browser_page_keeps_django_error_handling(client, settings):
    client.raise_request_exception = False
    response = client.get("/page/boom", HTTP_ACCEPT="text/html")
    assert response.status_code == 500
    assert response["Content-Type"].startswith("text/html")
