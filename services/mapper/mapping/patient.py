"""patient.registered / patient.updated -> Patient (us-core-patient).

The enterprise identifier (e.g. system ``urn:carebus:empi``) is kept among Patient.identifier, so the same
person seen by several sources (different patient ids, different Patient resources) can be linked downstream;
the source's own patient id is always the first identifier (system ``<source>/patient``, use ``usual``).
Labels: none of its own (demographics are ordinary PHI); PART2 comes from a Part 2 source (see labels.py).
"""

from __future__ import annotations

from typing import Any

from services.common.events import PatientRegistered, PatientUpdated
from services.mapper.mapping._fhir import Draft, iso, profile


def map_patient(event: PatientRegistered | PatientUpdated, draft: Draft) -> None:
    data = event.data
    subject = draft.subject
    identifiers: list[dict[str, Any]] = [{"use": "usual", **subject.identifier("patient", data.patient_id)}]
    for ident in data.identifiers:
        item: dict[str, Any] = {"system": ident.system, "value": ident.value}
        if ident.assigner:
            item["assigner"] = {"display": ident.assigner}
        identifiers.append(item)
    name: dict[str, Any] = {"use": "official", "family": data.name.family}
    if data.name.given:
        name["given"] = list(data.name.given)
    if data.name.prefix:
        name["prefix"] = [data.name.prefix]
    if data.name.suffix:
        name["suffix"] = [data.name.suffix]
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "id": subject.patient_resource_id,
        "meta": {"profile": profile("us-core-patient")},
        "identifier": identifiers,
        "active": True,
        "name": [name],
        "gender": data.gender,
        "birthDate": iso(data.birth_date),
    }
    contact = data.contact
    if contact is not None:
        telecom = []
        if contact.phone:
            telecom.append({"system": "phone", "value": contact.phone, "use": "home"})
        if contact.email:
            telecom.append({"system": "email", "value": contact.email})
        if telecom:
            patient["telecom"] = telecom
        if contact.address is not None:
            address: dict[str, Any] = {"use": "home"}
            if contact.address.line:
                address["line"] = list(contact.address.line)
            for key, value in (
                ("city", contact.address.city),
                ("state", contact.address.state),
                ("postalCode", contact.address.postal_code),
                ("country", contact.address.country),
            ):
                if value:
                    address[key] = value
            patient["address"] = [address]
    draft.add(patient)
