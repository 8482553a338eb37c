"""What operators see of customer value: tiers and scoring schemes they edit, every profile's
scores with filters, the distribution (80/20) and tier movements, account managers and runs."""

from __future__ import annotations

from datetime import datetime, time, timedelta

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from access.readonly import ReadOnlyAdmin
from config.errors import DomainError
from crm import pages, selectors, services
from crm.models import (
    AccountManager,
    CustomerValue,
    LifecycleStage,
    RecomputeRun,
    RfmSegment,
    ScoringScheme,
    ValueChange,
    ValueTier,
)


@admin.register(ScoringScheme)
class ScoringSchemeAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "is_active",
        "method",
        "window_days",
        "reference_at",
        "new_days",
        "silent_days",
        "churned_days",
        "reactivated_days",
        "updated_at",
    ]
    list_filter = ["is_active", "method"]
    actions = ["make_active", "recompute_now"]
    fieldsets = [
        (None, {"fields": ["name", "is_active"]}),
        ("RFM", {"fields": ["window_days", "reference_at", "method"]}),
        (
            _("Thresholds (only with operator-set thresholds)"),
            {
                "fields": ["r_thresholds", "f_thresholds", "m_thresholds"],
                "description": _(
                    "Four ascending boundaries each, comma-separated. Recency in days: at most the "
                    "first scores 5 ... over the fourth scores 1. Frequency and spend: at least the first "
                    "scores 2 ... at least the fourth scores 5."
                ),
            },
        ),
        (_("Lifecycle stages"), {"fields": ["new_days", "silent_days", "churned_days", "reactivated_days"]}),
    ]

    def save_model(self, request, obj, form, change):
        services.save_scoring_scheme(scheme=obj, changed=form.changed_data, actor=request.user)

    def delete_model(self, request, obj):
        services.delete_scoring_scheme(scheme=obj, actor=request.user)

    def delete_queryset(self, request, queryset):
        for scheme in queryset:
            services.delete_scoring_scheme(scheme=scheme, actor=request.user)

    @admin.action(description=_("Make the selected scheme the active one"), permissions=["change"])
    def make_active(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, gettext("Select exactly one scheme."), messages.ERROR)
            return
        scheme = services.activate_scoring_scheme(scheme_id=queryset.get().pk, actor=request.user)
        self.message_user(
            request, gettext("%(scheme)s is now active; it applies from the next recompute.") % {"scheme": scheme.name}
        )

    @admin.action(description=_("Recompute every profile's value now"), permissions=["recompute"])
    def recompute_now(self, request, queryset):
        _queue_recompute(self, request)

    def has_recompute_permission(self, request) -> bool:
        return request.user.has_perm("crm.recompute_values")


class TierCountsMixin:
    def get_queryset(self, request):
        counts = CustomerValue.objects.filter(tier=OuterRef("pk")).order_by().values("tier").annotate(n=Count("*"))
        return super().get_queryset(request).annotate(customers=Coalesce(Subquery(counts.values("n")), 0))


