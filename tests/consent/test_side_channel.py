
"""No side channel for an uncleared caller (issue 14): an answer about a patient with a withheld resource costs
the same work as one about a patient without - the same SQL statements, the same writes on the request path
(AuditEvent records and their bytes), one denied-attempt submission each - and says the same (status, total,
paging links, texts). Structural, never timed. The denied attempts are still audited, by the writer thread
(services/record/denials.py)."""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from services.common.disclosure import Recipient, policy_from_settings
from services.common.errors import BrokerUnavailable
from services.common.kafka import OutboundRecord
from services.common.metrics import Metrics
from services.record.access import Access, TokenRegistry
from services.record.api import RecordApi, create_app
from services.record.denials import DeniedAttempts
from services.record.disclosures import DeniedAttempt, DisclosureGate, denied_attempt, denied_events
from services.record.store import SqlStore, identity_policy, open_store
from tests.consent.consents import LABEL_SETS, OTHER_ORG, consent
from tests.consent.test_record_enforcement import _consent_resource, _labelled
from tests.record.conftest import RecordHarness, ServerThread, bearer
from tests.record.fhir_data import (
    CLINIC,
    T0,
    Event,
    body_weight,
    iso,
    opioid_use_condition,
    patient,
    patient_id,
    unique,
)

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

UNCLEARED = ("partner", "therapy")  # no clearance at all; cleared for behavioural health but not Part 2
STORED_TYPES_SQL = "FROM resource_type_stored"  # the API's type cache refreshes on a timer, for every caller


@dataclass
class Work:
    """What the request path did: SQL statements, AuditEvent records written, denied-attempt journal rows."""

    statements: list[str] = field(default_factory=list)
    written: list[OutboundRecord] = field(default_factory=list)
    submitted: int = 0


class Instrumented:
    """A second RecordApi over the harness's store (its own connections, used by this test's requests only),
    counting what each request does."""

    def __init__(self, shipped: RecordHarness) -> None:
        settings = shipped.settings
        self.store: SqlStore = open_store(shipped.store.dsn, identity_policy(settings))
        self.work = Work()
        self.recording = False
        self.denied: list[OutboundRecord] = []
        self.folder = tempfile.TemporaryDirectory(prefix="side-channel-")
        self.denials = DeniedAttempts(self.denied.extend, settings.topic_prefix,
                                      Path(self.folder.name) / "denied-attempts.db")
        db = self.store.db
        for name in ("all", "exec", "many"):
            original = getattr(db, name)

            def counted(conn: Any, sql: str, params: Any = (), _original: Any = original) -> Any:
                if self.recording and STORED_TYPES_SQL not in sql:
                    self.work.statements.append(sql)
                return _original(conn, sql, params)

            setattr(db, name, counted)
        submit = self.denials.submit

        def counted_submit(attempt: DeniedAttempt) -> None:
            if self.recording:
                self.work.submitted += 1
            submit(attempt)

        self.denials.submit = counted_submit  # type: ignore[method-assign]
        self.api = RecordApi(settings, self.store, Metrics(), TokenRegistry(settings.record_tokens),
                             lambda: (True, "ok"), audit_sink=self._write, denials=self.denials)
        self.api.gate = DisclosureGate(self.store, policy_from_settings(
            settings.disclosure_policy, settings.disclosure_treatment_purposes), self.api.now_ms)
        self.http = ServerThread(create_app(self.api)).start()
        self.client = httpx.Client(base_url=self.http.base_url, timeout=30)

    def _write(self, records: Sequence[OutboundRecord]) -> None:
        if self.recording:
            self.work.written.extend(records)

    def get(self, path: str, token: str, params: dict[str, str] | None = None) -> tuple[Any, Work]:
        self.work = Work()
        self.recording = True
        try:
            response = self.client.get(path, params=params, headers=bearer(token))
        finally:
            self.recording = False
        return response, self.work

    def close(self) -> None:
        self.client.close()
        self.http.stop()
        self.denials.stop()
        self.store.close()
        self.folder.cleanup()


@pytest.fixture
def instrumented(shipped: RecordHarness) -> Iterator[Instrumented]:
    found = Instrumented(shipped)
    try:
        yield found
    finally:
        found.close()


def _seed(shipped: RecordHarness, withheld: bool) -> dict[str, Any]:
    """A patient with three body weights (visible to every treating recipient); with ``withheld``, also a
    Part 2 diagnosis and a substance-use (ETHUD) Observation that no uncleared caller may see, and the Part 2
    consent of someone else (its existence alone would say there is Part 2 data)."""
    mrn = unique("sc-")
    pid = patient_id(CLINIC, mrn)
    visible = [body_weight(CLINIC, pid, f"{mrn}-w{i}", iso(T0, i), 70.0 + i) for i in range(3)]
    hidden = [opioid_use_condition(CLINIC, pid, f"{mrn}-oud", iso(T0, 5)),
              _labelled(body_weight(CLINIC, pid, f"{mrn}-audc", iso(T0, 6), 71.0), LABEL_SETS["ETHUD"]),
              _consent_resource(consent("c-other", f"Patient/{pid}", org=OTHER_ORG, covered=("SUD", "42CFRPart2")),
                                f"{mrn}-c")]
    shipped.publish(Event(CLINIC, mrn, [patient(CLINIC, mrn), *visible, *(hidden if withheld else [])]))
    return {"pid": pid, "visible": [r["id"] for r in visible], "hidden": [r["id"] for r in hidden]}


