"""API plumbing shared by every app: who is asking, ids from bodies and paths, pagination, the
error bodies of the schema, the health check and the schema's auth scheme."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import redis
from django.conf import settings
from django.db import connection
from django.db.models import Model, QuerySet
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import serializers
from rest_framework.exceptions import ParseError, ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.parsers import JSONParser

from config.errors import NotFound

# Our ids are PostgreSQL bigints (BigAutoField); anything outside names no row and, written to a
# column or compared in raw SQL, overflows.
MIN_ID, MAX_ID = 1, 2**63 - 1
_DIGITS = re.compile(r"[0-9]{1,19}")
# Query parameters that are counts (page, sample, days...) stay far below this.
MAX_QUERY_INT = 2**31 - 1

# --- the actor -------------------------------------------------------------------------------


def request_actor(request: Any) -> dict[str, Any]:
    """Who made an authenticated request, as services record it: `created_by` the staff user of a
    session, `api_key` the key of a machine client; exactly one of them is set."""
    # A key's request carries it on its user (`access.authentication.ApiKeyUser`): read there, so
    # that this platform module needs nothing of `access`, which builds on it.
    api_key = getattr(request.user, "api_key", None)
    if api_key is not None:
        return {"created_by": None, "api_key": api_key}
    return {"created_by": request.user, "api_key": None}


# --- ids ---------------------------------------------------------------------------------------


class IdField(serializers.IntegerField):
    """The id of one of our rows in a request body: an integer from 1 to 2^63-1, and, given
    `exists` (a queryset, or a callable for a model of a higher app), one that names a row.
    Either refusal is a 400 naming the field, as DRF names every field it refuses."""

    default_error_messages = {
        "min_value": "An id is a whole number from 1 to 9223372036854775807.",
        "max_value": "An id is a whole number from 1 to 9223372036854775807.",
        "does_not_exist": "No {what} {value}.",
    }

    def __init__(
        self,
        *,
        exists: QuerySet | Callable[[int], bool] | None = None,
        what: str = "object",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("min_value", MIN_ID)
        kwargs.setdefault("max_value", MAX_ID)
        self.exists = exists
        self.what = what
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool):  # JSON true is not the id 1
            self.fail("invalid")
        value = super().to_internal_value(data)
        # Before the look-up, which the validators would otherwise follow.
        if value < MIN_ID:
            self.fail("min_value")
        if value > MAX_ID:
            self.fail("max_value")
        if self.exists is not None and not _row_exists(self.exists, value):
            self.fail("does_not_exist", what=self.what, value=value)
        return value


def _row_exists(exists: QuerySet | Callable[[int], bool], value: int) -> bool:
    if isinstance(exists, QuerySet):
        return exists.filter(pk=value).exists()
    return bool(exists(value))


def id_from_path(value: str | int, not_found: type[NotFound], what: str) -> int:
    """An id taken from a URL path (routed as text, `<str:...>`): anything but 1 to 2^63-1 in ASCII
    digits is answered as an unknown object, the JSON 404 that `not_found` gives, rather than
    leaving Django's router to answer in HTML or the database to overflow."""
    text = str(value)
    if _DIGITS.fullmatch(text) and MIN_ID <= int(text) <= MAX_ID:
        return int(text)
    raise not_found(f"No {what} {text[:40]!r}.")


def object_or_404(queryset: QuerySet, value: str | int, not_found: type[NotFound], what: str) -> Model:
    """The row a URL path names, or the app's JSON 404."""
    pk = id_from_path(value, not_found, what)
    row = queryset.filter(pk=pk).first()
    if row is None:
        raise not_found(f"No {what} {pk}.")
    return row


