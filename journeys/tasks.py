"""Celery entry points of journeys: thin and idempotent."""

from __future__ import annotations

from celery import shared_task

from journeys import services


@shared_task(name="journeys.tasks.advance_journeys", acks_late=True)
def advance_journeys() -> int:
    return services.advance_due()


@shared_task(name="journeys.tasks.advance_runs", acks_late=True)
def advance_runs(run_ids: list[int]) -> int:
    return services.advance_runs(run_ids=run_ids)
