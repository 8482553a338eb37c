"""Customer value: RFM scores, operator-defined value tiers and lifecycle stages per profile."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Subquery
from django.utils import timezone
from django.utils.translation import gettext, pgettext_lazy
from django.utils.translation import gettext_lazy as _

from profiles.models import Profile


def default_window_days() -> int:
    return int(getattr(settings, "OPSLOOP_RFM_WINDOW_DAYS", 365))


class RfmSegment(models.TextChoices):
    """The eight classic segments: each of R, F, M above (or not) the base's mean score."""

    IMPORTANT_VALUE = "important_value", _("Important value")  # R high, F high, M high
    IMPORTANT_DEVELOPMENT = "important_development", _("Important development")  # R high, F low, M high
    IMPORTANT_RETENTION = "important_retention", _("Important retention")  # R low, F high, M high
    IMPORTANT_WINBACK = "important_winback", _("Important win-back")  # R low, F low, M high
    GENERAL_VALUE = "general_value", _("General value")  # R high, F high, M low
    GENERAL_DEVELOPMENT = "general_development", _("General development")  # R high, F low, M low
    GENERAL_RETENTION = "general_retention", _("General retention")  # R low, F high, M low
    GENERAL_WINBACK = "general_winback", _("General win-back")  # R low, F low, M low


class LifecycleStage(models.TextChoices):
    NEW = "new", pgettext_lazy("lifecycle stage", "New")
    ACTIVE = "active", _("Active")
    SILENT = "silent", _("Silent")
    CHURNED = "churned", _("Churned")
    REACTIVATED = "reactivated", _("Reactivated")


class ScoringMethod(models.TextChoices):
    QUINTILES = "quintiles", _("Quintiles of the current customer base")
    THRESHOLDS = "thresholds", _("Operator-set thresholds")


class ScoringScheme(models.Model):
    """How RFM scores and lifecycle stages are computed. Exactly one scheme is active; the nightly
    recompute and the admin's "recompute now" use it."""

    name = models.CharField(max_length=100, unique=True)
    is_active = models.BooleanField(default=False)
    window_days = models.PositiveIntegerField(
        default=default_window_days,
        validators=[MinValueValidator(1), MaxValueValidator(3650)],
        help_text=_("Orders paid within this many days before the reference date count."),
    )
    reference_at = models.DateTimeField(
        null=True, blank=True, help_text=_("Score as of this moment; empty means the time of the recompute.")
    )
    method = models.CharField(max_length=16, choices=ScoringMethod.choices, default=ScoringMethod.QUINTILES)
    # Threshold scoring: four ascending boundaries per score. Recency: days since the last order
    # at most edge 1 scores 5, at most edge 2 scores 4 ... over edge 4 scores 1. Frequency and
    # monetary: at least edge 1 scores 2 ... at least edge 4 scores 5.
    r_thresholds = ArrayField(models.PositiveIntegerField(), size=4, default=list, blank=True)
    f_thresholds = ArrayField(models.PositiveIntegerField(), size=4, default=list, blank=True)
    m_thresholds = ArrayField(models.DecimalField(max_digits=14, decimal_places=2), size=4, default=list, blank=True)
    new_days = models.PositiveIntegerField(default=90, help_text=_("Registered within this many days: new."))
    silent_days = models.PositiveIntegerField(default=30, help_text=_("No activity for this many days: silent."))
    churned_days = models.PositiveIntegerField(default=90, help_text=_("No activity for this many days: churned."))
    reactivated_days = models.PositiveIntegerField(
        default=30, help_text=_("A silent or churned customer who came back stays reactivated this many days.")
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["is_active"], condition=models.Q(is_active=True), name="one_active_scheme"),
            models.CheckConstraint(
                condition=models.Q(silent_days__lt=models.F("churned_days")), name="silent_lt_churned"
            ),
        ]

    def __str__(self) -> str:
        return gettext("%(name)s (active)") % {"name": self.name} if self.is_active else self.name

    def clean(self) -> None:
        errors: dict[str, str] = {}
        if self.silent_days >= self.churned_days:
            errors["churned_days"] = gettext("Churned must take longer than silent.")
        if self.method == ScoringMethod.THRESHOLDS:
            for field in ("r_thresholds", "f_thresholds", "m_thresholds"):
                edges = getattr(self, field) or []
                if len(edges) != 4:
                    errors[field] = gettext("Give four boundaries.")
                elif list(edges) != sorted(edges) or len(set(edges)) != 4:
                    errors[field] = gettext("Boundaries must be strictly ascending.")
        if errors:
            raise ValidationError(errors)


class TierAppliesTo(models.TextChoices):
    CUSTOMERS = "customers", _("Customers with orders in the window")
    WITHOUT_ORDERS = "without_orders", _("Profiles without orders")


