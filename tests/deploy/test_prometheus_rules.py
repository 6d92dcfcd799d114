"""deploy/prometheus/carebus-rules.yaml through Prometheus's own promtool: `check rules`, and `test rules` with
deploy/prometheus/carebus-rules.test.yaml, in which every alert fires on the series that should fire it and stays
silent on others (its labels and rendered annotations compared exactly)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from services.common.settings import REPO_ROOT
from tests.tools import promtool

PROMETHEUS = REPO_ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS / "carebus-rules.yaml"
RULE_TESTS = PROMETHEUS / "carebus-rules.test.yaml"


def _promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603  # promtool from Debian's prometheus package, fixed arguments
        [str(promtool()), *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def _alerts() -> set[str]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}


def test_promtool_checks_the_rules() -> None:
    result = _promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in result.stdout


def test_promtool_rule_unit_tests_pass() -> None:
    result = _promtool("test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_test_where_it_fires_and_one_where_it_is_silent() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))["tests"]
    fires: set[str] = set()
    silent: set[str] = set()
    for test in tests:
        for case in test.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    assert _alerts() - fires == set(), "alerts without a test in which they fire"
    assert _alerts() - silent == set(), "alerts without a test in which they stay silent"


def test_the_rule_tests_catch_a_changed_threshold(tmp_path: Path) -> None:
    # the same tests against rules whose dead-letter ratio threshold was raised from 5% to 50% must fail
    rules = RULES.read_text(encoding="utf-8")
    assert rules.count("> 0.05\n        for: 15m") == 1
    (tmp_path / RULES.name).write_text(rules.replace("> 0.05\n        for: 15m", "> 0.5\n        for: 15m"))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = _promtool("test", "rules", tmp_path / RULE_TESTS.name)
    assert result.returncode != 0
    assert "CarebusDeadLetterRatioHigh" in result.stdout + result.stderr
