"""Every label rule is a named function in services/common/fhir/labels.py; its documented table
(docs/security-labels.md) is generated from labels.RULES and checked against the code here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from services.common.fhir import labels
from services.common.fhir.__main__ import DOC

ROOT = Path(__file__).resolve().parents[2]
NOT_RULES = {"combine", "ingredients_of", "rules_table"}  # helpers, not rules


def test_the_documented_table_is_generated_from_the_rules() -> None:
    assert DOC.read_text() == labels.rules_table(), "run: python -m services.common.fhir"


@pytest.mark.parametrize("rule", labels.RULES, ids=lambda rule: f"{rule.rule.__name__}{rule.example!r}"[:60])
def test_each_row_of_the_table_is_what_its_rule_decides(rule: labels.LabelRule) -> None:
    assert set(rule.rule(*rule.example)) == set(rule.labels)


def test_every_rule_function_is_in_the_table() -> None:
    functions = {name for name, value in vars(labels).items()
                 if callable(value) and not name.startswith("_") and name.endswith("_labels")
                 and getattr(value, "__module__", None) == labels.__name__} - NOT_RULES
    assert functions == {rule.rule.__name__ for rule in labels.RULES}


def test_the_label_sets_are_not_decided_outside_labels_py() -> None:
    """Family modules call a named rule; none picks PSY / PART2 / ETHUD itself (the AUDIT-C rule once)."""
    found = []
    for path in sorted((ROOT / "services/mapper").rglob("*.py")):
        if path.name == "labels.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in {"PSY", "PART2", "ETHUD", "PSYCHIATRIC"}:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: .{node.attr}")
            if isinstance(node, ast.Constant) and node.value in {"audit-c"} and path.name != "instruments.py":
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: 'audit-c'")
    assert found == []


def test_refused_psychotherapy_notes_are_recognised_from_a_label_or_a_name() -> None:
    assert labels.refused_labels((), "Psychotherapy Note") == labels.PSYCHOTHERAPY_NOTE
    assert labels.refused_labels(("R", "PSY")) == ()
