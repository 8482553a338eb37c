"""The test suite: the same servers as development, fast password hashing, mail kept in memory."""

from .base import *  # noqa: F403

DEBUG = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
WHITENOISE_AUTOREFRESH = True

# Django's PostgreSQL backend with a flush between transactional tests that costs milliseconds
# instead of seconds (see config/test_database/base.py).
DATABASES["default"]["ENGINE"] = "config.test_database"  # noqa: F405
