"""Planning in the admin: tactics (and a goal's plan page: target, actual, baseline and gap per
month with the campaigns' measured effects), phases with their tasks, the team boards (to do,
doing, done, late) and the monthly review (printable, and as CSV)."""

from __future__ import annotations

import csv
import io
from datetime import date

from django.contrib import admin, messages
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.formats import date_format
from django.utils.html import format_html
from django.utils.translation import gettext, pgettext
from django.utils.translation import gettext_lazy as _

from config import formatting
from config.errors import DomainError
from indicators.models import Goal, goal_step
from indicators.registry import Unit, unit_label
from indicators.selectors import GoalStatus
from planning import selectors, services
from planning.models import Phase, Tactic, Task, TaskStatus


def _value(value, unit: str) -> str:
    if value is None:
        return "-"
    if unit == Unit.MONEY:  # with its currency, as every page writes money (config/formatting.py)
        return formatting.money(value)
    if unit == Unit.RATIO:
        return formatting.percent(value, 2)
    return f"{value.quantize(goal_step(unit)):,}"


def _raw(value, unit: str):
    """A value as the CSV keeps it: a plain number at the goal's precision (the unit is a column)."""
    return "" if value is None else value.quantize(goal_step(unit))


# What a source's measure counts in the review CSV's unit column (revenue: the currency).
SOURCE_MEASURE_UNITS = {"orders": _("orders"), "people": _("people")}


def _month_param(request: HttpRequest) -> date:
    raw = request.GET.get("month") or ""
    try:
        return date.fromisoformat(f"{raw[:7]}-01")
    except ValueError:
        return selectors._today().replace(day=1)


@admin.register(Tactic)
class TacticAdmin(admin.ModelAdmin):
    list_display = ("name", "goal", "expected_contribution", "starts_on", "ends_on", "plan_link")
    list_filter = ("goal",)
    search_fields = ("name", "goal__name")
    filter_horizontal = ("campaigns", "coupon_rules")
    fields = (
        "goal",
        "name",
        "description",
        "indicators",
        "expected_contribution",
        "starts_on",
        "ends_on",
        "campaigns",
        "coupon_rules",
    )
    actions = ["decompose_goals"]

    @admin.display(description="")
    def plan_link(self, tactic: Tactic) -> str:
        url = reverse("admin:planning_goal_plan", args=[tactic.goal_id])
        return format_html('<a href="{}">{}</a>', url, gettext("goal plan"))

    def save_model(self, request, obj: Tactic, form, change: bool) -> None:
        data = form.cleaned_data
        links = {
            "campaign_ids": [c.pk for c in data.get("campaigns") or []],
            "coupon_rule_ids": [r.pk for r in data.get("coupon_rules") or []],
        }
        if change:
            changes = {f: data[f] for f in services.TACTIC_FIELDS if f in data}
            saved = services.update_tactic(tactic=obj, changes={**changes, **links}, actor=request.user)
        else:
            saved = services.create_tactic(
                goal=data["goal"],
                name=data["name"],
                description=data.get("description", ""),
                indicators=data.get("indicators") or None,
                expected_contribution=data["expected_contribution"],
                starts_on=data["starts_on"],
                ends_on=data.get("ends_on"),
                actor=request.user,
                **links,
            )
        obj.pk = saved.pk

    def save_related(self, request, form, formsets, change) -> None:
        pass  # the service linked the campaigns and coupon rules

    def delete_model(self, request, obj: Tactic) -> None:
        services.delete_tactic(tactic=obj, actor=request.user)

    @admin.action(description=_("Decompose the goals of the selected tactics by their timing"), permissions=["change"])
    def decompose_goals(self, request, queryset):
        for goal in Goal.objects.filter(pk__in=queryset.values("goal")):
            try:
                services.decompose_by_tactics(goal=goal, actor=request.user)
                self.message_user(request, gettext("%(goal)s: decomposed by its tactics' timing.") % {"goal": goal})
            except DomainError as exc:
                self.message_user(request, f"{goal}: {exc.detail}", level=messages.ERROR)

    def get_urls(self):
        own = [
            path("goal/<int:goal_id>/", self.admin_site.admin_view(self.plan_view), name="planning_goal_plan"),
        ]
        return own + super().get_urls()

    def plan_view(self, request: HttpRequest, goal_id: int) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        goal = get_object_or_404(Goal.objects.prefetch_related("month_targets"), pk=goal_id)
        plan = selectors.goal_plan(goal)
        chart = None
        rows = []
        if plan is not None:
            chart = {
                "months": [formatting.month_label(m.month) for m in plan.months],
                "target": [float(m.target) for m in plan.months],
                "actual": [None if m.actual is None else float(m.actual) for m in plan.months],
                "baseline": [None if m.baseline is None else float(m.baseline) for m in plan.months],
            }
            rows = [
                {
                    "month": m.month,
                    "target": _value(m.target, goal.unit),
                    "actual": _value(m.actual, goal.unit),
                    "baseline": _value(m.baseline, goal.unit),
                    "gap": _value(m.gap, goal.unit),
                    "beyond": _value(m.beyond_baseline, goal.unit),
                    "incremental": _value(m.incremental, goal.unit),
                    "status": m.status,
                }
                for m in plan.months
            ]
        context = {
            **self.admin_site.each_context(request),
            "title": gettext("Goal plan: %(goal)s") % {"goal": goal},
            "opts": self.model._meta,
            "goal": goal,
            "target": _value(goal.target, goal.unit),
            "plan": plan,
            "rows": rows,
            "chart_data": chart,
        }
        return TemplateResponse(request, "admin/planning/goal_plan.html", context)