class ValueTier(models.Model):
    """A tier operators name and define (core, important, ordinary, potential ...).

    A customer gets the highest-ranked tier whose conditions all hold: a segment among
    `segments` (any if empty) and each score within its range (unbounded if empty). A tier
    without conditions takes every customer not taken by a higher one. Profiles without orders
    get the highest-ranked tier that applies to them."""

    slug = models.SlugField(max_length=50, unique=True)
    name = models.CharField(max_length=100)
    rank = models.PositiveSmallIntegerField(default=0, help_text=_("Higher is more valuable"))
    applies_to = models.CharField(max_length=16, choices=TierAppliesTo.choices, default=TierAppliesTo.CUSTOMERS)
    segments = ArrayField(
        models.CharField(max_length=32, choices=RfmSegment.choices),
        default=list,
        blank=True,
        help_text=_("Any of these segments; empty means any segment."),
    )
    r_min = models.PositiveSmallIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1), MaxValueValidator(5)]
    )
    r_max = models.PositiveSmallIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1), MaxValueValidator(5)]
    )
    f_min = models.PositiveSmallIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1), MaxValueValidator(5)]
    )
    f_max = models.PositiveSmallIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1), MaxValueValidator(5)]
    )
    m_min = models.PositiveSmallIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1), MaxValueValidator(5)]
    )
    m_max = models.PositiveSmallIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1), MaxValueValidator(5)]
    )
    gets_account_manager = models.BooleanField(
        default=False, help_text=_("Customers entering this tier are assigned an account manager.")
    )
    description = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-rank"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        errors = {}
        for score in ("r", "f", "m"):
            low, high = getattr(self, f"{score}_min"), getattr(self, f"{score}_max")
            if low is not None and high is not None and low > high:
                errors[f"{score}_max"] = gettext("Must not be below the minimum.")
        if self.applies_to == TierAppliesTo.WITHOUT_ORDERS and (
            self.segments or any(getattr(self, f"{s}_{b}") is not None for s in "rfm" for b in ("min", "max"))
        ):
            errors["applies_to"] = gettext("Profiles without orders have no segment or scores to match.")
        if errors:
            raise ValidationError(errors)


