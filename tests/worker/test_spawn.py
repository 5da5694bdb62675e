"""``runtime/spawn``: the worker started early (``prestart``) is the very worker the executor
would start, handed over only to the process that started it with the same argv; the worker's
own imports stay off ``json``/``re``/``enum`` (its start is on a new connection's critical path).
Real bubblewrap, no database; no timings."""

from __future__ import annotations

import json
import marshal
import os

import pytest
from worker_support import BWRAP, MemoryPort, make_call, never

from wormhole.runtime import WORKER_MODULES, sandbox, spawn

pytestmark = pytest.mark.worker

ADD = "def f(a, b):\n    return a + b\n"


@pytest.fixture
def compiled(sources: dict[str, str]) -> dict[str, bytes]:
    return {name: marshal.dumps(compile(sources[name], f"<wormhole runtime {name}>", "exec"))
            for name in WORKER_MODULES}


@pytest.fixture(autouse=True)
def no_leftover() -> None:
    yield
    spawn.discard_prestarted()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in "ZX"
    except FileNotFoundError:
        return False


def test_the_executor_adopts_the_early_worker(compiled, sources) -> None:
    import fcntl

    assert spawn.prestart(compiled, WORKER_MODULES, bwrap=BWRAP)
    early = spawn._EARLY[0][2]
    early_pid = early.pid
    frame = spawn.boot_frame(compiled, WORKER_MODULES)
    # the whole boot frame went into the pipe at once (nothing left to send), the pipe
    # enlarged for it (the worker's bootstrap gives the pipe its default size back once read)
    assert len(frame) > spawn.PIPE_SIZE and spawn._EARLY[0][3] == b""
    assert not spawn.prestart(compiled, WORKER_MODULES, bwrap=BWRAP)  # one per process
    ex = sandbox.WorkerExecutor(lambda: pytest.fail("no boot frame needed"), bwrap=BWRAP,
                                adopt=True)
    try:
        assert json.loads(ex.run(make_call(ADD, 2, 3), MemoryPort(), never))["ok"] == 5
        assert ex.adopted and ex.starts == 1 and ex.worker_pid == early_pid
        assert spawn._EARLY == []
        worker = ex._worker
        assert worker is not None  # its bootstrap gave the pipe its default size back
        assert fcntl.fcntl(worker.chan.wfd, fcntl.F_GETPIPE_SZ) == spawn.PIPE_SIZE
    finally:
        ex.close()


def test_an_executor_that_may_not_adopt_starts_its_own(compiled, sources) -> None:
    assert spawn.prestart(compiled, WORKER_MODULES, bwrap=BWRAP)
    early_pid = spawn._EARLY[0][2].pid
    ex = sandbox.WorkerExecutor(sources, bwrap=BWRAP)  # adopt=False: tests, other executors
    try:
        assert json.loads(ex.run(make_call(ADD, 1, 1), MemoryPort(), never))["ok"] == 2
        assert not ex.adopted and ex.worker_pid != early_pid
        assert len(spawn._EARLY) == 1  # still there, untouched
    finally:
        ex.close()


def test_another_argv_gets_no_early_worker_and_it_is_stopped(compiled) -> None:
    assert spawn.prestart(compiled, WORKER_MODULES, bwrap=BWRAP)
    proc = spawn._EARLY[0][2]
    other = spawn.bwrap_argv(BWRAP, spawn.DEFAULT_PYTHON, spawn.BOOTSTRAP + "\n# other\n")
    assert spawn.take_prestarted(other) is None
    assert proc.returncode is not None and not _alive(proc.pid)
    assert spawn._EARLY == []


def test_a_forked_child_never_gets_its_parents_early_worker(compiled) -> None:
    assert spawn.prestart(compiled, WORKER_MODULES, bwrap=BWRAP)
    argv = spawn.bwrap_argv(BWRAP, spawn.DEFAULT_PYTHON, spawn.BOOTSTRAP)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os._exit(0 if spawn.take_prestarted(argv) is None else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    proc = spawn._EARLY[0][2]
    assert _alive(proc.pid)  # the child did not kill the parent's worker
    taken = spawn.take_prestarted(argv)
    assert taken is not None and taken[0] is proc
    taken[0].kill()
    taken[0].wait(5.0)
    taken[0].close()


def test_no_early_start_without_compiled_code_for_every_module(compiled, sources) -> None:
    partial = dict(compiled, codec=sources["codec"])  # source text: the executor's business
    assert not spawn.prestart(partial, WORKER_MODULES, bwrap=BWRAP)
    missing = {k: v for k, v in compiled.items() if k != "worker"}
    assert not spawn.prestart(missing, WORKER_MODULES, bwrap=BWRAP)
    assert spawn._EARLY == []


def test_no_early_start_for_a_python_of_another_version(compiled, tmp_path) -> None:
    other = tmp_path / "python2.7"
    other.write_text("")  # never run: the version in its name already says no
    assert spawn.python_version(str(other)) == (2, 7)
    assert not spawn.prestart(compiled, WORKER_MODULES, bwrap=BWRAP, python=str(other))


def test_discard_stops_the_early_worker(compiled) -> None:
    assert spawn.prestart(compiled, WORKER_MODULES, bwrap=BWRAP)
    proc = spawn._EARLY[0][2]
    spawn.discard_prestarted()
    assert spawn._EARLY == [] and not _alive(proc.pid)
    spawn.discard_prestarted()  # nothing to do: no error


IMPORT_SPY = spawn.BOOT_LOADER + """
os.write(2, (','.join(sorted(m for m in ('json', 're', 'enum', 'typing') if m in sys.modules))
             + ';').encode())
sys.modules['wormhole_rt.worker'].main(0, 1)
"""


def test_the_worker_boots_without_json_re_or_enum(sources, monkeypatch) -> None:
    monkeypatch.setattr(sandbox, "BOOTSTRAP", IMPORT_SPY)
    ex = sandbox.WorkerExecutor(sources, bwrap=BWRAP)
    try:
        assert json.loads(ex.run(make_call(ADD, 2, 2), MemoryPort(), never))["ok"] == 4
        worker = ex._worker
        assert worker is not None
        worker.drain()
        assert worker.tail.decode().split(";")[0] == ""  # none of them loaded
    finally:
        ex.close()
