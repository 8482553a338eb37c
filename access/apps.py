from django.apps import AppConfig


class AccessConfig(AppConfig):
    """API keys, staff roles and the audit trail: the layer every other app stands on."""

    name = "access"
    verbose_name = "Access and audit"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from access.roles import sync_roles

        # Once per migrate: the handler itself creates every app's permissions before granting.
        post_migrate.connect(sync_roles, sender=self, dispatch_uid="access.sync_roles")

    role_permissions = {
        "Operations": ["access.scope_manage", "access.scope_coupons_redeem", "access.view_auditentry"],
        "Customer service": ["access.scope_profiles_read"],
        "Customer service lead": ["access.scope_profiles_read"],
        "Analyst": ["access.scope_profiles_read"],
    }
