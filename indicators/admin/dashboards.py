"""Indicator dashboards in the admin: trends, retention cohorts (a heat map), funnels, searches,
key behaviours and churn. Each page reads the same selectors as the API, validates its window with
the API's rules, and exports what it shows as CSV (`?format=csv`). Analyst and Operations see them
through the view permission of "indicator dashboards"."""

from __future__ import annotations

import calendar
import csv
from datetime import UTC, datetime, timedelta

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import conditional_escape
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import gettext, pgettext_lazy
from django.utils.translation import gettext_lazy as _

from access.readonly import ReadOnlyAdmin
from config import formatting
from config.replica import reading_from_replica
from indicators import analyses, selectors
from indicators import registry as indicators
from indicators import serializers as s
from indicators.models import CohortBasis, CohortGranularity, DailyIndicator, Funnel, FunnelStep

DATE = forms.DateInput(attrs={"type": "date"})


# The statistical test a comparison used (indicators.analyses), as the summary names it.
TEST_NAMES = {
    "none": pgettext_lazy("statistical test", "none"),
    "fisher_exact": pgettext_lazy("statistical test", "fisher exact"),
    "chi_square": pgettext_lazy("statistical test", "chi square"),
}


def _window_fields(form: forms.Form, days: int = 30) -> None:
    today = timezone.now().date()
    form.fields["start"] = forms.DateField(label=_("Start"), widget=DATE, initial=today - timedelta(days=days - 1))
    form.fields["end"] = forms.DateField(label=_("End"), widget=DATE, initial=today)


def _goal_lines(indicator, days: list) -> list[dict]:
    """A stepped line per goal of the indicator over the charted days: each month's target (for an
    indicator that adds its days up, the month's target spread evenly over its days, so that it
    reads on the same scale as a day); no point on days outside the goal's months."""
    lines = []
    for goal in selectors.goals_with_months().filter(indicator=indicator.key).order_by("year", "quarter", "pk"):
        targets = {m.month: m.target for m in goal.month_targets.all()}
        points = []
        for day in days:
            target = targets.get(day.replace(day=1))
            if target is not None and goal.fold == indicators.Fold.SUM:
                target = target / calendar.monthrange(day.year, day.month)[1]
            points.append(None if target is None else round(float(target), 4))
        if any(point is not None for point in points):
            lines.append(
                {
                    "label": gettext("goal: %(name)s") % {"name": goal.name},
                    "data": points,
                    "stepped": True,
                    "fill": False,
                    "borderDash": [6, 4],
                    "pointRadius": 0,
                    "spanGaps": False,
                }
            )
    return lines


class _WindowForm(forms.Form):
    rules: type = s.WindowInput
    days = 30

    def __init__(self, data=None, *args, **kwargs):
        super().__init__(data, *args, **kwargs)
        _window_fields(self, self.days)
        self.fields = {"start": self.fields.pop("start"), "end": self.fields.pop("end"), **self.fields}

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        rules = self.rules(data={k: ("true" if v is True else str(v)) for k, v in data.items() if v not in (None, "")})
        if not rules.is_valid():
            for field, errors in rules.errors.items():
                for error in errors:
                    self.add_error(field if field in self.fields else None, str(error))
            return data
        return {**data, **rules.validated_data}


class TrendForm(_WindowForm):
    days = 90

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["indicator"] = forms.ChoiceField(
            label=_("Indicator"), choices=indicators.indicator_choices(), initial="dau"
        )


class RetentionForm(_WindowForm):
    rules = s.RetentionInput
    days = 180
    granularity = forms.ChoiceField(
        label=_("Granularity"), choices=CohortGranularity.choices, initial=CohortGranularity.MONTH
    )
    basis = forms.ChoiceField(label=_("Basis"), choices=CohortBasis.choices, initial=CohortBasis.ACTIVITY)
    periods = forms.IntegerField(
        min_value=1,
        max_value=30,
        required=False,
        label=_("Periods"),
        help_text=_("Default 30 days or 12 weeks/months"),
    )


class SearchForm(_WindowForm):
    rules = s.SearchInput
    zero_results = forms.BooleanField(required=False, label=_("Only queries with no results"))


class FunnelWindowForm(_WindowForm):
    rules = s.AnalysisWindowInput


