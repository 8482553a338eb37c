"""The layers above hear about stored events only, inside the storing transaction."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection

from tests.factories.tracking import EventPayloadFactory, payloads
from tracking import hooks
from tracking.models import Event
from tracking.services import ingest_events

pytestmark = pytest.mark.django_db


@pytest.fixture
def heard():
    batches: list[list[hooks.StoredEvent]] = []

    def listener(events):
        batches.append(list(events))
        # Inside the transaction: the rows are visible to the listener's own queries.
        assert Event.objects.filter(id__in=[e.id for e in events]).count() == len(events)
        assert connection.in_atomic_block

    hooks.register_ingest_listener("zz-test-heard", listener)
    yield batches
    hooks._listeners.pop("zz-test-heard", None)


def test_listeners_receive_only_the_events_actually_stored(heard):
    old = EventPayloadFactory()
    ingest_events(events=[old])
    new = payloads(2, user_id="u-1")
    ingest_events(events=[old, new[0], {"name": "broken"}, new[1], new[0]])
    assert [e.event_id for e in heard[1]] == [new[0]["event_id"], new[1]["event_id"]]
    stored = heard[1][0]
    assert stored.id == Event.objects.get(event_id=uuid.UUID(new[0]["event_id"])).id
    assert (stored.user_id, stored.name, stored.properties) == ("u-1", new[0]["name"], new[0]["properties"])


def test_listeners_are_not_called_when_nothing_was_stored(heard):
    event = EventPayloadFactory()
    ingest_events(events=[event])
    ingest_events(events=[event, {"name": "broken"}])
    assert len(heard) == 1


def test_a_failing_listener_rolls_back_the_batch():
    def boom(events):
        raise RuntimeError("listener down")

    hooks.register_ingest_listener("zz-test-boom", boom)
    try:
        with pytest.raises(RuntimeError):
            ingest_events(events=payloads(2))
    finally:
        hooks._listeners.pop("zz-test-boom", None)
    assert not Event.objects.exists()
