"""Running the operation by goals: the tactics that serve a goal, the phases with their
priorities, and the tasks each team does in them.

A goal (`indicators.Goal`) says where to get; a tactic says how (which indicators it moves, the
campaigns and coupon rules that serve it, how much of the goal it should bring and from when); a
phase (a month or a quarter) lists the priorities, and its tasks are assigned to a team (a staff
group) and an owner, each with a due date and the indicator it should move.
"""

from __future__ import annotations

from datetime import date

from django.conf import settings
from django.contrib.auth.models import Group
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from campaigns.models import Campaign
from coupons.models import CouponRule
from indicators.models import GOAL_VALUE, Goal


class Tactic(models.Model):
    """One way to reach a goal, e.g. "win back silent customers". Its expected contribution is in
    the goal's unit: a share of the target for a sum-type goal (revenue), a level added for a mean-
    or last-type one (DAU). It works from `starts_on` to `ends_on` (first days of months, both
    inclusive; no end: to the goal's end), which the decomposition by tactics follows."""

    goal = models.ForeignKey(Goal, on_delete=models.CASCADE, related_name="tactics")
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True, default="")
    indicators = ArrayField(
        models.CharField(max_length=64), default=list, blank=True, help_text=_("Keys of the indicators it moves")
    )
    campaigns = models.ManyToManyField(Campaign, blank=True, related_name="tactics")
    coupon_rules = models.ManyToManyField(CouponRule, blank=True, related_name="tactics")
    expected_contribution = models.DecimalField(**GOAL_VALUE)
    starts_on = models.DateField(help_text=_("First day of the month it starts"))
    ends_on = models.DateField(null=True, blank=True, help_text=_("First day of its last month; empty: the goal's end"))
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["goal", "starts_on", "name"]
        constraints = [
            models.UniqueConstraint(fields=["goal", "name"], name="tactic_name_unique_per_goal"),
            models.CheckConstraint(condition=models.Q(expected_contribution__gte=0), name="tactic_contribution_gte_0"),
            models.CheckConstraint(condition=models.Q(starts_on__day=1), name="tactic_starts_first_of_month"),
            models.CheckConstraint(
                condition=models.Q(ends_on__isnull=True) | models.Q(ends_on__day=1, ends_on__gte=models.F("starts_on")),
                name="tactic_ends_after_start",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def active_in(self, month: date) -> bool:
        return self.starts_on <= month and (self.ends_on is None or month <= self.ends_on)


class PhaseKind(models.TextChoices):
    MONTH = "month", _("Month")
    QUARTER = "quarter", _("Quarter")


class Phase(models.Model):
    """A month or a quarter of a goal with its priorities (one a line, most important first)."""

    goal = models.ForeignKey(Goal, on_delete=models.CASCADE, related_name="phases")
    kind = models.CharField(max_length=8, choices=PhaseKind.choices)
    starts_on = models.DateField(help_text=_("First day of the month or quarter"))
    priorities = models.TextField(blank=True, default="", help_text=_("One a line, most important first"))

    class Meta:
        ordering = ["goal", "starts_on"]
        constraints = [
            models.UniqueConstraint(fields=["goal", "kind", "starts_on"], name="phase_once_per_period"),
            models.CheckConstraint(condition=models.Q(starts_on__day=1), name="phase_starts_first_of_month"),
            models.CheckConstraint(
                condition=models.Q(kind=PhaseKind.MONTH) | models.Q(starts_on__month__in=[1, 4, 7, 10]),
                name="phase_quarter_starts_a_quarter",
            ),
        ]

    def __str__(self) -> str:
        if self.kind == PhaseKind.QUARTER:
            return f"{self.starts_on.year} Q{(self.starts_on.month - 1) // 3 + 1}"
        return f"{self.starts_on:%Y-%m}"

    @property
    def ends_on(self) -> date:
        """The first day after the phase."""
        months = 3 if self.kind == PhaseKind.QUARTER else 1
        index = self.starts_on.month - 1 + months
        return date(self.starts_on.year + index // 12, index % 12 + 1, 1)

    def priority_list(self) -> list[str]:
        return [line.strip() for line in self.priorities.splitlines() if line.strip()]


class TaskStatus(models.TextChoices):
    TODO = "todo", _("To do")
    DOING = "doing", _("Doing")
    DONE = "done", _("Done")


class Task(models.Model):
    """A task of a team in a phase: who does it, by when, and the indicator it should move. It is
    late when not done after its due date (a board's fourth column; read, not stored)."""

    phase = models.ForeignKey(Phase, on_delete=models.CASCADE, related_name="tasks")
    tactic = models.ForeignKey(Tactic, null=True, blank=True, on_delete=models.SET_NULL, related_name="tasks")
    team = models.ForeignKey(Group, on_delete=models.PROTECT, related_name="planning_tasks")
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="planning_tasks"
    )
    title = models.CharField(max_length=200)
    indicator = models.CharField(
        max_length=64, blank=True, default="", help_text=_("Key of the indicator it should move")
    )
    due_on = models.DateField()
    status = models.CharField(max_length=8, choices=TaskStatus.choices, default=TaskStatus.TODO)
    done_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["due_on", "id"]
        constraints = [
            models.CheckConstraint(condition=models.Q(status__in=TaskStatus.values), name="task_status_known"),
            # done_at is set exactly when the task is done: the review counts tasks done by it.
            models.CheckConstraint(
                condition=models.Q(status=TaskStatus.DONE, done_at__isnull=False)
                | (~models.Q(status=TaskStatus.DONE) & models.Q(done_at__isnull=True)),
                name="task_done_at_iff_done",
            ),
        ]
        indexes = [models.Index(fields=["team", "status", "due_on"], name="task_board")]

    def __str__(self) -> str:
        return self.title

    def is_late(self, today: date) -> bool:
        return self.status != TaskStatus.DONE and self.due_on < today
