"""The record service: one patient, one record, served as a FHIR R4 API.

Consumes the FHIR bundle topic into a versioned store (SQLite or PostgreSQL), links the Patient records of one
person across source systems, and serves read / vread / history / search / Patient/$everything with
SMART-style scopes and security-label filtering.

Modules: ``ingest`` (records -> versions, pure), ``indexing`` (search index, pure), ``identity`` (person
grouping, pure), ``search`` (query parsing, pure), ``access`` (tokens, scopes, labels, pure), ``render`` and
``capability`` (FHIR responses, pure), ``store`` (the store interface and its SQLite/PostgreSQL
implementations), ``consumer`` (the Kafka thread), ``api`` (FastAPI), ``service`` (composition root).
"""
