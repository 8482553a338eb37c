"""Two requests racing with the same event ids, on real connections: each event is stored once."""

from __future__ import annotations

import json
import threading
import time

import pytest
from django.db import connection

from tests.factories.tracking import payloads
from tracking import hooks
from tracking.models import Event


@pytest.fixture
def slow_first_listener():
    """Holds the first storing transaction open for a while, so the second request certainly
    arrives while the first one's rows are inserted but not yet committed."""
    calls = []
    lock = threading.Lock()

    def listener(events):
        with lock:
            calls.append(len(events))
            first = len(calls) == 1
        if first:
            time.sleep(0.5)

    hooks.register_ingest_listener("zz-test-slow", listener)
    yield calls
    hooks._listeners.pop("zz-test-slow", None)


@pytest.mark.django_db(transaction=True)
def test_two_racing_requests_with_the_same_ids_store_each_event_once(make_api_client, slow_first_listener):
    events = payloads(50)
    body = json.dumps({"events": events})
    clients = [make_api_client("events:write") for _ in range(2)]
    replies: list[dict] = []
    barrier = threading.Barrier(2)

    def send(client):
        try:
            barrier.wait()
            response = client.post("/api/v1/events", data=body, content_type="application/json")
            replies.append(response.json())
        finally:
            connection.close()

    threads = [threading.Thread(target=send, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert len(replies) == 2
    assert sorted(r["accepted"] for r in replies) == [0, 50]
    assert sorted(r["duplicates"] for r in replies) == [0, 50]
    assert Event.objects.count() == 50
    # Only the winner's events reached the listeners; the loser stored nothing to announce.
    assert slow_first_listener == [50]


@pytest.mark.django_db(transaction=True)
def test_racing_batches_sharing_ids_in_opposite_orders_neither_fail_nor_double_store(make_api_client):
    shared = payloads(300)
    bodies = [
        json.dumps({"events": shared + payloads(20)}),
        json.dumps({"events": list(reversed(shared)) + payloads(20)}),
    ]
    clients = [make_api_client("events:write") for _ in range(2)]
    replies: list[tuple[int, dict]] = []
    barrier = threading.Barrier(2)

    def send(client, body):
        try:
            barrier.wait()
            response = client.post("/api/v1/events", data=body, content_type="application/json")
            replies.append((response.status_code, response.json()))
        finally:
            connection.close()

    threads = [threading.Thread(target=send, args=pair) for pair in zip(clients, bodies, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sorted(status for status, _ in replies) == [200, 200]
    assert sum(body["accepted"] for _, body in replies) == 340
    assert sum(body["duplicates"] for _, body in replies) == 300
    assert Event.objects.count() == 340
