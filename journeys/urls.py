"""Routes of journeys, under /api/v1/."""

from django.urls import path

from journeys import api

urlpatterns = [
    path("campaigns/<str:pk>/journey", api.JourneyView.as_view(), name="journey-detail"),
    path("campaigns/<str:pk>/journey/launch", api.JourneyLaunchView.as_view(), name="journey-launch"),
    path("campaigns/<str:pk>/journey/retry", api.JourneyRetryView.as_view(), name="journey-retry"),
]
