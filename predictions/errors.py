"""Error codes of the predictions domain."""

from config.errors import Conflict, NotFound


class RunNotFound(NotFound):
    reason = "RUN_NOT_FOUND"


class RunNotFailed(Conflict):
    """Retry asked of a prediction run that has not failed."""

    reason = "NOT_FAILED"
