"""The last run of each Celery task, recorded by the worker itself (see `monitoring.signals`)."""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _


class TaskRun(models.Model):
    """One row per task name, overwritten by each run: when it last started and finished, its
    outcome and, when it failed, why. Beat rows are matched to it by their task name."""

    class State(models.TextChoices):
        OK = "ok", _("OK")
        FAILED = "failed", _("Failed")
        RETRY = "retry", _("Retrying")

    task = models.CharField(max_length=200, unique=True)
    task_id = models.CharField(max_length=64, blank=True, default="")
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    state = models.CharField(max_length=16, choices=State.choices)
    error = models.TextField(blank=True, default="")
    runtime_seconds = models.FloatField(null=True, blank=True)
    runs = models.PositiveBigIntegerField(default=0, help_text=_("Runs recorded since the row was created"))
    failures = models.PositiveBigIntegerField(default=0, help_text=_("Of which failed"))

    class Meta:
        ordering = ["task"]

    def __str__(self) -> str:
        return f"{self.task}: {self.state}"


class Health(TaskRun):
    """The health page in the admin index (a proxy: its changelist is the page)."""

    class Meta:
        proxy = True
        verbose_name = _("health")
        verbose_name_plural = _("health")
