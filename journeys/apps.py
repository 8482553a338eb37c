from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class JourneysConfig(AppConfig):
    """Multi-step campaigns: send, wait, branch, and leave on the goal event."""

    name = "journeys"
    verbose_name = _("Journeys")
    role_permissions = {
        "Operations": ["journeys.*"],
        "Analyst": ["journeys.view_*"],
    }

    def ready(self) -> None:
        from campaigns.sending import register_claim_check
        from campaigns.validation import register_launch_check
        from journeys import services
        from profiles.lookup import register_merge_listener
        from tracking.hooks import register_ingest_listener

        register_ingest_listener("journeys.exits", services.on_events_ingested)
        register_launch_check(services.single_send_problems)
        register_claim_check("journeys.exited", services.exited_deliveries)
        register_merge_listener("journeys", services.on_profiles_merged)
