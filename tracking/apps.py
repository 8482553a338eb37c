from django.apps import AppConfig


class TrackingConfig(AppConfig):
    """Collect: behaviour, traffic and business events, append-only."""

    name = "tracking"
    verbose_name = "Tracking"
    role_permissions = {
        # Operations also define the funnels the dashboards analyse, and set the goals.
        "Operations": [
            "tracking.view_*",
            "tracking.*_funnel",
            "tracking.*_funnelstep",
            "tracking.add_goal",
            "tracking.change_goal",
            "tracking.delete_goal",
        ],
        "Analyst": ["tracking.view_*"],
    }

    def ready(self) -> None:
        # Indicators: the event-only ones, read from the rollups (see tracking.analyses).
        from tracking.analyses import register_event_indicators

        register_event_indicators()
