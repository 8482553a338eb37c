"""Local development: the project-local servers of `make up`, debug pages on."""

from .base import *  # noqa: F403
from .base import env_bool, env_list

DEBUG = env_bool("OPSLOOP_DEBUG", True)
EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
WHITENOISE_AUTOREFRESH = True
# Local gateways (the demo's, a developer's stand-in) may receive the token.
OPSLOOP_GATEWAY_ALLOWED_HOSTS = env_list("OPSLOOP_GATEWAY_ALLOWED_HOSTS", "127.0.0.1,localhost")
