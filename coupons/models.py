"""Coupons: rules (what must hold and what they give), the coupons issued under them, their
redemptions by orders, and the jobs that issue or generate them in bulk.

Money invariant, enforced by the database and not only by Python: for a rule with a budget,
`committed + spent <= budget` at every moment. `committed` is the most the live, unredeemed
coupons can still cost (each coupon holds its `reserved` amount), `spent` the discounts given.
The counters live on the rule row so a claim is one conditional UPDATE; the ledger can always be
re-derived from coupons and redemptions (see `selectors.ledger_from_rows`).
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import ValidationError
from django.db import connection, models
from django.db.models import F, Q
from django.db.models.functions import Now
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy

from profiles.models import Profile

MONEY = {"max_digits": 14, "decimal_places": 2}
ZERO = Decimal("0.00")
MAX_VALID_DAYS = 3650
DEFAULT_ABUSE_THRESHOLD = Decimal("0.600")


class RuleKind(models.TextChoices):
    FIXED = "fixed", _("Fixed amount off")
    PERCENT = "percent", _("Percent off (capped)")
    THRESHOLD = "threshold", _("Amount off an order of at least")


class RuleState(models.TextChoices):
    DRAFT = "draft", _("Draft")
    # A context of its own: the customers' "Active" (crm) is another word in Chinese.
    ACTIVE = "active", pgettext_lazy("coupon rule state", "Active")
    PAUSED = "paused", _("Paused")
    ENDED = "ended", _("Ended")


class Pacing(models.TextChoices):
    NONE = "none", _("None: the budget may go on the first day")
    EVEN = "even", _("Even: the same share each day")
    FRONT = "front", _("Front-loaded: more on the first days, falling linearly")


class Stacking(models.TextChoices):
    EXCLUSIVE = "exclusive", _("Exclusive: alone on an order")
    STACKABLE = "stackable", _("Stackable with other stackable offers")
    GROUP = "group", _("Stackable within its group only")


class CouponRule(models.Model):
    """An offer. Condition (window, minimum spend, eligibility) and benefit (kind, value, cap)
    are separate columns; the counters below are maintained by `coupons.services` only."""

    name = models.CharField(max_length=200)
    description = models.TextField(blank=True, default="")
    # Benefit
    kind = models.CharField(max_length=16, choices=RuleKind.choices)
    value = models.DecimalField(**MONEY, help_text=_("Amount off, or percent off for percent rules"))
    max_discount = models.DecimalField(
        **MONEY, null=True, blank=True, help_text=_("Cap of a percent discount; required when the rule has a budget")
    )
    # Condition
    min_spend = models.DecimalField(**MONEY, default=ZERO, blank=True, help_text=_("Smallest order amount"))
    valid_from = models.DateTimeField(null=True, blank=True)
    valid_until = models.DateTimeField(null=True, blank=True)
    valid_days = models.PositiveIntegerField(null=True, blank=True, help_text=_("Coupons expire N days after issue"))
    first_order_only = models.BooleanField(default=False, help_text=_("Only for users who never paid an order"))
    eligible_tiers = ArrayField(
        models.SlugField(max_length=50), default=list, blank=True, help_text=_("Value tier slugs; empty: every tier")
    )
    eligible_tags = ArrayField(
        models.SlugField(max_length=100), default=list, blank=True, help_text=_("Tag names (any of them); empty: all")
    )
    # Limits
    total_quantity = models.PositiveIntegerField(null=True, blank=True, help_text=_("Most coupons ever issued"))
    per_user_limit = models.PositiveIntegerField(default=1)
    budget = models.DecimalField(**MONEY, null=True, blank=True, help_text=_("Most money the rule may ever cost"))
    state = models.CharField(max_length=16, choices=RuleState.choices, default=RuleState.ACTIVE, db_index=True)
    abuse_threshold = models.DecimalField(
        max_digits=4,
        decimal_places=3,
        null=True,
        blank=True,
        default=DEFAULT_ABUSE_THRESHOLD,
        db_default=DEFAULT_ABUSE_THRESHOLD,
        help_text=_("People whose promotion-abuse score is at least this are refused (ABUSE_SUSPECTED); empty: nobody"),
    )
    # Spreads the budget over the days from valid_from to valid_until (`coupons_paced_share`)
    pacing = models.CharField(
        max_length=8,
        choices=Pacing.choices,
        default=Pacing.NONE,
        db_default=Pacing.NONE,
        blank=True,
        help_text=_("Claims beyond the day's allowance are refused (PACED); what a day leaves rolls over"),
    )
    # Several codes on one order (coupons.stacking)
    priority = models.SmallIntegerField(
        default=0, db_default=0, blank=True, help_text=_("Higher applies first when several codes meet")
    )
    stacking = models.CharField(
        max_length=16, choices=Stacking.choices, default=Stacking.EXCLUSIVE, db_default=Stacking.EXCLUSIVE, blank=True
    )
    stack_group = models.SlugField(
        max_length=50, blank=True, default="", db_default="", help_text=_("For stacking 'group'")
    )
    floor_percent = models.DecimalField(
        max_digits=5,
        decimal_places=2,
        default=ZERO,
        db_default=ZERO,
        blank=True,
        help_text=_("No combination with this offer takes an order below this percent of its value"),
    )
    # Counters (services only)
    issued_count = models.PositiveIntegerField(default=0, editable=False)
    redeemed_count = models.PositiveIntegerField(default=0, editable=False)
    committed = models.DecimalField(**MONEY, default=ZERO, editable=False)
    spent = models.DecimalField(**MONEY, default=ZERO, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(condition=Q(value__gt=0), name="couponrule_value_positive"),
            models.CheckConstraint(
                condition=~Q(kind=RuleKind.PERCENT) | Q(value__lte=100), name="couponrule_percent_at_most_100"
            ),
            models.CheckConstraint(
                condition=Q(max_discount__isnull=True) | Q(max_discount__gt=0), name="couponrule_cap_positive"
            ),
            models.CheckConstraint(
                condition=Q(budget__isnull=True) | ~Q(kind=RuleKind.PERCENT) | Q(max_discount__isnull=False),
                name="couponrule_budgeted_percent_has_cap",
            ),
            models.CheckConstraint(
                condition=Q(valid_from__isnull=True) | Q(valid_until__isnull=True) | Q(valid_until__gt=F("valid_from")),
                name="couponrule_window_ordered",
            ),
            models.CheckConstraint(condition=Q(committed__gte=0) & Q(spent__gte=0), name="couponrule_counters_gte_0"),
            models.CheckConstraint(
                condition=Q(floor_percent__gte=0) & Q(floor_percent__lt=100), name="couponrule_floor_percent_range"
            ),
            models.CheckConstraint(
                condition=~Q(stacking=Stacking.GROUP) | ~Q(stack_group=""), name="couponrule_group_named"
            ),
            models.CheckConstraint(
                condition=Q(pacing=Pacing.NONE)
                | (Q(budget__isnull=False) & Q(valid_from__isnull=False) & Q(valid_until__isnull=False)),
                name="couponrule_paced_has_budget_and_dates",
            ),
            models.CheckConstraint(
                condition=Q(budget__isnull=True) | Q(budget__gte=F("committed") + F("spent")),
                name="couponrule_within_budget",
            ),
            models.CheckConstraint(
                condition=Q(total_quantity__isnull=True) | Q(issued_count__lte=F("total_quantity")),
                name="couponrule_within_quantity",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        """The rules of a well-formed offer; the API serializer and the admin form both run it."""
        errors: dict[str, str] = {}
        # A form that left the stacking settings empty means the defaults (one code alone, no floor).
        self.priority = 0 if self.priority is None else self.priority
        self.stacking = self.stacking or Stacking.EXCLUSIVE
        self.floor_percent = ZERO if self.floor_percent is None else self.floor_percent
        self.pacing = self.pacing or Pacing.NONE
        if self.pacing != Pacing.NONE and (self.budget is None or not self.valid_from or not self.valid_until):
            errors["pacing"] = (
                "Pacing spreads a budget over the rule's dates: it needs budget, valid_from and valid_until."
            )
        value, cap, min_spend = self.value, self.max_discount, self.min_spend or ZERO
        if value is not None and value <= 0:
            errors["value"] = "Must be greater than zero."
        elif value is not None and self.kind == RuleKind.PERCENT and value > 100:
            errors["value"] = "A percent discount cannot be over 100."
        if cap is not None and self.kind != RuleKind.PERCENT:
            errors["max_discount"] = "Only percent rules take a cap (max_discount)."
        if self.kind == RuleKind.PERCENT and self.budget is not None and cap is None:
            errors["max_discount"] = (
                "A percent rule with a budget needs max_discount: without a cap one coupon could cost any amount."
            )
        if self.kind == RuleKind.THRESHOLD:
            if min_spend <= 0:
                errors["min_spend"] = "A threshold rule needs the order amount it applies from (min_spend > 0)."
            elif value is not None and value > min_spend:
                errors["value"] = "The amount off cannot exceed the threshold (min_spend)."
        if min_spend < 0:
            errors["min_spend"] = "Cannot be negative."
        if self.valid_from and self.valid_until and self.valid_until <= self.valid_from:
            errors["valid_until"] = "The window must end after it starts (valid_until > valid_from)."
        if self.valid_days is not None and not 1 <= self.valid_days <= MAX_VALID_DAYS:
            errors["valid_days"] = f"Between 1 and {MAX_VALID_DAYS} days."
        if self.floor_percent is not None and not ZERO <= self.floor_percent < 100:
            errors["floor_percent"] = "Between 0 and 100 (exclusive)."
        if self.stacking == Stacking.GROUP and not self.stack_group:
            errors["stack_group"] = "A rule stackable within a group needs the group's name."
        if self.abuse_threshold is not None and not 0 < self.abuse_threshold <= 1:
            errors["abuse_threshold"] = "Between 0 and 1 (leave empty to admit everyone)."
        if self.per_user_limit is not None and self.per_user_limit < 1:
            errors["per_user_limit"] = "At least 1."
        if self.total_quantity is not None and self.total_quantity < 1:
            errors["total_quantity"] = "At least 1 (leave empty for no limit)."
        if self.budget is not None:
            if self.budget <= 0:
                errors["budget"] = "Must be greater than zero (leave empty for no budget)."
            elif (
                value is not None
                and "value" not in errors
                and "max_discount" not in errors
                and self.budget < self.reserve_per_coupon()
            ):
                errors["budget"] = "Smaller than what one coupon may cost: no coupon could ever be issued."
            if self.pk and "budget" not in errors and self.budget < self.committed + self.spent:
                errors["budget"] = f"Below what is already committed and spent ({self.committed + self.spent})."
        if errors:
            raise ValidationError(errors)

    def reserve_per_coupon(self) -> Decimal:
        """The most one coupon of this rule can cost: what issuing it commits. The rule is the
        database's `coupons_reserve_per_coupon` (migration 0005), which every reserve applies;
        asked here for these field values (saved or not) rather than restated."""
        with connection.cursor() as cursor:
            cursor.execute("SELECT coupons_reserve_per_coupon(%s, %s, %s)", [self.kind, self.value, self.max_discount])
            return cursor.fetchone()[0]

    @property
    def remaining(self) -> Decimal | None:
        return None if self.budget is None else self.budget - self.committed - self.spent


class CouponStatus(models.TextChoices):
    AVAILABLE = "available", _("Available")
    REDEEMED = "redeemed", _("Redeemed")
    EXPIRED = "expired", _("Expired")
    REVOKED = "revoked", _("Revoked")


# Who may see partner bearer codes whole and export them (the admin and the API alike).
BEARER_CODES_PERMISSION = "coupons.export_codebatch"


class CodeBatch(models.Model):
    """Bearer codes generated in bulk for a partner (no holder until used), exported as CSV."""

    class Status(models.TextChoices):
        PENDING = "pending", _("Pending")
        RUNNING = "running", _("Running")
        DONE = "done", _("Done")
        FAILED = "failed", _("Failed")

    rule = models.ForeignKey(CouponRule, on_delete=models.PROTECT, related_name="code_batches")
    partner = models.CharField(max_length=200, blank=True, default="")
    quantity = models.PositiveIntegerField()
    generated = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # The rule's quantity and budget taken for the whole batch, committed before any code is
    # written (so the rule's row is not held while millions of codes are), with what each code holds
    # and its validity; cleared when a failed run gives the reservation back.
    reserved_at = models.DateTimeField(null=True, blank=True, editable=False)
    reserved_per_code = models.DecimalField(**MONEY, null=True, blank=True, editable=False)
    codes_start_at = models.DateTimeField(null=True, blank=True, editable=False)
    codes_expire_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = _("code batches")
        constraints = [models.CheckConstraint(condition=Q(quantity__gt=0), name="codebatch_quantity_positive")]
        # Bearer codes are money anyone holding them can spend: seeing them whole and exporting
        # them is a permission of its own (Operations), not part of viewing the lists.
        permissions = [("export_codebatch", "May see and export partner bearer codes")]

    def __str__(self) -> str:
        return f"{self.quantity} codes of {self.rule} for {self.partner or '-'}"


class IssuanceJob(models.Model):
    """Issue one coupon of a rule to each profile of a list of user ids or of a segment."""

    class Status(models.TextChoices):
        PENDING = "pending", _("Pending")
        RUNNING = "running", _("Running")
        DONE = "done", _("Done")
        FAILED = "failed", _("Failed")

    rule = models.ForeignKey(CouponRule, on_delete=models.PROTECT, related_name="issuance_jobs")
    user_ids = ArrayField(models.CharField(max_length=128), default=list, blank=True)
    segment_id = models.PositiveBigIntegerField(null=True, blank=True)  # a segment id is a bigint
    source_ref = models.CharField(max_length=200, blank=True, default="")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True)
    total = models.PositiveIntegerField(default=0)
    processed = models.PositiveIntegerField(default=0)
    issued = models.PositiveIntegerField(default=0)
    refused = models.PositiveIntegerField(default=0)
    refusals = models.JSONField(default=dict, blank=True, help_text=_("Count of refused targets by reason"))
    error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"issuance #{self.pk} of {self.rule}"

    @property
    def progress(self) -> float:
        return 1.0 if not self.total else round(self.processed / self.total, 4)


class IssuanceTarget(models.Model):
    """One profile of a job. `(job, profile)` is unique, and the coupon is written in the same
    transaction as the outcome, so a job resumed after a crash never issues twice."""

    class Outcome(models.TextChoices):
        PENDING = "pending", _("Pending")
        ISSUED = "issued", _("Issued")
        REFUSED = "refused", _("Refused")

    job = models.ForeignKey(IssuanceJob, on_delete=models.CASCADE, related_name="targets")
    profile = models.ForeignKey(Profile, on_delete=models.CASCADE, related_name="+")
    outcome = models.CharField(max_length=16, choices=Outcome.choices, default=Outcome.PENDING)
    reason = models.CharField(max_length=64, blank=True, default="")
    coupon = models.OneToOneField("Coupon", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["job", "profile"], name="issuancetarget_job_profile")]
        indexes = [
            models.Index(fields=["job", "id"], name="issuancetarget_pending", condition=Q(outcome="pending")),
        ]

    def __str__(self) -> str:
        return f"{self.job_id}:{self.profile_id} {self.outcome}"


class Coupon(models.Model):
    """One code. A coupon with a `profile` belongs to that person; one without (a partner's bearer
    code) may be used by anyone. `reserved` is what it holds of the rule's `committed` while live."""

    code = models.CharField(max_length=32, unique=True)
    rule = models.ForeignKey(CouponRule, on_delete=models.PROTECT, related_name="coupons")
    profile = models.ForeignKey(Profile, null=True, blank=True, on_delete=models.PROTECT, related_name="coupons")
    status = models.CharField(max_length=16, choices=CouponStatus.choices, default=CouponStatus.AVAILABLE)
    reserved = models.DecimalField(**MONEY, default=ZERO)
    issued_at = models.DateTimeField(default=timezone.now)
    starts_at = models.DateTimeField()
    expires_at = models.DateTimeField(null=True, blank=True)
    expired_at = models.DateTimeField(null=True, blank=True)
    source = models.CharField(max_length=32, default="api", help_text=_("api, admin, bulk, campaign, partner ..."))
    source_ref = models.CharField(max_length=200, blank=True, default="", help_text=_("e.g. campaign:12:variant:3"))
    request_id = models.CharField(max_length=128, null=True, blank=True)
    batch = models.ForeignKey(CodeBatch, null=True, blank=True, on_delete=models.PROTECT, related_name="coupons")

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["rule", "request_id"], name="coupon_rule_request_id", condition=Q(request_id__isnull=False)
            ),
            models.CheckConstraint(condition=Q(reserved__gte=0), name="coupon_reserved_gte_0"),
        ]
        indexes = [
            models.Index(fields=["profile", "status"], name="coupon_profile_status"),
            models.Index(fields=["rule", "status"], name="coupon_rule_status"),
            models.Index(fields=["expires_at"], name="coupon_live_expiry", condition=Q(status="available")),
            models.Index(fields=["source_ref"], name="coupon_source_ref"),
        ]

    def __str__(self) -> str:
        # A bearer code shows whole only where the coupon admin marked the rows of a viewer who may
        # see them (its titles and breadcrumbs print the object); anywhere else (a related field,
        # a log line) masked.
        if self.profile_id is None and not getattr(self, "viewer_sees_bearer_codes", False):
            from coupons.codes import mask_code

            return mask_code(self.display_code)
        return self.display_code

    @property
    def display_code(self) -> str:
        from coupons.codes import display

        return display(self.code)


