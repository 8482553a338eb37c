"""What operators see of predictions: the settings and predicted-value tiers they edit, every
customer's predictions, tier history, and the runs with the models' quality drawn as charts
(holdout calibration of purchases, churn AUC, calibration and most telling features)."""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from access.readonly import ReadOnlyAdmin
from access.services import record_audit
from config import formatting
from predictions import selectors, services
from predictions.models import PredictedTier, Prediction, PredictionChange, PredictionRun, PredictionSettings


def _queue_run(model_admin: admin.ModelAdmin, request: HttpRequest) -> None:
    run = services.request_run(requested_by=request.user)
    model_admin.message_user(
        request, gettext("Prediction run %(run)s queued; its progress shows under Prediction runs.") % {"run": run.pk}
    )


@admin.register(PredictionSettings)
class PredictionSettingsAdmin(admin.ModelAdmin):
    list_display = ["__str__", "horizon_days", "churn_threshold", "churn_tag", "updated_at"]

    def has_add_permission(self, request) -> bool:
        return not PredictionSettings.objects.exists()

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        record_audit(
            actor=request.user, action="predictions.settings_changed", obj=obj, details={"changed": form.changed_data}
        )


@admin.register(PredictedTier)
class PredictedTierAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "rank", "conditions", "customers"]
    prepopulated_fields = {"slug": ["name"]}

    def get_queryset(self, request):
        counts = Prediction.objects.filter(tier=OuterRef("pk")).order_by().values("tier").annotate(n=Count("*"))
        return super().get_queryset(request).annotate(n=Coalesce(Subquery(counts.values("n")), 0))

    @admin.display(description=_("conditions"))
    def conditions(self, obj: PredictedTier) -> str:
        parts = []
        if obj.min_value_percentile is not None:
            parts.append(gettext("predicted value ≥ p%(n)s") % {"n": obj.min_value_percentile})
        if obj.min_past_value_percentile is not None:
            parts.append(gettext("spend so far ≥ p%(n)s") % {"n": obj.min_past_value_percentile})
        if obj.max_p_alive is not None:
            parts.append(gettext("P(alive) ≤ %(p)s") % {"p": f"{obj.max_p_alive:g}"})
        if obj.min_churn_risk is not None:
            parts.append(gettext("churn risk ≥ %(risk)s") % {"risk": obj.min_churn_risk})
        return ", ".join(parts) or "—"

    @admin.display(description=_("customers"), ordering="n")
    def customers(self, obj) -> HttpResponse:
        url = reverse("admin:predictions_prediction_changelist") + f"?tier__id__exact={obj.pk}"
        return format_html('<a href="{}">{}</a>', url, obj.n)

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        record_audit(
            actor=request.user,
            action="predictions.tier_changed" if change else "predictions.tier_created",
            obj=obj,
            details={"changed": form.changed_data},
        )

    def delete_model(self, request, obj):
        record_audit(actor=request.user, action="predictions.tier_deleted", obj=obj)
        super().delete_model(request, obj)


class ChurnRiskFilter(admin.SimpleListFilter):
    title = _("churn risk")
    parameter_name = "risk"
    BANDS = {"high": (70, 101), "medium": (40, 70), "low": (0, 40)}

    def lookups(self, request, model_admin):
        return [("high", "70-100"), ("medium", "40-69"), ("low", "0-39")]

    def queryset(self, request, queryset):
        band = self.BANDS.get(self.value() or "")
        if band is None:
            return queryset
        return queryset.filter(churn_risk__gte=band[0], churn_risk__lt=band[1])


@admin.register(Prediction)
class PredictionAdmin(ReadOnlyAdmin):
    list_display = [
        "profile_link",
        "tier",
        "value_365d_shown",
        "value_90d_shown",
        "purchases_90d_shown",
        "p_alive_shown",
        "churn_risk",
        "past_value_shown",
        "computed_at",
    ]
    list_filter = [("tier", admin.RelatedOnlyFieldListFilter), ChurnRiskFilter]
    list_select_related = ["profile", "tier"]
    search_fields = ["profile__user_id"]
    show_full_result_count = False
    ordering = ["-value_365d"]

    @admin.display(description=_("profile"), ordering="profile__user_id")
    def profile_link(self, obj: Prediction) -> HttpResponse:
        url = reverse("admin:profiles_profile_change", args=[obj.profile_id])
        return format_html('<a href="{}">{}</a>', url, obj.profile.user_id)

    @admin.display(description=_("value 365d"), ordering="value_365d")
    def value_365d_shown(self, obj: Prediction) -> str:
        return formatting.money(obj.value_365d)

    @admin.display(description=_("value 90d"), ordering="value_90d")
    def value_90d_shown(self, obj: Prediction) -> str:
        return formatting.money(obj.value_90d)

    @admin.display(description=_("past value"), ordering="past_value")
    def past_value_shown(self, obj: Prediction) -> str:
        return formatting.money(obj.past_value)

    @admin.display(description=_("purchases 90d"), ordering="purchases_90d")
    def purchases_90d_shown(self, obj: Prediction) -> str:
        return formatting.number(obj.purchases_90d, 2)

    @admin.display(description=_("P(alive)"), ordering="p_alive")
    def p_alive_shown(self, obj: Prediction) -> str:
        return formatting.percent(obj.p_alive, 0)

    def changelist_view(self, request, extra_context=None):
        state = selectors.model_state()
        extra = {"model_state": state, "distribution": selectors.tier_distribution()}
        return super().changelist_view(request, extra_context={**(extra_context or {}), **extra})


