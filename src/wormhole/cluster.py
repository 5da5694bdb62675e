"""A throwaway PostgreSQL cluster: ``initdb`` into a temporary directory, start on a free port.

Used by the demo (the embedded default), the test suite and the benchmark. PostgreSQL refuses
to run as root, so when we are root the server runs as the ``postgres`` OS user (Debian's
packages create it). The cluster listens on a unix socket in its own directory and on
127.0.0.1, and ``stop()`` removes everything.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class ClusterError(RuntimeError):
    """The cluster could not be created or started; the message says what to install."""


def find_bindir() -> Path:
    """PostgreSQL's bin directory: $WORMHOLE_PG_BINDIR, Debian's newest, or ``pg_ctl`` on PATH."""
    env = os.environ.get("WORMHOLE_PG_BINDIR")
    if env:
        return Path(env)
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit()
        else 0,
    )
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    raise ClusterError(
        "PostgreSQL server binaries not found: apt-get install postgresql-15 "
        "postgresql-plpython3-15 (or set WORMHOLE_PG_BINDIR)"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """One throwaway PostgreSQL cluster."""

    def __init__(
        self,
        *,
        port: int | None = None,
        settings: Mapping[str, Any] | None = None,
        basedir: str | None = None,
    ) -> None:
        self.bindir = find_bindir()
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="wormhole-pg-", dir=basedir))
        self.datadir = self.root / "data"
        self.sockdir = self.root
        self.logfile = self.root / "server.log"
        self.settings: dict[str, Any] = {
            "listen_addresses": "127.0.0.1",
            "port": self.port,
            "unix_socket_directories": str(self.sockdir),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": 200,
            "shared_buffers": "128MB",
            "log_line_prefix": "%m [%p] %q%u@%d ",
            "jit": "off",
        }
        self.settings.update(settings or {})
        self.user: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise ClusterError(
                    "running as root needs the 'postgres' OS user (apt-get install postgresql-15)"
                ) from None
            self.user = "postgres"
            shutil.chown(self.root, "postgres", "postgres")
        self.started = False

    # -- lifecycle -------------------------------------------------------------------------------
    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        proc = subprocess.run(
            cmd, user=self.user, capture_output=True, text=True, cwd=str(self.root),
            env={**os.environ, "LC_ALL": "C.UTF-8"},
        )
        if check and proc.returncode != 0:
            raise ClusterError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def init(self) -> Cluster:
        self._run("initdb", "-D", str(self.datadir), "-A", "trust", "-U", "postgres",
                  "-E", "UTF8", "--no-sync", "--locale=C.UTF-8")
        with open(self.datadir / "postgresql.conf", "a") as conf:
            conf.write("\n# wormhole throwaway cluster\n")
            for key, value in self.settings.items():
                conf.write(f"{key} = '{value}'\n")
        return self

    def start(self, timeout: float = 30.0) -> Cluster:
        self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-w",
                  "-t", str(int(timeout)), "start")
        self.started = True
        return self

    def stop(self, mode: str = "fast") -> None:
        if self.started:
            self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop", check=False)
            self.started = False

    def restart(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-l", str(self.logfile),
                  "-w", "restart")
        self.started = True

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Cluster:
        try:
            self.init().start()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # -- access ----------------------------------------------------------------------------------
    def dsn(self, dbname: str = "postgres", user: str = "postgres", tcp: bool = False) -> str:
        host = "127.0.0.1" if tcp else str(self.sockdir)
        return f"host={host} port={self.port} dbname={dbname} user={user}"

    def log_text(self) -> str:
        try:
            return self.logfile.read_text("utf-8", "replace")
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._run("pg_ctl", "-D", str(self.datadir), "status", check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise ClusterError("the server did not become ready")
