"""Anomaly alerts in the admin: the alerts (acknowledge, send again), each indicator's watch
setting (mute, sensitivity), who gets the alerts, and the check runs (a failed one shows its
reason and is retried)."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.utils.html import format_html
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from config import formatting
from indicators import services
from indicators.errors import AlreadyAcknowledged
from indicators.models import AlertRecipient, Anomaly, AnomalyCheckRun, IndicatorWatch, NotifyStatus


@admin.register(Anomaly)
class AnomalyAdmin(admin.ModelAdmin):
    list_display = (
        "period_start",
        "indicator",
        "granularity",
        "direction_badge",
        "value",
        "expected_range",
        "score",
        "top_movers",
        "status",
        "email_status",
        "webhook_status",
    )
    list_filter = ("status", "granularity", "direction", "indicator", "email_status", "webhook_status")
    date_hierarchy = "period_start"
    actions = ["acknowledge", "send_again"]
    readonly_fields = [f.name for f in Anomaly._meta.fields if f.name != "note"]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.display(description=_("Direction"))
    def direction_badge(self, alert: Anomaly) -> str:
        colour = "#c62828" if alert.direction == "drop" else "#1565c0"
        return format_html('<strong style="color:{}">{}</strong>', colour, alert.get_direction_display())

    @admin.display(description=_("Expected range"))
    def expected_range(self, alert: Anomaly) -> str:
        return gettext("%(low)s to %(high)s (expected %(expected)s)") % {
            "low": formatting.number(alert.low),
            "high": formatting.number(alert.high),
            "expected": formatting.number(alert.expected),
        }

    @admin.display(description=_("Moved most"))
    def top_movers(self, alert: Anomaly) -> str:
        return "; ".join(f"{m['source']} {m['change']}" for m in alert.movers or []) or "-"

    @admin.action(description=_("Acknowledge the selected alerts"), permissions=["change"])
    def acknowledge(self, request, queryset):
        done = 0
        for alert in queryset:
            try:
                services.acknowledge_alert(alert_id=alert.pk, actor=request.user)
                done += 1
            except AlreadyAcknowledged:
                pass
        self.message_user(request, gettext("%(n)s alert(s) acknowledged.") % {"n": done})

    @admin.action(description=_("Send the failed notifications of the selected alerts again"), permissions=["change"])
    def send_again(self, request, queryset):
        failed = queryset.filter(**{"email_status": NotifyStatus.FAILED}) | queryset.filter(
            webhook_status=NotifyStatus.FAILED
        )
        sent = [services.resend_alert(alert_id=a.pk, actor=request.user) for a in failed.distinct()]
        self.message_user(request, gettext("%(n)s alert(s) queued to be sent again.") % {"n": len(sent)})

    def save_model(self, request, obj: Anomaly, form, change: bool) -> None:
        # Only the note is editable; acknowledging goes through the service (audited).
        if change and "note" in form.changed_data:
            if obj.status == "new":
                services.acknowledge_alert(alert_id=obj.pk, note=obj.note, actor=request.user)
            else:
                Anomaly.objects.filter(pk=obj.pk).update(note=obj.note)


@admin.register(IndicatorWatch)
class IndicatorWatchAdmin(admin.ModelAdmin):
    list_display = ("indicator", "muted", "sensitivity", "updated_at", "updated_by")
    list_editable = ("muted", "sensitivity")
    list_filter = ("muted", "sensitivity")
    fields = ("indicator", "muted", "sensitivity")

    def save_model(self, request, obj: IndicatorWatch, form, change: bool) -> None:
        saved = services.set_indicator_watch(
            indicator=obj.indicator, muted=obj.muted, sensitivity=obj.sensitivity, actor=request.user
        )
        obj.pk = saved.pk


class AlertRecipientForm(forms.ModelForm):
    class Meta:
        model = AlertRecipient
        fields = ("kind", "address", "active")

    def clean(self):
        data = super().clean()
        problems = services.recipient_problems(kind=data.get("kind", ""), address=data.get("address", ""))
        for field, message in problems.items():
            self.add_error(field, message)
        return data


@admin.register(AlertRecipient)
class AlertRecipientAdmin(admin.ModelAdmin):
    """Who gets the alerts, besides the deployment's own addresses (shown on the list)."""

    form = AlertRecipientForm
    list_display = ("address", "kind", "active", "created_at", "created_by")
    list_filter = ("kind", "active")
    search_fields = ("address",)

    def changelist_view(self, request, extra_context=None):
        extra_context = {
            **(extra_context or {}),
            "title": _("Alert recipients"),
            "subtitle": gettext("Also sent to, by the deployment's settings: %(addresses)s")
            % {
                "addresses": ", ".join([*settings.OPSLOOP_ALERT_EMAILS, settings.OPSLOOP_ALERT_WEBHOOK_URL]).strip(", ")
                or gettext("nobody")
            },
        }
        return super().changelist_view(request, extra_context)

    def save_model(self, request, obj: AlertRecipient, form, change: bool) -> None:
        saved = services.save_alert_recipient(
            recipient_id=obj.pk if change else None,
            kind=obj.kind,
            address=obj.address,
            active=obj.active,
            actor=request.user,
        )
        obj.pk = saved.pk


@admin.register(AnomalyCheckRun)
class AnomalyCheckRunAdmin(admin.ModelAdmin):
    list_display = ("period_start", "kind", "status", "indicators_checked", "alerts", "finished_at", "reason")
    list_filter = ("status", "kind")
    readonly_fields = [f.name for f in AnomalyCheckRun._meta.fields]
    actions = ["retry"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description=_("reason"))
    def reason(self, run: AnomalyCheckRun) -> str:
        return (run.error[:120] + "…") if len(run.error) > 120 else (run.error or "—")

    @admin.action(description=_("Retry selected failed runs"), permissions=["view"])
    def retry(self, request, queryset):
        retried = [
            services.retry_anomaly_check(run_id=run.pk, actor=request.user) for run in queryset.filter(status="failed")
        ]
        self.message_user(request, gettext("%(n)s run(s) queued again.") % {"n": len(retried)})
        if skipped := queryset.exclude(status="failed").count():
            self.message_user(
                request, gettext("%(n)s not failed: left alone.") % {"n": skipped}, level=messages.WARNING
            )
