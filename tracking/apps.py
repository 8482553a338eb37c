from django.apps import AppConfig


class TrackingConfig(AppConfig):
    """Collect: behaviour, traffic and business events, append-only."""

    name = "tracking"
    verbose_name = "Tracking"
    role_permissions = {
        "Operations": ["tracking.view_*", "tracking.add_goal", "tracking.change_goal", "tracking.delete_goal"],
        "Analyst": ["tracking.view_*"],
    }
