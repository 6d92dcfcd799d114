"""How long an uncleared caller's ``_count`` answers take for patients with and without a withheld resource.

    .venv/bin/python -m benchmarks.side_channel_bench [--patients 40] [--rounds 25] [--store sqlite|postgres]
                                                      [--no-consent]

The record API (the real app under uvicorn on a loopback port, the shipped disclosure policy) over a store
holding ``--patients`` patients of each of three kinds, with the same visible data (a Patient, three body
weights); the third kind also has a Part 2 opioid-use diagnosis and a substance-use (ETHUD) Observation that a
token without clearance may not see, and a Part 2 consent naming another clinic (not with ``--no-consent``);
the second is a control group like the first. The script asks
``Observation?patient=<id>&_count=<n>`` (n = 0, 1, 2, 50) and ``Condition?patient=<id>&_count=1`` for each
patient, alternating the kinds request by request so that all see the same machine, closed loop (one request at
a time: it measures answer time, not throughput), and prints the median / p90 / p99 answer time of each kind and
the differences of the medians: control - first is the noise of the run, withheld - first is what a caller
could time. AuditEvents go to an in-process sink (the
request path writes the same records either way - tests/consent/test_side_channel.py counts them - so Kafka
would add the same cost to both); every answer journals its denied-attempt facts (one SQLite row, WAL,
synchronous=NORMAL, in the temporary folder) and the writer thread writes them, as in the service.

It times each answer's journal write where the request makes it, then the journal write alone
(``--journal-writes`` rows of an answer's facts, one at a time, as the
request path does) with synchronous=NORMAL (the service's) and FULL (an fsync per row), and prints the cost
per answer.

Nothing here asserts; it reports. The structural guarantee (same statements, same writes) is the test's.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from devstack.local_postgres import LocalPostgres
from services.common.disclosure import DEFAULT_POLICY
from services.common.kafka import OutboundRecord
from services.common.metrics import Metrics
from services.common.settings import RecordTokenGrant, Settings
from services.record.access import TokenRegistry
from services.record.api import RecordApi, create_app
from services.record.denials import DeniedAttempts, Journal
from services.record.disclosures import DeniedAttempt, DisclosureGate, denied_attempt
from services.record.identity import IdentityPolicy
from services.record.ingest import InboundBundle, prepare_bundle
from services.record.store import open_store
from tests.consent.consents import LABEL_SETS, OTHER_ORG, consent
from tests.consent.test_record_enforcement import _consent_resource, _labelled
from tests.record.conftest import ServerThread
from tests.record.fhir_data import CLINIC, T0, Event, body_weight, iso, opioid_use_condition, patient, patient_id

TOKEN = "side-channel-bench-token"  # noqa: S105 - a local benchmark token
QUERIES = [("Observation", n) for n in (0, 1, 2, 50)] + [("Condition", 1)]


def _events(patients: int, with_consent: bool) -> tuple[list[Event], list[str], list[str], list[str]]:
    events: list[Event] = []
    plain: list[str] = []
    control: list[str] = []
    hiding: list[str] = []
    for kind, ids in (("p", plain), ("c", control), ("h", hiding)):
        for n in range(patients):
            mrn = f"scb-{kind}-{n:06d}"
            pid = patient_id(CLINIC, mrn)
            resources = [patient(CLINIC, mrn),
                         *(body_weight(CLINIC, pid, f"{mrn}-w{i}", iso(T0, i), 70.0 + i) for i in range(3))]
            if kind == "h":
                resources += [opioid_use_condition(CLINIC, pid, f"{mrn}-oud", iso(T0, 5)),
                              _labelled(body_weight(CLINIC, pid, f"{mrn}-audc", iso(T0, 6), 71.0), LABEL_SETS["ETHUD"])]
                if with_consent:
                    resources.append(_consent_resource(consent("c-other", f"Patient/{pid}", org=OTHER_ORG,
                                                               covered=("SUD", "42CFRPart2")), f"{mrn}-c"))
            events.append(Event(CLINIC, mrn, resources))
            ids.append(pid)
    return events, plain, control, hiding


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=40, help="patients of each kind (default 40)")
    parser.add_argument("--rounds", type=int, default=25, help="times every query is asked per patient")
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--no-consent", action="store_true", help="the withheld kind has no consent")
    parser.add_argument("--journal-writes", type=int, default=5000, help="journal rows timed alone")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        server: LocalPostgres | None = None
        if args.store == "postgres":
            server = LocalPostgres(durable=False).start()
            dsn = server.dsn()
        else:
            dsn = f"sqlite:///{Path(tmp) / 'record.db'}"
        store = open_store(dsn, IdentityPolicy())
        events, plain, control, hiding = _events(args.patients, not args.no_consent)
        records = [e.record("bench") for e in events]
        store.ingest([prepare_bundle(InboundBundle(r.topic, 0, i, 1_700_000_000_000 + i, r.key, r.value,
                                                   dict(r.headers))) for i, r in enumerate(records)])
        settings = Settings(topic_prefix="bench", disclosure_policy={}, record_tokens={
            hashlib.sha256(TOKEN.encode()).hexdigest(): RecordTokenGrant(
                scopes=["user/*.read"], organization="urn:oid:2.16.840.1.113883.4.6|1999999984", label="bench")})
        written: list[int] = []

        def sink(found: Sequence[OutboundRecord]) -> None:
            written.extend(len(r.value) for r in found)

        denials = DeniedAttempts(sink, settings.topic_prefix, Path(tmp) / "denied-attempts.db").start()
        journalled: list[float] = []  # each answer's journal write, timed where the request makes it
        submit = denials.submit

        def timed_submit(attempt: DeniedAttempt) -> None:
            started = time.perf_counter()
            submit(attempt)
            journalled.append(time.perf_counter() - started)

        denials.submit = timed_submit  # type: ignore[method-assign]
        api = RecordApi(settings, store, Metrics(), TokenRegistry(settings.record_tokens), lambda: (True, "ok"),
                        audit_sink=sink, denials=denials)
        api.gate = DisclosureGate(store, DEFAULT_POLICY, api.now_ms)
        http = ServerThread(create_app(api)).start()
        times: dict[str, list[float]] = {"without": [], "control": [], "with": []}
        try:
            with httpx.Client(base_url=http.base_url, headers={"Authorization": f"Bearer {TOKEN}"},
                              timeout=30) as client:
                def ask(pid: str, rtype: str, count: int) -> float:
                    started = time.perf_counter()
                    response = client.get(f"/{rtype}", params={"patient": pid, "_count": str(count)})
                    elapsed = time.perf_counter() - started
                    response.raise_for_status()
                    return elapsed

                for pid in plain[:3] + hiding[:3]:  # warm-up
                    for rtype, count in QUERIES:
                        ask(pid, rtype, count)
                for _ in range(args.rounds):
                    for a, c, b in zip(plain, control, hiding, strict=True):
                        for rtype, count in QUERIES:
                            times["without"].append(ask(a, rtype, count))
                            times["control"].append(ask(c, rtype, count))
                            times["with"].append(ask(b, rtype, count))
        finally:
            http.stop()
            denials.stop()
            store.close()
            if server is not None:
                server.stop()

    print(f"record API, {args.store}, {'no consents' if args.no_consent else 'a consent beside the withheld data'}, "
          f"uncleared token, {len(times['with'])} answers per kind "
          f"({args.patients} patients x {len(QUERIES)} _count queries x {args.rounds} rounds, alternating)")
    print(f"{'':40}{'median':>10}{'p90':>10}{'p99':>10}{'mean':>10}  (ms)")
    kinds = (("without a withheld resource", "without"), ("without one (control group)", "control"),
             ("with withheld resources", "with"))
    for label, key in kinds:
        values = [t * 1000 for t in times[key]]
        print(f"{label:40}{statistics.median(values):>10.2f}{_percentile(values, 0.9):>10.2f}"
              f"{_percentile(values, 0.99):>10.2f}{statistics.fmean(values):>10.2f}")
    base = statistics.median(times["without"])
    for label, key in (("control - without (the run's noise)", "control"), ("with - without", "with")):
        difference = statistics.median(times[key]) - base
        print(f"{label:40}{difference * 1000:>10.3f} ms ({difference / base * 100:+.1f}%)")
    print(f"denied-attempt AuditEvents written by the writer thread: {denials.written}; "
          f"all AuditEvent bytes written: {sum(written):,}")
    print(f"journal write on the request path (synchronous=NORMAL): "
          f"median {statistics.median(journalled) * 1e6:.0f} us, "
          f"p99 {_percentile(journalled, 0.99) * 1e6:.0f} us ({len(journalled)} answers)")
    for synchronous in ("NORMAL", "FULL"):
        per_row = _journal_write_s(args.journal_writes, synchronous)
        print(f"journal write alone, synchronous={synchronous}: median {statistics.median(per_row) * 1e6:.0f} us, "
              f"p99 {_percentile(per_row, 0.99) * 1e6:.0f} us ({len(per_row)} rows)")


def _journal_write_s(rows: int, synchronous: str) -> list[float]:
    """The time of each of ``rows`` journal appends of one answer's facts (a withheld search's)."""
    access = TokenRegistry({hashlib.sha256(TOKEN.encode()).hexdigest(): RecordTokenGrant(
        scopes=["user/*.read"], organization="urn:oid:2.16.840.1.113883.4.6|1999999984", label="bench")}
    ).authenticate(f"Bearer {TOKEN}")
    with tempfile.TemporaryDirectory() as tmp:
        journal = Journal(Path(tmp) / "denied-attempts.db")
        try:
            with journal._db.connection() as conn:  # every pooled connection is this one (one thread)
                conn.execute(f"PRAGMA synchronous={synchronous}")
            times = []
            for n in range(rows):
                started = time.perf_counter()
                attempt = denied_attempt(access, "search-type", "http://127.0.0.1:8082", 1_777_000_000_000 + n,
                                         [(f"Patient/{n:040x}", ())], f"patient=Patient/{n:040x}&_count=1")
                journal.append(attempt)
                times.append(time.perf_counter() - started)
        finally:
            journal.close()
    return times


if __name__ == "__main__":
    main()
