"""What operators see of coupons: rules with their money at a glance, a report page with a chart,
bulk issuance and partner codes, and audited actions for everything that moves money."""

from __future__ import annotations

import csv
import io
from datetime import UTC, timedelta
from decimal import Decimal
from functools import partial

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import BooleanField, QuerySet, Value
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import gettext, gettext_lazy, pgettext
from django.utils.translation import gettext_lazy as _

from config import formatting
from coupons import errors, selectors, services
from coupons.codes import mask_code
from coupons.models import (
    BEARER_CODES_PERMISSION,
    AbuseScore,
    CodeBatch,
    Coupon,
    CouponRule,
    CouponStatus,
    IssuanceJob,
    IssuanceTarget,
    OrderRefund,
    Redemption,
    RuleState,
)
from coupons.serializers import CHANNEL_WINDOW_MAX_DAYS


def _money(value) -> str:
    return formatting.money(value)


@admin.register(CouponRule)
class CouponRuleAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "kind",
        "offer",
        "state",
        "eligibility",
        "issued_count",
        "redeemed_count",
        "budget_shown",
        "committed_shown",
        "spent_shown",
        "remaining_shown",
        "report_link",
    )
    list_filter = ("state", "kind", "first_order_only")
    search_fields = ("name", "description")
    readonly_fields = ("issued_count", "redeemed_count", "committed", "spent", "remaining_shown", "created_by")
    actions = ("activate", "pause", "end", "fit_uplift")
    fieldsets = (
        (None, {"fields": ("name", "description", "state")}),
        (_("What it gives"), {"fields": ("kind", "value", "max_discount")}),
        (
            _("When it applies"),
            {
                "fields": ("min_spend", "valid_from", "valid_until", "valid_days"),
                "description": _("A threshold rule gives its value off an order of at least min_spend."),
            },
        ),
        (
            _("Who may have it"),
            {
                "fields": ("eligible_tiers", "eligible_tags", "first_order_only", "abuse_threshold"),
                "description": _(
                    "Tier-aware offers: e.g. tiers <code>core</code> for '100 off 1000' to big spenders, "
                    "<code>high-value-at-risk</code> (a predicted-value tier) to win them back, or "
                    "first order only for people who never ordered. Empty lists admit everyone. People whose "
                    "promotion-abuse score reaches the threshold are refused until an operator clears them."
                ),
            },
        ),
        (
            _("Limits"),
            {
                "fields": ("total_quantity", "per_user_limit", "budget", "pacing"),
                "description": _("Pacing spreads the budget over the days from valid_from to valid_until."),
            },
        ),
        (
            _("Several codes on one order"),
            {
                "fields": ("priority", "stacking", "stack_group", "floor_percent"),
                "description": _(
                    "Higher priority applies first. An exclusive offer stands alone; stackable ones combine; "
                    "a group's offers combine only with each other. No combination takes an order below the "
                    "highest floor among the offers applied."
                ),
            },
        ),
        (_("Money so far"), {"fields": ("issued_count", "redeemed_count", "committed", "spent", "remaining_shown")}),
    )

    @admin.display(description=_("Offer"))
    def offer(self, rule: CouponRule) -> str:
        if rule.kind == "percent":
            if rule.max_discount:
                return gettext("%(value)s%% off, at most %(cap)s") % {"value": rule.value, "cap": rule.max_discount}
            return gettext("%(value)s%% off") % {"value": rule.value}
        if rule.kind == "threshold":
            return gettext("%(value)s off %(min_spend)s+") % {"value": rule.value, "min_spend": rule.min_spend}
        return gettext("%(value)s off") % {"value": rule.value}

    @admin.display(description=_("Who"))
    def eligibility(self, rule: CouponRule) -> str:
        parts = []
        if rule.eligible_tiers:
            parts.append(gettext("tiers %(tiers)s") % {"tiers": ", ".join(rule.eligible_tiers)})
        if rule.eligible_tags:
            parts.append(gettext("tags %(tags)s") % {"tags": ", ".join(rule.eligible_tags)})
        if rule.first_order_only:
            parts.append(gettext("first order"))
        return "; ".join(parts) or gettext("everyone")

    @admin.display(description=_("Budget"), ordering="budget")
    def budget_shown(self, rule: CouponRule) -> str:
        return _money(rule.budget)

    @admin.display(description=_("Committed"), ordering="committed")
    def committed_shown(self, rule: CouponRule) -> str:
        return _money(rule.committed)

    @admin.display(description=_("Spent"), ordering="spent")
    def spent_shown(self, rule: CouponRule) -> str:
        return _money(rule.spent)

    @admin.display(description=_("Remaining"))
    def remaining_shown(self, rule: CouponRule) -> str:
        return _money(rule.remaining)

    @admin.display(description=_("Report"))
    def report_link(self, rule: CouponRule) -> str:
        return format_html(
            '<a href="{}">{}</a>', reverse("admin:coupons_couponrule_report", args=[rule.pk]), gettext("report")
        )

    def save_model(self, request: HttpRequest, obj: CouponRule, form, change: bool) -> None:
        saved = services.save_rule(rule=obj, changed=list(form.changed_data) if change else [], actor=request.user)
        obj.pk = saved.pk

    def _change_state(self, request: HttpRequest, queryset: QuerySet, state: str) -> None:
        done = 0
        for rule in queryset:
            try:
                services.change_rule_state(rule=rule, state=state, actor=request.user)
                done += 1
            except errors.CouponError as refusal:
                self.message_user(request, f"{rule}: {refusal.detail}", messages.WARNING)
        self.message_user(
            request,
            gettext("%(n)d rule(s) now %(state)s.") % {"n": done, "state": str(RuleState(state).label).lower()},
        )

    @admin.action(description=_("Activate selected rules"), permissions=["change"])
    def activate(self, request, queryset):
        self._change_state(request, queryset, RuleState.ACTIVE)

    @admin.action(description=_("Pause selected rules"), permissions=["change"])
    def pause(self, request, queryset):
        self._change_state(request, queryset, RuleState.PAUSED)

    @admin.action(
        description=_("End selected rules (expires their live coupons, releases the money)"), permissions=["change"]
    )
    def end(self, request, queryset):
        self._change_state(request, queryset, RuleState.ENDED)

    @admin.action(description=_("Learn who the selected rules' coupons persuade (uplift, in the background)"))
    def fit_uplift(self, request, queryset):
        from config.celery import publish
        from coupons.tasks import fit_rule_uplift

        for rule in queryset:
            publish(f"uplift of rule {rule.pk}", fit_rule_uplift, args=[rule.pk])
        n = queryset.count()
        self.message_user(
            request,
            gettext("%(n)d uplift fit(s) queued; each rule's report shows the result.") % {"n": n},
        )

    def get_urls(self):
        own = [
            path(
                "<int:rule_id>/report/", self.admin_site.admin_view(self.report_view), name="coupons_couponrule_report"
            ),
            path("<int:rule_id>/issue/", self.admin_site.admin_view(self.issue_view), name="coupons_couponrule_issue"),
            path("<int:rule_id>/codes/", self.admin_site.admin_view(self.codes_view), name="coupons_couponrule_codes"),
            path(
                "campaign-report/",
                self.admin_site.admin_view(self.source_report_view),
                name="coupons_couponrule_source_report",
            ),
            *insight_urls(self),
        ]
        return own + super().get_urls()

    def report_view(self, request: HttpRequest, rule_id: int) -> HttpResponse:
        self._check_report_permission(request)
        rule = get_object_or_404(CouponRule, pk=rule_id)
        report = selectors.rule_report(rule=rule)
        return self._report_page(
            request,
            gettext("Report: %(rule)s") % {"rule": rule},
            report,
            selectors.daily_activity(rule=rule),
            rule=rule,
        )

    def source_report_view(self, request: HttpRequest) -> HttpResponse:
        """The same numbers over every coupon a campaign (or any source_ref prefix) issued."""
        self._check_report_permission(request)
        prefix = request.GET.get("prefix", "").strip()
        report = selectors.campaign_report(source_ref_prefix=prefix) if prefix else None
        daily = selectors.daily_activity(source_ref_prefix=prefix) if prefix else []
        title = (
            gettext("Report: coupons of %(prefix)s") % {"prefix": prefix}
            if prefix
            else gettext("Report by campaign (source_ref prefix)")
        )
        return self._report_page(request, title, report, daily, prefix=prefix)

    def _check_report_permission(self, request: HttpRequest) -> None:
        if not request.user.has_perm("coupons.view_couponrule"):
            raise PermissionDenied

    def _report_page(self, request, title, report, daily, *, rule=None, prefix=None) -> HttpResponse:
        # (label, unit, raw value, how the page shows it): the CSV keeps the raw value, its unit in the label.
        measures = []
        if report is not None:
            cur = formatting.currency_label()
            measures = [
                (gettext("Issued"), gettext("coupons"), report.issued, formatting.count(report.issued)),
                (gettext("Redeemed"), gettext("coupons"), report.redeemed, formatting.count(report.redeemed)),
                (gettext("Unused"), gettext("coupons"), report.unused, formatting.count(report.unused)),
                (gettext("Expired"), gettext("coupons"), report.expired, formatting.count(report.expired)),
                (gettext("Revoked"), gettext("coupons"), report.revoked, formatting.count(report.revoked)),
                (gettext("Budget"), cur, report.budget, _money(report.budget)),
                (gettext("Committed"), cur, report.committed, _money(report.committed)),
                (gettext("Spent"), cur, report.spent, _money(report.spent)),
                (gettext("Remaining"), cur, report.remaining, _money(report.remaining)),
                (gettext("Order revenue"), cur, report.order_revenue, _money(report.order_revenue)),
                (
                    gettext("ROI (attributed: every coupon order)"),
                    gettext("ratio"),
                    report.roi,
                    formatting.number(report.roi, 2),
                ),
                (
                    gettext("Redemption rate"),
                    gettext("fraction of 1"),
                    report.redemption_rate,
                    formatting.percent(report.redemption_rate),
                ),
            ]
        numbers = [(label, shown) for label, _unit, _raw, shown in measures]
        if request.GET.get("format") == "csv":
            name = f"coupon-report-{rule.pk if rule else 'campaign'}"
            if request.GET.get("part") == "daily":
                rows = [[d["day"].isoformat(), d["issued"], d["redeemed"]] for d in daily]
                header = [
                    formatting.column(gettext("Day"), str(formatting.operator_zone())),
                    formatting.column(gettext("Issued"), gettext("coupons")),
                    formatting.column(gettext("Redeemed"), gettext("coupons")),
                ]
                return _csv_response(f"{name}-daily.csv", header, rows)
            rows = [
                [formatting.column(label, str(unit)), "" if raw is None else raw]
                for label, unit, raw, _shown in measures
            ]
            return _csv_response(f"{name}.csv", [gettext("Metric"), pgettext("metric", "Value")], rows)
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.model._meta,
            "rule": rule,
            "prefix": prefix,
            "report": report,
            "numbers": numbers,
            "chart_data": {
                "days": [formatting.day_label(d["day"]) for d in daily],
                "issued": [d["issued"] for d in daily],
                "redeemed": [d["redeemed"] for d in daily],
                "axis": gettext("coupons"),
            },
            "incremental": getattr(report, "incremental", None),
            "uplift": getattr(report, "uplift", None),
        }
        return TemplateResponse(request, "admin/coupons/couponrule/report.html", context)

    def issue_view(self, request: HttpRequest, rule_id: int) -> HttpResponse:
        if not request.user.has_perm("coupons.add_issuancejob"):
            raise PermissionDenied
        rule = get_object_or_404(CouponRule, pk=rule_id)
        form = IssueForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                job = services.create_issuance_job(
                    rule=rule,
                    user_ids=form.cleaned_data["user_ids"] or None,
                    segment_id=form.cleaned_data["segment"],
                    source_ref=form.cleaned_data["source_ref"],
                    created_by=request.user,
                )
            except errors.CouponError as refusal:
                form.add_error(None, refusal.detail)
            else:
                self.message_user(request, gettext("Issuance job #%(id)s queued.") % {"id": job.pk})
                return HttpResponseRedirect(reverse("admin:coupons_issuancejob_change", args=[job.pk]))
        return self._form_page(request, rule, form, gettext("Issue coupons to users or a segment"))

    def codes_view(self, request: HttpRequest, rule_id: int) -> HttpResponse:
        if not request.user.has_perm("coupons.add_codebatch"):
            raise PermissionDenied
        rule = get_object_or_404(CouponRule, pk=rule_id)
        form = CodeBatchForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                batch = services.create_code_batch(rule=rule, created_by=request.user, **form.cleaned_data)
            except errors.CouponError as refusal:
                form.add_error(None, refusal.detail)
            else:
                self.message_user(
                    request, gettext("Code batch #%(id)s queued; export it when done.") % {"id": batch.pk}
                )
                return HttpResponseRedirect(reverse("admin:coupons_codebatch_changelist"))
        return self._form_page(request, rule, form, gettext("Generate partner codes"))

    def _form_page(self, request, rule, form, title):
        context = {
            **self.admin_site.each_context(request),
            "title": gettext("%(title)s: %(rule)s") % {"title": title, "rule": rule},
            "opts": self.model._meta,
            "original": rule,
            "form": form,
        }
        return TemplateResponse(request, "admin/coupons/couponrule/form_page.html", context)

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None:
            context["coupon_links"] = [
                (gettext("Report"), reverse("admin:coupons_couponrule_report", args=[obj.pk])),
                (gettext("Issue to users"), reverse("admin:coupons_couponrule_issue", args=[obj.pk])),
                (gettext("Partner codes"), reverse("admin:coupons_couponrule_codes", args=[obj.pk])),
            ]
        return super().render_change_form(request, context, add, change, form_url, obj)


