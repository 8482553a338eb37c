"""Celery signal receivers that record every task run (`TaskRun`), in the process that ran it.

`task_prerun` notes the start in memory; `task_postrun` writes the outcome with one upsert. A
failure to record is logged and never fails the task."""

from __future__ import annotations

import logging
import time
from datetime import datetime

from celery import signals
from celery import states as celery_states
from django.utils import timezone

from config.failures import failure_reason

logger = logging.getLogger(__name__)

# task id -> (wall-clock start, monotonic start), for the runs in progress in this process.
_started: dict[str, tuple[datetime, float]] = {}

_STATES = {celery_states.SUCCESS: "ok", celery_states.FAILURE: "failed", celery_states.RETRY: "retry"}


def _on_prerun(sender=None, task_id: str | None = None, **kwargs) -> None:
    if task_id:
        _started[task_id] = (timezone.now(), time.monotonic())


def _on_postrun(sender=None, task_id: str | None = None, retval=None, state: str | None = None, **kwargs) -> None:
    from monitoring import services

    started_at, started = _started.pop(task_id or "", (None, None))
    outcome = _STATES.get(state or "", "failed" if isinstance(retval, BaseException) else "ok")
    try:
        services.record_task_run(
            task=getattr(sender, "name", None) or str(sender),
            task_id=task_id or "",
            started_at=started_at,
            finished_at=timezone.now(),
            state=outcome,
            error=failure_reason(retval) if isinstance(retval, BaseException) else "",
            runtime=None if started is None else round(time.monotonic() - started, 3),
        )
    except Exception:  # the record is a convenience: whatever stops it must not fail the task
        logger.warning("could not record the run of task %s", sender, exc_info=True)


def connect() -> None:
    signals.task_prerun.connect(_on_prerun, weak=False, dispatch_uid="monitoring.prerun")
    signals.task_postrun.connect(_on_postrun, weak=False, dispatch_uid="monitoring.postrun")
