"""Goals in the admin: the list with progress, the chart page of one goal and its CSV."""

from __future__ import annotations

import csv
import io
from decimal import Decimal, InvalidOperation

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from config import formatting
from indicators import baselines, selectors, services
from indicators.errors import NoHistory
from indicators.models import Goal, GoalPeriod, goal_step
from indicators.registry import Unit, UnknownIndicator, get_indicator, indicator_choices, unit_label

STATUS_COLOURS = {
    "upcoming": "#777",
    "on_track": "#2e7d32",
    "behind": "#c62828",
    "met": "#1565c0",
    "missed": "#6d1b1b",
}


def _status_label(status: str) -> str:
    return str(selectors.GoalStatus(status).label)


def _value(value, unit: str) -> str:
    if value is None:
        return "-"
    if unit == Unit.MONEY:  # with its currency, as every page writes money (config/formatting.py)
        return formatting.money(value)
    return f"{value.quantize(goal_step(unit)):,}"


class GoalForm(forms.ModelForm):
    """Period and indicator are chosen once; target, profile and weights may be set again (the
    months are then decomposed afresh)."""

    indicator = forms.ChoiceField(label=_("Indicator"), choices=())
    weights_text = forms.CharField(
        label=_("Weights per month"),
        required=False,
        help_text=_(
            "For 'by typed weights': one number per month of the period, comma separated, "
            "e.g. 8,8,9,9,10,10,7,7,9,10,11,12 for a year."
        ),
    )

    class Meta:
        model = Goal
        fields = ["name", "indicator", "period", "year", "quarter", "target", "profile"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        choices = indicator_choices()
        if self.instance.pk and self.instance.indicator not in dict(choices):
            choices.append(
                (
                    self.instance.indicator,
                    gettext("%(indicator)s (not registered)") % {"indicator": self.instance.indicator},
                )
            )
        self.fields["indicator"].choices = choices
        if self.instance.pk:
            self.fields["weights_text"].initial = ", ".join(self.instance.weights)
            for name in ("indicator", "period", "year", "quarter"):
                self.fields[name].disabled = True

    def clean_weights_text(self) -> list[Decimal]:
        raw = self.cleaned_data.get("weights_text") or ""
        values = []
        for part in raw.replace(";", ",").split(","):
            if part.strip():
                try:
                    values.append(Decimal(part.strip()))
                except InvalidOperation:
                    raise ValidationError(
                        gettext("%(value)s is not a number.") % {"value": repr(part.strip()[:20])}
                    ) from None
        return values

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        try:
            indicator = get_indicator(data["indicator"])
        except UnknownIndicator:
            raise ValidationError({"indicator": gettext("This indicator is not registered.")}) from None
        goal = Goal(
            indicator=indicator.key,
            fold=self.instance.fold if self.instance.pk else indicator.fold,
            unit=self.instance.unit if self.instance.pk else indicator.unit,
            period=data["period"],
            year=data["year"],
            quarter=data.get("quarter"),
            target=data["target"],
        )
        try:
            goal.clean_fields(exclude=["name", "profile", "weights"])
            if goal.target != goal.target.quantize(goal_step(goal.unit)):
                raise ValidationError({"target": gettext("At most 2 decimal places (4 for ratios).")})
            if goal.period == GoalPeriod.QUARTER and not goal.quarter:
                raise ValidationError({"quarter": gettext("A quarterly goal needs its quarter (1 to 4).")})
            if goal.period == GoalPeriod.YEAR and goal.quarter:
                raise ValidationError({"quarter": gettext("A yearly goal has no quarter.")})
            services.month_targets_for(goal=goal, profile=data["profile"], weights=data.get("weights_text"))
        except ValidationError as exc:
            if hasattr(exc, "error_dict") and "weights" in exc.error_dict:
                exc.error_dict["weights_text"] = exc.error_dict.pop("weights")
            raise
        except NoHistory as exc:
            raise ValidationError({"profile": exc.detail}) from None
        return data


@admin.register(Goal)
class GoalAdmin(admin.ModelAdmin):
    form = GoalForm
    list_display = (
        "name",
        "indicator_label",
        "period_shown",
        "target_shown",
        "actual_shown",
        "progress_shown",
        "status_badge",
        "detail_link",
    )
    list_filter = ("period", "year", "indicator")
    search_fields = ("name", "indicator")
    change_list_template = "admin/indicators/goal/change_list.html"
    fieldsets = (
        (None, {"fields": ("name", "indicator", "period", "year", "quarter", "target")}),
        (
            _("Decomposition by month"),
            {
                "fields": ("profile", "weights_text"),
                "description": _(
                    "Sum-type indicators (revenue, new users) share the target between the months; "
                    "mean-type (DAU) and last-value (MAU) indicators give each month a level to reach."
                ),
            },
        ),
    )

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("month_targets")

    def get_changelist_instance(self, request):
        # One read of each indicator's series for the whole page, not one per goal.
        changelist = super().get_changelist_instance(request)
        changelist.result_list = list(changelist.result_list)
        progress = selectors.goals_progress(changelist.result_list)
        for goal in changelist.result_list:
            goal.progress_info = progress.get(goal.pk)
        return changelist

    @admin.display(description=_("Indicator"), ordering="indicator")
    def indicator_label(self, goal: Goal) -> str:
        info = getattr(goal, "progress_info", None)
        return info.label if info else goal.indicator

    @admin.display(description=_("Period"), ordering="year")
    def period_shown(self, goal: Goal) -> str:
        return goal.period_label

    @admin.display(description=_("Target"), ordering="target")
    def target_shown(self, goal: Goal) -> str:
        return _value(goal.target, goal.unit)

    @admin.display(description=_("Actual so far"))
    def actual_shown(self, goal: Goal) -> str:
        info = getattr(goal, "progress_info", None)
        return _value(info.actual, goal.unit) if info else "-"

    @admin.display(description=_("Progress"))
    def progress_shown(self, goal: Goal) -> str:
        info = getattr(goal, "progress_info", None)
        return "-" if info is None or info.progress is None else f"{info.progress:.1%}"

    @admin.display(description=_("Status"))
    def status_badge(self, goal: Goal) -> str:
        info = getattr(goal, "progress_info", None)
        if info is None:
            return format_html('<span style="color:{}">{}</span>', "#c62828", gettext("indicator missing"))
        colour = STATUS_COLOURS.get(info.status, "#777")
        return format_html(
            '<span class="goal-status goal-status-{}" style="background:{};color:#fff;border-radius:3px;'
            'padding:1px 6px">{}</span>',
            info.status,
            colour,
            _status_label(info.status),
        )

    @admin.display(description="")
    def detail_link(self, goal: Goal) -> str:
        return format_html(
            '<a href="{}">{}</a>', reverse("admin:indicators_goal_progress", args=[goal.pk]), gettext("progress")
        )

    def save_model(self, request, obj: Goal, form, change: bool) -> None:
        data = form.cleaned_data
        if change:
            saved = services.redecompose_goal(
                goal=obj,
                name=data["name"],
                target=data["target"],
                profile=data["profile"],
                weights=data.get("weights_text"),
                actor=request.user,
            )
        else:
            saved = services.create_goal(
                name=data["name"],
                indicator=data["indicator"],
                period=data["period"],
                year=data["year"],
                quarter=data.get("quarter"),
                target=data["target"],
                profile=data["profile"],
                weights=data.get("weights_text"),
                actor=request.user,
            )
        obj.pk = saved.pk

    def save_related(self, request, form, formsets, change) -> None:
        pass  # the service wrote the months

    def delete_model(self, request, obj: Goal) -> None:
        services.delete_goal(goal=obj, actor=request.user)

    def delete_queryset(self, request, queryset) -> None:
        for goal in queryset:
            services.delete_goal(goal=goal, actor=request.user)

    def get_urls(self):
        own = [
            path(
                "<int:goal_id>/progress/",
                self.admin_site.admin_view(self.progress_view),
                name="indicators_goal_progress",
            ),
            path(
                "<int:goal_id>/progress.csv",
                self.admin_site.admin_view(self.progress_csv_view),
                name="indicators_goal_progress_csv",
            ),
            path("export.csv", self.admin_site.admin_view(self.list_csv_view), name="indicators_goal_export"),
        ]
        return own + super().get_urls()

    def _goal_or_404(self, request: HttpRequest, goal_id: int) -> Goal:
        if not self.has_view_permission(request):
            raise PermissionDenied
        return get_object_or_404(self.get_queryset(request), pk=goal_id)

    def progress_view(self, request: HttpRequest, goal_id: int) -> HttpResponse:
        goal = self._goal_or_404(request, goal_id)
        info = selectors.goals_progress([goal]).get(goal.pk)
        chart = None
        base = None
        if info is not None:
            base = baselines.month_baselines(indicator=goal.indicator, months=goal.months())
            chart = {
                "months": [formatting.month_label(m.month) for m in info.months],
                "target": [float(m.target) for m in info.months],
                "actual": [None if m.actual is None else float(m.actual) for m in info.months],
                "baseline": [None if base is None else float(base.for_month(m.month) or 0) for m in info.months],
                "behind": [m.status in ("behind", "missed") for m in info.months],
            }
        context = {
            **self.admin_site.each_context(request),
            "title": gettext("Goal: %(goal)s") % {"goal": goal},
            "opts": self.model._meta,
            "goal": goal,
            "info": info,
            "rows": []
            if info is None
            else [
                (
                    m,
                    _value(m.target, goal.unit),
                    _value(m.expected, goal.unit),
                    _value(m.actual, goal.unit),
                    _value(base.for_month(m.month) if base else None, goal.unit),
                    _value(m.target - base.for_month(m.month) if base else None, goal.unit),
                    _status_label(m.status),
                )
                for m in info.months
            ],
            "baseline_method": baselines.method_text(),
            "baseline_missing": info is not None and base is None,
            "summary": []
            if info is None
            else [
                (gettext("Target"), _value(goal.target, goal.unit)),
                (gettext("Actual so far"), _value(info.actual, goal.unit)),
                (gettext("Expected by now"), _value(info.expected, goal.unit)),
                (gettext("Progress"), "-" if info.progress is None else formatting.percent(info.progress)),
                (gettext("Status"), _status_label(info.status)),
                (gettext("As of"), info.as_of.isoformat()),
            ],
            "chart_data": chart,
        }
        return TemplateResponse(request, "admin/indicators/goal/progress.html", context)

    def progress_csv_view(self, request: HttpRequest, goal_id: int) -> HttpResponse:
        goal = self._goal_or_404(request, goal_id)
        info = selectors.goals_progress([goal]).get(goal.pk)
        if info is None:
            return HttpResponse(
                gettext("The indicator %(indicator)s of this goal is not registered.")
                % {"indicator": repr(goal.indicator)},
                status=409,
                content_type="text/plain",
            )
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        # Column names in the reader's language (English for a request that names none), each with
        # its unit; the values stay as stored (an ISO month, plain numbers) for spreadsheets.
        unit = unit_label(goal.unit)
        writer.writerow(
            [
                gettext("Month"),
                formatting.column(gettext("Days in the month"), gettext("days")),
                formatting.column(gettext("Days elapsed"), gettext("days")),
                formatting.column(gettext("Target"), unit),
                formatting.column(gettext("Expected by now"), unit),
                formatting.column(gettext("Actual"), unit),
                gettext("Status"),
            ]
        )
        step = goal_step(goal.unit)
        for m in info.months:
            writer.writerow(
                [
                    f"{m.month:%Y-%m}",
                    m.days,
                    m.elapsed_days,
                    m.target.quantize(step),
                    "" if m.expected is None else m.expected.quantize(step),
                    "" if m.actual is None else m.actual.quantize(step),
                    m.status,
                ]
            )
        response = HttpResponse(buffer.getvalue(), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="goal-{goal.pk}-{goal.period_label}.csv"'
        return response

    def list_csv_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        goals = list(self.get_queryset(request).order_by("-year", "-quarter", "name"))
        progress = selectors.goals_progress(goals)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        # Goals of different indicators share these columns: each row names its unit.
        writer.writerow(
            [
                gettext("Goal"),
                gettext("Indicator"),
                gettext("Period"),
                gettext("Unit"),
                gettext("Target"),
                gettext("Actual"),
                gettext("Expected by now"),
                formatting.column(gettext("Progress"), gettext("fraction of 1")),
                gettext("Status"),
                gettext("Warnings"),
            ]
        )
        for goal in goals:
            info = progress.get(goal.pk)
            step = goal_step(goal.unit)
            writer.writerow(
                [
                    goal.name,
                    goal.indicator,
                    goal.period_label,
                    unit_label(goal.unit),
                    goal.target.quantize(step),
                    "" if info is None or info.actual is None else info.actual.quantize(step),
                    "" if info is None or info.expected is None else info.expected.quantize(step),
                    "" if info is None or info.progress is None else f"{info.progress:.4f}",
                    "indicator missing" if info is None else info.status,
                    "" if info is None else " | ".join(info.warnings),
                ]
            )
        response = HttpResponse(buffer.getvalue(), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = 'attachment; filename="goals.csv"'
        return response

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None:
            context["goal_progress_url"] = reverse("admin:indicators_goal_progress", args=[obj.pk])
        return super().render_change_form(request, context, add, change, form_url, obj)
