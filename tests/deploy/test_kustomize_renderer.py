"""The kustomize-subset renderer itself, on a fixture that uses what deploy/k8s does not (namePrefix,
commonLabels, nameSuffix, replicas, $patch: delete, targeted patches of custom resources, ...)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.helpers import by_identity, container_env, kubectl_kustomize, of_kind, one
from tests.deploy.kustomize_lite import KustomizeError, build, config_map_hash, strategic_merge

FIXTURE = Path(__file__).parent / "fixtures" / "kustomize"


@pytest.mark.parametrize("name", ["base", "overlay"])
def test_fixture_renders_like_kubectl_kustomize(name: str) -> None:
    reference = kubectl_kustomize(FIXTURE / name)
    if reference is None:
        pytest.skip("kubectl is not installed: cannot compare with the real kustomize")
    assert by_identity(build(FIXTURE / name)) == by_identity(reference)


def test_generated_config_map_hash_matches_kustomize_v5() -> None:
    # Golden values printed by kustomize v5.5.0 (kubectl 1.32) for the fixture's ConfigMap, before and after
    # the overlay's merge.
    assert config_map_hash({"data": {"A": "1", "B": "two"}}) == "6b56fdfggc"
    assert config_map_hash({"data": {"A": "1", "B": "three"}}) == "8692gh424h"


def test_overlay_names_namespaces_and_references() -> None:
    objects = build(FIXTURE / "overlay")
    assert {o["metadata"]["namespace"] for o in objects} == {"fixture"}
    config_maps = {o["metadata"]["name"] for o in of_kind(objects, "ConfigMap")}
    assert config_maps == {"o-b-settings-v1-8692gh424h", "o-b-static-v1"}  # hash opted out for "static"

    deployment = one(objects, "Deployment", "o-b-web-v1")
    pod = deployment["spec"]["template"]["spec"]
    app = next(c for c in pod["containers"] if c["name"] == "app")
    assert app["envFrom"] == [{"configMapRef": {"name": "o-b-settings-v1-8692gh424h"}}]
    env = container_env(app)
    assert env["FROM_STATIC"]["valueFrom"]["configMapKeyRef"]["name"] == "o-b-static-v1"
    # a Secret that is not part of the build keeps its name
    assert env["EXTERNAL"]["valueFrom"]["secretKeyRef"]["name"] == "not-in-this-build"
    assert pod["serviceAccountName"] == "o-b-web-v1"
    assert (
        one(objects, "HorizontalPodAutoscaler", "o-b-web-v1")["spec"]["scaleTargetRef"]["name"]
        == "o-b-web-v1"
    )


def test_overlay_patches_images_replicas_and_labels() -> None:
    objects = build(FIXTURE / "overlay")
    deployment = one(objects, "Deployment", "o-b-web-v1")
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    pod = spec["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["app", "extra", "sidecar"]
    app = pod["containers"][0]
    assert [e["name"] for e in app["env"]] == ["ADDED", "KEEP", "FROM_STATIC", "EXTERNAL"]  # DROP deleted
    assert app["image"] == "registry.example.org/app:2.0"
    assert pod["containers"][2]["image"].startswith("registry.example.org/sidecar@sha256:")
    assert pod["initContainers"][0]["image"] == "busybox:1.37"
    assert pod["volumes"][0] == {"name": "tmp", "hostPath": {"path": "/var/tmp"}}  # noqa: S108
    # commonLabels of the base reach selectors; the overlay's labels (includeSelectors false) do not
    assert spec["selector"]["matchLabels"] == {"app": "web", "team": "records"}
    assert spec["template"]["metadata"]["labels"] == {"app": "web", "team": "records", "env": "test"}
    assert one(objects, "Service", "o-b-web-v1")["spec"]["selector"] == {"app": "web", "team": "records"}
    policy = one(objects, "NetworkPolicy", "o-b-web-v1")["spec"]
    assert policy["ingress"][0]["from"][0]["podSelector"]["matchLabels"] == {
        "role": "client",
        "team": "records",
    }
    assert deployment["metadata"]["annotations"] == {"owner": "fixture"}


def test_custom_resource_lists_are_replaced_not_merged() -> None:
    widget = one(build(FIXTURE / "overlay"), "Widget", "o-b-gadget-v1")
    assert widget["spec"] == {
        "items": [{"name": "two", "size": 22}, {"name": "three", "size": 3}],
        "numbers": [9],
        "extra": True,
    }


def test_strategic_merge_of_builtin_lists_by_merge_key() -> None:
    original = {"spec": {"ports": [{"name": "http", "port": 80}, {"name": "admin", "port": 81}]}}
    patch = {"spec": {"ports": [{"port": 81, "targetPort": 9081}, {"port": 82}]}}
    assert strategic_merge(original, patch)["spec"]["ports"] == [
        {"name": "admin", "port": 81, "targetPort": 9081},
        {"port": 82},
        {"name": "http", "port": 80},
    ]
    assert strategic_merge(original, patch, core=False)["spec"]["ports"] == [
        {"port": 81, "targetPort": 9081},
        {"port": 82},
    ]
    assert strategic_merge({"a": {"b": 1, "c": 2}}, {"a": {"$patch": "replace", "d": 3}}) == {"a": {"d": 3}}


def test_unsupported_fields_are_refused(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nhelmCharts: []\n", encoding="utf-8")
    with pytest.raises(KustomizeError, match="helmCharts"):
        build(tmp_path)


def test_patch_that_matches_nothing_is_refused(tmp_path: Path) -> None:
    (tmp_path / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n", encoding="utf-8"
    )
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [cm.yaml]\npatches:\n  - patch: |-\n      apiVersion: v1\n      kind: ConfigMap\n"
        "      metadata:\n        name: b\n      data:\n        x: y\n",
        encoding="utf-8",
    )
    with pytest.raises(KustomizeError, match="matches no resource"):
        build(tmp_path)