class RuleHolding(models.Model):
    """How many coupons of a rule a profile was given: the per-user limit is one conditional
    upsert on this row, so two parallel claims of the same person cannot both pass."""

    rule = models.ForeignKey(CouponRule, on_delete=models.CASCADE, related_name="+")
    profile = models.ForeignKey(Profile, on_delete=models.CASCADE, related_name="+")
    issued = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["rule", "profile"], name="ruleholding_rule_profile")]

    def __str__(self) -> str:
        return f"{self.rule_id}:{self.profile_id} x{self.issued}"


class Redemption(models.Model):
    """A coupon used by an order. A rolled-back redemption keeps its row (with `rolled_back_at`):
    the history stays, and only one live redemption per coupon is allowed by the database."""

    coupon = models.ForeignKey(Coupon, on_delete=models.PROTECT, related_name="redemptions")
    rule = models.ForeignKey(CouponRule, on_delete=models.PROTECT, related_name="redemptions")
    profile = models.ForeignKey(Profile, null=True, on_delete=models.PROTECT, related_name="+")
    user_id = models.CharField(max_length=128)
    order_id = models.CharField(max_length=128)
    order_amount = models.DecimalField(**MONEY)
    discount = models.DecimalField(**MONEY)
    redeemed_at = models.DateTimeField(default=timezone.now)
    rolled_back_at = models.DateTimeField(null=True, blank=True)
    coupon_returned = models.BooleanField(null=True, blank=True, help_text=_("Whether rollback gave the coupon back"))
    refunded_amount = models.DecimalField(
        **MONEY,
        default=ZERO,
        db_default=ZERO,
        help_text=_("Partly refunded: counted revenue is order_amount - refunded_amount"),
    )

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["coupon"], name="redemption_one_live_per_coupon", condition=Q(rolled_back_at__isnull=True)
            ),
            models.CheckConstraint(condition=Q(order_amount__gt=0), name="redemption_amount_positive"),
            models.CheckConstraint(
                condition=Q(discount__gte=0) & Q(discount__lte=F("order_amount")), name="redemption_discount_bounded"
            ),
            models.CheckConstraint(
                condition=Q(refunded_amount__gte=0) & Q(refunded_amount__lte=F("order_amount")),
                name="redemption_refund_bounded",
            ),
        ]
        indexes = [
            models.Index(fields=["order_id"], name="redemption_order"),
            models.Index(fields=["rule", "redeemed_at"], name="redemption_rule_time"),
        ]

    def __str__(self) -> str:
        return f"{self.coupon_id} for order {self.order_id}"

    @property
    def final_amount(self) -> Decimal:
        return self.order_amount - self.discount