def query_int(request: Any, name: str, *, minimum: int = 0, maximum: int = MAX_QUERY_INT) -> int | None:
    """An integer query parameter (`?year=2026`), None when absent; anything else a 400 naming it."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if not re.fullmatch(r"-?[0-9]{1,19}", raw) or not minimum <= int(raw) <= maximum:
        raise ValidationError({name: [f"A whole number from {minimum} to {maximum}."]})
    return int(raw)


# --- bodies ------------------------------------------------------------------------------------


class JsonParser(JSONParser):
    """DRF's JSON parser, but a body nested deeper than Python recurses (`[[[[...`) is a 400 like
    any other malformed JSON instead of a RecursionError."""

    def parse(self, stream, media_type=None, parser_context=None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply") from None


# --- pagination --------------------------------------------------------------------------------


class Pagination(PageNumberPagination):
    """`?page=` and `?page_size=` (at most 500): a page number or size that is not a positive whole
    number is a 400 naming the parameter; a page past the last is a 404, as DRF answers it."""

    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500

    def get_page_number(self, request, paginator) -> int | str:
        raw = request.query_params.get(self.page_query_param)
        if raw is None or raw == "" or raw in self.last_page_strings:
            return super().get_page_number(request, paginator)
        if not re.fullmatch(r"[0-9]{1,10}", raw) or not 1 <= int(raw) <= MAX_QUERY_INT:
            reason = f"A page number: a whole number from 1 to {MAX_QUERY_INT}."
            raise ValidationError({self.page_query_param: [reason]})
        return int(raw)

    def get_page_size(self, request) -> int:
        raw = request.query_params.get(self.page_size_query_param)
        if raw is not None and raw != "" and (not re.fullmatch(r"[0-9]{1,10}", raw) or int(raw) < 1):
            raise ValidationError(
                {self.page_size_query_param: [f"A page size: a whole number from 1 (at most {self.max_page_size})."]}
            )
        return super().get_page_size(request)


# --- error bodies in the schema ----------------------------------------------------------------

_BARE_OBJECT = {"type": "object", "additionalProperties": {}}
ERROR_COMPONENTS: dict[str, dict[str, Any]] = {
    "FieldErrors": {
        "type": "object",
        "description": "Each offending field (or query parameter, or `non_field_errors`) with its reasons, "
        'e.g. `{"segment": ["No segment 42."]}`; a body that is not JSON: `{"detail": ...}`.',
        "additionalProperties": {},
    },
    "Error": {
        "type": "object",
        "description": "`detail` says what happened; a refusal by the business rules adds a machine-readable "
        "`reason` (e.g. `CAMPAIGN_NOT_FOUND`, `BUDGET_EXHAUSTED`) and may add fields of its own.",
        "properties": {"detail": {"type": "string"}, "reason": {"type": "string"}},
        "required": ["detail"],
        "additionalProperties": {},
    },
}
_DEFAULT_ERRORS = {
    "400": "Invalid input: the offending fields or parameters and why.",
    "401": "No valid API key or session.",
    "403": "The key lacks the scope, or the staff member the permission.",
    "404": "Unknown object, or no such page.",
}


def document_errors(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: every operation documents the errors its shape allows
    (401/403 for all, being authenticated; 400 with parameters or a body; 404 with a path id or a
    page), and error bodies declared as a bare object refer to the two shared shapes above."""
    result.setdefault("components", {}).setdefault("schemas", {}).update(ERROR_COMPONENTS)
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            places = {parameter.get("in") for parameter in operation.get("parameters", [])}
            needed = {"401", "403"}
            if "query" in places or "requestBody" in operation:
                needed.add("400")
            if "path" in places or any(p.get("name") == "page" for p in operation.get("parameters", [])):
                needed.add("404")
            responses = operation["responses"]
            for code in sorted(needed - set(responses)):
                responses[code] = {"description": _DEFAULT_ERRORS[code], "content": {"application/json": {}}}
            for code, response in responses.items():
                if not str(code).startswith("4"):
                    continue
                media = response.setdefault("content", {}).setdefault("application/json", {})
                if media.get("schema") in (None, _BARE_OBJECT):
                    name = "FieldErrors" if str(code) == "400" else "Error"
                    media["schema"] = {"$ref": f"#/components/schemas/{name}"}
    return result


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "access.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Api-Key <key>`; keys come from the admin or `manage.py create_api_key`.",
        }


def _check_database() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # the point is to report any failure, whatever its kind
        return f"error: {exc.__class__.__name__}"
    return "ok"


def _check_redis() -> str:
    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
        client.ping()
    except Exception as exc:  # as above
        return f"error: {exc.__class__.__name__}"
    return "ok"


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness and readiness for load balancers: 200 when the database and Redis answer, else 503."""
    checks = {"database": _check_database(), "redis": _check_redis()}
    healthy = all(value == "ok" for value in checks.values())
    return JsonResponse({"status": "ok" if healthy else "degraded", **checks}, status=200 if healthy else 503)
