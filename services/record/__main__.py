"""``python -m services.record``: the record service (bundle topic -> store -> FHIR R4 API)."""

from services.record.service import main

if __name__ == "__main__":
    main()
