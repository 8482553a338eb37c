"""A journey is a campaign with steps. Each person of its audience has a run that walks the steps:
send a message (a delivery of phase `step:<id>`, so the campaigns' unique key keeps it to one per
person and step, whatever retries or crashes happen), wait a duration, wait for an event (with a
timeout), or branch on an event, a tag, a trait or the variant the person entered with. The
campaign's goal event ends a person's run at once and cancels what was still to send to them.

At launch the audience is split as a single send's would be (the campaigns' assignment): the
holdout, assigned but never entering, and the campaign's variants by weight, the arms of the
journey's test. A send step names a variant, or none to send each person the variant of their
arm (an A/B test of that message); a branch on the variant gives each arm its own path. The
journey's results are the campaigns' results of these groups.
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from campaigns.models import Campaign, Variant
from profiles.models import Profile


class Journey(Campaign):
    """The campaign seen as its steps (the admin's journey page)."""

    class Meta:
        proxy = True
        verbose_name = _("journey")


class StepKind(models.TextChoices):
    SEND = "send", _("Send a variant")
    WAIT = "wait", _("Wait a duration")
    WAIT_EVENT = "wait_event", _("Wait for an event (with a timeout)")
    BRANCH = "branch", _("Branch")


class BranchOn(models.TextChoices):
    EVENT = "event", _("The person did an event since entering the journey")
    TAG = "tag", _("The person has a tag")
    TRAIT = "trait", _("A trait compared with a value")
    VARIANT = "variant", _("The person entered with this variant (their arm)")


class TraitOperator(models.TextChoices):
    EQUALS = "eq", _("equals")
    NOT_EQUALS = "ne", _("does not equal")
    GREATER = "gt", _("is greater than")
    GREATER_OR_EQUAL = "gte", _("is greater than or equal to")
    LESS = "lt", _("is less than")
    LESS_OR_EQUAL = "lte", _("is less than or equal to")
    IN = "in", _("is one of (comma-separated)")
    CONTAINS = "contains", _("contains")
    EXISTS = "exists", _("exists")
    MISSING = "missing", _("is missing")


class JourneyStep(models.Model):
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="journey_steps")
    position = models.PositiveSmallIntegerField()
    kind = models.CharField(max_length=16, choices=StepKind.choices)
    variant = models.ForeignKey(
        Variant,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text=_("Send: what to send (none: each person's own variant, their arm); branch on the variant: which"),
    )
    wait_minutes = models.PositiveIntegerField(default=0, help_text=_("Wait: how long; wait for an event: the timeout"))
    event = models.CharField(max_length=64, blank=True, default="", help_text=_("Wait for / branch on this event"))
    branch_on = models.CharField(max_length=8, choices=BranchOn.choices, blank=True, default="")
    tag = models.CharField(max_length=100, blank=True, default="")
    trait = models.CharField(max_length=64, blank=True, default="")
    trait_operator = models.CharField(max_length=8, choices=TraitOperator.choices, blank=True, default="")
    trait_value = models.CharField(max_length=200, blank=True, default="")
    goto = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        help_text=_(
            "Branch: the step to go to when the condition holds; wait for an event: when it times out. "
            "Otherwise the next step. Past the last step: the journey ends."
        ),
    )

    class Meta:
        ordering = ["campaign", "position"]
        constraints = [models.UniqueConstraint(fields=["campaign", "position"], name="journeystep_position_once")]

    def __str__(self) -> str:
        return f"{self.position}. {self.get_kind_display()}"

    @property
    def phase(self) -> str:
        return f"step:{self.pk}"


class RunStatus(models.TextChoices):
    ACTIVE = "active", _("In the journey")
    COMPLETED = "completed", _("Walked every step")
    EXITED = "exited", _("Left on the goal event")
    MERGED = "merged", _("Merged into the run of the profile it merged into")


class JourneyRun(models.Model):
    """One person's walk through a journey; locked while it advances (one worker at a time)."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="journey_runs")
    profile = models.ForeignKey(Profile, on_delete=models.CASCADE, related_name="+")
    user_id = models.CharField(max_length=128)
    variant = models.ForeignKey(
        Variant,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text=_("The arm the person was assigned at entry"),
    )
    position = models.PositiveSmallIntegerField(default=0, help_text=_("The step it is at"))
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.ACTIVE)
    step_started_at = models.DateTimeField(default=timezone.now)
    wake_at = models.DateTimeField(null=True, blank=True, help_text=_("When it is looked at next"))
    entered_at = models.DateTimeField(default=timezone.now)
    ended_at = models.DateTimeField(null=True, blank=True)
    failures = models.PositiveIntegerField(
        default=0, help_text=_("Advances in a row that failed; 0 once it moves again")
    )
    last_error = models.TextField(blank=True, default="", help_text=_("Why the last advance failed"))
    failed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["campaign", "profile"], name="journeyrun_once")]
        indexes = [
            models.Index(fields=["wake_at"], name="journeyrun_due", condition=models.Q(status="active")),
            models.Index(fields=["campaign", "user_id"], name="journeyrun_user"),
            # The journey page and the health page look for failing runs on every load.
            models.Index(
                fields=["campaign", "failed_at"],
                name="journeyrun_failing",
                condition=models.Q(status="active") & ~models.Q(last_error=""),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.campaign_id}:{self.user_id}@{self.position}"


class StepVisit(models.Model):
    """A run reached a step (once, however often a branch loops back): the step's count."""

    run = models.ForeignKey(JourneyRun, on_delete=models.CASCADE, related_name="visits")
    step = models.ForeignKey(JourneyStep, on_delete=models.CASCADE, related_name="visits")
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "step"], name="stepvisit_once")]

    def __str__(self) -> str:
        return f"{self.run_id}@{self.step_id}"
