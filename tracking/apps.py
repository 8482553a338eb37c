from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class TrackingConfig(AppConfig):
    """Collect: behaviour, traffic and business events, append-only. What is made of them (rollups,
    analyses, goals) is the `indicators` app's, which listens to ingestion like every app above."""

    name = "tracking"
    verbose_name = _("Tracking")
    role_permissions = {
        "Operations": ["tracking.view_*"],
        "Analyst": ["tracking.view_*"],
    }

    def ready(self) -> None:
        from tracking import checks  # noqa: F401  (registers the retention check)
