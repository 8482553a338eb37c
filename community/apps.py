from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class CommunityConfig(AppConfig):
    """Communities: operators' accounts and groups, their members, and contribution scores."""

    name = "community"
    verbose_name = _("Community")
    role_permissions = {
        "Operations": ["community.*"],
        "Analyst": ["community.view_*"],
    }

    def ready(self) -> None:
        from community import services
        from profiles.lookup import register_merge_listener
        from tracking.hooks import register_ingest_listener

        # Listeners run in the order of their names; this one must come after "profiles", which
        # creates the profiles of user ids never seen before that these events resolve to.
        register_ingest_listener("profiles~community", services.on_events_ingested)
        register_merge_listener("community", services.on_profiles_merged)