class AccountManager(models.Model):
    """A staff member who looks after top-tier customers; `capacity` caps how many."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="account_manager",
        limit_choices_to={"is_staff": True},
    )
    capacity = models.PositiveIntegerField(default=200)
    is_active = models.BooleanField(default=True, help_text=_("Inactive managers get no new customers."))
    phone = models.CharField(max_length=32, blank=True, default="", help_text=_("Where customer service routes calls"))
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["user__username"]

    def __str__(self) -> str:
        return self.user.get_full_name() or self.user.get_username()


class CustomerValueQuerySet(models.QuerySet):
    def with_recency(self) -> CustomerValueQuerySet:
        """Rows with `recency_days` read in the same query (see `CustomerValue.recency_days`)."""
        return self.annotate(recency_days=DaysBetween(Subquery(latest_reference()), models.F("last_order_at")))


class DaysBetween(models.Func):
    """Whole days from the second moment to the first, rounded down (as the recompute ranks them)."""

    arg_joiner = " - "
    template = "floor(extract(epoch FROM (%(expressions)s)) / 86400)::int"
    output_field = models.IntegerField()


def latest_reference() -> models.QuerySet:
    """The reference date of the latest finished recompute: the moment the stored scores were
    computed against (one value, as a subquery)."""
    return (
        RecomputeRun.objects.filter(status=RecomputeRun.Status.DONE)
        .order_by("-finished_at", "-pk")
        .values("reference_at")[:1]
    )


class CustomerValue(models.Model):
    """The current RFM scores, tier and lifecycle stage of one profile (recomputed nightly).

    Recency is not stored: it is whole days from `last_order_at` to the latest recompute's
    reference date, so a night that only moves the reference date rewrites nothing."""

    # No database-level foreign keys to profiles and tiers: PostgreSQL checks each written row at
    # commit, a key-share lock on every profile on the first night. Django still cascades deletes
    # (and empties the tier of a deleted one); the recompute drops rows of profiles gone or merged.
    profile = models.OneToOneField(
        Profile, primary_key=True, on_delete=models.CASCADE, related_name="value", db_constraint=False
    )
    frequency = models.IntegerField(null=True, blank=True)
    monetary = models.DecimalField(max_digits=14, decimal_places=2, null=True, blank=True)
    r = models.PositiveSmallIntegerField(null=True, blank=True)
    f = models.PositiveSmallIntegerField(null=True, blank=True)
    m = models.PositiveSmallIntegerField(null=True, blank=True)
    segment = models.CharField(max_length=32, choices=RfmSegment.choices, blank=True, default="")
    # Indexed by `customervalue_tier` below; a second, automatic FK index would only slow writes.
    tier = models.ForeignKey(
        ValueTier,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,
        db_constraint=False,
    )
    lifecycle = models.CharField(max_length=16, choices=LifecycleStage.choices, blank=True, default="")
    lifecycle_since = models.DateTimeField(null=True, blank=True)
    last_order_at = models.DateTimeField(null=True, blank=True)
    last_active_at = models.DateTimeField(null=True, blank=True)
    # Indexed by `customervalue_manager` below, only where set: most profiles have no manager.
    account_manager = models.ForeignKey(
        AccountManager, null=True, blank=True, on_delete=models.SET_NULL, related_name="customers", db_index=False
    )
    computed_at = models.DateTimeField(default=timezone.now, help_text=_("When these values last changed"))

    objects = CustomerValueQuerySet.as_manager()

    class Meta:
        indexes = [
            models.Index(fields=["tier"], name="customervalue_tier"),
            models.Index(fields=["segment"], name="customervalue_segment"),
            models.Index(fields=["lifecycle"], name="customervalue_lifecycle"),
            models.Index(
                fields=["account_manager"],
                name="customervalue_manager",
                condition=models.Q(account_manager__isnull=False),
            ),
        ]
        permissions = [
            ("recompute_values", "May queue a recompute of every profile's value"),
            ("reassign_account_manager", "May give customers to another account manager"),
        ]

    def __str__(self) -> str:
        return f"{self.profile_id}: {self.segment or '-'} / {self.lifecycle or '-'}"

    @property
    def recency_days(self) -> int | None:
        """Days since the last order as of the latest recompute; read with the row by
        `CustomerValue.objects.with_recency()`, else looked up here."""
        if not hasattr(self, "_recency_days"):
            reference = latest_reference().first()
            if self.last_order_at is None or reference is None or reference["reference_at"] is None:
                self._recency_days = None
            else:
                self._recency_days = (reference["reference_at"] - self.last_order_at) // timedelta(days=1)
        return self._recency_days

    @recency_days.setter
    def recency_days(self, value: int | None) -> None:
        self._recency_days = value

    @property
    def has_orders(self) -> bool:
        return self.frequency is not None and self.frequency > 0

    @property
    def monetary_or_zero(self) -> Decimal:
        return self.monetary or Decimal("0.00")


class ValueChange(models.Model):
    """One change of a profile's tier, lifecycle stage, segment or account manager. The first
    computation of a profile is recorded too (from ""), so "tier on date d" can be rebuilt."""

    class What(models.TextChoices):
        TIER = "tier", _("Tier")
        LIFECYCLE = "lifecycle", _("Lifecycle stage")
        SEGMENT = "segment", _("RFM segment")
        ACCOUNT_MANAGER = "account_manager", _("Account manager")

    # No database-level foreign keys: the recompute appends up to three rows per profile in one
    # statement, and PostgreSQL would check each at commit; Django still cascades deletes. The
    # `valuechange_profile` index leads with the profile: a second index on it alone is not kept.
    profile = models.ForeignKey(
        Profile, on_delete=models.CASCADE, related_name="value_changes", db_constraint=False, db_index=False
    )
    what = models.CharField(max_length=16, choices=What.choices)
    # Tiers are kept by slug and managers by username: history stays readable after renames.
    from_value = models.CharField(max_length=150, blank=True, default="")
    to_value = models.CharField(max_length=150, blank=True, default="")
    at = models.DateTimeField(default=timezone.now)
    run = models.ForeignKey(
        "RecomputeRun",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="recorded_changes",
        db_constraint=False,
    )

    class Meta:
        indexes = [
            models.Index(fields=["what", "at"], name="valuechange_what_at"),
            models.Index(fields=["profile", "what", "at"], name="valuechange_profile"),
        ]

    def __str__(self) -> str:
        return f"{self.profile_id} {self.what}: {self.from_value or '-'} -> {self.to_value or '-'}"


class RecomputeRun(models.Model):
    """One recomputation of every profile's value, nightly or on demand."""

    class Status(models.TextChoices):
        QUEUED = "queued", _("Queued")
        RUNNING = "running", _("Running")
        DONE = "done", _("Done")
        SKIPPED = "skipped", _("Skipped (another run was in progress)")
        FAILED = "failed", _("Failed")

    scheme = models.ForeignKey(ScoringScheme, null=True, blank=True, on_delete=models.SET_NULL, related_name="runs")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    requested_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    reference_at = models.DateTimeField(null=True, blank=True)
    window_days = models.PositiveIntegerField(null=True, blank=True)
    profiles = models.PositiveIntegerField(default=0)
    customers = models.PositiveIntegerField(default=0)
    changes = models.PositiveIntegerField(default=0)
    managers_assigned = models.PositiveIntegerField(default=0)
    unassigned_for_capacity = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True, default="")
    timings = models.JSONField(default=dict, blank=True, help_text=_("Seconds per step of the recompute"))

    class Meta:
        ordering = ["-requested_at"]
        get_latest_by = "requested_at"

    def __str__(self) -> str:
        return f"Recompute {self.pk} ({self.status})"

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None
