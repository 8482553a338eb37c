from django.urls import path

from profiles.api import IdentifyView, ProfileView, SupportLookupView, TagRuleRetryView, TagRuleRunView

urlpatterns = [
    path("identify", IdentifyView.as_view(), name="identify"),
    path("profiles/<str:user_id>", ProfileView.as_view(), name="profile-detail"),
    path("support/lookup", SupportLookupView.as_view(), name="support-lookup"),
    path("tag-rules/<str:rule_id>", TagRuleRunView.as_view(), name="tag-rule-run"),
    path("tag-rules/<str:rule_id>/retry", TagRuleRetryView.as_view(), name="tag-rule-retry"),
]
