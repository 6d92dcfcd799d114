"""deploy/k8s: every kustomization renders, validates against the Kubernetes API schemas, and is consistent
with the services (routes, ports, settings) and with itself (Services, HPAs, PDBs, NetworkPolicies,
Strimzi)."""

from __future__ import annotations

import re
from typing import Any

import kubernetes_validate
import pytest
from kubernetes_validate.utils import SchemaNotFoundError

from services.common.settings import Settings
from tests.deploy.helpers import (
    ALL_KUSTOMIZATIONS,
    KUBERNETES_VERSION,
    SERVICES,
    by_identity,
    container_env,
    deployment_of,
    labels_match,
    of_kind,
    one,
    render,
    service_routes,
)

Obj = dict[str, Any]
OVERLAYS = ("small", "production")
ALL = ALL_KUSTOMIZATIONS
SERVICE_PORTS = {service: int(Settings.model_fields[f"{service}_port"].default) for service in SERVICES}
CORE_KINDS = {
    "Deployment",
    "Service",
    "ServiceAccount",
    "ConfigMap",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "NetworkPolicy",
}
HPA_SERVICES = ("intake", "mapper")
PRIVATE_RANGES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16")


def _container(deployment: Obj) -> Obj:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: Obj = containers[0]
    return container


def _settings_env(objects: list[Obj], service: str) -> dict[str, str | None]:
    """The CAREBUS_* environment of a service's container: its ConfigMap plus its own env entries. Entries
    read from a Secret (not in git) are None."""
    container = _container(deployment_of(objects, service))
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        config_map = one(objects, "ConfigMap", source["configMapRef"]["name"])
        env.update(config_map["data"])
    for name, entry in container_env(container).items():
        env[name] = entry.get("value")
    return env


# --------------------------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("name", ALL)
def test_kustomization_renders(name: str) -> None:
    objects = render(name)
    kinds = {o["kind"] for o in objects}
    assert CORE_KINDS | {"Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser", "ServiceMonitor"} <= kinds
    assert len(by_identity(objects)) == len(objects), "two objects with the same identity"


@pytest.mark.parametrize("name", ALL)
def test_core_objects_validate_against_kubernetes_schemas(name: str) -> None:
    validated: set[str] = set()
    for obj in render(name):
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except SchemaNotFoundError:
            assert obj["kind"] not in CORE_KINDS | {"Namespace"}, f"no schema for core kind {obj['kind']}"
            continue
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {exc.message}")
        validated.add(obj["kind"])
    assert validated >= CORE_KINDS


