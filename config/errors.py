"""Domain errors and the one place that turns them into HTTP responses.

Every app raises subclasses of `DomainError` from its `errors.py`; the API answers each the same
way: `{"reason": CODE, "detail": text, ...extra}` with the error's status (404, 409 or 422).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.utils.html import format_html
from django.utils.translation import gettext
from rest_framework import exceptions, status
from rest_framework.response import Response

logger = logging.getLogger(__name__)


class DomainError(Exception):
    """A refusal by the business rules. Subclasses set `status_code` and a default `reason`."""

    status_code: int = status.HTTP_422_UNPROCESSABLE_ENTITY
    reason: str = "REFUSED"

    def __init__(self, detail: str = "", *, reason: str | None = None, **extra: Any) -> None:
        self.reason = reason or self.reason
        self.detail = detail or self.reason.replace("_", " ").capitalize()
        self.extra = extra
        super().__init__(self.detail)

    def as_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "detail": self.detail, **self.extra}


class NotFound(DomainError):
    status_code = status.HTTP_404_NOT_FOUND
    reason = "NOT_FOUND"


class Conflict(DomainError):
    status_code = status.HTTP_409_CONFLICT
    reason = "CONFLICT"


class Refused(DomainError):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    reason = "REFUSED"


class Busy(DomainError):
    """A row the request needs stayed locked longer than it may wait: try again shortly."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    reason = "BUSY"
    retry_after = 1


def exception_handler(exc: Exception, context: dict) -> Response | None:
    # Imported here: rest_framework.views loads the authentication classes, which import us.
    from rest_framework.views import exception_handler as drf_exception_handler
    from rest_framework.views import set_rollback

    if isinstance(exc, DomainError):
        retry_after = getattr(exc, "retry_after", None)
        headers = {"Retry-After": str(retry_after)} if retry_after else None
        return Response(exc.as_dict(), status=exc.status_code, headers=headers)
    if isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        exc = exceptions.ValidationError(detail)
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or None)
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    response = drf_exception_handler(exc, context)
    if response is None:
        set_rollback()
        request = context.get("request")
        body = internal_error(exc, getattr(request, "path", ""))
        return Response(body, status=status.HTTP_500_INTERNAL_SERVER_ERROR)
    return response


def internal_error(exc: BaseException, path: str) -> dict[str, str]:
    """Log an unexpected exception under a fresh error id and return the body that tells the
    client only that id: the traceback stays in the log, where the id finds it."""
    error_id = uuid.uuid4().hex
    logger.error("unhandled error %s on %s", error_id, path, exc_info=exc, extra={"error_id": error_id})
    return {
        "reason": "INTERNAL_ERROR",
        "detail": f"An unexpected error occurred; quote error id {error_id} when reporting it.",
        "error_id": error_id,
    }


def wants_json(request: HttpRequest) -> bool:
    """An API client: a request under /api/ or to /healthz, or one that does not ask for HTML."""
    if request.path.startswith(("/api/", "/healthz")):
        return True
    return "text/html" not in request.headers.get("Accept", "")


class JsonErrorMiddleware:
    """Answers an exception no view handled with the JSON 500 of `internal_error` for API clients,
    in every settings module: even with DEBUG on (development), an API client never receives
    Django's debug page, which shows settings and local variables."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, DomainError) and exception.status_code == status.HTTP_503_SERVICE_UNAVAILABLE:
            return unavailable(request, exception)
        if isinstance(exception, Http404 | PermissionDenied) or not wants_json(request):
            return None  # Django's own 404/403, or the admin's HTML 500 page
        return JsonResponse(internal_error(exception, request.path), status=500)


def unavailable(request: HttpRequest, error: DomainError) -> HttpResponse:
    """A page or API read that a store it needs cannot answer now (a 503 with the reason and a
    Retry-After), not a 500: nothing is wrong with the request, and the operator should see why."""
    logger.warning("%s on %s: %s", error.reason, request.path, error.detail)
    if wants_json(request):
        response: HttpResponse = JsonResponse(error.as_dict(), status=error.status_code)
    else:
        title = gettext("This page cannot be shown right now")
        response = HttpResponse(
            format_html("<!doctype html><title>{}</title><h1>{}</h1><p>{}</p>", title, title, error.detail),
            status=error.status_code,
        )
    retry_after = getattr(error, "retry_after", None)
    if retry_after:
        response["Retry-After"] = str(retry_after)
    return response
