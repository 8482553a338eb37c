"""Background work of the tracking layer. Ingestion is synchronous on purpose (the product gets a
definite accepted/duplicate/rejected answer per event), and the BRIN indexes summarise new ranges
themselves (`autosummarize`); the indicator rollups are folded by beat (hourly, queue
`analytics`)."""

from __future__ import annotations

from celery import shared_task

from tracking import rollups


@shared_task(name="tracking.tasks.rollup_indicators", acks_late=True)
def rollup_indicators(settle: int | None = None) -> dict:
    """Fold the events that arrived since the last run into the indicator rollups (idempotent).
    `settle` overrides OPSLOOP_ROLLUP_SETTLE_SECONDS, for a caller that knows its events committed."""
    result = rollups.fold_new_events(settle=settle)
    return {"events": result.events, "chunks": result.chunks, "days": result.days, "cursor": result.last_event_id}
