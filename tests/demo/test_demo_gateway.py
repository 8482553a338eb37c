"""The demo's stand-in push provider: keeps each message once per idempotency key, pages them
out for the simulated recipients, and refuses what is not a JSON object."""

import requests

from demo.gateway import PAGE, DemoGateway


def test_a_repeated_idempotency_key_is_answered_again_but_kept_once():
    with DemoGateway() as gateway:
        answers = [
            requests.post(f"{gateway.url}/push", json={"n": n}, headers={"Idempotency-Key": key}, timeout=5).json()
            for n, key in enumerate(["k1", "k2", "k1"])
        ]
        page = requests.get(f"{gateway.url}/messages", params={"since": 0}, timeout=5).json()
        rest = requests.get(f"{gateway.url}/messages", params={"since": page["next"]}, timeout=5).json()
    assert [a["message_id"] for a in answers] == [1, 2, 1]
    assert [m["payload"]["n"] for m in page["messages"]] == [0, 1] and page["next"] == 2
    assert rest == {"next": 2, "messages": []}


def test_messages_come_in_pages_and_bad_bodies_are_refused():
    with DemoGateway() as gateway:
        for n in range(PAGE + 3):
            gateway.accept(path="/push", key=f"k{n}", payload={"n": n})
        first = requests.get(f"{gateway.url}/messages", timeout=5).json()
        second = requests.get(f"{gateway.url}/messages", params={"since": first["next"]}, timeout=5).json()
        not_json = requests.post(f"{gateway.url}/push", data=b"nope", timeout=5)
        a_list = requests.post(f"{gateway.url}/push", json=[1, 2], timeout=5)
        bad_since = requests.get(f"{gateway.url}/messages", params={"since": "x"}, timeout=5)
        health = requests.get(f"{gateway.url}/health", timeout=5).json()
    assert len(first["messages"]) == PAGE and [m["payload"]["n"] for m in second["messages"]] == [
        PAGE,
        PAGE + 1,
        PAGE + 2,
    ]
    assert (not_json.status_code, a_list.status_code, bad_since.status_code) == (400, 400, 400)
    assert health == {"ok": True, "received": PAGE + 3}


def test_once_asked_the_gateway_posts_delivered_receipts_for_what_it_receives_like_a_provider():
    from tests.campaigns.receiver import Receiver

    with Receiver() as api, DemoGateway() as gateway:
        gateway.accept(path="/push", key="before", payload={"delivery_id": 1, "campaign": 5})
        bad = requests.post(f"{gateway.url}/_demo/receipts", json={"url": "nope"}, timeout=5)
        ok = requests.post(
            f"{gateway.url}/_demo/receipts",
            json={"url": f"{api.url}/api/v1/deliveries/receipts", "api_key": "k-1", "except_campaigns": [7]},
            timeout=5,
        )
        for n, campaign in ((2, 5), (3, 7), (4, 9)):
            gateway.accept(path="/push", key=f"m{n}", payload={"delivery_id": n, "campaign": campaign})
        posted = gateway.post_receipts()
        health = requests.get(f"{gateway.url}/health", timeout=5).json()
    assert (bad.status_code, ok.status_code, posted) == (400, 200, 2)
    (body,) = api.requests
    assert [(r["delivery_id"], r["status"]) for r in body["receipts"]] == [(2, "delivered"), (4, "delivered")]
    assert health["received"] == 4  # the configuration is not a message
