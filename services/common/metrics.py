"""Prometheus metrics of every carebus service, named per the Prometheus conventions.

One :class:`Metrics` per process, built by the service's composition root on its own registry. Label values
come from closed sets (event types, reasons, resource types, ACK codes, routes): never a patient id or any PHI.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
E2E_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


OTHER_SOURCE = "other"


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, known_sources: Iterable[str] = ()) -> None:
        self.registry = registry or CollectorRegistry()
        # Sending systems the operator listed (CAREBUS_KNOWN_SOURCES) get their own series, so "no events from a
        # source for N minutes" can alert; any other source is counted as "other" (label values stay bounded).
        self.known_sources = frozenset(known_sources)
        r = self.registry
        self.events_accepted = Counter(
            "carebus_events_accepted_total",
            "Inbound events durable in Kafka, by event type, channel and (listed) sending system.",
            ["event_type", "channel", "source"], registry=r)
        self.events_rejected = Counter(
            "carebus_events_rejected_total", "Inbound events refused, by reason and channel.",
            ["reason", "channel"], registry=r)
        self.request_seconds = Histogram(
            "carebus_http_request_duration_seconds", "HTTP request latency, by route and status.",
            ["route", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.resources_emitted = Counter(
            "carebus_resources_emitted_total", "FHIR resources written to the bundle topic, by resource type.",
            ["resource_type"], registry=r)
        self.bundles_emitted = Counter(
            "carebus_bundles_emitted_total", "FHIR bundles written, by inbound event type.",
            ["event_type"], registry=r)
        self.dead_letters = Counter(
            "carebus_dead_letters_total", "Records sent to the dead-letter topic, by reason and stage.",
            ["reason", "stage"], registry=r)
        self.processing_seconds = Histogram(
            "carebus_processing_duration_seconds", "Time to map, validate and serialize one event.",
            ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.end_to_end_seconds = Histogram(
            "carebus_end_to_end_latency_seconds", "Event time to FHIR bundle acknowledged on its topic.",
            buckets=E2E_BUCKETS, registry=r)
        self.consumer_lag = Gauge(
            "carebus_consumer_lag_records", "Records not yet consumed, per topic partition.",
            ["topic", "partition"], registry=r)
        self.produce_errors = Counter(
            "carebus_kafka_produce_errors_total", "Kafka writes that were not acknowledged, by topic.",
            ["topic"], registry=r)
        self.data_quality_issues = Counter(
            "carebus_data_quality_issues_total", "Data-quality findings surfaced while mapping, by kind.",
            ["kind"], registry=r)
        self.safety_alerts = Counter(
            "carebus_safety_alerts_total", "Safety alerts raised, by kind.", ["kind"], registry=r)
        self.mllp_connections = Gauge(
            "carebus_mllp_connections", "Open MLLP connections.", registry=r)
        self.mllp_acks = Counter(
            "carebus_mllp_acks_total", "HL7 v2 acknowledgements sent, by MSA-1 code.", ["code"], registry=r)
        self.hl7v2_repeated_control_ids = Counter(
            "carebus_hl7v2_repeated_control_ids_total",
            "HL7 v2 messages whose sender + MSH-3 + MSH-10 was accepted before: outcome=resend (same content: "
            "acknowledged, not written again) or conflict (other content: written as a new message).",
            ["outcome"], registry=r)
        self.record_requests = Counter(
            "carebus_record_api_requests_total", "Record API requests, by route and status.",
            ["route", "status"], registry=r)
        self.safety_alerts_unacknowledged = Gauge(
            "carebus_safety_alerts_unacknowledged",
            "Safety Tasks nobody has acknowledged yet, by whether they are past their due time.",
            ["due"], registry=r)
        self.safety_task_escalations = Counter(
            "carebus_safety_task_escalations_total", "Safety Tasks escalated to the next owner, by alert kind.",
            ["kind"], registry=r)
        self.outcome_changes = Counter(
            "carebus_outcome_changes_total", "Outcome changes published on the outcomes topic, by kind.",
            ["kind"], registry=r)
        # notify (services/notify/delivery.py); label values are subscription ids, never URLs
        self.notify_deliveries = Counter(
            "carebus_notify_deliveries_total",
            "Notification requests, by kind and outcome (delivered, retry, gone, not-found, dead-lettered).",
            ["kind", "outcome"], registry=r)
        self.notify_events = Counter(
            "carebus_notify_events_total", "Events numbered for subscriptions (after topic, filter and consent).",
            registry=r)
        self.notify_pending = Gauge(
            "carebus_notify_pending_events", "Events not yet delivered, per subscription.", ["subscription"],
            registry=r)
        self.notify_retry_backlog = Gauge(
            "carebus_notify_retry_backlog_events",
            "Events waiting behind a failing delivery (the subscription is retrying), per subscription.",
            ["subscription"], registry=r)
        self.notify_dead = Gauge(
            "carebus_notify_dead_letter_events", "Events dead-lettered after the retry window, per subscription.",
            ["subscription"], registry=r)
        self.notify_oldest_age = Gauge(
            "carebus_notify_oldest_undelivered_age_seconds",
            "Age of the oldest undelivered event, per subscription (0 when nothing waits).", ["subscription"],
            registry=r)
        self.notify_latency = Histogram(
            "carebus_notify_delivery_latency_seconds", "Event numbered to acknowledged by the endpoint.",
            buckets=E2E_BUCKETS, registry=r)
        self.notify_step = Histogram(
            "carebus_notify_step_seconds",
            "Time of each step of notify's work: number (a change-feed batch's transaction), claim (a "
            "subscription's next events read, screened and rendered), marks (the group commit of told / "
            "delivered marks), send (the HTTP request), audit (its AuditEvents acknowledged by Kafka).",
            ["step"], buckets=LATENCY_BUCKETS, registry=r)
        self.intake_shed = Counter(
            "carebus_intake_shed_total",
            "Write requests answered 503 at once because too many were waiting for Kafka's acks, by route.",
            ["route"], registry=r)
        self.intake_pending = Gauge(
            "carebus_intake_pending_requests", "Write requests of this intake process waiting for Kafka's acks.",
            registry=r)
        self.kafka_ready = Gauge(
            "carebus_kafka_ready", "1 when this service last reached Kafka, else 0.", registry=r)

    def accepted(self, event_type: str, channel: str, source: str, count: int = 1) -> None:
        """Count accepted events; ``source`` is labelled only when the operator listed it."""
        label = source if source in self.known_sources else OTHER_SOURCE
        self.events_accepted.labels(event_type=event_type, channel=channel, source=label).inc(count)
