"""Refusals of the indicators layer: DomainError subclasses, answered `{"reason", "detail"}` with
their status by the API."""

from __future__ import annotations

from config.errors import Conflict, NotFound, Refused


class IndicatorNotFound(NotFound):
    reason = "UNKNOWN_INDICATOR"


class FunnelNotFound(NotFound):
    reason = "UNKNOWN_FUNNEL"


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


class AnomalyCheckNotFound(NotFound):
    reason = "ANOMALY_CHECK_NOT_FOUND"


class AlertNotFound(NotFound):
    reason = "ALERT_NOT_FOUND"


class CheckNotFailed(Conflict):
    """Only a failed check run is retried."""

    reason = "NOT_FAILED"


class AlreadyAcknowledged(Conflict):
    reason = "ALREADY_ACKNOWLEDGED"
