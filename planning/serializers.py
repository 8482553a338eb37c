"""Input and output shapes of the planning API."""

from __future__ import annotations

from decimal import Decimal

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from rest_framework import serializers

from config.api import IdField
from indicators.models import Goal, goal_step
from planning.models import Phase, PhaseKind, Tactic, Task

TASK_STATUSES = "`todo`, `doing` or `done` (late is read from the due date)."
VALUE = {"max_digits": 19, "decimal_places": 4, "min_value": Decimal(0), "max_value": Decimal("999999999999999.9999")}


def _value(value: Decimal | None, unit: str) -> str | None:
    return None if value is None else str(value.quantize(goal_step(unit)))


class TacticInput(serializers.Serializer):
    goal = IdField(exists=Goal.objects.all(), what="goal")
    name = serializers.CharField(max_length=200)
    description = serializers.CharField(required=False, allow_blank=True, default="", max_length=10_000)
    indicators = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False, max_length=50, help_text="Default: the goal's"
    )
    expected_contribution = serializers.DecimalField(
        **VALUE, help_text="In the goal's unit: a share of a sum-type target, a level for a mean- or last-type one."
    )
    starts_on = serializers.DateField(help_text="A day of the first month (the month is kept).")
    ends_on = serializers.DateField(
        required=False, allow_null=True, help_text="A day of the last month; null: to the end."
    )
    campaign_ids = serializers.ListField(child=IdField(), required=False, default=list, max_length=200)
    coupon_rule_ids = serializers.ListField(child=IdField(), required=False, default=list, max_length=200)


class TacticChange(serializers.Serializer):
    name = serializers.CharField(max_length=200, required=False)
    description = serializers.CharField(required=False, allow_blank=True, max_length=10_000)
    indicators = serializers.ListField(child=serializers.CharField(max_length=64), required=False, max_length=50)
    expected_contribution = serializers.DecimalField(**VALUE, required=False)
    starts_on = serializers.DateField(required=False)
    ends_on = serializers.DateField(required=False, allow_null=True)
    campaign_ids = serializers.ListField(child=IdField(), required=False, max_length=200)
    coupon_rule_ids = serializers.ListField(child=IdField(), required=False, max_length=200)


class TacticOutput(serializers.ModelSerializer):
    campaign_ids = serializers.SerializerMethodField()
    coupon_rule_ids = serializers.SerializerMethodField()
    expected_contribution = serializers.SerializerMethodField()

    class Meta:
        model = Tactic
        fields = [
            "id",
            "goal",
            "name",
            "description",
            "indicators",
            "expected_contribution",
            "starts_on",
            "ends_on",
            "campaign_ids",
            "coupon_rule_ids",
            "created_at",
        ]

    def get_campaign_ids(self, tactic: Tactic) -> list[int]:
        return [c.pk for c in tactic.campaigns.all()]

    def get_coupon_rule_ids(self, tactic: Tactic) -> list[int]:
        return [r.pk for r in tactic.coupon_rules.all()]

    def get_expected_contribution(self, tactic: Tactic) -> str:
        return _value(tactic.expected_contribution, tactic.goal.unit)


class PhaseInput(serializers.Serializer):
    goal = IdField(exists=Goal.objects.all(), what="goal")
    kind = serializers.ChoiceField(choices=PhaseKind.choices)
    starts_on = serializers.DateField(help_text="A day of its first month.")
    priorities = serializers.CharField(required=False, allow_blank=True, default="", max_length=10_000)


class PhaseOutput(serializers.ModelSerializer):
    priorities = serializers.SerializerMethodField()

    class Meta:
        model = Phase
        fields = ["id", "goal", "kind", "starts_on", "priorities"]

    def get_priorities(self, phase: Phase) -> list[str]:
        return phase.priority_list()


class TaskInput(serializers.Serializer):
    phase = IdField(exists=Phase.objects.all(), what="phase")
    team = IdField(exists=Group.objects.all(), what="team", help_text="A staff group's id.")
    owner = IdField(required=False, allow_null=True, exists=lambda pk: get_user_model().objects.filter(pk=pk).exists())
    title = serializers.CharField(max_length=200)
    due_on = serializers.DateField()
    indicator = serializers.CharField(max_length=64, required=False, allow_blank=True, default="")
    tactic = IdField(required=False, allow_null=True, exists=Tactic.objects.all(), what="tactic")


class TaskChange(serializers.Serializer):
    # A plain string (checked by the service, 400 naming the field): a choice field named
    # `status` would collide in the schema with the campaigns' status enum.
    status = serializers.CharField(required=False, max_length=8, help_text=TASK_STATUSES)
    owner = IdField(required=False, allow_null=True, exists=lambda pk: get_user_model().objects.filter(pk=pk).exists())
    title = serializers.CharField(max_length=200, required=False)
    due_on = serializers.DateField(required=False)
    indicator = serializers.CharField(max_length=64, required=False, allow_blank=True)
    tactic = IdField(required=False, allow_null=True, exists=Tactic.objects.all(), what="tactic")


