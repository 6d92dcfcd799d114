"""HL7 v2 benchmark: carebus against the LinuxForHealth converter, and the MLLP listener's ACK latency.

    .venv/bin/python -m benchmarks.hl7v2_bench [--messages 1000] [--peer-warmup-passes 10] [--mllp-seconds 20]

One run prints:
1. carebus: parse + map + validate (fhir.resources R4B: validate_bundle, once, as the mapper pipeline does
   after map_hl7v2_message) + orjson serialize,
   messages/s on one core, for an ADT/ORU/SIU mix built from tests/samples/hl7v2; every message gets its own
   control id, patient ids, visit and order numbers, so nothing measured has been seen before.
   "Per core" is messages per CPU-second of the converting thread (what one dedicated core would do; robust
   on a shared machine); the wall-clock rate and the share of a core the thread had are printed beside it.
2. the same messages through the LinuxForHealth hl7v2-fhir-converter (benchmarks/hl7v2_peer: Java, built here
   with Maven into the git-ignored .cache/hl7bench), on one thread after a JIT warm-up on other messages of
   the same mix, and the ratio carebus/peer.
3. MLLP: ACK latency p50/p99 at a steady 200 messages/s over 4 connections against the real listener
   (the intake service, ``python -m services.intake``, as deployed), which writes each message to a real
   local Kafka broker (acks=all) before its AA.
Only loopback traffic; every loop is bounded in count and time. No assertion: it reports.
Starts its own local broker (or uses CAREBUS_KAFKA_BOOTSTRAP). Needs java and mvn for part 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson
from kafka.structs import TopicPartition

from devstack.local_broker import LocalKafkaBroker, free_port
from services.common.errors import MappingError
from services.common.kafka import build_consumer, ensure_topics
from services.common.log import configure_logging
from services.common.runtime import tune_gc
from services.common.settings import REPO_ROOT, Settings
from services.common.topics import CATALOGUE, INBOUND_EVENTS
from services.mapper.hl7v2 import map_hl7v2_message
from services.mapper.mapping import validate_bundle
from services.mapper.result import MappingContext

SAMPLES = REPO_ROOT / "tests" / "samples" / "hl7v2"
PEER_DIR = REPO_ROOT / "benchmarks" / "hl7v2_peer"
PEER_BUILD = REPO_ROOT / ".cache" / "hl7bench" / "target"

# The mix, per 20 messages: half ADT, 30 % ORU, 20 % SIU (sample file, weight).
MIX: tuple[tuple[str, int], ...] = (
    ("ADT-A01-01.hl7", 3), ("ADT-A03-01.hl7", 2), ("ADT-A04-01.hl7", 2), ("ADT-A08-01.hl7", 3),
    ("ORU-R01-01.hl7", 3), ("LAB-ORU-1.hl7", 3),
    ("SIU-S12-02.hl7", 4),
)

# Identifiers made unique per message: (segment, field number); the first component of every repetition.
VARIED_FIELDS: dict[str, tuple[int, ...]] = {
    "MSH": (10,),            # message control id
    "PID": (2, 3, 4, 18),    # patient ids, account number
    "MRG": (1,),
    "PV1": (19,),            # visit number
    "ORC": (2, 3),           # placer / filler order numbers
    "OBR": (2, 3),
    "SCH": (1, 2),           # placer / filler appointment ids
    "TXA": (12,),
}

TARGET_PER_CORE = 1500.0
TARGET_ACK_P99_MS = 30.0
JIT_QUIET = 0.02  # the peer's warm-up ends once the JIT compiled for less than this share of a pass


# ---------------------------------------------------------------------------------------------------------
# messages


@dataclass(frozen=True)
class Sample:
    name: str       # sample file
    kind: str       # MSH-9 as TYPE^EVENT
    er7: str        # segments separated by CR


def load_sample(name: str) -> Sample:
    text = (SAMPLES / name).read_text(encoding="utf-8")
    segments = [s for s in re.split(r"\r\n|\r|\n", text) if s.strip()]
    msh = segments[0]
    fields = msh.split(msh[3])
    kind = "^".join(fields[8].split(fields[1][0])[:2])
    return Sample(name, kind, "\r".join(segments) + "\r")


def vary(er7: str, tag: str) -> str:
    """The message with ``tag`` appended to each identifier of VARIED_FIELDS (so no id repeats)."""
    segments = er7.split("\r")
    separator = segments[0][3]
    encoding = segments[0].split(separator)[1]
    component, repetition = encoding[0], encoding[1]
    out = []
    for segment in segments:
        fields = segment.split(separator)
        for number in VARIED_FIELDS.get(fields[0], ()):
            index = number - 1 if fields[0] == "MSH" else number
            if index < len(fields) and fields[index]:
                reps = []
                for rep in fields[index].split(repetition):
                    parts = rep.split(component)
                    if parts[0]:
                        parts[0] += tag
                    reps.append(component.join(parts))
                fields[index] = repetition.join(reps)
        out.append(separator.join(fields))
    return "\r".join(out)


@dataclass(frozen=True)
class Workload:
    samples: tuple[Sample, ...]
    measured: tuple[str, ...]          # ER7 texts
    measured_sample: tuple[int, ...]   # for each measured message, its index in samples
    warmup: tuple[str, ...]            # other messages of the same mix


def build_workload(count: int, warmup_count: int, run_tag: str) -> Workload:
    samples = tuple(load_sample(name) for name, _ in MIX)
    weighted = [i for i, (_, weight) in enumerate(MIX) for _ in range(weight)]
    order = [weighted[(k * 7) % len(weighted)] for k in range(len(weighted))]  # interleaved, deterministic

    def stream(prefix: str, n: int) -> list[tuple[int, str]]:
        return [(order[k % len(order)], vary(samples[order[k % len(order)]].er7, f"{prefix}{k:06d}"))
                for k in range(n)]

    measured = stream(f"M{run_tag}", count)
    warmup = stream(f"W{run_tag}", warmup_count)
    return Workload(samples, tuple(m for _, m in measured), tuple(i for i, _ in measured),
                    tuple(m for _, m in warmup))


# ---------------------------------------------------------------------------------------------------------
# timings


@dataclass
class Timings:
    nanos: list[int]                   # per measured message: wall time, summed over the timed passes
    cpu_nanos: list[int]               # per measured message: CPU time of the converting thread
    failures: list[int]
    failure_kinds: list[str | None]
    passes: int = 1
    info: dict[str, Any] = field(default_factory=dict)

    def rate(self, indices: Sequence[int]) -> float:
        """Messages per wall-clock second."""
        total = sum(self.nanos[i] for i in indices)
        return len(indices) * self.passes / (total / 1e9) if total else 0.0

    def cpu_rate(self, indices: Sequence[int]) -> float:
        """Messages per CPU second of the converting thread (less sensitive to other work on the machine)."""
        total = sum(self.cpu_nanos[i] for i in indices)
        return len(indices) * self.passes / (total / 1e9) if total else 0.0

    def core_share(self) -> float:
        """How much of a core the converting thread had while it was timed."""
        return sum(self.cpu_nanos) / sum(self.nanos) if sum(self.nanos) else 0.0

    def failed(self) -> set[int]:
        return {i for i, f in enumerate(self.failures) if f}


@contextlib.contextmanager
def pinned(cpu: int | None) -> Iterator[None]:
    if cpu is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def validated(bundle: dict[str, Any]) -> dict[str, Any]:
    validate_bundle(bundle)  # the mapper pipeline's one validation of every bundle
    return bundle


def bench_carebus(workload: Workload) -> Timings:
    context = MappingContext(received_at=datetime(2026, 1, 5, 9, 0, tzinfo=UTC))
    for er7 in workload.warmup:  # imports, lazily built model validators: not timed
        with contextlib.suppress(MappingError):
            orjson.dumps(validated(map_hl7v2_message(er7, context).bundle))
    n = len(workload.measured)
    timings = Timings([0] * n, [0] * n, [0] * n, [None] * n)
    clock, cpu_clock = time.perf_counter_ns, time.thread_time_ns
    output_bytes = 0
    for i, er7 in enumerate(workload.measured):
        cpu0, t0 = cpu_clock(), clock()
        try:
            output_bytes += len(orjson.dumps(validated(map_hl7v2_message(er7, context).bundle)))
        except MappingError as exc:  # Hl7v2Error from the mapping, MappingError from validate_bundle
            timings.failures[i] = 1
            timings.failure_kinds[i] = exc.reason
        timings.nanos[i] = clock() - t0
        timings.cpu_nanos[i] = cpu_clock() - cpu0
    timings.info["output_bytes"] = output_bytes
    return timings


# ---------------------------------------------------------------------------------------------------------
# the peer (Java)


def java_executable() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise SystemExit("java is needed for the peer benchmark (apt-get install openjdk-17-jdk-headless)")
    return java


def peer_converter_version() -> str:
    pom = (PEER_DIR / "pom.xml").read_text(encoding="utf-8")
    match = re.search(r"<lfh\.converter\.version>([^<]+)<", pom)
    return match.group(1) if match else "?"


def build_peer() -> None:
    """Compile the harness and copy its dependencies into .cache/hl7bench (again only if pom/source changed)."""
    stamp = hashlib.sha256()
    for path in sorted([PEER_DIR / "pom.xml", *PEER_DIR.glob("src/**/*.java")]):
        stamp.update(path.read_bytes())
    marker = PEER_BUILD / ".built"
    if marker.exists() and marker.read_text() == stamp.hexdigest() and (PEER_BUILD / "classes").exists():
        return
    mvn = shutil.which("mvn")
    if mvn is None:
        raise SystemExit("Maven ('mvn') is needed to build the peer harness (apt-get install maven)")
    print(f"building the peer harness into {PEER_BUILD.relative_to(REPO_ROOT)} (Maven) ...", flush=True)
    if PEER_BUILD.exists():
        shutil.rmtree(PEER_BUILD)
    result = subprocess.run(  # noqa: S603 - fixed argument list
        [mvn, "-q", "-B", "-f", str(PEER_DIR / "pom.xml"), f"-DbuildDirectory={PEER_BUILD}",
         "package", "dependency:copy-dependencies"],
        capture_output=True, text=True, check=False, timeout=1800)
    if result.returncode != 0:
        raise SystemExit(f"the peer harness did not build:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    marker.write_text(stamp.hexdigest())


def bench_peer(workload: Workload, warmup_passes: tuple[int, int], cpu: int | None, validate: bool) -> Timings:
    build_peer()
    with tempfile.TemporaryDirectory(prefix="hl7bench-") as tmp:
        measured, warmup = Path(tmp) / "messages.json", Path(tmp) / "warmup.json"
        measured.write_bytes(orjson.dumps(list(workload.measured)))
        warmup.write_bytes(orjson.dumps(list(workload.warmup)))
        classpath = f"{PEER_BUILD / 'classes'}{os.pathsep}{PEER_BUILD / 'lib'}/*"
        command = [java_executable(), "-cp", classpath, "HL7Bench", str(measured), "--warmup", str(warmup),
                   "--min-warmup-passes", str(warmup_passes[0]), "--warmup-passes", str(warmup_passes[1]),
                   "--jit-quiet", str(JIT_QUIET), "--passes", "1"]
        if validate:
            command.append("--validate")
        with pinned(cpu):  # the JVM inherits the affinity: one core for its JIT and GC threads too
            result = subprocess.run(command, capture_output=True, text=True, check=False,  # noqa: S603
                                    timeout=3600)
    last = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not last:
        raise SystemExit(f"the peer harness failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    data = json.loads(last[-1][len("RESULT "):])
    progress = [line for line in result.stderr.splitlines() if line.startswith(("warm-up pass", "timed pass"))]
    info = {k: v for k, v in data.items() if k not in ("nanos", "cpu_nanos", "failures", "failure_kinds")}
    info["progress"] = progress
    return Timings(data["nanos"], data["cpu_nanos"], data["failures"], data["failure_kinds"],
                   int(data["passes"]), info)


# ---------------------------------------------------------------------------------------------------------
# MLLP

START_BLOCK, END_BLOCK, CARRIAGE_RETURN = b"\x0b", b"\x1c", b"\r"


@dataclass
class MllpRun:
    latencies_ms: list[float] = field(default_factory=list)  # scheduled send -> ACK (open loop, with queueing)
    service_ms: list[float] = field(default_factory=list)    # actual send -> ACK
    codes: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0
    listener_cpu_s: float = 0.0  # CPU time the listener process used during the run
    main_thread_cpu_s: float = 0.0  # of which its main thread (the asyncio loop: framing, acceptor, send())


def msa_code(ack: bytes) -> str:
    for segment in ack.strip(b"\x0b\x1c\r").decode("utf-8", "replace").split("\r"):
        if segment.startswith("MSA"):
            fields = segment.split(segment[3]) if len(segment) > 3 else []
            return fields[1] if len(fields) > 1 else "?"
    return "?"


async def _mllp_connection(port: int, schedule: list[tuple[float, bytes]], run: MllpRun,
                           ack_timeout_s: float) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for at, payload in schedule:
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent = time.perf_counter()
            writer.write(payload)
            await writer.drain()
            ack = await asyncio.wait_for(reader.readuntil(END_BLOCK + CARRIAGE_RETURN), timeout=ack_timeout_s)
            done = time.perf_counter()
            run.latencies_ms.append((done - at) * 1000)  # a late ACK also delays this connection's next message
            run.service_ms.append((done - sent) * 1000)
            run.codes[msa_code(ack)] += 1
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def paced_mllp(port: int, messages: Sequence[str], rate: float, connections: int) -> MllpRun:
    """Send ``messages`` at a steady ``rate`` in total, round-robin over ``connections`` connections, each
    waiting for its ACK before its next message (MLLP's standard mode)."""
    run = MllpRun()
    start = time.perf_counter() + 0.2
    schedules: list[list[tuple[float, bytes]]] = [[] for _ in range(connections)]
    for i, er7 in enumerate(messages):
        payload = START_BLOCK + er7.encode() + END_BLOCK + CARRIAGE_RETURN
        schedules[i % connections].append((start + i / rate, payload))
    budget = len(messages) / rate + 120.0  # bounded, even if the listener stalls
    await asyncio.wait_for(asyncio.gather(*(_mllp_connection(port, s, run, 10.0) for s in schedules)), budget)
    run.elapsed_s = time.perf_counter() - start
    return run


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the MLLP listener exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.2)
    raise RuntimeError(f"the MLLP listener did not listen on 127.0.0.1:{port} within {timeout_s:.0f}s")


