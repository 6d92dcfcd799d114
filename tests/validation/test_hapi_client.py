"""The HAPI FHIR generic client (Java, hapi-fhir-client 8.8.1, strict parsing) against the live record API holding
everything the pipeline emitted (conftest.py runs it in the validator's JVM): read, a search paged to the end,
history().since() with a +02:00 offset sent as HAPI sends it, conditional read answered 304."""

from __future__ import annotations

import re

import pytest

from tests.validation.conftest import ClientRun, Gathered

pytestmark = pytest.mark.integration


def _client(gathered: Gathered) -> ClientRun:
    assert gathered.client is not None
    return gathered.client


def test_every_check_of_the_strict_client_passes(gathered: Gathered) -> None:
    checks = {c["name"]: c for c in _client(gathered).results["checks"]}
    assert set(checks) == {"read", "search", "history", "conditional"}
    failed = {name: c["detail"] for name, c in checks.items() if not c["ok"]}
    assert not failed, failed
    print("\n" + "\n".join(f"{name}: {c['detail']}" for name, c in checks.items()))


def test_the_client_checked_the_capability_statement_and_got_no_error(gathered: Gathered) -> None:
    run = _client(gathered).results
    assert any(uri.endswith("/metadata") for uri in run["requests"])
    assert all(status in (200, 304) for status in run["statuses"]), run["statuses"]
    assert 304 in run["statuses"]  # the conditional read


def test_the_paged_search_reaches_every_match_once(gathered: Gathered) -> None:
    client = _client(gathered)
    search = client.results["search"]
    assert len(client.expected_ids) >= 3, "the chosen patient has too few Observations to page"
    assert search["pages"] >= 3 and search["pages"] == -(-len(client.expected_ids) // client.page_size)
    assert len(search["ids"]) == len(set(search["ids"]))
    assert sorted(search["ids"]) == sorted(client.expected_ids)
    if search["total"] >= 0:
        assert search["total"] == len(client.expected_ids)


def test_history_since_is_sent_with_an_unescaped_plus_and_understood(gathered: Gathered) -> None:
    run = _client(gathered).results
    since = [uri for uri in run["requests"] if "_since=" in uri]
    assert len(since) == 2
    # HAPI puts the offset in the query as a raw '+' (a space once URL-decoded): the API must read it as a zone
    assert any(re.search(r"_since=[0-9T:.-]+\+02:00", uri) for uri in since), since
    assert any(re.search(r"_since=[0-9T:.-]+\+05:30", uri) for uri in since), since
    assert run["history"]["since"] >= 1 and run["history"]["later"] == 0
