"""Factories for events: stored rows, and payloads in the API's shape."""

from __future__ import annotations

import uuid
from datetime import timedelta

import factory
from django.utils import timezone

from tracking import rollups
from tracking.models import Event, EventKind


class EventFactory(factory.django.DjangoModelFactory):
    """A stored event, queued for the indicator rollups as ingestion queues it."""

    class Meta:
        model = Event

    event_id = factory.LazyFunction(uuid.uuid4)
    name = "app_open"
    kind = EventKind.BEHAVIOR
    timestamp = factory.LazyFunction(lambda: timezone.now() - timedelta(minutes=5))
    user_id = factory.Sequence(lambda n: f"user-{n}")
    anonymous_id = None
    properties = factory.LazyFunction(dict)

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        event = super()._create(model_class, *args, **kwargs)
        rollups.queue_stored_events([event.pk])
        return event


class EventPayloadFactory(factory.DictFactory):
    """One event as the product sends it to `POST /api/v1/events`."""

    event_id = factory.LazyFunction(lambda: str(uuid.uuid4()))
    name = "app_open"
    timestamp = factory.LazyFunction(lambda: (timezone.now() - timedelta(minutes=5)).isoformat())
    user_id = factory.Sequence(lambda n: f"user-{n}")
    properties = factory.LazyFunction(dict)


def payloads(count: int, **fields) -> list[dict]:
    return [EventPayloadFactory(**fields) for _ in range(count)]


# --- goals --------------------------------------------------------------------------------------


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

    from tracking import services

    defaults = {"name": "Goal", "period": "quarter", "year": 2025, "quarter": 1, "target": Decimal("90")}
    return services.create_goal(**{**defaults, **fields})
