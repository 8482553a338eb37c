"""The one Celery app. Queues: `default`, `deliveries` (outgoing messages) and `analytics`
(nightly recomputation); schedules live in django-celery-beat's tables so operators edit them
in the admin."""

import logging
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.development")

app = Celery("opsloop")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.task(name="config.celery.ping")
def ping() -> str:
    """Answer `pong`: lets /healthz and the tests prove a worker is consuming the queue."""
    return "pong"


# Every task is named by where its function lives (`<module>.<function>`, Celery's own default
# written out), so a name in a log or a beat row leads to the code. The probe's former name stays
# registered for scripts and monitors that send it by name.
@app.task(name="opsloop.ping")
def ping_old_name() -> str:
    return ping()


# Publishing gives up quickly when the broker is down: what a task was for is kept in the database
# (a pending job, delivery, trigger or run) and a sweep or an operator's retry picks it up.
_QUICK_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}


def publish(what: str, task, *, args: list | None = None, kwargs: dict | None = None, countdown=None) -> bool:
    """Queue a task without ever failing the caller (a request whose transaction has committed, a
    worker mid-batch): False, and a log line naming `what`, if the broker cannot be reached."""
    try:
        task.apply_async(args=args or [], kwargs=kwargs or {}, countdown=countdown, retry_policy=_QUICK_RETRY)
    except Exception:
        logging.getLogger(__name__).exception("Could not queue %s: the broker is unreachable.", what)
        return False
    return True
