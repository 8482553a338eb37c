"""Writes of the planning domain: tactics, the goal's decomposition by their timing, phases,
team tasks and their moves on the boards; and the demo's plan. Each one business action, one
transaction, audited."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, Group
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.translation import gettext

from access.services import record_audit
from campaigns.models import Campaign
from coupons.models import CouponRule
from indicators import services as indicator_services
from indicators.models import Anomaly, CheckKind, Goal, GoalProfile, goal_step
from indicators.registry import Fold, all_indicators
from planning.errors import (
    ContributionsExceedTarget,
    LastMonthUncovered,
    NoTactics,
    PhaseExists,
    TacticExists,
)
from planning.models import Phase, PhaseKind, Tactic, Task, TaskStatus

# --- the decomposition by the tactics' timing ------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    contribution: Decimal
    starts_on: date
    ends_on: date | None


WEIGHT_PLACES = Decimal("0.000001")


def tactic_weights(*, target: Decimal, fold: str, months: list[date], timings: Iterable[Timing]) -> list[Decimal]:
    """Weights per month that make the decomposition follow the tactics' timing.

    What the tactics do not cover (target minus their contributions) is natural growth and the
    rest of the work: spread evenly over the months. A tactic's contribution comes in from its
    first month to its last: for a sum-type goal it is shared evenly between those months (a
    tactic starting in May puts its whole share from May on); for a mean- or last-type goal it is
    a level added in each of those months. The weights feed `indicators.services.decompose` (the
    "weights" profile), which makes a sum-type goal's months add up to the target exactly."""
    timings = list(timings)
    covered = sum((t.contribution for t in timings), Decimal(0))
    rest = target - covered
    if rest < 0:
        raise ContributionsExceedTarget(
            gettext("The tactics expect %(covered)s in all, more than the target %(target)s.")
            % {"covered": covered, "target": target},
            covered=str(covered),
        )
    weights = []
    for month in months:
        weight = rest / len(months) if fold == Fold.SUM else rest
        for timing in timings:
            active = [m for m in months if timing.starts_on <= m and (timing.ends_on is None or m <= timing.ends_on)]
            if month in active:
                weight += timing.contribution / len(active) if fold == Fold.SUM else timing.contribution
        weights.append(weight.quantize(WEIGHT_PLACES))
    if not any(weights):
        raise NoTactics(gettext("Nothing to spread: the tactics contribute nothing and leave nothing of the target."))
    if fold == Fold.LAST and weights[-1] == 0:
        raise LastMonthUncovered(
            gettext(
                "The goal is read on the last day of %(month)s, and no tactic works then nor is any of the target "
                "left to natural growth."
            )
            % {"month": date_format(months[-1], "YEAR_MONTH_FORMAT")}
        )
    return weights


@transaction.atomic
def decompose_by_tactics(*, goal: Goal, actor: AbstractBaseUser | None = None, api_key: Any = None) -> Goal:
    """Spread the goal over its months by its tactics' timing (the "weights" profile, with the
    weights computed here)."""
    locked = Goal.objects.select_for_update().get(pk=goal.pk)
    tactics = list(locked.tactics.all())
    if not tactics:
        raise NoTactics(gettext("The goal %(goal)s has no tactics to follow; add one first.") % {"goal": locked})
    weights = tactic_weights(
        target=locked.target,
        fold=locked.fold,
        months=locked.months(),
        timings=[Timing(t.expected_contribution, t.starts_on, t.ends_on) for t in tactics],
    )
    saved = indicator_services.redecompose_goal(
        goal=locked, profile=GoalProfile.WEIGHTS, weights=weights, actor=actor, api_key=api_key
    )
    record_audit(
        actor=actor,
        api_key=api_key,
        action="planning.goal_decomposed",
        obj=saved,
        details={"by": "tactics", "tactics": [t.pk for t in tactics], "weights": [str(w) for w in weights]},
    )
    return saved


# --- tactics -----------------------------------------------------------------------------------------


