"""A stand-in push/SMS provider for the demo: a small HTTP server on 127.0.0.1 that accepts the
messages the workers post (the same JSON contract a real gateway gets), answers 200 like a
provider, and lets the demo's simulated recipients read what reached their phones.

    python -m demo.gateway --port 8099 [--log .run/demo-gateway.jsonl]

`POST <any path>`: one message; a repeated `Idempotency-Key` is answered again without being
kept twice, as providers do. `GET /messages?since=N`: the messages from the N-th on, with
`next` to continue from. `GET /health`: `{"ok": true, "received": N}`.

Standard library only, so it starts in a fraction of a second and needs no database.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

MAX_BODY = 1024 * 1024
PAGE = 5000


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
