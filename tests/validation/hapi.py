"""The HL7 FHIR reference validator (HAPI FHIR validation 8.8.1, R4 core + US Core 6.1.0) and the HAPI FHIR generic
client (hapi-fhir-client 8.8.1), provisioned by the project as the Kafka broker is, and run in one JVM.

Maven resolves deploy/local/validator/pom.xml into the git-ignored cache (``.cache/validator/libs-<POM hash>``)
once; javac compiles the project's entry points (deploy/local/validator/*.java) against it into
``.cache/validator/classes-<hash>``; each POM / source version has folders of its own, so worktrees and runs of
different versions never remove each other's jars. One JVM then validates every ``*.json`` file of a folder (one
resource each) and writes JSON results (see CarebusValidator.java's header); given a live record API
(``ClientCheck``), the same JVM first runs the generic client against it (CarebusClientCheck.java).

    python -m tests.validation.hapi FOLDER [FOLDER_OR_FILE ...]   # validate resources, print the findings

Dev and test tooling: not part of the product package.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from services.common.settings import REPO_ROOT

VALIDATOR_DIR = REPO_ROOT / "deploy" / "local" / "validator"
POM = VALIDATOR_DIR / "pom.xml"
SOURCES = tuple(sorted(VALIDATOR_DIR.glob("*.java")))
US_CORE = REPO_ROOT / "tests" / "samples" / "us-core-6.1.0"
HEAP = "1536m"


class ValidatorError(RuntimeError):
    """The validator could not be provisioned or did not complete a run."""


@dataclass(frozen=True)
class ClientCheck:
    """A live record API for the HAPI generic client: its base URL, a bearer token (passed in the environment),
    the Patient to read, and the page size of the paged search. Results go to ``out``."""

    base_url: str
    token: str
    patient_id: str
    page_size: int
    out: Path


@dataclass(frozen=True)
class Finding:
    location: str
    message: str
    message_id: str


@dataclass(frozen=True)
class Result:
    """What the validator said about one resource file."""

    file: str
    errors: tuple[Finding, ...]
    warnings: tuple[Finding, ...]
    information: int


def _stamp(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def provision(cache_dir: Path) -> tuple[Path, Path]:
    """Resolve the jars and compile the entry points (once per POM / sources). Returns (libs, classes)."""
    root = cache_dir.resolve() / "validator"
    libs_stamp, classes_stamp = _stamp(POM), _stamp(POM, *SOURCES)
    libs, classes = root / f"libs-{libs_stamp[:12]}", root / f"classes-{classes_stamp[:12]}"
    libs_marker, classes_marker = libs / ".complete", classes / ".complete"
    if not (libs_marker.exists() and libs_marker.read_text() == libs_stamp):
        mvn = shutil.which("mvn")
        if mvn is None:
            raise ValidatorError("Maven ('mvn') is needed to fetch the HL7 validator (deploy/local/bootstrap.sh)")
        if libs.exists():
            shutil.rmtree(libs)
        libs.mkdir(parents=True)
        print("carebus: resolving the HL7 FHIR validator (HAPI 8.8.1) from Maven Central into", libs,
              file=sys.stderr, flush=True)
        result = subprocess.run(  # noqa: S603 - fixed argument list
            [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies", f"-DoutputDirectory={libs}",
             "-DincludeScope=runtime"], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ValidatorError(f"Maven could not resolve the validator:\n{result.stdout[-2000:]}"
                                 f"{result.stderr[-2000:]}")
        libs_marker.write_text(libs_stamp)
    if not (classes_marker.exists() and classes_marker.read_text() == classes_stamp):
        javac = shutil.which("javac")
        if javac is None:
            raise ValidatorError("javac (a JDK 17+) is needed to build the validator's entry point")
        if classes.exists():
            shutil.rmtree(classes)
        classes.mkdir(parents=True)
        result = subprocess.run(  # noqa: S603
            [javac, "-nowarn", "-d", str(classes), "-cp", f"{libs}/*", *map(str, SOURCES)],
            capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ValidatorError(f"javac could not compile {[s.name for s in SOURCES]}:\n{result.stderr[-3000:]}")
        classes_marker.write_text(classes_stamp)
    return libs, classes


def validate_folder(folder: Path, cache_dir: Path, conformance: Path = US_CORE,
                    timeout_s: float = 600.0, client: ClientCheck | None = None) -> list[Result]:
    """Validate every ``*.json`` resource in ``folder`` in one JVM; results in file-name order. With ``client``,
    the same JVM first runs the HAPI generic client against that record API (its results: ``client.out``)."""
    libs, classes = provision(cache_dir)
    java = shutil.which("java")
    if java is None:
        raise ValidatorError("Java 17+ is needed for the HL7 validator")
    out = folder.parent / f"{folder.name}-results.json"
    command = [java, f"-Xmx{HEAP}", "-XX:+UseSerialGC", "-Xss4m", "-cp", f"{libs}/*:{classes}", "CarebusValidator",
               str(conformance), str(folder), str(out)]
    environment = dict(os.environ)
    if client is not None:
        command += ["--client", client.base_url, client.patient_id, str(client.page_size), str(client.out)]
        environment["CAREBUS_CLIENT_TOKEN"] = client.token
    result = subprocess.run(  # noqa: S603
        command, stdout=subprocess.PIPE, stderr=None, text=True, check=False, timeout=timeout_s, env=environment)
    if result.returncode != 0 or not out.exists():
        raise ValidatorError(f"the validator failed (exit {result.returncode}): {result.stdout[-2000:]}")
    return [_result(item) for item in json.loads(out.read_text(encoding="utf-8"))]


def _findings(items: list[dict[str, str | None]]) -> tuple[Finding, ...]:
    return tuple(Finding(item.get("location") or "", item.get("message") or "", item.get("messageId") or "")
                 for item in items)


def _result(item: dict[str, object]) -> Result:
    errors, warnings = item["errors"], item["warnings"]
    assert isinstance(errors, list) and isinstance(warnings, list)
    information = item["information"]
    assert isinstance(information, int)
    return Result(str(item["file"]), _findings(errors), _findings(warnings), information)


def _main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="resource files (.json) or folders of them; "
                        "a Bundle is split into its entries")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "resources"
        folder.mkdir()
        count = 0
        files = [p for path in args.paths for p in (sorted(path.glob("*.json")) if path.is_dir() else [path])]
        for path in files:
            resource = json.loads(path.read_text(encoding="utf-8"))
            parts = [e["resource"] for e in resource.get("entry", []) if "resource" in e] \
                if resource.get("resourceType") == "Bundle" else [resource]
            for part in parts:
                count += 1
                (folder / f"{count:05d}-{path.stem}-{part.get('resourceType')}.json").write_text(json.dumps(part))
        results = validate_folder(folder, REPO_ROOT / ".cache")
    messages: Counter[str] = Counter()
    for result in results:
        for finding in result.errors:
            print(f"ERROR   {result.file}  {finding.location}: {finding.message}")
        for finding in result.warnings:
            messages[finding.message_id] += 1
    print(f"{len(results)} resources: {sum(len(r.errors) for r in results)} errors, "
          f"{sum(len(r.warnings) for r in results)} warnings ({dict(messages.most_common(8))})")
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(_main())
