"""Segments, campaigns with their variants, the audience snapshot (assignments) and deliveries.

An assignment is the frozen answer to "who was in the test, and in which group": it is written
once when a send starts, so later profile changes cannot alter the experiment. A delivery is one
message to one person in one phase of a campaign; `(campaign, profile, phase)` is unique, which is
what keeps a crashed or repeated task from messaging anyone twice.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy

from config.outbound import host_allowed
from profiles.models import Profile


class ChannelKind(models.TextChoices):
    PUSH = "push", _("Push")
    SMS = "sms", _("SMS")
    EMAIL = "email", _("E-mail")
    WEBHOOK = "webhook", _("Webhook")


# Where each channel posts when no `Channel` row overrides it.
CHANNEL_URL_SETTINGS = {
    ChannelKind.PUSH: "OPSLOOP_PUSH_GATEWAY_URL",
    ChannelKind.SMS: "OPSLOOP_SMS_GATEWAY_URL",
    ChannelKind.WEBHOOK: "OPSLOOP_WEBHOOK_URL",
}


class Channel(models.Model):
    """How one channel reaches its provider. Kept in the database (not only in settings) so that
    operators can change a gateway in the admin and every worker picks it up at its next batch;
    empty fields fall back to the settings."""

    kind = models.CharField(max_length=16, choices=ChannelKind.choices, unique=True)
    url = models.URLField(blank=True, default="", help_text=_("Empty: the OPSLOOP_*_URL setting"))
    token = models.CharField(max_length=500, blank=True, default="", help_text=_("Empty: OPSLOOP_GATEWAY_TOKEN"))
    timeout_seconds = models.FloatField(default=5.0)
    rate_per_second = models.PositiveIntegerField(default=0, help_text=_("Provider allowance; 0 means no limit"))
    max_attempts = models.PositiveSmallIntegerField(
        default=50, help_text=_("Most real attempts of one message (a safety cap; the retry window usually ends first)")
    )
    retry_window_minutes = models.PositiveIntegerField(
        default=180,
        help_text=_("How long after its first attempt a message is still retried: the longest outage it survives"),
    )
    backoff_base_seconds = models.FloatField(default=2.0)
    backoff_max_seconds = models.FloatField(default=600.0)
    at_most_once = models.BooleanField(
        default=False,
        help_text=_(
            "For providers without idempotency keys: a message whose outcome could not be recorded (its worker died"
            " while posting) is marked 'unknown' for review instead of being sent again"
        ),
    )
    enabled = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        # Where deliveries go, with their recipients' data, and the secret sent along: a permission
        # of its own, held by no role by default (`change_channel` covers the rest of the row).
        permissions = [("set_channel_gateway", "May change a channel's gateway URL and token")]

    def __str__(self) -> str:
        return self.get_kind_display()

    def effective_url(self) -> str:
        setting = CHANNEL_URL_SETTINGS.get(self.kind)
        return self.url or (getattr(settings, setting, "") if setting else "")

    def effective_token(self) -> str:
        return self.token or getattr(settings, "OPSLOOP_GATEWAY_TOKEN", "")


GATEWAY_FIELDS = ("url", "token")


def gateway_host_allowed(url: str) -> bool:
    """Whether the gateway token may be sent to this URL: its host is on
    OPSLOOP_GATEWAY_ALLOWED_HOSTS or is the host of one of the OPSLOOP_*_URL settings."""
    return host_allowed(url, deployment_urls=(getattr(settings, name, "") for name in CHANNEL_URL_SETTINGS.values()))


class Segment(models.Model):
    """A named audience definition (the tree of the API contract), compiled to one SQL query."""

    name = models.CharField(max_length=200)
    definition = models.JSONField()
    description = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class CampaignStatus(models.TextChoices):
    DRAFT = "draft", _("Draft")
    SCHEDULED = "scheduled", _("Scheduled")
    RUNNING = "running", _("Running")
    PAUSED = "paused", _("Paused")
    AWAITING_ROLLOUT = "awaiting_rollout", _("Pilot done, awaiting rollout")
    # Every message is out but its conversions still count until the attribution window closes;
    # a beat task (close_attribution_windows) moves it on to completed.
    SENT = "sent", _("Sent; counting conversions")
    COMPLETED = "completed", _("Completed (attribution window closed)")
    CANCELLED = "cancelled", _("Cancelled")
    FAILED = "failed", _("Failed (see the reason; retry)")


class CampaignPhase(models.TextChoices):
    NONE = "", _("Not started")
    PILOT = "pilot", _("Pilot")
    ROLLOUT = "rollout", _("Rollout")
    FULL = "full", _("Full send")
    RECURRING = "recurring", _("Recurring")
    TRIGGERED = "triggered", _("Triggered")
    JOURNEY = "journey", _("Journey (steps)")


class ScheduleKind(models.TextChoices):
    NOW = "now", _("At launch")
    AT = "at", _("At a time")
    CRON = "cron", _("Recurring (cron)")
    TRIGGER = "trigger", _("Triggered by an event or a tag gain")


class AllocationKind(models.TextChoices):
    FIXED = "fixed", _("Fixed split (the variants' weights)")
    THOMPSON = "thompson", _("Bandit (Thompson sampling on margin net of coupon cost)")


# A tag a campaign can be triggered by: a tag slug, short enough that `tag:<name>` fits a phase.
TRIGGER_TAG_PATTERN = r"^[-a-zA-Z0-9_]{1,64}$"


class Campaign(models.Model):
    """One message to one segment over one channel, tested as variants against a holdout."""

    name = models.CharField(max_length=200)
    segment = models.ForeignKey(Segment, on_delete=models.PROTECT, related_name="campaigns")
    channel = models.CharField(max_length=16, choices=ChannelKind.choices)
    goal_event = models.CharField(max_length=64, default="order_paid")
    attribution_hours = models.PositiveIntegerField(default=72)
    holdout_percent = models.DecimalField(max_digits=5, decimal_places=2, default=10)
    pilot_percent = models.DecimalField(max_digits=5, decimal_places=2, default=0)
    auto_rollout = models.BooleanField(
        default=False, help_text=_("Send the winner to the rest once the pilot's window closes, if significant")
    )
    alpha = models.FloatField(default=0.05)
    min_sample = models.PositiveIntegerField(default=100, help_text=_("Assigned per group before a winner is named"))
    frequency_cap_per_day = models.PositiveSmallIntegerField(default=1)
    respect_quiet_hours = models.BooleanField(default=True)
    quiet_start_hour = models.PositiveSmallIntegerField(default=21)
    quiet_end_hour = models.PositiveSmallIntegerField(default=8)
    schedule_kind = models.CharField(max_length=16, choices=ScheduleKind.choices, default=ScheduleKind.NOW)
    send_at = models.DateTimeField(null=True, blank=True)
    cron = models.CharField(max_length=100, blank=True, default="")
    trigger_event = models.CharField(max_length=64, blank=True, default="")
    trigger_tag = models.CharField(
        max_length=64,
        blank=True,
        default="",
        validators=[RegexValidator(TRIGGER_TAG_PATTERN, "A tag name: 1-64 chars of a-z A-Z 0-9 _ -")],
        help_text=_("Triggered: send when a member gains this tag (instead of an event)"),
    )
    trigger_tag_cursor = models.BigIntegerField(
        default=0, editable=False, help_text=_("The last tag change (profiles_tagchange id) already processed")
    )
    delay_minutes = models.PositiveIntegerField(default=0)
    allocation = models.CharField(
        max_length=16,
        choices=AllocationKind.choices,
        default=AllocationKind.FIXED,
        help_text=_("Recurring and triggered campaigns may let a bandit move newcomers to the better variants"),
    )
    bandit_floor_percent = models.DecimalField(
        max_digits=5,
        decimal_places=2,
        default=5,
        help_text=_("Bandit: the least share of the audience each variant keeps (percent), so each goes on learning"),
    )
    bandit_interval_minutes = models.PositiveIntegerField(
        default=60, help_text=_("Bandit: shares change at most this often")
    )
    margin_percent = models.DecimalField(
        max_digits=5,
        decimal_places=2,
        default=30,
        help_text=_("Bandit: the share of an order's amount that is margin (its reward is margin minus coupon cost)"),
    )
    bandit_seed = models.BigIntegerField(
        null=True, blank=True, help_text=_("Bandit: fixes the random draws (reproducible shares); empty: random")
    )
    allocation_error = models.TextField(
        blank=True, default="", help_text=_("Why the last reallocation failed (the shares before it stay in force)")
    )
    allocation_error_at = models.DateTimeField(null=True, blank=True)
    periodic_task = models.OneToOneField(
        "django_celery_beat.PeriodicTask", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(max_length=20, choices=CampaignStatus.choices, default=CampaignStatus.DRAFT)
    phase = models.CharField(max_length=16, choices=CampaignPhase.choices, blank=True, default="")
    winner = models.ForeignKey("Variant", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="iterations")
    iteration = models.PositiveSmallIntegerField(default=1)
    launched_at = models.DateTimeField(null=True, blank=True)
    pilot_sent_at = models.DateTimeField(null=True, blank=True)
    rolled_out_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(
        null=True, blank=True, help_text=_("When its last message went out: the attribution window opens here")
    )
    completed_at = models.DateTimeField(
        null=True, blank=True, help_text=_("When its attribution window closed and its results became final")
    )
    feedback_applied_at = models.DateTimeField(null=True, blank=True)
    results_snapshot = models.JSONField(
        null=True, blank=True, help_text=_("Results as of the last send, then frozen when the window closes")
    )
    failed_at = models.DateTimeField(null=True, blank=True)
    failure_reason = models.TextField(blank=True, default="", help_text=_("Why its last background step failed"))
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "schedule_kind"], name="campaign_status_kind")]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(holdout_percent__gte=0, pilot_percent__gte=0, holdout_percent__lt=100),
                name="campaign_shares_in_range",
            ),
            models.CheckConstraint(
                condition=models.Q(bandit_floor_percent__gte=0, bandit_interval_minutes__gte=1)
                & models.Q(margin_percent__gte=0, margin_percent__lte=100),
                name="campaign_bandit_in_range",
            ),
        ]
        permissions = [("send_campaign", "May launch, pause, resume and roll out campaigns")]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        from campaigns.validation import configuration_problems  # it imports this module

        # Past its launch a campaign is not configured any more; a later change to its segment
        # must not lock its row in the admin.
        problems = configuration_problems(self) if self.status == CampaignStatus.DRAFT else {}
        if self.schedule_kind == ScheduleKind.AT and not self.send_at:
            problems["send_at"] = "A one-off at a time needs the time."
        if self.schedule_kind == ScheduleKind.TRIGGER:
            if not self.trigger_event and not self.trigger_tag:
                problems["trigger_event"] = "A triggered campaign needs the event name or the tag name."
            elif self.trigger_event and self.trigger_tag:
                problems["trigger_tag"] = "Give the event name or the tag name, not both."
        if self.pilot_percent and self.schedule_kind in (ScheduleKind.CRON, ScheduleKind.TRIGGER):
            problems.setdefault("pilot_percent", "A pilot applies to one-off sends only.")
        if problems:
            raise ValidationError(problems)

    @property
    def lineage_root_id(self) -> int:
        node = self
        while node.parent_id:
            node = node.parent
        return node.pk


class Variant(models.Model):
    """One version of the message. The first (lowest position) is the control among variants."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="variants")
    name = models.CharField(max_length=64)
    position = models.PositiveSmallIntegerField(default=0)
    weight = models.PositiveIntegerField(default=50)
    title = models.CharField(max_length=200, blank=True, default="")
    body = models.TextField(blank=True, default="")
    url = models.URLField(max_length=1000, blank=True, default="")
    # An id rather than a foreign key: coupon rules belong to the layer below, whose tables may
    # be migrated separately; the id is checked when the campaign is created and when issuing.
    coupon_rule_id = models.BigIntegerField(null=True, blank=True)
    # A version from the material library, rendered per person at sending (title, body and url
    # above are then unused); approved ones only at launch.
    material_version = models.ForeignKey(
        "materials.MaterialVersion",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="variants",
        help_text=_("Send this material version (personalised per person) instead of the title and body"),
    )

    class Meta:
        ordering = ["campaign", "position", "id"]
        constraints = [models.UniqueConstraint(fields=["campaign", "name"], name="variant_name_unique")]

    def __str__(self) -> str:
        return f"{self.campaign_id}/{self.name}"

    @property
    def source_ref(self) -> str:
        return f"campaign:{self.campaign_id}:variant:{self.pk}"