def process_cpu_seconds(pid: int, task: int | None = None) -> float:
    """user + system CPU time of a process, or of one of its threads (``task``: its thread id; Linux /proc)."""
    path = Path(f"/proc/{pid}/stat") if task is None else Path(f"/proc/{pid}/task/{task}/stat")
    fields = path.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def records_on(settings: Settings, topic: str) -> int:
    consumer = build_consumer(settings, "hl7bench-count", f"{settings.topic_prefix}-count", [])
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        return int(sum(consumer.end_offsets([TopicPartition(topic, p) for p in partitions]).values()))
    finally:
        consumer.close()


def bench_mllp(settings: Settings, entry: str, messages: Sequence[str], warmup: Sequence[str], rate: float,
               connections: int) -> MllpRun:
    """Run the service (``python -m <entry>``) as deployed, logging as it does (JSON, INFO) to a temporary
    file, and drive its MLLP port."""
    port = free_port()
    env = {**os.environ, "CAREBUS_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
           "CAREBUS_TOPIC_PREFIX": settings.topic_prefix, "CAREBUS_LOG_LEVEL": "INFO",
           "CAREBUS_MLLP_HOST": "127.0.0.1", "CAREBUS_MLLP_PORT": str(port),
           "CAREBUS_HTTP_HOST": "127.0.0.1", "CAREBUS_INTAKE_PORT": str(free_port())}
    with tempfile.TemporaryFile() as logs:
        listener = subprocess.Popen([sys.executable, "-m", entry], env=env,  # noqa: S603
                                    stdout=logs, stderr=subprocess.STDOUT)
        try:
            try:
                wait_for_port(port, listener)
            except RuntimeError as exc:
                logs.seek(0)
                raise SystemExit(f"{exc}:\n{logs.read()[-3000:].decode(errors='replace')}") from None
            asyncio.run(paced_mllp(port, warmup, rate, connections))  # connections, producer metadata: not counted
            cpu0, main0 = process_cpu_seconds(listener.pid), process_cpu_seconds(listener.pid, listener.pid)
            run = asyncio.run(paced_mllp(port, messages, rate, connections))
            run.listener_cpu_s = process_cpu_seconds(listener.pid) - cpu0
            run.main_thread_cpu_s = process_cpu_seconds(listener.pid, listener.pid) - main0
            return run
        finally:
            listener.terminate()
            try:
                listener.wait(timeout=20)
            except subprocess.TimeoutExpired:
                listener.kill()
                listener.wait(timeout=10)


