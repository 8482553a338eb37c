"""Planning API (scope `manage`; staff sessions with the planning permissions): tactics, the
decomposition of a goal by them, a goal's plan against its baseline, phases, team tasks and
boards, and the monthly review."""

from __future__ import annotations

from datetime import date

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.exceptions import ValidationError
from rest_framework.generics import ListAPIView
from rest_framework.response import Response
from rest_framework.views import APIView

from access.permissions import HasScope
from config.api import JsonParser, object_or_404, query_int, request_actor
from indicators.errors import GoalNotFound, IndicatorUnavailable
from indicators.models import Goal
from planning import selectors, services
from planning import serializers as s
from planning.errors import TacticNotFound, TaskNotFound, TeamNotFound
from planning.models import Phase, Tactic, Task

MANAGE = HasScope("manage")
ID = {"path": lambda name: OpenApiParameter(name, int, OpenApiParameter.PATH, description="Integer id.")}
REFUSED = OpenApiResponse(OpenApiTypes.OBJECT, description="Refused by the planning rules (`reason` says which).")
CONFLICT = OpenApiResponse(OpenApiTypes.OBJECT, description="Conflicts with an existing object (`reason`).")


def _actor(request) -> dict:
    who = request_actor(request)
    return {"actor": who["created_by"], "api_key": who["api_key"]}


def _parse(serializer_class, data) -> dict:
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def _tactics():
    return Tactic.objects.select_related("goal").prefetch_related("campaigns", "coupon_rules")


def _today() -> date:
    return selectors._today()


