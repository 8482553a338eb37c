"""Refusals of the coupons domain. Each has a stable `reason` code clients can branch on:
409 for a conflict with the current state (limits, exhaustion, already used), 422 for a request
the rules refuse, 404 for an unknown object."""

from __future__ import annotations

from config.errors import Busy, Conflict, NotFound, Refused


class CouponError(Refused):
    """Base of every refusal raised by `coupons.services`."""


class RuleNotFound(NotFound):
    reason = "RULE_NOT_FOUND"


class CouponNotFound(NotFound):
    reason = "COUPON_NOT_FOUND"


class RedemptionNotFound(NotFound):
    reason = "REDEMPTION_NOT_FOUND"


class JobNotFound(NotFound):
    reason = "JOB_NOT_FOUND"


class BatchNotFound(NotFound):
    reason = "BATCH_NOT_FOUND"


class UserNotFound(NotFound):
    reason = "USER_NOT_FOUND"


class RefundNotFound(NotFound):
    reason = "REFUND_NOT_FOUND"


# 409: the rule's or the coupon's current state stands in the way.
class BudgetExhausted(Conflict, CouponError):
    reason = "BUDGET_EXHAUSTED"


class QuantityExhausted(Conflict, CouponError):
    reason = "QUANTITY_EXHAUSTED"


class Paced(Conflict, CouponError):
    """The rule spreads its budget over its days and today's allowance is taken."""

    reason = "PACED"


class PerUserLimitReached(Conflict, CouponError):
    reason = "PER_USER_LIMIT_REACHED"


class CouponAlreadyUsed(Conflict, CouponError):
    reason = "COUPON_ALREADY_USED"


class NotStackable(Conflict, CouponError):
    """The order already carries an offer this one does not combine with."""

    reason = "NOT_STACKABLE"


class FloorReached(Conflict, CouponError):
    """The offers the order already carries take it down to its floor."""

    reason = "FLOOR_REACHED"


class RequestIdReused(Conflict, CouponError):
    reason = "REQUEST_ID_REUSED"


class InvalidStateChange(Conflict, CouponError):
    reason = "INVALID_STATE_CHANGE"


class NotFailed(Conflict, CouponError):
    """Retry asked of a job or batch that has not failed."""

    reason = "NOT_FAILED"


class RefundAlreadyApplied(Conflict, CouponError):
    """Retry asked of an order refund that is applied: it is applied once per event."""

    reason = "ALREADY_APPLIED"


class RefundInProgress(Conflict, CouponError):
    """Retry asked of an order refund a worker is applying at this very moment."""

    reason = "IN_PROGRESS"


# 422: the rules refuse this request.
class RuleNotActive(CouponError):
    reason = "RULE_NOT_ACTIVE"


class RuleNotStarted(CouponError):
    reason = "RULE_NOT_STARTED"


class RuleExpired(CouponError):
    reason = "RULE_EXPIRED"


class NotEligible(CouponError):
    reason = "NOT_ELIGIBLE"


class TierNotEligible(NotEligible):
    reason = "TIER_NOT_ELIGIBLE"


class TagNotEligible(NotEligible):
    reason = "TAG_NOT_ELIGIBLE"


class NotFirstOrder(NotEligible):
    reason = "NOT_FIRST_ORDER"


class AbuseSuspected(CouponError):
    """The person's promotion-abuse score reaches the rule's threshold (see the admin's review list)."""

    reason = "ABUSE_SUSPECTED"


class CouponNotYours(CouponError):
    reason = "COUPON_NOT_YOURS"


class CouponNotYetValid(CouponError):
    reason = "COUPON_NOT_YET_VALID"


class CouponExpired(CouponError):
    reason = "COUPON_EXPIRED"


class CouponRevoked(CouponError):
    reason = "COUPON_REVOKED"


class MinSpendNotMet(CouponError):
    reason = "MIN_SPEND_NOT_MET"


class NoSegmentResolver(CouponError):
    reason = "SEGMENT_UNAVAILABLE"


class OrderRolledBack(Conflict, CouponError):
    reason = "ORDER_ROLLED_BACK"


class InvalidAmount(CouponError):
    reason = "INVALID_AMOUNT"


class RuleBusy(Busy, CouponError):
    reason = "BUSY"