def _month(value: Any, field: str, goal: Goal) -> date:
    if isinstance(value, str):
        try:
            value = date.fromisoformat(value if len(value) > 7 else f"{value}-01")
        except ValueError:
            raise ValidationError(
                {field: gettext("%(value)r is not a date (YYYY-MM or YYYY-MM-DD).") % {"value": value[:20]}}
            ) from None
    if isinstance(value, datetime):
        value = value.date()
    if not isinstance(value, date):
        raise ValidationError({field: gettext("A date (the first day of a month).")})
    month = value.replace(day=1)
    if month not in goal.months():
        raise ValidationError(
            {
                field: gettext("%(month)s is outside the goal's period %(period)s (%(start)s to %(end)s).")
                % {"month": f"{month:%Y-%m}", "period": goal.period_label, "start": goal.start, "end": goal.end}
            }
        )
    return month


def _contribution(value: Any, goal: Goal) -> Decimal:
    try:
        amount = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise ValidationError({"expected_contribution": gettext("Must be a number.")}) from None
    step = goal_step(goal.unit)
    if not amount.is_finite() or amount < 0 or amount >= Decimal("1e15"):
        raise ValidationError({"expected_contribution": gettext("A number from 0 to below 10^15.")})
    if amount != amount.quantize(step):
        raise ValidationError(
            {"expected_contribution": gettext("At most %(n)d decimal places.") % {"n": -step.as_tuple().exponent}}
        )
    return amount


def _indicator_keys(keys: Any) -> list[str]:
    known = {i.key for i in all_indicators()}
    if not isinstance(keys, list | tuple):
        raise ValidationError({"indicators": gettext("A list of indicator keys.")})
    unknown = [str(k)[:64] for k in keys if k not in known]
    if unknown:
        raise ValidationError(
            {
                "indicators": gettext("Unknown indicators %(unknown)s; known: %(known)s.")
                % {"unknown": unknown, "known": ", ".join(sorted(known))}
            }
        )
    return list(dict.fromkeys(keys))


def _rows(model: type, ids: Any, field: str, what: str) -> list:
    ids = list(dict.fromkeys(ids or []))
    found = {row.pk: row for row in model.objects.filter(pk__in=ids)}
    missing = [i for i in ids if i not in found]
    if missing:
        raise ValidationError({field: f"No {what} {missing[:5]}."})
    return [found[i] for i in ids]


def _check_tactic(tactic: Tactic) -> None:
    if tactic.ends_on is not None and tactic.ends_on < tactic.starts_on:
        raise ValidationError({"ends_on": gettext("A tactic ends in or after the month it starts.")})
    if not str(tactic.name).strip():
        raise ValidationError({"name": gettext("A tactic needs a name.")})


def _save_tactic(tactic: Tactic) -> None:
    try:
        with transaction.atomic():
            tactic.save()
    except IntegrityError as exc:
        if "tactic_name_unique_per_goal" in str(exc):
            raise TacticExists(
                gettext("The goal already has a tactic named %(name)r.") % {"name": tactic.name}
            ) from None
        raise


@transaction.atomic
def create_tactic(
    *,
    goal: Goal,
    name: str,
    expected_contribution: Any,
    starts_on: Any,
    ends_on: Any = None,
    description: str = "",
    indicators: list[str] | None = None,
    campaign_ids: list[int] | None = None,
    coupon_rule_ids: list[int] | None = None,
    actor: AbstractBaseUser | None = None,
    api_key: Any = None,
) -> Tactic:
    """Add a tactic to a goal: what it moves, what serves it, how much and from when."""
    tactic = Tactic(
        goal=goal,
        name=str(name).strip(),
        description=description,
        indicators=_indicator_keys(indicators if indicators is not None else [goal.indicator]),
        expected_contribution=_contribution(expected_contribution, goal),
        starts_on=_month(starts_on, "starts_on", goal),
        ends_on=None if ends_on in (None, "") else _month(ends_on, "ends_on", goal),
    )
    _check_tactic(tactic)
    campaigns = _rows(Campaign, campaign_ids, "campaign_ids", "campaign")
    rules = _rows(CouponRule, coupon_rule_ids, "coupon_rule_ids", "coupon rule")
    _save_tactic(tactic)
    tactic.campaigns.set(campaigns)
    tactic.coupon_rules.set(rules)
    record_audit(
        actor=actor,
        api_key=api_key,
        action="planning.tactic_created",
        obj=tactic,
        details={
            "goal": goal.pk,
            "expected_contribution": str(tactic.expected_contribution),
            "starts_on": tactic.starts_on.isoformat(),
            "ends_on": tactic.ends_on.isoformat() if tactic.ends_on else None,
            "campaigns": [c.pk for c in campaigns],
            "coupon_rules": [r.pk for r in rules],
        },
    )
    return tactic


