"""What operators see: campaigns with inline variants, audience preview, launch / pause /
resume / rollout / cancel actions (audited), live counters, results as a table and a chart, the
history of iterations, a test message to a staff device, deliveries and channel gateways."""

from __future__ import annotations

import csv
import json

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import models
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext, gettext_lazy
from django.utils.translation import gettext_lazy as _

from campaigns import errors, selectors, services, validation
from campaigns.models import (
    Assignment,
    Campaign,
    CampaignPhase,
    CampaignStatus,
    Channel,
    Delivery,
    DeliveryStatus,
    Segment,
    Variant,
)
from campaigns.segments import DefinitionError, compile_definition
from config import formatting
from config.errors import DomainError

# Gateways and landing pages are https; Django 6 makes this the default.
URL_FIELDS = {models.URLField: {"assume_scheme": "https"}}


def _preview_html(segment: Segment) -> str:
    try:
        preview = selectors.segment_preview(segment)
    except DefinitionError as exc:
        return format_html("<strong>{}</strong> {}", gettext("Invalid definition:"), "; ".join(exc.errors))
    sample = ", ".join(preview["sample"]) or gettext("(nobody)")
    return format_html(
        "<strong>{}</strong> {} <code>{}</code>", preview["size"], gettext("people now. Sample:"), sample
    )


# --- channels and segments ---------------------------------------------------------------------


def token_hint(token: str) -> str:
    """What a channel's token looks like on a page: that one is set, and its last 4 characters."""
    return f"\u2026{token[-4:]}" if len(token) > 8 else "\u2026" if token else ""


def _https_formfield(field: models.Field, **kwargs) -> forms.Field | None:
    """Gateways are https (as URL_FIELDS says for the admin's own forms)."""
    if isinstance(field, models.URLField):
        kwargs.setdefault("assume_scheme", "https")
    return field.formfield(**kwargs)


class ChannelGatewayForm(forms.ModelForm):
    """For those who may set the gateway (`set_channel_gateway`). The token is write-only: the
    page says that one is set (its last 4 characters) and never shows it, an empty field on save
    keeps the stored one, and `clear token` empties it on purpose."""

    token = forms.CharField(
        label=gettext_lazy("Token"),
        required=False,
        max_length=500,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
    )
    clear_token = forms.BooleanField(
        label=gettext_lazy("Clear token"),
        required=False,
        help_text=gettext_lazy("Empty the token, so the OPSLOOP_GATEWAY_TOKEN setting applies"),
    )

    class Meta:
        model = Channel
        formfield_callback = _https_formfield
        fields = [
            "kind",
            "url",
            "token",
            "timeout_seconds",
            "rate_per_second",
            "max_attempts",
            "retry_window_minutes",
            "backoff_base_seconds",
            "backoff_max_seconds",
            "at_most_once",
            "enabled",
        ]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Kept apart from the instance: validation copies the cleaned token onto it, after which
        # comparing with `self.instance.token` would never see a change.
        self.stored_token = self.instance.token if self.instance.pk else ""
        if "token" not in self.fields:
            return
        stored = self.stored_token
        self.fields["token"].help_text = (
            gettext("Set (ending %(hint)s). Leave empty to keep it; type a new one to replace it.")
            % {"hint": token_hint(stored)}
            if stored
            else gettext("Not set: the OPSLOOP_GATEWAY_TOKEN setting applies. Type one to set it.")
        )

    def clean_token(self) -> str:
        return self.cleaned_data.get("token", "") or self.stored_token

    def clean(self) -> dict:
        cleaned = super().clean()
        if cleaned.get("clear_token"):
            cleaned["token"] = ""
        return cleaned

    @property
    def changed_data(self) -> list[str]:
        # A token typed equal to the stored one, or left empty, is no change; the field never
        # carries the stored value into the page, so Django's own comparison would always differ.
        changed = [f for f in super().changed_data if f not in ("token", "clear_token")]
        if (
            "token" in self.fields
            and hasattr(self, "cleaned_data")
            and self.cleaned_data.get("token", self.stored_token) != self.stored_token
        ):
            changed.append("token")
        return changed


