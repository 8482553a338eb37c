from django.urls import path

from indicators import api

urlpatterns = [
    # The fixed paths before `indicators/<key>`.
    path("indicators", api.IndicatorListView.as_view(), name="indicators"),
    path("indicators/retention", api.RetentionView.as_view(), name="indicator-retention"),
    path("indicators/purchases", api.PurchaseSummaryView.as_view(), name="indicator-purchases"),
    path("indicators/<str:key>", api.IndicatorSeriesView.as_view(), name="indicator-series"),
    path("funnels", api.FunnelListView.as_view(), name="funnels"),
    path("funnels/<str:pk>/analyze", api.FunnelAnalyzeView.as_view(), name="funnel-analyze"),
    path("search/queries", api.SearchQueriesView.as_view(), name="search-queries"),
    path("key-behaviour", api.KeyBehaviourView.as_view(), name="key-behaviour"),
    path("churn", api.ChurnView.as_view(), name="churn-behaviours"),
    path("goals", api.GoalListView.as_view(), name="goals"),
    path("goals/<str:goal_id>", api.GoalDetailView.as_view(), name="goal"),
    path("goals/<str:goal_id>/decompose", api.GoalDecomposeView.as_view(), name="goal-decompose"),
    path("goals/<str:goal_id>/progress", api.GoalProgressView.as_view(), name="goal-progress"),
    path("alerts", api.AlertListView.as_view(), name="alerts"),
    path("alerts/<str:alert_id>", api.AlertDetailView.as_view(), name="alert"),
    path("alerts/<str:alert_id>/acknowledge", api.AlertAcknowledgeView.as_view(), name="alert-acknowledge"),
    path("alerts/<str:alert_id>/resend", api.AlertResendView.as_view(), name="alert-resend"),
    path("indicator-watches/<str:key>", api.WatchView.as_view(), name="indicator-watch"),
    path("anomaly-checks/<str:run_id>", api.CheckRunView.as_view(), name="anomaly-check"),
    path("anomaly-checks/<str:run_id>/retry", api.CheckRunRetryView.as_view(), name="anomaly-check-retry"),
]
