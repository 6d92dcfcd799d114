"""The FHIR layer the three input paths (JSON care events, HL7 v2, FHIR in) share.

``codesystems``: every code-system and identifier-system URI carebus writes or reads, in one place.
"""
