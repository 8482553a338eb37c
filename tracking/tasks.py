"""Background work of the tracking layer. Ingestion is synchronous on purpose (the product gets a
definite accepted/duplicate/rejected answer per event), and the BRIN indexes summarise new ranges
themselves (`autosummarize`); the indicator rollups are folded by beat (hourly, queue
`analytics`)."""

from __future__ import annotations

from celery import shared_task

from tracking import rollups


@shared_task(name="tracking.tasks.rollup_indicators", acks_late=True)
def rollup_indicators(settle: int | None = None) -> dict:
    """Fold the queued events into the indicator rollups (idempotent). `settle` is ignored: it is
    accepted so that a message queued by an earlier version (when runs waited for events to
    settle) still runs."""
    result = rollups.fold_new_events()
    return {"events": result.events, "chunks": result.chunks, "days": result.days, "cursor": result.last_event_id}
