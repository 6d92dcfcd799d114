"""The demo's subscriber: a therapy practice's EHR receiving carebus notifications on a local rest-hook.

It checks each request's signature (X-Carebus-Signature: sha256=<hex HMAC-SHA256 of the body>, keyed with the
secret the demo chose for its subscriptions), de-duplicates by (subscription, event number), notices gaps (and
would ask ``$events`` for them), and prints one line per notification: ids and codes only.

    python -m devstack.webhook_receiver --port 8090 --secret <secret>     (make demo starts it itself)
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson


def verify(secret: str, body: bytes, header: str | None) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return header is not None and hmac.compare_digest(expected, header)


@dataclass(frozen=True)
class Notification:
    """What a notification Bundle's SubscriptionStatus says (Subscriptions R5 Backport IG)."""

    subscription: str  # the Subscription's id
    type: str  # handshake, heartbeat, event-notification, ...
    topic: str  # the SubscriptionTopic canonical ("" if absent)
    events: list[tuple[int, str | None]]  # (event number, focus reference as sent, None for id-less payloads)


def parse_notification(bundle: dict[str, Any]) -> Notification:
    """Read the SubscriptionStatus of a notification Bundle. Raises KeyError, StopIteration, ValueError or
    TypeError for a Bundle that is not one."""
    params = bundle["entry"][0]["resource"]["parameter"]
    sid = next(p["valueReference"]["reference"] for p in params if p["name"] == "subscription").rsplit("/", 1)[1]
    kind = next(p["valueCode"] for p in params if p["name"] == "type")
    topic = next((p["valueCanonical"] for p in params if p["name"] == "topic"), "")
    events: list[tuple[int, str | None]] = []
    for p in params:
        if p["name"] == "notification-event":
            parts = {part["name"]: part for part in p["part"]}
            focus = parts["focus"]["valueReference"]["reference"] if "focus" in parts else None
            events.append((int(parts["event-number"]["valueString"]), focus))
    return Notification(sid, kind, topic, events)


def describe(bundle: dict[str, Any]) -> tuple[str, str, list[tuple[int, str]], str]:
    """(subscription id, notification type, [(event number, focus)], a short note on the first resource)."""
    found = parse_notification(bundle)
    sid, kind, topic = found.subscription, found.type, found.topic.rsplit("/", 1)[-1]
    events = [(number, "/".join((focus or "").split("/")[-2:])) for number, focus in found.events]
    note = ""
    for entry in bundle["entry"][1:]:
        resource = entry.get("resource") or {}
        if resource.get("resourceType") == "Observation" and "valueQuantity" in resource:
            code = next((c.get("code") for c in resource.get("code", {}).get("coding", [])), "?")
            note = f"LOINC {code} score {resource['valueQuantity'].get('value')}"
        elif resource.get("resourceType") == "Flag":
            note = "safety flag " + next((c.get("code", "?") for c in resource.get("code", {}).get("coding", [])),
                                         "?")
        elif resource.get("resourceType") == "Provenance":
            note = (note + " + 42 CFR 2.32 notice").strip()
    return sid, f"{kind} {topic}".strip(), events, note


class WebhookReceiver:
    """A ThreadingHTTPServer on 127.0.0.1 in a daemon thread; ``on_line`` prints."""

    def __init__(self, port: int, secret: str, on_line: Callable[[str], None] = print) -> None:
        self.secret = secret
        self.on_line = on_line
        self.seen: dict[str, set[int]] = {}
        self.bundles: dict[str, list[dict[str, Any]]] = {}  # per subscription, every verified notification
        self.notifications = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                status = receiver.receive(body, self.headers.get("x-carebus-signature"))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="webhook", daemon=True)

    def start(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def receive(self, body: bytes, signature: str | None) -> int:
        if not verify(self.secret, body, signature):
            self.on_line("webhook | refused a request with a bad signature")
            return 401
        try:
            bundle = orjson.loads(body)
            sid, kind, events, note = describe(bundle)
        except (orjson.JSONDecodeError, KeyError, StopIteration, ValueError, TypeError):
            self.on_line("webhook | refused a request that is not a notification Bundle")
            return 400
        with self._lock:
            self.bundles.setdefault(sid, []).append(bundle)
            seen = self.seen.setdefault(sid, set())
            fresh = [(n, f) for n, f in events if n not in seen]
            gap = [n for n, _ in fresh if n > 1 and n - 1 not in seen and n - 1 not in {m for m, _ in fresh}]
            seen.update(n for n, _ in events)
            self.notifications += 1 if fresh or not events else 0
        for number, focus in fresh:
            self.on_line(f"webhook | {kind:<40} event {number:>3}  {focus}  {note}")
        if not events:
            self.on_line(f"webhook | {kind} (subscription {sid[:8]}...)")
        if gap:
            self.on_line(f"webhook | gap before event {gap[0]}: would ask Subscription/{sid}/$events")
        return 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--secret", required=True, help="the signing secret of the subscriptions")
    args = parser.parse_args()
    receiver = WebhookReceiver(args.port, args.secret, lambda line: print(line, flush=True)).start()
    try:
        receiver.thread.join()
    except KeyboardInterrupt:
        receiver.stop()


if __name__ == "__main__":
    main()
