"""System checks on the retention of raw events: PostgreSQL keeps answering from `tracking_event`
after ClickHouse is on (segments, RFM, the predictions, promotion-abuse signals), so retention
may not delete what those readers still look at."""

from __future__ import annotations

from django.conf import settings
from django.core import checks

from tracking.models import ORDER_EVENTS as ORDER_NAMES


def raw_event_readers() -> list[tuple[str, int | None, tuple[str, ...] | None]]:
    """(reader, days of raw events it reads or None for all of them, the event names it reads or
    None for any): the PostgreSQL readers of `tracking_event` with a window."""
    return [
        (
            "segment event conditions (OPSLOOP_SEGMENT_MAX_LOOKBACK_DAYS)",
            settings.OPSLOOP_SEGMENT_MAX_LOOKBACK_DAYS,
            None,
        ),
        ("RFM scoring (OPSLOOP_RFM_WINDOW_DAYS)", settings.OPSLOOP_RFM_WINDOW_DAYS, ORDER_NAMES),
        ("the predictions' order history (every order since the first)", None, ORDER_NAMES),
    ]


@checks.register(checks.Tags.database)
def check_events_retention(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    days = settings.OPSLOOP_EVENTS_RETENTION_DAYS
    if not days:
        return []
    kept = set(settings.OPSLOOP_EVENTS_KEPT_NAMES)
    problems: list[checks.CheckMessage] = []
    for reader, window, names in raw_event_readers():
        if names is not None and set(names) <= kept:
            continue  # retention never deletes what it reads
        if window is None or days < window:
            needs = "every event" if window is None else f"{window} days of events"
            problems.append(
                checks.Error(
                    f"OPSLOOP_EVENTS_RETENTION_DAYS={days} deletes raw events {reader} still reads ({needs}).",
                    hint=(
                        f"Keep {', '.join(names)} in OPSLOOP_EVENTS_KEPT_NAMES"
                        if names is not None
                        else f"Raise OPSLOOP_EVENTS_RETENTION_DAYS to {window} or lower that reader's window"
                    ),
                    id="tracking.E001",
                )
            )
    problems.append(
        checks.Warning(
            f"Promotion-abuse device signals (several accounts on one device) see only the last {days} days of "
            "events once retention runs.",
            hint="Accept it, or leave OPSLOOP_EVENTS_RETENTION_DAYS unset.",
            id="tracking.W001",
        )
    )
    return problems