class OrderRefund(models.Model):
    """An `order_refunded` event of an order that used coupons, applied once per event. Ingestion
    only records it (`pending`), so the rule and redemption rows it moves are never held for the
    length of an ingestion batch; a background step applies it (`coupons.services.apply_refund`):
    a full refund rolled the redemptions back, a partial one lowered their counted revenue. One
    that raises is `failed` with the reason, and is applied again by the beat's sweep (with
    back-off) or by an operator's retry."""

    class Status(models.TextChoices):
        PENDING = "pending", _("Pending")
        APPLIED = "applied", _("Applied")
        FAILED = "failed", _("Failed")

    class Outcome(models.TextChoices):
        ROLLED_BACK = "rolled_back", _("Rolled back (full refund)")
        PARTIAL = "partial", _("Revenue reduced (partial refund)")

    event_id = models.CharField(max_length=128, unique=True)
    order_id = models.CharField(max_length=128, db_index=True)
    amount = models.DecimalField(
        **MONEY, null=True, blank=True, help_text=_("Refunded amount, at most the order's; empty: the whole order")
    )
    # The database's defaults serve a process of the former version still running while the
    # schema is migrated (a rolling upgrade): it writes a refund it has just applied, naming only
    # the former columns, and the row reads as what it is, applied.
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.PENDING, db_default=Status.APPLIED.value
    )
    outcome = models.CharField(max_length=16, choices=Outcome.choices, null=True, blank=True)
    error = models.TextField(blank=True, default="", db_default="", help_text=_("Why the last attempt failed"))
    attempts = models.PositiveIntegerField(default=0, db_default=0)
    created_at = models.DateTimeField(default=timezone.now, db_default=Now())
    applied_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            # An outcome and its time exactly when applied: a list of applied refunds never shows
            # one without what it did, nor a pending one with it.
            models.CheckConstraint(
                condition=(Q(status="applied") & Q(outcome__isnull=False) & Q(applied_at__isnull=False))
                | (~Q(status="applied") & Q(outcome__isnull=True) & Q(applied_at__isnull=True)),
                name="orderrefund_applied_has_outcome",
            ),
        ]
        indexes = [
            # What is left to apply (the sweep, the health page, the admin's filter): few rows of many.
            models.Index(fields=["status", "id"], name="orderrefund_unapplied", condition=~Q(status="applied")),
        ]

    def __str__(self) -> str:
        return f"refund of {self.order_id} ({self.outcome or self.status})"