@admin.register(PredictionChange)
class PredictionChangeAdmin(ReadOnlyAdmin):
    """Tier history: "moved from top-5 to high-value-at-risk this month" is counted here."""

    list_display = ["at", "profile_link", "from_value", "to_value", "run"]
    list_filter = ["from_value", "to_value", ("at", admin.DateFieldListFilter)]
    list_select_related = ["profile"]
    search_fields = ["profile__user_id"]
    show_full_result_count = False
    ordering = ["-at", "-id"]

    @admin.display(description=_("profile"), ordering="profile__user_id")
    def profile_link(self, obj: PredictionChange) -> HttpResponse:
        url = reverse("admin:profiles_profile_change", args=[obj.profile_id])
        return format_html('<a href="{}">{}</a>', url, obj.profile.user_id)


@admin.register(PredictionRun)
class PredictionRunAdmin(admin.ModelAdmin):
    change_form_template = "admin/predictions/predictionrun/change_form.html"
    change_list_template = "admin/predictions/predictionrun/change_list.html"
    list_display = [
        "id",
        "status",
        "requested_at",
        "duration",
        "reference_at",
        "customers",
        "scored",
        "clv_outcome",
        "churn_outcome",
        "auc",
        "reason",
    ]
    list_filter = ["status", "clv_outcome", "churn_outcome"]
    exclude = ["churn_model"]
    readonly_fields = [f.name for f in PredictionRun._meta.fields if f.name != "churn_model"]
    actions = ["recompute_now", "retry"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_recompute_permission(self, request) -> bool:
        return request.user.has_perm("predictions.recompute_predictions")

    @admin.display(description=_("seconds"))
    def duration(self, obj: PredictionRun) -> str:
        return formatting.number(obj.duration_seconds, 1)

    @admin.display(description=_("AUC"))
    def auc(self, obj: PredictionRun) -> str:
        value = (obj.churn_metrics or {}).get("auc")
        return formatting.number(value, 3)

    @admin.display(description=_("reason"))
    def reason(self, obj: PredictionRun) -> str:
        text = obj.error or " ".join(r for r in (obj.clv_reason, obj.churn_reason) if r)
        return (text[:160] + "…") if len(text) > 160 else (text or "—")

    @admin.action(description=_("Recompute every customer's predictions now"), permissions=["recompute"])
    def recompute_now(self, request, queryset):
        _queue_run(self, request)

    @admin.action(description=_("Retry selected failed runs"), permissions=["recompute"])
    def retry(self, request, queryset):
        retried = [services.retry_run(run_id=run.pk, actor=request.user) for run in queryset.filter(status="failed")]
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
            _queue_run(self, request)
            return HttpResponseRedirect(request.get_full_path())
        extra = {"model_state": selectors.model_state()}
        return super().changelist_view(request, extra_context={**(extra_context or {}), **extra})

    def change_view(self, request, object_id, form_url="", extra_context=None):
        run = PredictionRun.objects.filter(pk=object_id).first() if str(object_id).isdigit() else None
        extra = {"charts": run_charts(run)} if run is not None else {}
        return super().change_view(request, object_id, form_url, extra_context={**(extra_context or {}), **extra})


def run_charts(run: PredictionRun) -> dict:
    """The data of the run page's charts (drawn with Chart.js, as the other admin charts)."""
    buckets = (run.clv_calibration or {}).get("buckets", [])
    metrics = run.churn_metrics or {}
    return {
        "holdout": {
            "labels": [row["repeat_purchases"] for row in buckets],
            "predicted": [row["predicted"] for row in buckets],
            "actual": [row["actual"] for row in buckets],
            "customers": [row["customers"] for row in buckets],
            "horizon_days": (run.clv_calibration or {}).get("horizon_days"),
        },
        "churn": {
            "auc": metrics.get("auc"),
            "baseline_auc": metrics.get("baseline_auc"),
            "calibration_error_max": metrics.get("calibration_error_max"),
            "labels": [str(row["decile"]) for row in metrics.get("calibration", [])],
            "predicted": [row["predicted"] for row in metrics.get("calibration", [])],
            "observed": [row["observed"] for row in metrics.get("calibration", [])],
            "features": [row["feature"] for row in metrics.get("importances", [])[:12]],
            "importances": [row["importance"] for row in metrics.get("importances", [])[:12]],
        },
    }
