"""Background work of the indicators layer: the rollups are folded by beat (hourly, queue
`analytics`). Ingestion itself is synchronous on purpose: the product gets a definite
accepted/duplicate/rejected answer per event, and queues what it stored for the next fold."""

from __future__ import annotations

from celery import shared_task

from indicators import rollups


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
