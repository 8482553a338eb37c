"""Celery entry points of the campaigns app: thin and idempotent, each calls one service.

`deliver_*` tasks are routed to the `deliveries` queue by the settings."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

from campaigns import services

logger = logging.getLogger(__name__)

# Publishing gives up quickly when the broker is down: what it was for is kept in the database
# (pending deliveries, pending triggers, a started campaign) and the sweeper picks it up.
_QUICK_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}


def publish(what: str, task: Any, *, args: list | None = None, countdown: float | None = None) -> bool:
    """Queue a task without ever failing the caller: False (and a log line) if the broker is down."""
    try:
        task.apply_async(args=args or [], countdown=countdown, retry_policy=_QUICK_RETRY)
    except Exception:
        logger.exception("Could not queue %s: the broker is unreachable; the sweeper picks it up.", what)
        return False
    return True


@shared_task(name="campaigns.tasks.deliver_batch", acks_late=True)
def deliver_batch(delivery_ids: list[int]) -> dict[str, int]:
    return services.deliver(delivery_ids=delivery_ids)


@shared_task(name="campaigns.tasks.start_campaign", acks_late=True)
def start_campaign(campaign_id: int) -> None:
    services.start_send(campaign_id=campaign_id)


@shared_task(name="campaigns.tasks.run_recurring", acks_late=True)
def run_recurring(campaign_id: int) -> int:
    return services.run_recurring_send(campaign_id=campaign_id)


@shared_task(name="campaigns.tasks.start_triggered", acks_late=True)
def start_triggered(items: list[list] | None = None) -> int:
    # `items` came with the task before triggers were kept in the database; a message queued
    # then is still handled.
    if items:
        services.handle_triggers(items=items)
    return services.handle_pending_triggers()


@shared_task(name="campaigns.tasks.sweep", acks_late=True)
def sweep() -> dict[str, int]:
    return services.sweep()
