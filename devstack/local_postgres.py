"""Run a throw-away local PostgreSQL (for the record store's tests, benchmark and local development).

``initdb`` into a fresh temporary folder, ``pg_ctl start`` on a free port on 127.0.0.1 with its unix socket in
that folder, trust authentication for the ``carebus`` role, and ``pg_ctl stop`` + removal at the end.
PostgreSQL refuses to run as root: when this process is root, the server runs as the ``postgres`` system user
(or ``nobody``), which owns the folder. Binaries: ``$CAREBUS_PG_BIN``, else the newest
/usr/lib/postgresql/*/bin, else ``pg_ctl`` on PATH (deploy/local/bootstrap.sh installs them).

    python -m devstack.local_postgres    # foreground; prints the DSN; Ctrl-C stops and removes it
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

ROLE = "carebus"


class PostgresStartError(RuntimeError):
    """The local PostgreSQL could not be set up or did not start."""


def find_bin_dir() -> Path:
    configured = os.environ.get("CAREBUS_PG_BIN")
    if configured:
        return Path(configured)
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if candidates:
        return candidates[-1].parent
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).parent
    raise PostgresStartError("PostgreSQL not found: run deploy/local/bootstrap.sh or set CAREBUS_PG_BIN")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_user() -> pwd.struct_passwd | None:
    """The unprivileged account to run the server as, or None when this process is not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise PostgresStartError("running as root and neither a 'postgres' nor a 'nobody' account exists")


class LocalPostgres:
    """One PostgreSQL cluster in a temporary folder. ``durable=False`` turns fsync off (tests only)."""

    def __init__(self, durable: bool = False, bin_dir: Path | None = None) -> None:
        self.bin_dir = bin_dir or find_bin_dir()
        self.durable = durable
        self.port = 0
        self.workdir: Path | None = None
        self._options: list[str] = []
        self._user = _server_user()

    @property
    def data_dir(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "data"

    def dsn(self, database: str = "postgres", **options: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in options.items())
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{database}" + (f"?{query}" if query else "")

    def _run(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {}
        if self._user is not None:
            kwargs = {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LC_ALL": "C",
            "LANG": "C",
            "HOME": str(self.workdir),
        }
        return subprocess.run(  # noqa: S603 - fixed binaries, arguments built here
            list(args),
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
            env=env,
            cwd=str(self.workdir),
            **kwargs,
        )

    def start(self, attempts: int = 3) -> LocalPostgres:
        base = "/tmp" if Path("/tmp").is_dir() else None  # noqa: S108 - short path: unix sockets max ~107 bytes
        self.workdir = Path(tempfile.mkdtemp(prefix="carebus-pg-", dir=base))
        if self._user is not None:
            os.chown(self.workdir, self._user.pw_uid, self._user.pw_gid)
        init = self._run(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            ROLE,
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        if init.returncode != 0:
            raise PostgresStartError(f"initdb failed: {init.stderr[-1500:]}")
        self._options = [
            "-c listen_addresses=127.0.0.1",
            f"-k {self.workdir}",
            "-c max_connections=200",
            "-c shared_buffers=128MB",
        ]
        if not self.durable:
            self._options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        last = ""
        for _ in range(attempts):
            self.port = _free_port()
            started = self._pg_ctl_start()
            if started.returncode == 0:
                atexit.register(self.stop)  # also when the caller forgets (or dies of an exception)
                return self
            last = started.stderr[-1000:] + self._log_tail()
        raise PostgresStartError(f"pg_ctl start failed: {last}")

    def _pg_ctl_start(self) -> subprocess.CompletedProcess[str]:
        assert self.workdir is not None
        return self._run(
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-l",
            str(self.workdir / "server.log"),
            "-w",
            "-t",
            "60",
            "-o",
            " ".join([f"-p {self.port}", *self._options]),
            "start",
        )

    def halt(self, mode: str = "immediate") -> None:
        """Stop the server and keep its data (``immediate``: like a crash, recovery at the next start)."""
        stopped = self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop",
                            timeout=60)
        if stopped.returncode != 0:
            raise PostgresStartError(f"pg_ctl stop failed: {stopped.stderr[-1000:]}")

    def resume(self) -> LocalPostgres:
        """Start the server again on its data and port (after :meth:`halt`)."""
        started = self._pg_ctl_start()
        if started.returncode != 0:
            raise PostgresStartError(f"pg_ctl start failed: {started.stderr[-1000:]}{self._log_tail()}")
        return self

    def _log_tail(self) -> str:
        log = (self.workdir or Path(".")) / "server.log"
        return log.read_text(errors="replace")[-1500:] if log.exists() else ""

    def stop(self) -> None:
        workdir = self.workdir
        if workdir is None:
            return
        try:
            if (workdir / "data" / "postmaster.pid").exists():
                self._run(
                    str(self.bin_dir / "pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-m",
                    "fast",
                    "-w",
                    "stop",
                    timeout=60,
                )
        finally:
            self.workdir = None
            shutil.rmtree(workdir, ignore_errors=True)

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def main() -> None:
    with LocalPostgres(durable=True) as server:
        print(f"carebus: PostgreSQL serving; CAREBUS_RECORD_STORE_DSN={server.dsn()}", flush=True)
        signals = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        signal.sigwait(signals)
    print("carebus: PostgreSQL stopped", file=sys.stderr)


if __name__ == "__main__":
    main()
