from django.urls import path

from access.api import WhoAmIView

urlpatterns = [path("auth/whoami", WhoAmIView.as_view(), name="whoami")]
