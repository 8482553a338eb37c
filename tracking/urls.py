from django.urls import path

from tracking.api import EventsView

urlpatterns = [
    path("events", EventsView.as_view(), name="events"),
]

# --- goals ---
from tracking import api as goals_api  # noqa: E402  (kept with its block)

urlpatterns += [
    path("indicators", goals_api.IndicatorListView.as_view(), name="indicators"),
    path("goals", goals_api.GoalListView.as_view(), name="goals"),
    path("goals/<str:goal_id>", goals_api.GoalDetailView.as_view(), name="goal"),
    path("goals/<str:goal_id>/decompose", goals_api.GoalDecomposeView.as_view(), name="goal-decompose"),
    path("goals/<str:goal_id>/progress", goals_api.GoalProgressView.as_view(), name="goal-progress"),
]
