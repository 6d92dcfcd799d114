"""Every Strimzi object of every kustomization against the CRDs of the Strimzi release carebus targets (1.2.0,
deploy/k8s/strimzi-crds/pom.xml): its apiVersion is one the CRD serves, and it validates against that version's
OpenAPI schema as a strict API server does (`kubectl apply` with field validation Strict: an unknown field is an
error, not silently pruned). The CRDs are generated from io.strimzi:api by io.strimzi:crd-generator, the way the
Strimzi release builds its own install files (deploy/local/tools.sh)."""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.helpers import ALL_KUSTOMIZATIONS, render
from tests.tools import strimzi_crds

Obj = dict[str, Any]
STRIMZI_KINDS = ("Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser")


def _strict(schema: Any) -> Any:
    """The CRD schema with unknown fields refused wherever the schema lists an object's fields."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: _strict(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        strict["additionalProperties"] = False
    return strict


@cache
def _crds() -> dict[tuple[str, str], Obj]:
    crds: dict[tuple[str, str], Obj] = {}
    for path in sorted(strimzi_crds().glob("*.yaml")):
        crd = yaml.safe_load(path.read_text(encoding="utf-8"))
        crds[(crd["spec"]["group"], crd["spec"]["names"]["kind"])] = crd
    return crds


def problems(obj: Obj) -> list[str]:
    """What the Strimzi API server would refuse in one object ([] when it is accepted)."""
    group, _, version = obj["apiVersion"].partition("/")
    crd = _crds().get((group, obj["kind"]))
    if crd is None:
        return [f"no CRD for {obj['kind']} in {group}"]
    served = {v["name"]: v for v in crd["spec"]["versions"] if v.get("served")}
    if version not in served:
        return [f"{obj['apiVersion']} is not served for {obj['kind']} (served: {', '.join(sorted(served))})"]
    schema = _strict(served[version]["schema"]["openAPIV3Schema"])
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"
        for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
    ]


def test_the_crds_are_those_of_strimzi_1_and_serve_only_v1() -> None:
    assert set(_crds()) == {("kafka.strimzi.io", kind) for kind in STRIMZI_KINDS}
    for crd in _crds().values():
        assert [v["name"] for v in crd["spec"]["versions"] if v.get("served")] == ["v1"]


@pytest.mark.parametrize("name", ALL_KUSTOMIZATIONS)
def test_strimzi_objects_validate_against_the_crds(name: str) -> None:
    objects = [o for o in render(name) if o["apiVersion"].startswith("kafka.strimzi.io/")]
    assert {o["kind"] for o in objects} == set(STRIMZI_KINDS)
    found = {f"{o['kind']}/{o['metadata']['name']}": problems(o) for o in objects}
    assert {key: value for key, value in found.items() if value} == {}


def _first(kind: str) -> Obj:
    return copy.deepcopy(next(o for o in render("production") if o["kind"] == kind))


def test_the_check_refuses_what_strimzi_1_refuses() -> None:
    # the API version every object had before Strimzi 1.0
    old = _first("KafkaTopic")
    old["apiVersion"] = "kafka.strimzi.io/v1beta2"
    assert problems(old) == ["kafka.strimzi.io/v1beta2 is not served for KafkaTopic (served: v1)"]
    # fields v1 dropped: ZooKeeper, the Kafka resource's own replicas and storage (node pools own them), and an
    # ACL's single `operation`
    kafka = _first("Kafka")
    kafka["spec"]["zookeeper"] = {"replicas": 3}
    kafka["spec"]["kafka"]["replicas"] = 3
    assert len(problems(kafka)) == 2 and all("Additional properties" in p for p in problems(kafka))
    user = _first("KafkaUser")
    user["spec"]["authorization"]["acls"][0]["operation"] = "Read"
    assert any("operation" in p for p in problems(user))
    # a value outside an enum
    pool = _first("KafkaNodePool")
    pool["spec"]["roles"] = ["broker", "zookeeper"]
    assert any(p.startswith("spec.roles.1") for p in problems(pool))
