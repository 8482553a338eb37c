"""Reads of the planning domain: the team boards, a goal's plan against its natural-growth
baseline and the campaigns' measured effects, and the monthly review."""

from __future__ import annotations

import calendar
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import Group
from django.db.models import Q, QuerySet
from django.utils import timezone
from django.utils.translation import gettext

from campaigns.models import Campaign
from campaigns.selectors import campaign_results
from indicators import baselines
from indicators.anomalies import source_movers
from indicators.models import Goal, goal_step
from indicators.registry import Unit, UnknownIndicator, all_indicators, daily_values, fold_days, get_indicator
from indicators.selectors import goals_progress
from planning.models import Task, TaskStatus

BOARD_COLUMNS = ("todo", "doing", "done", "late")


def _today() -> date:
    return timezone.now().astimezone(UTC).date()


def _month_end(month: date) -> date:
    return month.replace(day=calendar.monthrange(month.year, month.month)[1])


# --- boards ----------------------------------------------------------------------------------------


def board_column(task: Task, today: date) -> str:
    """The column a task shows in: done when done; late when not done after its due date; else
    its status (to do, doing)."""
    if task.status == TaskStatus.DONE:
        return "done"
    if task.due_on < today:
        return "late"
    return task.status


def tasks_with_people() -> QuerySet[Task]:
    return Task.objects.select_related("team", "owner", "phase", "phase__goal", "tactic")


def board(*, team: Group, today: date | None = None) -> dict[str, list[Task]]:
    """A team's tasks in the four columns, each by due date (one query)."""
    today = today or _today()
    columns: dict[str, list[Task]] = {c: [] for c in BOARD_COLUMNS}
    for task in tasks_with_people().filter(team=team).order_by("due_on", "id"):
        columns[board_column(task, today)].append(task)
    return columns


def overdue_tasks(*, today: date | None = None) -> QuerySet[Task]:
    today = today or _today()
    return tasks_with_people().exclude(status=TaskStatus.DONE).filter(due_on__lt=today)


# --- campaigns' measured effects ---------------------------------------------------------------------


@dataclass(frozen=True)
class CampaignEffect:
    campaign: Campaign
    holdout_size: int
    treated: int
    incremental_conversions: float
    incremental_revenue: Decimal
    summary: str

    def in_unit(self, unit: str) -> Decimal:
        """The effect in a goal's unit: revenue for money goals, conversions otherwise."""
        if unit == Unit.MONEY:
            return self.incremental_revenue
        return Decimal(str(round(self.incremental_conversions, 2)))


def campaign_effect(campaign: Campaign) -> CampaignEffect | None:
    """What the campaign brought beyond its holdout: per treated group, (its rate minus the
    holdout's) x its people, for conversions, and the same with revenue per recipient; None when
    the campaign has no holdout with people in it (nothing to measure against)."""
    results = campaign_results(campaign)
    groups = results.get("groups", [])
    holdout = next((g for g in groups if g["name"] == "holdout"), None)
    if holdout is None or not holdout["assigned"]:
        return None
    base_rate = holdout["conversion_rate"] or 0.0
    base_revenue = Decimal(holdout["revenue"]) / holdout["assigned"]
    conversions, revenue, treated = 0.0, Decimal(0), 0
    for group in groups:
        if group["name"] == "holdout" or not group["assigned"]:
            continue
        treated += group["assigned"]
        conversions += ((group["conversion_rate"] or 0.0) - base_rate) * group["assigned"]
        revenue += (Decimal(group["revenue"]) / group["assigned"] - base_revenue) * group["assigned"]
    return CampaignEffect(
        campaign=campaign,
        holdout_size=holdout["assigned"],
        treated=treated,
        incremental_conversions=conversions,
        incremental_revenue=revenue.quantize(Decimal("0.01")),
        summary=results.get("summary", ""),
    )


def _launched_in(month: date) -> Q:
    start = datetime.combine(month, time.min, tzinfo=UTC)
    end = datetime.combine(_month_end(month) + timedelta(days=1), time.min, tzinfo=UTC)
    return Q(launched_at__gte=start, launched_at__lt=end)


# --- a goal's plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanMonth:
    month: date
    target: Decimal
    actual: Decimal | None
    baseline: Decimal | None
    gap: Decimal | None  # target - baseline: what the operation must add to natural growth
    beyond_baseline: Decimal | None  # actual - baseline: what it added so far
    incremental: Decimal  # measured by the holdouts of the tactics' campaigns launched that month
    status: str


@dataclass(frozen=True)
class GoalPlan:
    goal: Goal
    label: str
    as_of: date
    months: list[PlanMonth]
    baseline_method: str
    baseline_history: str
    tactics: list[Any]
    effects: list[CampaignEffect] = field(default_factory=list)


