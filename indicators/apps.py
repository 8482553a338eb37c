from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class IndicatorsConfig(AppConfig):
    """Make data products of the events: rollups, the indicator registry, analyses (retention,
    funnels, key behaviours, churn, searches) and goals decomposed by month."""

    name = "indicators"
    verbose_name = _("Indicators")
    role_permissions = {
        # Operations also define the funnels the dashboards analyse, and set the goals.
        "Operations": [
            "indicators.view_*",
            "indicators.*_funnel",
            "indicators.*_funnelstep",
            "indicators.add_goal",
            "indicators.change_goal",
            "indicators.delete_goal",
            # They watch the alerts: acknowledge them, mute an indicator or tune its sensitivity.
            "indicators.change_anomaly",
            "indicators.add_indicatorwatch",
            "indicators.change_indicatorwatch",
        ],
        "Analyst": ["indicators.view_*"],
        # Leads decide who is woken by an alert (an address, or a webhook to an allowed host).
        "Operations lead": ["indicators.view_*", "indicators.*_alertrecipient"],
    }

    def ready(self) -> None:
        from indicators.analyses import register_event_indicators
        from indicators.rollups import queue_stored_events
        from tracking.hooks import register_ingest_listener

        # The event-only indicators, read from the rollups.
        register_event_indicators()
        # Every stored batch is queued for the rollups in its own transaction: folded once it
        # commits, however late.
        register_ingest_listener("indicators.rollups", lambda events: queue_stored_events([e.id for e in events]))
