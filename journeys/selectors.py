"""Reads of journeys: the steps with their counts."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Q
from django.utils.translation import gettext

from campaigns.models import Campaign, Delivery
from journeys.models import JourneyRun, JourneyStep, RunStatus, StepVisit


def journey(campaign: Campaign) -> dict[str, Any]:
    """The journey page: each step with how many reached it, wait there now, and, for sends, the
    delivery counts of that step; and the runs by status. Four queries, whatever the size."""
    steps = list(JourneyStep.objects.filter(campaign=campaign).select_related("variant").order_by("position"))
    reached = dict(
        StepVisit.objects.filter(step__campaign=campaign).values_list("step_id").annotate(n=Count("id")).order_by()
    )
    runs = JourneyRun.objects.filter(campaign=campaign)
    at = dict(runs.filter(status=RunStatus.ACTIVE).values_list("position").annotate(n=Count("id")).order_by())
    exited_at = dict(runs.filter(status=RunStatus.EXITED).values_list("position").annotate(n=Count("id")).order_by())
    phases = {s.phase: s for s in steps}
    sends: dict[str, dict[str, int]] = {}
    for row in (
        Delivery.objects.filter(campaign=campaign, phase__in=list(phases))
        .values("phase")
        .annotate(
            created=Count("id"),
            sent=Count("id", filter=Q(sent_at__isnull=False)),
            delivered=Count("id", filter=Q(delivered_at__isnull=False)),
            opened=Count("id", filter=Q(opened_at__isnull=False)),
            clicked=Count("id", filter=Q(clicked_at__isnull=False)),
            failed=Count("id", filter=Q(status="failed")),
            skipped=Count("id", filter=Q(status="skipped")),
        )
        .order_by()
    ):
        sends[row.pop("phase")] = row
    totals = dict(runs.values_list("status").annotate(n=Count("id")).order_by())
    return {
        "campaign": campaign.pk,
        "status": campaign.status,
        "goal_event": campaign.goal_event,
        "runs": {s: totals.get(s, 0) for s in RunStatus.values},
        "steps": [
            {
                "position": s.position,
                "kind": s.kind,
                "label": describe(s),
                "variant": s.variant.name if s.variant_id else None,
                "wait_minutes": s.wait_minutes,
                "event": s.event,
                "branch_on": s.branch_on,
                "tag": s.tag,
                "trait": s.trait,
                "trait_value": s.trait_value,
                "goto": s.goto,
                "reached": reached.get(s.pk, 0),
                "waiting": at.get(s.position, 0),
                "exited": exited_at.get(s.position, 0),
                "deliveries": sends.get(s.phase) if s.kind == "send" else None,
            }
            for s in steps
        ],
    }


def describe(step: JourneyStep) -> str:
    then = gettext(", else go on") if step.kind == "branch" else ""
    if step.kind == "send":
        return gettext("Send variant %(name)s") % {"name": step.variant.name if step.variant_id else "?"}
    if step.kind == "wait":
        return gettext("Wait %(minutes)d min") % {"minutes": step.wait_minutes}
    if step.kind == "wait_event":
        timeout = gettext(" then step %(goto)s") % {"goto": step.goto} if step.goto is not None else ""
        return gettext("Wait for %(event)s (at most %(minutes)d min%(timeout)s)") % {
            "event": step.event,
            "minutes": step.wait_minutes,
            "timeout": timeout,
        }
    condition = {
        "event": gettext("did %(event)s") % {"event": step.event},
        "tag": gettext("has tag %(tag)s") % {"tag": step.tag},
        "trait": f"{step.trait} = {step.trait_value}",
    }.get(step.branch_on, "?")
    return gettext("If %(condition)s: go to step %(goto)s%(then)s") % {
        "condition": condition,
        "goto": step.goto,
        "then": then,
    }