@admin.register(ValueTier)
class ValueTierAdmin(TierCountsMixin, admin.ModelAdmin):
    list_display = [
        "name",
        "slug",
        "rank",
        "applies_to",
        "conditions",
        "gets_account_manager",
        "profile_count",
    ]
    list_filter = ["applies_to", "gets_account_manager"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    fieldsets = [
        (None, {"fields": ["name", "slug", "rank", "applies_to", "description", "gets_account_manager"]}),
        (
            _("Conditions (all must hold; empty means any)"),
            {"fields": ["segments", ("r_min", "r_max"), ("f_min", "f_max"), ("m_min", "m_max")]},
        ),
    ]

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if db_field.name == "segments":
            return forms.TypedMultipleChoiceField(
                choices=RfmSegment.choices,
                required=False,
                widget=forms.CheckboxSelectMultiple,
                help_text=_("Any of these segments; none ticked means any segment."),
            )
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    @admin.display(description=_("conditions"))
    def conditions(self, obj: ValueTier) -> str:
        parts = []
        if obj.segments:
            parts.append(" or ".join(obj.segments))
        for score in "rfm":
            low, high = getattr(obj, f"{score}_min"), getattr(obj, f"{score}_max")
            if low is not None or high is not None:
                parts.append(f"{score.upper()} {low or 1}-{high or 5}")
        return "; ".join(parts) or (gettext("any customer") if obj.applies_to == "customers" else gettext("no orders"))

    @admin.display(description=_("profiles"), ordering="customers")
    def profile_count(self, obj) -> HttpResponse:
        url = reverse("admin:crm_customervalue_changelist") + f"?tier__id__exact={obj.pk}"
        return format_html('<a href="{}">{}</a>', url, obj.customers)

    def save_model(self, request, obj, form, change):
        services.save_value_tier(tier=obj, changed=form.changed_data, actor=request.user)

    def delete_model(self, request, obj):
        services.delete_value_tier(tier=obj, actor=request.user)

    def delete_queryset(self, request, queryset):
        for tier in queryset:
            services.delete_value_tier(tier=tier, actor=request.user)


@admin.register(AccountManager)
class AccountManagerAdmin(admin.ModelAdmin):
    list_display = ["__str__", "user", "phone", "capacity", "load", "is_active"]
    list_editable = ["capacity", "is_active"]
    list_filter = ["is_active"]
    search_fields = ["user__username", "user__first_name", "user__last_name", "user__email"]
    autocomplete_fields = ["user"]
    list_select_related = ["user"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(n_customers=Count("customers"))

    @admin.display(description=_("customers (load)"), ordering="n_customers")
    def load(self, obj) -> HttpResponse:
        url = reverse("admin:crm_customervalue_changelist") + f"?account_manager__id__exact={obj.pk}"
        return format_html('<a href="{}">{} / {}</a>', url, obj.n_customers, obj.capacity)

    def save_model(self, request, obj, form, change):
        services.save_account_manager(manager=obj, changed=form.changed_data, actor=request.user)


class ReassignForm(forms.Form):
    manager = forms.ModelChoiceField(
        queryset=AccountManager.objects.filter(is_active=True).select_related("user"),
        required=False,
        empty_label=_("(nobody: release these customers)"),
    )


class RfmScoreFilter(admin.SimpleListFilter):
    """R, F or M score = n: `?r=5`."""

    score = "r"

    def lookups(self, request, model_admin):
        return [(str(n), str(n)) for n in range(5, 0, -1)]

    def queryset(self, request, queryset):
        if self.value() in {"1", "2", "3", "4", "5"}:
            return queryset.filter(**{self.score: int(self.value())})
        return queryset


def score_filter(letter: str, label: str) -> type[RfmScoreFilter]:
    return type(
        f"{letter.upper()}ScoreFilter", (RfmScoreFilter,), {"score": letter, "title": label, "parameter_name": letter}
    )


@admin.register(CustomerValue)
class CustomerValueAdmin(admin.ModelAdmin):
    change_list_template = "admin/crm/customervalue/change_list.html"
    list_display = [
        "profile_link",
        "tier",
        "segment",
        "r",
        "f",
        "m",
        "recency",
        "frequency",
        "monetary",
        "lifecycle",
        "account_manager",
        "computed_at",
    ]
    list_filter = [
        "tier",
        "segment",
        "lifecycle",
        ("account_manager", admin.RelatedOnlyFieldListFilter),
        score_filter("r", _("recency score")),
        score_filter("f", _("frequency score")),
        score_filter("m", _("spend score")),
    ]
    search_fields = ["profile__user_id", "profile__name"]
    search_help_text = _("Exact or partial user id, or name.")
    list_select_related = ["profile", "tier", "account_manager__user"]
    ordering = ["-monetary"]
    actions = ["reassign_account_manager"]
    readonly_fields = [f.name for f in CustomerValue._meta.fields if f.name != "account_manager"] + ["recency"]
    show_full_result_count = False

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # values come from the recompute; managers change by the audited action

    def has_reassign_account_manager_permission(self, request) -> bool:
        return request.user.has_perm("crm.reassign_account_manager")

    def get_queryset(self, request):
        return super().get_queryset(request).with_recency().order_by("-monetary", "profile_id")

    @admin.display(description=_("recency days"), ordering="recency_days")
    def recency(self, obj: CustomerValue) -> int | None:
        return obj.recency_days

    @admin.display(description=_("profile"), ordering="profile__user_id")
    def profile_link(self, obj: CustomerValue) -> HttpResponse:
        url = reverse("admin:profiles_profile_change", args=[obj.profile_id])
        return format_html('<a href="{}">{}</a>', url, obj.profile.user_id)

    @admin.action(
        description=_("Give the selected customers to another account manager"),
        permissions=["reassign_account_manager"],
    )
    def reassign_account_manager(self, request, queryset):
        form = ReassignForm(request.POST if "apply" in request.POST else None)
        if "apply" in request.POST and form.is_valid():
            try:
                moved = services.reassign_account_manager(
                    profile_ids=list(queryset.values_list("profile_id", flat=True)),
                    manager=form.cleaned_data["manager"],
                    actor=request.user,
                )
            except DomainError as exc:
                self.message_user(request, exc.detail, messages.ERROR)
                return None
            self.message_user(request, gettext("%(n)s customer(s) reassigned.") % {"n": moved})
            return None
        return TemplateResponse(
            request,
            "admin/crm/reassign.html",
            {
                **self.admin_site.each_context(request),
                "title": _("Reassign account manager"),
                "form": form,
                "queryset": queryset.select_related("profile", "account_manager__user")[:200],
                "count": queryset.count(),
                "selected": request.POST.getlist(admin.helpers.ACTION_CHECKBOX_NAME),
                "select_across": request.POST.get("select_across", "0"),
                "opts": self.model._meta,
            },
        )

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("distribution/", view(self.distribution_view), name="crm_customervalue_distribution"),
            path("movements/", view(self.movements_view), name="crm_customervalue_movements"),
            path("recompute/", view(self.recompute_view), name="crm_customervalue_recompute"),
            *super().get_urls(),
        ]

    def changelist_view(self, request, extra_context=None):
        latest = RecomputeRun.objects.order_by("-requested_at").first()
        extra = {
            "latest_run": latest,
            "may_recompute": request.user.has_perm("crm.recompute_values"),
            **(extra_context or {}),
        }
        return super().changelist_view(request, extra_context=extra)

    def distribution_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        data = selectors.distribution()
        charts = {
            "tiers": {
                "labels": [row["label"] for row in data["tiers"]],
                "counts": [row["count"] for row in data["tiers"]],
                "revenue": [round(row["revenue_share"] * 100, 2) for row in data["tiers"]],
            },
            "segments": {
                "labels": [row["label"] for row in data["segments"]],
                "counts": [row["count"] for row in data["segments"]],
                "revenue": [round(row["revenue_share"] * 100, 2) for row in data["segments"]],
            },
            "lifecycle": {
                "labels": [row["label"] for row in data["lifecycle"]],
                "counts": [row["count"] for row in data["lifecycle"]],
            },
            "lorenz": {
                "labels": [f"{row['decile'] * 10}%" for row in data["lorenz"]],
                "shares": [round(row["share"] * 100, 2) for row in data["lorenz"]],
            },
        }
        return TemplateResponse(
            request,
            "admin/crm/distribution.html",
            {
                **self.admin_site.each_context(request),
                "title": _("Customer value distribution"),
                "opts": self.model._meta,
                "data": data,
                "charts": charts,
                # The charts' titles and legends, in the reader's language.
                "chart_texts": {
                    "cumulative": gettext("cumulative share of revenue (%)"),
                    "lorenz": gettext("Revenue by customer decile, biggest spenders first"),
                    "tiers": gettext("Tiers"),
                    "segments": gettext("RFM segments"),
                    "lifecycle": gettext("Lifecycle stages"),
                    "profiles": gettext("profiles"),
                    "customers": gettext("customers"),
                    "revenue_share": gettext("share of revenue (%)"),
                },
                "latest_run": RecomputeRun.objects.filter(status="done").order_by("-finished_at").first(),
                "panels": pages.tier_panels(),
            },
        )

    def movements_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        form = MovementForm(request.GET or None)
        result = None
        if form.is_valid():
            start = _end_of_day(form.cleaned_data["start"])
            end = _end_of_day(form.cleaned_data["end"])
            result = selectors.tier_movements(start=start, end=end)
            result["rows"] = [
                {"label": tier["label"], "key": tier["key"], "cells": cells, "total": sum(cells)}
                for tier, cells in zip(result["tiers"], result["matrix"], strict=True)
            ]
        return TemplateResponse(
            request,
            "admin/crm/movements.html",
            {
                **self.admin_site.each_context(request),
                "title": _("Tier movements"),
                "opts": self.model._meta,
                "form": form,
                "result": result,
            },
        )

    def recompute_view(self, request: HttpRequest) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseRedirect(reverse("admin:crm_customervalue_changelist"))
        if not request.user.has_perm("crm.recompute_values"):
            raise PermissionDenied
        _queue_recompute(self, request)
        return HttpResponseRedirect(reverse("admin:crm_recomputerun_changelist"))


def _end_of_day(day) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.max))


