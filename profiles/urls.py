from django.urls import path

from profiles.api import IdentifyView, ProfileView, SupportLookupView

urlpatterns = [
    path("identify", IdentifyView.as_view(), name="identify"),
    path("profiles/<str:user_id>", ProfileView.as_view(), name="profile-detail"),
    path("support/lookup", SupportLookupView.as_view(), name="support-lookup"),
]
