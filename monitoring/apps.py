from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    """Health of the whole system for operators: queues, failed and stuck work of every domain,
    and the last run of every scheduled task. The top layer: it reads every app below it."""

    name = "monitoring"
    verbose_name = "Monitoring"
    role_permissions = {
        "Operations": ["monitoring.view_*"],
        "Analyst": ["monitoring.view_*"],
    }

    def ready(self) -> None:
        from monitoring import signals

        signals.connect()
