"""Celery entry points of the campaigns app: thin and idempotent, each calls one service.

`deliver_*` tasks are routed to the `deliveries` queue by the settings."""

from __future__ import annotations

from celery import shared_task

from campaigns import services


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


@shared_task(name="campaigns.tasks.close_attribution_windows", acks_late=True)
def close_attribution_windows() -> dict[str, int]:
    return services.close_attribution_windows()


@shared_task(
    name="campaigns.tasks.give_back_coupons",
    acks_late=True,
    autoretry_for=(Exception,),
    retry_backoff=30,
    retry_backoff_max=3600,
    max_retries=48,
)
def give_back_coupons(codes: list[str]) -> None:
    services.give_back_coupons(codes=codes)