class AllocationReason(models.TextChoices):
    LAUNCH = "launch", _("At launch (the weights)")
    THOMPSON = "thompson", _("Thompson sampling")
    BUDGET = "budget", _("A variant's coupon budget ran out")


class Allocation(models.Model):
    """The shares in force for a campaign's newcomers from `valid_from` on (until the next row).

    Each assignment keeps the allocation it was made under, so the sample-ratio check compares
    every group with the counts its shares predicted, however often the bandit moved them."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="allocations")
    shares = models.JSONField(help_text=_("Group key (holdout or a variant id) -> share of newcomers; sums to 1"))
    valid_from = models.DateTimeField(default=timezone.now)
    reason = models.CharField(max_length=16, choices=AllocationReason.choices)
    details = models.JSONField(
        default=dict, blank=True, help_text=_("What the shares were computed from: per variant data, P(best), budgets")
    )

    class Meta:
        ordering = ["campaign", "-valid_from", "-id"]
        indexes = [models.Index(fields=["campaign", "-valid_from"], name="allocation_latest")]

    def __str__(self) -> str:
        return f"{self.campaign_id}@{self.valid_from:%Y-%m-%d %H:%M}"


class AssignmentRole(models.TextChoices):
    HOLDOUT = "holdout", _("Holdout")
    PILOT = "pilot", _("Pilot")
    ROLLOUT = "rollout", _("Rest (rollout)")
    TEST = "test", _("Test (no pilot)")


class Assignment(models.Model):
    """A member of the audience snapshot: which group they are in, decided once."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="assignments")
    profile = models.ForeignKey(Profile, on_delete=models.CASCADE, related_name="+")
    user_id = models.CharField(max_length=128)
    role = models.CharField(max_length=16, choices=AssignmentRole.choices)
    variant = models.ForeignKey(Variant, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    position = models.PositiveIntegerField(help_text=_("Rank in the campaign's hash order"))
    # Without an index: read only per campaign, with the campaign's own rows (the SRM check).
    allocation = models.ForeignKey(
        Allocation, null=True, blank=True, on_delete=models.RESTRICT, related_name="+", db_index=False
    )
    assigned_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["campaign", "profile"], name="assignment_once")]
        indexes = [models.Index(fields=["campaign", "role", "variant"], name="assignment_group")]

    def __str__(self) -> str:
        return f"{self.campaign_id}:{self.user_id}:{self.role}"