class AbuseScore(models.Model):
    """How much a person looks like someone who only comes for the discount, from 0 to 1, with the
    evidence behind it (`coupons.services.refresh_abuse_scores`). Rules refuse people at or over
    their `abuse_threshold` unless an operator cleared them; a clearance holds until the score
    rises above what it was when cleared."""

    profile = models.OneToOneField(Profile, on_delete=models.CASCADE, related_name="+")
    score = models.DecimalField(max_digits=4, decimal_places=3)
    evidence = models.JSONField(default=dict, help_text=_("Each signal with its raw count and its part of the score"))
    computed_at = models.DateTimeField(default=timezone.now)
    cleared_at = models.DateTimeField(null=True, blank=True)
    cleared_score = models.DecimalField(max_digits=4, decimal_places=3, null=True, blank=True)
    cleared_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-score", "id"]
        constraints = [
            models.CheckConstraint(condition=Q(score__gte=0) & Q(score__lte=1), name="abusescore_score_range"),
        ]
        indexes = [models.Index(fields=["score"], name="abusescore_score")]

    def __str__(self) -> str:
        return f"{self.profile_id}: {self.score}"

    @property
    def cleared(self) -> bool:
        return self.cleared_at is not None and self.cleared_score is not None and self.score <= self.cleared_score