@admin.register(Channel)
class ChannelAdmin(admin.ModelAdmin):
    formfield_overrides = URL_FIELDS
    list_display = [
        "kind",
        "gateway",
        "rate_per_second",
        "retry_window_minutes",
        "max_attempts",
        "timeout_seconds",
        "at_most_once",
        "enabled",
        "updated_at",
    ]
    list_editable = ["enabled"]
    list_filter = ["enabled"]

    @admin.display(description=_("Gateway URL in use"))
    def gateway(self, obj: Channel) -> str:
        return obj.effective_url() or gettext("(email backend)") if obj.kind == "email" else obj.effective_url() or "-"

    # Per call, from the request's user: the instance is shared by every request.
    def get_readonly_fields(self, request, obj=None):
        readonly = list(super().get_readonly_fields(request, obj))
        if not request.user.has_perm("campaigns.set_channel_gateway"):
            readonly.append("url")
        return readonly

    def get_exclude(self, request, obj=None):
        exclude = list(super().get_exclude(request, obj) or [])
        if not request.user.has_perm("campaigns.set_channel_gateway"):
            exclude.append("token")  # not even hinted at: the token is a secret of the gateway
        return exclude

    # Per call, from the request's user, as above: only they get the token's write-only field.
    def get_form(self, request, obj=None, change=False, **kwargs):
        if request.user.has_perm("campaigns.set_channel_gateway"):
            kwargs["form"] = ChannelGatewayForm
        return super().get_form(request, obj, change=change, **kwargs)

    def save_model(self, request, obj, form, change) -> None:
        services.save_channel(channel=obj, changed=form.changed_data, actor=request.user)


# The results CSV keeps raw numbers (a spreadsheet computes with them); its headers say their units.
_FRACTION = gettext_lazy("fraction of 1")
RESULT_HEADERS = {
    "name": (gettext_lazy("Group"), ""),
    "assigned": (gettext_lazy("Assigned"), gettext_lazy("people")),
    "sent": (gettext_lazy("Sent"), gettext_lazy("messages")),
    "delivered": (gettext_lazy("Delivered"), gettext_lazy("messages")),
    "failed": (gettext_lazy("Failed"), gettext_lazy("messages")),
    "opened": (gettext_lazy("Opened"), gettext_lazy("people")),
    "clicked": (gettext_lazy("Clicked"), gettext_lazy("people")),
    "converted": (gettext_lazy("Converted"), gettext_lazy("people")),
    "conversion_rate": (gettext_lazy("Conversion rate"), _FRACTION),
    "ci_low": (gettext_lazy("Conversion rate CI low"), _FRACTION),
    "ci_high": (gettext_lazy("Conversion rate CI high"), _FRACTION),
    "uplift_vs_holdout": (gettext_lazy("Uplift vs control"), gettext_lazy("difference of fractions")),
    "relative_uplift": (gettext_lazy("Relative uplift"), gettext_lazy("fraction of control's rate")),
    "uplift_ci_low": (gettext_lazy("Uplift CI low"), gettext_lazy("difference of fractions")),
    "uplift_ci_high": (gettext_lazy("Uplift CI high"), gettext_lazy("difference of fractions")),
    "p_value": (gettext_lazy("p-value"), ""),
    "p_value_holm": (gettext_lazy("Holm-adjusted p-value"), ""),
    "significant": (gettext_lazy("Significant"), gettext_lazy("true/false")),
    "coupon_redemptions": (gettext_lazy("Coupons redeemed"), gettext_lazy("coupons")),
}


def result_column(name: str, *, always_valid: bool = False) -> str:
    """The CSV header of one results column, with its unit: `Revenue (¥)`, `Conversion rate (fraction of 1)`."""
    if name in (gettext_lazy("revenue"), gettext_lazy("revenue_per_recipient")):
        title = gettext("Revenue") if name == "revenue" else gettext("Revenue per person")
        header = formatting.column(title, formatting.currency_label())
    else:
        title, unit = RESULT_HEADERS.get(name, (formatting.label(name), ""))
        header = formatting.column(str(title), str(unit))
    if always_valid:
        return gettext("Always-valid %(column)s") % {"column": header[:1].lower() + header[1:]}
    if name in ("ci_low", "ci_high", "p_value", "significant"):
        return gettext("Fixed-horizon %(column)s") % {"column": header[:1].lower() + header[1:]}
    return header


class SegmentBuilderWidget(forms.Textarea):
    """The definition as rows of conditions (campaigns/static/campaigns/segment_builder.js) with a
    live size, sample, warnings and errors; the JSON stays below, editable, for what the rows
    cannot draw (groups more than three deep, `not` of a `not`) and for power users."""

    template_name = "admin/campaigns/widgets/segment_builder.html"

    def get_context(self, name, value, attrs):
        from campaigns.segment_builder import builder_options

        context = super().get_context(name, value, attrs)
        context["builder_options"] = builder_options()
        context["check_url"] = reverse("admin:campaigns_segment_check")
        return context

    class Media:
        js = ["campaigns/segment_builder.js"]


