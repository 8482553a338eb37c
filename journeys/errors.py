"""Refusals of journeys, each with a code clients can branch on."""

from config.errors import Conflict, NotFound, Refused


class CampaignNotFound(NotFound):
    reason = "CAMPAIGN_NOT_FOUND"


class InvalidSteps(Refused):
    """Steps that cannot run; `fields` names each problem by step."""

    reason = "INVALID_STEPS"


class InvalidConfiguration(Refused):
    """A journey that cannot work as configured (the campaigns' launch checks, a schedule other
    than at launch); `fields` names each problem."""

    reason = "INVALID_CONFIGURATION"


class NotADraft(Conflict):
    reason = "INVALID_STATUS"


class NotRunning(Conflict):
    """Runs move only while their journey runs: a paused or ended journey's are not retried."""

    reason = "INVALID_STATUS"
