"""Provision and run one local Apache Kafka broker (KRaft, combined broker + controller) on loopback.

Maven resolves org.apache.kafka:kafka_2.13 and its runtime dependencies (deploy/local/kafka/pom.xml) into the
git-ignored cache folder once; a start formats KRaft storage only when ``workdir`` holds none yet and otherwise
keeps the data there (topics, records, committed offsets, SCRAM users), so a broker stopped - or killed - can be
started again on its data; it launches the JVM, waits until the broker serves requests, and stops it cleanly.
Used by the tests (once per session, on a free port; the fault suite kills it and restarts it on its data) and
by the main job (``make demo``). Delete the workdir for an empty broker.

    python -m devstack.local_broker start [--port 9092] [--workdir DIR]   # foreground, Ctrl-C stops it
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType

from services.common.settings import REPO_ROOT

POM = REPO_ROOT / "deploy" / "local" / "kafka" / "pom.xml"
LOG_CONFIG = REPO_ROOT / "deploy" / "local" / "kafka" / "log4j2.yaml"


class BrokerStartError(RuntimeError):
    """The local broker could not be provisioned or did not come up."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def provision(cache_dir: Path) -> Path:
    """Resolve the broker's jars into ``cache_dir/kafka/libs`` (once). Returns the libs folder.

    Safe when several processes share the cache (test sessions of several checkouts): one resolves at a time
    (a file lock), into a folder of its own that then replaces ``libs`` by a rename, so a broker starting
    elsewhere never sees a half-filled folder."""
    kafka_dir = cache_dir.resolve() / "kafka"
    libs = kafka_dir / "libs"
    pom_stamp = POM.read_bytes()
    if (libs / ".complete").exists() and (libs / ".complete").read_bytes() == pom_stamp:
        return libs
    kafka_dir.mkdir(parents=True, exist_ok=True)
    with (kafka_dir / ".provision.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (libs / ".complete").exists() and (libs / ".complete").read_bytes() == pom_stamp:
            return libs  # another process resolved it while this one waited
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BrokerStartError("Maven ('mvn') is needed to fetch the Kafka broker; install it "
                                   "(apt-get install maven)")
        fresh = Path(tempfile.mkdtemp(prefix="libs-", dir=kafka_dir))
        print("carebus: resolving Apache Kafka from Maven Central into", libs, file=sys.stderr, flush=True)
        result = subprocess.run(  # noqa: S603 - fixed argument list
            [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
             f"-DoutputDirectory={fresh}", "-DincludeScope=runtime"],
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            shutil.rmtree(fresh, ignore_errors=True)
            raise BrokerStartError(f"Maven could not resolve Kafka:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
        (fresh / ".complete").write_bytes(pom_stamp)
        old = kafka_dir / f"libs-old-{uuid.uuid4().hex[:8]}"
        if libs.exists():
            libs.rename(old)  # a running broker keeps its open jars; new starts see the new folder
        fresh.rename(libs)
        shutil.rmtree(old, ignore_errors=True)
    return libs


class LocalKafkaBroker:
    """One KRaft broker/controller process with its data under ``workdir``."""

    def __init__(self, cache_dir: Path, port: int | None = None, workdir: Path | None = None,
                 heap: str = "768m", scram_users: dict[str, str] | None = None) -> None:
        self.cache_dir = cache_dir.resolve()
        self.port = port or free_port()
        self.controller_port = free_port()
        # With scram_users, a second listener speaks SASL_PLAINTEXT with SCRAM-SHA-512 for those users.
        self.scram_users = scram_users or {}
        self.sasl_port = free_port() if self.scram_users else None
        self.workdir = workdir or cache_dir / "kafka" / f"run-{self.port}"
        self.heap = heap
        self._process: subprocess.Popen[bytes] | None = None
        self._libs = cache_dir.resolve() / "kafka" / "libs"
        self.reused = False  # the last start found data in workdir and kept it

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def sasl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.sasl_port}"

    def _listener_lines(self) -> list[str]:
        listeners = [f"PLAINTEXT://127.0.0.1:{self.port}", f"CONTROLLER://127.0.0.1:{self.controller_port}"]
        advertised = [f"PLAINTEXT://127.0.0.1:{self.port}"]
        protocols = "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
        extra: list[str] = []
        if self.sasl_port is not None:
            listeners.append(f"SASL_PLAINTEXT://127.0.0.1:{self.sasl_port}")
            advertised.append(f"SASL_PLAINTEXT://127.0.0.1:{self.sasl_port}")
            protocols += ",SASL_PLAINTEXT:SASL_PLAINTEXT"
            extra = [
                "sasl.enabled.mechanisms=SCRAM-SHA-512",
                "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config="
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            ]
        return [f"listeners={','.join(listeners)}", f"advertised.listeners={','.join(advertised)}",
                f"listener.security.protocol.map={protocols}", *extra]

    def _write_config(self) -> Path:
        data_dir = self.workdir / "data"
        config = self.workdir / "server.properties"
        config.write_text(
            "\n".join([
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                *self._listener_lines(),
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                f"log.dirs={data_dir}",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=6",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=false",
                "num.partitions=6",
                "",
            ])
        )
        return config

    def _java(self, libs: Path, *args: str) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise BrokerStartError("Java 17+ is needed for the Kafka broker (apt-get install default-jre-headless)")
        return [java, f"-Xmx{self.heap}", f"-Xms{self.heap}", "-XX:+UseG1GC",
                f"-Dlog4j2.configurationFile={LOG_CONFIG}", f"-Dkafka.logs.dir={self.workdir / 'logs'}",
                "-cp", f"{libs}/*", *args]

    @property
    def formatted(self) -> bool:
        """The workdir holds formatted KRaft storage (a broker ran here before)."""
        return (self.workdir / "data" / "meta.properties").is_file()

    def start(self, timeout_s: float = 90.0) -> LocalKafkaBroker:
        """Start on the data in ``workdir`` (``reused`` is then True), formatting it first when there is none."""
        libs = provision(self.cache_dir)
        self._libs = libs
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        config = self._write_config()  # this start's ports; the data does not depend on them
        self.reused = self.formatted
        if self.reused:
            return self.resume(timeout_s)
        cluster_id = _kafka_uuid()
        scram = [arg for user, password in self.scram_users.items()
                 for arg in ("--add-scram", f"SCRAM-SHA-512=[name={user},password={password}]")]
        fmt = subprocess.run(  # noqa: S603
            self._java(libs, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(config),
                       *scram),
            capture_output=True, text=True, check=False,
        )
        if fmt.returncode != 0:
            raise BrokerStartError(f"formatting KRaft storage failed: {fmt.stdout[-1000:]}{fmt.stderr[-1000:]}")
        return self.resume(timeout_s)

    def resume(self, timeout_s: float = 90.0) -> LocalKafkaBroker:
        """Start the JVM again on the same ports and data (after :meth:`stop`), and wait until it serves."""
        stdout = (self.workdir / "logs" / "stdout.log").open("ab")
        self._process = subprocess.Popen(  # noqa: S603
            self._java(self._libs, "kafka.Kafka", str(self.workdir / "server.properties")),
            stdout=stdout, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.wait_until_serving(timeout_s)
        return self

    def wait_until_serving(self, timeout_s: float) -> None:
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise BrokerStartError(f"broker exited with {self._process.returncode}; see {self.workdir}/logs")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
                admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
                try:
                    admin.list_topics()
                    return
                finally:
                    admin.close()
            except (OSError, KafkaError):
                time.sleep(0.3)
        raise BrokerStartError(f"broker did not serve on {self.bootstrap} within {timeout_s:.0f}s")

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None and self._process.poll() is None else None

    def kill(self) -> None:
        """SIGKILL the broker (a crash: no clean shutdown, the data stays as it is on disk)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def stop(self, timeout_s: float = 30.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> LocalKafkaBroker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _kafka_uuid() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding."""
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def main(argv: list[str] | None = None) -> None:
    from services.common.settings import Settings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["provision", "start"])
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the broker keeps its data (kept across starts; default .cache/kafka/run-<port>)")
    args = parser.parse_args(argv)
    settings = Settings()
    if args.command == "provision":
        print(provision(settings.cache_dir))
        return
    broker = LocalKafkaBroker(settings.cache_dir, port=args.port or settings.local_kafka_port, workdir=args.workdir)
    broker.start()
    kept = "on the data kept in" if broker.reused else "on new storage in"
    print(f"carebus: Kafka broker serving on {broker.bootstrap} {kept} {broker.workdir} (Ctrl-C stops it)", flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with contextlib.suppress(KeyboardInterrupt):
        signal.pause()
    broker.stop()


if __name__ == "__main__":
    main()