class SegmentForm(forms.ModelForm):
    class Meta:
        model = Segment
        fields = ["name", "definition", "description"]
        widgets = {"definition": SegmentBuilderWidget}

    def clean_definition(self):
        definition = self.cleaned_data["definition"]
        try:
            compile_definition(definition)
        except DefinitionError as exc:
            raise forms.ValidationError(exc.errors) from None
        return definition


@admin.register(Segment)
class SegmentAdmin(admin.ModelAdmin):
    form = SegmentForm
    list_display = ["name", "campaign_count", "updated_at"]
    search_fields = ["name", "description"]
    readonly_fields = ["audience_preview"]

    def get_queryset(self, request):
        from django.db.models import Count

        # A GROUP BY drops Meta.ordering; the autocomplete pages through this queryset.
        return super().get_queryset(request).annotate(n_campaigns=Count("campaigns")).order_by("name", "pk")

    @admin.display(description=_("Campaigns"), ordering="n_campaigns")
    def campaign_count(self, obj: Segment) -> int:
        return obj.n_campaigns

    @admin.display(description=_("Audience (live)"))
    def audience_preview(self, obj: Segment) -> str:
        return _preview_html(obj) if obj.pk else gettext("Save to see the size and a sample.")

    def save_model(self, request, obj, form, change) -> None:
        from campaigns.segment_builder import definition_warnings

        services.save_segment(segment=obj, changed=form.changed_data, actor=request.user)
        for warning in definition_warnings(obj.definition):
            self.message_user(request, warning, messages.WARNING)

    def get_urls(self):
        check = path("check/", self.admin_site.admin_view(self.check_view), name="campaigns_segment_check")
        return [check, *super().get_urls()]

    def check_view(self, request: HttpRequest) -> JsonResponse:
        """The builder's live check of a definition being edited (POST its JSON): errors listing
        what is allowed, else size, sample and warnings. Nothing is saved."""
        from campaigns.segment_builder import check_definition

        if not (self.has_add_permission(request) or self.has_change_permission(request)):
            raise PermissionDenied
        if request.method != "POST":
            return JsonResponse({"errors": ["POST the definition as JSON"]}, status=405)
        try:
            definition = json.loads(request.body or b"null")
        except ValueError as exc:
            return JsonResponse({"errors": [f"definition: not JSON ({exc})"]}, status=400)
        return JsonResponse(check_definition(definition))


# --- campaigns ---------------------------------------------------------------------------------


class VariantFormSet(BaseInlineFormSet):
    def clean(self) -> None:
        super().clean()
        kept = [f.cleaned_data for f in self.forms if f.cleaned_data and not f.cleaned_data.get("DELETE")]
        problems = validation.variant_problems((v.get("name", ""), v.get("weight") or 0) for v in kept)
        if problems:
            raise forms.ValidationError(problems["variants"])


class CouponRuleInput(forms.NumberInput):
    """The coupon rule of a variant, picked by name: the browser completes from the active rules
    (an HTML datalist: type a few letters of the name, or the id) and the chosen rule's name,
    kind and budget show beside the box."""

    def get_context(self, name, value, attrs):
        from coupons.models import CouponRule, RuleState

        context = super().get_context(name, value, {**(attrs or {}), "list": "coupon-rule-choices"})
        rules = CouponRule.objects.filter(state=RuleState.ACTIVE).order_by("name")[:500]
        context["rule_choices"] = [(r.pk, _rule_label(r)) for r in rules]
        rule_id = _rule_id(value)
        chosen = CouponRule.objects.filter(pk=rule_id).first() if rule_id is not None else None
        context["chosen"] = _rule_label(chosen) if chosen else ""
        return context

    template_name = "admin/campaigns/widgets/coupon_rule_input.html"


def _rule_id(value: object) -> int | None:
    """The rule id in what the box holds, or None: an invalid form comes back with the text as
    typed, and `isdigit()` or `int()` alone take "²" or "١٢" for digits."""
    text = str(value if value is not None else "")
    if not (text.isascii() and text.isdigit()):
        return None
    number = int(text)
    return number if 0 < number < 2**63 else None


def _rule_label(rule) -> str:
    amount = f"{rule.value:g} %" if rule.kind == "percent" else formatting.money(rule.value)
    if rule.budget is None:
        return gettext("%(name)s (%(amount)s off)") % {"name": rule.name, "amount": amount}
    return gettext("%(name)s (%(amount)s off, %(left)s left)") % {
        "name": rule.name,
        "amount": amount,
        "left": formatting.money(rule.budget - rule.committed),
    }