class DeliveryStatus(models.TextChoices):
    # A context of its own: "Pending" elsewhere (indicators) is another word in Chinese.
    PENDING = "pending", pgettext_lazy("delivery status", "Pending")
    SENDING = "sending", _("Sending")
    SENT = "sent", _("Sent")
    DELIVERED = "delivered", _("Delivered")
    FAILED = "failed", _("Failed")
    SKIPPED = "skipped", _("Skipped")
    UNKNOWN = "unknown", _("Outcome unknown (review)")


class Delivery(models.Model):
    """One message to one person in one phase of a campaign."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="deliveries")
    variant = models.ForeignKey(Variant, on_delete=models.CASCADE, related_name="deliveries")
    profile = models.ForeignKey(Profile, on_delete=models.CASCADE, related_name="+")
    user_id = models.CharField(max_length=128)
    channel = models.CharField(max_length=16, choices=ChannelKind.choices)
    phase = models.CharField(
        max_length=80, help_text=_("pilot, rollout, full, run:<time>, trigger:<event> or tag:<tag>")
    )
    idempotency_key = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    status = models.CharField(max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    not_before = models.DateTimeField(null=True, blank=True, help_text=_("Quiet hours, a delay or a retry"))
    attempts = models.PositiveSmallIntegerField(default=0, help_text=_("Posts made to the provider"))
    first_attempt_at = models.DateTimeField(null=True, blank=True)
    claimed_at = models.DateTimeField(
        null=True, blank=True, help_text=_("While sending: renewed by the worker's heartbeat (its lease)")
    )
    lease = models.UUIDField(null=True, blank=True, editable=False, help_text=_("The claim of the worker sending it"))
    posting_since = models.DateTimeField(
        null=True, blank=True, help_text=_("Set just before the post, cleared with its outcome: in flight")
    )
    queued_at = models.DateTimeField(null=True, blank=True)
    cap_day = models.DateField(null=True, blank=True, help_text=_("Day counted against the frequency cap"))
    sent_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    opened_at = models.DateTimeField(null=True, blank=True)
    clicked_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    reason = models.CharField(max_length=500, blank=True, default="")
    coupon_code = models.CharField(max_length=64, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = _("deliveries")
        constraints = [
            models.UniqueConstraint(fields=["campaign", "profile", "phase"], name="delivery_once_per_phase"),
        ]
        indexes = [
            models.Index(fields=["campaign", "status"], name="delivery_campaign_status"),
            models.Index(
                fields=["status", "not_before"],
                name="delivery_due",
                condition=models.Q(status__in=["pending", "sending"]),
            ),
            models.Index(fields=["profile", "sent_at"], name="delivery_profile_sent"),
        ]

    def __str__(self) -> str:
        return f"{self.campaign_id}:{self.user_id}:{self.phase}"


class PendingTrigger(models.Model):
    """An event that triggers a campaign, written in the transaction that stores the event (an
    outbox): if the broker is down when it commits, the sweeper finds it later, so no trigger is
    lost and ingestion never fails for the broker."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="+")
    user_id = models.CharField(max_length=128)
    event_id = models.CharField(max_length=64)
    at = models.DateTimeField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["created_at"], name="pendingtrigger_age")]

    def __str__(self) -> str:
        return f"{self.campaign_id}:{self.user_id}:{self.event_id}"


class DailySendCount(models.Model):
    """Messages a person got on one (local) day across all campaigns: the frequency cap's counter,
    incremented with a conditional upsert so racing workers cannot exceed the cap."""

    profile = models.ForeignKey(Profile, on_delete=models.CASCADE, related_name="+")
    day = models.DateField()
    count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["profile", "day"], name="dailysend_once")]

    def __str__(self) -> str:
        return f"{self.profile_id}@{self.day}: {self.count}"
