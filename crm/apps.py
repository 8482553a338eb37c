from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class CrmConfig(AppConfig):
    """Value: RFM scores, value tiers, lifecycle stages and account managers."""

    name = "crm"
    verbose_name = _("Customer value")
    role_permissions = {
        "Operations": [
            "crm.view_*",
            "crm.recompute_values",
            "crm.reassign_account_manager",
            "crm.change_valuetier",
            "crm.add_valuetier",
            "crm.change_scoringscheme",
            "crm.view_accountmanager",
        ],
        "Customer service": ["crm.view_customervalue"],
        "Customer service lead": ["crm.view_customervalue"],
        "Analyst": ["crm.view_*"],
    }

    def ready(self) -> None:
        from crm import selectors
        from profiles import lookup

        lookup.register_section("value", selectors.value_section)
        lookup.register_profile_field("tier", selectors.tier_of)
        lookup.register_profile_field("rfm", selectors.rfm_of)
        lookup.register_profile_field("lifecycle", selectors.lifecycle_of)
        lookup.register_summary_part("value", selectors.summary_part, order=10)