class VariantInline(admin.StackedInline):
    """Stacked, not a table: a variant's message fields fit a 1366 px screen without scrolling."""

    model = Variant
    formset = VariantFormSet
    formfield_overrides = URL_FIELDS
    extra = 0
    min_num = 1
    fields = [("position", "name", "weight"), "title", "body", "url", "coupon_rule_id", "material_version"]
    autocomplete_fields = ["material_version"]

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if db_field.name == "coupon_rule_id":
            kwargs["widget"] = CouponRuleInput
            kwargs["label"] = gettext("Coupon rule")
            kwargs["help_text"] = gettext("Type part of the rule's name; leave empty for no coupon.")
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    def has_change_permission(self, request, obj=None) -> bool:
        return super().has_change_permission(request, obj) and (obj is None or obj.status == CampaignStatus.DRAFT)

    has_add_permission = has_change_permission
    has_delete_permission = has_change_permission


def _run_action(modeladmin, request, queryset, label: str, fn) -> None:
    done = 0
    for campaign in queryset:
        try:
            fn(campaign_id=campaign.pk, actor=request.user)
            done += 1
        except DomainError as exc:
            modeladmin.message_user(request, f"{campaign}: {exc.detail}", messages.WARNING)
    if done:
        modeladmin.message_user(
            request,
            gettext("%(label)s: %(n)d campaign(s).") % {"label": label, "n": done},
            messages.SUCCESS,
        )


@admin.action(description=_("Launch selected campaigns"), permissions=["send"])
def launch(modeladmin, request, queryset):
    _run_action(modeladmin, request, queryset, gettext("Launched"), services.launch_campaign)


@admin.action(description=_("Pause selected campaigns"), permissions=["send"])
def pause(modeladmin, request, queryset):
    _run_action(modeladmin, request, queryset, gettext("Paused"), services.pause_campaign)


@admin.action(description=_("Resume selected campaigns"), permissions=["send"])
def resume(modeladmin, request, queryset):
    _run_action(modeladmin, request, queryset, gettext("Resumed"), services.resume_campaign)


@admin.action(description=_("Cancel selected campaigns (stop for good)"), permissions=["send"])
def cancel(modeladmin, request, queryset):
    _run_action(modeladmin, request, queryset, gettext("Cancelled"), services.cancel_campaign)


@admin.action(description=_("Retry selected failed campaigns (from where they stopped)"), permissions=["send"])
def retry(modeladmin, request, queryset):
    _run_action(modeladmin, request, queryset, gettext("Retried"), services.retry_campaign)


@admin.action(description=_("Roll out the winner to the rest (after the pilot)"), permissions=["send"])
def rollout(modeladmin, request, queryset):
    """Only the always-valid winner goes out from here; a campaign without one links to its
    roll-out page, where the operator may choose a variant and confirm the named risk."""
    done = 0
    for campaign in queryset:
        try:
            services.rollout_campaign(campaign_id=campaign.pk, actor=request.user)
            done += 1
        except (errors.NoWinner, errors.ConfirmationRequired) as exc:
            url = reverse("admin:campaigns_campaign_rollout", args=[campaign.pk])
            modeladmin.message_user(
                request,
                format_html(
                    '{}: {} <a href="{}">{}</a>', campaign, exc.detail, url, gettext("Choose a variant and confirm")
                ),
                messages.WARNING,
            )
        except DomainError as exc:
            modeladmin.message_user(request, f"{campaign}: {exc.detail}", messages.WARNING)
    if done:
        modeladmin.message_user(
            request,
            gettext("Rolled out: %(n)d campaign(s).") % {"n": done},
            messages.SUCCESS,
        )


@admin.action(description=_("Clone as next iteration (winner as control)"), permissions=["add"])
def clone(modeladmin, request, queryset):
    _run_action(modeladmin, request, queryset, gettext("Cloned"), services.clone_campaign)


class RolloutForm(forms.Form):
    variant = forms.ChoiceField()
    confirm = forms.BooleanField(
        required=False, label=_("I accept the risk named above and want to roll this variant out anyway")
    )


class TestMessageForm(forms.Form):
    variant = forms.ModelChoiceField(queryset=Variant.objects.none())
    user_id = forms.CharField(max_length=128, help_text=_("Your own user id in the product (your test device)"))


