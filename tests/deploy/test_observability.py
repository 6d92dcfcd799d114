"""The Grafana dashboard and the Prometheus alerting rules query only what carebus exports."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from services.common.settings import REPO_ROOT
from tests.deploy.helpers import dashboard_queries, exported_metrics, metric_problems, parse_promql, query_use

DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "carebus-dashboard.json"
RULES = REPO_ROOT / "deploy" / "prometheus" / "carebus-rules.yaml"
Obj = dict[str, Any]


def _dashboard() -> Obj:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _rules() -> list[Obj]:
    data = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"]]


def _all_panels(items: list[Obj]) -> list[Obj]:
    out: list[Obj] = []
    for panel in items:
        out.append(panel)
        out.extend(_all_panels(panel.get("panels", [])))
    return out


# --------------------------------------------------------------------------------------------- the checker


def test_exported_metrics_come_from_a_real_metrics_registry() -> None:
    exported = exported_metrics()
    assert "carebus_events_accepted_total" in exported.names
    assert "carebus_events_accepted" not in exported.names  # a counter is exposed with _total only
    assert {
        "carebus_end_to_end_latency_seconds_bucket",
        "carebus_end_to_end_latency_seconds_count",
        "carebus_end_to_end_latency_seconds_sum",
    } <= exported.names
    assert "carebus_end_to_end_latency_seconds" not in exported.names
    assert exported.labels["carebus_consumer_lag_records"] == {"topic", "partition"}
    assert exported.labels["carebus_http_request_duration_seconds_bucket"] == {"route", "status", "le"}


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("rate(carebus_events_accepted[5m])", "metric carebus_events_accepted is not exported"),
        ('carebus_consumer_lag_records{group="x"}', "carebus_consumer_lag_records has no label group"),
        ("sum by (patient) (carebus_safety_alerts_total)", "no carebus metric has the label patient"),
        (
            "histogram_quantile(0.9, rate(carebus_processing_duration_seconds[5m]))",
            "metric carebus_processing_duration_seconds is not exported",
        ),
    ],
)
def test_the_checker_finds_unknown_metrics_and_labels(expr: str, problem: str) -> None:
    assert any(p.startswith(problem) for p in metric_problems(expr)), metric_problems(expr)


# --------------------------------------------------------------------------------------------- dashboard


def test_dashboard_is_an_importable_grafana_dashboard() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    assert dashboard.get("id") is None, "an exported dashboard carries no database id"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = _all_panels(dashboard["panels"])
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24 and pos["h"] > 0
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], f"panel {panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_dashboard_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in _all_panels(_dashboard()["panels"]):
        pos = panel["gridPos"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


@pytest.mark.parametrize(("title", "expr"), list(dashboard_queries(_dashboard())))
def test_dashboard_queries_use_exported_metrics(title: str, expr: str) -> None:
    parse_promql(expr)  # raises on a syntax error
    assert metric_problems(expr) == [], title


def test_dashboard_covers_the_golden_signals() -> None:
    dashboard = _dashboard()
    used = {name for _, expr in dashboard_queries(dashboard) for name, _ in query_use(expr).selectors}
    # every metric a service exports is shown somewhere (histograms through their buckets)
    exported = {
        name for name in exported_metrics().names if not name.endswith(("_created", "_sum", "_count"))
    }
    assert exported - used == set(), "show these metrics in deploy/grafana/carebus-dashboard.json"
    types = {p["type"] for p in _all_panels(dashboard["panels"])}
    assert {"timeseries", "heatmap", "stat"} <= types
    heatmaps = [p for p in _all_panels(dashboard["panels"]) if p["type"] == "heatmap"]
    for panel in heatmaps:
        assert all(t.get("format") == "heatmap" and "_bucket" in t["expr"] for t in panel["targets"])
    quantile_exprs = [expr for _, expr in dashboard_queries(dashboard) if "histogram_quantile" in expr]
    for metric in (
        "carebus_http_request_duration_seconds",
        "carebus_processing_duration_seconds",
        "carebus_end_to_end_latency_seconds",
    ):
        assert any(f"{metric}_bucket" in expr for expr in quantile_exprs), f"no quantiles of {metric}"
    jobs = {m for _, expr in dashboard_queries(dashboard) for m in re.findall(r'job="(carebus-\w+)"', expr)}
    assert {"carebus-intake", "carebus-record"} <= jobs


# --------------------------------------------------------------------------------------------- alert rules


def test_rules_file_is_well_formed() -> None:
    rules = _rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "alert names must be unique"
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


@pytest.mark.parametrize("rule", _rules(), ids=lambda rule: rule["alert"])
def test_rule_queries_use_exported_metrics(rule: Obj) -> None:
    parse_promql(rule["expr"])
    assert metric_problems(rule["expr"]) == []
    # annotations only use labels the result can carry
    grouping = query_use(rule["expr"]).grouping
    for text in rule["annotations"].values():
        for label in re.findall(r"\$labels\.(\w+)", text):
            selector_labels = {
                lbl
                for name, _ in query_use(rule["expr"]).selectors
                if name
                for lbl in exported_metrics().labels.get(name, frozenset())
            }
            assert label in grouping or (
                not grouping and label in selector_labels | {"job", "pod", "instance"}
            ), f"{rule['alert']}: $labels.{label} is aggregated away"


def test_rules_cover_the_required_alerts() -> None:
    rules = _rules()

    def using(metric: str) -> list[str]:
        return [
            r["alert"] for r in rules if any(name == metric for name, _ in query_use(r["expr"]).selectors)
        ]

    assert using("carebus_dead_letters_total"), "dead letters rising"
    assert using("carebus_consumer_lag_records"), "consumer lag growing"
    assert using("carebus_kafka_produce_errors_total"), "Kafka produce errors / delivery failures"
    assert using("carebus_events_accepted_total"), "no events accepted"
    assert using("up"), "service down"
    alerts_on_safety_lag = [
        r
        for r in rules
        if "carebus_consumer_lag_records" in r["expr"]
        and "alerts" in r["expr"]
        and r["labels"]["severity"] == "critical"
    ]
    assert alerts_on_safety_lag, "safety alerts raised but not consumed (lag on the alerts topic)"
    for rule in alerts_on_safety_lag:
        minutes = int(rule["for"][:-1]) * {"s": 1 / 60, "m": 1, "h": 60}[rule["for"][-1]]
        assert minutes <= 10, "safety alerts must page within minutes"
