"""Writes of the monitoring app: the record of each task run."""

from __future__ import annotations

from datetime import datetime

from django.db import connection

# One statement per task run, whatever the task: the row of its name is inserted or overwritten.
RECORD_RUN_SQL = """
INSERT INTO monitoring_taskrun
       (task, task_id, started_at, finished_at, state, error, runtime_seconds, runs, failures)
VALUES (%(task)s, %(task_id)s, %(started_at)s, %(finished_at)s, %(state)s, %(error)s, %(runtime)s, 1,
        CASE WHEN %(state)s = 'failed' THEN 1 ELSE 0 END)
ON CONFLICT (task) DO UPDATE
   SET task_id = EXCLUDED.task_id,
       started_at = EXCLUDED.started_at,
       finished_at = EXCLUDED.finished_at,
       state = EXCLUDED.state,
       error = EXCLUDED.error,
       runtime_seconds = EXCLUDED.runtime_seconds,
       runs = monitoring_taskrun.runs + 1,
       failures = monitoring_taskrun.failures + EXCLUDED.failures
"""


def record_task_run(
    *,
    task: str,
    task_id: str,
    started_at: datetime | None,
    finished_at: datetime,
    state: str,
    error: str = "",
    runtime: float | None = None,
) -> None:
    """Record how a run of `task` ended (state ok, failed or retry)."""
    with connection.cursor() as cursor:
        cursor.execute(
            RECORD_RUN_SQL,
            {
                "task": task[:200],
                "task_id": (task_id or "")[:64],
                "started_at": started_at,
                "finished_at": finished_at,
                "state": state,
                "error": error,
                "runtime": runtime,
            },
        )