class TaskOutput(serializers.ModelSerializer):
    status = serializers.CharField(help_text=TASK_STATUSES)
    team_name = serializers.CharField(source="team.name")
    owner_name = serializers.SerializerMethodField()
    column = serializers.SerializerMethodField(help_text="`todo`, `doing`, `done` or `late` (not done after due).")
    late = serializers.SerializerMethodField()

    class Meta:
        model = Task
        fields = [
            "id",
            "phase",
            "tactic",
            "team",
            "team_name",
            "owner",
            "owner_name",
            "title",
            "indicator",
            "due_on",
            "status",
            "done_at",
            "column",
            "late",
        ]

    def get_owner_name(self, task: Task) -> str | None:
        return task.owner.get_username() if task.owner_id else None

    def get_column(self, task: Task) -> str:
        from planning.selectors import board_column

        return board_column(task, self.context["today"])

    def get_late(self, task: Task) -> bool:
        return task.is_late(self.context["today"])


class BoardOutput(serializers.Serializer):
    team = serializers.IntegerField()
    team_name = serializers.CharField()
    today = serializers.DateField()
    todo = TaskOutput(many=True)
    doing = TaskOutput(many=True)
    done = TaskOutput(many=True)
    late = TaskOutput(many=True)


class ReviewInput(serializers.Serializer):
    month = serializers.RegexField(r"^[0-9]{4}-(0[1-9]|1[0-2])$", help_text="YYYY-MM")
    team = IdField(required=False, exists=Group.objects.all(), what="team")


class PlanMonthOutput(serializers.Serializer):
    month = serializers.DateField()
    target = serializers.CharField()
    actual = serializers.CharField(allow_null=True)
    baseline = serializers.CharField(allow_null=True)
    gap = serializers.CharField(allow_null=True, help_text="Target minus baseline: what operations must add.")
    beyond_baseline = serializers.CharField(allow_null=True, help_text="Actual minus baseline.")
    incremental = serializers.CharField(help_text="Measured by the holdouts of the tactics' campaigns.")
    status = serializers.CharField()


class GoalPlanOutput(serializers.Serializer):
    goal = serializers.IntegerField()
    indicator_label = serializers.CharField()
    as_of = serializers.DateField()
    baseline_method = serializers.CharField()
    baseline_history = serializers.CharField()
    months = PlanMonthOutput(many=True)
    tactics = TacticOutput(many=True)


def plan_body(plan) -> dict:
    unit = plan.goal.unit
    return {
        "goal": plan.goal.pk,
        "indicator_label": plan.label,
        "as_of": plan.as_of,
        "baseline_method": plan.baseline_method,
        "baseline_history": plan.baseline_history,
        "months": [
            {
                "month": m.month,
                "target": _value(m.target, unit),
                "actual": _value(m.actual, unit),
                "baseline": _value(m.baseline, unit),
                "gap": _value(m.gap, unit),
                "beyond_baseline": _value(m.beyond_baseline, unit),
                "incremental": _value(m.incremental, unit),
                "status": m.status,
            }
            for m in plan.months
        ],
        "tactics": TacticOutput(plan.tactics, many=True).data,
    }


class ReviewGoal(serializers.Serializer):
    goal = serializers.IntegerField()
    name = serializers.CharField()
    indicator_label = serializers.CharField()
    target = serializers.CharField()
    actual = serializers.CharField(allow_null=True)
    baseline = serializers.CharField(allow_null=True)
    gap = serializers.CharField(allow_null=True)
    status = serializers.CharField()


class ReviewCampaign(serializers.Serializer):
    campaign = serializers.IntegerField()
    name = serializers.CharField()
    segment = serializers.CharField()
    status = serializers.CharField()
    holdout_size = serializers.IntegerField(allow_null=True)
    incremental_conversions = serializers.FloatField(allow_null=True)
    incremental_revenue = serializers.CharField(allow_null=True)


class ReviewOutput(serializers.Serializer):
    month = serializers.DateField()
    team = serializers.IntegerField(allow_null=True)
    as_of = serializers.DateField()
    goals = ReviewGoal(many=True)
    tasks_done = TaskOutput(many=True)
    tasks_late = TaskOutput(many=True)
    campaigns = ReviewCampaign(many=True)
    indicator_movers = serializers.ListField(child=serializers.DictField())
    source_movers = serializers.DictField(child=serializers.ListField(child=serializers.DictField()))


def review_body(review: dict, today) -> dict:
    context = {"today": today}
    return {
        "month": review["month"],
        "team": review["team"].pk if review["team"] else None,
        "as_of": review["as_of"],
        "goals": [
            {
                "goal": g["goal"].pk,
                "name": g["goal"].name,
                "indicator_label": g["label"],
                "target": _value(g["target"], g["goal"].unit),
                "actual": _value(g["actual"], g["goal"].unit),
                "baseline": _value(g["baseline"], g["goal"].unit),
                "gap": _value(g["gap"], g["goal"].unit),
                "status": g["status"],
            }
            for g in review["goals"]
        ],
        "tasks_done": TaskOutput(review["tasks_done"], many=True, context=context).data,
        "tasks_late": TaskOutput(review["tasks_late"], many=True, context=context).data,
        "campaigns": [
            {
                "campaign": c["campaign"].pk,
                "name": c["campaign"].name,
                "segment": c["segment"],
                "status": c["campaign"].status,
                "holdout_size": c["effect"].holdout_size if c["effect"] else None,
                "incremental_conversions": round(c["effect"].incremental_conversions, 2) if c["effect"] else None,
                "incremental_revenue": str(c["effect"].incremental_revenue) if c["effect"] else None,
            }
            for c in review["campaigns"]
        ],
        "indicator_movers": [
            {
                "indicator": m["indicator"],
                "label": m["label"],
                "value": str(m["value"]),
                "previous": str(m["previous"]),
                "relative": m["relative"],
            }
            for m in review["indicator_movers"]
        ],
        "source_movers": review["source_movers"],
    }
