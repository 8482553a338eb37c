"""Routes of the campaigns app, under /api/v1/."""

from django.urls import path

from campaigns import api

urlpatterns = [
    path("segments", api.SegmentListView.as_view(), name="segment-list"),
    path("segments/<str:pk>", api.SegmentDetailView.as_view(), name="segment-detail"),
    path("segments/<str:pk>/preview", api.SegmentPreviewView.as_view(), name="segment-preview"),
    path("campaigns", api.CampaignListView.as_view(), name="campaign-list"),
    path("campaigns/<str:pk>", api.CampaignDetailView.as_view(), name="campaign-detail"),
    path("campaigns/<str:pk>/launch", api.CampaignLaunchView.as_view(), name="campaign-launch"),
    path("campaigns/<str:pk>/pause", api.CampaignPauseView.as_view(), name="campaign-pause"),
    path("campaigns/<str:pk>/resume", api.CampaignResumeView.as_view(), name="campaign-resume"),
    path("campaigns/<str:pk>/rollout", api.CampaignRolloutView.as_view(), name="campaign-rollout"),
    path("campaigns/<str:pk>/cancel", api.CampaignCancelView.as_view(), name="campaign-cancel"),
    path("campaigns/<str:pk>/retry", api.CampaignRetryView.as_view(), name="campaign-retry"),
    path("campaigns/<str:pk>/clone", api.CampaignCloneView.as_view(), name="campaign-clone"),
    path("campaigns/<str:pk>/results", api.CampaignResultsView.as_view(), name="campaign-results"),
    path("experiments/analyze", api.ExperimentAnalyzeView.as_view(), name="experiment-analyze"),
    path("deliveries/receipts", api.ReceiptsView.as_view(), name="delivery-receipts"),
    # Public, signed: what a recipient's device opens.
    path("t/c/<str:token>", api.click_redirect, name="track-click"),
    path("t/o/<str:token>.gif", api.open_pixel, name="track-open"),
]
