"""Demo and development tooling: what runs carebus on one machine, never part of the product.

- ``__main__``: the main job (``make demo``): a local broker, every service, the sample journey replayed
- ``journey``: the sample behavioural-health care journey (CloudEvent dicts; pure)
- ``hospital_feed``: the demo's HL7 v2 ADT over MLLP and FHIR GAD-7 from a therapy platform
- ``webhook_receiver``: the therapy EHR's rest-hook the demo subscribes
- ``local_broker``: one Apache Kafka broker (KRaft) provisioned from Maven Central (tests, benchmarks, demo)
- ``local_postgres``: a throwaway PostgreSQL cluster from Debian's binaries (tests, benchmarks)

pyproject.toml packages ``services`` only, so neither the wheel nor the image holds this package; the ``carebus``
CLI imports it lazily for its development commands (``stack``, ``broker``, ``send-sample``).
"""
