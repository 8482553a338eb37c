from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class MonitoringConfig(AppConfig):
    """Health of the whole system for operators: queues, failed and stuck work of every domain,
    and the last run of every scheduled task. The top layer: it reads every app below it."""

    name = "monitoring"
    verbose_name = _("Monitoring")
    role_permissions = {
        "Operations": ["monitoring.view_*"],
        "Analyst": ["monitoring.view_*"],
    }

    def ready(self) -> None:
        from monitoring import signals

        signals.connect()
