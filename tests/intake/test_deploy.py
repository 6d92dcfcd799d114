"""The rendered manifests run intake as it must be reached: MLLP bound to the pod's address, sender tokens from
a Secret (never in git)."""

from __future__ import annotations

from typing import Any

import pytest

from services.common.settings import Settings
from tests.deploy.helpers import ALL_KUSTOMIZATIONS, container_env, deployment_of, of_kind, one, render


def intake_environment(name: str) -> tuple[dict[str, str], dict[str, Any]]:
    objects = render(name)
    container = deployment_of(objects, "intake")["spec"]["template"]["spec"]["containers"][0]
    plain: dict[str, str] = {}
    for source in container.get("envFrom", []):
        plain.update(one(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    entries = container_env(container)
    plain.update({key: entry["value"] for key, entry in entries.items() if "value" in entry})
    return plain, entries


@pytest.mark.parametrize("name", ALL_KUSTOMIZATIONS)
def test_mllp_listens_on_the_pod_address_the_service_targets(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    plain, _ = intake_environment(name)
    for key, value in plain.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.mllp_host == "0.0.0.0"  # 127.0.0.1 (the default) is unreachable through a Service
    objects = render(name)
    container = deployment_of(objects, "intake")["spec"]["template"]["spec"]["containers"][0]
    mllp_port = next(p for p in container["ports"] if p["name"] == "mllp")["containerPort"]
    assert mllp_port == settings.mllp_port
    mllp_services = [s for s in of_kind(objects, "Service")
                     if any(p.get("targetPort") == "mllp" for p in s["spec"]["ports"])]
    assert mllp_services


@pytest.mark.parametrize("name", ALL_KUSTOMIZATIONS)
def test_sender_tokens_come_from_a_secret(name: str) -> None:
    _, entries = intake_environment(name)
    tokens = entries["CAREBUS_INTAKE_TOKENS"]
    assert "value" not in tokens
    assert tokens["valueFrom"]["secretKeyRef"]["name"] == "carebus-intake-senders"
    assert not any(key == "CAREBUS_INTAKE_ALLOW_ANONYMOUS" for key in entries)
