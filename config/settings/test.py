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
# A replica that `scripts/services.sh start-replica` left in .run/env is not used by the suite: its
# reads would trail the tests' writes. tests/platform/test_replica.py adds it where it is the point.
DATABASES.pop("replica", None)  # noqa: F405

# The tests share the servers with a `make demo` that may be running beside them. They keep to a
# Redis database of their own (the demo's worker would otherwise take their tasks, and their
# flushes would drop the demo's queue), under queue keys of their own, and never post to the ports
# a developer's shell names for the demo: a test that needs a gateway or a public URL sets it.
REDIS_URL = f"{REDIS_URL.rsplit('/', 1)[0]}/{env('OPSLOOP_TEST_REDIS_DB', '1')}"  # noqa: F405
CACHES["default"]["LOCATION"] = REDIS_URL  # noqa: F405
CELERY_BROKER_URL = CELERY_RESULT_BACKEND = REDIS_URL
CELERY_BROKER_TRANSPORT_OPTIONS = {
    **CELERY_BROKER_TRANSPORT_OPTIONS,  # noqa: F405
    # https://docs.celeryq.dev/projects/kombu/en/stable/reference/kombu.transport.redis.html
    "global_keyprefix": "opsloop-test:",
}
OPSLOOP_PUBLIC_URL = "http://testserver"
OPSLOOP_PUSH_GATEWAY_URL = OPSLOOP_SMS_GATEWAY_URL = OPSLOOP_WEBHOOK_URL = ""
