"""Apache Kafka's own command-line tools beside the local broker: ``carebus kafka console-consumer ...``.

Maven resolves org.apache.kafka:kafka-tools, of the broker's version (deploy/local/kafka-tools/pom.xml), into the
git-ignored cache folder once; each call runs the tool's main class on the JVM with the arguments given, adding
``--bootstrap-server`` (carebus's Kafka: CAREBUS_KAFKA_BOOTSTRAP, else the local broker) when they have none.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from services.common.settings import REPO_ROOT

POM = REPO_ROOT / "deploy" / "local" / "kafka-tools" / "pom.xml"

TOOLS: dict[str, str] = {
    "console-consumer": "org.apache.kafka.tools.consumer.ConsoleConsumer",
    "console-producer": "org.apache.kafka.tools.ConsoleProducer",
    "consumer-groups": "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
    "topics": "org.apache.kafka.tools.TopicCommand",
}


class KafkaToolsError(RuntimeError):
    """Kafka's tools could not be provisioned or run."""


def provision(cache_dir: Path) -> Path:
    """Resolve the tools' jars into ``cache_dir/kafka-tools/libs`` (once; safe for concurrent callers: each
    resolves into a fresh folder and renames it into place). Returns the libs folder."""
    root = cache_dir.resolve() / "kafka-tools"
    libs = root / "libs"
    if (libs / ".pom").exists() and (libs / ".pom").read_bytes() == POM.read_bytes():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaToolsError("Maven ('mvn') is needed to fetch Kafka's tools; install it (apt-get install maven)")
    root.mkdir(parents=True, exist_ok=True)
    print(f"carebus: resolving Kafka's tools (org.apache.kafka:kafka-tools) from Maven Central into {libs}",
          file=sys.stderr, flush=True)
    fresh = Path(tempfile.mkdtemp(prefix="libs-", dir=root))
    result = subprocess.run(  # noqa: S603 - fixed argument list
        [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies", f"-DoutputDirectory={fresh}",
         "-DincludeScope=runtime"], capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        shutil.rmtree(fresh, ignore_errors=True)
        raise KafkaToolsError(f"Maven could not resolve kafka-tools: {result.stdout[-800:]}{result.stderr[-800:]}")
    (fresh / ".pom").write_bytes(POM.read_bytes())
    old = root / f"old-{os.getpid()}"
    if libs.exists():
        libs.rename(old)
    fresh.rename(libs)
    shutil.rmtree(old, ignore_errors=True)
    return libs


def command(tool: str, args: Sequence[str], bootstrap: str, cache_dir: Path) -> list[str]:
    """The java command line that runs one of Kafka's tools against ``bootstrap``."""
    if tool not in TOOLS:
        raise KafkaToolsError(f"unknown tool {tool}; choose {', '.join(TOOLS)}")
    java = shutil.which("java")
    if java is None:
        raise KafkaToolsError("Java 17+ is needed for Kafka's tools (apt-get install default-jre-headless)")
    libs = provision(cache_dir)
    given = list(args)
    if not any(a == "--bootstrap-server" or a.startswith("--bootstrap-server=") for a in given):
        given = ["--bootstrap-server", bootstrap, *given]
    return [java, "-Xmx256m", "-cp", f"{libs}/*", TOOLS[tool], *given]
