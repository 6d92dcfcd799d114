"""The container image (Dockerfile, .dockerignore). Docker cannot run here: these check what the build would
do, and that the image agrees with the Kubernetes manifests."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest
from setuptools import find_namespace_packages, find_packages

from services.common.settings import REPO_ROOT
from tests.deploy.helpers import ALL_KUSTOMIZATIONS, SERVICES, deployment_of, render

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            instruction, _, args = stripped.partition(" ")
            out.append((instruction.upper(), args.strip()))
    return out


def _final_stage() -> list[tuple[str, str]]:
    instructions = _instructions()
    last_from = max(i for i, (instruction, _) in enumerate(instructions) if instruction == "FROM")
    return instructions[last_from:]


def test_every_stage_builds_from_python_311_slim() -> None:
    bases = [args.split()[0] for instruction, args in _instructions() if instruction == "FROM"]
    assert bases and all(base == "python:3.11-slim" for base in bases)
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["requires-python"] == ">=3.11"


def test_image_installs_the_project_from_pyproject() -> None:
    runs = " ".join(args for instruction, args in _instructions() if instruction == "RUN")
    assert re.search(r"pip install (--\S+ )*\.(\s|$)", runs), "pip install . (not editable, not -r)"
    copies = [args for instruction, args in _instructions() if instruction == "COPY"]
    assert any("pyproject.toml" in c for c in copies) and any(c.startswith("services ") for c in copies)


def test_image_runs_as_the_non_root_user_the_pods_expect() -> None:
    final = _final_stage()
    users = [args for instruction, args in final if instruction == "USER"]
    assert users, "the final stage must switch to a non-root USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) == 10001 and (not gid or int(gid) == 10001)
    assert any(instruction == "RUN" and "--uid 10001" in args for instruction, args in final)
    for name in ALL_KUSTOMIZATIONS:
        for service in SERVICES:
            pod = deployment_of(render(name), service)["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsUser"] == int(uid)  # numeric: runAsNonRoot can verify it


def test_default_command_and_the_deployments_start_a_service_module() -> None:
    cmd = [args for instruction, args in _final_stage() if instruction == "CMD"]
    assert cmd == ['["python", "-m", "services.intake"]']
    env = " ".join(args for instruction, args in _final_stage() if instruction == "ENV")
    assert "CAREBUS_HTTP_HOST=0.0.0.0" in env
    for service in SERVICES:
        assert (REPO_ROOT / "services" / service).is_dir() or service == "record"


def test_everything_under_services_is_in_the_wheel() -> None:
    # pyproject's [tool.setuptools] decides what `pip install .` copies into the image: every folder of
    # modules must be found as a package, and a data file (JSON, YAML, ...) must be declared as package data,
    # or the service works from the source tree and fails in the image.
    setuptools_config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
        "setuptools"
    ]
    find = setuptools_config["packages"]["find"]
    finder = find_namespace_packages if find.get("namespaces", True) else find_packages
    packages = set(finder(where=str(REPO_ROOT), include=find["include"], exclude=find.get("exclude", ())))
    files = [
        path.relative_to(REPO_ROOT)
        for path in (REPO_ROOT / "services").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".so"  # .so: setup.py builds them
    ]
    unpackaged = sorted(
        str(f) for f in files if f.suffix == ".py" and ".".join(f.parent.parts) not in packages
    )
    assert not unpackaged, f"modules outside any packaged package: {unpackaged}"
    package_data: dict[str, list[str]] = setuptools_config.get("package-data", {})
    for data_file in (f for f in files if f.suffix not in (".py", ".pyc", ".md")):  # docs stay in git
        package = ".".join(data_file.parent.parts)
        patterns = [*package_data.get(package, []), *package_data.get("*", [])]
        assert any(fnmatch(data_file.name, pattern) for pattern in patterns), (
            f"{data_file} is not declared in [tool.setuptools.package-data]: the image would not have it"
        )


def test_image_writes_only_under_tmp() -> None:
    env = " ".join(args for instruction, args in _final_stage() if instruction == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    cache_dir = re.search(r"CAREBUS_CACHE_DIR=(\S+)", env)
    assert cache_dir and Path(cache_dir.group(1)).is_relative_to("/tmp")  # noqa: S108


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        ".venv/bin/python",
        ".cache/kafka",
        "tests/conftest.py",
        "deploy/k8s/base/kustomization.yaml",
        "services/__pycache__/x.pyc",
        "services/common/hl7v2/er7.cpython-311-x86_64-linux-gnu.so",  # the host's build: the image compiles its own
    ],
)
def test_dockerignore_keeps_the_context_small(path: str) -> None:
    assert _ignored(path)


@pytest.mark.parametrize(
    "path", ["pyproject.toml", "setup.py", "README.md", "services/intake/app.py", "services/common/settings.py"]
)
def test_dockerignore_keeps_what_the_build_copies(path: str) -> None:
    assert not _ignored(path)


def _ignored(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; '!' re-includes; a pattern matching a parent folder
    matches everything below it."""
    ignored = False
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        if _matches(pattern.rstrip("/"), path):
            ignored = not negate
    return ignored


