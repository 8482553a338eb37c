"""The health page (the changelist of *Monitoring > Health*) and the task runs the worker records.
Superusers, Analyst and Operations see them (view permissions of the monitoring app)."""

from __future__ import annotations

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.translation import gettext_lazy as _

from access.readonly import ReadOnlyAdmin
from monitoring import selectors
from monitoring.models import Health, TaskRun


@admin.register(TaskRun)
class TaskRunAdmin(ReadOnlyAdmin):
    list_display = ("task", "state", "started_at", "finished_at", "runtime_seconds", "runs", "failures", "error_shown")
    list_filter = ("state",)
    search_fields = ("task",)
    readonly_fields = [f.name for f in TaskRun._meta.fields]

    @admin.display(description=_("error"))
    def error_shown(self, run: TaskRun) -> str:
        return (run.error[:120] + "…") if len(run.error) > 120 else (run.error or "-")


@admin.register(Health)
class HealthAdmin(ReadOnlyAdmin):
    def changelist_view(self, request: HttpRequest, extra_context=None) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        report = selectors.health_report()
        return TemplateResponse(
            request,
            "admin/monitoring/health.html",
            {
                **self.admin_site.each_context(request),
                "title": _("Health"),
                "opts": self.model._meta,
                "report": report,
                "problems": report.problems,
            },
        )
