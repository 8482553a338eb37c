"""What operators see of the material library: materials with their versions and their record
across campaigns (a chart), versions edited with their template checked at save (the line and
the reason), a preview for any person, a test send to one's own device, and approval by an
Operations lead."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import models
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from config.errors import DomainError
from materials import selectors, services
from materials.models import CHANNEL_FIELDS, Material, MaterialVersion, VersionStatus
from materials.rendering import VARIABLES, template_problems
from profiles.models import Profile
from profiles.services import record_profile_access

TEMPLATE_FIELDS = ("title", "body", "html")


class MaterialVersionInline(admin.TabularInline):
    model = MaterialVersion
    fields = ("number", "status", "title", "body", "approved_by", "approved_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True
    ordering = ("-number",)

    def has_add_permission(self, request, obj=None) -> bool:
        return False  # a version is added on its own page, where its template is checked


@admin.register(Material)
class MaterialAdmin(admin.ModelAdmin):
    list_display = ("name", "channel", "tags_shown", "owner", "latest", "archived", "performance_link")
    list_filter = ("channel", "archived")
    search_fields = ("name", "description")
    fields = ("name", "channel", "tags", "owner", "description", "archived")
    inlines = [MaterialVersionInline]

    def get_queryset(self, request):
        return selectors.materials(include_archived=True)

    def get_readonly_fields(self, request, obj=None):
        return ("channel",) if obj else ()  # its versions are written for the channel

    @admin.display(description=_("Tags"))
    def tags_shown(self, obj: Material) -> str:
        return ", ".join(obj.tags)

    @admin.display(description=_("Latest version"), ordering="latest_version")
    def latest(self, obj: Material) -> str:
        return f"v{obj.latest_version}" if getattr(obj, "latest_version", None) else "-"

    @admin.display(description=_("Across campaigns"))
    def performance_link(self, obj: Material) -> str:
        url = reverse("admin:materials_material_performance", args=[obj.pk])
        return format_html('<a href="{}">{}</a>', url, gettext("Sends and effect"))

    def save_model(self, request, obj: Material, form, change) -> None:
        if change:
            changes = {k: form.cleaned_data[k] for k in form.changed_data if k != "channel"}
            services.update_material(material=obj, actor=request.user, **changes)
            return
        created = services.create_material(
            name=obj.name,
            channel=obj.channel,
            tags=obj.tags,
            owner=obj.owner or request.user,
            description=obj.description,
            actor=request.user,
        )
        obj.pk = created.pk

    def get_urls(self):
        own = [
            path(
                "<int:material_id>/performance/",
                self.admin_site.admin_view(self.performance_view),
                name="materials_material_performance",
            )
        ]
        return own + super().get_urls()

    def performance_view(self, request: HttpRequest, material_id: int) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        material = get_object_or_404(Material, pk=material_id)
        rows = selectors.material_history(material)
        chart = {
            "labels": [f"{r['campaign_name']} / {r['variant']} (v{r['version']})" for r in rows],
            "sent": [r["sent"] for r in rows],
            "opened": [r["opened"] for r in rows],
            "clicked": [r["clicked"] for r in rows],
            "converted": [r["converted"] for r in rows],
        }
        context = {
            **self.admin_site.each_context(request),
            "title": gettext("%(material)s: across campaigns") % {"material": material},
            "original": material,
            "opts": self.model._meta,
            "rows": rows,
            "chart_data": chart,
        }
        return TemplateResponse(request, "admin/materials/material/performance.html", context)


def _https_urls(field: models.Field, **kwargs: Any) -> forms.Field | None:
    # The admin rebuilds this form without a read-only field's declaration (an approved
    # version's url), from the model's field: https there too, as the editable field assumes.
    if isinstance(field, models.URLField):
        kwargs.setdefault("assume_scheme", "https")
    return field.formfield(**kwargs)


class VersionForm(forms.ModelForm):
    url = forms.URLField(
        label=_("URL"),
        required=False,
        max_length=1000,
        assume_scheme="https",
        help_text=_("Where {{ link }} leads (tracked)"),
    )
    defaults = forms.JSONField(
        label=_("Defaults"),
        required=False,
        initial=dict,
        help_text=_('Variable -> text used when a person has no value, e.g. {"name": "friend"}'),
    )

    class Meta:
        model = MaterialVersion
        fields = ("material", "title", "body", "html", "url", "defaults")
        formfield_callback = _https_urls
        widgets = {
            "body": forms.Textarea(attrs={"rows": 6, "cols": 80, "style": "font-family: monospace"}),
            "html": forms.Textarea(attrs={"rows": 10, "cols": 80, "style": "font-family: monospace"}),
        }

    def clean_defaults(self) -> dict[str, Any]:
        value = self.cleaned_data.get("defaults") or {}
        if not isinstance(value, dict):
            raise ValidationError(gettext('An object of variable name -> text, e.g. {"name": "friend"}.'))
        return value

    def clean(self):
        cleaned = super().clean()
        material = cleaned.get("material") or getattr(self.instance, "material", None)
        if material is None or "defaults" in self.errors:
            return cleaned
        channel_fields = CHANNEL_FIELDS[material.channel]
        fields = {name: cleaned.get(name) or "" for name in channel_fields}
        problems = template_problems(
            channel=material.channel, fields=fields, defaults=cleaned.get("defaults") or {}, url=cleaned.get("url", "")
        )
        errors: dict[str, list[str]] = {}
        for p in problems:
            target = p.field if p.field in self.fields else None
            where = gettext("Line %(line)s: ") % {"line": p.line} if p.line else ""
            errors.setdefault(target, []).append(f"{where}{p.reason}")
        if errors:
            raise ValidationError({k or "__all__": v for k, v in errors.items()})
        return cleaned


@admin.register(MaterialVersion)
class MaterialVersionAdmin(admin.ModelAdmin):
    form = VersionForm
    list_display = ("__str__", "material", "number", "status", "created_by", "approved_by", "approved_at")
    list_filter = ("status", "material__channel")
    search_fields = ("material__name", "title", "body")
    list_select_related = ("material", "created_by", "approved_by")
    change_form_template = "admin/materials/materialversion/change_form.html"

    def get_fields(self, request, obj=None):
        base = ["material"] if obj is None else ["material", "number", "status", "approved_by", "approved_at"]
        editable = ["title", "body", "html", "url", "defaults"]
        if obj is not None:
            editable = [f for f in editable if f in (*CHANNEL_FIELDS[obj.material.channel], "url", "defaults")]
        return [*base, *editable]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ()
        frozen = ("number", "status", "approved_by", "approved_at", "material")
        if obj.status == VersionStatus.APPROVED:
            return (*frozen, "title", "body", "html", "url", "defaults")
        return frozen

    def has_delete_permission(self, request, obj=None) -> bool:
        # Approved versions are the record of what campaigns sent.
        return super().has_delete_permission(request, obj) and (obj is None or obj.status == VersionStatus.DRAFT)

    def save_model(self, request, obj: MaterialVersion, form, change) -> None:
        data = {k: form.cleaned_data.get(k) for k in ("title", "body", "html", "url", "defaults")}
        data = {k: v for k, v in data.items() if k in form.cleaned_data}
        if change:
            saved = services.update_draft(version=obj, actor=request.user, **data)
        else:
            saved = services.add_version(material=obj.material, actor=request.user, **data)
        obj.pk, obj.number = saved.pk, saved.number

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        context["variables"] = VARIABLES
        if obj is not None:
            context["can_approve"] = obj.status == VersionStatus.DRAFT and request.user.has_perm(
                services.APPROVE_PERMISSION
            )
            context["preview_url"] = reverse("admin:materials_materialversion_preview", args=[obj.pk])
            context["approve_url"] = reverse("admin:materials_materialversion_approve", args=[obj.pk])
        return super().render_change_form(request, context, add, change, form_url, obj)

    def get_urls(self):
        own = [
            path(
                "<int:version_id>/preview/",
                self.admin_site.admin_view(self.preview_view),
                name="materials_materialversion_preview",
            ),
            path(
                "<int:version_id>/approve/",
                self.admin_site.admin_view(self.approve_view),
                name="materials_materialversion_approve",
            ),
        ]
        return own + super().get_urls()

    def approve_view(self, request: HttpRequest, version_id: int) -> HttpResponse:
        change_url = reverse("admin:materials_materialversion_change", args=[version_id])
        if request.method != "POST":
            return HttpResponseRedirect(change_url)
        # The permission before the lookup: without it, a 404 or not would say which versions exist.
        if not request.user.has_perm(services.APPROVE_PERMISSION):
            raise PermissionDenied
        version = get_object_or_404(MaterialVersion.objects.select_related("material"), pk=version_id)
        try:
            services.approve_version(version=version, actor=request.user)
        except DomainError as exc:
            messages.error(request, gettext("Not approved: %(reason)s") % {"reason": exc.detail})
        else:
            messages.success(request, gettext("%(version)s is approved: campaigns may send it.") % {"version": version})
        return HttpResponseRedirect(change_url)

    def _may_send_test(self, request: HttpRequest) -> bool:
        return self.has_change_permission(request) and request.user.has_perm(services.TEST_SEND_PERMISSION)

    def preview_view(self, request: HttpRequest, version_id: int) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        version = get_object_or_404(MaterialVersion.objects.select_related("material"), pk=version_id)
        user_id = (request.POST.get("user_id") or request.GET.get("user_id") or "").strip()
        # A person's rendering shows their data (name, city, tier, traits): the same right as
        # opening their profile, and recorded as that is (the API asks profiles:read likewise).
        if user_id and not request.user.has_perm("profiles.view_profile"):
            raise PermissionDenied
        profile = Profile.objects.filter(user_id=user_id).first() if user_id else None
        if profile is not None:
            record_profile_access(
                staff=request.user, query=f"material preview: {user_id}", profiles=[(profile.pk, profile.user_id)]
            )
        notice = ""
        if user_id and profile is None:
            notice = gettext("No profile with user id %(user_id)r: showing sample values.") % {"user_id": user_id}
        if request.method == "POST" and request.POST.get("send_test"):
            if not self._may_send_test(request):
                raise PermissionDenied
            sent, reason = services.send_test(version=version, user_id=user_id, actor=request.user)
            if sent:
                messages.success(
                    request,
                    gettext("Test sent to %(user_id)s through the %(channel)s channel.")
                    % {"user_id": user_id, "channel": version.material.get_channel_display()},
                )
            else:
                messages.error(request, gettext("Test not sent: %(reason)s") % {"reason": reason})
            url = reverse("admin:materials_materialversion_preview", args=[version.pk])
            return HttpResponseRedirect(f"{url}?user_id={user_id}")
        result = selectors.preview(version=version, profile=profile)
        webhook_json = ""
        if version.material.channel == "webhook" and not result["error"]:
            try:
                webhook_json = json.dumps(json.loads(result["rendered"].get("body", "")), indent=2, ensure_ascii=False)
            except ValueError:
                webhook_json = ""
        context = {
            **self.admin_site.each_context(request),
            "title": gettext("Preview: %(version)s") % {"version": version},
            "original": version,
            "opts": self.model._meta,
            "user_id": user_id,
            "profile": profile,
            "notice": notice,
            "result": result,
            "webhook_json": webhook_json,
            "can_send_test": self._may_send_test(request),
        }
        return TemplateResponse(request, "admin/materials/materialversion/preview.html", context)
