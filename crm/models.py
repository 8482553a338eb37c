"""Customer value: RFM scores, operator-defined value tiers and lifecycle stages per profile."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from profiles.models import Profile


class RfmSegment(models.TextChoices):
    """The eight classic segments: each of R, F, M above (or not) the base's mean score."""

    IMPORTANT_VALUE = "important_value", "Important value"  # R high, F high, M high
    IMPORTANT_DEVELOPMENT = "important_development", "Important development"  # R high, F low, M high
    IMPORTANT_RETENTION = "important_retention", "Important retention"  # R low, F high, M high
    IMPORTANT_WINBACK = "important_winback", "Important win-back"  # R low, F low, M high
    GENERAL_VALUE = "general_value", "General value"  # R high, F high, M low
    GENERAL_DEVELOPMENT = "general_development", "General development"  # R high, F low, M low
    GENERAL_RETENTION = "general_retention", "General retention"  # R low, F high, M low
    GENERAL_WINBACK = "general_winback", "General win-back"  # R low, F low, M low


class LifecycleStage(models.TextChoices):
    NEW = "new", "New"
    ACTIVE = "active", "Active"
    SILENT = "silent", "Silent"
    CHURNED = "churned", "Churned"
    REACTIVATED = "reactivated", "Reactivated"


class ValueTier(models.Model):
    """A tier operators name and define (core, important, ordinary, potential ...)."""

    slug = models.SlugField(max_length=50, unique=True)
    name = models.CharField(max_length=100)
    rank = models.PositiveSmallIntegerField(default=0, help_text="Higher is more valuable")

    class Meta:
        ordering = ["-rank"]

    def __str__(self) -> str:
        return self.name


class CustomerValue(models.Model):
    """The current RFM scores, tier and lifecycle stage of one profile (recomputed nightly)."""

    profile = models.OneToOneField(Profile, primary_key=True, on_delete=models.CASCADE, related_name="value")
    recency_days = models.IntegerField(null=True, blank=True)
    frequency = models.IntegerField(null=True, blank=True)
    monetary = models.DecimalField(max_digits=14, decimal_places=2, null=True, blank=True)
    r = models.PositiveSmallIntegerField(null=True, blank=True)
    f = models.PositiveSmallIntegerField(null=True, blank=True)
    m = models.PositiveSmallIntegerField(null=True, blank=True)
    segment = models.CharField(max_length=32, choices=RfmSegment.choices, blank=True, default="")
    tier = models.ForeignKey(ValueTier, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    lifecycle = models.CharField(max_length=16, choices=LifecycleStage.choices, blank=True, default="")
    computed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [
            models.Index(fields=["tier"], name="customervalue_tier"),
            models.Index(fields=["segment"], name="customervalue_segment"),
            models.Index(fields=["lifecycle"], name="customervalue_lifecycle"),
        ]

    def __str__(self) -> str:
        return f"{self.profile_id}: {self.segment or '-'} / {self.lifecycle or '-'}"