class IssueForm(forms.Form):
    user_ids = forms.CharField(
        label=_("User ids"),
        widget=forms.Textarea(attrs={"rows": 8}),
        required=False,
        help_text=_("One user id per line (or comma separated)."),
    )
    segment = forms.IntegerField(label=_("Segment"), required=False, min_value=1, help_text=_("Or a segment id."))
    source_ref = forms.CharField(
        label=_("Source ref"), required=False, max_length=200, help_text=_("e.g. campaign:12:variant:3")
    )

    def clean_user_ids(self) -> list[str]:
        raw = self.cleaned_data["user_ids"].replace(",", "\n")
        ids = [line.strip() for line in raw.splitlines() if line.strip()]
        too_long = [u for u in ids if len(u) > 128]
        if too_long:
            raise ValidationError(gettext("User ids are at most 128 characters: %(id)s...") % {"id": too_long[0][:40]})
        return ids

    def clean(self):
        data = super().clean()
        if bool(data.get("user_ids")) == (data.get("segment") is not None):
            raise ValidationError(gettext("Give either user ids or a segment."))
        return data


class CodeBatchForm(forms.Form):
    quantity = forms.IntegerField(label=_("Quantity"), min_value=1, max_value=10_000_000)
    partner = forms.CharField(label=_("Partner"), max_length=200, required=False)


