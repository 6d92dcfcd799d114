"""Outcomes over time and safety alerts as work.

``episodes.py`` (pure rules) -> ``history.py`` (FHIR in) -> ``fhir.py`` (FHIR out: derived Observations,
MeasureReports, Measures) and ``tasks.py`` (safety Tasks); ``engine.py`` reads the record store and decides what
to write; ``service.py`` is the process (consumers, timer, HTTP probes).
"""
