"""Local development: the project-local servers of `make up`, debug pages on."""

from .base import *  # noqa: F403
from .base import env_bool

DEBUG = env_bool("OPSLOOP_DEBUG", True)
EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
WHITENOISE_AUTOREFRESH = True
