"""Factories of the planning domain: tactics, phases and tasks made through the services, as
operators make them (validated, audited)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import Group

from indicators.models import Goal
from planning import services
from planning.models import Phase, Tactic, Task


def tactic(goal: Goal, **fields: Any) -> Tactic:
    defaults = {
        "name": f"Tactic {goal.tactics.count() + 1}",
        "expected_contribution": Decimal("0"),
        "starts_on": goal.start,
    }
    return services.create_tactic(goal=goal, **{**defaults, **fields})


def phase(goal: Goal, **fields: Any) -> Phase:
    defaults = {"kind": "month", "starts_on": goal.start, "priorities": "First\nSecond"}
    return services.create_phase(goal=goal, **{**defaults, **fields})


def team(name: str = "Growth team") -> Group:
    return Group.objects.get_or_create(name=name)[0]


def task(phase: Phase, **fields: Any) -> Task:
    defaults = {"team": team(), "title": "Do it", "due_on": date(phase.starts_on.year, phase.starts_on.month, 20)}
    return services.create_task(phase=phase, **{**defaults, **fields})
