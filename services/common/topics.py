"""The topic catalogue in code: every topic carebus creates, its key, headers and payload.

schemas/asyncapi.yaml documents the same topics for subscribers; tests/test_contracts.py keeps the two equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CleanupPolicy = Literal["delete", "compact"]

# Kafka record headers carebus sets (values are UTF-8 bytes). Safe to log: no PHI. Every record with ce_ headers
# is a CloudEvent of its own type (services/common/event_headers.py builds them; CE_HEADERS is the least set).
HEADER_SPEC_VERSION = "ce_specversion"
HEADER_EVENT_ID = "ce_id"
HEADER_EVENT_TYPE = "ce_type"
HEADER_EVENT_SOURCE = "ce_source"
HEADER_EVENT_TIME = "ce_time"
HEADER_INBOUND_EVENT_ID = "ce_carebuseventid"  # extension: the inbound event a bundle or alert came from
HEADER_INBOUND_EVENT_TYPE = "ce_carebuseventtype"  # extension: that inbound event's type
HEADER_CORRELATION_ID = "carebus_correlation_id"
HEADER_SECURITY = "carebus_security"  # JSON array of meta.security as FHIR tokens "system|code"; [] for none
HEADER_CONTENT_TYPE = "content-type"
HEADER_DEAD_LETTER_REASON = "carebus_dlq_reason"
HEADER_HL7V2_CONTROL_ID = "carebus_hl7v2_control_id"  # inbound HL7 v2: sending application ^ ... | MSH-10
CE_HEADERS = (HEADER_SPEC_VERSION, HEADER_EVENT_ID, HEADER_EVENT_SOURCE, HEADER_EVENT_TYPE, HEADER_EVENT_TIME)

SEVEN_DAYS_MS = 7 * 24 * 3600 * 1000
THIRTY_DAYS_MS = 30 * 24 * 3600 * 1000
# Largest record batch a topic accepts (Kafka's default is 1 MiB). FHIR Bundles are ~10x the size of the event
# they come from, so one Bundle may pass 1 MiB; and the mapper writes batches of up to 4 MiB
# (services/mapper/service.py PRODUCER_TUNING). Consumers need nothing special: a fetch always returns at least
# one whole batch, whatever its max.partition.fetch.bytes.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class TopicSpec:
    """One Kafka topic: ``suffix`` is appended to the configured prefix (``carebus.`` by default)."""

    suffix: str
    summary: str
    key: str
    content_type: str
    headers: tuple[str, ...]
    cleanup_policy: CleanupPolicy = "delete"
    retention_ms: int = SEVEN_DAYS_MS
    max_message_bytes: int = MAX_MESSAGE_BYTES

    def name(self, prefix: str) -> str:
        return f"{prefix}.{self.suffix}"


INBOUND_EVENTS = TopicSpec(
    suffix="events.inbound.v1",
    summary="Care events accepted by intake (CloudEvents 1.0, structured JSON), durable before the 202 or AA.",
    key="patient key: '<source>|<source patient id>', so one patient's events stay in order",
    content_type="application/cloudevents+json",
    headers=(*CE_HEADERS, HEADER_CORRELATION_ID, HEADER_CONTENT_TYPE, HEADER_HL7V2_CONTROL_ID),
    retention_ms=THIRTY_DAYS_MS,
)
FHIR_BUNDLES = TopicSpec(
    suffix="fhir.bundles.v1",
    summary="One FHIR R4 Bundle (type collection) per inbound event, validated and security-labelled.",
    key="patient key of the inbound event",
    content_type="application/fhir+json",
    headers=(*CE_HEADERS, HEADER_INBOUND_EVENT_ID, HEADER_INBOUND_EVENT_TYPE, HEADER_CORRELATION_ID, HEADER_SECURITY,
             HEADER_CONTENT_TYPE),
    retention_ms=THIRTY_DAYS_MS,
)
SAFETY_ALERTS = TopicSpec(
    suffix="alerts.safety.v1",
    summary="Safety alerts (PHQ-9 item 9 > 0, C-SSRS high risk, risk flags) raised within seconds.",
    key="patient key of the inbound event",
    content_type="application/json",
    headers=(*CE_HEADERS, HEADER_INBOUND_EVENT_ID, HEADER_INBOUND_EVENT_TYPE, HEADER_CORRELATION_ID, HEADER_SECURITY,
             HEADER_CONTENT_TYPE),
)
# What a safety alert's ``kind`` can be (the alert topic's contract, schemas/asyncapi.yaml): the mapper's alerts
# (services/mapper/instrument_resources.py ALERT_DETAILS) and the outcomes service's escalation of an unacknowledged one
# (services/outcomes/tasks.py escalation_event). tests/test_alert_contract.py keeps them equal to the code.
MapperAlertKind = Literal["phq9-item9", "cssrs-high-risk", "risk-flag"]
MAPPER_ALERT_KINDS: tuple[MapperAlertKind, ...] = ("phq9-item9", "cssrs-high-risk", "risk-flag")
ESCALATION_ALERT_KIND = "escalation"
DEAD_LETTERS = TopicSpec(
    suffix="deadletter.v1",
    summary="Records that could not be mapped or validated, with the reason, the original record and its offset.",
    key="key of the original record",
    content_type="application/json",
    headers=(*CE_HEADERS, HEADER_INBOUND_EVENT_ID, HEADER_INBOUND_EVENT_TYPE, HEADER_CORRELATION_ID,
             HEADER_DEAD_LETTER_REASON, HEADER_CONTENT_TYPE),
    retention_ms=THIRTY_DAYS_MS,
)

REPLAYED_DEAD_LETTERS = TopicSpec(
    suffix="deadletter.replayed.v1",
    summary="Ledger of dead letters already replayed (compacted): replay never sends the same one twice.",
    key="'<partition>:<offset>' of the dead letter on the dead-letter topic",
    content_type="application/json",
    headers=(*CE_HEADERS, HEADER_INBOUND_EVENT_ID, HEADER_CONTENT_TYPE),
    cleanup_policy="compact",
    retention_ms=-1,
)
AUDIT_EVENTS = TopicSpec(
    suffix="audit.v1",
    summary="One FHIR R4 AuditEvent (IHE BALP) per disclosure: API reads, searches, $everything, denied attempts, "
    "delivered notifications. References only, never content. Kept indefinitely (accounting of disclosures).",
    key="Patient id of the patient whose data was disclosed",
    content_type="application/fhir+json",
    headers=(*CE_HEADERS, HEADER_CONTENT_TYPE),
    retention_ms=-1,
)
GENERAL_BUNDLES = TopicSpec(
    suffix="fhir.bundles.general.v1",
    summary="The bundle topic without behavioural-health, substance-use / 42 CFR Part 2 or note content: for "
    "vendors without behavioural-health clearance. Same keys and order as fhir.bundles.v1.",
    key="patient key of the inbound event (as fhir.bundles.v1)",
    content_type="application/fhir+json",
    headers=(*CE_HEADERS, HEADER_INBOUND_EVENT_ID, HEADER_INBOUND_EVENT_TYPE, HEADER_CORRELATION_ID, HEADER_SECURITY,
             HEADER_CONTENT_TYPE),
    retention_ms=THIRTY_DAYS_MS,
)
# What an outcome change (the outcomes topic's record) can say: its ``kind``, the instruments episodes are kept for,
# and the episode's ``state`` after it (services/outcomes/episodes.py decides them).
OutcomeChangeKind = Literal[
    "episode-started",
    "response-reached",
    "partial-response-reached",
    "remission-reached",
    "deterioration",
    "follow-up-overdue",
]
TrackedInstrument = Literal["phq-9", "gad-7"]
EpisodeState = Literal["awaiting-follow-up", "no-response", "partial-response", "responding", "remitted"]
OUTCOMES = TopicSpec(
    suffix="outcomes.v1",
    summary="Outcome changes (episode started, response / remission reached, deterioration, follow-up overdue), "
            "recomputed deterministically from the record by the outcomes service.",
    key="'Patient/<id>': the patient of the episode's index score",
    content_type="application/json",
    headers=(*CE_HEADERS, HEADER_SECURITY, HEADER_CONTENT_TYPE),
    retention_ms=THIRTY_DAYS_MS,
)

# What a change-feed record's ``kind`` can be (the record writes it: services/record/changes.py; notify and outcomes
# read it).
ChangeKind = Literal["created", "updated", "deleted"]
CHANGE_KINDS: tuple[ChangeKind, ...] = ("created", "updated", "deleted")
RECORD_CHANGES = TopicSpec(
    suffix="record.changes.v1",
    summary="What the record committed: one record per new resource version (type, id, version, person, labels, "
    "change kind, the version as served), published after the store commit and before the bundle offsets are "
    "committed (at least once; consumers de-duplicate on type/id/version).",
    key="person id of the resource's patient at commit time (else '<type>/<id>'): one person's changes in order",
    content_type="application/json",
    headers=(HEADER_SECURITY, HEADER_CONTENT_TYPE),
    retention_ms=THIRTY_DAYS_MS,
)


CATALOGUE: tuple[TopicSpec, ...] = (
    INBOUND_EVENTS,
    FHIR_BUNDLES,
    SAFETY_ALERTS,
    DEAD_LETTERS,
    REPLAYED_DEAD_LETTERS,
    RECORD_CHANGES,
    OUTCOMES,
    AUDIT_EVENTS,
    GENERAL_BUNDLES,
)

# CloudEvent types on the inbound topic that are not JSON care events (services/common/events):
HL7V2_MESSAGE_EVENT_TYPE = "org.carebus.hl7v2.message.v1"  # data: the ER7 message text (str)
FHIR_RESOURCE_EVENT_TYPE = "org.carebus.fhir.resource.v1"  # data: a FHIR R4 resource or Bundle (JSON)
