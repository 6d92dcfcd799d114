"""One typed settings object for every carebus service.

Read from the environment (prefix ``CAREBUS_``) once, at a service's entry point, and handed down.
Closed sets are Literals, secrets are SecretStr; nothing here reads the environment at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[2]


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

    # --- mapper ------------------------------------------------------------------------------------------
    mapper_group_id: str = "carebus-mapper"
    part2_sources: list[str] = Field(
        default_factory=list,
        description="CloudEvent sources (or HL7 sending facilities) that are 42 CFR Part 2 programs.",
    )

    alerts_group_id: str = Field(
        "carebus-safety-alerts", description="Consumer group of whoever works the safety alerts (for lag)."
    )

    # --- observability -----------------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    service_name: str = "carebus"

    # --- local development broker -------------------------------------------------------------------------
    cache_dir: Path = Field(REPO_ROOT / ".cache", description="Git-ignored folder for the local broker.")
    local_kafka_port: int = 9092
