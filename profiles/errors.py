"""Error codes of the profiles app (see config.errors for how they become HTTP responses)."""

from config.errors import NotFound, Refused


class ProfileNotFound(NotFound):
    reason = "PROFILE_NOT_FOUND"


class RuleNotRunnable(Refused):
    reason = "RULE_NOT_RUNNABLE"
