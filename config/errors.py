"""Domain errors and the one place that turns them into HTTP responses.

Every app raises subclasses of `DomainError` from its `errors.py`; the API answers each the same
way: `{"reason": CODE, "detail": text, ...extra}` with the error's status (404, 409 or 422).
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
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


def exception_handler(exc: Exception, context: dict) -> Response | None:
    # Imported here: rest_framework.views loads the authentication classes, which import us.
    from rest_framework.views import exception_handler as drf_exception_handler

    if isinstance(exc, DomainError):
        return Response(exc.as_dict(), status=exc.status_code)
    if isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        exc = exceptions.ValidationError(detail)
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or None)
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    response = drf_exception_handler(exc, context)
    if response is None:
        logger.exception("unhandled API error", exc_info=exc)
    return response
