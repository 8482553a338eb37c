"""Reads of journeys: the steps with their counts, and the journey's result against its holdout."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Q
from django.utils.translation import gettext

from campaigns.models import Campaign, Delivery
from campaigns.selectors import current_results
from journeys import conditions
from journeys.models import JourneyRun, JourneyStep, RunStatus, StepVisit

UPLIFT_UNIT = "percentage points"


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
        "failing": failing_runs(campaign),
        "results": results(campaign),
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
                "trait_operator": s.trait_operator or ("eq" if s.branch_on == "trait" else ""),
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


FAILING_SHOWN = 20


def failing_runs(campaign: Campaign) -> dict[str, Any]:
    """Runs still in the journey whose last advance failed: how many, and the latest with their
    reasons (each is tried again after a back-off, or now with the retry)."""
    failing = JourneyRun.objects.filter(campaign=campaign, status=RunStatus.ACTIVE).exclude(last_error="")
    latest = failing.order_by("-failed_at", "-id").values(
        "id", "user_id", "position", "failures", "last_error", "failed_at", "wake_at"
    )[:FAILING_SHOWN]
    return {
        "runs": failing.count(),
        "latest": [{**row, "run": row.pop("id"), "retry_at": row.pop("wake_at")} for row in latest],
    }


def results(campaign: Campaign) -> dict[str, Any] | None:
    """The goal conversions of each arm (the people who entered with that variant) against the
    holdout, who were assigned but never entered: the campaigns' results of these groups (frozen
    at completion), with their always-valid intervals and p-values. None before the launch."""
    if not campaign.assignments.exists():
        return None
    full = current_results(campaign)
    runs = dict(
        JourneyRun.objects.filter(campaign=campaign)
        .values_list("variant_id")
        .annotate(n=Count("id"))
        .order_by()
        .values_list("variant_id", "n")
    )
    groups = []
    for g in full.get("groups", []):
        seq = g.get("sequential") or {}
        uplift, low, high = g.get("uplift_vs_holdout"), seq.get("uplift_ci_low"), seq.get("uplift_ci_high")
        groups.append(
            {
                "name": g["name"],
                "variant_id": g.get("variant_id"),
                "entered": runs.get(g.get("variant_id"), 0) if g["name"] != "holdout" else 0,
                "assigned": g["assigned"],
                "sent": g["sent"],
                "converted": g["converted"],
                "conversion_rate": g["conversion_rate"],
                "rate_ci_low": seq.get("ci_low"),
                "rate_ci_high": seq.get("ci_high"),
                "uplift_points": _points(uplift),
                "uplift_ci_low_points": _points(low),
                "uplift_ci_high_points": _points(high),
                "p_value": seq.get("p_value"),
                "beats_control": bool(seq.get("beats_control")),
            }
        )
    return {
        "control": full.get("control"),
        "has_holdout": full.get("control") == "holdout",
        "goal_event": campaign.goal_event,
        "attribution_hours": campaign.attribution_hours,
        "alpha": full.get("alpha"),
        "method": full.get("method"),
        "uplift_unit": UPLIFT_UNIT,
        "summary": full.get("summary", ""),
        "groups": groups,
    }


def _points(difference: float | None) -> float | None:
    # The campaigns' uplift is a difference of two rates (0.031); operators read points (3.1).
    return None if difference is None else round(difference * 100, 4)


def describe(step: JourneyStep) -> str:
    then = gettext(", else go on") if step.kind == "branch" else ""
    if step.kind == "send":
        if step.variant_id:
            return gettext("Send variant %(name)s") % {"name": step.variant.name}
        return gettext("Send each person's variant (A/B)")
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
        "trait": f"{step.trait} {conditions.describe(step.trait_operator, step.trait_value)}",
        "variant": gettext("entered with variant %(name)s") % {"name": step.variant.name if step.variant_id else "?"},
    }.get(step.branch_on, "?")
    return gettext("If %(condition)s: go to step %(goto)s%(then)s") % {
        "condition": condition,
        "goto": step.goto,
        "then": then,
    }
