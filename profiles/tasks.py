"""Celery entry points of the profiles app: thin, idempotent wrappers over services."""

from __future__ import annotations

import logging

from celery import shared_task

from profiles import services
from profiles.models import TagRule

logger = logging.getLogger(__name__)


@shared_task(name="profiles.tasks.recompute_tag_rule", acks_late=True)
def recompute_tag_rule(rule_id: int) -> dict | None:
    """Recompute one rule's tag members; a deleted rule is nothing to do. Running it twice gives
    the same members (the second run records no changes)."""
    if not TagRule.objects.filter(id=rule_id).exists():
        return None
    result = services.recompute_tag_rule(rule_id=rule_id)
    return {"rule_id": rule_id, "added": result.added, "removed": result.removed, "members": result.members}


@shared_task(name="profiles.tasks.recompute_tag_rules", acks_late=True)
def recompute_tag_rules() -> list[int]:
    """Nightly: queue every active rule as its own task, so one slow or failing rule neither holds
    back nor rolls back the others."""
    ids = list(TagRule.objects.filter(is_active=True).order_by("id").values_list("id", flat=True))
    for rule_id in ids:
        recompute_tag_rule.delay(rule_id)
    return ids


@shared_task(name="profiles.tasks.rollup_seen_times", acks_late=True)
def rollup_seen_times() -> dict:
    """Every minute (beat row "profiles: update first/last seen"): apply the first/last seen of
    newly stored events to their profiles, slice by slice for at most 50 s. Idempotent and safe
    to run concurrently: each slice is claimed, applied and removed from the backlog in one
    transaction."""
    result = services.catch_up_seen_times(max_seconds=50.0)
    return {"runs": result.runs, "events": result.events, "profiles": result.profiles}