def _matches(pattern: str, path: str) -> bool:
    regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
    parts = path.split("/")
    return any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1))


DEV_TOOLING = ("devstack/__main__.py", "devstack/journey.py", "devstack/local_broker.py", "devstack/local_postgres.py",
               "devstack/hospital_feed.py", "devstack/webhook_receiver.py")


def test_demo_and_dev_tooling_are_not_in_the_product_package_or_image() -> None:
    for path in DEV_TOOLING:
        assert (REPO_ROOT / path).is_file(), path  # the tooling exists, beside the product
    find = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"][
        "find"]
    finder = find_namespace_packages if find.get("namespaces", True) else find_packages
    packages = set(finder(where=str(REPO_ROOT), include=find["include"], exclude=find.get("exclude", ())))
    assert "services" in packages and not {p for p in packages if not p.startswith("services")}
    copied = [args.split()[0] for instruction, args in _instructions()
              if instruction == "COPY" and "--from" not in args]
    assert "devstack" not in copied and _ignored("devstack/journey.py")
    leftovers = {"stack", "journey", "local_broker", "local_postgres", "bench"}
    shipped = [p for p in (REPO_ROOT / "services").rglob("*.py") if p.stem in leftovers or "stack" in p.parent.parts]
    assert not shipped, f"dev tooling inside the product package: {shipped}"


def test_the_product_imports_dev_tooling_only_lazily_in_the_cli() -> None:
    # a module-level import of devstack would fail in the image; only the CLI's development commands (inside a
    # function) may reach it
    naming = [p for p in (REPO_ROOT / "services").rglob("*.py") if "devstack" in p.read_text(encoding="utf-8")]
    assert [p.relative_to(REPO_ROOT).as_posix() for p in naming] == ["services/operator/cli.py"]
    for node in ast.parse(naming[0].read_text(encoding="utf-8")).body:
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
            [a.name for a in node.names] if isinstance(node, ast.Import) else []
        assert not [n for n in names if n.split(".")[0] == "devstack"], names


def test_the_product_runs_without_the_dev_tooling(tmp_path: Path) -> None:
    # what the image holds, services/ alone: every service's entry module imports, and the CLI's development
    # commands answer in one line that they need a source checkout
    shutil.copytree(REPO_ROOT / "services", tmp_path / "services",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.md"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREBUS_")} | {"PYTHONPATH": str(tmp_path)}
    services = ", ".join(f'"services.{s}.__main__"' for s in ("intake", "mapper", "record", "notify", "outcomes",
                                                              "general"))
    probe = (f"import importlib, sys; [importlib.import_module(m) for m in ({services})]; "
             "assert not [m for m in sys.modules if m.startswith('devstack')]; "
             "import services.operator.cli as cli; assert not cli.REPO_ROOT.joinpath('devstack').exists(); "
             "cli.app(['send-sample'])")
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,  # noqa: S603
                            timeout=120, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "`carebus send-sample` is a development tool" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
