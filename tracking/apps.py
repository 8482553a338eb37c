from django.apps import AppConfig


class TrackingConfig(AppConfig):
    """Collect: behaviour, traffic and business events, append-only."""

    name = "tracking"
    verbose_name = "Tracking"
    role_permissions = {
        "Operations": ["tracking.view_*"],
        "Analyst": ["tracking.view_*"],
    }
