from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class ProfilesConfig(AppConfig):
    """People: profiles, the identities that tie events to them, and their tags."""

    name = "profiles"
    verbose_name = _("Profiles")
    role_permissions = {
        "Operations": ["profiles.view_*", "profiles.*_tag", "profiles.*_tagrule", "profiles.*_profiletag"],
        "Customer service": ["profiles.view_profile", "profiles.lookup_profile"],
        "Customer service lead": [
            "profiles.view_profile",
            "profiles.lookup_profile",
            "profiles.see_personal_data",
        ],
        "Analyst": ["profiles.view_*"],
    }

    def ready(self) -> None:
        from profiles.services import on_events_ingested
        from tracking.hooks import register_ingest_listener

        register_ingest_listener("profiles", on_events_ingested)
