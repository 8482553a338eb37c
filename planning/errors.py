"""Refusals of the planning domain: DomainError subclasses, answered `{"reason", "detail"}` with
their status by the API."""

from __future__ import annotations

from config.errors import Conflict, NotFound, Refused


class TacticNotFound(NotFound):
    reason = "TACTIC_NOT_FOUND"


class PhaseNotFound(NotFound):
    reason = "PHASE_NOT_FOUND"


class TaskNotFound(NotFound):
    reason = "TASK_NOT_FOUND"


class TeamNotFound(NotFound):
    reason = "TEAM_NOT_FOUND"


class TacticExists(Conflict):
    """A goal's tactics have distinct names."""

    reason = "TACTIC_EXISTS"


class PhaseExists(Conflict):
    reason = "PHASE_EXISTS"


class NoTactics(Refused):
    """Decomposing by the tactics' timing needs at least one tactic."""

    reason = "NO_TACTICS"


class ContributionsExceedTarget(Refused):
    """The tactics' expected contributions add up to more than the goal's target."""

    reason = "CONTRIBUTIONS_EXCEED_TARGET"


class LastMonthUncovered(Refused):
    """A goal read on its last day (MAU) needs a level in its last month: some tactic, or a part of
    the target left to natural growth, must cover it."""

    reason = "LAST_MONTH_UNCOVERED"
