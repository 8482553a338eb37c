from django.urls import path

from tracking.api import EventsView

urlpatterns = [
    path("events", EventsView.as_view(), name="events"),
]