@admin.register(Coupon)
class CouponAdmin(admin.ModelAdmin):
    list_display = ("display_code", "rule", "holder", "status", "issued_at", "expires_at", "source", "source_ref")
    list_filter = ("status", "source", ("rule", admin.RelatedOnlyFieldListFilter))
    search_fields = ("=code", "profile__user_id", "source_ref", "request_id")
    list_select_related = ("rule", "profile")
    readonly_fields = [f.name for f in Coupon._meta.fields]
    actions = ("revoke",)
    show_full_result_count = False

    # Whether the viewer may see bearer codes travels with the rows (the admin instance is shared).
    def get_queryset(self, request):
        may = request.user.has_perm(BEARER_CODES_PERMISSION)
        return super().get_queryset(request).annotate(viewer_sees_bearer_codes=Value(may, output_field=BooleanField()))

    def get_fields(self, request, obj=None):
        fields = [f for f in super().get_fields(request, obj) if f != "display_code"]
        if obj is not None and obj.profile_id is None and not request.user.has_perm(BEARER_CODES_PERMISSION):
            fields = ["display_code" if f == "code" else f for f in fields]
        return fields

    def get_readonly_fields(self, request, obj=None):
        return [*super().get_readonly_fields(request, obj), "display_code"]

    @admin.display(description=_("Code"))
    def display_code(self, coupon: Coupon) -> str:
        if coupon.profile_id is None and not getattr(coupon, "viewer_sees_bearer_codes", False):
            return mask_code(coupon.display_code)  # a partner's bearer code: spendable by whoever reads it
        return coupon.display_code

    def get_search_results(self, request, queryset, search_term):
        from coupons.codes import normalize

        queryset, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        if search_term and len(normalize(search_term)) == 13:
            queryset |= self.model.objects.filter(code=normalize(search_term))
        return queryset, may_have_duplicates

    @admin.display(description=_("Holder"), ordering="profile__user_id")
    def holder(self, coupon: Coupon) -> str:
        return coupon.profile.user_id if coupon.profile_id else gettext("(bearer)")

    def has_add_permission(self, request) -> bool:
        return False

    @admin.action(
        description=_("Revoke selected live coupons (returns their money to the budget)"), permissions=["change"]
    )
    def revoke(self, request, queryset):
        n = services.revoke_coupons(
            coupon_ids=list(queryset.filter(status=CouponStatus.AVAILABLE).values_list("pk", flat=True)),
            actor=request.user,
        )
        self.message_user(request, gettext("%(n)d coupon(s) revoked.") % {"n": n})


