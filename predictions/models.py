"""Predictive portraits: each customer's expected purchases and value (BG/NBD and Gamma-Gamma),
probability of being alive, churn risk, and the predicted-value tier derived from them."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from profiles.models import Profile

MONEY = {"max_digits": 14, "decimal_places": 2}


class PredictionSettings(models.Model):
    """What the nightly run predicts over and when it tags. Exactly one row is used: the first
    (created with the defaults by the data migration)."""

    horizon_days = models.PositiveIntegerField(
        default=90,
        validators=[MinValueValidator(7), MaxValueValidator(365)],
        help_text=_("Churn means no order within this many days; the holdout for calibration is as long."),
    )
    churn_threshold = models.PositiveSmallIntegerField(
        default=70,
        validators=[MinValueValidator(1), MaxValueValidator(100)],
        help_text=_("Customers whose churn risk (0-100) reaches this carry the churn tag."),
    )
    churn_tag = models.SlugField(
        max_length=100, default="churn-risk-high", help_text=_("Tag given at the threshold (tag-gain triggers react).")
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = _("prediction settings")
        verbose_name_plural = _("prediction settings")

    def __str__(self) -> str:
        return gettext("Horizon %(days)s days, churn tag at %(threshold)s") % {
            "days": self.horizon_days,
            "threshold": self.churn_threshold,
        }


class PredictedTier(models.Model):
    """A tier of predicted value, beside the RFM tiers: a customer gets the highest-ranked tier
    whose conditions all hold (an empty condition always holds). Percentiles are among the
    customers scored by the run: 95 means the top 5 %."""

    slug = models.SlugField(max_length=50, unique=True)
    name = models.CharField(max_length=100)
    rank = models.PositiveSmallIntegerField(default=0, help_text=_("Higher is checked first"))
    min_value_percentile = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        validators=[MaxValueValidator(100)],
        help_text=_("Predicted 365-day value at or above this percentile."),
    )
    min_past_value_percentile = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        validators=[MaxValueValidator(100)],
        help_text=_("Spend so far at or above this percentile."),
    )
    max_p_alive = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0), MaxValueValidator(1)],
        help_text=_("Probability alive at most this (0-1)."),
    )
    min_churn_risk = models.PositiveSmallIntegerField(
        null=True, blank=True, validators=[MaxValueValidator(100)], help_text=_("Churn risk at least this (0-100).")
    )
    description = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-rank", "id"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        from crm.models import ValueTier

        # Coupon rules list RFM and predicted tiers in one field: a slug must say which it is.
        if ValueTier.objects.filter(slug=self.slug).exists():
            raise ValidationError({"slug": "An RFM value tier has this slug; choose another."})
        if all(
            getattr(self, f) is None
            for f in ("min_value_percentile", "min_past_value_percentile", "max_p_alive", "min_churn_risk")
        ):
            raise ValidationError("Give at least one condition: a tier without one would take every customer.")


class RunStatus(models.TextChoices):
    QUEUED = "queued", _("Queued")
    RUNNING = "running", _("Running")
    DONE = "done", _("Done")
    SKIPPED = "skipped", _("Skipped (another run was in progress)")
    FAILED = "failed", _("Failed")


class ModelOutcome(models.TextChoices):
    FITTED = "fitted", _("Fitted")
    NOT_ENOUGH_DATA = "not_enough_data", _("Not enough data")
    NOT_CONVERGED = "not_converged", _("Did not converge (last good model kept)")
    NOT_RUN = "", _("Not run")


class PredictionRun(models.Model):
    """One nightly (or on demand) fit and scoring of every customer. A model that could not be
    fitted leaves its outcome and reason here; the customers then keep the last good model's
    predictions, or none while there never was one."""

    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    requested_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    reference_at = models.DateTimeField(null=True, blank=True)
    horizon_days = models.PositiveIntegerField(null=True, blank=True)
    customers = models.PositiveIntegerField(default=0, help_text=_("Profiles with at least one order"))
    scored = models.PositiveIntegerField(default=0, help_text=_("Profiles whose predictions were written"))
    tier_changes = models.PositiveIntegerField(default=0)
    tagged = models.PositiveIntegerField(default=0, help_text=_("Profiles that gained the churn tag"))
    untagged = models.PositiveIntegerField(default=0, help_text=_("Profiles that lost the churn tag"))
    clv_outcome = models.CharField(max_length=16, choices=ModelOutcome.choices, blank=True, default="")
    clv_reason = models.TextField(blank=True, default="")
    clv_params = models.JSONField(default=dict, blank=True, help_text=_("BG/NBD and Gamma-Gamma parameters"))
    clv_calibration = models.JSONField(
        default=dict, blank=True, help_text=_("Holdout: predicted against actual purchases per frequency bucket")
    )
    churn_outcome = models.CharField(max_length=16, choices=ModelOutcome.choices, blank=True, default="")
    churn_reason = models.TextField(blank=True, default="")
    churn_metrics = models.JSONField(
        default=dict, blank=True, help_text=_("AUC, baseline AUC, calibration per decile, feature importances")
    )
    # The fitted churn model (scikit-learn, pickled by this code only), so that a night whose
    # training fails still scores customers with the last good one.
    churn_model = models.BinaryField(null=True, blank=True, editable=False)
    error = models.TextField(blank=True, default="")
    timings = models.JSONField(default=dict, blank=True, help_text=_("Seconds per step"))

    class Meta:
        ordering = ["-requested_at", "-id"]
        get_latest_by = "requested_at"
        permissions = [("recompute_predictions", "May queue a recompute of every customer's predictions")]

    def __str__(self) -> str:
        return f"Prediction run {self.pk} ({self.status})"

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None


class Prediction(models.Model):
    """One customer's current predictions (rewritten by each run that fitted a model)."""

    # Like crm's CustomerValue: no database-level keys, so a night's upsert of a million rows
    # does not check each against profiles at commit; Django still cascades deletes.
    profile = models.OneToOneField(
        Profile, primary_key=True, on_delete=models.CASCADE, related_name="prediction", db_constraint=False
    )
    purchases_90d = models.FloatField(null=True, blank=True)
    purchases_365d = models.FloatField(null=True, blank=True)
    value_90d = models.DecimalField(**MONEY, null=True, blank=True)
    value_365d = models.DecimalField(**MONEY, null=True, blank=True)
    p_alive = models.FloatField(null=True, blank=True)
    past_value = models.DecimalField(**MONEY, null=True, blank=True, help_text=_("Spend so far"))
    churn_risk = models.PositiveSmallIntegerField(null=True, blank=True, help_text=_("0-100"))
    tier = models.ForeignKey(
        PredictedTier,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,
        db_constraint=False,
    )
    clv_run = models.ForeignKey(
        PredictionRun,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_constraint=False,
        db_index=False,
        help_text=_("The run whose purchase and value models produced these numbers"),
    )
    churn_run = models.ForeignKey(
        PredictionRun,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_constraint=False,
        db_index=False,
        help_text=_("The run whose churn model produced the risk"),
    )
    computed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [
            models.Index(fields=["tier"], name="prediction_tier"),
            models.Index(fields=["churn_risk"], name="prediction_churn_risk"),
        ]

    def __str__(self) -> str:
        return f"{self.profile_id}: value {self.value_365d} / risk {self.churn_risk}"

    @property
    def model_version(self) -> str | None:
        if self.clv_run_id is None and self.churn_run_id is None:
            return None
        return f"clv-{self.clv_run_id or 0}.churn-{self.churn_run_id or 0}"


class PredictionChange(models.Model):
    """One change of a customer's predicted-value tier (the first computation included, from ""),
    so "tier on date d" can be rebuilt as for RFM tiers."""

    profile = models.ForeignKey(
        Profile, on_delete=models.CASCADE, related_name="+", db_constraint=False, db_index=False
    )
    from_value = models.CharField(max_length=50, blank=True, default="")
    to_value = models.CharField(max_length=50, blank=True, default="")
    at = models.DateTimeField(default=timezone.now)
    run = models.ForeignKey(
        PredictionRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_constraint=False
    )

    class Meta:
        indexes = [
            models.Index(fields=["at"], name="predictionchange_at"),
            models.Index(fields=["profile", "at"], name="predictionchange_profile"),
        ]

    def __str__(self) -> str:
        return f"{self.profile_id} tier: {self.from_value or '-'} -> {self.to_value or '-'}"
