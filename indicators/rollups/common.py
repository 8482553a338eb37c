"""What the fold and the rebuild share: the bookkeeping row they queue on, the timed steps and the
memory their sorts get."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from django.conf import settings

from indicators.models import RollupState

STATE = "indicators"  # the name of the one `RollupState` row
DEFAULT_CHUNK_EVENTS = 500_000

Progress = Callable[[int], None]


@dataclass
class RollupResult:
    events: int = 0
    chunks: int = 0
    days: int = 0
    last_event_id: int = 0
    timings: dict[str, float] = field(default_factory=lambda: defaultdict(float))


class Steps:
    """A cursor that adds up the seconds of each named step (printed by the bench)."""

    def __init__(self, cursor, timings: dict[str, float]) -> None:
        self.cursor = cursor
        self.timings = timings

    def run(self, step: str, statement, params=None) -> None:
        """Execute `statement` (text or composed SQL), timed as `step`."""
        started = time.monotonic()
        self.cursor.execute(statement, params)
        self.timings[step] += time.monotonic() - started

    def execute(self, statement, params=None) -> None:
        """Execute a bookkeeping statement, untimed."""
        self.cursor.execute(statement, params)

    def fetchone(self):
        return self.cursor.fetchone()


def set_work_mem(cursor) -> None:
    """Memory for this transaction's sorts and hashes: with the default 4 MB the per-person-day
    aggregates and the cohorts' DISTINCTs spill to disk."""
    cursor.execute(
        "SELECT set_config('work_mem', %s, true)", [str(getattr(settings, "OPSLOOP_ROLLUP_WORK_MEM", "256MB"))]
    )


def locked_state() -> RollupState:
    """The bookkeeping row, locked for this transaction: rollup runs queue on it."""
    RollupState.objects.get_or_create(name=STATE)
    return RollupState.objects.select_for_update().get(name=STATE)
