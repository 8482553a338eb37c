"""The admin's language: the staff member's own choice, else the browser's (Accept-Language).

Django's LocaleMiddleware picks the language from the language cookie or Accept-Language. A staff
member who chooses a language with the switch in the admin header (`set_language` below, Django's
view plus a saved `StaffLanguage`) keeps it on every device: at login the saved choice is put in the
session, and `StaffLanguageMiddleware` activates it for their requests and renews the cookie."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.contrib.auth.signals import user_logged_in
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse
from django.utils import translation
from django.views.i18n import set_language as django_set_language

from access.models import StaffLanguage
from access.services import set_staff_language

SESSION_KEY = "opsloop_language"


def set_language(request: HttpRequest) -> HttpResponse:
    """Django's `set_language` (cookie and redirect to `next`), and for a signed-in staff member the
    choice saved for their later logins."""
    response = django_set_language(request)
    language = request.POST.get("language", "") if request.method == "POST" else ""
    if language in dict(settings.LANGUAGES) and request.user.is_authenticated:
        set_staff_language(user=request.user, language=language)
        request.session[SESSION_KEY] = language
    return response


@receiver(user_logged_in, dispatch_uid="access.language.apply_saved_language")
def apply_saved_language(sender, request: HttpRequest | None, user, **kwargs) -> None:
    if request is None or not hasattr(request, "session"):
        return
    language = StaffLanguage.objects.filter(user=user).values_list("language", flat=True).first()
    if language:
        request.session[SESSION_KEY] = language
    else:
        request.session.pop(SESSION_KEY, None)


class StaffLanguageMiddleware:
    """After authentication: the signed-in staff member's saved language (kept in the session since
    login, so no query per request) over the cookie and the browser's."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        language = None
        session = getattr(request, "session", None)
        user = getattr(request, "user", None)
        if session is not None and user is not None and user.is_authenticated:
            language = session.get(SESSION_KEY)
        if language in dict(settings.LANGUAGES):
            translation.activate(language)
            request.LANGUAGE_CODE = language
        response = self.get_response(request)
        if language in dict(settings.LANGUAGES) and request.COOKIES.get(settings.LANGUAGE_COOKIE_NAME) != language:
            # The login page, seen signed out on this device later, speaks the same language.
            response.set_cookie(
                settings.LANGUAGE_COOKIE_NAME,
                language,
                max_age=settings.LANGUAGE_COOKIE_AGE,
                path=settings.LANGUAGE_COOKIE_PATH,
                domain=settings.LANGUAGE_COOKIE_DOMAIN,
                secure=settings.LANGUAGE_COOKIE_SECURE,
                httponly=settings.LANGUAGE_COOKIE_HTTPONLY,
                samesite=settings.LANGUAGE_COOKIE_SAMESITE,
            )
        return response
