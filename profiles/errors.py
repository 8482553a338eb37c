"""Error codes of the profiles app (see config.errors for how they become HTTP responses)."""

from config.errors import Conflict, NotFound, Refused


class ProfileNotFound(NotFound):
    reason = "PROFILE_NOT_FOUND"


class RuleNotRunnable(Refused):
    reason = "RULE_NOT_RUNNABLE"


class TagRuleNotFound(NotFound):
    reason = "TAG_RULE_NOT_FOUND"


class TagRuleNotFailed(Conflict):
    reason = "NOT_FAILED"
