"""Celery entry points of the community domain (queue `analytics`)."""

from __future__ import annotations

from celery import shared_task

from community import services


@shared_task(name="community.tasks.recompute_contribution_scores", acks_late=True)
def recompute_contribution_scores(run_id: int | None = None) -> dict:
    """Nightly (beat, without a run: the previous month) or on demand (the run queued)."""
    run = services.compute_contribution_scores(run_id=run_id)
    return {"run": run.pk, "status": run.status, "operators": run.operators, "teams": run.teams}


@shared_task(name="community.tasks.recompute_pending_events", acks_late=True)
def recompute_pending_events() -> int:
    """Nightly: community events whose person became known since they arrived."""
    return services.apply_pending_community_events()