class TacticListView(ListAPIView):
    permission_classes = [MANAGE]
    parser_classes = [JsonParser]
    serializer_class = s.TacticOutput
    filter_backends: list = []

    def get_queryset(self):
        rows = _tactics().order_by("goal", "starts_on", "id")
        goal = query_int(self.request, "goal", minimum=1)
        return rows if goal is None else rows.filter(goal=goal)

    @extend_schema(
        operation_id="tactics_list",
        parameters=[OpenApiParameter("goal", int, required=False)],
        summary="The tactics, of one goal or all",
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    @extend_schema(
        operation_id="tactics_create",
        request=s.TacticInput,
        responses={201: s.TacticOutput, 409: CONFLICT},
        summary="Add a tactic to a goal",
    )
    def post(self, request):
        data = _parse(s.TacticInput, request.data)
        goal = Goal.objects.get(pk=data.pop("goal"))
        tactic = services.create_tactic(goal=goal, **data, **_actor(request))
        return Response(s.TacticOutput(_tactics().get(pk=tactic.pk)).data, status=201)


class TacticDetailView(APIView):
    permission_classes = [MANAGE]
    parser_classes = [JsonParser]

    def _tactic(self, tactic_id) -> Tactic:
        return object_or_404(_tactics(), tactic_id, TacticNotFound, "tactic")

    @extend_schema(operation_id="tactic_detail", parameters=[ID["path"]("tactic_id")], responses={200: s.TacticOutput})
    def get(self, request, tactic_id: str):
        return Response(s.TacticOutput(self._tactic(tactic_id)).data)

    @extend_schema(
        operation_id="tactic_change",
        parameters=[ID["path"]("tactic_id")],
        request=s.TacticChange,
        responses={200: s.TacticOutput, 409: CONFLICT},
        summary="Change a tactic (the goal is decomposed again only when asked)",
    )
    def patch(self, request, tactic_id: str):
        tactic = self._tactic(tactic_id)
        changes = _parse(s.TacticChange, request.data)
        services.update_tactic(tactic=tactic, changes=changes, **_actor(request))
        return Response(s.TacticOutput(self._tactic(tactic.pk)).data)

    @extend_schema(operation_id="tactic_delete", parameters=[ID["path"]("tactic_id")], responses={204: None})
    def delete(self, request, tactic_id: str):
        services.delete_tactic(tactic=self._tactic(tactic_id), **_actor(request))
        return Response(status=204)


def _goal(goal_id) -> Goal:
    return object_or_404(Goal.objects.prefetch_related("month_targets"), goal_id, GoalNotFound, "goal")


class GoalDecomposeByTacticsView(APIView):
    permission_classes = [MANAGE]

    @extend_schema(
        operation_id="goal_decompose_by_tactics",
        parameters=[ID["path"]("goal_id")],
        request=None,
        responses={200: s.GoalPlanOutput, 422: REFUSED},
        summary="Spread the goal over its months by its tactics' timing",
        description="422 `NO_TACTICS`, `CONTRIBUTIONS_EXCEED_TARGET` or `LAST_MONTH_UNCOVERED`.",
    )
    def post(self, request, goal_id: str):
        goal = services.decompose_by_tactics(goal=_goal(goal_id), **_actor(request))
        plan = selectors.goal_plan(_goal(goal.pk))
        return Response(s.plan_body(plan))


class GoalPlanView(APIView):
    permission_classes = [MANAGE]

    @extend_schema(
        operation_id="goal_plan",
        parameters=[ID["path"]("goal_id")],
        responses={200: s.GoalPlanOutput, 409: CONFLICT},
        summary="Target, actual, natural-growth baseline and gap per month, with the tactics",
    )
    def get(self, request, goal_id: str):
        plan = selectors.goal_plan(_goal(goal_id))
        if plan is None:
            raise IndicatorUnavailable("The indicator of this goal is not registered any more.")
        return Response(s.plan_body(plan))


class PhaseListView(ListAPIView):
    permission_classes = [MANAGE]
    parser_classes = [JsonParser]
    serializer_class = s.PhaseOutput
    filter_backends: list = []

    def get_queryset(self):
        rows = Phase.objects.order_by("goal", "starts_on", "id")
        goal = query_int(self.request, "goal", minimum=1)
        return rows if goal is None else rows.filter(goal=goal)

    @extend_schema(operation_id="phases_list", parameters=[OpenApiParameter("goal", int, required=False)])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    @extend_schema(operation_id="phases_create", request=s.PhaseInput, responses={201: s.PhaseOutput, 409: CONFLICT})
    def post(self, request):
        data = _parse(s.PhaseInput, request.data)
        phase = services.create_phase(goal=Goal.objects.get(pk=data.pop("goal")), **data, **_actor(request))
        return Response(s.PhaseOutput(phase).data, status=201)


def _task_refs(data: dict) -> dict:
    """Ids of the body as the rows the services take."""
    out = dict(data)
    if "owner" in out:
        out["owner"] = None if out["owner"] is None else get_user_model().objects.get(pk=out["owner"])
    if "tactic" in out:
        out["tactic"] = None if out["tactic"] is None else Tactic.objects.get(pk=out["tactic"])
    return out


class TaskListView(ListAPIView):
    permission_classes = [MANAGE]
    parser_classes = [JsonParser]
    serializer_class = s.TaskOutput
    filter_backends: list = []

    def get_serializer_context(self) -> dict:
        return {**super().get_serializer_context(), "today": _today()}

    def get_queryset(self):
        rows = selectors.tasks_with_people().order_by("due_on", "id")
        for name in ("team", "phase"):
            value = query_int(self.request, name, minimum=1)
            if value is not None:
                rows = rows.filter(**{name: value})
        late = self.request.query_params.get("late")
        if late not in (None, "", "true", "false"):
            raise ValidationError({"late": ["`true` or `false`."]})
        if late == "true":
            rows = rows.filter(pk__in=selectors.overdue_tasks(today=_today()).values("pk"))
        return rows

    @extend_schema(
        operation_id="tasks_list",
        parameters=[
            OpenApiParameter("team", int, required=False),
            OpenApiParameter("phase", int, required=False),
            OpenApiParameter("late", bool, required=False, description="`true`: only the late ones."),
        ],
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    @extend_schema(operation_id="tasks_create", request=s.TaskInput, responses={201: s.TaskOutput})
    def post(self, request):
        data = _task_refs(_parse(s.TaskInput, request.data))
        data["phase"] = Phase.objects.get(pk=data["phase"])
        data["team"] = Group.objects.get(pk=data["team"])
        task = services.create_task(**data, **_actor(request))
        row = selectors.tasks_with_people().get(pk=task.pk)
        return Response(s.TaskOutput(row, context={"today": _today()}).data, status=201)


class TaskDetailView(APIView):
    permission_classes = [MANAGE]
    parser_classes = [JsonParser]

    def _task(self, task_id) -> Task:
        return object_or_404(selectors.tasks_with_people(), task_id, TaskNotFound, "task")

    @extend_schema(operation_id="task_detail", parameters=[ID["path"]("task_id")], responses={200: s.TaskOutput})
    def get(self, request, task_id: str):
        return Response(s.TaskOutput(self._task(task_id), context={"today": _today()}).data)

    @extend_schema(
        operation_id="task_change",
        parameters=[ID["path"]("task_id")],
        request=s.TaskChange,
        responses={200: s.TaskOutput},
        summary="Move a task on its board (`status`) or change it",
    )
    def patch(self, request, task_id: str):
        task = self._task(task_id)
        changes = _task_refs(_parse(s.TaskChange, request.data))
        status = changes.pop("status", None)
        if changes:
            task = services.update_task(task=task, changes=changes, **_actor(request))
        if status is not None:
            services.move_task(task=task, status=status, **_actor(request))
        return Response(s.TaskOutput(self._task(task.pk), context={"today": _today()}).data)


class BoardView(APIView):
    permission_classes = [MANAGE]

    @extend_schema(
        operation_id="team_board",
        parameters=[ID["path"]("team_id")],
        responses={200: s.BoardOutput},
        summary="A team's tasks: to do, doing, done and late",
    )
    def get(self, request, team_id: str):
        team = object_or_404(Group.objects.all(), team_id, TeamNotFound, "team")
        today = _today()
        columns = selectors.board(team=team, today=today)
        context = {"today": today}
        return Response(
            {
                "team": team.pk,
                "team_name": team.name,
                "today": today,
                **{name: s.TaskOutput(tasks, many=True, context=context).data for name, tasks in columns.items()},
            }
        )


class ReviewView(APIView):
    permission_classes = [MANAGE]

    @extend_schema(
        operation_id="monthly_review",
        parameters=[
            OpenApiParameter("month", str, required=True, description="YYYY-MM"),
            OpenApiParameter("team", int, required=False, description="A staff group; none: the whole operation."),
        ],
        responses={200: s.ReviewOutput},
        summary="The monthly review: goals against baseline, tasks, campaigns against holdouts, movers",
    )
    def get(self, request):
        data = _parse(s.ReviewInput, request.query_params)
        month = date.fromisoformat(f"{data['month']}-01")
        team = Group.objects.get(pk=data["team"]) if data.get("team") else None
        today = _today()
        return Response(s.review_body(selectors.monthly_review(month=month, team=team, today=today), today))