def test_schema_validation_rejects_a_broken_deployment() -> None:
    deployment = deployment_of(render("base"), "intake")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] = ["http"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("name", OVERLAYS)
def test_overlays_set_namespace_and_image(name: str) -> None:
    objects = render(name)
    namespaces = {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"}
    assert namespaces == {"carebus"}
    for service in SERVICES:
        image = _container(deployment_of(objects, service))["image"]
        assert re.fullmatch(r"[a-z0-9.-]+(/[a-z0-9._-]+)+:[A-Za-z0-9._-]+", image), image


# --------------------------------------------------------------------------------------------- Deployments


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("service", SERVICES)
def test_deployment_is_hardened(name: str, service: str) -> None:
    deployment = deployment_of(render(name), service)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    container = _container(deployment)
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["runAsNonRoot"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]], "/tmp must be a writable emptyDir"  # noqa: S108
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), f"{kind} of cpu and memory"


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("service", SERVICES)
def test_deployment_runs_its_service_on_its_port(name: str, service: str) -> None:
    objects = render(name)
    container = _container(deployment_of(objects, service))
    assert container["command"] == ["python", "-m", f"services.{service}"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == SERVICE_PORTS[service]
    env = _settings_env(objects, service)
    assert env["CAREBUS_HTTP_HOST"] == "0.0.0.0"  # the default, 127.0.0.1, is unreachable from the kubelet
    assert env.get(f"CAREBUS_{service.upper()}_PORT", str(SERVICE_PORTS[service])) == str(ports["http"])
    if service == "intake":
        assert ports["mllp"] == 2575
        if "mllp_port" in Settings.model_fields:  # once intake's MLLP listener has its setting
            assert env.get("CAREBUS_MLLP_PORT", str(Settings.model_fields["mllp_port"].default)) == "2575"


@pytest.mark.parametrize("service", SERVICES)
def test_probe_paths_are_routes_of_the_service(service: str) -> None:
    routes, found_by = service_routes(service)
    for name in ALL:
        container = _container(deployment_of(render(name), service))
        probes = {kind: container[kind] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
        assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
        for kind, probe in probes.items():
            path = probe["httpGet"]["path"]
            assert path in routes, (
                f"{name}: {service} {kind} {path} is not among {sorted(routes)} ({found_by})"
            )
            assert probe["httpGet"]["port"] == "http"


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("service", SERVICES)
def test_settings_in_the_environment_are_valid(
    name: str, service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _settings_env(render(name), service)
    fields = {f"CAREBUS_{field.upper()}" for field in Settings.model_fields}
    unknown = sorted(key for key in env if key not in fields)
    assert not unknown, f"not settings of services/common/settings.py: {unknown}"
    for key in list(__import__("os").environ):
        if key.startswith("CAREBUS_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        if value is not None:
            monkeypatch.setenv(key, value)
    settings = Settings()  # raises on a value of the wrong type or outside a Literal
    assert settings.kafka_create_topics is False  # topics are KafkaTopic resources on Strimzi


@pytest.mark.parametrize("name", ALL)
def test_config_map_holds_no_secret(name: str) -> None:
    for config_map in of_kind(render(name), "ConfigMap"):
        for key in config_map["data"]:
            assert not re.search(r"PASSWORD|SECRET|TOKEN|DSN", key), f"{key} belongs in a Secret"
    assert not of_kind(render(name), "Secret"), "Secrets are generated in the cluster, never kept in git"


# --------------------------------------------------------------------------------------------- Kafka wiring


def _kafka(objects: list[Obj]) -> Obj:
    kafkas = of_kind(objects, "Kafka")
    assert len(kafkas) == 1
    return kafkas[0]


def _tls_scram_listener(kafka: Obj) -> Obj:
    listeners = [
        listener
        for listener in kafka["spec"]["kafka"]["listeners"]
        if listener["tls"] is True and listener.get("authentication", {}).get("type") == "scram-sha-512"
    ]
    assert len(listeners) == 1
    listener: Obj = listeners[0]
    return listener


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("service", SERVICES)
def test_service_connects_to_kafka_with_its_own_kafka_user(name: str, service: str) -> None:
    objects = render(name)
    kafka = _kafka(objects)
    cluster = kafka["metadata"]["name"]
    listener = _tls_scram_listener(kafka)
    env = _settings_env(objects, service)
    assert env["CAREBUS_KAFKA_BOOTSTRAP"] == f"{cluster}-kafka-bootstrap:{listener['port']}"
    assert env["CAREBUS_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["CAREBUS_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"

    container = _container(deployment_of(objects, service))
    username, ca_file = env["CAREBUS_KAFKA_SASL_USERNAME"], env["CAREBUS_KAFKA_SSL_CAFILE"]
    assert username is not None and ca_file is not None
    user = one(objects, "KafkaUser", username)
    assert user["metadata"]["labels"]["strimzi.io/cluster"] == cluster
    assert user["spec"]["authentication"]["type"] == "scram-sha-512"
    password = container_env(container)["CAREBUS_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert password == {"name": user["metadata"]["name"], "key": "password"}  # the Secret Strimzi writes

    # the cluster CA certificate Strimzi publishes, mounted where CAREBUS_KAFKA_SSL_CAFILE points
    volumes = {v["name"]: v for v in deployment_of(objects, service)["spec"]["template"]["spec"]["volumes"]}
    mount = next(m for m in container["volumeMounts"] if ca_file.startswith(m["mountPath"] + "/"))
    secret = volumes[mount["name"]]["secret"]
    assert secret["secretName"] == f"{cluster}-cluster-ca-cert"
    assert [item["key"] for item in secret["items"]] == ["ca.crt"]
    assert ca_file == f"{mount['mountPath']}/{secret['items'][0]['path']}"


@pytest.mark.parametrize("name", ALL)
def test_kafka_cluster_is_kraft_with_node_pools(name: str) -> None:
    objects = render(name)
    kafka = _kafka(objects)
    assert kafka["apiVersion"] == "kafka.strimzi.io/v1"
    # Strimzi 1.x is KRaft with node pools only; the v1beta2-era switches are gone
    annotations = kafka["metadata"].get("annotations", {})
    assert not {"strimzi.io/kraft", "strimzi.io/node-pools"} & set(annotations)
    assert "zookeeper" not in kafka["spec"]
    assert kafka["spec"]["kafka"]["authorization"]["type"] == "simple"
    assert {"topicOperator", "userOperator"} <= set(kafka["spec"]["entityOperator"])
    config = kafka["spec"]["kafka"]["config"]
    pools = of_kind(objects, "KafkaNodePool")
    for pool in pools:
        assert pool["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
    brokers = sum(p["spec"]["replicas"] for p in pools if "broker" in p["spec"]["roles"])
    controllers = sum(p["spec"]["replicas"] for p in pools if "controller" in p["spec"]["roles"])
    assert controllers >= 3 and controllers % 2 == 1, "a KRaft quorum of an odd number of controllers"
    assert brokers >= config["default.replication.factor"] > config["min.insync.replicas"] >= 2
    for topic in of_kind(objects, "KafkaTopic"):
        assert topic["spec"]["replicas"] <= brokers
        assert topic["spec"]["config"]["min.insync.replicas"] < topic["spec"]["replicas"]


# ----------------------------------------------------------------------------------------- Services, HPA, PDB


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("service", SERVICES)
def test_service_selects_the_pods_and_their_ports(name: str, service: str) -> None:
    objects = render(name)
    deployment = deployment_of(objects, service)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels_match(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    port_names = {p["name"] for p in _container(deployment)["ports"]}
    services = [s for s in of_kind(objects, "Service") if labels_match(s["spec"]["selector"], pod_labels)]
    assert services, f"no Service selects {service}"
    for svc in services:
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= port_names
    main = one(objects, "Service", f"carebus-{service}")
    assert {"name": "http", "port": SERVICE_PORTS[service], "targetPort": "http", "protocol": "TCP"} in main[
        "spec"
    ]["ports"]


@pytest.mark.parametrize("name", ALL)
def test_stateless_services_are_autoscaled(name: str) -> None:
    objects = render(name)
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in of_kind(objects, "HorizontalPodAutoscaler")}
    assert set(hpas) == {f"carebus-{s}" for s in HPA_SERVICES}
    partitions = {t["spec"]["topicName"]: t["spec"]["partitions"] for t in of_kind(objects, "KafkaTopic")}
    for service in HPA_SERVICES:
        hpa, deployment = hpas[f"carebus-{service}"], deployment_of(objects, service)
        assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        assert "replicas" not in deployment["spec"], "the HPA owns the replicas of an autoscaled Deployment"
        assert hpa["spec"]["metrics"], "scale on a resource metric"
    # a mapper beyond the inbound topic's partition count would get no partition
    assert hpas["carebus-mapper"]["spec"]["maxReplicas"] <= partitions["carebus.events.inbound.v1"]


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("service", SERVICES)
def test_every_service_has_a_disruption_budget(name: str, service: str) -> None:
    objects = render(name)
    pod_labels = deployment_of(objects, service)["spec"]["template"]["metadata"]["labels"]
    budgets = [
        b
        for b in of_kind(objects, "PodDisruptionBudget")
        if labels_match(b["spec"]["selector"]["matchLabels"], pod_labels)
    ]
    assert len(budgets) == 1
    # maxUnavailable keeps node drains possible even with a single replica (small overlay)
    assert budgets[0]["spec"]["maxUnavailable"] == 1


# --------------------------------------------------------------------------------------------- NetworkPolicy


def _policy_for(objects: list[Obj], service: str) -> Obj:
    pod_labels = deployment_of(objects, service)["spec"]["template"]["metadata"]["labels"]
    policies = [
        p
        for p in of_kind(objects, "NetworkPolicy")
        if labels_match(p["spec"]["podSelector"].get("matchLabels", {}), pod_labels)
    ]
    assert len(policies) == 1, f"one NetworkPolicy must select {service}"
    return policies[0]


def _ports(rule: Obj) -> set[tuple[int, str]]:
    return {(p["port"], p.get("protocol", "TCP")) for p in rule.get("ports", [])}


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("service", SERVICES)
def test_network_policy_allows_only_what_the_service_needs(name: str, service: str) -> None:
    objects = render(name)
    policy = _policy_for(objects, service)["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    kafka = _kafka(objects)
    kafka_port = _tls_scram_listener(kafka)["port"]

    egress: dict[str, set[tuple[int, str]]] = {}
    for rule in policy["egress"]:
        assert rule.get("to"), "an egress rule without 'to' would allow every destination"
        assert rule.get("ports"), "an egress rule without ports would allow every port"
        for peer in rule["to"]:
            labels = peer.get("podSelector", {}).get("matchLabels", {})
            if labels.get("k8s-app") == "kube-dns":
                target = "dns"
            elif labels.get("strimzi.io/cluster") == kafka["metadata"]["name"]:
                assert labels.get("strimzi.io/kind") == "Kafka"
                target = "kafka"
            elif "cnpg.io/cluster" in labels:
                target = f"postgresql {labels['cnpg.io/cluster']}"
            elif "ipBlock" in peer and service == "notify":  # subscribers' endpoints: outside the cluster only
                assert peer["ipBlock"]["cidr"] == "0.0.0.0/0"
                assert set(PRIVATE_RANGES) <= set(peer["ipBlock"]["except"])
                target = "internet"
            else:
                pytest.fail(f"{service}: unexpected egress peer {peer}")
            egress.setdefault(target, set()).update(_ports(rule))
    expected = {"dns": {(53, "UDP"), (53, "TCP")}, "kafka": {(kafka_port, "TCP")}}
    # record: its store and notify's (the /Subscription routes); notify: its store; outcomes: the record's
    for cluster in {"record": ("carebus-records", "carebus-notify"), "notify": ("carebus-notify",),
                    "outcomes": ("carebus-records",)}.get(service, ()):
        expected[f"postgresql {cluster}"] = {(5432, "TCP")}
    if service == "notify":
        expected["internet"] = {(443, "TCP")}
    assert egress == expected

    ingress_ports = set().union(*(_ports(rule) for rule in policy["ingress"]))
    container_ports = {
        (p["containerPort"], p["protocol"]) for p in _container(deployment_of(objects, service))["ports"]
    }
    assert ingress_ports == container_ports
    scraped = [
        rule
        for rule in policy["ingress"]
        if any(
            peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name") == "prometheus"
            for peer in rule.get("from", [])
        )
    ]
    assert scraped and _ports(scraped[0]) == {(SERVICE_PORTS[service], "TCP")}
    for rule in policy["ingress"]:
        if not rule.get("from"):  # open to any source: only intake's MLLP port
            assert (service, _ports(rule)) == ("intake", {(2575, "TCP")})


@pytest.mark.parametrize("name", ALL)
def test_kafka_listener_admits_the_service_pods(name: str) -> None:
    objects = render(name)
    peers = _tls_scram_listener(_kafka(objects))["networkPolicyPeers"]
    for service in SERVICES:
        labels = deployment_of(objects, service)["spec"]["template"]["metadata"]["labels"]
        admitted = False
        for peer in peers:
            selector = peer["podSelector"]
            if labels_match(selector.get("matchLabels", {}), labels) and all(
                labels.get(e["key"]) in e["values"]
                for e in selector.get("matchExpressions", [])
                if e["operator"] == "In"
            ):
                admitted = True
        assert admitted, f"{service} pods cannot reach the Kafka listener"


# --------------------------------------------------------------------------------------------- ServiceMonitor


@pytest.mark.parametrize("name", ALL)
def test_service_monitor_scrapes_every_service(name: str) -> None:
    objects = render(name)
    monitors = of_kind(objects, "ServiceMonitor")
    assert len(monitors) == 1
    monitor = monitors[0]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    endpoint_ports = {e["port"] for e in monitor["spec"]["endpoints"]}
    assert all(e["path"] == "/metrics" for e in monitor["spec"]["endpoints"])
    job_label = monitor["spec"]["jobLabel"]
    for service in SERVICES:
        svc = one(objects, "Service", f"carebus-{service}")
        assert labels_match(monitor["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
        assert endpoint_ports & {p["name"] for p in svc["spec"]["ports"]}
        # the dashboard and the alert rules select job="carebus-<service>"
        assert svc["metadata"]["labels"][job_label] == f"carebus-{service}"


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("service", ["notify", "outcomes"])
def test_single_process_services_never_run_twice(name: str, service: str) -> None:
    # notify's delivery tasks and outcomes' sweep / escalations are not partitioned across processes: one
    # replica, and a rollout stops the old pod before it starts the new one
    deployment = deployment_of(render(name), service)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert not [h for h in of_kind(render(name), "HorizontalPodAutoscaler")
                if h["spec"]["scaleTargetRef"]["name"] == f"carebus-{service}"]


@pytest.mark.parametrize("name", ALL)
def test_record_api_and_notify_share_the_subscription_store(name: str) -> None:
    objects = render(name)
    refs = {service: container_env(_container(deployment_of(objects, service)))["CAREBUS_NOTIFY_STORE_DSN"]
            ["valueFrom"]["secretKeyRef"] for service in ("record", "notify")}
    assert refs["record"] == refs["notify"] == {"name": "carebus-notify-app", "key": "uri"}
