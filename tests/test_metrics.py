"""Metric labels stay bounded: only sources the operator listed get a series of their own."""

from __future__ import annotations

from services.common.metrics import Metrics


def test_listed_sources_get_their_own_series_and_others_are_counted_together() -> None:
    metrics = Metrics(known_sources=["urn:carebus:source:riverside-primary-care"])
    metrics.accepted("org.carebus.patient.registered.v1", "http", "urn:carebus:source:riverside-primary-care")
    metrics.accepted("org.carebus.patient.registered.v1", "http", "urn:someone:else", count=2)
    metrics.accepted("org.carebus.patient.registered.v1", "http", "urn:yet:another")

    def value(source: str) -> float | None:
        return metrics.registry.get_sample_value("carebus_events_accepted_total", {
            "event_type": "org.carebus.patient.registered.v1", "channel": "http", "source": source})

    assert value("urn:carebus:source:riverside-primary-care") == 1
    assert value("other") == 3
    assert value("urn:someone:else") is None
