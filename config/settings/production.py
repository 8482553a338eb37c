"""Production: every secret from the environment, HTTPS only, JSON logs.

`OPSLOOP_SECRET_KEY`, `DATABASE_URL`, `REDIS_URL` and `OPSLOOP_ALLOWED_HOSTS` must be set; the
process refuses to start without them rather than run with a development default.
"""

import os

from django.core.exceptions import ImproperlyConfigured

from .base import *  # noqa: F403
from .base import LOGGING, env, env_bool

for _name in ("OPSLOOP_SECRET_KEY", "DATABASE_URL", "REDIS_URL", "OPSLOOP_ALLOWED_HOSTS"):
    if not os.environ.get(_name):
        raise ImproperlyConfigured(f"{_name} must be set in production")

DEBUG = False
SECRET_KEY = env("OPSLOOP_SECRET_KEY")

# https://docs.djangoproject.com/en/5.2/howto/deployment/checklist/
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("OPSLOOP_SSL_REDIRECT", True)
SECURE_HSTS_SECONDS = int(env("OPSLOOP_HSTS_SECONDS", "31536000"))
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SESSION_COOKIE_SECURE = True
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_SECURE = True
X_FRAME_OPTIONS = "DENY"

for _handler in LOGGING["handlers"].values():  # the console, and the file of OPSLOOP_LOG_FILE
    _handler["formatter"] = env("OPSLOOP_LOG_FORMAT", "json")
