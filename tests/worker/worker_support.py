"""Helpers for the confined-worker tests (imported by conftest.py and the tests)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from wormhole.runtime import WORKER_MODULES, engine, sandbox  # noqa: E402
from wormhole.runtime.errors import DatabaseError  # noqa: E402
from wormhole.runtime.rows import Rows  # noqa: E402

RUNTIME = SRC / "wormhole" / "runtime"
BWRAP = shutil.which("bwrap") or sandbox.DEFAULT_BWRAP


def _bwrap_reason() -> str | None:
    if not os.path.exists(BWRAP):
        return "bubblewrap is not installed (apt-get install bubblewrap)"
    if not os.path.exists(sandbox.DEFAULT_PYTHON):
        return f"{sandbox.DEFAULT_PYTHON} is missing"
    ok, reason = sandbox.available(BWRAP)
    return None if ok else reason


_REASON = _bwrap_reason()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _REASON is None:
        return
    skip = pytest.mark.skip(reason=f"needs the confined worker: {_REASON}")
    for item in items:
        if "worker" in item.keywords:
            item.add_marker(skip)


def worker_sources() -> dict[str, str]:
    return {name: (RUNTIME / f"{name}.py").read_text("utf-8") for name in WORKER_MODULES}


@pytest.fixture(scope="session")
def sources() -> dict[str, str]:
    return worker_sources()


class MemoryPort:
    """A real in-memory ``QueryPort``: a few canned statements over a dict of tables."""

    def __init__(self) -> None:
        self.tables: dict[str, list[dict[str, object]]] = {
            "users": [{"id": 1, "name": "ada"}, {"id": 2, "name": "grace"}],
        }
        self.log: list[tuple[str, list[object]]] = []

    def query(self, sql: str, params: "list[object] | tuple[object, ...]") -> Rows:
        self.log.append((sql, list(params)))
        words = sql.split()
        if words[:3] == ["SELECT", "*", "FROM"] and len(words) == 4:
            table = self.tables.get(words[3])
            if table is None:
                raise DatabaseError(
                    f'relation "{words[3]}" does not exist', "42P01", None, "check the name"
                )
            return Rows([dict(r) for r in table])
        if words[:2] == ["SELECT", "$1"]:
            return Rows([{"value": params[0]}])
        if words[:1] == ["DELETE"]:
            return Rows([], rowcount=7)
        raise DatabaseError(f"syntax error at or near {words[0]!r}", "42601")


def make_call(source: str, *args: object, **limits: int) -> engine.Call:
    from wormhole.runtime import codec

    digest = hashlib.sha256(source.encode("utf-8")).hexdigest()
    return engine.Call(
        source_hash=digest,
        source=source,
        args_json=codec.encode([list(args), {}]),
        modules={},
        modules_key="test",
        limits=engine.Limits(**limits),
    )


def never() -> None:
    return None


@pytest.fixture
def executor(sources: dict[str, str]) -> Iterator[sandbox.WorkerExecutor]:
    ex = sandbox.WorkerExecutor(sources, bwrap=BWRAP)
    try:
        yield ex
    finally:
        ex.close()


def boot_frame(sources: dict[str, str]) -> bytes:
    return sandbox.boot_frame(sources)


def run_confined(
    sources: dict[str, str],
    code: str,
    *,
    confine: bool = True,
    memory_mb: int = 256,
    env: dict[str, str] | None = None,
    timeout: float = 30,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``code`` with the worker's exact bubblewrap argv, after the worker's own confinement
    (``worker.confine``: rlimits + seccomp) when ``confine`` is true."""
    prelude = sandbox.BOOT_LOADER + "W = sys.modules['wormhole_rt.worker']\n"
    if confine:
        prelude += f"W.confine(W.engine.Limits(memory_mb={memory_mb}))\n"
    argv = sandbox.bwrap_argv(BWRAP, sandbox.DEFAULT_PYTHON, prelude + code)
    return subprocess.run(
        argv,
        input=boot_frame(sources),
        capture_output=True,
        timeout=timeout,
        env={} if env is None else env,
        close_fds=True,
    )


def descendants(pid: int) -> list[int]:
    """All processes below ``pid`` (host view), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def python_pid(executor: sandbox.WorkerExecutor) -> int:
    """The host pid of the worker's python process (the innermost process under bwrap)."""
    root = executor.worker_pid
    assert root is not None
    for _ in range(100):
        for pid in descendants(root):
            try:
                exe = os.readlink(f"/proc/{pid}/exe")
            except OSError:
                continue
            if "python" in exe:
                return pid
        time.sleep(0.01)
    raise AssertionError("no python process under the worker's bwrap")
