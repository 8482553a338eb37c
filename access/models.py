"""API keys for product servers and automation, and the audit trail of operator actions."""

from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.utils.translation import gettext_lazy as _


class Scope(models.TextChoices):
    EVENTS_WRITE = "events:write", _("Write events and receipts")
    PROFILES_READ = "profiles:read", _("Read profiles")
    COUPONS_REDEEM = "coupons:redeem", _("Claim, validate and redeem coupons")
    MANAGE = "manage", _("Manage rules, segments and campaigns")


# The Django permission a staff member needs to use an endpoint of that scope with a session.
SCOPE_PERMISSIONS = {
    Scope.EVENTS_WRITE: "access.scope_events_write",
    Scope.PROFILES_READ: "access.scope_profiles_read",
    Scope.COUPONS_REDEEM: "access.scope_coupons_redeem",
    Scope.MANAGE: "access.scope_manage",
}


class ApiKey(models.Model):
    """A key held by a product server or a script. Only a SHA-256 digest of the secret is kept:
    the key is random (256 bits), so a slow password hash would add latency and no safety."""

    name = models.CharField(max_length=100, unique=True)
    prefix = models.CharField(max_length=12, unique=True, editable=False)
    digest = models.CharField(max_length=64, editable=False)
    scopes = ArrayField(models.CharField(max_length=32, choices=Scope.choices), default=list)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = _("API key")
        ordering = ["name"]
        permissions = [
            ("scope_events_write", "May call event and receipt endpoints"),
            ("scope_profiles_read", "May call profile endpoints"),
            ("scope_coupons_redeem", "May call coupon claim/validate/redeem endpoints"),
            ("scope_manage", "May call management endpoints"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(scopes__contained_by=[s.value for s in Scope]),
                name="apikey_scopes_known",
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class AuditEntry(models.Model):
    """Who did what to which object, for every action that changes money, audiences or messages.
    Written by services through `access.services.record_audit`; never edited."""

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    action = models.CharField(max_length=64, db_index=True)
    object_type = models.CharField(max_length=64, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        verbose_name_plural = _("audit entries")
        ordering = ["-at"]
        indexes = [models.Index(fields=["object_type", "object_id"])]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.action} {self.object_type}:{self.object_id}"


class StaffLanguage(models.Model):
    """The admin language a staff member chose with the switch in the header: applied at each of
    their logins, on any device, before the browser's own preference."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True, related_name="staff_language"
    )
    language = models.CharField(max_length=16, choices=settings.LANGUAGES)
    chosen_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.user_id}: {self.language}"
