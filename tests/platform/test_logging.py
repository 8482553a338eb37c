"""The detached worker and beat started as scripts/processes.sh starts them (no stderr, a log
file named by OPSLOOP_LOG_FILE and --logfile) write their logs, task failures with tracebacks
included, to that file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from config.celery import app
from crm.models import RecomputeRun, ScoringScheme
from tests.conftest import ROOT, _worker_env


def _env(log_file: Path) -> dict[str, str]:
    env = _worker_env(settings.DATABASES["default"]["NAME"])
    env["OPSLOOP_LOG_FILE"] = str(log_file)
    return env


def _wait_for_text(path: Path, *needles: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if all(needle in text for needle in needles):
            return text
        time.sleep(0.2)
    raise AssertionError(f"{needles} not in {path}:\n{text[-4000:]}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop(pidfile: Path) -> None:
    """Stop the detached process this test started: a warm shutdown (which ends its pool), then
    SIGKILL to its process group (the session it detached into) if it lingers."""
    deadline = time.monotonic() + 10
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if not pidfile.exists():
        return
    pid = int(pidfile.read_text().strip())
    if not _alive(pid):
        return
    group = os.getpgid(pid)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(pid):
        os.killpg(group, signal.SIGKILL)


def _detached(args: list[str], log_file: Path, pidfile: Path) -> None:
    subprocess.run(
        [
            *(sys.executable, "-m", "celery", "-A", "config", *args),
            *("--detach", "--pidfile", str(pidfile), "--logfile", str(log_file), "--loglevel", "INFO"),
        ],
        cwd=ROOT,
        env=_env(log_file),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
        timeout=60,
    )


@pytest.fixture
def detached_worker(transactional_db, tmp_path) -> Iterator[tuple[str, Path]]:
    """A detached worker on a queue of its own; yields the queue and its log file."""
    queue = f"logging-test-{os.getpid()}-{time.monotonic_ns()}"
    log_file, pidfile = tmp_path / "worker.log", tmp_path / "worker.pid"
    _detached(
        [
            *("worker", "-Q", queue, "--concurrency", "1", "-n", f"{queue}@%h"),
            *("--without-gossip", "--without-mingle", "--without-heartbeat"),
        ],
        log_file,
        pidfile,
    )
    try:
        yield queue, log_file
    finally:
        _stop(pidfile)


@pytest.mark.worker
def test_a_detached_worker_logs_a_failing_task_with_its_traceback_to_its_log_file(detached_worker):
    queue, log_file = detached_worker
    ScoringScheme.objects.update(is_active=False)  # the recompute fails: no active scheme
    result = app.send_task("crm.tasks.recompute_customer_values", queue=queue)
    with pytest.raises(Exception, match="no active scoring scheme"):
        result.get(timeout=90)
    text = _wait_for_text(log_file, "raised unexpected", "Traceback (most recent call last)")
    # Celery's own failure line, and the service's record of the failure, both with the reason.
    assert "crm.tasks.recompute_customer_values" in text
    run = RecomputeRun.objects.get()
    assert f"value recompute run {run.pk} failed: NoActiveScheme: no active scoring scheme" in text
    assert text.count("Traceback (most recent call last)") >= 2
    assert 'raise NoActiveScheme("no active scoring scheme' in text


@pytest.mark.django_db(transaction=True)
def test_detached_beat_logs_to_its_log_file(tmp_path):
    log_file, pidfile = tmp_path / "beat.log", tmp_path / "beat.pid"
    # A schedule of its own (none): this beat must not send the project's tasks to the suite's Redis.
    _detached(
        ["beat", "--scheduler", "celery.beat:PersistentScheduler", "--schedule", str(tmp_path / "schedule")],
        log_file,
        pidfile,
    )
    try:
        _wait_for_text(log_file, "beat: Starting...")
    finally:
        _stop(pidfile)
