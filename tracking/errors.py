"""Refusals of the tracking layer. A whole batch refused is a 400 with the offending field; a single
event refused is reported in the 200 reply beside the events that were stored."""

from __future__ import annotations

from rest_framework.exceptions import ParseError

from config.errors import Conflict, NotFound, Refused


class BodyTooLarge(ParseError):
    default_code = "body_too_large"


# --- indicators ----------------------------------------------------------------------------------
# DomainError subclasses: the API answers them {"reason", "detail"} with their status.


class IndicatorNotFound(NotFound):
    reason = "UNKNOWN_INDICATOR"


class FunnelNotFound(NotFound):
    reason = "UNKNOWN_FUNNEL"


# --- goals --------------------------------------------------------------------------------------
class GoalNotFound(NotFound):
    reason = "GOAL_NOT_FOUND"


class GoalExists(Conflict):
    """One goal per indicator and period: set the existing one again instead."""

    reason = "GOAL_EXISTS"


class NoHistory(Refused):
    """'Shaped like last year' needs last year's actuals of the indicator, and there are none."""

    reason = "NO_HISTORY"


class IndicatorUnavailable(Conflict):
    """The goal's indicator is no longer registered (its app was removed), so no progress can be read."""

    reason = "INDICATOR_UNAVAILABLE"
