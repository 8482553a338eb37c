"""Journeys in the admin: a campaign's steps edited as a list (checked as a whole), the launch,
and the journey page: its steps in order with how many reached each, wait there, left there,
and the messages of each send step, with a chart."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from campaigns.models import CampaignStatus, Variant
from campaigns.selectors import group_label
from config import formatting
from config.errors import DomainError
from journeys import selectors, services
from journeys.models import Journey, JourneyStep

STEP_FIELDS = (
    "kind",
    "variant",
    "wait_minutes",
    "event",
    "branch_on",
    "tag",
    "trait",
    "trait_operator",
    "trait_value",
    "goto",
)


class StepFormSet(forms.BaseInlineFormSet):
    """Steps are saved at positions 0..n-1 in the order typed; a `goto` names a position as
    typed, so it is carried over to the step it named (one past the last typed: the end)."""

    def clean(self) -> None:
        super().clean()
        steps, problems = self._renumbered()
        if not problems:
            problems = services.step_problems(self.instance, steps)
        if problems:
            raise ValidationError([f"{k}: {v}" for k, v in problems.items()])

    def ordered_steps(self) -> list[dict]:
        return self._renumbered()[0]

    def _renumbered(self) -> tuple[list[dict], dict[str, str]]:
        kept = [
            f.cleaned_data
            for f in self.forms
            if f.cleaned_data and not f.cleaned_data.get("DELETE") and f.cleaned_data.get("kind")
        ]
        kept.sort(key=lambda d: d.get("position") or 0)
        typed = [d.get("position") or 0 for d in kept]
        problems: dict[str, str] = {}
        if repeated := sorted({p for p in typed if typed.count(p) > 1}):
            problems["position"] = gettext("Each step needs its own position; repeated: %(positions)s.") % {
                "positions": ", ".join(map(str, repeated))
            }
        new_index = {p: i for i, p in enumerate(typed)}
        steps = []
        for i, d in enumerate(kept):
            step = {k: (d[k].pk if k == "variant" and d.get(k) else d.get(k)) for k in STEP_FIELDS}
            goto = step["goto"]
            if goto is not None:
                if goto in new_index:
                    step["goto"] = new_index[goto]
                elif typed and goto > typed[-1]:
                    step["goto"] = len(kept)  # past the last step: the journey ends
                else:
                    problems[f"steps[{i}]"] = gettext(
                        "goto %(goto)s names no step; the positions are %(positions)s (or one past the last: the end)."
                    ) % {"goto": goto, "positions": ", ".join(map(str, typed))}
            steps.append(step)
        return steps, problems


class JourneyStepInline(admin.TabularInline):
    model = JourneyStep
    formset = StepFormSet
    fields = ("position", *STEP_FIELDS)
    extra = 1

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "variant":
            campaign_id = request.resolver_match.kwargs.get("object_id") if request.resolver_match else None
            kwargs["queryset"] = Variant.objects.filter(campaign_id=campaign_id)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def has_change_permission(self, request, obj=None) -> bool:
        return super().has_change_permission(request, obj) and (obj is None or obj.status == CampaignStatus.DRAFT)

    has_add_permission = has_change_permission
    has_delete_permission = has_change_permission


@admin.register(Journey)
class JourneyAdmin(admin.ModelAdmin):
    list_display = ("name", "status", "channel", "goal_event", "steps_link")
    list_filter = ("status", "channel")
    search_fields = ("name",)
    fields = ("name", "status", "channel", "segment", "goal_event", "holdout_percent")
    readonly_fields = fields
    inlines = [JourneyStepInline]
    change_form_template = "admin/journeys/journey/change_form.html"

    def has_add_permission(self, request) -> bool:
        return False  # a journey is a campaign (Campaigns > add) given steps here

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description=_("Journey"))
    def steps_link(self, obj: Journey) -> str:
        url = reverse("admin:journeys_journey_steps", args=[obj.pk])
        return format_html('<a href="{}">{}</a>', url, gettext("Steps and counts"))

    def save_formset(self, request, form, formset, change) -> None:
        if isinstance(formset, StepFormSet):
            services.set_steps(campaign=form.instance, steps=formset.ordered_steps(), actor=request.user)
            # The steps were replaced as a whole (audited there); the admin's change message
            # reads these lists, which only formset.save() would have set.
            formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []
            return
        super().save_formset(request, form, formset, change)

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None:
            context["steps_url"] = reverse("admin:journeys_journey_steps", args=[obj.pk])
            context["launch_url"] = reverse("admin:journeys_journey_launch", args=[obj.pk])
            context["can_launch"] = obj.status == CampaignStatus.DRAFT and request.user.has_perm(
                "campaigns.send_campaign"
            )
        return super().render_change_form(request, context, add, change, form_url, obj)

    def get_urls(self):
        own = [
            path("<int:pk>/steps/", self.admin_site.admin_view(self.steps_view), name="journeys_journey_steps"),
            path("<int:pk>/launch/", self.admin_site.admin_view(self.launch_view), name="journeys_journey_launch"),
            path("<int:pk>/retry/", self.admin_site.admin_view(self.retry_view), name="journeys_journey_retry"),
        ]
        return own + super().get_urls()

    def _journey_to_send(self, request: HttpRequest, pk: int) -> Journey:
        """The journey a sending action (launch, retry) acts on. The permission comes before the
        lookup: without it, a 404 or not would say which journeys exist."""
        if not request.user.has_perm("campaigns.send_campaign"):
            raise PermissionDenied
        return get_object_or_404(Journey, pk=pk)

    def launch_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseRedirect(reverse("admin:journeys_journey_change", args=[pk]))
        journey = self._journey_to_send(request, pk)
        try:
            entered = services.launch_journey(campaign=journey, actor=request.user)
        except DomainError as exc:
            messages.error(request, gettext("Not launched: %(reason)s") % {"reason": exc.detail})
            return HttpResponseRedirect(reverse("admin:journeys_journey_change", args=[pk]))
        messages.success(request, gettext("Launched: %(n)d people entered the first step.") % {"n": entered})
        return HttpResponseRedirect(reverse("admin:journeys_journey_steps", args=[pk]))

    def retry_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseRedirect(reverse("admin:journeys_journey_steps", args=[pk]))
        journey = self._journey_to_send(request, pk)
        try:
            retried = services.retry_failed_runs(campaign=journey, actor=request.user)
        except DomainError as exc:
            messages.error(request, exc.detail)
            return HttpResponseRedirect(reverse("admin:journeys_journey_steps", args=[pk]))
        if retried:
            messages.success(
                request,
                ngettext(
                    "%(n)d failing run will be tried again now.", "%(n)d failing runs will be tried again now.", retried
                )
                % {"n": retried},
            )
        else:
            messages.info(request, gettext("No run is failing now."))
        return HttpResponseRedirect(reverse("admin:journeys_journey_steps", args=[pk]))

    def steps_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        journey = get_object_or_404(Journey, pk=pk)
        data = selectors.journey(journey)
        chart = {
            "labels": [f"{s['position']}. {s['label']}" for s in data["steps"]],
            "reached": [s["reached"] for s in data["steps"]],
            "waiting": [s["waiting"] for s in data["steps"]],
            "sent": [(s["deliveries"] or {}).get("sent", 0) for s in data["steps"]],
        }
        groups = (data["results"] or {}).get("groups", [])
        for g in groups:  # the uplift in percentage points, as every result page writes it
            g["uplift_shown"] = _points(g["uplift_points"])
            low, high = g["uplift_ci_low_points"], g["uplift_ci_high_points"]
            g["uplift_interval_shown"] = (
                "" if low is None or high is None else f"{_points(low)} \N{EN DASH} {_points(high)}"
            )
        results_chart = {
            "labels": [group_label(g["name"]) for g in groups],
            "rates": [_pct(g["conversion_rate"]) for g in groups],
            "low": [_pct(g["rate_ci_low"]) for g in groups],
            "high": [_pct(g["rate_ci_high"]) for g in groups],
            "rate_label": str(_("Conversion rate (%)")),
            "low_label": str(_("Always-valid interval, low (%)")),
            "high_label": str(_("Always-valid interval, high (%)")),
        }
        context = {
            **self.admin_site.each_context(request),
            "results_chart": results_chart,
            "title": gettext("Journey: %(name)s") % {"name": journey.name},
            "original": journey,
            "opts": self.model._meta,
            "journey": data,
            "chart_data": chart,
            "can_retry": request.user.has_perm("campaigns.send_campaign"),
        }
        return TemplateResponse(request, "admin/journeys/journey/steps.html", context)


def _points(points: float | None) -> str:
    """Percentage points as the formatting helper writes them (it takes the difference of rates)."""
    return formatting.uplift_points(None if points is None else points / 100, 1)


def _pct(rate: float | None) -> float | None:
    return None if rate is None else round(rate * 100, 2)