TACTIC_FIELDS = ("name", "description", "expected_contribution", "starts_on", "ends_on", "indicators")


@transaction.atomic
def update_tactic(
    *, tactic: Tactic, changes: dict[str, Any], actor: AbstractBaseUser | None = None, api_key: Any = None
) -> Tactic:
    """Change a tactic; `changes` may hold the fields of TACTIC_FIELDS, `campaign_ids` and
    `coupon_rule_ids`. The goal's months are not decomposed again until asked."""
    locked = Tactic.objects.select_for_update().select_related("goal").get(pk=tactic.pk)
    goal = locked.goal
    before = {f: str(getattr(locked, f)) for f in TACTIC_FIELDS}
    if "name" in changes:
        locked.name = str(changes["name"]).strip()
    if "description" in changes:
        locked.description = changes["description"]
    if "expected_contribution" in changes:
        locked.expected_contribution = _contribution(changes["expected_contribution"], goal)
    if "starts_on" in changes:
        locked.starts_on = _month(changes["starts_on"], "starts_on", goal)
    if "ends_on" in changes:
        locked.ends_on = None if changes["ends_on"] in (None, "") else _month(changes["ends_on"], "ends_on", goal)
    if "indicators" in changes:
        locked.indicators = _indicator_keys(changes["indicators"])
    _check_tactic(locked)
    _save_tactic(locked)
    if "campaign_ids" in changes:
        locked.campaigns.set(_rows(Campaign, changes["campaign_ids"], "campaign_ids", "campaign"))
    if "coupon_rule_ids" in changes:
        locked.coupon_rules.set(_rows(CouponRule, changes["coupon_rule_ids"], "coupon_rule_ids", "coupon rule"))
    record_audit(
        actor=actor,
        api_key=api_key,
        action="planning.tactic_changed",
        obj=locked,
        details={"before": before, "after": {f: str(getattr(locked, f)) for f in TACTIC_FIELDS}},
    )
    return locked


@transaction.atomic
def delete_tactic(*, tactic: Tactic, actor: AbstractBaseUser | None = None, api_key: Any = None) -> None:
    record_audit(
        actor=actor,
        api_key=api_key,
        action="planning.tactic_deleted",
        obj=tactic,
        details={
            "goal": tactic.goal_id,
            "name": tactic.name,
            "expected_contribution": str(tactic.expected_contribution),
        },
    )
    tactic.delete()


# --- phases and tasks ----------------------------------------------------------------------------------


@transaction.atomic
def create_phase(
    *,
    goal: Goal,
    kind: str,
    starts_on: Any,
    priorities: str = "",
    actor: AbstractBaseUser | None = None,
    api_key: Any = None,
) -> Phase:
    """A month or quarter of the goal with its priorities."""
    if kind not in PhaseKind.values:
        raise ValidationError({"kind": gettext("One of %(values)s.") % {"values": PhaseKind.values}})
    start = _month(starts_on, "starts_on", goal)
    if kind == PhaseKind.QUARTER and start.month not in (1, 4, 7, 10):
        raise ValidationError({"starts_on": gettext("A quarter starts in January, April, July or October.")})
    phase = Phase(goal=goal, kind=kind, starts_on=start, priorities=priorities)
    try:
        with transaction.atomic():
            phase.save()
    except IntegrityError as exc:
        if "phase_once_per_period" in str(exc):
            raise PhaseExists(
                gettext("The goal already has the %(kind)s phase %(phase)s.") % {"kind": kind, "phase": phase}
            ) from None
        raise
    record_audit(
        actor=actor,
        api_key=api_key,
        action="planning.phase_created",
        obj=phase,
        details={"goal": goal.pk, "kind": kind, "starts_on": start.isoformat()},
    )
    return phase


def _task_indicator(key: Any) -> str:
    if key in (None, ""):
        return ""
    return _indicator_keys([key])[0]


def _check_tactic_of(phase: Phase, tactic: Tactic | None) -> None:
    if tactic is not None and tactic.goal_id != phase.goal_id:
        raise ValidationError({"tactic": gettext("The tactic belongs to another goal than the phase.")})


