"""Where the ecosystem tools the suite checks carebus's contracts with are installed: kustomize, promtool, the
Strimzi CRDs and the AsyncAPI parser, all put in place by deploy/local/tools.sh (`make tools`, which `make test`
runs first). A missing tool fails the test that needs it, with the command that installs it: never a skip."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from services.common.settings import REPO_ROOT

TOOLS = REPO_ROOT / ".cache" / "tools"
INSTALL = "run `make tools` (deploy/local/tools.sh)"


def kustomize() -> Path:
    path = TOOLS / "bin" / "kustomize"
    if not path.exists():
        pytest.fail(f"kustomize is not installed in {path.parent}: {INSTALL}")
    return path


def promtool() -> Path:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(f"promtool is not installed: {INSTALL}")
    return Path(found)


def strimzi_crds() -> Path:
    folder = TOOLS / "strimzi-crds"
    if not (folder / "kafka.yaml").exists():
        pytest.fail(f"the Strimzi CRDs are not in {folder}: {INSTALL}")
    return folder


def asyncapi_parser() -> Path:
    modules = TOOLS / "asyncapi" / "node_modules"
    if not (modules / "@asyncapi" / "parser").is_dir():
        pytest.fail(f"@asyncapi/parser is not installed in {modules}: {INSTALL}")
    return modules
