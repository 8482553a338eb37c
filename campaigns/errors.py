"""Refusals of the campaigns app, each with a code clients can branch on."""

from config.errors import Conflict, NotFound, Refused


class SegmentNotFound(NotFound):
    reason = "SEGMENT_NOT_FOUND"


class CampaignNotFound(NotFound):
    reason = "CAMPAIGN_NOT_FOUND"


class VariantNotFound(NotFound):
    reason = "VARIANT_NOT_FOUND"


class CouponRuleNotFound(NotFound):
    reason = "COUPON_RULE_NOT_FOUND"


class InvalidTransition(Conflict):
    """The action does not apply to the campaign's current status (launching twice, say)."""

    reason = "INVALID_STATUS"


class ResultsStillCounting(Conflict):
    """A sent campaign whose attribution window is open and whose live results name no winner yet:
    its next iteration would not know which variant to put first."""

    reason = "RESULTS_STILL_COUNTING"


class NoPilot(Refused):
    reason = "NO_PILOT"


class NoWinner(Refused):
    reason = "NO_SIGNIFICANT_WINNER"


class ChannelNotConfigured(Refused):
    reason = "CHANNEL_NOT_CONFIGURED"


class EmptyAudience(Refused):
    reason = "EMPTY_AUDIENCE"


class NoRecipient(Refused):
    reason = "NO_RECIPIENT"


class InvalidConfiguration(Refused):
    """A draft that can no longer work as configured; `fields` names each problem."""

    reason = "INVALID_CONFIGURATION"


class SampleRatioMismatch(Refused):
    """The groups' sizes are off their configured shares: the assignment, not the variants, may
    explain the difference, so nothing is rolled out."""

    reason = "SAMPLE_RATIO_MISMATCH"


class ConfirmationRequired(Refused):
    """A roll-out the always-valid results do not support: repeat it with `confirm` to accept the
    named risk (the audit row keeps it)."""

    reason = "CONFIRMATION_REQUIRED"
