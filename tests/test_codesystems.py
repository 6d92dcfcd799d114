"""Every code-system / identifier-system URI is written once, in services/common/fhir/codesystems.py."""

from __future__ import annotations

import ast
from pathlib import Path

from services.common.fhir import codesystems

ROOT = Path(__file__).resolve().parents[1]
HOME = ROOT / "services/common/fhir/codesystems.py"
KNOWN = {value for name, value in vars(codesystems).items()
         if name.isupper() and isinstance(value, str) and value != codesystems.CAREBUS_PREFIX}
# families of code systems: a literal starting with one of these names a code system whatever follows
FAMILIES = ("http://terminology.hl7.org/CodeSystem/", "urn:carebus:codesystem:")


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def code_system_literal(text: str) -> bool:
    if text.startswith(FAMILIES):
        return True
    return any(text == uri or text.startswith((uri + "|", uri + "/")) for uri in KNOWN)


def offending_literals() -> list[str]:
    found = []
    for path in sorted((ROOT / "services").rglob("*.py")):
        if path == HOME:
            continue
        tree = ast.parse(path.read_text(), str(path))
        docstrings = _docstrings(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                    and code_system_literal(node.value)):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value}")
    return found


def test_no_code_system_uri_is_written_outside_codesystems() -> None:
    assert offending_literals() == []


def test_the_check_recognises_a_code_system_literal() -> None:
    assert code_system_literal(codesystems.SNOMED)
    assert code_system_literal(codesystems.V3_ACT_CODE + "|PSY")
    assert code_system_literal("http://terminology.hl7.org/CodeSystem/v2-")
    assert code_system_literal("urn:carebus:codesystem:anything-new")
    assert not code_system_literal("http://hl7.org/fhir/us/core/StructureDefinition/us-core-provenance")
    assert not code_system_literal("urn:carebus:source:riverside-primary-care")


def test_v2_table_systems() -> None:
    assert codesystems.v2_table("0203") == codesystems.V2_0203
