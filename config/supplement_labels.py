"""Texts other packages show in our admin without a Simplified Chinese translation of their own
(Django's newer admin captions, django-axes' models), for makemessages: config/locale, first in
LOCALE_PATHS, translates them for every page."""

from django.utils.translation import gettext_noop

LABELS = [
    # django.contrib.admin's app list (screen-reader captions of its table).
    gettext_noop("Model name"),
    gettext_noop("Add link"),
    gettext_noop("Change or view list link"),
    # django-axes (admin: *Axes*, login attempts and lockouts).
    gettext_noop("Axes"),
    gettext_noop("access attempt"),
    gettext_noop("access attempts"),
    gettext_noop("access failure"),
    gettext_noop("access failures"),
    gettext_noop("access attempt expiration"),
    gettext_noop("access attempt expirations"),
    gettext_noop("access log"),
    gettext_noop("access logs"),
]