# The allocation settings a form may leave out: a campaign made before they existed (or a script
# posting the old form) keeps a fixed split with the model's defaults.
ALLOCATION_DEFAULTS = ("allocation", "bandit_floor_percent", "bandit_interval_minutes", "margin_percent")


class CampaignForm(forms.ModelForm):
    class Meta:
        model = Campaign
        # The admin's fieldsets name the form's fields; these are the ones this form adjusts.
        fields = ALLOCATION_DEFAULTS

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for name in ALLOCATION_DEFAULTS:
            if name in self.fields:
                self.fields[name].required = False

    def _post_clean(self) -> None:
        for name in ALLOCATION_DEFAULTS:
            if name in self.fields and self.cleaned_data.get(name) in (None, ""):
                self.cleaned_data[name] = Campaign._meta.get_field(name).get_default()
        super()._post_clean()


@admin.register(Campaign)
class CampaignAdmin(admin.ModelAdmin):
    form = CampaignForm
    inlines = [VariantInline]
    list_display = [
        "name",
        "channel",
        "status_now",
        "phase",
        "iteration",
        "segment",
        "schedule_kind",
        "launched_at",
        "failure",
    ]
    list_filter = ["status", "phase", "channel", "schedule_kind"]
    search_fields = ["name", "segment__name"]
    list_select_related = ["segment"]
    actions = [launch, pause, resume, retry, rollout, cancel, clone]
    autocomplete_fields = ["segment"]
    readonly_fields = [
        "status",
        "status_now",
        "phase",
        "winner",
        "parent",
        "iteration",
        "launched_at",
        "pilot_sent_at",
        "rolled_out_at",
        "sent_at",
        "completed_at",
        "periodic_task",
        "trigger_tag_cursor",
        "failed_at",
        "failure_reason",
        "allocation_error",
        "allocation_error_at",
        "shares_in_force",
        "live_counters",
        "audience_preview",
        "links",
    ]
    fieldsets = [
        (None, {"fields": ["name", "segment", "audience_preview", "channel", "goal_event", "attribution_hours"]}),
        (_("Test design"), {"fields": ["holdout_percent", "pilot_percent", "auto_rollout", "alpha", "min_sample"]}),
        (
            _("Allocation (recurring and triggered campaigns)"),
            {
                "fields": [
                    "allocation",
                    "bandit_floor_percent",
                    "bandit_interval_minutes",
                    "margin_percent",
                    "bandit_seed",
                    "shares_in_force",
                    "allocation_error",
                    "allocation_error_at",
                ]
            },
        ),
        (
            _("Schedule and limits"),
            {
                "fields": [
                    "schedule_kind",
                    "send_at",
                    "cron",
                    "trigger_event",
                    "trigger_tag",
                    "delay_minutes",
                    "frequency_cap_per_day",
                    "respect_quiet_hours",
                    "quiet_start_hour",
                    "quiet_end_hour",
                ]
            },
        ),
        (
            _("Progress"),
            {
                "fields": [
                    "links",
                    "live_counters",
                    "status_now",
                    "failure_reason",
                    "failed_at",
                    "phase",
                    "winner",
                    "parent",
                    "iteration",
                    "launched_at",
                    "pilot_sent_at",
                    "rolled_out_at",
                    "sent_at",
                    "completed_at",
                    "periodic_task",
                    "trigger_tag_cursor",
                ]
            },
        ),
    ]

    def has_send_permission(self, request) -> bool:
        return request.user.has_perm("campaigns.send_campaign")

    def change_view(self, request, object_id, form_url="", extra_context=None):
        # Allowed but worth a look (a trigger on an event never recorded): said on the page itself.
        campaign = self.get_object(request, object_id) if request.method == "GET" else None
        for warning in selectors.campaign_warnings(campaign) if campaign else []:
            messages.warning(request, warning)
        extra_context = {
            **(extra_context or {}),
            # The object tools show Launch… on a draft the reader may send.
            "can_launch": bool(
                campaign and campaign.status == CampaignStatus.DRAFT and self.has_send_permission(request)
            ),
            "shown_status": selectors.shown_status(campaign) if campaign else "",
        }
        return super().change_view(request, object_id, form_url, extra_context)

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None and obj.status != CampaignStatus.DRAFT:
            # What was tested must stay what the results describe.
            fields += [f.name for f in Campaign._meta.fields if f.name not in fields and f.editable]
        return fields

    @admin.display(description=gettext_lazy("Status"), ordering="status")
    def status_now(self, obj: Campaign) -> str:
        return selectors.shown_status(obj) if obj.pk else "-"

    @admin.display(description=_("Why it failed"))
    def failure(self, obj: Campaign) -> str:
        return obj.failure_reason[:120]

    @admin.display(description=_("Shares of newcomers in force"))
    def shares_in_force(self, obj: Campaign) -> str:
        if not obj.pk:
            return "-"
        shares = selectors.current_shares(obj)
        return ", ".join(f"{selectors.group_label(n)} {formatting.percent(s)}" for n, s in shares.items()) or "-"

    @admin.display(description=_("Audience (live)"))
    def audience_preview(self, obj: Campaign) -> str:
        return _preview_html(obj.segment) if obj.pk else "-"

    @admin.display(description=_("Pages"))
    def links(self, obj: Campaign) -> str:
        if not obj.pk:
            return "-"
        items = [
            (reverse("admin:campaigns_campaign_results", args=[obj.pk]), gettext("Results")),
            (reverse("admin:campaigns_campaign_history", args=[obj.pk]), gettext("History of iterations")),
            (reverse("admin:campaigns_campaign_test_message", args=[obj.pk]), gettext("Send a test message")),
            (reverse("admin:campaigns_delivery_changelist") + f"?campaign__id__exact={obj.pk}", gettext("Deliveries")),
        ]
        return format_html_join(" | ", '<a href="{}">{}</a>', items)

    @admin.display(description=_("Counters (live)"))
    def live_counters(self, obj: Campaign) -> str:
        if not obj.pk:
            return "-"
        url = reverse("admin:campaigns_campaign_counters", args=[obj.pk])
        counters = selectors.delivery_counters(obj)
        cells = format_html_join(
            "", '<td style="padding:0 1em" data-counter="{}">{}</td>', ((k, v) for k, v in counters.items())
        )
        labels = {"assigned": gettext("Assigned"), **dict(DeliveryStatus.choices)}
        heads = format_html_join("", '<th style="padding:0 1em">{}</th>', ((labels.get(k, k),) for k in counters))
        return format_html(
            '<table id="live-counters"><tr>{}</tr><tr>{}</tr></table>'
            "<script>(function(){{var t=document.getElementById('live-counters');"
            "setInterval(function(){{fetch('{}').then(function(r){{return r.json()}}).then(function(c){{"
            "for(var k in c){{var td=t.querySelector('[data-counter=\"'+k+'\"]');if(td)td.textContent=c[k];}}"
            "}})}},5000)}})();</script>",
            heads,
            cells,
            url,
        )

    def get_urls(self):
        own = [
            path("<int:pk>/results/", self.admin_site.admin_view(self.results_view), name="campaigns_campaign_results"),
            path("<int:pk>/history/", self.admin_site.admin_view(self.history_view), name="campaigns_campaign_history"),
            path("<int:pk>/rollout/", self.admin_site.admin_view(self.rollout_view), name="campaigns_campaign_rollout"),
            path("<int:pk>/launch/", self.admin_site.admin_view(self.launch_view), name="campaigns_campaign_launch"),
            path(
                "<int:pk>/test-message/",
                self.admin_site.admin_view(self.test_message_view),
                name="campaigns_campaign_test_message",
            ),
            path(
                "<int:pk>/counters.json",
                self.admin_site.admin_view(self.counters_view),
                name="campaigns_campaign_counters",
            ),
        ]
        return own + super().get_urls()

    def _campaign(self, request: HttpRequest, pk: int) -> Campaign:
        # The permission before the lookup: without it, a 404 or not would say which campaigns exist.
        if not self.has_view_permission(request):
            raise PermissionDenied
        campaign = get_object_or_404(Campaign.objects.select_related("segment", "winner"), pk=pk)
        if not self.has_view_permission(request, campaign):
            raise PermissionDenied
        return campaign

    def counters_view(self, request: HttpRequest, pk: int) -> JsonResponse:
        return JsonResponse(selectors.delivery_counters(self._campaign(request, pk)))

    RESULT_COLUMNS = (
        "name", "assigned", "sent", "delivered", "failed", "opened", "clicked", "converted", "conversion_rate",
        "ci_low", "ci_high", "uplift_vs_holdout", "relative_uplift", "p_value", "significant", "revenue",
        "revenue_per_recipient", "coupon_redemptions",
    )  # fmt: skip
    # The always-valid columns, labelled apart from the fixed-horizon ones above.
    SEQUENTIAL_COLUMNS = ("ci_low", "ci_high", "uplift_ci_low", "uplift_ci_high", "p_value", "p_value_holm")

    def results_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        campaign = self._campaign(request, pk)
        # Once completed, the frozen snapshot is the one result set (the history reads it too).
        results = selectors.current_results(campaign)
        if request.GET.get("format") == "csv":
            response = HttpResponse(content_type="text/csv; charset=utf-8")
            response["Content-Disposition"] = f'attachment; filename="campaign-{campaign.pk}-results.csv"'
            writer = csv.writer(response)
            writer.writerow(
                [
                    *(result_column(c) for c in self.RESULT_COLUMNS),
                    *(result_column(c, always_valid=True) for c in self.SEQUENTIAL_COLUMNS),
                ]
            )
            for group in results["groups"]:
                fixed = [group.get(c) for c in self.RESULT_COLUMNS]
                sequential = [group["sequential"].get(c) for c in self.SEQUENTIAL_COLUMNS]
                writer.writerow(["" if v is None else v for v in [*fixed, *sequential]])
            return response
        chart = {
            "labels": [selectors.group_label(g["name"]) for g in results["groups"]],
            "rates": [round((g["conversion_rate"] or 0) * 100, 3) for g in results["groups"]],
            # The chart shows the always-valid interval: it is the one that stays true at every look.
            "low": [round((g["sequential"]["ci_low"] or 0) * 100, 3) for g in results["groups"]],
            "high": [round((g["sequential"]["ci_high"] or 0) * 100, 3) for g in results["groups"]],
        }
        history = list(reversed(selectors.allocation_history(campaign)))
        names = [g["name"] for g in results["groups"]]
        shares_chart = {
            "times": [a["valid_from"][:16].replace("T", " ") for a in history],
            "series": {
                selectors.group_label(n): [round(a["shares"].get(n, 0) * 100, 2) for a in history] for n in names
            },
        }
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "original": campaign,
            "title": gettext("Results: %(name)s") % {"name": campaign},
            "results": results,
            "chart": chart,
            "allocation_history": history[::-1],
            "shares_chart": shares_chart,
            "skipped": selectors.skipped_by_reason(campaign),
            "shown_status": selectors.shown_status(campaign),
            "phase_label": CampaignPhase(results["phase"]).label if results["phase"] in CampaignPhase.values else "",
            "control_label": selectors.group_label(results["control"]),
            "results_final": selectors.results_are_final(campaign),
        }
        return TemplateResponse(request, "admin/campaigns/campaign/results.html", context)

    def history_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        campaign = self._campaign(request, pk)
        rows = []
        for item in selectors.campaign_lineage(campaign):
            # The snapshot taken when the last message went out holds conversions up to then only:
            # until the attribution window closes (the campaign is completed), count them live.
            results = selectors.current_results(item)
            rows.append({"campaign": item, "results": results, "status": selectors.shown_status(item)})
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "original": campaign,
            "title": gettext("Iterations of %(name)s") % {"name": campaign},
            "rows": rows,
        }
        return TemplateResponse(request, "admin/campaigns/campaign/history.html", context)

    def rollout_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        """Roll out a chosen variant: the winner at once; any other only with the confirmation box
        ticked, after the page has named the risk (the service audits it)."""
        if not self.has_send_permission(request):
            raise PermissionDenied
        campaign = self._campaign(request, pk)
        results = selectors.campaign_results(campaign)
        names = list(campaign.variants.order_by("position", "id").values_list("name", flat=True))
        form = RolloutForm(request.POST or None, initial={"variant": results["winner"]})
        form.fields["variant"].choices = [(n, n) for n in names]
        risk = None
        if request.method == "POST" and form.is_valid():
            variant = form.cleaned_data["variant"]
            try:
                services.rollout_campaign(
                    campaign_id=campaign.pk,
                    variant_name=variant,
                    confirm=form.cleaned_data["confirm"],
                    actor=request.user,
                )
            except errors.ConfirmationRequired as exc:
                risk = exc.extra.get("risk")
                self.message_user(request, gettext("Tick the box to confirm, or choose the winner."), messages.WARNING)
            except DomainError as exc:
                self.message_user(request, exc.detail, messages.ERROR)
            else:
                self.message_user(request, gettext("Rolled out %(variant)s.") % {"variant": variant}, messages.SUCCESS)
                return redirect("admin:campaigns_campaign_results", campaign.pk)
        risks = {n: services.rollout_risk(results, n) for n in names}
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "original": campaign,
            "title": gettext("Roll out: %(name)s") % {"name": campaign},
            "results": results,
            "risks": risks,
            "risk": risk,
            "form": form,
        }
        return TemplateResponse(request, "admin/campaigns/campaign/rollout.html", context)

    def launch_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        """The Launch button's page: the forecast of what launching does (audience, who is skipped
        and why, quiet hours, the coupon money committed), then the launch itself on POST."""
        if not self.has_send_permission(request):
            raise PermissionDenied
        campaign = self._campaign(request, pk)
        if request.method == "POST":
            try:
                services.launch_campaign(campaign_id=campaign.pk, actor=request.user)
            except DomainError as exc:
                self.message_user(request, exc.detail, messages.ERROR)
            else:
                self.message_user(request, gettext("Launched %(name)s.") % {"name": campaign}, messages.SUCCESS)
                return redirect("admin:campaigns_campaign_change", campaign.pk)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "original": campaign,
            "title": gettext("Launch: %(name)s") % {"name": campaign},
            "forecast": selectors.launch_forecast(campaign),
            "launchable": campaign.status == CampaignStatus.DRAFT,
        }
        return TemplateResponse(request, "admin/campaigns/campaign/launch.html", context)

    def test_message_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        if not self.has_send_permission(request):
            raise PermissionDenied
        campaign = self._campaign(request, pk)
        form = TestMessageForm(request.POST or None)
        form.fields["variant"].queryset = campaign.variants.all()
        if request.method == "POST" and form.is_valid():
            try:
                outcome = services.send_test_message(
                    campaign=campaign,
                    variant=form.cleaned_data["variant"],
                    user_id=form.cleaned_data["user_id"],
                    actor=request.user,
                )
            except DomainError as exc:
                self.message_user(request, exc.detail, messages.ERROR)
            else:
                level = messages.SUCCESS if outcome.kind == "sent" else messages.ERROR
                shown = {"sent": gettext("Test message sent."), "failed": gettext("Test message failed.")}.get(
                    outcome.kind, gettext("Test message not sent.")
                )
                self.message_user(request, f"{shown} {outcome.reason}".strip(), level)
                return redirect("admin:campaigns_campaign_change", campaign.pk)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "original": campaign,
            "title": gettext("Send a test message: %(name)s") % {"name": campaign},
            "form": form,
        }
        return TemplateResponse(request, "admin/campaigns/campaign/test_message.html", context)

    def save_model(self, request, obj, form, change) -> None:
        services.save_campaign(campaign=obj, changed=form.changed_data, actor=request.user)

    def save_formset(self, request, form, formset, change) -> None:
        saved = formset.save(commit=False)  # written, and the removed ones deleted, by the service
        services.save_variants(campaign=form.instance, saved=saved, deleted=formset.deleted_objects, actor=request.user)
        formset.save_m2m()


