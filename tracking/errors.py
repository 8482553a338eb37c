"""Refusals of the tracking layer. A whole batch refused is a 400 with the offending field; a single
event refused is reported in the 200 reply beside the events that were stored."""

from __future__ import annotations

from rest_framework.exceptions import ParseError

from config.errors import NotFound


class BodyTooLarge(ParseError):
    default_code = "body_too_large"


# --- indicators ----------------------------------------------------------------------------------
# DomainError subclasses: the API answers them {"reason", "detail"} with their status.


class IndicatorNotFound(NotFound):
    reason = "UNKNOWN_INDICATOR"


class FunnelNotFound(NotFound):
    reason = "UNKNOWN_FUNNEL"
