from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class AccessConfig(AppConfig):
    """API keys, staff roles and the audit trail: the layer every other app stands on."""

    name = "access"
    verbose_name = _("Access and audit")

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from access.roles import sync_roles

        # Once per migrate: the handler itself creates every app's permissions before granting.
        post_migrate.connect(sync_roles, sender=self, dispatch_uid="access.sync_roles")

        # The staff member's saved admin language, put in the session at login.
        import access.language  # noqa: F401
        from config.labels import translate_derived_labels

        # Every app's models are loaded by now: their name-derived labels become translatable.
        translate_derived_labels()

    role_permissions = {
        "Operations": ["access.scope_manage", "access.scope_coupons_redeem", "access.view_auditentry"],
        "Customer service": ["access.scope_profiles_read"],
        "Customer service lead": ["access.scope_profiles_read"],
        "Analyst": ["access.scope_profiles_read"],
    }
