"""Factories for events: stored rows, and payloads in the API's shape."""

from __future__ import annotations

import uuid
from datetime import timedelta

import factory
from django.utils import timezone

from indicators import rollups
from tracking.models import Event, EventKind
from tracking.shipping import queue_for_shipping


class EventFactory(factory.django.DjangoModelFactory):
    """A stored event, queued for the indicator rollups as ingestion's `indicators` listener queues
    it, and for ClickHouse when it is on, as ingestion does."""

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
        queue_for_shipping([event.pk])
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
