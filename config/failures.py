"""How a background step that failed is recorded: a one-line reason on the object, where
operators look (admin, API, health page), and the whole traceback in the log."""

from __future__ import annotations

import logging

REASON_MAX_LENGTH = 2000


def failure_reason(error: BaseException) -> str:
    """`ExceptionClass: message`, short enough for a list column and a JSON field."""
    return f"{error.__class__.__name__}: {error}"[:REASON_MAX_LENGTH]


def log_failure(logger: logging.Logger, what: str, error: BaseException) -> str:
    """Log `what` failed with the traceback of `error`; returns the reason to store."""
    logger.error("%s failed: %s", what, failure_reason(error), exc_info=error)
    return failure_reason(error)
