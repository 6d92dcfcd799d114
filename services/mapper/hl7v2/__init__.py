"""HL7 v2 (ER7, versions 2.3 to 2.8) -> FHIR R4, pure.

    map_hl7v2_message(er7, context) -> MappedEvent       the full mapping (mapper service; the pipeline
                                                          validates the bundle once, with validate_bundle)
    validate_mapped(bundle)                               that validation, failing as InvalidResource (AE)

The codec it reads messages with (ER7 parsing, inspection, ids, the ACK, the errors) is services/common/hl7v2,
which intake uses too.

What maps to what (HL7 v2-to-FHIR IG where it has a mapping):
  every message   MSH -> MessageHeader, MSH + EVN -> Provenance (lists segments present but not mapped)
  ADT A01-A04 A08 PID/PD1 -> Patient, PV1/PV2 -> Encounter, NK1 -> RelatedPerson, AL1 -> AllergyIntolerance,
                  DG1 -> Condition (+ Encounter.diagnosis), OBX -> Observation
  ADT A40         PID + MRG -> survivor Patient (link replaces) + retired Patient (active false, replaced-by)
  SIU S12-15, S26 SCH/TQ1/RGS/AIS/AIG/AIL/AIP/NTE -> Appointment (+ Patient, Encounter, Condition)
  ORU R01         OBR -> DiagnosticReport, OBX -> Observation; instruments (PHQ-9 ...) scored, Flag on risk
  MDM T02         TXA + OBX body -> DocumentReference
  RDE O11         ORC + RXE/RXR/TQ1 -> MedicationRequest
  VXU V04         ORC + RXA/RXR -> Immunization (OBX -> Observation partOf it)

Errors: services/common/hl7v2/errors.py (AE for content errors, AR for unsupported messages).
"""

from services.mapper.hl7v2.mapper import map_hl7v2_message, validate_mapped

__all__ = [
    "map_hl7v2_message",
    "validate_mapped",
]
