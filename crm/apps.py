from django.apps import AppConfig


class CrmConfig(AppConfig):
    """Value: RFM scores, value tiers, lifecycle stages and account managers."""

    name = "crm"
    verbose_name = "Customer value"
    role_permissions = {
        "Operations": ["crm.view_*"],
        "Customer service": ["crm.view_customervalue"],
        "Customer service lead": ["crm.view_customervalue"],
        "Analyst": ["crm.view_*"],
    }