class TaskInline(admin.TabularInline):
    model = Task
    extra = 0
    fields = ("title", "team", "owner", "due_on", "status", "indicator", "tactic")
    readonly_fields = fields
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Phase)
class PhaseAdmin(admin.ModelAdmin):
    list_display = ("__str__", "goal", "kind", "starts_on", "task_count")
    list_filter = ("goal", "kind")
    fields = ("goal", "kind", "starts_on", "priorities")
    inlines = [TaskInline]

    @admin.display(description=_("Tasks"))
    def task_count(self, phase: Phase) -> int:
        return phase.tasks.count()

    def save_model(self, request, obj: Phase, form, change: bool) -> None:
        if change:
            Phase.objects.filter(pk=obj.pk).update(priorities=obj.priorities)
            return
        data = form.cleaned_data
        saved = services.create_phase(
            goal=data["goal"],
            kind=data["kind"],
            starts_on=data["starts_on"],
            priorities=data.get("priorities", ""),
            actor=request.user,
        )
        obj.pk = saved.pk


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = ("title", "team", "owner", "due_on", "status", "late_flag", "indicator", "phase")
    list_filter = ("team", "status", "phase__goal")
    search_fields = ("title",)
    list_select_related = ("team", "owner", "phase", "phase__goal")
    fields = ("phase", "tactic", "team", "owner", "title", "indicator", "due_on", "status")
    actions = ["mark_doing", "mark_done", "mark_todo"]
    change_list_template = "admin/planning/task/change_list.html"

    @admin.display(description=_("Late"), boolean=True)
    def late_flag(self, task: Task) -> bool:
        return task.is_late(selectors._today())

    def save_model(self, request, obj: Task, form, change: bool) -> None:
        data = form.cleaned_data
        if change:
            saved = services.update_task(
                task=obj,
                changes={k: data[k] for k in ("title", "due_on", "indicator", "owner", "tactic") if k in data},
                actor=request.user,
            )
            services.move_task(task=saved, status=data["status"], actor=request.user)
        else:
            saved = services.create_task(
                phase=data["phase"],
                team=data["team"],
                owner=data.get("owner"),
                title=data["title"],
                due_on=data["due_on"],
                indicator=data.get("indicator", ""),
                tactic=data.get("tactic"),
                actor=request.user,
            )
            if data["status"] != TaskStatus.TODO:
                services.move_task(task=saved, status=data["status"], actor=request.user)
        obj.pk = saved.pk

    def _move(self, request, queryset, status: str) -> None:
        for task in queryset:
            services.move_task(task=task, status=status, actor=request.user)
        n = queryset.count()
        self.message_user(
            request,
            gettext("%(n)d task(s) moved to %(status)s.") % {"n": n, "status": str(TaskStatus(status).label).lower()},
        )

    @admin.action(description=_("Move to doing"), permissions=["change"])
    def mark_doing(self, request, queryset):
        self._move(request, queryset, TaskStatus.DOING)

    @admin.action(description=_("Move to done"), permissions=["change"])
    def mark_done(self, request, queryset):
        self._move(request, queryset, TaskStatus.DONE)

    @admin.action(description=_("Move back to to do"), permissions=["change"])
    def mark_todo(self, request, queryset):
        self._move(request, queryset, TaskStatus.TODO)

    def get_urls(self):
        own = [
            path("board/", self.admin_site.admin_view(self.board_view), name="planning_task_board"),
            path("review/", self.admin_site.admin_view(self.review_view), name="planning_review"),
            path("review.csv", self.admin_site.admin_view(self.review_csv_view), name="planning_review_csv"),
        ]
        return own + super().get_urls()

    def _team(self, request: HttpRequest) -> Group | None:
        raw = request.GET.get("team") or ""
        return Group.objects.filter(pk=int(raw)).first() if raw.isdigit() and len(raw) < 19 else None

    def board_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        teams = list(Group.objects.filter(planning_tasks__isnull=False).distinct().order_by("name"))
        team = self._team(request) or (teams[0] if teams else None)
        today = selectors._today()
        columns = selectors.board(team=team, today=today) if team else {c: [] for c in selectors.BOARD_COLUMNS}
        context = {
            **self.admin_site.each_context(request),
            "title": gettext("Board: %(team)s") % {"team": team.name} if team else gettext("Boards"),
            "opts": self.model._meta,
            "teams": teams,
            "team": team,
            "today": today,
            "columns": [
                ("todo", gettext("To do"), columns["todo"]),
                ("doing", gettext("Doing"), columns["doing"]),
                ("done", gettext("Done"), columns["done"]),
                ("late", gettext("Late"), columns["late"]),
            ],
        }
        return TemplateResponse(request, "admin/planning/task/board.html", context)

    def review_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        month = _month_param(request)
        team = self._team(request)
        review = selectors.monthly_review(month=month, team=team)
        for row in review["goals"]:
            # Each goal's values as its unit reads: money with its currency, ratios as percentages.
            row["shown"] = {k: _value(row[k], row["goal"].unit) for k in ("target", "actual", "baseline", "gap")}
        context = {
            **self.admin_site.each_context(request),
            "title": gettext("Review of %(month)s: %(team)s")
            % {
                "month": date_format(month, "YEAR_MONTH_FORMAT"),
                "team": team.name if team else gettext("the whole operation"),
            },
            "opts": self.model._meta,
            "review": review,
            "teams": Group.objects.filter(planning_tasks__isnull=False).distinct().order_by("name"),
            "month_value": f"{month:%Y-%m}",
            "printable": request.GET.get("print") == "1",
        }
        return TemplateResponse(request, "admin/planning/review.html", context)

    def review_csv_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        month = _month_param(request)
        team = self._team(request)
        review = selectors.monthly_review(month=month, team=team)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        # Numbers stay plain (a spreadsheet computes with them); the unit column says what they count.
        writer.writerow(
            [
                gettext("Section"),
                gettext("Name"),
                gettext("Unit"),
                gettext("Target"),
                gettext("Actual"),
                gettext("Baseline (or usual)"),
                gettext("Gap (or change)"),
                gettext("Status"),
                gettext("Detail"),
            ]
        )
        for row in review["goals"]:
            unit = row["goal"].unit
            writer.writerow(
                [
                    pgettext("review section", "goal"),
                    row["goal"].name,
                    unit_label(unit),
                    _raw(row["target"], unit),
                    _raw(row["actual"], unit),
                    _raw(row["baseline"], unit),
                    _raw(row["gap"], unit),
                    GoalStatus(row["status"]).label if row["status"] in GoalStatus.values else row["status"],
                    row["label"],
                ]
            )
        for task in review["tasks_done"]:
            due = formatting.local_date(task.due_on)
            detail = gettext("%(team)s, due %(day)s") % {"team": task.team.name, "day": due}
            section = pgettext("review section", "task done")
            writer.writerow([section, task.title, "", "", "", "", "", task.get_status_display(), detail])
        for task in review["tasks_late"]:
            due = formatting.local_date(task.due_on)
            detail = gettext("%(team)s, due %(day)s") % {"team": task.team.name, "day": due}
            section = pgettext("review section", "task late")
            writer.writerow([section, task.title, "", "", "", "", "", task.get_status_display(), detail])
        for item in review["campaigns"]:
            effect = item["effect"]
            detail = (
                gettext("no holdout")
                if effect is None
                else gettext("+%(conversions)s conversions, %(revenue)s revenue added vs a holdout of %(holdout)s")
                % {
                    "conversions": formatting.number(effect.incremental_conversions, 1),
                    "revenue": formatting.money(effect.incremental_revenue),
                    "holdout": formatting.count(effect.holdout_size),
                }
            )
            campaign = item["campaign"]
            section = pgettext("review section", "campaign")
            writer.writerow([section, campaign.name, "", "", "", "", "", campaign.get_status_display(), detail])
        for mover in review["indicator_movers"]:
            relative = "" if mover["relative"] is None else formatting.relative_uplift(mover["relative"])
            writer.writerow(
                [
                    pgettext("review section", "indicator moved"),
                    mover["label"],
                    unit_label(mover["unit"]),
                    "",
                    mover["value"],
                    mover["previous"],
                    mover["change"],
                    "",
                    relative,
                ]
            )
        for measure, movers in review["source_movers"].items():
            unit = formatting.currency_label() if measure == "revenue" else SOURCE_MEASURE_UNITS.get(measure, measure)
            for mover in movers:
                writer.writerow(
                    [
                        pgettext("review section", "source moved"),
                        mover["source"],
                        str(unit),
                        "",
                        mover["value"],
                        mover["usual"],
                        mover["change"],
                        "",
                        "",
                    ]
                )
        response = HttpResponse(buffer.getvalue(), content_type="text/csv; charset=utf-8")
        name = f"review-{month:%Y-%m}" + (f"-team-{team.pk}" if team else "")
        response["Content-Disposition"] = f'attachment; filename="{name}.csv"'
        return response
