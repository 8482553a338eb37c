"""What operators see of communities: accounts and groups to assign, members and their history,
the funnel with its weekly cohorts, group health, competitor apps, and the contribution ranking
with each score's breakdown, sources, monthly history and CSV export."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from access.readonly import ReadOnlyAdmin
from community import exports, selectors, services
from community.models import (
    CampaignCredit,
    CommunityGroup,
    Contact,
    ContributionScore,
    Dimension,
    Membership,
    MembershipChange,
    OperatorAccount,
    ScoreDimension,
    ScoreRun,
    ScoreSubject,
)
from config import formatting
from config.errors import DomainError


class AssignedFilter(admin.SimpleListFilter):
    title = _("assignment")
    parameter_name = "assigned"

    def lookups(self, request, model_admin):
        return [("no", _("Unassigned")), ("yes", _("Assigned"))]

    def queryset(self, request, queryset):
        if self.value() == "no":
            return queryset.filter(operator__isnull=True)
        if self.value() == "yes":
            return queryset.filter(operator__isnull=False)
        return queryset


class _AssignableAdmin(admin.ModelAdmin):
    """Accounts and groups: events create them unassigned; an admin picks the operator (in the
    list or the form), which goes through the audited service."""

    list_display = ["external_id", "name", "operator", "first_seen_at", "created_at"]
    list_editable = ["operator"]
    list_filter = [AssignedFilter, ("operator", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["external_id", "name", "operator__username"]
    readonly_fields = ["first_seen_at", "created_at"]
    list_select_related = ["operator"]
    assign = staticmethod(services.assign_account)
    id_argument = "account_id"

    def save_model(self, request, obj, form, change) -> None:
        # The operator is set through the service (audited, staff only); the rest saves as usual.
        operator_changed = "operator" in form.changed_data
        operator_id = obj.operator_id
        if operator_changed:
            obj.operator_id = type(obj).objects.values_list("operator_id", flat=True).get(pk=obj.pk) if change else None
        super().save_model(request, obj, form, change)
        if operator_changed:
            try:
                self.assign(**{self.id_argument: obj.pk}, operator_id=operator_id, actor=request.user)
            except DomainError as exc:
                self.message_user(request, str(exc), level=messages.ERROR)


@admin.register(OperatorAccount)
class OperatorAccountAdmin(_AssignableAdmin):
    list_display = [*_AssignableAdmin.list_display, "contacts"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(contact_count=Count("contacts"))

    @admin.display(description=_("contacts"), ordering="contact_count")
    def contacts(self, obj: OperatorAccount) -> int:
        return obj.contact_count


class RangeForm(forms.Form):
    start = forms.DateField(label=_("Start"), required=False, widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(
        label=_("End"), required=False, widget=forms.DateInput(attrs={"type": "date"}), help_text=_("exclusive")
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        end = data.get("end") or datetime.now(tz=UTC).date() + timedelta(days=1)
        start = data.get("start") or end - timedelta(days=90)
        if start >= end:
            raise forms.ValidationError(gettext("The end must be after the start."))
        if (end - start).days > 366:
            raise forms.ValidationError(gettext("At most 366 days at a time."))
        data["start_at"] = datetime(start.year, start.month, start.day, tzinfo=UTC)
        data["end_at"] = datetime(end.year, end.month, end.day, tzinfo=UTC)
        return data


class WindowForm(forms.Form):
    days = forms.IntegerField(label=_("Days"), required=False, min_value=1, max_value=365, initial=30)


@admin.register(CommunityGroup)
class CommunityGroupAdmin(_AssignableAdmin):
    list_display = [*_AssignableAdmin.list_display, "members", "health"]
    assign = staticmethod(services.assign_group)
    id_argument = "group_id"

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(member_count=Count("memberships"))

    @admin.display(description=_("members (ever)"), ordering="member_count")
    def members(self, obj: CommunityGroup) -> int:
        return obj.member_count

    @admin.display(description=_("health"))
    def health(self, obj: CommunityGroup) -> str:
        return format_html('<a href="{}?group={}">{}</a>', reverse("admin:community_health"), obj.pk, gettext("health"))

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("funnel/", view(self.funnel_view), name="community_funnel"),
            path("health/", view(self.health_view), name="community_health"),
            path("competitor-apps/", view(self.apps_view), name="community_apps"),
            *super().get_urls(),
        ]

    def _page(self, request: HttpRequest, template: str, title: str, **context: Any) -> TemplateResponse:
        return TemplateResponse(
            request,
            f"admin/community/{template}",
            {**self.admin_site.each_context(request), "title": title, "opts": self.model._meta, **context},
        )

    def funnel_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        form = RangeForm(request.GET or {})
        if not form.is_valid():
            return self._page(request, "funnel.html", gettext("Community funnel"), form=form)
        start, end = form.cleaned_data["start_at"], form.cleaned_data["end_at"]
        funnel = selectors.community_funnel(start=start, end=end)
        cohorts = selectors.contact_cohorts(start=start, end=end)
        charts = {
            "funnel": {
                "labels": [s["label"] for s in funnel["overall"]],
                "counts": [s["count"] for s in funnel["overall"]],
            },
            "cohorts": {
                "labels": [formatting.local_date(c["week"]) for c in cohorts],
                "active": [round((c["active_rate"] or 0) * 100, 1) for c in cohorts],
                "again": [round((c["bought_again_rate"] or 0) * 100, 1) for c in cohorts],
            },
        }
        return self._page(
            request,
            "funnel.html",
            gettext("Community funnel"),
            form=form,
            funnel=funnel,
            cohorts=cohorts,
            charts=charts,
        )

    def health_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        form = WindowForm(request.GET or None)
        days = (form.cleaned_data.get("days") if form.is_valid() else None) or 30
        group_ids = None
        if (group := request.GET.get("group", "")).isdigit():
            group_ids = [int(group)]
        rows = selectors.group_health(as_of=datetime.now(tz=UTC), days=days, group_ids=group_ids)
        return self._page(request, "health.html", gettext("Group health"), form=form, rows=rows, days=days)

    def apps_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        form = WindowForm(request.GET or None)
        days = (form.cleaned_data.get("days") if form.is_valid() else None) or 30
        data = selectors.competitor_apps(as_of=datetime.now(tz=UTC), days=days)
        return self._page(request, "apps.html", gettext("Competitor apps"), form=form, data=data)


@admin.register(Contact)
class ContactAdmin(ReadOnlyAdmin):
    list_display = ["profile", "account", "added_at", "channel"]
    list_filter = ["channel", ("account", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["profile__user_id", "account__external_id"]
    list_select_related = ["profile", "account"]
    date_hierarchy = "added_at"


@admin.register(Membership)
class MembershipAdmin(ReadOnlyAdmin):
    list_display = [
        "profile",
        "group",
        "is_member",
        "first_joined_at",
        "joins",
        "leaves",
        "messages",
        "last_message_at",
    ]
    list_filter = ["is_member", ("group", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["profile__user_id", "group__external_id"]
    list_select_related = ["profile", "group"]


@admin.register(MembershipChange)
class MembershipChangeAdmin(ReadOnlyAdmin):
    list_display = ["at", "profile", "group", "action"]
    list_filter = ["action", ("group", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["profile__user_id", "group__external_id"]
    list_select_related = ["profile", "group"]
    date_hierarchy = "at"


@admin.register(CampaignCredit)
class CampaignCreditAdmin(admin.ModelAdmin):
    list_display = ["campaign", "operator"]
    autocomplete_fields: list[str] = []
    raw_id_fields = ["campaign"]


@admin.register(ScoreDimension)
class ScoreDimensionAdmin(admin.ModelAdmin):
    list_display = ["key", "label", "weight", "description"]
    list_editable = ["weight"]
    readonly_fields = ["key"]

    @admin.display(description=_("dimension"))
    def label(self, obj: ScoreDimension) -> str:
        return obj.get_key_display()

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def changelist_view(self, request, extra_context=None):
        services.ensure_dimensions()  # the fixed set is there before anyone edits a weight
        return super().changelist_view(request, extra_context=extra_context)

    def save_model(self, request, obj, form, change) -> None:
        services.set_dimension_weight(key=obj.key, weight=obj.weight, actor=request.user)


class ScoreRunForm(forms.Form):
    month = forms.CharField(label=_("Month"), help_text=_("YYYY-MM"), max_length=7)

    def clean_month(self) -> date:
        from rest_framework.exceptions import ValidationError

        from community.serializers import parse_month

        try:
            return parse_month(self.cleaned_data["month"])
        except ValidationError:
            raise forms.ValidationError(gettext("A month as YYYY-MM, e.g. 2026-05.")) from None


@admin.display(description=_("month"), ordering="month")
def score_month(obj: ScoreRun | ContributionScore) -> str:
    return formatting.month_label(obj.month)


@admin.register(ScoreRun)
class ScoreRunAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        score_month,
        "status",
        "requested_at",
        "requested_by",
        "finished_at",
        "operators",
        "teams",
        "reason",
    ]
    list_filter = ["status", "month"]
    actions = ["retry"]
    change_list_template = "admin/community/scorerun/change_list.html"

    @admin.display(description=_("reason"))
    def reason(self, obj: ScoreRun) -> str:
        return (obj.error[:120] + "…") if len(obj.error) > 120 else (obj.error or "—")

    def has_run_permission(self, request) -> bool:
        return request.user.has_perm("community.add_scorerun")

    @admin.action(description=_("Retry selected failed runs"), permissions=["run"])
    def retry(self, request, queryset):
        retried = [
            services.retry_score_run(run_id=run.pk, actor=request.user) for run in queryset.filter(status="failed")
        ]
        self.message_user(request, gettext("%(n)d run(s) queued again.") % {"n": len(retried)})
        if skipped := queryset.exclude(status="failed").count():
            self.message_user(
                request, gettext("%(n)d not failed: left alone.") % {"n": skipped}, level=messages.WARNING
            )

    def get_urls(self):
        return [
            path("run/", self.admin_site.admin_view(self.run_view), name="community_scorerun_run"),
            *super().get_urls(),
        ]

    def run_view(self, request: HttpRequest) -> HttpResponse:
        if request.method != "POST" or not self.has_run_permission(request):
            raise PermissionDenied
        form = ScoreRunForm(request.POST)
        if form.is_valid():
            try:
                run = services.request_score_run(month=form.cleaned_data["month"], requested_by=request.user)
                self.message_user(
                    request,
                    gettext("Scores of %(month)s queued (run %(run)s).")
                    % {"month": formatting.month_label(run.month), "run": run.pk},
                )
            except DomainError as exc:
                self.message_user(request, str(exc), level=messages.ERROR)
        else:
            self.message_user(request, "; ".join(form.errors["month"]), level=messages.ERROR)
        return HttpResponseRedirect(reverse("admin:community_scorerun_changelist"))

    def changelist_view(self, request, extra_context=None):
        today = datetime.now(tz=UTC).date()
        extra = {"may_run": self.has_run_permission(request), "this_month": f"{today:%Y-%m}"}
        return super().changelist_view(request, extra_context={**extra, **(extra_context or {})})


@admin.register(ContributionScore)
class ContributionScoreAdmin(ReadOnlyAdmin):
    """The ranking: one month's scores, best first, a column per dimension; a score's page shows
    its breakdown, the sources of each dimension and its monthly history."""

    list_display = ["rank", "name", "subject", score_month, "members", "score", *[f"dim_{d}" for d in Dimension.values]]
    list_display_links = ["rank", "name"]
    list_filter = ["month", "subject"]
    ordering = ["-month", "subject", "rank"]
    list_select_related = ["operator", "team"]
    actions = ["export_csv"]
    change_list_template = "admin/community/contributionscore/change_list.html"

    @admin.display(description=_("operator / team"))
    def name(self, obj: ContributionScore) -> str:
        return obj.subject_name

    @admin.action(description=_("Export selected as CSV"))
    def export_csv(self, request, queryset: QuerySet) -> HttpResponse:
        return exports.scores_csv_response(
            queryset.select_related("operator", "team").order_by("month", "subject", "rank"), readable=True
        )

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("export.csv", view(self.export_view), name="community_contributionscore_export"),
            *super().get_urls(),
        ]

    def export_view(self, request: HttpRequest) -> HttpResponse:
        """The whole filtered ranking as CSV (the list's filters apply)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        queryset = self.get_queryset(request).select_related("operator", "team")
        for key in ("month", "subject"):
            if value := request.GET.get(f"{key}__exact") or request.GET.get(key):
                queryset = queryset.filter(**{key: value})
        return exports.scores_csv_response(queryset.order_by("-month", "subject", "rank"), readable=True)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        score = self.get_queryset(request).select_related("operator", "team", "run").filter(pk=object_id).first()
        if score is None or not self.has_view_permission(request, score):
            return super().change_view(request, object_id, form_url, extra_context)
        same = {"operator": score.operator} if score.subject == ScoreSubject.OPERATOR else {"team": score.team}
        history = list(ContributionScore.objects.filter(subject=score.subject, **same).order_by("month"))
        dimensions = [
            {"key": d, "label": Dimension(d).label, **score.breakdown.get(d, {}), "sources": score.sources.get(d, [])}
            for d in Dimension.values
        ]
        return TemplateResponse(
            request,
            "admin/community/score_detail.html",
            {
                **self.admin_site.each_context(request),
                "title": f"{score.subject_name}: {formatting.month_label(score.month)}",
                "opts": self.model._meta,
                "score": score,
                "dimensions": dimensions,
                "members": score.sources.get("members", []),
                "history": history,
                "charts": {
                    "labels": [formatting.month_label(h.month) for h in history],
                    "scores": [float(h.score) for h in history],
                },
            },
        )


def _dimension_column(key: str):
    def column(obj: ContributionScore) -> str:
        part = obj.breakdown.get(key) or {}
        if part.get("percentile") is None:
            return "—"
        return f"{part['raw']} (p{part['percentile']:.0f})"

    column.short_description = Dimension(key).label  # type: ignore[attr-defined]
    return column


for _key in Dimension.values:
    setattr(ContributionScoreAdmin, f"dim_{_key}", staticmethod(_dimension_column(_key)))
