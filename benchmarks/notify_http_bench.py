"""The HTTP leg of the notify benchmark alone: is the receiver, or the client, the bottleneck?

    .venv/bin/python -m benchmarks.notify_http_bench [--loops 100] [--requests 30]

Starts the notify benchmark's receiver (benchmarks/notify_bench.py: uvicorn, one process, a raw ASGI app) and
runs ``--loops`` concurrent request loops against it, each sending ``--requests`` notification-sized bodies one
after the other (as notify's per-subscription tasks do), three ways: a plain asyncio HTTP/1.1 keep-alive client
(the receiver's own capacity), one httpx ``AsyncClient`` shared by every loop (notify before issue 13's fix), and
one httpx client per loop (notify now). Prints requests/s, p50 / p99 round trip, and the CPU seconds the client
and the receiver used.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import httpx
import orjson

from benchmarks.notify_bench import cpu_seconds
from devstack.local_broker import free_port
from services.common.settings import REPO_ROOT


def notification_body(events: int = 20) -> bytes:
    """An id-only event notification of ``events`` events, as the receiver parses it."""
    parameters: list[dict[str, object]] = [{"name": "type", "valueCode": "event-notification"},
                  {"name": "topic", "valueCanonical": "https://carebus.dev/fhir/SubscriptionTopic/assessment-completed"}]
    parameters += [{"name": "notification-event", "part": [
        {"name": "event-number", "valueString": str(n)},
        {"name": "focus", "valueReference": {"reference": f"http://127.0.0.1/Observation/o{n}"}}]}
        for n in range(1, events + 1)]
    return orjson.dumps({"resourceType": "Bundle", "type": "history",
                         "entry": [{"resource": {"resourceType": "Parameters", "parameter": parameters}}]})


async def wait_listening(port: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.2)
    raise SystemExit("the receiver did not start")


Loop = Callable[[int], Awaitable[list[float]]]


def raw_loops(port: int, body: bytes, requests: int) -> Loop:
    request = (f"POST /hooks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/fhir+json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    async def loop(_: int) -> list[float]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        times = []
        for _ in range(requests):
            started = time.perf_counter()
            writer.write(request)
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")  # the receiver answers 200 with content-length 0
            times.append(time.perf_counter() - started)
        writer.close()
        return times

    return loop


def httpx_loops(port: int, body: bytes, requests: int, clients: list[httpx.AsyncClient]) -> Loop:
    async def loop(i: int) -> list[float]:
        client = clients[i % len(clients)]
        times = []
        for _ in range(requests):
            started = time.perf_counter()
            response = await client.post(f"http://127.0.0.1:{port}/hooks", content=body,
                                         headers={"Content-Type": "application/fhir+json"}, timeout=60)
            response.raise_for_status()
            times.append(time.perf_counter() - started)
        return times

    return loop


def client(max_connections: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(trust_env=False, limits=httpx.Limits(max_connections=max_connections,
                                                                   max_keepalive_connections=max_connections))


async def measure(name: str, loops: int, loop: Loop, receiver_pid: int,
                  clients: Sequence[httpx.AsyncClient] = ()) -> None:
    receiver_before, client_before, started = cpu_seconds(receiver_pid), time.process_time(), time.perf_counter()
    times = sorted(t for result in await asyncio.gather(*(loop(i) for i in range(loops))) for t in result)
    elapsed = time.perf_counter() - started
    p99 = times[max(int(len(times) * 0.99) - 1, 0)]
    print(f"{name:38s} {len(times) / elapsed:7.0f} requests/s, p50 {statistics.median(times) * 1000:7.1f} ms, "
          f"p99 {p99 * 1000:7.1f} ms; client CPU {(time.process_time() - client_before) / len(times) * 1000:.2f} "
          f"ms/request, receiver CPU {(cpu_seconds(receiver_pid) - receiver_before) / len(times) * 1000:.2f} "
          "ms/request", flush=True)
    for c in clients:
        await c.aclose()


async def run(port: int, receiver_pid: int, loops: int, requests: int) -> None:
    body = notification_body()
    await wait_listening(port)
    await measure(f"plain asyncio client, {loops} connections", loops, raw_loops(port, body, requests), receiver_pid)
    shared = [client(1000)]
    await measure(f"httpx, one client for {loops} loops", loops, httpx_loops(port, body, requests, shared),
                  receiver_pid, shared)
    own = [client(2) for _ in range(loops)]
    await measure(f"httpx, one client per loop ({loops})", loops, httpx_loops(port, body, requests, own),
                  receiver_pid, own)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loops", type=int, default=100, help="concurrent request loops (subscriptions)")
    parser.add_argument("--requests", type=int, default=30, help="requests per loop")
    args = parser.parse_args()
    one, five, _ = os.getloadavg()
    print(f"notify HTTP leg, {args.loops} loops x {args.requests} requests, load average {one:.1f} / {five:.1f}")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="notify-http-") as folder:
        receiver = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "benchmarks.notify_bench", "--receiver", str(port),
             str(Path(folder) / "arrivals.jsonl")], env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, cwd=REPO_ROOT)
        try:
            asyncio.run(run(port, receiver.pid, args.loops, args.requests))
        finally:
            receiver.terminate()
            receiver.wait(timeout=20)


if __name__ == "__main__":
    main()
