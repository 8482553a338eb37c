"""Error codes of the customer-value domain."""

from config.errors import Conflict, NotFound, Refused


class NoActiveScheme(Refused):
    reason = "NO_ACTIVE_SCHEME"


class RecomputeRunning(Conflict):
    reason = "RECOMPUTE_RUNNING"


class CapacityExceeded(Conflict):
    reason = "CAPACITY_EXCEEDED"


class ManagerInactive(Refused):
    reason = "MANAGER_INACTIVE"


class ProfileWithoutValue(NotFound):
    reason = "PROFILE_WITHOUT_VALUE"


class RunNotFound(NotFound):
    reason = "RUN_NOT_FOUND"


class RunNotFailed(Conflict):
    """Retry asked of a recompute run that has not failed."""

    reason = "NOT_FAILED"
