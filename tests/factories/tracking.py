"""Factories for events: stored rows, and payloads in the API's shape."""

from __future__ import annotations

import uuid
from datetime import timedelta

import factory
from django.utils import timezone

from tracking.models import Event, EventKind


class EventFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Event

    event_id = factory.LazyFunction(uuid.uuid4)
    name = "app_open"
    kind = EventKind.BEHAVIOR
    timestamp = factory.LazyFunction(lambda: timezone.now() - timedelta(minutes=5))
    user_id = factory.Sequence(lambda n: f"user-{n}")
    anonymous_id = None
    properties = factory.LazyFunction(dict)


class EventPayloadFactory(factory.DictFactory):
    """One event as the product sends it to `POST /api/v1/events`."""

    event_id = factory.LazyFunction(lambda: str(uuid.uuid4()))
    name = "app_open"
    timestamp = factory.LazyFunction(lambda: (timezone.now() - timedelta(minutes=5)).isoformat())
    user_id = factory.Sequence(lambda n: f"user-{n}")
    properties = factory.LazyFunction(dict)


def payloads(count: int, **fields) -> list[dict]:
    return [EventPayloadFactory(**fields) for _ in range(count)]