@admin.action(description=_("Outcome unknown: the provider sent them (record as sent)"), permissions=["send"])
def unknown_were_sent(modeladmin, request, queryset):
    done = services.settle_unknown_deliveries(
        delivery_ids=list(queryset.values_list("pk", flat=True)), was_sent=True, actor=request.user
    )
    modeladmin.message_user(
        request,
        gettext("Recorded as sent: %(n)d message(s) of unknown outcome.") % {"n": done},
        messages.SUCCESS,
    )


@admin.action(description=_("Outcome unknown: not sent (send again, same key)"), permissions=["send"])
def unknown_send_again(modeladmin, request, queryset):
    done = services.settle_unknown_deliveries(
        delivery_ids=list(queryset.values_list("pk", flat=True)), was_sent=False, actor=request.user
    )
    modeladmin.message_user(
        request,
        gettext("Queued again: %(n)d message(s) of unknown outcome.") % {"n": done},
        messages.SUCCESS,
    )


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    actions = [unknown_were_sent, unknown_send_again]

    def has_send_permission(self, request) -> bool:
        return request.user.has_perm("campaigns.send_campaign")

    list_display = [
        "id",
        "campaign",
        "variant",
        "user_id",
        "channel",
        "phase",
        "status",
        "attempts",
        "sent_at",
        "reason",
    ]
    list_filter = ["status", "channel", "phase", "campaign"]
    search_fields = ["user_id", "=idempotency_key"]
    list_select_related = ["campaign", "variant"]
    date_hierarchy = "created_at"

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in Delivery._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Assignment)
class AssignmentAdmin(admin.ModelAdmin):
    list_display = ["campaign", "user_id", "role", "variant", "assigned_at"]
    list_filter = ["role", "campaign"]
    search_fields = ["user_id"]
    list_select_related = ["campaign", "variant"]

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in Assignment._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
