"""A real local HTTP gateway for the delivery tests: records every request, can answer 503 a
number of times, or a fixed status, and can be slowed down."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    def __init__(self, *, fail_first: int = 0, status: int = 200, delay: float = 0.0, on_request=None) -> None:
        self.requests: list[dict] = []
        self.on_request = on_request  # called with each body before the answer goes back
        self.headers: list[dict] = []
        self.fail_first = fail_first
        self.status = status
        self.delay = delay
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.requests.append(json.loads(body))
                    receiver.headers.append(dict(self.headers))
                    failing = receiver.fail_first > 0
                    if failing:
                        receiver.fail_first -= 1
                if receiver.delay:
                    time.sleep(receiver.delay)
                if receiver.on_request is not None:
                    receiver.on_request(json.loads(body))
                code = 503 if failing else receiver.status
                payload = b'{"error": "busy"}' if failing else b'{"ok": true}'
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/send"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def keys_per_user(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for r in self.requests:
            out.setdefault(r["user_id"], set()).add(r["idempotency_key"])
        return out

    def count_by_user(self) -> Counter:
        return Counter(r["user_id"] for r in self.requests)
