"""Background work of the tracking layer: shipping stored events to ClickHouse (beat, every
minute, queue `analytics`) and the nightly retention of raw events."""

from __future__ import annotations

from celery import shared_task

from tracking import shipping
from tracking.events_store import clickhouse_enabled


@shared_task(
    name="tracking.tasks.ship_events",
    bind=True,
    acks_late=True,
    autoretry_for=(shipping.ShippingFailed,),
    retry_backoff=30,
    retry_backoff_max=600,
    max_retries=5,
)
def ship_events(self) -> dict:
    """Ship the outbox to ClickHouse (idempotent: a batch shipped twice is dropped there)."""
    if not clickhouse_enabled():
        return {"skipped": "ClickHouse is off"}
    result = shipping.ship_events()
    return {"batches": result.batches, "events": result.events, "busy": result.busy}


@shared_task(name="tracking.tasks.delete_expired_events", acks_late=True)
def delete_expired_events() -> dict:
    """Nightly: delete raw events past the retention window (shipped ones only)."""
    return {"deleted": shipping.delete_expired_events()}