@transaction.atomic
def create_task(
    *,
    phase: Phase,
    team: Group,
    title: str,
    due_on: date,
    owner: AbstractBaseUser | None = None,
    indicator: str = "",
    tactic: Tactic | None = None,
    actor: AbstractBaseUser | None = None,
    api_key: Any = None,
) -> Task:
    """Assign a task of a phase to a team (and an owner), due on a date, moving an indicator."""
    if not str(title).strip():
        raise ValidationError({"title": gettext("A task needs a title.")})
    if owner is not None and not owner.groups.filter(pk=team.pk).exists():
        raise ValidationError(
            {"owner": gettext("%(owner)s is not in the team %(team)s.") % {"owner": owner, "team": team.name}}
        )
    _check_tactic_of(phase, tactic)
    task = Task.objects.create(
        phase=phase,
        team=team,
        owner=owner,
        title=str(title).strip(),
        due_on=due_on,
        indicator=_task_indicator(indicator),
        tactic=tactic,
    )
    record_audit(
        actor=actor,
        api_key=api_key,
        action="planning.task_created",
        obj=task,
        details={"phase": phase.pk, "team": team.name, "owner": getattr(owner, "pk", None), "due_on": str(due_on)},
    )
    return task


@transaction.atomic
def move_task(
    *, task: Task, status: str, actor: AbstractBaseUser | None = None, api_key: Any = None, now: datetime | None = None
) -> Task:
    """Move a task on its board (to do, doing, done). Done records when; moved back, it is not
    done any more."""
    if status not in TaskStatus.values:
        raise ValidationError(
            {"status": gettext("One of %(values)s (late is read from the due date).") % {"values": TaskStatus.values}}
        )
    locked = Task.objects.select_for_update().get(pk=task.pk)
    before = locked.status
    if before == status:
        return locked
    locked.status = status
    locked.done_at = (now or timezone.now()) if status == TaskStatus.DONE else None
    locked.save(update_fields=["status", "done_at", "updated_at"])
    record_audit(
        actor=actor, api_key=api_key, action="planning.task_moved", obj=locked, details={"from": before, "to": status}
    )
    return locked


@transaction.atomic
def update_task(
    *, task: Task, changes: dict[str, Any], actor: AbstractBaseUser | None = None, api_key: Any = None
) -> Task:
    """Change a task's title, owner, due date, indicator or tactic (its status: `move_task`)."""
    locked = Task.objects.select_for_update().select_related("phase", "team").get(pk=task.pk)
    before = {
        "title": locked.title,
        "owner": locked.owner_id,
        "due_on": str(locked.due_on),
        "indicator": locked.indicator,
    }
    if "title" in changes:
        if not str(changes["title"]).strip():
            raise ValidationError({"title": gettext("A task needs a title.")})
        locked.title = str(changes["title"]).strip()
    if "due_on" in changes:
        locked.due_on = changes["due_on"]
    if "indicator" in changes:
        locked.indicator = _task_indicator(changes["indicator"])
    if "owner" in changes:
        owner = changes["owner"]
        if owner is not None and not owner.groups.filter(pk=locked.team_id).exists():
            raise ValidationError(
                {
                    "owner": gettext("%(owner)s is not in the team %(team)s.")
                    % {"owner": owner, "team": locked.team.name}
                }
            )
        locked.owner = owner
    if "tactic" in changes:
        _check_tactic_of(locked.phase, changes["tactic"])
        locked.tactic = changes["tactic"]
    locked.save()
    record_audit(
        actor=actor,
        api_key=api_key,
        action="planning.task_changed",
        obj=locked,
        details={
            "before": before,
            "after": {"title": locked.title, "owner": locked.owner_id, "due_on": str(locked.due_on)},
        },
    )
    return locked


# --- the demo's plan ---------------------------------------------------------------------------------