# ---------------------------------------------------------------------------------------------------------
# report


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


def git_revision() -> str:
    git = shutil.which("git")
    if git is None:
        return "?"
    try:
        head = subprocess.run([git, "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],  # noqa: S603
                              capture_output=True, text=True, check=False, timeout=10).stdout.strip()
        dirty = subprocess.run([git, "-C", str(REPO_ROOT), "status", "--porcelain"],  # noqa: S603
                               capture_output=True, text=True, check=False, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return f"{head}{' + uncommitted changes' if dirty else ''}" if head else "?"


def load_note() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} cores"


def command_line() -> str:
    python = Path(sys.executable)
    with contextlib.suppress(ValueError):
        python = python.relative_to(REPO_ROOT)
    return f"{python} -m benchmarks.hl7v2_bench {' '.join(sys.argv[1:])}".rstrip()


def show_carebus(workload: Workload, ours: Timings, pin_note: str) -> None:
    everything = range(len(workload.measured))
    per_core = ours.cpu_rate(everything)
    print(f"1. carebus parse+map+validate+serialize, one thread ({pin_note}); warm-up: "
          f"{len(workload.warmup)} other messages once; {len(ours.failed())} of {len(workload.measured)} failed")
    print(f"   per core: {per_core:8.0f} messages per CPU-second of the converting thread")
    print(f"   wall:     {ours.rate(everything):8.0f} messages/s (the thread had {ours.core_share():.0%} of a core "
          "meanwhile)")
    print(f"   target >= {TARGET_PER_CORE:,.0f} messages/s per core: {verdict(per_core >= TARGET_PER_CORE)}")
    if ours.failed():
        print(f"   failures: {dict(Counter(ours.failure_kinds[i] for i in ours.failed()))}")
    sys.stdout.flush()


def pass_summary(line: str) -> str:
    """'warm-up pass 2: 27 messages/s, JIT compiling 106% of the pass' -> 'warm-up 27 (JIT 106%)'."""
    rate = re.search(r": (\d+) messages/s", line)
    jit = re.search(r"JIT compiling (\d+)%", line)
    kind = "warm-up" if line.startswith("warm-up") else "timed"
    return f"{kind} {rate.group(1) if rate else '?'}" + (f" (JIT {jit.group(1)}%)" if jit else "")


def show_peer(workload: Workload, ours: Timings, peer: Timings, pin_note: str, label: str) -> None:
    everything = range(len(workload.measured))
    failed = peer.failed()
    both = [i for i in everything if i not in ours.failed() | failed]
    info = peer.info
    print(f"{label} peer: LinuxForHealth hl7v2-fhir-converter {peer_converter_version()}, Java {info['java']} "
          f"({info['vm']}, {info['processors']} processors, GC {info['gc']}); one converting thread, "
          f"{pin_note}; {'with' if info['validate'] else 'without'} its own resource validation (its default)")
    print(f"   JIT warm-up: {info['warmup_passes']} passes over {info['warmup_messages']} other messages of the "
          f"mix = {info['warmup_conversions']} warm-up conversions ({info['warmup_seconds']:.0f} s; at least "
          f"{info['warmup_passes_min']}, at most {info['warmup_passes_max']} passes, until the JIT compiles for "
          f"< {info['jit_quiet']:.0%} of a pass), then 1 timed pass")
    print(f"   converter construction {info['construct_seconds']:.1f} s, not counted; JIT compiling during the "
          f"timed pass: {info['jit_ms_during_timed']} ms")
    print("   messages/s per pass (wall; JIT = compiler threads' time / the pass's time): "
          + ", ".join(pass_summary(line) for line in info["progress"]))
    kinds = Counter(workload.samples[workload.measured_sample[i]].kind for i in failed)
    reasons = ", ".join(sorted({str(peer.failure_kinds[i]) for i in failed}))
    print(f"   {len(failed)} of {len(workload.measured)} failed"
          + (f": {', '.join(f'{k} {n}' for k, n in kinds.items())} ({reasons})" if failed else ""))
    print(f"   per core: {peer.cpu_rate(everything):8.0f} messages per CPU-second of the converting thread "
          "(its JIT and GC threads not counted)")
    print(f"   wall:     {peer.rate(everything):8.0f} messages/s (the thread had {peer.core_share():.0%} of a core "
          "meanwhile)")
    cpu_ratio = ours.cpu_rate(both) / peer.cpu_rate(both) if peer.cpu_rate(both) else float("nan")
    ratio = ours.rate(both) / peer.rate(both) if peer.rate(both) else float("nan")
    print(f"   on the {len(both)} messages both convert: per core carebus {ours.cpu_rate(both):.0f}, peer "
          f"{peer.cpu_rate(both):.0f} -> ratio carebus/peer {cpu_ratio:.2f}x  (wall: {ours.rate(both):.0f} vs "
          f"{peer.rate(both):.0f}/s, {ratio:.2f}x)")
    print(f"   target faster than the peer (per core): {verdict(cpu_ratio > 1)}")
    print(f"   {'per core, by sample':20s} {'n':>5s} {'carebus':>8s} {'peer':>8s} {'ratio':>7s}")
    for index, sample in enumerate(workload.samples):
        members = [i for i in everything if workload.measured_sample[i] == index]
        ok = [i for i in members if i in both]
        lost = len(set(members) & failed)
        note = f"  peer failed {lost}" if lost else ""
        if ok:
            a, b = ours.cpu_rate(ok), peer.cpu_rate(ok)
            print(f"   {sample.name:20s} {len(members):5d} {a:8.0f} {b:8.0f} {a / b:6.2f}x{note}")
        else:
            print(f"   {sample.name:20s} {len(members):5d} {ours.cpu_rate(members):8.0f} {'-':>8s} {'-':>7s}{note}")
    sys.stdout.flush()


def broker_version() -> str:
    jars = sorted((REPO_ROOT / ".cache" / "kafka" / "libs").glob("kafka_2.13-*.jar"))
    return jars[0].name.removeprefix("kafka_2.13-").removesuffix(".jar") if jars else "?"


def show_mllp(run: MllpRun, args: argparse.Namespace, warmup: int, stored: int, topic: str,
              broker_note: str) -> None:
    p50, p99 = percentile(run.latencies_ms, 0.50), percentile(run.latencies_ms, 0.99)
    sent = len(run.latencies_ms)
    print(f"3. MLLP (python -m {args.mllp_entry}, INFO logs) -> Kafka acks=all -> ACK; {args.mllp_connections} "
          f"connections, steady {args.mllp_rate:.0f} messages/s offered for {args.mllp_seconds:.0f} s "
          f"(+{warmup} warm-up messages, not counted)")
    print(f"   {sent} ACKs in {run.elapsed_s:.1f} s = {sent / run.elapsed_s:.0f}/s: "
          + ", ".join(f"{code} {n}" for code, n in sorted(run.codes.items()))
          + f"; {stored} records on {topic} (warm-up included; {broker_note})")
    print(f"   ACK latency from each message's scheduled send time: p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
          f"max {max(run.latencies_ms):.1f} ms")
    print(f"   target p99 < {TARGET_ACK_P99_MS:.0f} ms: {verdict(p99 < TARGET_ACK_P99_MS)}")
    print(f"   from the actual send (without waiting behind the connection's previous ACK): "
          f"p50 {percentile(run.service_ms, 0.50):.1f} ms, p99 {percentile(run.service_ms, 0.99):.1f} ms")
    per_message = run.listener_cpu_s / sent * 1000 if sent else float("nan")
    print(f"   service process CPU: {per_message:.2f} ms per message ({run.listener_cpu_s / run.elapsed_s:.0%} of a "
          f"core at this rate; at most ~{1000 / per_message:.0f} messages/s per core)")
    main = run.main_thread_cpu_s / sent * 1000 if sent else float("nan")
    print(f"   of which the main thread (asyncio loop: framing, acceptor, ACKs, kafka-python's send()) {main:.2f} ms, "
          f"other threads (kafka-python's sender thread, mostly) {per_message - main:.2f} ms")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1000, help="measured messages (each unique)")
    parser.add_argument("--warmup-messages", type=int, default=500,
                        help="other messages of the mix for warm-up (carebus: once; the peer: per pass)")
    parser.add_argument("--peer-warmup-passes", type=int, default=10,
                        help="at most this many JIT warm-up passes of the peer over the warm-up messages")
    parser.add_argument("--peer-min-warmup-passes", type=int, default=3,
                        help=f"at least this many; between the two, warm-up stops once the JIT compiles for "
                             f"less than {JIT_QUIET:.0%} of a pass")
    parser.add_argument("--peer-validate", action="store_true",
                        help="run the peer a second time with its own HAPI resource validation switched on")
    parser.add_argument("--pin-cpu", type=int, default=None,
                        help="pin carebus and the whole JVM (JIT and GC threads too) to this CPU; by default "
                             "nothing is pinned: each converts on one thread, the JVM's JIT/GC threads may "
                             "use another core (in the peer's favour), and a busy core is avoided")
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--skip-mllp", action="store_true")
    parser.add_argument("--mllp-rate", type=float, default=200.0, help="messages/s offered in total")
    parser.add_argument("--mllp-connections", type=int, default=4)
    parser.add_argument("--mllp-seconds", type=float, default=20.0)
    parser.add_argument("--mllp-entry", default="services.intake",
                        choices=["services.intake", "services.intake.mllp"],
                        help="the intake service (HTTP API + MLLP listener, as deployed) or the listener alone")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    # log as the services do (JSON, INFO), to /dev/null: the in-process mapping pays what a service would
    configure_logging("bench", "INFO", open(os.devnull, "w"))
    tune_gc()  # the mapper service does this at start-up (services/mapper/__main__.py)
    run_tag = uuid.uuid4().hex[:6].upper()
    cpu = args.pin_cpu
    pin_note = f"pinned to CPU {cpu}" if cpu is not None else "not pinned"
    print(f"carebus HL7 v2 benchmark  {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC  cores={os.cpu_count()}  "
          f"repo {git_revision()}")
    print(f"command: {command_line()}")
    print(f"python {sys.version.split()[0]}, fhir.resources {package_version('fhir.resources')}, pydantic "
          f"{package_version('pydantic')}, orjson {package_version('orjson')}, kafka-python "
          f"{package_version('kafka-python')}")
    print(f"machine: {load_note()} at start; a shared machine, other work may be running", flush=True)

    workload = build_workload(args.messages, args.warmup_messages, run_tag)
    mix = Counter(workload.samples[i].kind for i in workload.measured_sample)
    print(f"mix: {len(workload.measured)} measured messages, "
          + ", ".join(f"{kind} {count}" for kind, count in sorted(mix.items()))
          + f"; from tests/samples/hl7v2 ({', '.join(s.name for s in workload.samples)}), each with its own "
            "control, patient, visit and order ids")
    print()

    with pinned(cpu):
        ours = bench_carebus(workload)
    show_carebus(workload, ours, pin_note)

    if not args.skip_peer:
        print(f"   ({load_note()})")
        passes = (args.peer_min_warmup_passes, args.peer_warmup_passes)
        peer = bench_peer(workload, passes, cpu, validate=False)
        show_peer(workload, ours, peer, pin_note, "2.")
        if args.peer_validate:
            checked = bench_peer(workload, passes, cpu, validate=True)
            show_peer(workload, ours, checked, pin_note, "2b.")

    if not args.skip_mllp:
        print(f"   ({load_note()})", flush=True)
        broker = None
        bootstrap = os.environ.get("CAREBUS_KAFKA_BOOTSTRAP")
        if not bootstrap:
            workdir = Path(tempfile.mkdtemp(prefix="hl7bench-kafka-"))
            broker = LocalKafkaBroker(REPO_ROOT / ".cache", workdir=workdir, heap="1g").start()
            bootstrap = broker.bootstrap
        try:
            settings = Settings(kafka_bootstrap=bootstrap, topic_prefix=f"hl7bench{run_tag.lower()}",
                                kafka_topic_partitions=6)
            ensure_topics(settings, CATALOGUE)
            topic = INBOUND_EVENTS.name(settings.topic_prefix)
            stream = build_workload(int(args.mllp_rate * args.mllp_seconds), int(args.mllp_rate * 2),
                                    f"L{run_tag}")
            run = bench_mllp(settings, args.mllp_entry, stream.measured, stream.warmup, args.mllp_rate,
                             args.mllp_connections)
            broker_note = (f"one local Apache Kafka {broker_version()} broker" if broker is not None
                           else f"the broker at {bootstrap}")
            show_mllp(run, args, len(stream.warmup), records_on(settings, topic), topic, broker_note)
        finally:
            if broker is not None:
                broker.stop()
                shutil.rmtree(broker.workdir, ignore_errors=True)
    print()
    print(f"machine: {load_note()} at end")


if __name__ == "__main__":
    main()
