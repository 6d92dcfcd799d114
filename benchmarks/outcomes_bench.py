"""Benchmark of outcome evaluation and $evaluate-measure over a large record.

    .venv/bin/python benchmarks/outcomes_bench.py [--patients 10000] [--assessments 12] [--runs 5]

Builds a SQLite record store (in a temporary folder) with --patients patients, each with --assessments scores
(PHQ-9 and GAD-7 alternating, monthly from an elevated index), ingested through the record's own prepare +
store path. Then prints:
  * full recompute, pure: every person's scores read in one query, episodes + derived resources computed
    (services/outcomes/episodes.py + fhir.py): patients/s;
  * full recompute through the outcomes engine (per person: store person, search, evaluate, compare with the
    stored derived resources - what the service's sweep does) on a sample of --sample patients: patients/s;
  * ``GET Measure/{id}/$evaluate-measure`` over the whole population through the record API served by uvicorn
    on 127.0.0.1 (one request at a time, httpx), after the start-up warm-up the record service runs before it
    reports ready (services/outcomes/population.py Warmup; its time and the memory it holds are printed): the first
    request and the median and max of the --runs after it with the record unchanged (the kept per-person state: a
    change-marker query, the access check per person, the kept judgements; services/outcomes/population.py), then
    of --runs requests
    each made right after a write (a new patient: the store's index of current versions is read again, only the
    new bodies parsed, only changed persons judged again). Target < 2 s. Every 20th patient has a
    bipolar-disorder Condition, every 50th an Encounter discharged to hospice (denominator exclusions).
The 202 -> outcome-change latency is measured by ``benchmarks/notify_bench.py --outcomes``. Nothing here asserts.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import threading
import time
from datetime import date, timedelta
from pathlib import Path

import httpx
import orjson
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devstack.local_broker import free_port
from services.common.metrics import Metrics
from services.common.security_labels import PSYCHIATRIC, meta_security
from services.common.settings import RecordTokenGrant, Settings
from services.outcomes.engine import OutcomesEngine, rules_of
from services.outcomes.episodes import evaluate_person
from services.outcomes.fhir import DRR_E_STYLE, outcome_resources
from services.outcomes.history import score_of
from services.outcomes.population import Warmup
from services.record.access import TokenRegistry
from services.record.api import RecordApi, create_app
from services.record.ingest import InboundBundle, prepare_bundle
from services.record.store import identity_policy, open_store
from services.record.store.sqlite import SqliteStore

SOURCE = "urn:carebus:bench:outcomes"
TOKEN = "bench-token"  # noqa: S105 - a local benchmark token


def _bundle(n: int, assessments: int) -> bytes:
    pid = f"bench-{n:06d}"
    patient = {"resourceType": "Patient", "id": pid, "identifier": [{"system": SOURCE, "value": pid}]}
    entries = [{"fullUrl": f"urn:uuid:{pid}", "resource": patient}]
    index = date(2025, 1, 1) + timedelta(days=n % 180)
    if n % 20 == 0:
        entries.append({"fullUrl": f"urn:uuid:{pid}-bipolar", "resource": {
            "resourceType": "Condition", "id": f"{pid}-bipolar", "subject": {"reference": f"Patient/{pid}"},
            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "F31.9"}]},
            "onsetDateTime": index.isoformat()}})
    if n % 50 == 25:  # a hospice discharge (a denominator exclusion read from an Encounter)
        entries.append({"fullUrl": f"urn:uuid:{pid}-stay", "resource": {
            "resourceType": "Encounter", "id": f"{pid}-stay", "status": "finished",
            "subject": {"reference": f"Patient/{pid}"},
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
            "period": {"start": (index + timedelta(days=60)).isoformat(),
                       "end": (index + timedelta(days=70)).isoformat()},
            "hospitalization": {"dischargeDisposition": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/discharge-disposition", "code": "hosp"}]}}}})
    start = 12 + n % 15
    for k in range(assessments):
        phq = k % 2 == 0
        total = max(0, start - k * (1 + n % 3)) if phq else max(0, 14 - k)
        observation = {
            "resourceType": "Observation", "id": f"{pid}-{k}", "meta": {"security": meta_security(PSYCHIATRIC)},
            "status": "final", "code": {"coding": [{"system": "http://loinc.org",
                                                    "code": "44261-6" if phq else "70274-6"}]},
            "subject": {"reference": f"Patient/{pid}"},
            "effectiveDateTime": f"{(index + timedelta(days=30 * k)).isoformat()}T10:00:00Z",
            "valueQuantity": {"value": min(total, 27 if phq else 21), "unit": "{score}"}}
        entries.append({"fullUrl": f"urn:uuid:{pid}-{k}", "resource": observation})
    return orjson.dumps({"resourceType": "Bundle", "id": f"b-{pid}", "type": "collection", "entry": entries})


def _rss_mb() -> float:
    """This process's resident set (Linux /proc), in MB."""
    with open("/proc/self/status", encoding="ascii") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--assessments", type=int, default=12)
    parser.add_argument("--sample", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        token_digest = hashlib.sha256(TOKEN.encode()).hexdigest()
        settings = Settings(record_store_dsn=f"sqlite:///{tmp}/record.db", record_tokens={
            token_digest: RecordTokenGrant(scopes=["system/*.read"], clearances=["behavioral-health"],
                                           organization="Organization/benchmark", label="bench")})
        store = open_store(settings.record_store_dsn or "", identity_policy(settings))
        started = time.perf_counter()
        batch = []
        for n in range(args.patients):
            batch.append(prepare_bundle(InboundBundle("bench", 0, n, 1_700_000_000_000 + n, SOURCE, _bundle(
                n, args.assessments), {"ce_id": f"bench-{n}"})))
            if len(batch) == 500:
                store.ingest(batch)
                batch = []
        if batch:
            store.ingest(batch)
        if isinstance(store, SqliteStore):
            store.optimize()  # the planner's statistics after the bulk load (the ingest path refreshes them too)
        print(f"store: {args.patients:,} patients x {args.assessments} scores ingested in "
              f"{time.perf_counter() - started:.1f} s (SQLite, {tmp})", flush=True)

        rules, as_of = rules_of(settings), date(2026, 12, 1)
        started = time.perf_counter()
        histories: dict[str, list] = {}  # type: ignore[type-arg]
        for person, row in store.current_with_token("Observation", "code", ("44261-6", "70274-6")):
            score = score_of(orjson.loads(row.body or b"{}"))
            if score is not None:
                histories.setdefault(person, []).append(score)
        resources = 0
        for history in histories.values():
            resources += len(outcome_resources(evaluate_person(history, as_of, rules), "bench"))
        elapsed = time.perf_counter() - started
        print(f"full recompute (pure, one bulk read): {len(histories):,} patients in {elapsed:.2f} s = "
              f"{len(histories) / elapsed:,.0f} patients/s ({resources:,} derived resources)", flush=True)

        engine = OutcomesEngine(settings, store)
        sample = [f"Patient/bench-{n:06d}" for n in range(0, args.patients, max(1, args.patients // args.sample))]
        started = time.perf_counter()
        out = engine.recompute(sample)
        elapsed = time.perf_counter() - started
        print(f"full recompute (outcomes engine, per person from the store): {len(sample):,} patients in "
              f"{elapsed:.2f} s = {len(sample) / elapsed:,.0f} patients/s ({len(out.records):,} records to write)",
              flush=True)

        api = RecordApi(settings, store, Metrics(), TokenRegistry(settings.record_tokens),
                        readiness=lambda: (True, "ok"))
        warmup = Warmup(api.population)  # what the record service runs at start; readiness waits for it
        rss_before = _rss_mb()
        started = time.perf_counter()
        warmup.start()
        warmup.wait()
        print(f"start-up warm-up of the $evaluate-measure state: {time.perf_counter() - started:.2f} s, RSS "
              f"+{_rss_mb() - rss_before:.0f} MB (the record reports ready after it; load average "
              f"{os.getloadavg()[0]:.2f})", flush=True)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(api), host="127.0.0.1", port=port, log_config=None,
                                               access_log=False, lifespan="off"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:

            def evaluate() -> tuple[float, httpx.Response]:
                """One timed $evaluate-measure call over the benchmark's year."""
                started = time.perf_counter()
                response = client.get(f"/Measure/{DRR_E_STYLE.id}/$evaluate-measure",
                                      params={"periodStart": "2025-01-01", "periodEnd": "2025-12-31"},
                                      headers={"Authorization": f"Bearer {TOKEN}"})
                assert response.status_code == 200, response.text
                return time.perf_counter() - started, response

            timings = []
            for _ in range(args.runs + 1):
                elapsed, response = evaluate()
                timings.append(elapsed)
            counts = {p["id"]: p["count"] for p in response.json()["group"][0]["population"]}
            print(f"$evaluate-measure over {args.patients:,} patients ({counts}): first request after the start "
                  f"(warmed) {timings[0]:.2f} s; "
                  f"then median {statistics.median(timings[1:]):.2f} s, max {max(timings[1:]):.2f} s over "
                  f"{args.runs} requests, record unchanged (target < 2 s); load average {os.getloadavg()[0]:.2f}",
                  flush=True)
            changed = []
            for n in range(args.patients, args.patients + args.runs):  # a new patient's scores before each call
                store.ingest([prepare_bundle(InboundBundle("bench", 0, n, 1_700_000_000_000 + n, SOURCE, _bundle(
                    n, args.assessments), {"ce_id": f"bench-{n}"}))])
                changed.append(evaluate()[0])
            print(f"$evaluate-measure after each of {args.runs} writes (one new patient each): median "
                  f"{statistics.median(changed):.2f} s, max {max(changed):.2f} s; load average "
                  f"{os.getloadavg()[0]:.2f}", flush=True)
        server.should_exit = True
        thread.join(timeout=10)
        store.close()
        print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