@transaction.atomic
def seed_demo_plan(
    *,
    goal: Goal,
    teams: list[Group],
    owners: dict[int, AbstractBaseUser] | None = None,
    campaigns: list[Campaign] | None = None,
    coupon_rules: list[CouponRule] | None = None,
    today: date | None = None,
    actor: AbstractBaseUser | None = None,
) -> dict[str, Any]:
    """A plan for the demo on an existing goal: two tactics (the first from the goal's start with
    the campaigns, the second from a later month with the coupon rules), the goal decomposed by
    their timing, a phase per month with priorities, and per team three tasks of the current month
    (one done, one doing, one late). Running it again on the same goal changes nothing."""
    if goal.tactics.exists():
        return {"goal": goal.pk, "created": False}
    today = today or timezone.now().astimezone(UTC).date()
    months = goal.months()
    step = goal_step(goal.unit)
    later = months[min(len(months) - 1, max(1, len(months) // 2))]
    first_share = (goal.target * Decimal("0.10")).quantize(step)
    second_share = (goal.target * Decimal("0.06")).quantize(step)
    win_back = create_tactic(
        goal=goal,
        name="Win back silent customers",
        description="Pushes with a coupon to customers silent for 30 days; measured against the holdout.",
        expected_contribution=first_share,
        starts_on=months[0],
        campaign_ids=[c.pk for c in campaigns or []],
        actor=actor,
    )
    first_order = create_tactic(
        goal=goal,
        name="Double first-order conversion",
        description="A first-order coupon for new users from the best channels.",
        expected_contribution=second_share,
        starts_on=later,
        coupon_rule_ids=[r.pk for r in coupon_rules or []],
        actor=actor,
    )
    decompose_by_tactics(goal=goal, actor=actor)
    current = today.replace(day=1)
    phases = {}
    for month in months:
        phases[month] = create_phase(
            goal=goal,
            kind=PhaseKind.MONTH,
            starts_on=month,
            priorities="Win back silent customers\nLift first-order conversion\nKeep coupon ROI above 3",
            actor=actor,
        )
    phase = phases.get(current) or phases[months[0]]
    tasks = []
    for team in teams:
        owner = (owners or {}).get(team.pk)
        plan = [
            ("Pick the win-back segment and holdout", today - timedelta(days=3), TaskStatus.DONE, win_back),
            ("Write the first-order coupon push", today + timedelta(days=7), TaskStatus.DOING, first_order),
            ("Review last month's campaign results", today - timedelta(days=2), TaskStatus.TODO, None),
        ]
        for title, due, status, tactic in plan:
            task = create_task(
                phase=phase,
                team=team,
                owner=owner,
                title=f"{title} ({team.name})",
                due_on=due,
                indicator=goal.indicator,
                tactic=tactic,
                actor=actor,
            )
            if status != TaskStatus.TODO:
                task = move_task(task=task, status=status, actor=actor)
            tasks.append(task)
    return {
        "goal": goal.pk,
        "created": True,
        "tactics": [win_back.pk, first_order.pk],
        "phases": len(phases),
        "tasks": [t.pk for t in tasks],
    }


def seed_demo_anomaly(
    *, day: date, orders: int = 300, amount: str = "88.00", source: str = "flash_sale"
) -> Anomaly | None:
    """The demo's injected anomaly: `orders` extra paid orders from one traffic source on `day`
    (a complete day of the demo's history), ingested as the product sends them, folded into the
    rollups, and the day checked by the real daily check; returns the revenue (or orders) alert it
    raised, None if the history is too short to check. Running it again adds nothing: the events'
    ids are derived from the day, and the day's check run is found, not repeated."""
    from indicators import anomalies
    from indicators import services as indicators_services
    from indicators.rollups import fold_new_events
    from tracking.services import ingest_events

    at = datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(hours=12)
    events = [
        {
            "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"opsloop-demo-anomaly/{day}/{n}")),
            "name": "order_paid",
            "timestamp": (at + timedelta(seconds=n)).isoformat(),
            "user_id": f"demo-flash-{n}",
            "properties": {"amount": amount, "order_id": f"demo-flash-{day}-{n}"},
            "context": {"utm_source": source},
        }
        for n in range(orders)
    ]
    for first in range(0, len(events), 1000):
        result = ingest_events(events=events[first : first + 1000])
        if result.rejected:
            raise ValueError(f"the demo's anomaly events were refused: {result.rejected[0]}")
    fold_new_events()
    run = indicators_services.request_anomaly_check(kind=CheckKind.DAILY, period_start=at)
    anomalies.run_check(run_id=run.pk)
    return Anomaly.objects.filter(period_start=run.period_start, indicator__in=["revenue", "orders"]).first()
