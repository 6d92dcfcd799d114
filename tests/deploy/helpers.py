"""Shared helpers of the deploy tests: rendering the kustomizations (the real kustomize), the service routes,
the exported metrics and the PromQL selectors of the dashboard and the alerting rules."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import re
import subprocess
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from fastapi import FastAPI
from prometheus_client.metrics import MetricWrapperBase

from services.common.http import add_operational_routes
from services.common.kafka import RecordProducer
from services.common.metrics import Metrics
from services.common.settings import REPO_ROOT, Settings
from tests.tools import kustomize

K8S = REPO_ROOT / "deploy" / "k8s"
KUSTOMIZATIONS = {
    "base": K8S / "base",
    "small": K8S / "overlays" / "small",
    "production": K8S / "overlays" / "production",
}
ALL_KUSTOMIZATIONS = tuple(KUSTOMIZATIONS)
SERVICES = ("intake", "mapper", "record", "notify", "outcomes", "general")
KUBERNETES_VERSION = "1.30"  # the oldest Kubernetes the manifests target (autoscaling/v2, policy/v1)
# Labels Prometheus adds to every series of a ServiceMonitor target, plus the histogram bucket label.
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "service", "container", "endpoint"})

Obj = dict[str, Any]


# --------------------------------------------------------------------------------------------- rendering


@cache
def _render(name: str) -> tuple[Obj, ...]:
    result = subprocess.run(  # noqa: S603  # the kustomize of .cache/tools, fixed arguments
        [str(kustomize()), "build", str(KUSTOMIZATIONS[name])], capture_output=True, text=True, timeout=120,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"kustomize build {KUSTOMIZATIONS[name]}: {result.stderr.strip()}")
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def render(name: str) -> list[Obj]:
    """The objects of one kustomization, as ``kustomize build`` prints them (fresh copies)."""
    import copy

    return copy.deepcopy(list(_render(name)))


def by_identity(objects: list[Obj]) -> dict[tuple[str, str, str, str], Obj]:
    return {
        (o["apiVersion"], o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o
        for o in objects
    }


def of_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def deployment_of(objects: list[Obj], service: str) -> Obj:
    return one(objects, "Deployment", f"carebus-{service}")


def container_env(container: Obj) -> dict[str, Obj]:
    return {env["name"]: env for env in container.get("env", [])}


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


# --------------------------------------------------------------------------------------------- service routes


def service_module_exists(service: str) -> bool:
    """True when ``python -m services.<service>`` can run (the package has a __main__ module)."""
    try:
        return importlib.util.find_spec(f"services.{service}.__main__") is not None
    except ModuleNotFoundError:
        return False


def _build_args(factory: Callable[..., Any]) -> dict[str, Any] | None:
    """Arguments for an app factory, built from its type hints; None when one has a type not known here."""
    settings = Settings(kafka_create_topics=False)
    hints = typing.get_type_hints(factory)
    args: dict[str, Any] = {}
    for name, parameter in inspect.signature(factory).parameters.items():
        if parameter.default is not inspect.Parameter.empty:
            continue
        hint = hints.get(name)
        origin = typing.get_origin(hint)
        if hint is Settings:
            args[name] = settings
        elif hint is Metrics:
            args[name] = Metrics()
        elif hint is RecordProducer:
            args[name] = RecordProducer(settings, "carebus-deploy-test")  # connects lazily: never here
        elif origin is not None and getattr(origin, "__name__", "") == "Callable":
            args[name] = lambda: (True, "ok")
        else:
            return None
    return args


def _routes_of(app: FastAPI) -> set[str]:
    return {path for route in app.routes if isinstance(path := getattr(route, "path", None), str)}


_ROUTE_METHODS = frozenset(
    {"get", "post", "put", "patch", "delete", "head", "options", "api_route", "add_api_route", "route"}
)


def _static_routes(package: Path) -> set[str]:
    """Routes a service package registers, read from its source: route decorators and add_api_route calls with
    a literal path, plus the routes of services.common.http.add_operational_routes when the package calls
    it."""
    routes: set[str] = set()
    for source in package.rglob("*.py"):
        tree = ast.parse(source.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = (
                func.attr
                if isinstance(func, ast.Attribute)
                else func.id
                if isinstance(func, ast.Name)
                else ""
            )
            if name == "add_operational_routes":
                app = FastAPI()
                add_operational_routes(app, Metrics(), lambda: (True, "ok"))
                routes |= _routes_of(app)
            elif (
                name in _ROUTE_METHODS
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
                and node.args[0].value.startswith("/")
            ):
                routes.add(node.args[0].value)
    return routes


def service_routes(service: str) -> tuple[set[str], str]:
    """The HTTP paths a service serves, and how they were found."""
    assert service_module_exists(service), f"services/{service}/__main__.py: every deployed service has one"
    if importlib.util.find_spec(f"services.{service}.app") is not None:
        module = importlib.import_module(f"services.{service}.app")
        factory = getattr(module, "create_app", None)
        if callable(factory):
            args = _build_args(factory)
            if args is not None:
                app = factory(**args)
                assert isinstance(app, FastAPI)
                return _routes_of(app), f"services.{service}.app.create_app()"
    return _static_routes(REPO_ROOT / "services" / service), f"route registrations in services/{service}/"


# --------------------------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class ExportedMetrics:
    labels: dict[str, frozenset[str]]  # sample name -> its label names

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.labels)


@cache
def exported_metrics() -> ExportedMetrics:
    """Every sample name a carebus service can expose on /metrics (from a real Metrics(), with the mapper's
    validation collector and the record ingestor's counters registered on it), with its labels; plus ``up``,
    which Prometheus writes for each target."""
    from services.common.fhir_validation import ValidationCollector
    from services.record.consumer import BundleIngestor

    metrics = Metrics()
    metrics.registry.register(ValidationCollector())
    ingestor = BundleIngestor(Settings(kafka_create_topics=False), None, metrics, None)  # type: ignore[arg-type]
    wrappers = [
        value
        for owner in (metrics, ingestor)
        for value in vars(owner).values()
        if isinstance(value, MetricWrapperBase)
    ]
    # prometheus_client keeps a metric's label names in _labelnames; collect() shows none before first use
    label_names = {wrapper._name: frozenset(wrapper._labelnames) for wrapper in wrappers}
    labels: dict[str, frozenset[str]] = {"up": frozenset()}
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "gauge": ("",),
        "summary": ("", "_count", "_sum", "_created"),
    }
    for family in metrics.registry.collect():
        own = (
            label_names.get(family.name)
            or label_names.get(family.name + "_total")
            or frozenset(label for sample in family.samples for label in sample.labels)  # a custom collector
        )
        for suffix in suffixes.get(family.type, ("",)):
            extra = (
                {"le"}
                if suffix == "_bucket"
                else {"quantile"}
                if family.type == "summary" and not suffix
                else set()
            )
            labels[family.name + suffix] = own | extra
    return ExportedMetrics(labels)


# --------------------------------------------------------------------------------------------- PromQL


@dataclass
class QueryUse:
    selectors: list[tuple[str | None, list[str]]] = field(
        default_factory=list
    )  # (metric name, matcher labels)
    grouping: set[str] = field(default_factory=set)  # labels in by/without/on/ignoring/group_x


GRAFANA_RANGE_VARIABLES = re.compile(
    r"\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|interval|range)\}"
)


def parse_promql(expr: str) -> Any:
    """Parse a PromQL expression; Grafana's range variables become a concrete duration first."""
    return promql_parser.parse(GRAFANA_RANGE_VARIABLES.sub("5m", expr))


def query_use(expr: str) -> QueryUse:
    use = QueryUse()

    def visit(node: Any) -> bool:
        kind = type(node).__name__
        if kind == "VectorSelector":
            use.selectors.append((node.name, [m.name for m in node.matchers.matchers]))
        elif kind == "AggregateExpr" and node.modifier is not None:
            use.grouping.update(node.modifier.labels)
        elif kind == "BinaryExpr" and node.modifier is not None:
            if node.modifier.matching is not None:
                use.grouping.update(node.modifier.matching.labels)
            use.grouping.update(node.modifier.group_labels or [])
        return True

    promql_parser.walk(parse_promql(expr), visit)
    return use


def metric_problems(expr: str) -> list[str]:
    """What in a query does not exist: unknown metric names, labels a metric does not have."""
    exported = exported_metrics()
    all_labels = frozenset().union(*exported.labels.values()) | TARGET_LABELS
    problems: list[str] = []
    use = query_use(expr)
    for name, matcher_labels in use.selectors:
        if name is None or name == "__name__":
            problems.append("selector without a literal metric name")
            continue
        if name not in exported.labels:
            problems.append(f"metric {name} is not exported by services/common/metrics.py")
            continue
        for label in matcher_labels:
            if label not in exported.labels[name] | TARGET_LABELS:
                problems.append(f"{name} has no label {label}")
    for label in use.grouping - all_labels:
        problems.append(f"no carebus metric has the label {label}")
    return problems


def dashboard_queries(dashboard: Obj) -> Iterator[tuple[str, str]]:
    """(panel title, expr) of every query of a Grafana dashboard, rows and nested panels included."""

    def panels(items: list[Obj]) -> Iterator[Obj]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if "expr" in target:
                yield panel.get("title", "?"), target["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else query or ""
        match = re.fullmatch(r"label_values\((.+),\s*\w+\)", text.strip())
        if variable.get("type") == "query" and match:
            yield f"variable {variable['name']}", match.group(1)
