"""`manage.py check --deploy` is clean with the production settings and production variables."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_check(extra_env: dict[str, str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSLOOP_") and k != "DJANGO_ALLOW_ASYNC_UNSAFE"}
    env.update(DJANGO_SETTINGS_MODULE="config.settings.production", **extra_env)
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


PRODUCTION = {
    "OPSLOOP_SECRET_KEY": "x" * 20 + "a-long-random-production-secret-value-0123456789",
    "OPSLOOP_ALLOWED_HOSTS": "ops.example.com",
    "DATABASE_URL": "postgres://opsloop@127.0.0.1:5432/opsloop",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
}


def test_deploy_check_is_clean_in_production():
    result = run_check(PRODUCTION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_refuses_to_start_without_a_secret_key():
    env = {k: v for k, v in PRODUCTION.items() if k != "OPSLOOP_SECRET_KEY"}
    result = run_check(env)
    assert result.returncode != 0
    assert "OPSLOOP_SECRET_KEY must be set" in result.stderr