def goal_plan(goal: Goal, *, today: date | None = None) -> GoalPlan | None:
    """Target, actual, natural-growth baseline and gap per month, the tactics and the measured
    effects of their campaigns; None when the goal's indicator is not registered."""
    progress = goals_progress([goal], today=today).get(goal.pk)
    if progress is None:
        return None
    base = baselines.month_baselines(indicator=goal.indicator, months=goal.months())
    step = goal_step(goal.unit)
    tactics = list(goal.tactics.prefetch_related("campaigns", "coupon_rules").order_by("starts_on", "name"))
    campaigns = {c.pk: c for t in tactics for c in t.campaigns.all()}
    effects = [e for e in (campaign_effect(c) for c in campaigns.values()) if e is not None]
    by_month: dict[date, Decimal] = {}
    for effect in effects:
        launched = effect.campaign.launched_at
        if launched is not None:
            key = launched.astimezone(UTC).date().replace(day=1)
            by_month[key] = by_month.get(key, Decimal(0)) + effect.in_unit(goal.unit)
    months = []
    for m in progress.months:
        baseline = base.for_month(m.month) if base else None
        baseline = None if baseline is None else baseline.quantize(step)
        months.append(
            PlanMonth(
                month=m.month,
                target=m.target,
                actual=m.actual,
                baseline=baseline,
                gap=None if baseline is None else (m.target - baseline).quantize(step),
                beyond_baseline=None if baseline is None or m.actual is None else (m.actual - baseline).quantize(step),
                incremental=by_month.get(m.month, Decimal(0)),
                status=m.status,
            )
        )
    history = (
        gettext("%(days)s days of history, %(start)s to %(end)s")
        % {"days": base.history_days, "start": base.history_start, "end": base.history_end}
        if base
        else gettext("fewer than %(minimum)s days of history before %(start)s: no baseline")
        % {"minimum": baselines.MIN_HISTORY_DAYS, "start": goal.start}
    )
    return GoalPlan(
        goal=goal,
        label=progress.label,
        as_of=progress.as_of,
        months=months,
        baseline_method=baselines.method_text(),
        baseline_history=history,
        tactics=tactics,
        effects=effects,
    )


# --- the monthly review --------------------------------------------------------------------------------


def indicator_movers(*, month: date, limit: int = 5) -> list[dict[str, Any]]:
    """Registered indicators by how much the month moved from the month before (relative change of
    their folded value), largest first."""
    previous = (month - timedelta(days=1)).replace(day=1)
    rows = []
    for indicator in all_indicators():
        values = daily_values(indicator.key, start=previous, end=_month_end(month))
        before = fold_days(indicator.fold, [v for d, v in values if d < month])
        now = fold_days(indicator.fold, [v for d, v in values if d >= month])
        relative = None if not before else float((now - before) / before)
        rows.append(
            {
                "indicator": indicator.key,
                "label": indicator.label,
                "unit": indicator.unit,
                "value": now,
                "previous": before,
                "change": now - before,
                "relative": relative,
            }
        )
    rows.sort(key=lambda r: -(abs(r["relative"]) if r["relative"] is not None else (1.0 if r["change"] else 0.0)))
    return rows[:limit]


def _month_window(month: date) -> tuple[datetime, datetime]:
    return (
        datetime.combine(month, time.min, tzinfo=UTC),
        datetime.combine(_month_end(month) + timedelta(days=1), time.min, tzinfo=UTC),
    )


def monthly_review(*, month: date, team: Group | None = None, today: date | None = None) -> dict[str, Any]:
    """The review of one month, for a team or the whole operation (see docs/goals.md)."""
    today = today or _today()
    month = month.replace(day=1)
    end = _month_end(month)
    goals = list(
        Goal.objects.prefetch_related("month_targets").filter(
            Q(year=month.year) & (Q(period="year") | Q(quarter=(month.month - 1) // 3 + 1))
        )
    )
    progress = goals_progress(goals, today=min(today, end + timedelta(days=1)))
    goal_rows = []
    for goal in goals:
        info = progress.get(goal.pk)
        if info is None:
            continue
        row = next((m for m in info.months if m.month == month), None)
        if row is None:
            continue
        try:
            base = baselines.month_baselines(indicator=goal.indicator, months=goal.months())
        except UnknownIndicator:
            base = None
        baseline = base.for_month(month) if base else None
        step = goal_step(goal.unit)
        goal_rows.append(
            {
                "goal": goal,
                "label": info.label,
                "target": row.target,
                "actual": row.actual,
                "baseline": None if baseline is None else baseline.quantize(step),
                "gap": None if baseline is None else (row.target - baseline).quantize(step),
                "status": row.status,
            }
        )
    tasks = tasks_with_people().filter(phase__goal__in=goals)
    if team is not None:
        tasks = tasks.filter(team=team)
    month_start, month_stop = _month_window(month)
    done = list(tasks.filter(done_at__gte=month_start, done_at__lt=month_stop))
    cutoff = min(today, end + timedelta(days=1))
    # Late in the month: due in it (up to yesterday) and not done by the due date.
    late = [
        t
        for t in tasks.filter(due_on__gte=month, due_on__lte=end, due_on__lt=cutoff)
        if t.done_at is None or t.done_at.astimezone(UTC).date() > t.due_on
    ]
    campaigns = Campaign.objects.filter(_launched_in(month)).select_related("segment").order_by("launched_at")
    if team is not None:
        campaigns = campaigns.filter(tactics__tasks__team=team).distinct()
    effects = []
    for campaign in campaigns:
        effects.append({"campaign": campaign, "segment": campaign.segment.name, "effect": campaign_effect(campaign)})
    previous = (month - timedelta(days=1)).replace(day=1)
    sources = {
        measure: source_movers(windows=[_month_window(month), _month_window(previous)], measure=measure)
        for measure in ("revenue", "orders", "people")
    }
    return {
        "month": month,
        "team": team,
        "as_of": cutoff - timedelta(days=1),
        "goals": goal_rows,
        "tasks_done": done,
        "tasks_late": late,
        "campaigns": effects,
        "indicator_movers": indicator_movers(month=month),
        "source_movers": sources,
    }


def tactic_indicators_known(tactic: Any) -> list[str]:
    out = []
    for key in tactic.indicators:
        try:
            out.append(get_indicator(key).label)
        except UnknownIndicator:
            out.append(f"{key} (not registered)")
    return out
