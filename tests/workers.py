"""A real Celery worker as a child process, for the tests and the benchmarks that need one. It runs
in a process group of its own, so that it can be killed whole, as a crashed machine would be."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class WorkerProcess:
    """`celery worker` on `queues` with `env` (its DATABASE_URL and REDIS_URL say where it works);
    its output goes to `log_path`. Tests and benchmarks may kill and restart it."""

    def __init__(
        self,
        *,
        env: dict[str, str],
        log_path: Path,
        queues: str = "default,deliveries,analytics",
        name: str = "test",
        loglevel: str = "INFO",
        concurrency: int = 2,
    ) -> None:
        self.env, self.log_path, self.queues = env, log_path, queues
        self.name, self.loglevel, self.concurrency = name, loglevel, concurrency
        self.proc: subprocess.Popen | None = None

    def start(self, concurrency: int | None = None) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115  (lives as long as the process)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "-Q",
                self.queues,
                "--concurrency",
                str(concurrency or self.concurrency),
                "--pool",
                "prefork",
                "--loglevel",
                self.loglevel,
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-n",
                f"{self.name}-{os.getpid()}-{time.monotonic_ns()}@%h",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crashed machine would."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 30) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
