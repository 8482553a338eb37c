"""The one Celery app. Queues: `default`, `deliveries` (outgoing messages) and `analytics`
(nightly recomputation); schedules live in django-celery-beat's tables so operators edit them
in the admin."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.development")

app = Celery("opsloop")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.task(name="opsloop.ping")
def ping() -> str:
    """Answer `pong`: lets /healthz and the tests prove a worker is consuming the queue."""
    return "pong"