class KeyBehaviourForm(_WindowForm):
    rules = s.KeyBehaviourInput
    event = forms.CharField(label=_("Event"), max_length=64, initial="search", help_text=_("Event name"))
    first_days = forms.IntegerField(label=_("First days"), min_value=1, max_value=30, initial=7)
    retained_from = forms.IntegerField(label=_("Retained from day"), min_value=1, max_value=90, initial=7)
    retained_days = forms.IntegerField(label=_("Retained days"), min_value=1, max_value=90, initial=7)


class ChurnForm(_WindowForm):
    rules = s.ChurnInput
    churn_days = forms.IntegerField(label=_("Churn days"), min_value=1, max_value=180, initial=30)
    last_events = forms.IntegerField(label=_("Last events"), min_value=1, max_value=20, initial=3)
    sample = forms.IntegerField(
        min_value=100,
        max_value=analyses.MAX_CHURN_SAMPLE,
        initial=analyses.CHURN_SAMPLE,
        label=_("Sample of people"),
        help_text=_("Larger is more precise and slower."),
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The last 30 days whose churn days are over, as the API's default.
        end = s.default_churn_end(self.fields["churn_days"].initial)
        self.fields["end"].initial = end
        self.fields["start"].initial = end - timedelta(days=self.days - 1)


def _bound(form_class, request: HttpRequest, **kwargs) -> forms.Form:
    """Bound to the query string over the initial values, so a link that names only some fields
    (say `?indicator=revenue`) opens with the defaults for the others."""
    unbound = form_class(**kwargs)
    values = {name: field.initial for name, field in unbound.fields.items() if field.initial is not None}
    values.update((k, v) for k, v in request.GET.items() if k != "format")
    return form_class(values, **kwargs)


def _cell(text, heat: float | None = None) -> dict:
    return {"text": "" if text is None else str(text), "heat": heat}


def _table_body(table: dict) -> SafeString:
    """The table's rows as HTML. A long table (500 queries, a daily heat map) takes a tenth of the
    time it takes through nested template loops, which were most of such a page's render."""
    rows = []
    for row in table["rows"]:
        cells = []
        for cell in row:
            heat = "" if cell["heat"] is None else f"; background: rgba(65, 118, 144, {float(cell['heat'])})"
            cells.append(f'<td style="text-align: right{heat}">{conditional_escape(cell["text"])}</td>')
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return mark_safe("\n".join(rows))  # noqa: S308 - every cell's text is escaped above


def _percent(value) -> str:
    return "" if value is None else formatting.percent(value)


@admin.register(DailyIndicator)
class IndicatorDashboardAdmin(ReadOnlyAdmin):
    """The changelist is the trends page; the other dashboards hang off it."""

    def get_urls(self):
        # The pages read from the replica when there is one (config/replica.py); the admin's
        # login and permission checks before them read the primary.
        def view(page):
            return self.admin_site.admin_view(reading_from_replica()(page))

        return [
            path("retention/", view(self.retention_view), name="indicators_dashboard_retention"),
            path("search/", view(self.search_view), name="indicators_dashboard_search"),
            path("key-behaviour/", view(self.key_behaviour_view), name="indicators_dashboard_key_behaviour"),
            path("churn/", view(self.churn_view), name="indicators_dashboard_churn"),
            path("", view(self.trends_view), name="indicators_dailyindicator_changelist"),
        ]

    # --- rendering --------------------------------------------------------------------------------

    def _pages(self, current: str) -> list[dict]:
        pages = [
            ("trends", _("Trends"), reverse("admin:indicators_dailyindicator_changelist")),
            ("retention", _("Retention cohorts"), reverse("admin:indicators_dashboard_retention")),
            ("funnels", _("Funnels"), reverse("admin:indicators_funnel_changelist")),
            ("search", _("Searches"), reverse("admin:indicators_dashboard_search")),
            ("key_behaviour", _("Key behaviours"), reverse("admin:indicators_dashboard_key_behaviour")),
            ("churn", _("Churn"), reverse("admin:indicators_dashboard_churn")),
        ]
        return [{"label": label, "url": url, "current": key == current} for key, label, url in pages]

    def render_page(self, request, *, current, title, form=None, table=None, chart=None, summary="", filename="export"):
        if request.GET.get("format") == "csv" and table is not None:
            response = HttpResponse(content_type="text/csv; charset=utf-8")
            response["Content-Disposition"] = f'attachment; filename="{filename}.csv"'
            writer = csv.writer(response)
            writer.writerow(table["headers"])
            for row in table["rows"]:
                writer.writerow([cell["text"] for cell in row])
            return response
        query = request.GET.copy()
        if form is not None and form.is_valid():
            for name in form.fields:
                if name not in query and form.data.get(name) is not None:
                    query[name] = form.data[name]
        query["format"] = "csv"
        return TemplateResponse(
            request,
            "admin/indicators/indicators/page.html",
            {
                **self.admin_site.each_context(request),
                "title": title,
                "opts": self.model._meta,
                "pages": self._pages(current),
                "form": form,
                "table": table,
                "table_body": _table_body(table) if table else "",
                "chart": chart,
                "summary": summary,
                "csv_query": query.urlencode(),
            },
        )

    def _check(self, request) -> None:
        if not self.has_view_permission(request):
            raise PermissionDenied

    # --- pages ------------------------------------------------------------------------------------

    def trends_view(self, request: HttpRequest, extra_context=None) -> HttpResponse:
        self._check(request)
        form = _bound(TrendForm, request)
        table = chart = None
        summary = ""
        if form.is_valid():
            indicator = indicators.get_indicator(form.cleaned_data["indicator"])
            values = indicators.daily_values(
                indicator.key, start=form.cleaned_data["start"], end=form.cleaned_data["end"]
            )
            # Days that have not happened yet have no value (a blank, not 0) in the table, the
            # chart and the total.
            today = datetime.now(UTC).date()  # the rollups' days are UTC days
            values = [(d, None if d > today else v) for d, v in values]
            total = indicators.fold_days(indicator.fold, [v for d, v in values if v is not None])
            fold = indicators.Fold(indicator.fold).label.lower()
            total_text = indicators.value_text(total, indicator.unit)
            summary = gettext("%(indicator)s: %(description)s Over the window (%(fold)s): %(total)s") % {
                "indicator": indicator.label,
                "description": indicator.description,
                "fold": fold,
                "total": total_text,
            }
            table = {
                "headers": [gettext("day"), indicator.key],
                "rows": [[_cell(d.isoformat()), _cell(v)] for d, v in values],
            }
            days = [d for d, _v in values]
            goal_lines = _goal_lines(indicator, days)
            chart = {
                "type": "line",
                "title": gettext("%(indicator)s per day (UTC)") % {"indicator": indicator.label},
                "labels": [d.isoformat() for d in days],
                "datasets": [
                    {
                        "label": str(indicator.label),
                        "data": [None if v is None else float(v) for _d, v in values],
                        "fill": False,
                    },
                    *goal_lines,
                ],
            }
            if goal_lines:
                summary += " " + (
                    gettext("Goal lines: each month's target, as a daily pace (the month's target over its days).")
                    if indicator.fold == "sum"
                    else gettext("Goal lines: each month's target.")
                )
        return self.render_page(
            request,
            current="trends",
            title=_("Indicator trends"),
            form=form,
            table=table,
            chart=chart,
            summary=summary,
            filename="indicator-trend",
        )

    def retention_view(self, request: HttpRequest) -> HttpResponse:
        self._check(request)
        form = _bound(RetentionForm, request)
        table = chart = None
        if form.is_valid():
            data = form.cleaned_data
            cohorts = analyses.retention_cohorts(
                granularity=data["granularity"],
                basis=data["basis"],
                start=data["start"],
                end=data["end"],
                periods=data["periods"],
            )
            period = CohortGranularity(data["granularity"]).label
            headers = [
                gettext("cohort"),
                gettext("size"),
                *[f"{period} {n}" for n in range(1, data["periods"] + 1)],
            ]
            rows = []
            for cohort in cohorts:
                cells = [_cell(cohort["cohort"].isoformat()), _cell(cohort["size"])]
                for period in cohort["retention"]:
                    pct = period["percent"]
                    cells.append(
                        _cell("" if pct is None else f"{pct}", None if pct is None else round(float(pct) / 100, 3))
                    )
                rows.append(cells)
            table = {"headers": headers, "rows": rows}
            chart = {
                "type": "line",
                "title": gettext("Retention (%) by period after the cohort's start"),
                "labels": [str(n) for n in range(1, data["periods"] + 1)],
                "datasets": [
                    {
                        "label": c["cohort"].isoformat(),
                        "data": [None if p["percent"] is None else float(p["percent"]) for p in c["retention"]],
                    }
                    for c in cohorts[-8:]
                ],
            }
        return self.render_page(
            request,
            current="retention",
            title=_("Retention cohorts"),
            form=form,
            table=table,
            chart=chart,
            summary=gettext(
                "Each cell: the share (%) of the cohort active (or ordering, on the purchase basis) in that period."
            ),
            filename="retention-cohorts",
        )

    def search_view(self, request: HttpRequest) -> HttpResponse:
        self._check(request)
        form = _bound(SearchForm, request)
        table = chart = None
        summary = ""
        if form.is_valid():
            data = form.cleaned_data
            totals = analyses.search_report(
                start=data["start"], end=data["end"], zero_results_only=data["zero_results"], limit=500
            )
            rows = totals["queries"]
            summary = gettext("%(searches)s search(es), %(share)s with no results.") % {
                "searches": totals["searches"],
                "share": _percent(totals["zero_result_rate"]) or gettext("none"),
            }
            table = {
                "headers": [
                    gettext("query"),
                    gettext("searches"),
                    gettext("zero results"),
                    gettext("zero-result share"),
                ],
                "rows": [
                    [
                        _cell(r["query"]),
                        _cell(r["searches"]),
                        _cell(r["zero_results"]),
                        _cell(_percent(r["zero_results"] / r["searches"])),
                    ]
                    for r in rows
                ],
            }
            top = rows[:20]
            chart = {
                "type": "bar",
                "indexAxis": "y",
                "title": gettext("Top queries"),
                "labels": [r["query"] for r in top],
                "datasets": [
                    {"label": gettext("searches"), "data": [r["searches"] for r in top]},
                    {"label": gettext("zero results"), "data": [r["zero_results"] for r in top]},
                ],
            }
        return self.render_page(
            request,
            current="search",
            title=_("Searches"),
            form=form,
            table=table,
            chart=chart,
            summary=summary,
            filename="searches",
        )

    def key_behaviour_view(self, request: HttpRequest) -> HttpResponse:
        self._check(request)
        form = _bound(KeyBehaviourForm, request)
        table = chart = None
        summary = ""
        if form.is_valid():
            data = form.cleaned_data
            report = analyses.key_behaviour(
                event_name=data["event"],
                start=data["start"],
                end=data["end"],
                first_days=data["first_days"],
                retained_from=data["retained_from"],
                retained_days=data["retained_days"],
            )
            labels = {
                "did": gettext("did %(event)s") % {"event": report["event_name"]},
                "did_not": gettext("did not %(event)s") % {"event": report["event_name"]},
            }
            table = {
                "headers": [gettext("group"), gettext("users"), gettext("retained"), gettext("retention rate")],
                "rows": [
                    [
                        _cell(labels[g["group"]]),
                        _cell(g["users"]),
                        _cell(g["retained"]),
                        _cell(_percent(g["retention_rate"])),
                    ]
                    for g in report["groups"]
                ],
            }
            p = gettext("n/a") if report["p_value"] is None else formatting.p_value(report["p_value"])
            difference = (
                gettext("n/a") if report["difference"] is None else formatting.uplift_points(report["difference"])
            )
            summary = gettext("Difference %(difference)s; %(test)s p %(p)s.") % {
                "difference": difference,
                "test": TEST_NAMES.get(report["test"], report["test"].replace("_", " ")),
                "p": p if p.startswith("<") else "= " + p,
            } + ("" if report["complete"] else " " + gettext("The last signups' retention days are not over yet."))
            chart = {
                "type": "bar",
                "title": gettext("Retention from day %(start)s for %(days)s day(s)")
                % {"start": data["retained_from"], "days": data["retained_days"]},
                "labels": [labels[g["group"]] for g in report["groups"]],
                "datasets": [
                    {
                        "label": gettext("retention %"),
                        "data": [
                            0 if g["retention_rate"] is None else float(g["retention_rate"]) * 100
                            for g in report["groups"]
                        ],
                    }
                ],
            }
        return self.render_page(
            request,
            current="key_behaviour",
            title=_("Key behaviours"),
            form=form,
            table=table,
            chart=chart,
            summary=summary,
            filename="key-behaviour",
        )

    def churn_view(self, request: HttpRequest) -> HttpResponse:
        self._check(request)
        form = _bound(ChurnForm, request)
        table = chart = None
        summary = ""
        if form.is_valid():
            data = form.cleaned_data
            report = analyses.churn_behaviours(
                start=data["start"],
                end=data["end"],
                churn_days=data["churn_days"],
                last_events=data["last_events"],
                sample=data["sample"],
            )
            rows = report["behaviours"]
            table = {
                "headers": [
                    gettext("event"),
                    gettext("churned"),
                    gettext("share of churned"),
                    gettext("retained"),
                    gettext("share of retained"),
                    gettext("lift"),
                ],
                "rows": [
                    [
                        _cell(r["event_name"]),
                        _cell(r["churned"]),
                        _cell(_percent(r["churned_share"])),
                        _cell(r["retained"]),
                        _cell(_percent(r["retained_share"])),
                        _cell(r["lift"]),
                    ]
                    for r in rows
                ],
            }
            population = report["churned_users"] + report["retained_users"]
            sampled = (
                " " + gettext("Last behaviours of a sample of %(n)s of them.") % {"n": report["sampled_users"]}
                if report["sampled_users"] < population
                else ""
            )
            summary = (
                gettext("%(churned)s churned, %(retained)s retained.")
                % {"churned": report["churned_users"], "retained": report["retained_users"]}
                + sampled
                + ("" if report["complete"] else " " + gettext("The churn days after the window are not over yet."))
            )
            top = rows[:15]
            chart = {
                "type": "bar",
                "indexAxis": "y",
                "title": gettext("Last behaviours: share of churned vs retained people"),
                "labels": [r["event_name"] for r in top],
                "datasets": [
                    {"label": gettext("churned %"), "data": [float(r["churned_share"] or 0) * 100 for r in top]},
                    {"label": gettext("retained %"), "data": [float(r["retained_share"] or 0) * 100 for r in top]},
                ],
            }
        return self.render_page(
            request,
            current="churn",
            title=_("Churn: last behaviours"),
            form=form,
            table=table,
            chart=chart,
            summary=summary,
            filename="churn",
        )


class FunnelStepInline(admin.TabularInline):
    model = FunnelStep
    extra = 3
    fields = ("position", "event_name", "label")


@admin.register(Funnel)
class FunnelAdmin(admin.ModelAdmin):
    list_display = ("name", "window_hours", "steps_text", "analyze_link")
    search_fields = ("name",)
    inlines = [FunnelStepInline]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("steps")

    @admin.display(description=_("steps"))
    def steps_text(self, obj: Funnel) -> str:
        return " → ".join(step.label or step.event_name for step in obj.steps.all())

    @admin.display(description="")
    def analyze_link(self, obj: Funnel) -> str:
        from django.utils.html import format_html

        return format_html(
            '<a href="{}">{}</a>', reverse("admin:indicators_funnel_analyze", args=[obj.pk]), gettext("Analyze")
        )

    def get_urls(self):
        return [
            path(
                "<int:pk>/analyze/",
                self.admin_site.admin_view(reading_from_replica()(self.analyze_view)),
                name="indicators_funnel_analyze",
            ),
            *super().get_urls(),
        ]

    def analyze_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        funnel = selectors.funnel_with_steps(funnel_id=pk)
        if funnel is None:
            from django.http import Http404

            raise Http404(gettext("No such funnel."))
        form = _bound(FunnelWindowForm, request)
        table = chart = None
        if form.is_valid():
            report = analyses.funnel_report(
                funnel=funnel, start=form.cleaned_data["start"], end=form.cleaned_data["end"]
            )
            steps = report["steps"]
            table = {
                "headers": [
                    gettext("step"),
                    gettext("event"),
                    gettext("people"),
                    gettext("from first step"),
                    gettext("from previous step"),
                ],
                "rows": [
                    [
                        _cell(f"{st['position']}. {st['label']}"),
                        _cell(st["event_name"]),
                        _cell(st["users"]),
                        _cell(_percent(st["conversion_from_first"])),
                        _cell(_percent(st["conversion_from_previous"])),
                    ]
                    for st in steps
                ],
            }
            chart = {
                "type": "bar",
                "title": gettext("%(funnel)s: people at each step (within %(hours)s h of the first)")
                % {"funnel": funnel.name, "hours": funnel.window_hours},
                "labels": [f"{st['position']}. {st['label']}" for st in steps],
                "datasets": [{"label": gettext("people"), "data": [st["users"] for st in steps]}],
            }
        dashboards = admin.site._registry[DailyIndicator]
        return dashboards.render_page(
            request,
            current="funnels",
            title=gettext("Funnel: %(name)s") % {"name": funnel.name},
            form=form,
            table=table,
            chart=chart,
            summary=funnel.description,
            filename=f"funnel-{funnel.pk}",
        )
