"""A stand-in push/SMS provider for the demo: a small HTTP server on 127.0.0.1 that accepts the
messages the workers post (the same JSON contract a real gateway gets), answers 200 like a
provider, and lets the demo's simulated recipients read what reached their phones.

    python -m demo.gateway --port 8099 [--log .run/demo-gateway.jsonl]

`POST <any path>`: one message; a repeated `Idempotency-Key` is answered again without being
kept twice, as providers do. `GET /messages?since=N`: the messages from the N-th on, with
`next` to continue from. `GET /health`: `{"ok": true, "received": N}`.

`POST /_demo/receipts` with `{"url", "api_key", "except_campaigns": [ids]}` (the demo's loop
sends it once it is done): from then on the gateway answers like a real provider, posting a
`delivered` receipt to `url` for each message it receives, so campaigns operators create and
launch themselves get their receipts too (the loop's own campaign answers for itself).

Standard library only, so it starts in a fraction of a second and needs no database.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

MAX_BODY = 1024 * 1024
PAGE = 5000
RECEIPTS_PATH = "/_demo/receipts"
RECEIPT_BATCH = 500
RECEIPT_INTERVAL = 1.0


class _Server(ThreadingHTTPServer):
    # Workers post with several threads each; the default backlog of 5 refuses connections
    # under a burst, which the workers would (rightly) retry, slowing the demo down.
    request_queue_size = 128
    daemon_threads = True


class DemoGateway:
    """The server and what it received; usable in-process (tests) or as the demo's process."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, log_path: Path | None = None) -> None:
        self.messages: list[dict[str, Any]] = []
        self.by_key: dict[str, int] = {}
        self.lock = threading.Lock()
        self.log = log_path.open("a", encoding="utf-8") if log_path else None
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length <= 0 or length > MAX_BODY:
                    self._answer(400, {"error": "a JSON body of at most 1 MiB is expected"})
                    return
                try:
                    payload = json.loads(self.rfile.read(length))
                except ValueError:
                    self._answer(400, {"error": "the body is not JSON"})
                    return
                if not isinstance(payload, dict):
                    self._answer(400, {"error": "the body must be a JSON object"})
                    return
                if urlparse(self.path).path == RECEIPTS_PATH:
                    error = gateway.send_receipts_to(payload)
                    self._answer(400 if error else 200, {"error": error} if error else {"ok": True})
                    return
                key = self.headers.get("Idempotency-Key") or payload.get("idempotency_key") or ""
                self._answer(200, {"message_id": gateway.accept(path=self.path, key=str(key), payload=payload)})

            def do_GET(self) -> None:
                url = urlparse(self.path)
                if url.path == "/health":
                    self._answer(200, {"ok": True, "received": len(gateway.messages)})
                elif url.path == "/messages":
                    try:
                        since = max(0, int(parse_qs(url.query).get("since", ["0"])[0]))
                    except ValueError:
                        self._answer(400, {"error": "since must be an integer"})
                        return
                    with gateway.lock:
                        page = gateway.messages[since : since + PAGE]
                    self._answer(200, {"next": since + len(page), "messages": page})
                else:
                    self._answer(404, {"error": "unknown path"})

            def log_message(self, *args: Any) -> None:  # the JSONL log says what matters
                pass

        self.server = _Server((host, port), Handler)
        self.thread: threading.Thread | None = None
        # Receipts mode (off until the loop turns it on): where to post, and from which message on.
        self.receipts: dict[str, Any] | None = None
        self.receipt_cursor = 0
        self.receipts_posted = 0
        self.stopping = threading.Event()
        self.receipt_thread: threading.Thread | None = None

    def send_receipts_to(self, config: dict[str, Any]) -> str:
        """Turn on receipts for the messages received from now on; an error text if `config` is bad."""
        url, key = config.get("url"), config.get("api_key")
        if (
            not isinstance(url, str)
            or urlparse(url).scheme not in ("http", "https")
            or not isinstance(key, str)
            or not key
        ):
            return "url (http...) and api_key are required"
        skip = config.get("except_campaigns") or []
        if not isinstance(skip, list):
            return "except_campaigns must be a list of campaign ids"
        with self.lock:
            self.receipts = {"url": url, "api_key": key, "except": {str(c) for c in skip}}
            self.receipt_cursor = len(self.messages)
        if self.receipt_thread is None:
            self.receipt_thread = threading.Thread(target=self._post_receipts_forever, daemon=True)
            self.receipt_thread.start()
        return ""

    def post_receipts(self) -> int:
        """Post `delivered` receipts for the messages received since the last post; returns how many.
        A failed post is tried again with the next round (the cursor moves only on success)."""
        with self.lock:
            config, start = self.receipts, self.receipt_cursor
            batch = self.messages[start : start + RECEIPT_BATCH]
        if config is None or not batch:
            return 0
        receipts = [
            {
                "delivery_id": m["payload"]["delivery_id"],
                "status": "delivered",
                "at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(m["received_at"])),
            }
            for m in batch
            if isinstance(m["payload"].get("delivery_id"), int)
            and str(m["payload"].get("campaign")) not in config["except"]
        ]
        if receipts:
            # The URL was checked to be http(s) when receipts were turned on.
            request = urllib.request.Request(  # noqa: S310
                config["url"],
                data=json.dumps({"receipts": receipts}).encode(),
                headers={"Authorization": f"Api-Key {config['api_key']}", "Content-Type": "application/json"},
                method="POST",
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 (the loop's own API)
                    if answer.status != 200:
                        return 0
            except OSError:  # refused, timed out, or an HTTP error status
                return 0
        with self.lock:
            self.receipt_cursor = start + len(batch)
            self.receipts_posted += len(receipts)
        return len(receipts)

    def _post_receipts_forever(self) -> None:
        while not self.stopping.wait(RECEIPT_INTERVAL):
            while self.post_receipts():
                pass

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def accept(self, *, path: str, key: str, payload: dict[str, Any]) -> int:
        with self.lock:
            if key and key in self.by_key:
                return self.by_key[key]
            message_id = len(self.messages) + 1
            record = {"message_id": message_id, "received_at": time.time(), "path": path, "payload": payload}
            self.messages.append(record)
            if key:
                self.by_key[key] = message_id
            if self.log:
                self.log.write(json.dumps(record) + "\n")
                self.log.flush()
            return message_id

    def start(self) -> DemoGateway:
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        if self.log:
            self.log.close()

    def __enter__(self) -> DemoGateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--log", type=Path, default=None, help="append every message as a JSON line")
    args = parser.parse_args(argv)
    gateway = DemoGateway(host=args.host, port=args.port, log_path=args.log)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=gateway.server.shutdown).start())
    print(f"demo gateway listening on {gateway.url}", flush=True)
    try:
        gateway.server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        gateway.server.server_close()
        if gateway.log:
            gateway.log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