@admin.register(AbuseScore)
class AbuseScoreAdmin(admin.ModelAdmin):
    """The people flagged for promotion abuse, highest score first, with the evidence to review;
    clearing one admits them again (until their score rises)."""

    list_display = ("profile_link", "score", "flagged_for", "evidence_shown", "computed_at", "review")
    list_filter = (("cleared_at", admin.EmptyFieldListFilter),)
    search_fields = ("=profile__user_id",)
    readonly_fields = [f.name for f in AbuseScore._meta.fields]
    actions = ("clear", "refresh")
    list_select_related = ("profile",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    @admin.display(description=_("Person"), ordering="profile__user_id")
    def profile_link(self, score: AbuseScore) -> str:
        url = reverse("admin:profiles_profile_change", args=[score.profile_id])
        return format_html('<a href="{}">{}</a>', url, score.profile.user_id)

    @admin.display(description=_("Flagged by"))
    def flagged_for(self, score: AbuseScore) -> str:
        parts = (score.evidence or {}).get("parts", {})
        shown = [f"{name.replace('_', ' ')} {value}" for name, value in parts.items() if float(value) > 0]
        return ", ".join(shown) or "-"

    @admin.display(description=_("Evidence"))
    def evidence_shown(self, score: AbuseScore) -> str:
        e = score.evidence or {}
        shown = gettext(
            "%(accounts)s account(s) on their devices or phone; "
            "%(rolled_back)s of %(redemptions)s coupon orders rolled back; "
            "%(orders_with_coupon)s of %(orders)s orders with a coupon; "
            "%(coupons)s coupons"
        ) % {
            "accounts": e.get("accounts", 1),
            "rolled_back": e.get("rolled_back", 0),
            "redemptions": e.get("redemptions", 0),
            "orders_with_coupon": e.get("orders_with_coupon", 0),
            "orders": e.get("orders", 0),
            "coupons": e.get("coupons", 0),
        }
        return shown + (gettext("; new account") if e.get("new_account") else "")

    @admin.display(description=_("Review"))
    def review(self, score: AbuseScore) -> str:
        if score.cleared:
            return gettext("cleared %(day)s") % {"day": formatting.local_date(score.cleared_at)}
        return gettext("cleared before, score rose since") if score.cleared_at else gettext("to review")

    @admin.action(description=_("Clear the selected people (admit them to offers)"), permissions=["change"])
    def clear(self, request: HttpRequest, queryset: QuerySet) -> None:
        n = services.clear_abuse(profile_ids=list(queryset.values_list("profile_id", flat=True)), actor=request.user)
        self.message_user(request, gettext("%(n)d person(s) cleared.") % {"n": n})

    @admin.action(description=_("Score everyone again now"), permissions=["change"])
    def refresh(self, request: HttpRequest, queryset: QuerySet) -> None:
        n = services.refresh_abuse_scores()
        self.message_user(request, gettext("%(n)d person(s) carry a score.") % {"n": n})


@admin.register(Redemption)
class RedemptionAdmin(admin.ModelAdmin):
    list_display = (
        "order_id",
        "code",
        "rule",
        "user_id",
        "order_amount",
        "discount",
        "redeemed_at",
        "rolled_back_at",
    )
    list_filter = (("rule", admin.RelatedOnlyFieldListFilter), ("rolled_back_at", admin.EmptyFieldListFilter))
    # Exact match only, as in the coupon list: a substring search would read a masked code back
    # one guessed prefix at a time.
    search_fields = ("=order_id", "user_id", "=coupon__code")
    list_select_related = ("coupon", "rule")
    readonly_fields = [f.name for f in Redemption._meta.fields]
    date_hierarchy = "redeemed_at"
    actions = ("rollback",)

    def has_add_permission(self, request) -> bool:
        return False

    # As in the coupon list: a bearer code (a rolled-back one is spendable again) whole only for
    # viewers with the export permission; the flag travels with the rows (the instance is shared).
    def get_queryset(self, request):
        may = request.user.has_perm(BEARER_CODES_PERMISSION)
        return super().get_queryset(request).annotate(viewer_sees_bearer_codes=Value(may, output_field=BooleanField()))

    def get_readonly_fields(self, request, obj=None):
        return [*(f for f in super().get_readonly_fields(request, obj) if f != "coupon"), "code"]

    def get_list_display(self, request):
        # Sorting by a masked column would still tell its order, so viewers who may not see bearer
        # codes get the column without sorting (Django sorts on `?o=` whatever the header shows).
        if request.user.has_perm(BEARER_CODES_PERMISSION):
            return self.list_display
        return tuple("masked_code" if f == "code" else f for f in self.list_display)

    def get_fields(self, request, obj=None):
        return ["code" if f == "coupon" else f for f in super().get_fields(request, obj) if f != "code"]

    @admin.display(description=gettext_lazy("Code"), ordering="coupon__code")
    def code(self, redemption: Redemption) -> str:
        coupon = redemption.coupon
        if coupon.profile_id is None and not getattr(redemption, "viewer_sees_bearer_codes", False):
            return mask_code(coupon.display_code)
        return coupon.display_code

    @admin.display(description=gettext_lazy("Code"))
    def masked_code(self, redemption: Redemption) -> str:
        return self.code(redemption)

    @admin.action(description=_("Roll back the orders of the selected redemptions"), permissions=["change"])
    def rollback(self, request, queryset):
        orders = sorted(set(queryset.filter(rolled_back_at__isnull=True).values_list("order_id", flat=True)))
        for order_id in orders:
            services.rollback_order(order_id=order_id, actor=request.user)
        self.message_user(
            request,
            gettext("%(n)d order(s) rolled back.") % {"n": len(orders)},
        )


class IssuanceTargetInline(admin.TabularInline):
    model = IssuanceTarget
    fields = ("profile", "outcome", "reason", "coupon")
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = False

    def get_queryset(self, request):
        return super().get_queryset(request).exclude(outcome=IssuanceTarget.Outcome.ISSUED).select_related("profile")


def _retry_each(model_admin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet, retry, what: str) -> None:
    """Retry every failed row of the selection through its service (audited there); others are
    named, not touched."""
    retried = 0
    for obj in queryset.filter(status="failed"):
        retry(obj.pk, actor=request.user)
        retried += 1
    skipped = queryset.exclude(status="failed").count()
    model_admin.message_user(request, gettext("%(n)d %(what)s queued again.") % {"n": retried, "what": what})
    if skipped:
        model_admin.message_user(
            request, gettext("%(n)d not failed: left alone.") % {"n": skipped}, level=messages.WARNING
        )


@admin.display(description=_("Reason"))
def _reason_shown(obj) -> str:
    return (obj.error[:120] + "…") if len(obj.error) > 120 else (obj.error or "-")


@admin.register(IssuanceJob)
class IssuanceJobAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "rule",
        "status",
        "progress_shown",
        "total",
        "issued",
        "refused",
        _reason_shown,
        "source_ref",
        "created_at",
    )
    list_filter = ("status",)
    search_fields = ("source_ref", "rule__name")
    readonly_fields = [f.name for f in IssuanceJob._meta.fields if f.name != "user_ids"] + ["progress_shown"]
    exclude = ("user_ids",)
    inlines = (IssuanceTargetInline,)
    actions = ("retry", "resume")

    @admin.display(description=_("Progress"))
    def progress_shown(self, job: IssuanceJob) -> str:
        return formatting.percent(job.progress, 0)

    def has_add_permission(self, request) -> bool:
        return False

    @admin.action(description=_("Resume selected pending or running jobs now"), permissions=["change"])
    def resume(self, request, queryset):
        """What the beat's resume does every 15 minutes; a failed job needs a retry instead."""
        queued = [job.pk for job in queryset if services.resume_issuance_job(job_id=job.pk, actor=request.user)]
        self.message_user(request, gettext("%(n)d job(s) queued again.") % {"n": len(queued)})

    @admin.action(description=_("Retry selected failed jobs (they go on where they stopped)"), permissions=["change"])
    def retry(self, request, queryset):
        _retry_each(
            self,
            request,
            queryset,
            lambda pk, actor: services.retry_issuance_job(job_id=pk, actor=actor),
            gettext("job(s)"),
        )


