"""A real local HTTP receiver for notifications (a subscriber's endpoint) whose behaviour a test switches:
``ok`` (200 with a body), ``empty`` (200, empty body), ``fail`` (500), ``slow`` (answers after ``slow_s``, past
the subscription's timeout), ``gone`` (410), ``missing`` (404); ``stop()`` / ``start()`` take it down and bring
it back on the same port (connection refused meanwhile). Every request's signature is checked."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

from devstack.local_broker import free_port
from devstack.webhook_receiver import parse_notification, verify


@dataclass
class Received:
    subscription: str
    kind: str
    numbers: list[int]
    foci: list[str]
    acknowledged: bool  # answered 2xx in time
    bundle: dict[str, Any]
    signature_ok: bool
    headers: dict[str, str] = field(default_factory=dict)


class Receiver:
    def __init__(self, secrets: dict[str, str] | None = None, slow_s: float = 3.0,
                 slow_within_timeout: bool = False) -> None:
        self.port = free_port()
        self.slow_within_timeout = slow_within_timeout  # slow, but the sender still waits for the answer
        self.mode = "ok"
        self.slow_s = slow_s
        self.secrets = secrets if secrets is not None else {}
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                mode = receiver.mode
                if mode == "slow":
                    time.sleep(receiver.slow_s)
                status = {"ok": 200, "empty": 200, "fail": 500, "slow": 200, "gone": 410, "missing": 404}[mode]
                acknowledged = 200 <= status < 300 and (mode != "slow" or receiver.slow_within_timeout)
                receiver._record(dict(self.headers.items()), body, acknowledged)
                payload = b"" if mode == "empty" else b'{"status":"ok"}'
                try:
                    self.send_response(status)
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the sender gave up (timeout)

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _record(self, headers: dict[str, str], body: bytes, acknowledged: bool) -> None:
        bundle = orjson.loads(body)
        found = parse_notification(bundle)
        numbers = [number for number, _ in found.events]
        foci = [focus for _, focus in found.events if focus is not None]
        lower = {k.lower(): v for k, v in headers.items()}
        secret = self.secrets.get(found.subscription)
        ok = bool(secret) and verify(secret or "", body, lower.get("x-carebus-signature"))
        sid, kind = found.subscription, found.type
        with self._lock:
            self.received.append(Received(sid, kind, numbers, foci, acknowledged, bundle, ok, lower))

    def of(self, sid: str, kind: str = "event-notification") -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.subscription == sid and r.kind == kind]

    def acknowledged_numbers(self, sid: str) -> list[int]:
        return [n for r in self.of(sid) if r.acknowledged for n in r.numbers]

    def wait_for(self, predicate: Any, timeout_s: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.1)
        return bool(predicate())
