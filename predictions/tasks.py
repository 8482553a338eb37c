"""Celery entry points of the predictions domain (queue `analytics`, by the `recompute_*` route)."""

from __future__ import annotations

from celery import shared_task

from predictions import services


@shared_task(name="predictions.tasks.recompute_predictions", acks_late=True)
def recompute_predictions(run_id: int | None = None) -> dict:
    """Nightly (beat, without a run) or on demand (with the run the admin queued); a run already
    finished is returned as it is, so a redelivered task does nothing twice."""
    run = services.recompute_predictions(run_id=run_id)
    return {"run": run.pk, "status": run.status, "customers": run.customers, "scored": run.scored}
