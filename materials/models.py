"""Materials (reusable messages of one channel) and their versions.

A version is what a campaign variant sends. It starts as a draft that its author may still edit;
an Operations lead approves it, and from then on it is frozen: a change is a new version, so a
campaign that sent version 3 keeps telling what it sent. Templates are checked when a version is
saved and again when it is approved (`materials.rendering`), so a refusal names the line.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class MaterialChannel(models.TextChoices):
    # The same values as the campaigns' channels, which sit in the layer above.
    PUSH = "push", _("Push")
    SMS = "sms", _("SMS")
    EMAIL = "email", _("E-mail")
    WEBHOOK = "webhook", _("Webhook")


class Material(models.Model):
    name = models.CharField(max_length=200)
    channel = models.CharField(max_length=16, choices=MaterialChannel.choices)
    tags = ArrayField(
        models.CharField(max_length=64), default=list, blank=True, help_text=_("Free labels to find it by")
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    description = models.TextField(blank=True, default="")
    archived = models.BooleanField(default=False, help_text=_("Hidden from pickers; campaigns that used it keep it"))
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "id"]
        indexes = [GinIndex(fields=["tags"], name="material_tags")]
        permissions = [("approve_material", "May approve a material version for sending")]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_channel_display()})"


class VersionStatus(models.TextChoices):
    DRAFT = "draft", _("Draft")
    APPROVED = "approved", _("Approved")


class MaterialVersion(models.Model):
    """One wording of a material. Fields per channel: push uses title, body and url; SMS body;
    e-mail title (the subject), body (the plain text), html and url; webhook body (a JSON object)."""

    material = models.ForeignKey(Material, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    title = models.CharField(max_length=500, blank=True, default="", help_text=_("Push title or e-mail subject"))
    body = models.TextField(blank=True, default="", help_text=_("Push body, SMS text, e-mail text or webhook JSON"))
    html = models.TextField(blank=True, default="", help_text=_("E-mail HTML (escaped automatically)"))
    url = models.URLField(max_length=1000, blank=True, default="", help_text=_("Where the tracked link leads"))
    defaults = models.JSONField(
        default=dict, blank=True, help_text=_("Variable -> text used when the person has no value for it")
    )
    status = models.CharField(max_length=16, choices=VersionStatus.choices, default=VersionStatus.DRAFT)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    approved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["material", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["material", "number"], name="materialversion_number_once"),
            models.CheckConstraint(
                condition=models.Q(status="draft") | models.Q(approved_at__isnull=False),
                name="materialversion_approved_has_time",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.material.name} v{self.number}"

    @property
    def channel(self) -> str:
        return self.material.channel

    def templates(self) -> dict[str, str]:
        """The fields that are templates on this channel, by name."""
        return {name: getattr(self, name) for name in CHANNEL_FIELDS[self.material.channel]}


# The template fields each channel sends.
CHANNEL_FIELDS: dict[str, tuple[str, ...]] = {
    MaterialChannel.PUSH: ("title", "body"),
    MaterialChannel.SMS: ("body",),
    MaterialChannel.EMAIL: ("title", "body", "html"),
    MaterialChannel.WEBHOOK: ("body",),
}