def _queue_recompute(model_admin: admin.ModelAdmin, request: HttpRequest) -> None:
    try:
        run = services.request_recompute(requested_by=request.user)
    except DomainError as exc:
        model_admin.message_user(request, exc.detail, messages.ERROR)
        return
    model_admin.message_user(
        request, gettext("Recompute %(run)s queued; its progress shows under Recompute runs.") % {"run": run.pk}
    )


class MovementForm(forms.Form):
    start = forms.DateField(
        label=_("Start"), widget=forms.DateInput(attrs={"type": "date"}), help_text=_("Tiers at the end of this day")
    )
    end = forms.DateField(
        label=_("End"), widget=forms.DateInput(attrs={"type": "date"}), help_text=_("... against the end of this day")
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        today = timezone.localdate()
        self.fields["start"].initial = today.replace(day=1) - timedelta(days=1)
        self.fields["end"].initial = today

    def clean(self):
        data = super().clean()
        if data.get("start") and data.get("end") and data["start"] > data["end"]:
            raise forms.ValidationError(gettext("The start must not be after the end."))
        return data


def known_values() -> list[tuple[str, str]]:
    """What a change can go from or to: tier slugs, stages and segments (a fixed list, where a
    DISTINCT over the whole history would be slow on a large table)."""
    tiers = [(t.slug, gettext("tier: %(name)s") % {"name": t.name}) for t in ValueTier.objects.all()]
    stages = [(v, gettext("stage: %(name)s") % {"name": label}) for v, label in LifecycleStage.choices]
    segments = [(v, gettext("segment: %(name)s") % {"name": label}) for v, label in RfmSegment.choices]
    return [("", gettext("(none)")), *tiers, *stages, *segments]


class FromValueFilter(admin.SimpleListFilter):
    title = _("from")
    parameter_name = "from"
    field = "from_value"

    def lookups(self, request, model_admin):
        return [("~" if value == "" else value, label) for value, label in known_values()]

    def queryset(self, request, queryset):
        if self.value() is None:
            return queryset
        return queryset.filter(**{self.field: "" if self.value() == "~" else self.value()})


class ToValueFilter(FromValueFilter):
    title = _("to")
    parameter_name = "to"
    field = "to_value"


@admin.register(ValueChange)
class ValueChangeAdmin(ReadOnlyAdmin):
    """Operators count "moved from core to ordinary this month" here: what = tier, from = core,
    to = ordinary, date "this month"; the count shows above the list."""

    list_display = ["at", "profile_link", "what", "from_value", "to_value", "run"]
    list_filter = ["what", FromValueFilter, ToValueFilter, ("at", admin.DateFieldListFilter)]
    show_full_result_count = False
    search_fields = ["profile__user_id"]
    list_select_related = ["profile"]
    ordering = ["-at", "-id"]

    @admin.display(description=_("profile"), ordering="profile__user_id")
    def profile_link(self, obj: ValueChange) -> HttpResponse:
        url = reverse("admin:profiles_profile_change", args=[obj.profile_id])
        return format_html('<a href="{}">{}</a>', url, obj.profile.user_id)


@admin.register(RecomputeRun)
class RecomputeRunAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "status",
        "requested_at",
        "requested_by",
        "duration",
        "reference_at",
        "window_days",
        "profiles",
        "customers",
        "changes",
        "managers_assigned",
        "unassigned_for_capacity",
        "reason",
    ]
    list_filter = ["status"]
    readonly_fields = [f.name for f in RecomputeRun._meta.fields]
    actions = ["recompute_now", "retry"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_recompute_permission(self, request) -> bool:
        return request.user.has_perm("crm.recompute_values")

    @admin.display(description=_("seconds"))
    def duration(self, obj: RecomputeRun) -> str:
        return f"{obj.duration_seconds:.1f}" if obj.duration_seconds is not None else "—"

    @admin.action(description=_("Recompute every profile's value now"), permissions=["recompute"])
    def recompute_now(self, request, queryset):
        _queue_recompute(self, request)

    @admin.display(description=_("reason"))
    def reason(self, obj: RecomputeRun) -> str:
        return (obj.error[:120] + "…") if len(obj.error) > 120 else (obj.error or "—")

    @admin.action(description=_("Retry selected failed runs"), permissions=["recompute"])
    def retry(self, request, queryset):
        retried = [
            services.retry_recompute(run_id=run.pk, actor=request.user) for run in queryset.filter(status="failed")
        ]
        self.message_user(request, gettext("%(n)s run(s) queued again.") % {"n": len(retried)})
        if skipped := queryset.exclude(status="failed").count():
            self.message_user(
                request, gettext("%(n)s not failed: left alone.") % {"n": skipped}, level=messages.WARNING
            )

    def changelist_view(self, request, extra_context=None):
        # The action needs no selection: run it with an empty one.
        if request.method == "POST" and request.POST.get("action") == "recompute_now":
            if not self.has_recompute_permission(request):
                raise PermissionDenied
            _queue_recompute(self, request)
            return HttpResponseRedirect(request.get_full_path())
        return super().changelist_view(request, extra_context=extra_context)


def _add_value_filters_to_profile_admin() -> None:
    """Operators filter the profile list by tier, RFM segment and lifecycle stage. The profile
    admin belongs to `profiles`, which cannot know about crm, so crm extends it here."""
    from profiles.models import Profile

    profile_admin = admin.site._registry.get(Profile)
    if profile_admin is None:
        return
    extra = [("value__tier", admin.RelatedOnlyFieldListFilter), "value__segment", "value__lifecycle"]
    profile_admin.list_filter = [*profile_admin.list_filter, *[f for f in extra if f not in profile_admin.list_filter]]


_add_value_filters_to_profile_admin()
