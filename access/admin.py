"""Admin for API keys (created and revoked by administrators) and the read-only audit trail."""

from django import forms
from django.contrib import admin, messages
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from access import services
from access.models import ApiKey, AuditEntry, Scope
from access.readonly import ReadOnlyAdmin


class ApiKeyCreationForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(choices=Scope.choices, widget=forms.CheckboxSelectMultiple)

    class Meta:
        model = ApiKey
        fields = ["name", "scopes"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "prefix", "scopes", "created_at", "last_used_at", "revoked_at"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "prefix"]
    readonly_fields = ["prefix", "scopes", "created_at", "created_by", "last_used_at", "revoked_at"]
    actions = ["revoke"]

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = ApiKeyCreationForm
        return super().get_form(request, obj, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields if obj is None else [*self.readonly_fields, "name"]

    def get_fields(self, request, obj=None):
        return ["name", "scopes"] if obj is None else ["name", *self.readonly_fields]

    def save_model(self, request, obj, form, change):
        if change:
            return
        issued = services.create_api_key(
            name=form.cleaned_data["name"], scopes=form.cleaned_data["scopes"], created_by=request.user
        )
        form.instance = obj = issued.api_key
        self.message_user(
            request,
            gettext("Key for %(name)s: %(key)s (copy it now; it is not shown again)")
            % {"name": obj.name, "key": issued.plaintext},
            level=messages.WARNING,
        )

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # revoke instead, so the audit trail keeps pointing at the key

    @admin.action(description=_("Revoke selected keys"), permissions=["change"])
    def revoke(self, request, queryset):
        for api_key in queryset.filter(revoked_at__isnull=True):
            services.revoke_api_key(api_key=api_key, revoked_by=request.user)
        self.message_user(request, gettext("Revoked."))


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    list_display = ["at", "actor", "api_key", "action", "object_type", "object_id"]
    list_filter = ["action", "object_type"]
    search_fields = ["object_id", "actor__username", "action"]
    date_hierarchy = "at"

    def has_view_permission(self, request, obj=None) -> bool:
        return request.user.is_superuser or super().has_view_permission(request, obj)