def _said(response: Any, pid: str) -> dict[str, Any]:
    """What an answer tells the caller, with the patient's id taken out (the two patients differ only there)."""
    text = response.text.replace(pid, "PID")
    body = orjson.loads(text)
    entries = body.get("entry", [])
    return {
        "status": response.status_code,
        "total": body.get("total"),
        "links": [(link["relation"], link["url"]) for link in body.get("link", [])],
        "entries": [(e.get("search", {}).get("mode"), e["resource"]["resourceType"]) for e in entries],
        "texts": sorted(i.get("diagnostics") or i.get("details", {}).get("text", "")
                        for e in [*entries, {"resource": body}] if e["resource"]["resourceType"] == "OperationOutcome"
                        for i in e["resource"]["issue"]),
        "security": [c["code"] for c in body.get("meta", {}).get("security", [])],
        "bytes": len(text),
    }


def _shape(work: Work) -> dict[str, Any]:
    return {"statements": work.statements, "submitted": work.submitted,
            "written": [(r.topic, len(r.key or ""), len(r.value)) for r in work.written]}


QUERIES: list[tuple[str, dict[str, str]]] = [
    ("/Observation", {"_count": "1"}),
    ("/Observation", {"_count": "2"}),
    ("/Observation", {"_count": "2", "_offset": "2"}),
    ("/Observation", {"_count": "0"}),
    ("/Observation", {"_count": "50"}),
    ("/Condition", {"_count": "1"}),
    ("/Condition", {"_count": "0"}),
]


def test_count_answers_do_the_same_work_and_say_the_same_whether_or_not_a_withheld_resource_exists(
        shipped: RecordHarness, instrumented: Instrumented) -> None:
    plain, hiding = _seed(shipped, withheld=False), _seed(shipped, withheld=True)
    for token in UNCLEARED:
        for path, params in QUERIES:
            answers = []
            for seeded in (plain, hiding):
                response, work = instrumented.get(path, token, {"patient": seeded["pid"], **params})
                assert response.status_code == 200, response.text
                assert not any(h in response.text for h in seeded["hidden"])
                answers.append((_said(response, seeded["pid"]), _shape(work)))
            (said_plain, work_plain), (said_hiding, work_hiding) = answers
            assert said_hiding == said_plain, (token, path, params)
            assert work_hiding == work_plain, (token, path, params)
            assert work_plain["submitted"] == 1  # every answer hands the writer one piece of work
        for params in ({"_count": "2"}, {"_count": "0"}):
            answers = []
            for seeded in (plain, hiding):
                response, work = instrumented.get(f"/Patient/{seeded['pid']}/$everything", token, params)
                assert response.status_code == 200, response.text
                answers.append((_said(response, seeded["pid"]), _shape(work)))
            assert answers[1] == answers[0], (token, params)
    # the withheld matches were still audited: denied attempts (outcome 4) about the patient that has them, and
    # none about the other - written by the writer thread, not by the requests
    assert instrumented.denied == []
    instrumented.denials.start()
    assert instrumented.denials.wait_idle(30)
    denied = [orjson.loads(r.value) for r in instrumented.denied]
    about = {e["entity"][0]["what"]["reference"] for e in denied}
    assert about == {f"Patient/{hiding['pid']}"}
    assert {e["outcome"] for e in denied} == {"4"}
    # two tokens x (the five Observation and two Condition searches + two $everything), each withheld something
    assert len(denied) == len(UNCLEARED) * (len(QUERIES) + 2)


def test_a_withheld_resource_and_one_that_does_not_exist_answer_alike_with_the_same_work(
        shipped: RecordHarness, instrumented: Instrumented) -> None:
    hiding = _seed(shipped, withheld=True)
    nothing = _seed(shipped, withheld=False)
    withheld_id = hiding["hidden"][0]
    absent_id = "0" * len(withheld_id)
    for token in UNCLEARED:
        answers = []
        for path, rid in ((f"/Condition/{withheld_id}", withheld_id), (f"/Condition/{absent_id}", absent_id)):
            for suffix in ("", "/_history", "/_history/1"):
                response, work = instrumented.get(path + suffix, token)
                assert response.status_code == 404
                answers.append((suffix, response.text.replace(rid, "ID"), _shape(work)))
        assert answers[:3] == answers[3:], token
        # $everything of a patient the caller may see vs one that does not exist: nothing to compare but the 404
        response, _ = instrumented.get(f"/Patient/{'0' * len(nothing['pid'])}/$everything", token)
        assert response.status_code == 404