@admin.register(CodeBatch)
class CodeBatchAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "rule",
        "partner",
        "quantity",
        "generated",
        "status",
        _reason_shown,
        "created_at",
        "export_link",
    )
    list_filter = ("status",)
    search_fields = ("partner", "rule__name")
    readonly_fields = [f.name for f in CodeBatch._meta.fields]
    actions = ("retry",)

    def has_add_permission(self, request) -> bool:
        return False

    @admin.action(description=_("Retry selected failed batches"), permissions=["change"])
    def retry(self, request, queryset):
        _retry_each(
            self,
            request,
            queryset,
            lambda pk, actor: services.retry_code_batch(batch_id=pk, actor=actor),
            gettext("batch(es)"),
        )

    @admin.display(description=_("CSV"))
    def export_link(self, batch: CodeBatch) -> str:
        if batch.status != CodeBatch.Status.DONE:
            return "-"
        return format_html(
            '<a href="{}">{}</a>', reverse("admin:coupons_codebatch_export", args=[batch.pk]), gettext("download")
        )

    def get_urls(self):
        own = [
            path(
                "<int:batch_id>/export/", self.admin_site.admin_view(self.export_view), name="coupons_codebatch_export"
            )
        ]
        return own + super().get_urls()

    def export_view(self, request: HttpRequest, batch_id: int) -> StreamingHttpResponse:
        if not request.user.has_perm(BEARER_CODES_PERMISSION):
            raise PermissionDenied
        batch = get_object_or_404(CodeBatch, pk=batch_id, status=CodeBatch.Status.DONE)
        response = StreamingHttpResponse(
            services.export_code_batch(batch=batch, actor=request.user), content_type="text/csv; charset=utf-8"
        )
        response["Content-Disposition"] = f'attachment; filename="codes-{batch.pk}-{batch.partner or "partner"}.csv"'
        return response


