"""The 42 CFR Part 2 disclosure package (pure): the notice of 42 CFR 2.32 and the consent that permits the
disclosure, as one FHIR R4 Provenance that travels with every disclosure of Part 2 data.

Where receivers find it (documented in the README and the AsyncAPI):

* in a record API searchset / history / ``$everything`` Bundle: an entry holding a ``Provenance`` (search.mode
  ``include`` in a searchset) whose ``target`` lists every Part 2 resource of that Bundle;
* in a notification Bundle (notify): the same Provenance as an extra entry;
* on a direct read / vread of a Part 2 resource (no Bundle to carry it): the HTTP headers
  ``X-Carebus-Part2-Notice`` (Statement 2, the short form 2.32(a)(2) allows) and ``X-Carebus-Part2-Consent``
  (the permitting Consent references).

The Provenance (validator-clean, no custom extension):

=====================  ==========================================================================================
element                value
=====================  ==========================================================================================
id                     UUIDv5 of the disclosure (deterministic for a notification, so a retry carries the same)
meta.security          R, 42CFRPart2, NORDSCLCD: the labels are carried forward (DS4P)
text (additional)      the notice, Statement 1 of 42 CFR 2.32(a)(1) (2024 final rule), as XHTML
target                 the disclosed Part 2 resources, by reference
recorded               when the disclosure was made
policy                 the eCFR URL of 42 CFR 2.32, then the full URL of each Consent permitting the disclosure
reason                 the purpose of use (v3-ActReason)
activity               ISO 21089 ``disclose``
agent                  carebus as custodian (provenance-participant-type); the recipient organization, if known
entity                 each permitting Consent, role ``source`` (the authority the disclosure derives from)
=====================  ==========================================================================================
"""

from __future__ import annotations

import html
import uuid
from collections.abc import Sequence
from typing import Any, Final

from services.common import security_labels
from services.common.fhir.codesystems import (
    LIFECYCLE_EVENT,
    PROVENANCE_PARTICIPANT_TYPE,
    V3_ACT_REASON,
    V3_PARTICIPATION_TYPE,
)

PART2_REGULATION: Final = "https://www.ecfr.gov/current/title-42/chapter-I/subchapter-A/part-2/section-2.32"
NOTICE_NAMESPACE: Final = uuid.UUID("0f3f1c52-9a0e-4b8e-8d4f-6c2b7d6f2a10")

# 42 CFR 2.32(a)(1), Statement 1, as amended by the 2024 final rule (89 FR 12472; compliance 16 Feb 2026).
STATEMENT_1: Final = (
    "This record which has been disclosed to you is protected by Federal confidentiality rules (42 CFR part 2). "
    "These rules prohibit you from using or disclosing this record, or testimony that describes the information "
    "contained in this record, in any civil, criminal, administrative, or legislative proceedings by any Federal, "
    "State, or local authority, against the patient, unless authorized by the consent of the patient, except as "
    "provided at 42 CFR 2.12(c)(5) or as authorized by a court in accordance with 42 CFR 2.64 or 2.65. In "
    "addition, the Federal rules prohibit you from making any other use or disclosure of this record unless at "
    "least one of the following applies: (A) Further use or disclosure is expressly permitted by the written "
    "consent of the individual whose information is being disclosed in this record or as otherwise permitted by "
    "42 CFR part 2. (B) You are a covered entity or business associate and have received the record for "
    "treatment, payment, or health care operations, or (C) You have received the record from a covered entity or "
    "business associate as permitted by 45 CFR part 164, subparts A and E. A general authorization for the "
    "release of medical or other information is NOT sufficient to meet the required elements of written consent "
    "to further use or redisclose the record (see 42 CFR 2.31)."
)
# 42 CFR 2.32(a)(2), Statement 2 (the short form).
STATEMENT_2: Final = "42 CFR part 2 prohibits unauthorized use or disclosure of these records."

NOTICE_HEADER: Final = "X-Carebus-Part2-Notice"
CONSENT_HEADER: Final = "X-Carebus-Part2-Consent"
_LABELS: Final = ("R", "42CFRPart2", "NORDSCLCD")


def notice_id(*parts: str) -> str:
    return str(uuid.uuid5(NOTICE_NAMESPACE, "|".join(parts)))


def _who(name: str) -> dict[str, Any]:
    if "|" in name:
        system, _, value = name.partition("|")
        return {"identifier": {"system": system, "value": value}}
    return {"reference": name}


def disclosure_notice(
    provenance_id: str,
    recorded: str,
    targets: Sequence[str],
    consents: Sequence[str],
    base_url: str,
    purpose: str,
    recipient: str | None = None,
) -> dict[str, Any]:
    """The Provenance carrying the 42 CFR 2.32 notice for Part 2 resources ``targets`` (``Type/id``)."""
    div = (
        '<div xmlns="http://www.w3.org/1999/xhtml"><p><b>Notice (42 CFR 2.32)</b></p>'
        f"<p>{html.escape(STATEMENT_1)}</p>"
        + (
            "<p>Disclosed under: " + ", ".join(html.escape(c) for c in consents) + "</p>"
            if consents
            else ""
        )
        + "</div>"
    )
    agents: list[dict[str, Any]] = [
        {
            "type": {
                "coding": [
                    {
                        "system": PROVENANCE_PARTICIPANT_TYPE,
                        "code": "custodian",
                        "display": "Custodian",
                    }
                ]
            },
            "who": {"display": "carebus"},
        }
    ]
    if recipient:
        agents.append(
            {
                "type": {
                    "coding": [
                        {
                            "system": V3_PARTICIPATION_TYPE,
                            "code": "IRCP",
                            "display": "information recipient",
                        }
                    ]
                },
                "who": _who(recipient),
            }
        )
    return {
        "resourceType": "Provenance",
        "id": provenance_id,
        "meta": {"security": security_labels.meta_security(_LABELS)},
        "text": {"status": "additional", "div": div},
        "target": [{"reference": t} for t in targets],
        "recorded": recorded,
        "policy": [PART2_REGULATION, *(f"{base_url}/{c}" for c in consents)],
        "reason": [
            {"coding": [{"system": V3_ACT_REASON, "code": purpose}]}
        ],
        "activity": {
            "coding": [
                {
                    "system": LIFECYCLE_EVENT,
                    "code": "disclose",
                    "display": "Disclose Record Lifecycle Event",
                }
            ]
        },
        "agent": agents,
        "entity": [{"role": "source", "what": {"reference": c}} for c in consents],
    }


def notice_headers(consents: Sequence[str]) -> dict[str, str]:
    """The headers of a direct read of a Part 2 resource."""
    headers = {NOTICE_HEADER: STATEMENT_2}
    if consents:
        headers[CONSENT_HEADER] = ", ".join(consents)
    return headers
