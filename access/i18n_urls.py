"""The admin header's language switch (mounted at /i18n/ by config.urls)."""

from django.urls import path

from access.language import set_language

urlpatterns = [path("setlang/", set_language, name="set_language")]