# --- ROI overview and channel quality -------------------------------------------------------------


@admin.register(OrderRefund)
class OrderRefundAdmin(admin.ModelAdmin):
    """Refunds of coupon orders: pending (recorded by ingestion, not applied yet), applied (rolled
    back, or revenue reduced), or failed with the reason. The beat applies pending ones whose task
    was lost and tries failed ones again with back-off; the action applies them at once."""

    list_display = (
        "order_id",
        "status",
        "outcome",
        "amount",
        "attempts",
        _reason_shown,
        "event_id",
        "created_at",
        "applied_at",
    )
    list_filter = ("status", "outcome")
    search_fields = ("=order_id", "=event_id")
    readonly_fields = [f.name for f in OrderRefund._meta.fields]
    actions = ("apply_again",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    @admin.action(description=_("Apply the selected refunds again"), permissions=["change"])
    def apply_again(self, request: HttpRequest, queryset: QuerySet) -> None:
        """Each pending or failed refund of the selection is applied now (audited in the service),
        in order id order as the worker applies them; applied ones are named, not touched."""
        already = queryset.filter(status=OrderRefund.Status.APPLIED).count()
        applied = failing = busy = 0
        for refund_id in (
            queryset.exclude(status=OrderRefund.Status.APPLIED).order_by("order_id", "id").values_list("pk", flat=True)
        ):
            try:
                refund = services.retry_refund(refund_id=refund_id, actor=request.user)
            except errors.RefundAlreadyApplied:  # a worker applied it since the page was drawn
                already += 1
                continue
            except errors.RefundInProgress:
                busy += 1
                continue
            if refund.status == OrderRefund.Status.APPLIED:
                applied += 1
            elif refund.status == OrderRefund.Status.FAILED:
                failing += 1
        self.message_user(request, gettext("%(n)d refund(s) applied.") % {"n": applied})
        if failing:
            self.message_user(
                request,
                gettext("%(n)d refund(s) still failing: their reason is in the list.") % {"n": failing},
                level=messages.ERROR,
            )
        if already:
            self.message_user(
                request, gettext("%(n)d applied already: left alone.") % {"n": already}, level=messages.WARNING
            )
        if busy:
            self.message_user(
                request,
                gettext("%(n)d being applied by a worker at this moment: see their state shortly.") % {"n": busy},
                level=messages.WARNING,
            )


def insight_urls(model_admin: CouponRuleAdmin) -> list:
    site = model_admin.admin_site
    return [
        path("roi/", site.admin_view(partial(roi_overview_view, model_admin)), name="coupons_couponrule_roi"),
        path("channels/", site.admin_view(partial(channel_quality_view, model_admin)), name="coupons_channel_quality"),
    ]


def _csv_response(filename: str, header: list[str], rows: list[list]) -> HttpResponse:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    response = HttpResponse(buffer.getvalue(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def _rate(value: float | None) -> str:
    return formatting.percent(value)


def roi_overview_view(model_admin: CouponRuleAdmin, request: HttpRequest) -> HttpResponse:
    """Every rule's issued, redeemed, spent, revenue and ROI: the numbers of its report page."""
    model_admin._check_report_permission(request)
    overview = selectors.roi_overview()
    if request.GET.get("format") == "csv":
        return _csv_response(
            "coupon-roi.csv",
            [
                gettext("Rule id"),
                gettext("Rule"),
                gettext("State"),
                formatting.column(gettext("Issued"), gettext("coupons")),
                formatting.column(gettext("Redeemed"), gettext("coupons")),
                formatting.column(gettext("Spent"), formatting.currency_label()),
                formatting.column(gettext("Order revenue"), formatting.currency_label()),
                formatting.column(gettext("ROI"), gettext("ratio")),
            ],
            [
                [
                    rule.pk,
                    rule.name,
                    rule.state,
                    r.issued,
                    r.redeemed,
                    r.spent,
                    r.order_revenue,
                    "" if r.roi is None else r.roi,
                ]
                for rule, r in overview
            ],
        )
    chart = {
        "axis": formatting.column(gettext("Amount"), formatting.currency_label()),
        "rules": [rule.name for rule, _ in overview],
        "spent": [float(r.spent) for _, r in overview],
        "revenue": [float(r.order_revenue) for _, r in overview],
    }
    context = {
        **model_admin.admin_site.each_context(request),
        "title": gettext("Coupon ROI by rule"),
        "opts": model_admin.model._meta,
        "rows": [
            {
                "rule": rule,
                "report_url": reverse("admin:coupons_couponrule_report", args=[rule.pk]),
                "issued": formatting.count(r.issued),
                "redeemed": formatting.count(r.redeemed),
                "spent": _money(r.spent),
                "revenue": _money(r.order_revenue),
                "roi": formatting.number(r.roi, 2),
            }
            for rule, r in overview
        ],
        "totals": {
            "issued": formatting.count(sum(r.issued for _, r in overview)),
            "redeemed": formatting.count(sum(r.redeemed for _, r in overview)),
            "spent": _money(sum((r.spent for _, r in overview), Decimal("0.00"))),
            "revenue": _money(sum((r.order_revenue for _, r in overview), Decimal("0.00"))),
        },
        "chart_data": chart,
    }
    return TemplateResponse(request, "admin/coupons/couponrule/roi.html", context)


class ChannelWindowForm(forms.Form):
    start = forms.DateField(label=_("Start"), widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(
        label=_("End"), widget=forms.DateInput(attrs={"type": "date"}), help_text=_("Inclusive (UTC days).")
    )

    def clean(self):
        data = super().clean()
        if data.get("start") and data.get("end"):
            if data["end"] < data["start"]:
                raise ValidationError({"end": gettext("Must be on or after the start.")})
            if (data["end"] - data["start"]).days >= CHANNEL_WINDOW_MAX_DAYS:
                raise ValidationError(
                    {"end": gettext("A window of at most %(days)d days.") % {"days": CHANNEL_WINDOW_MAX_DAYS}}
                )
        return data


def channel_quality_view(model_admin: CouponRuleAdmin, request: HttpRequest) -> HttpResponse:
    """Per first-touch source: new users, conversion, day-7 retention, coupon cost and revenue."""
    model_admin._check_report_permission(request)
    today = timezone.now().astimezone(UTC).date()
    form = ChannelWindowForm(request.GET or {"start": today - timedelta(days=30), "end": today - timedelta(days=1)})
    rows = selectors.channel_quality(**form.cleaned_data) if form.is_valid() else []
    if form.is_valid() and request.GET.get("format") == "csv":
        return _csv_response(
            f"channel-quality-{form.cleaned_data['start']}-{form.cleaned_data['end']}.csv",
            [
                gettext("Source"),
                formatting.column(gettext("New users"), gettext("people")),
                formatting.column(gettext("Converted"), gettext("people")),
                formatting.column(gettext("Conversion rate"), gettext("fraction of 1")),
                formatting.column(gettext("Day-7 retention base"), gettext("people")),
                formatting.column(gettext("Retained on day 7"), gettext("people")),
                formatting.column(gettext("Day-7 retention"), gettext("fraction of 1")),
                formatting.column(gettext("Coupon cost"), formatting.currency_label()),
                formatting.column(gettext("Coupon cost per converted"), formatting.currency_label()),
                formatting.column(gettext("Revenue"), formatting.currency_label()),
            ],
            [
                [
                    r.source,
                    r.new_users,
                    r.converted,
                    "" if r.conversion_rate is None else r.conversion_rate,
                    r.retention_base,
                    r.retained,
                    "" if r.retention_d7 is None else r.retention_d7,
                    r.coupon_cost,
                    "" if r.coupon_cost_per_converted is None else r.coupon_cost_per_converted,
                    r.revenue,
                ]
                for r in rows
            ],
        )
    context = {
        **model_admin.admin_site.each_context(request),
        "title": gettext("Channel quality"),
        "opts": model_admin.model._meta,
        "form": form,
        "rows": [
            {
                "source": r.source,
                "new_users": formatting.count(r.new_users),
                "converted": formatting.count(r.converted),
                "conversion_rate": _rate(r.conversion_rate),
                "retention_d7": _rate(r.retention_d7),
                "retention_base": formatting.count(r.retention_base),
                "coupon_cost": _money(r.coupon_cost),
                "coupon_cost_per_converted": _money(r.coupon_cost_per_converted),
                "revenue": _money(r.revenue),
            }
            for r in rows
        ],
        "chart_data": {
            "sources": [r.source for r in rows],
            "new_users": [r.new_users for r in rows],
            "converted": [r.converted for r in rows],
        },
        "csv_query": request.GET.urlencode(),
    }
    return TemplateResponse(request, "admin/coupons/couponrule/channels.html", context)
