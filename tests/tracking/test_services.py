"""`ingest_events`: set-based writes, partial overlaps, and what it reports."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.factories.tracking import EventPayloadFactory, payloads
from tracking.models import Event
from tracking.services import ingest_events

pytestmark = pytest.mark.django_db


def queries_to_ingest(count: int) -> int:
    with CaptureQueriesContext(connection) as captured:
        result = ingest_events(events=payloads(count))
    assert result.accepted == count
    return len(captured)


def test_the_number_of_queries_does_not_grow_with_the_batch():
    assert queries_to_ingest(3) == queries_to_ingest(300)


def test_a_batch_overlapping_stored_events_stores_only_the_new_ones():
    first = payloads(3)
    ingest_events(events=first)
    second = [first[1], *payloads(2), first[2]]
    result = ingest_events(events=second)
    assert (result.accepted, result.duplicates) == (2, 2)
    assert [e.event_id for e in result.stored] == [second[1]["event_id"], second[2]["event_id"]]
    assert Event.objects.count() == 5


def test_stored_events_carry_the_database_ids_of_their_rows():
    result = ingest_events(events=payloads(5))
    by_event_id = dict(Event.objects.values_list("event_id", "id"))
    assert {uuid.UUID(e.event_id): e.id for e in result.stored} == by_event_id


def test_an_event_id_in_another_spelling_is_the_same_event():
    event = EventPayloadFactory()
    ingest_events(events=[event])
    braces_upper = {**event, "event_id": "{" + event["event_id"].upper() + "}"}
    result = ingest_events(events=[braces_upper])
    assert (result.accepted, result.duplicates) == (0, 1)


def test_properties_are_stored_exactly_as_sent():
    properties = {"query": "绿茶 \t tab\\slash\n", "n": [1, 2.5, None, True], "nested": {"a": {"b": "c"}}}
    event = EventPayloadFactory(properties=properties, context={"referrer": "https://x.example/\\path"})
    ingest_events(events=[event])
    stored = Event.objects.get()
    assert stored.properties == properties
    assert stored.referrer == "https://x.example/\\path"
