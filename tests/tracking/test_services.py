"""`ingest_events`: set-based writes, partial overlaps, and what it reports."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tests.factories.tracking import EventPayloadFactory, payloads
from tracking.models import Event
from tracking.services import _insert_skipping_conflicts, ingest_events, store_clean_events
from tracking.validation import validate_event

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


def consecutive(ids: list[int]) -> bool:
    ordered = sorted(ids)
    return ordered == list(range(ordered[0], ordered[0] + len(ordered)))


def test_a_batch_gets_consecutive_ids_and_the_next_batch_a_block_of_its_own():
    first = ingest_events(events=payloads(700)).stored
    second = ingest_events(events=payloads(300)).stored
    assert consecutive([e.id for e in first]) and consecutive([e.id for e in second])
    # The first batch's block holds 1000 ids: its 300 unused ones are not handed to the second.
    assert min(e.id for e in second) >= min(e.id for e in first) + 1000


def test_a_batch_larger_than_a_block_gets_one_run_per_block_and_every_event_an_id():
    now = timezone.now()
    clean = [validate_event(raw, now=now)[0] for raw in payloads(2500)]
    stored = store_clean_events(events=clean, received_at=now)
    ids = sorted(e.id for e in stored)
    assert len(set(ids)) == 2500 == Event.objects.count()
    runs = [ids[i : i + 1000] for i in range(0, 2500, 1000)]
    assert all(consecutive(run) for run in runs)
    assert {uuid.UUID(e.event_id): e.id for e in stored} == dict(Event.objects.values_list("event_id", "id"))


def test_a_retried_batch_with_new_events_stores_the_new_ones_with_consecutive_ids():
    first = payloads(200)
    ingest_events(events=first)
    result = ingest_events(events=first[:150] + payloads(60) + first[150:])
    assert (result.accepted, result.duplicates) == (60, 200)
    assert consecutive([e.id for e in result.stored])
    assert Event.objects.count() == 260


def test_the_insert_that_skips_conflicts_also_draws_a_block():
    now = timezone.now()
    stored = payloads(5)
    ingest_events(events=stored)
    batch = sorted((validate_event(raw, now=now)[0] for raw in stored[:2] + payloads(40)), key=lambda e: e.event_id)
    inserted = _insert_skipping_conflicts(batch, now)
    ids = [pk for pk, _ in inserted]
    assert len(set(ids)) == 40
    assert max(ids) - min(ids) < 42  # one block: the two skipped rows leave at most two gaps
    assert Event.objects.count() == 45


def test_an_event_saved_one_at_a_time_still_gets_a_fresh_id():
    batch = ingest_events(events=payloads(3)).stored
    single = Event.objects.create(name="app_open", timestamp=timezone.now(), user_id="one-off")
    after = ingest_events(events=payloads(3)).stored
    assert max(e.id for e in batch) < single.id < min(e.id for e in after)


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
