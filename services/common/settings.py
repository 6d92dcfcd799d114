"""One typed settings object for every carebus service.

Read from the environment (prefix ``CAREBUS_``) once, at a service's entry point, and handed down.
Closed sets are Literals, secrets are SecretStr; nothing here reads the environment at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from zoneinfo import available_timezones

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.disclosure import ClassName, Clearance, Rule
from services.common.fhir.codesystems import EMPI

REPO_ROOT = Path(__file__).resolve().parents[2]

# the record's rule for linking Patients on demographics (services/record/identity.py applies it)
DemographicRule = Literal["none", "name-birthdate", "name-birthdate-gender"]


class RecordTokenGrant(BaseModel):
    """What one bearer token of the record API may do (``record_tokens`` maps sha256(token) hex to this).

    ``scopes``: SMART-style, e.g. ``system/*.read``, ``user/Observation.read``, ``patient/*.read``,
    ``system/Linkage.write`` (identity admin). ``patient``: the Patient id a ``patient/`` token is bound to.
    ``clearances``: which labelled data it may receive: ``behavioral-health`` (PSY/MH/BH), ``part2``
    (SUD/42CFRPart2), ``psychotherapy-notes`` (PSYTHPN). ``organization`` / ``care_teams`` / ``purpose_of_use``:
    the recipient the disclosure decision is made for (services/common/disclosure.py); ``organization`` is
    required unless the token is patient-bound (checked at start-up: services/record/access.py).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    scopes: list[str]
    patient: str | None = None
    clearances: list[Clearance] = Field(default_factory=list)
    label: str = Field("", description="Who holds the token (for the operator; never logged with PHI).")
    organization: str | None = Field(
        None, description="The organization the token acts for, the recipient consent reasons about: "
        "'Organization/<id>' or '<identifier system>|<value>'. Required unless the token is patient-bound.")
    care_teams: list[str] = Field(
        default_factory=list, description="Care teams it acts for ('CareTeam/<id>' or '<system>|<value>').")
    purpose_of_use: str | None = Field(
        None, pattern=r"^[A-Z]{3,12}$", description="v3-ActReason purpose of its requests; unset: TREAT "
        "(PATRQT for a patient/ token).")


class IntakeSenderGrant(BaseModel):
    """Who one intake bearer token is (``intake_tokens`` maps sha256(token) hex to this).

    ``sources``: the sending systems it may write for: CloudEvent ``source`` URIs, FHIR ``X-Carebus-Source``
    URIs and, for HL7 v2 over HTTP, ``urn:carebus:hl7v2:<sending facility>``; ``["*"]`` for any source (an
    interface engine that relays many systems).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    sources: list[str] = Field(min_length=1)
    label: str = Field("", description="Who holds the token (for the operator; never logged with PHI).")


class Settings(BaseSettings):
    """Configuration shared by all services; each service reads the fields it needs."""

    model_config = SettingsConfigDict(env_prefix="CAREBUS_", extra="ignore", frozen=True)

    # --- Kafka -------------------------------------------------------------------------------------------
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, comma separated.")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_request_timeout_s: float = Field(10.0, gt=0, description="How long a produce may wait for acks=all.")
    kafka_topic_partitions: int = Field(6, ge=1, description="Partitions for topics carebus creates.")
    kafka_topic_replication: int = Field(1, ge=1, description="Replication factor for topics carebus creates.")
    kafka_create_topics: bool = Field(True, description="Create missing topics at start (off on Strimzi).")

    # --- topics ------------------------------------------------------------------------------------------
    topic_prefix: str = Field("carebus", description="Prefix of every topic name.")

    # --- HTTP --------------------------------------------------------------------------------------------
    http_host: str = "127.0.0.1"
    intake_port: int = 8080
    mapper_port: int = 8081
    record_port: int = 8082
    max_batch_events: int = Field(500, ge=1, description="Largest batch one intake POST may carry.")
    max_body_bytes: int = Field(5_000_000, ge=1024, description="Largest intake request body.")
    intake_tokens: dict[str, IntakeSenderGrant] = Field(
        default_factory=dict, description="Intake bearer tokens: sha256(token) hex -> sources it may write for "
        "(JSON). None configured: intake refuses every write.")
    intake_allow_anonymous: bool = Field(
        False, description="Development only: accept writes without a token, for any source.")
    intake_token: SecretStr | None = Field(
        None, description="The token `carebus send-sample` sends to intake (a client setting).")
    intake_workers: int = Field(
        1, ge=1, le=64, description="Intake worker processes sharing the HTTP port (SO_REUSEPORT), each with its own "
                                    "producer; HL7 v2 stays in worker 0 (services/intake/workers.py).")
    intake_max_pending: int = Field(
        64, ge=1, description="Write requests one intake process lets wait for Kafka's acks; one more is answered "
                              "503 + Retry-After at once (services/intake/admission.py).")

    # --- MLLP (HL7 v2) listener ----------------------------------------------------------------------------
    mllp_host: str = Field("127.0.0.1", description="Address the MLLP listener binds.")
    mllp_port: int = Field(2575, ge=0, le=65535, description="MLLP port (2575 is HL7's registered port).")
    mllp_tls_certfile: Path | None = Field(None, description="Server certificate (PEM): set, MLLP uses TLS.")
    mllp_tls_keyfile: Path | None = Field(None, description="Private key of mllp_tls_certfile (PEM).")
    mllp_tls_client_cafile: Path | None = Field(
        None, description="CA bundle: when set, senders must present a certificate it signed (mutual TLS).")
    mllp_max_frame_bytes: int = Field(2_000_000, ge=1024, description="Largest MLLP frame (one message).")
    mllp_idle_timeout_s: float = Field(300.0, gt=0, description="Close a connection idle this long.")
    mllp_recent_control_ids: int = Field(
        10_000, ge=0, description="Per sender, how many accepted MSH-10 ids are kept to answer resends.")
    mllp_recall_per_partition: int = Field(
        2_000, ge=0, description="At start-up, the resend memory is filled from this many of the newest records "
                                 "of each inbound partition (0: start empty).")

    # --- mapper ------------------------------------------------------------------------------------------
    mapper_group_id: str = "carebus-mapper"
    part2_sources: list[str] = Field(
        default_factory=list,
        description="CloudEvent sources (or HL7 sending facilities) that are 42 CFR Part 2 programs.",
    )
    psychiatric_sources: list[str] = Field(
        default_factory=list,
        description="Sources (CloudEvent / X-Carebus-Source, or HL7 sending facilities) whose data is all "
        "psychiatric, e.g. a routine-outcome-monitoring system: every resource but the Patient labelled R+PSY.",
    )

    alerts_group_id: str = Field(
        "carebus-safety-alerts", description="Consumer group of whoever works the safety alerts (for lag)."
    )

    # --- record service ------------------------------------------------------------------------------
    record_group_id: str = "carebus-record"
    record_store_dsn: str | None = Field(
        None, description="'sqlite:///<path>' or 'postgresql://...'; unset: <cache_dir>/record/record.db.")
    record_enterprise_identifier_systems: list[str] = Field(
        default_factory=lambda: [EMPI],
        description="Identifier systems of enterprise/shared assigners: Patients sharing one are one person.")
    record_demographic_link_rule: DemographicRule = Field(
        "none", description="Operator rule linking on demographics; 'none': candidates are only reported.")
    record_tokens: dict[str, RecordTokenGrant] = Field(
        default_factory=dict, description="Record API bearer tokens: sha256(token) hex -> grant (JSON).")
    record_default_page_size: int = Field(50, ge=1)
    record_max_page_size: int = Field(1000, ge=1)
    record_base_url: str | None = Field(None, description="Public base URL of the record API (for links).")
    record_denials_journal: Path | None = Field(
        None, description="SQLite file where each answer's denied-attempt facts wait (durable, across a kill) for "
        "the writer to put their AuditEvents on the audit topic (services/record/denials.py); unset: "
        "denied-attempts.db beside the record's SQLite store, or <cache_dir>/record/<topic_prefix>-denied-attempts.db "
        "when the store is PostgreSQL. A local file of one process: on Kubernetes the pod's volume.")
    record_denials_interval_s: float = Field(
        0.5, gt=0, description="How often the writer puts the journal's denied attempts on the audit topic.")

    # --- disclosure (consent, Part 2, audit: services/common/disclosure.py) ----------------------------------
    disclosure_policy: dict[ClassName, Rule] = Field(
        default_factory=dict, description="Overrides of the baseline rule per label class (JSON object).")
    general_group_id: str = Field("carebus-general", description="Consumer group of the general-topic service.")
    general_port: int = Field(8085, description="HTTP port (health, metrics) of the general-topic service.")
    disclosure_treatment_purposes: list[str] = Field(
        default_factory=lambda: ["TREAT", "ETREAT", "HPAYMT", "HOPERAT", "CAREMGT", "PATRQT"],
        description="Purposes of use (v3-ActReason) that count as treatment, payment or operations.")
    # --- outcomes service (services/outcomes) ------------------------------------------------------------
    outcomes_group_id: str = Field("carebus-outcomes", description="Consumer group of the outcomes service.")
    outcomes_port: int = 8084
    outcomes_phq9_index_at_least: int = Field(10, ge=1, le=27, description="PHQ-9 index score (> 9).")
    outcomes_gad7_index_at_least: int = Field(8, ge=1, le=21, description="GAD-7 index score (8 or 10).")
    outcomes_gad7_response_percent: int = Field(25, ge=1, le=100, description="GAD-7 response (25 or 50 %).")
    outcomes_deterioration_points: int = Field(5, ge=1, description="Rise from the previous score.")
    outcomes_overdue_after_days: int = Field(
        30, ge=0, description="A follow-up score is overdue this long after its window opened.")
    outcomes_reporter: str = Field("carebus", description="MeasureReport.reporter (organization name).")
    outcomes_local_hospice_codes: list[str] = Field(
        default_factory=list,
        description="A site's own codes for hospice or palliative care, 'system|code' as the record stores them "
        "(e.g. an HL7 v2 sender's PV1-10 hospital service 'urn:carebus:hl7v2:RIVERSIDE/codes/v2-0069|HOS'): an "
        "Encounter's class, type, service type or discharge disposition, a Procedure's or ServiceRequest's code, "
        "a Condition's code coded so counts as hospice / palliative care in the depression measures' exclusions, "
        "beside the eCQM value sets (services/outcomes/exclusions.py). JSON list; default none.")
    outcomes_clock_offset_s: float = Field(
        0.0, description="Shifts the outcomes and safety-task clock (tests and drills; 0 in production).")
    outcomes_sweep_interval_s: float = Field(
        3600.0, gt=0, description="How often every person is recomputed (follow-ups becoming overdue).")
    outcomes_escalation_interval_s: float = Field(
        15.0, gt=0, description="How often open safety Tasks are checked against their due time.")
    safety_task_owners: dict[str, list[str]] = Field(
        default_factory=lambda: {"*": ["CareTeam/safety-on-call", "Organization/crisis-line"]},
        description="Source system -> escalation chain of owners (CareTeam/Organization/Practitioner "
                    "references) of safety Tasks; '*' for any other source (JSON).")
    safety_task_due_minutes: dict[str, int] = Field(
        default_factory=lambda: {"cssrs-high-risk": 15, "phq9-item9": 30, "risk-flag": 30},
        description="Alert kind -> minutes until its Task is due (and between escalations) (JSON).")
    # --- notify (subscriptions; services/notify/README.md) -----------------------------------------------
    notify_port: int = 8083
    notify_group_id: str = "carebus-notify"
    notify_store_dsn: str | None = Field(
        None, description="Subscriptions and their events, shared by notify and the record API's /Subscription: "
                          "'sqlite:///<path>' or 'postgresql://...'; unset: <cache_dir>/notify/notify.db.")
    notify_endpoint_allowlist: list[str] = Field(
        default_factory=list, description="URL prefixes a subscription endpoint must start with (JSON list); "
                                          "https only, unless an http:// prefix is listed explicitly.")
    notify_retry_window_s: float = Field(86_400.0, gt=0, description="How long a notification is retried.")
    notify_retry_initial_s: float = Field(1.0, gt=0, description="First retry delay (doubles, with jitter).")
    notify_retry_max_s: float = Field(600.0, gt=0, description="Longest delay between two retries.")
    notify_retry_time_scale: float = Field(
        1.0, gt=0, description="Retry-clock seconds per real second (tests drive 24 hours through it).")
    notify_request_timeout_s: float = Field(10.0, gt=0, description="Timeout of a delivery without its own.")
    notify_not_found_limit: int = Field(3, ge=1, description="Consecutive 404s that turn a subscription off.")
    notify_client_certfile: Path | None = Field(None, description="Client certificate (PEM) for mTLS endpoints.")
    notify_client_keyfile: Path | None = Field(None, description="Key of notify_client_certfile (PEM).")

    hl7_assigning_authorities: dict[str, str] = Field(
        default_factory=lambda: {"EMPI": EMPI},
        description="HL7 v2 assigning authority (CX-4 namespace id) -> FHIR Identifier.system, so a hospital's "
        "enterprise id links like the JSON events' (JSON object).",
    )

    hl7_sender_time_zones: dict[str, str] = Field(
        default_factory=dict,
        description="HL7 v2 sender (sending facility or urn:carebus:hl7v2:<facility>) -> IANA time zone of its "
        "times sent without an offset, e.g. {\"GHH\": \"America/Chicago\"} (JSON object). Before MSH-7's offset.")
    hl7_default_time_zone: str | None = Field(
        None, description="IANA time zone of HL7 v2 times without an offset from a sender with no zone configured "
        "and no offset in MSH-7. Unset: no zone is assumed (such times keep their date only, instants are left "
        "out, a booked appointment is refused).")

    @field_validator("outcomes_local_hospice_codes")
    @classmethod
    def _system_code_pairs(cls, value: list[str]) -> list[str]:
        malformed = [v for v in value if not all(part.strip() for part in v.partition("|")[::2])]
        if malformed:
            raise ValueError(f"not 'system|code' pairs: {malformed}")
        return [f"{system.strip()}|{code.strip()}" for system, _, code in (v.partition("|") for v in value)]

    @property
    def outcomes_local_hospice_codings(self) -> frozenset[tuple[str, str]]:
        """``outcomes_local_hospice_codes`` as (system, code) pairs."""
        pairs = (v.partition("|") for v in self.outcomes_local_hospice_codes)
        return frozenset((system, code) for system, _, code in pairs)

    @field_validator("hl7_sender_time_zones", "hl7_default_time_zone")
    @classmethod
    def _iana_zones(cls, value: dict[str, str] | str | None) -> dict[str, str] | str | None:
        names = [value] if isinstance(value, str) else list(value.values()) if isinstance(value, dict) else []
        unknown = sorted(set(names) - available_timezones()) if names else []
        if unknown:
            raise ValueError(f"not IANA time zones: {unknown}")
        return value

    known_sources: list[str] = Field(
        default_factory=list,
        description="Sending systems (CloudEvent sources, urn:carebus:hl7v2:<facility>, X-Carebus-Source) that get "
        "their own metrics series, for the 'no events from a source' alert (JSON list).",
    )

    # --- observability -----------------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # --- local development broker -------------------------------------------------------------------------
    cache_dir: Path = Field(REPO_ROOT / ".cache", description="Git-ignored folder for the local broker.")
    local_kafka_port: int = 9092
