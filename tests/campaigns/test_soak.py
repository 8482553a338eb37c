"""A small soak in every test run: some fifteen hundred recipients over three campaign shapes, two real
worker processes, a gateway that fails at random and goes down for a while, and one worker killed
with SIGKILL mid-send (`bench/soak.py` runs the full size)."""

from __future__ import annotations

import sys

import pytest
from django.conf import settings

from tests.conftest import ROOT, _worker_env

pytestmark = pytest.mark.worker


def test_a_small_soak_reaches_everyone_exactly_once_through_faults_and_a_kill(transactional_db, tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    import soak

    env = _worker_env(settings.DATABASES["default"]["NAME"])
    env.update(OPSLOOP_DELIVERY_STALE_SECONDS="10", OPSLOOP_DELIVERY_HEARTBEAT_SECONDS="2")
    lines: list[str] = []
    report = soak.run_soak(
        recipients=1500, kills=1, outage_seconds=5, worker_env=env, workdir=tmp_path, timeout=400, progress=lines.append
    )
    detail = "\n".join(lines)
    assert report.deliveries >= 1400, detail  # the workload is real: holdouts aside, everyone
    assert report.requests_accepted >= report.deliveries, detail
    assert len(report.in_flight_at_kills) == 1, detail
    assert report.all_exactly_once, (dict(report.keys_per_recipient), detail)
    assert report.reposts <= sum(report.in_flight_at_kills), detail
    assert (report.stuck, report.failed, report.unknown) == (0, 0, 0), detail
    assert set(report.campaigns.values()) <= {"running", "sent"}, report.campaigns
