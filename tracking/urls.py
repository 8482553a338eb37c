from django.urls import path

from tracking import api_indicators as indicators
from tracking.api import EventsView

urlpatterns = [
    path("events", EventsView.as_view(), name="events"),
    # Indicators: the fixed paths before `indicators/<key>`.
    path("indicators", indicators.IndicatorListView.as_view(), name="indicators"),
    path("indicators/retention", indicators.RetentionView.as_view(), name="indicator-retention"),
    path("indicators/purchases", indicators.PurchaseSummaryView.as_view(), name="indicator-purchases"),
    path("indicators/<str:key>", indicators.IndicatorSeriesView.as_view(), name="indicator-series"),
    path("funnels", indicators.FunnelListView.as_view(), name="funnels"),
    path("funnels/<str:pk>/analyze", indicators.FunnelAnalyzeView.as_view(), name="funnel-analyze"),
    path("search/queries", indicators.SearchQueriesView.as_view(), name="search-queries"),
    path("key-behaviour", indicators.KeyBehaviourView.as_view(), name="key-behaviour"),
    path("churn", indicators.ChurnView.as_view(), name="churn-behaviours"),
]

# --- goals ---
from tracking import api as goals_api  # noqa: E402  (kept with its block)

urlpatterns += [
    path("goals", goals_api.GoalListView.as_view(), name="goals"),
    path("goals/<str:goal_id>", goals_api.GoalDetailView.as_view(), name="goal"),
    path("goals/<str:goal_id>/decompose", goals_api.GoalDecomposeView.as_view(), name="goal-decompose"),
    path("goals/<str:goal_id>/progress", goals_api.GoalProgressView.as_view(), name="goal-progress"),
]
