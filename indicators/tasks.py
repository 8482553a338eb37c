"""Background work of the indicators layer: the rollups are folded by beat (hourly, queue
`analytics`), and the indicators are checked for anomalies (daily, event volume hourly). Ingestion
itself is synchronous on purpose: the product gets a definite accepted/duplicate/rejected answer
per event, and queues what it stored for the next fold."""

from __future__ import annotations

from datetime import UTC, timedelta

from celery import shared_task
from django.utils import timezone

from indicators import anomalies, rollups, services
from indicators.models import CheckKind


@shared_task(name="indicators.tasks.rollup_indicators", acks_late=True)
def rollup_indicators() -> dict:
    """Fold the queued events into the indicator rollups (idempotent)."""
    result = rollups.fold_new_events()
    return {"events": result.events, "chunks": result.chunks, "days": result.days, "cursor": result.last_event_id}


@shared_task(name="tracking.tasks.rollup_indicators", acks_late=True)
def rollup_indicators_queued_before_the_move(*_args, **_kwargs) -> dict:
    """The same under the name it had in `tracking`: a message already in the queue when the
    upgrade lands (from beat, with or without the `settle` argument of older versions) still folds."""
    return rollup_indicators()


@shared_task(name="indicators.tasks.check_anomalies_daily", acks_late=True)
def check_anomalies_daily() -> dict:
    """Beat, daily: queue the check of yesterday (UTC), the last complete day."""
    run = services.request_anomaly_check(
        kind=CheckKind.DAILY, period_start=timezone.now().astimezone(UTC) - timedelta(days=1)
    )
    return {"run": run.pk, "status": run.status}


@shared_task(name="indicators.tasks.check_event_volume_hourly", acks_late=True)
def check_event_volume_hourly() -> dict:
    """Beat, hourly: queue the check of the last complete hour's event volume."""
    run = services.request_anomaly_check(kind=CheckKind.HOURLY, period_start=timezone.now() - timedelta(hours=1))
    return {"run": run.pk, "status": run.status}


@shared_task(name="indicators.tasks.run_anomaly_check", acks_late=True)
def run_anomaly_check(run_id: int) -> dict:
    run = anomalies.run_check(run_id=run_id)
    return {"run": run.pk, "status": run.status, "alerts": run.alerts}


@shared_task(name="indicators.tasks.notify_anomaly", acks_late=True)
def notify_anomaly(anomaly_id: int) -> dict:
    alert = services.notify_alert(alert_id=anomaly_id)
    return {} if alert is None else {"email": alert.email_status, "webhook": alert.webhook_status}
