"""Community endpoints, included under /api/v1/."""

from django.urls import path

from community import api

urlpatterns = [
    path("community/funnel", api.FunnelView.as_view(), name="community-funnel"),
    path("community/cohorts", api.CohortsView.as_view(), name="community-cohorts"),
    path("community/groups/health", api.GroupHealthListView.as_view(), name="community-group-health-list"),
    path("community/groups/<str:group_id>/health", api.GroupHealthView.as_view(), name="community-group-health"),
    path("community/groups/<str:group_id>/assign", api.AssignGroupView.as_view(), name="community-group-assign"),
    path(
        "community/accounts/<str:account_id>/assign", api.AssignAccountView.as_view(), name="community-account-assign"
    ),
    path("community/unassigned", api.UnassignedView.as_view(), name="community-unassigned"),
    path("community/competitor-apps", api.CompetitorAppsView.as_view(), name="community-competitor-apps"),
    path("community/scores", api.ScoreListView.as_view(), name="community-scores"),
    path("community/scores.csv", api.ScoreExportView.as_view(), name="community-scores-csv"),
    path("community/scores/<str:score_id>", api.ScoreDetailView.as_view(), name="community-score"),
    path("community/score-runs", api.ScoreRunCreateView.as_view(), name="community-score-runs"),
    path("community/score-runs/<str:run_id>", api.ScoreRunDetailView.as_view(), name="community-score-run"),
    path("community/score-runs/<str:run_id>/retry", api.ScoreRunRetryView.as_view(), name="community-score-run-retry"),
]
