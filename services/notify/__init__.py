"""notify: turns what the record committed (its change feed) into FHIR topic-based subscription notifications
(Subscriptions R5 Backport IG 1.1.0 on R4) and delivers them over rest-hooks. See README.md."""