class UpliftModel(models.Model):
    """The last uplift fit of a rule (`coupons.services.fit_rule_uplift`): what it learned from,
    and its out-of-fold evidence (Qini curve, uplift by decile), or why it failed."""

    class Status(models.TextChoices):
        RUNNING = "running", _("Running")
        DONE = "done", _("Done")
        FAILED = "failed", _("Failed")

    rule = models.OneToOneField(CouponRule, on_delete=models.CASCADE, related_name="uplift_model")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    trained_on = models.PositiveIntegerField(default=0, help_text=_("Campaign members (treated and held out)"))
    scored = models.PositiveIntegerField(default=0, help_text=_("People given an uplift"))
    evidence = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True, default="")
    fitted_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"uplift of {self.rule} ({self.status})"


class UpliftScore(models.Model):
    """A person's predicted uplift (margin the rule's coupon adds) for one rule; the segment
    condition "top N % by predicted uplift for rule R" reads it."""

    rule = models.ForeignKey(CouponRule, on_delete=models.CASCADE, related_name="+")
    profile = models.ForeignKey(Profile, on_delete=models.CASCADE, related_name="+", db_constraint=False)
    uplift = models.FloatField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["rule", "profile"], name="upliftscore_rule_profile")]
        indexes = [models.Index(fields=["rule", "-uplift"], name="upliftscore_rule_rank")]

    def __str__(self) -> str:
        return f"{self.rule_id}:{self.profile_id} {self.uplift:+.2f}"
