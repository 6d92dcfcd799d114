"""Identity administration as FHIR (pure): an operator's link / merge / unlink becomes a Linkage resource in a
collection Bundle on the bundle topic, so it is versioned, replayable and applied by the same consumer as
everything else. One Linkage per pair of Patients (deterministic id): link then unlink are two versions of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.common.fhir_ids import resource_id
from services.record.identity import LinkKind
from services.record.indexing import patient_id_of

ADMIN_SOURCE = "carebus-record-admin"
LINKAGE_EVENT_TYPE = "org.carebus.record.linkage.v1"


class LinkRequest(BaseModel):
    """Body of POST /admin/identity/link and /unlink: two Patients (``Patient/<id>`` or ids)."""

    model_config = ConfigDict(extra="forbid")

    patients: list[str] = Field(min_length=2, max_length=2)
    kind: Literal["link", "merge"] = "link"
    survivor: str | None = Field(None, description="For a merge: the Patient that stays (replaces the other).")


@dataclass(frozen=True)
class LinkCommand:
    patients: tuple[str, str]  # sorted "Patient/<id>"
    action: LinkKind
    survivor: str | None

    def linkage_id(self) -> str:
        return resource_id("Linkage", ADMIN_SOURCE, *self.patients)


def patient_ref(text: str) -> str:
    pid = patient_id_of(text) if "/" in text else text
    if not pid:
        raise ValueError("not a Patient reference")
    return f"Patient/{pid}"


def command_of(request: LinkRequest, unlink: bool) -> LinkCommand:
    """Raises ValueError for two equal Patients or a survivor that is not one of them."""
    a, b = sorted(patient_ref(p) for p in request.patients)
    if a == b:
        raise ValueError("the two Patients must differ")
    survivor = patient_ref(request.survivor) if request.survivor else None
    if unlink:
        return LinkCommand((a, b), "unlink", None)
    if request.kind == "merge":
        if survivor not in (a, b):
            raise ValueError("a merge names its survivor, one of the two Patients")
        return LinkCommand((a, b), "merge", survivor)
    return LinkCommand((a, b), "link", None)


def linkage_bundle(command: LinkCommand, event_id: str, now: datetime) -> dict[str, Any]:
    a, b = command.patients
    source = command.survivor or a
    other = b if source == a else a
    other_type = "historical" if command.action == "merge" else "alternate"
    linkage_id = command.linkage_id()
    linkage = {
        "resourceType": "Linkage",
        "id": linkage_id,
        "active": command.action != "unlink",
        "item": [
            {"type": "source", "resource": {"reference": source}},
            {"type": other_type, "resource": {"reference": other}},
        ],
    }
    return {
        "resourceType": "Bundle",
        "id": event_id,
        "type": "collection",
        "timestamp": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "entry": [{"fullUrl": f"urn:uuid:{linkage_id}", "resource": linkage}],
    }
