"""Several intake worker processes on one port (``CAREBUS_INTAKE_WORKERS``), each with its own Kafka producer.

Python runs one thread of Python at a time, so one intake process uses about one core. With N workers:

- a **supervisor** (the process started as ``python -m services.intake``) prepares the topics once, starts N
  worker processes and stops them all on SIGTERM/SIGINT; if one dies, it stops the others and exits non-zero,
  so the pod (or the demo) restarts intake whole rather than running short-handed silently;
- every worker binds the HTTP port itself with ``SO_REUSEPORT``: the kernel spreads new connections over the
  workers, each worker answers its own connections with its own producer (202 only after acks=all, as before);
- HL7 v2 stays in **worker 0**: it alone runs the MLLP listener and the resend memory (a resend must meet the
  memory that saw the first copy, or a second inbound record would be written). The other workers hand a
  ``POST /hl7v2`` on to worker 0 over a Unix socket private to the supervisor's process tree and return its
  answer unchanged (:class:`Hl7ToWorkerZero`). HL7 over HTTP is rare next to events, so the extra local hop
  costs little, and the resend memory stays correct without a store of its own.

With ``CAREBUS_INTAKE_WORKERS=1`` (the default) there is no supervisor: the single process is worker 0.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("services.intake")

HL7_ROUTE = "/hl7v2"
_FORWARDED_HEADERS = ("content-type", "authorization", "content-length")


def reuse_port_socket(host: str, port: int, shared: bool) -> socket.socket:
    """The HTTP listening socket; ``shared``: other worker processes bind it too (the kernel balances
    connections). A single intake binds it alone, so a second one on the same port fails loudly."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if shared:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class Hl7ToWorkerZero:
    """ASGI middleware of workers 1..N-1: ``POST /hl7v2`` is answered by worker 0 (its resend memory)."""

    def __init__(self, app: ASGIApp, hl7_socket: Path, timeout_s: float) -> None:
        self.app = app
        self._client = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(hl7_socket)),
                                         base_url="http://worker-0", timeout=timeout_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != HL7_ROUTE:
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message: Message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]
                   if k.decode("latin-1").lower() in _FORWARDED_HEADERS}
        try:
            answer = await self._client.post(HL7_ROUTE, content=bytes(body), headers=headers)
        except httpx.HTTPError as exc:  # worker 0 is gone: the supervisor is restarting intake; sender retries
            log.warning("hl7v2 hand-over to worker 0 failed", extra={"error": type(exc).__name__})
            start: dict[str, Any] = {"type": "http.response.start", "status": 503,
                                     "headers": [(b"retry-after", b"1"), (b"content-length", b"0")]}
            await send(start)
            await send({"type": "http.response.body", "body": b""})
            return
        out_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers.items()
                       if k.lower() in ("content-type", "retry-after", "content-length")]
        await send({"type": "http.response.start", "status": answer.status_code, "headers": out_headers})
        await send({"type": "http.response.body", "body": answer.content})


def supervise(workers: int) -> int:
    """Start ``workers`` worker processes of this intake and wait; returns the exit code for the supervisor."""
    private = Path(tempfile.mkdtemp(prefix="carebus-intake-"))
    hl7_socket = private / "hl7v2.sock"
    command = [sys.executable, "-m", "services.intake", "--hl7-socket", str(hl7_socket), "--worker"]
    children = [subprocess.Popen([*command, str(index)]) for index in range(workers)]  # noqa: S603
    log.info("intake workers started", extra={"workers": workers})
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    exit_code = 0
    try:
        while not stopping:
            dead = [child for child in children if child.poll() is not None]
            if dead:
                exit_code = dead[0].returncode or 1
                log.error("an intake worker exited: stopping the others", extra={"exit_code": exit_code})
                break
            time.sleep(0.2)
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
        hl7_socket.unlink(missing_ok=True)
        private.rmdir()
    return exit_code