def _attempt(n: int, patients: int = 1) -> DeniedAttempt:
    return DeniedAttempt(f"a{n}", 1_777_000_000_000 + n, "c1", "vendor", "urn:oid:2.16.840.1.113883.4.6|1999999927",
                         "TREAT", "search-type", "http://record.test", "patient=Patient/p1&_count=1",
                         tuple((f"Patient/p{n}-{i}", ()) for i in range(patients)))


def _ids(attempts: Sequence[DeniedAttempt]) -> list[str]:
    return [e["id"] for a in attempts for e in denied_events(a)]


def test_a_denied_attempts_auditevents_are_built_from_its_facts_alone_the_same_every_time() -> None:
    attempt = _attempt(1, patients=2)
    again = DeniedAttempt.from_json(attempt.to_json())
    assert again == attempt
    assert denied_events(again) == denied_events(attempt)  # a re-sent row re-sends the same AuditEvents
    assert len(set(_ids([attempt, _attempt(2, patients=2)]))) == 4  # one id per attempt and patient
    assert {e["outcome"] for e in denied_events(attempt)} == {"4"}


def test_the_writer_waits_out_a_broker_outage_and_keeps_the_order(tmp_path: Path) -> None:
    written: list[bytes] = []
    failures = iter([True, True])
    lock = threading.Lock()

    def sink(records: Sequence[OutboundRecord]) -> None:
        with lock:
            if next(failures, False):
                raise BrokerUnavailable("no acks")
            written.extend(r.value for r in records)

    attempts = [_attempt(1), _attempt(2, patients=0), _attempt(3, patients=2)]  # the second withheld nothing
    writer = DeniedAttempts(sink, "t", tmp_path / "j.db", interval_s=0.05).start()
    try:
        for attempt in attempts:
            writer.submit(attempt)
        assert writer.wait_idle(30)
        assert [orjson.loads(v)["id"] for v in written] == _ids(attempts)
        assert writer.written == 3
        assert writer.journal.count() == 0  # written, then deleted (the empty row without a write)
    finally:
        writer.stop()


def test_stopping_writes_what_is_journalled_without_waiting_for_the_next_tick(tmp_path: Path) -> None:
    written: list[OutboundRecord] = []
    writer = DeniedAttempts(written.extend, "t", tmp_path / "j.db", interval_s=3600).start()
    writer.submit(_attempt(1))
    writer.stop(timeout_s=30)
    assert [orjson.loads(r.value)["id"] for r in written] == _ids([_attempt(1)])


def _away(records: Sequence[OutboundRecord]) -> None:
    raise BrokerUnavailable("no acks")


def test_rows_a_killed_process_left_in_the_journal_are_written_at_the_next_start(tmp_path: Path) -> None:
    journal = tmp_path / "j.db"
    killed = DeniedAttempts(_away, "t", journal, interval_s=3600)  # its writer never ran: as if killed
    for attempt in (_attempt(1), _attempt(2, patients=0), _attempt(3)):
        killed.submit(attempt)
    killed.stop()
    written: list[OutboundRecord] = []
    second = DeniedAttempts(written.extend, "t", journal, interval_s=3600)
    assert second.journal.count() == 3
    second.start()
    try:
        assert second.wait_idle(30)  # the first tick, at start-up
        assert [orjson.loads(r.value)["id"] for r in written] == _ids([_attempt(1), _attempt(3)])
    finally:
        second.stop()


def test_while_the_broker_is_away_only_the_denied_attempts_wait_in_the_journal(tmp_path: Path) -> None:
    writer = DeniedAttempts(_away, "t", tmp_path / "j.db", interval_s=0.05).start()
    try:
        writer.submit(_attempt(1))
        writer.submit(_attempt(2, patients=0))  # withheld nothing: deleted at the writer's next retry
        deadline = time.monotonic() + 30
        while writer.journal.count() != 1:
            assert time.monotonic() < deadline, "the empty row was not deleted"
            time.sleep(0.05)
        assert writer.written == 0
    finally:
        writer.stop()  # the broker still away: the denied attempt stays for the next start
    again = DeniedAttempts(_away, "t", tmp_path / "j.db")
    try:
        assert again.journal.count() == 1
    finally:
        again.stop()


def test_an_answer_that_withheld_nothing_journals_the_same_facts_but_what_was_withheld() -> None:
    access = Access(scopes=(), clearances=0, patient=None, label="vendor", client="c1",
                    recipient=Recipient("urn:oid:2.16.840.1.113883.4.6|1999999927"))
    nothing = denied_attempt(access, "search-type", "http://record.test", 1, [], "q")
    some = denied_attempt(access, "search-type", "http://record.test", 1, [("Patient/p1", ())], "q")
    assert denied_events(nothing) == []
    assert orjson.loads(nothing.to_json()).keys() == orjson.loads(some.to_json()).keys()
