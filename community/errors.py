"""Error codes of the community domain."""

from config.errors import Conflict, NotFound, Refused


class AccountNotFound(NotFound):
    reason = "ACCOUNT_NOT_FOUND"


class GroupNotFound(NotFound):
    reason = "GROUP_NOT_FOUND"


class ScoreNotFound(NotFound):
    reason = "SCORE_NOT_FOUND"


class RunNotFound(NotFound):
    reason = "RUN_NOT_FOUND"


class RunNotFailed(Conflict):
    """Retry asked of a score run that has not failed."""

    reason = "NOT_FAILED"


class RunInProgress(Conflict):
    """A score run for that month is already queued or running."""

    reason = "RUN_IN_PROGRESS"


class NotAnOperator(Refused):
    """Only staff users can own accounts and groups."""

    reason = "NOT_STAFF"


class NoWeights(Refused):
    """Every score dimension has weight 0: nothing to score by."""

    reason = "NO_WEIGHTS"
