"""Celery entry points of the customer-value domain (queue `analytics`, by the `recompute_*` route)."""

from __future__ import annotations

from celery import shared_task

from crm import services


@shared_task(name="crm.tasks.recompute_customer_values", acks_late=True)
def recompute_customer_values(run_id: int | None = None) -> dict:
    """Nightly (beat, without a run) or on demand (with the run the admin queued)."""
    run = services.recompute_customer_values(run_id=run_id)
    return {"run": run.pk, "status": run.status, "profiles": run.profiles, "customers": run.customers}
