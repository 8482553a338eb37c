"""The admin header's language switch and the JavaScript catalogue of every app's `djangojs`
strings (both mounted at /i18n/ by config.urls)."""

from django.urls import path
from django.views.i18n import JavaScriptCatalog

from access.language import set_language

urlpatterns = [
    path("setlang/", set_language, name="set_language"),
    # <script src="{% url 'javascript-catalog' %}"> gives an admin widget gettext() and friends.
    path("js/", JavaScriptCatalog.as_view(), name="javascript-catalog"),
]
