from django.urls import path

from planning import api

urlpatterns = [
    path("tactics", api.TacticListView.as_view(), name="tactics"),
    path("tactics/<str:tactic_id>", api.TacticDetailView.as_view(), name="tactic"),
    path(
        "goals/<str:goal_id>/decompose-by-tactics",
        api.GoalDecomposeByTacticsView.as_view(),
        name="goal-decompose-by-tactics",
    ),
    path("goals/<str:goal_id>/plan", api.GoalPlanView.as_view(), name="goal-plan"),
    path("phases", api.PhaseListView.as_view(), name="phases"),
    path("tasks", api.TaskListView.as_view(), name="tasks"),
    path("tasks/<str:task_id>", api.TaskDetailView.as_view(), name="task"),
    path("teams/<str:team_id>/board", api.BoardView.as_view(), name="team-board"),
    path("reviews", api.ReviewView.as_view(), name="review"),
]
