"""Factories for the indicators: events on given days, real indicator series and goals."""

from __future__ import annotations

from datetime import timedelta

from indicators import rollups
from tests.factories.tracking import EventFactory
from tracking.models import Event


def events_on(name: str, day, count: int, **fields) -> list[Event]:
    """`count` events named `name` at noon UTC of `day`, stored in one insert."""
    from datetime import UTC, datetime, time

    at = datetime.combine(day, time(12), tzinfo=UTC)
    events = Event.objects.bulk_create(EventFactory.build_batch(count, name=name, timestamp=at, **fields))
    rollups.queue_stored_events([e.pk for e in events])
    return events


def daily_event_count(name: str):
    """A real indicator series: events named `name` per UTC day, counted in the database."""
    from datetime import UTC, datetime, time
    from decimal import Decimal

    from django.db.models import Count
    from django.db.models.functions import TruncDate

    def daily(start, end):
        rows = (
            Event.objects.filter(
                name=name,
                timestamp__gte=datetime.combine(start, time.min, tzinfo=UTC),
                timestamp__lt=datetime.combine(end + timedelta(days=1), time.min, tzinfo=UTC),
            )
            .annotate(day=TruncDate("timestamp", tzinfo=UTC))
            .order_by()
            .values("day")
            .annotate(n=Count("id"))
        )
        return {row["day"]: Decimal(row["n"]) for row in rows}

    return daily


def goal(**fields):
    """A goal set through the service, as operators set it (months decomposed, audited)."""
    from decimal import Decimal

    from indicators import services

    defaults = {"name": "Goal", "period": "quarter", "year": 2025, "quarter": 1, "target": Decimal("90")}
    return services.create_goal(**{**defaults, **fields})
