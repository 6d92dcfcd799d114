# ruff: noqa: S608 -- SQL is assembled from fixed fragments and placeholders; every value is a bound parameter
"""The change outbox of the record store: the change-feed messages of an ingest, written in the ingest's own
transaction (services/record/changes.py says why), read and forgotten by the record's change publisher once Kafka has
acknowledged them. Sequence numbers order the rows and never go back: ``change_outbox_floor`` keeps the highest
number forgotten, so a publisher that remembers how far it has sent (services/record/change_publisher.py) is
never passed by a new row numbered below it when the outbox runs empty."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from services.record.changes import OutboxRow, change_message
from services.record.ingest import WritePlan

if TYPE_CHECKING:
    from services.common.sql import Connection, Database, Dialect


def schema(d: Dialect) -> list[str]:
    return [
        f"""CREATE TABLE IF NOT EXISTS change_outbox (
            seq {d.bigint} PRIMARY KEY, change_key {d.text} NOT NULL, security {d.text} NOT NULL,
            body {d.blob} NOT NULL)""",
        f"""CREATE TABLE IF NOT EXISTS change_outbox_floor (
            id {d.bigint} PRIMARY KEY, seq {d.bigint} NOT NULL)""",
    ]


def _patients_of(resource_type: str, patient_ref: str | None, body: bytes | None) -> list[str]:
    if patient_ref:
        return [patient_ref]
    if resource_type == "Linkage" and body is not None:  # an identity statement: the Patients it links
        linkage: dict[str, Any] = orjson.loads(body)
        refs = [
            item.get("resource", {}).get("reference")
            for item in linkage.get("item") or ()
            if isinstance(item, dict) and isinstance(item.get("resource"), dict)
        ]
        return sorted({r for r in refs if isinstance(r, str) and r.startswith("Patient/")})
    return []


def write(db: Database, conn: Connection, plan: WritePlan) -> None:
    """Add one change row per new version of ``plan`` (call after the identity state is updated, holding the
    dialect's ``ingest_lock``)."""
    if not plan.versions:
        return
    wanted = {
        ref for v in plan.versions for ref in _patients_of(v.resource_type, v.patient_ref, v.body)
    }
    person_of: dict[str, str] = {}
    members_of: dict[str, list[str]] = {}
    refs = sorted(wanted)
    for i in range(0, len(refs), 500):
        chunk = refs[i : i + 500]
        marks = ",".join("?" * len(chunk))
        for ref, person in db.all(
            conn,
            f"SELECT patient_ref, person_id FROM identity_member WHERE patient_ref IN ({marks})",
            chunk,
        ):
            person_of[ref] = person
    persons = sorted(set(person_of.values()))
    for i in range(0, len(persons), 500):
        chunk = persons[i : i + 500]
        marks = ",".join("?" * len(chunk))
        for ref, person in db.all(
            conn, f"SELECT patient_ref, person_id FROM identity_member WHERE person_id IN ({marks})", chunk
        ):
            members_of.setdefault(person, []).append(ref)
    top = db.all(
        conn,
        "SELECT COALESCE((SELECT MAX(seq) FROM change_outbox), "
        "(SELECT seq FROM change_outbox_floor WHERE id = 0))",
    )
    seq = int(top[0][0] or 0) if top else 0
    rows = []
    for version in plan.versions:
        patients = _patients_of(version.resource_type, version.patient_ref, version.body)
        person = person_of.get(patients[0]) if patients else None
        members: set[str] = set(patients)
        for ref in patients:
            members.update(members_of.get(person_of.get(ref, ""), ()))
        key, security, value = change_message(version, person, sorted(members))
        seq += 1
        rows.append((seq, key, security, value))
    db.insert(conn, "change_outbox", "seq, change_key, security, body", rows)


def pending(db: Database, limit: int, after_seq: int = 0) -> list[OutboxRow]:
    with db.connection() as conn:
        rows = db.all(
            conn,
            "SELECT seq, change_key, security, body FROM change_outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )
    return [OutboxRow(int(r[0]), r[1], r[2], bytes(r[3])) for r in rows]


def forget(db: Database, up_to_seq: int) -> None:
    with db.transaction() as conn:
        conn.execute(db.dialect.sql("DELETE FROM change_outbox WHERE seq <= ?"), (up_to_seq,))
        floor = db.all(conn, "SELECT seq FROM change_outbox_floor WHERE id = 0")
        if not floor:
            db.insert(conn, "change_outbox_floor", "id, seq", [(0, up_to_seq)])
        elif int(floor[0][0]) < up_to_seq:
            db.exec(conn, "UPDATE change_outbox_floor SET seq = ? WHERE id = 0", (up_to_seq,))
