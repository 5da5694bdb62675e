"""The confined worker's warm path, for real: sources sent once, bounded spinning.

A spy bootstrap (the real ``BOOT_LOADER`` and ``worker.main``, with the worker's
``Channel.recv``/``Channel._spin`` wrapped to write what they see to stderr) shows what crosses
the channel and whether the worker polled without sleeping; the backend's side is observed in
this process. No timings: these tests prove the mechanisms, the benchmark measures them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from worker_support import BWRAP, MemoryPort, make_call, never, python_pid

from wormhole.runtime import sandbox
from wormhole.runtime.channel import Channel

pytestmark = pytest.mark.worker

SPY = sandbox.BOOT_LOADER + """
_C = sys.modules['wormhole_rt.channel'].Channel
_recv, _spin = _C.recv, _C._spin
def _spy_recv(self, timeout=None):
    got = _recv(self, timeout)
    if got is not None and got[0].get('op') == 'call':
        h = got[0]
        os.write(2, ('call:src=%s,reset=%s,spin=%s;' % (
            'src' in h, h.get('reset') is True, h.get('spin'))).encode())
    return got
def _spy_spin(self):
    os.write(2, b'spun;')
    return _spin(self)
_C.recv = _spy_recv
_C._spin = _spy_spin
sys.modules['wormhole_rt.worker'].main(0, 1)
"""

TWO_QUERIES = """\
def f(n):
    a = query("SELECT $1", n)
    b = query("SELECT $1", n + 1)
    return [a[0]["value"], b[0]["value"]]
"""

ADD = """\
def f(a, b):
    return a + b
"""

MUL = """\
def f(a, b):
    return a * b
"""


@pytest.fixture
def spied(
    sources: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[sandbox.WorkerExecutor]:
    monkeypatch.setattr(sandbox, "BOOTSTRAP", SPY)
    ex = sandbox.WorkerExecutor(sources, bwrap=BWRAP)
    try:
        yield ex
    finally:
        ex.close()


def _said(ex: sandbox.WorkerExecutor) -> list[str]:
    """What the spy wrote since the last look (the worker wrote it before it answered)."""
    worker = ex._worker
    assert worker is not None
    worker.drain()
    text = worker.tail.decode()
    worker.tail.clear()
    return [item for item in text.split(";") if item]


def _ok(text: str) -> object:
    return json.loads(text)["ok"]


def test_the_source_crosses_once_then_only_arguments(spied: sandbox.WorkerExecutor) -> None:
    port = MemoryPort()
    add, mul = make_call(ADD, 2, 3), make_call(MUL, 2, 3)
    assert _ok(spied.run(add, port, never)) == 5
    assert _ok(spied.run(make_call(ADD, 4, 5), port, never)) == 9
    assert _ok(spied.run(mul, port, never)) == 6
    assert _ok(spied.run(make_call(MUL, 7, 6), port, never)) == 42
    calls = [s for s in _said(spied) if s.startswith("call:")]
    assert [c.split(",")[0] for c in calls] == [
        "call:src=True", "call:src=False", "call:src=True", "call:src=False"
    ]
    assert spied._worker is not None
    assert set(spied._worker.known) == {add.source_hash, mul.source_hash}


def test_a_full_source_table_is_reset_on_both_sides(
    spied: sandbox.WorkerExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sandbox, "MAX_KNOWN_SOURCES", 2)
    port = MemoryPort()
    third = "def f(a, b):\n    return a - b\n"
    results = [_ok(spied.run(make_call(src, 9, 3), port, never)) for src in (ADD, MUL, third)]
    assert results == [12, 27, 6]
    # the worker forgot ADD with the reset, so the backend must send it again
    assert _ok(spied.run(make_call(ADD, 1, 1), port, never)) == 2
    calls = [s for s in _said(spied) if s.startswith("call:")]
    assert [c.rsplit(",", 1)[0] for c in calls] == [
        "call:src=True,reset=False",
        "call:src=True,reset=False",
        "call:src=True,reset=True",
        "call:src=True,reset=False",
    ]


def test_a_call_without_a_source_the_worker_lacks_is_a_protocol_error(
    executor: sandbox.WorkerExecutor,
) -> None:
    port = MemoryPort()
    assert _ok(executor.run(make_call(ADD, 1, 2), port, never)) == 3
    call = make_call(MUL, 2, 2)
    assert executor._worker is not None
    executor._worker.known[call.source_hash] = call.source  # a backend that lost track
    with pytest.raises(sandbox.WorkerCrashed) as info:
        executor.run(call, port, never)
    assert "status 2" in info.value.reason
    assert _ok(executor.run(call, port, never)) == 4  # a fresh worker gets the source


def test_both_sides_spin_when_a_cpu_is_idle(
    spied: sandbox.WorkerExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    spins: list[float] = []
    real_spin = Channel._spin

    def backend_spin(self: Channel) -> object:
        spins.append(self.spin)
        return real_spin(self)

    monkeypatch.setattr(Channel, "_spin", backend_spin)
    monkeypatch.setattr(sandbox, "_spare_cpu", lambda: True)
    spied.spin = 0.05  # long enough that every answer below comes within one spin
    assert _ok(spied.run(make_call(TWO_QUERIES, 1), MemoryPort(), never)) == [1, 2]
    said = _said(spied)
    assert said[0] == "call:src=True,reset=False,spin=0.05"
    assert "spun" in said[1:]  # the worker, waiting for a query's rows
    assert spins and spins[0] == 0.05  # the backend, waiting for the worker
    assert spied.spun_calls == 1
    # the worker stops spinning when its call ends: it sleeps while it waits for the next call
    monkeypatch.setattr(sandbox, "_spare_cpu", lambda: False)
    assert _ok(spied.run(make_call(TWO_QUERIES, 5), MemoryPort(), never)) == [5, 6]
    assert _said(spied) == ["call:src=False,reset=False,spin=None"]


def test_nobody_spins_on_a_busy_machine(
    spied: sandbox.WorkerExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    spins: list[float] = []
    real_spin = Channel._spin

    def backend_spin(self: Channel) -> object:
        spins.append(self.spin)
        return real_spin(self)

    monkeypatch.setattr(Channel, "_spin", backend_spin)
    monkeypatch.setattr(sandbox, "_spare_cpu", lambda: False)
    assert _ok(spied.run(make_call(TWO_QUERIES, 1), MemoryPort(), never)) == [1, 2]
    said = _said(spied)
    assert said == ["call:src=True,reset=False,spin=None"]
    assert spins == []
    assert spied.spun_calls == 0


def test_spinning_can_be_switched_off(
    spied: sandbox.WorkerExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sandbox, "_spare_cpu", lambda: True)
    spied.spin = 0.0
    assert _ok(spied.run(make_call(TWO_QUERIES, 1), MemoryPort(), never)) == [1, 2]
    assert _said(spied) == ["call:src=True,reset=False,spin=None"]


def test_a_spin_that_runs_out_switches_spinning_off() -> None:
    rfd, wfd = os.pipe()
    try:
        chan = Channel(rfd, wfd)
        chan.spin = 0.001
        assert chan.recv(0.01) is None  # nothing comes: one spin, then a sleeping wait
        assert chan.spin == 0.0
        chan.spin = 0.001
        os.write(wfd, Channel.frame({"op": "x"}, b"body"))
        assert chan.recv(0.01) == ({"op": "x"}, b"body")
        assert chan.spin == 0.001
    finally:
        os.close(rfd)
        os.close(wfd)


def test_spare_cpu_needs_a_second_cpu() -> None:
    """With one usable CPU there is nothing to spin on: the peer needs that CPU."""
    code = (
        "import os, sys\n"
        f"sys.path.insert(0, {str(sandbox.__file__).rsplit('/wormhole/', 1)[0]!r})\n"
        "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
        "from wormhole.runtime import sandbox\n"
        "print(sandbox._spare_cpu())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"
    assert sandbox._spare_cpu() in (True, False)


@pytest.mark.parametrize(
    ("running", "cpus", "spin"),
    [
        (1, 2, True),  # only this backend runs
        (2, 2, True),  # and one more task: usually the client or a proxy about to sleep
        (3, 2, False),  # more runnable tasks than CPUs: a busy server, nobody spins
        (9, 8, False),
        (8, 8, True),
        (1, 1, False),  # one CPU: the worker needs it
    ],
)
def test_spinning_needs_a_cpu_for_every_runnable_task(running: int, cpus: int,
                                                      spin: bool) -> None:
    assert sandbox._spin_allowed(running, cpus) is spin


def test_a_read_end_made_non_blocking_later_still_waits_properly() -> None:
    """The channel reads its descriptor's blocking mode once; if it changes, recv still sleeps
    in poll() for data instead of spinning on a read that would block."""
    import threading

    rfd, wfd = os.pipe()
    try:
        chan = Channel(rfd, wfd)
        os.set_blocking(rfd, False)
        timer = threading.Timer(0.05, os.write, (wfd, Channel.frame({"op": "late"})))
        timer.start()
        assert chan.recv(None) == ({"op": "late"}, b"")
        timer.join()
    finally:
        os.close(rfd)
        os.close(wfd)


# -- checked code from the backend: the worker need not load the parser ------------------------

POLICY_SPY = sandbox.BOOT_LOADER + """
_E = sys.modules['wormhole_rt.engine']
_run = _E.run_call
def _spy_run(call, port, *rest):
    try:
        return _run(call, port, *rest)
    finally:
        os.write(2, ('stored=%s,policy=%s;' % (
            call.stored is not None, 'wormhole_rt.policy' in sys.modules)).encode())
_E.run_call = _spy_run
sys.modules['wormhole_rt.worker'].main(0, 1)
"""

FORBIDDEN = """\
def f():
    return open("/etc/passwd").read()
"""


def _stored(source: str) -> tuple[str, bytes]:
    import marshal

    from wormhole.runtime import policy

    checked = policy.check(source, {})
    return checked.name, marshal.dumps(checked.code)


@pytest.mark.parametrize("stored_code", [True, False])
def test_checked_code_from_the_backend_spares_the_parser(
    sources: dict[str, str], monkeypatch: pytest.MonkeyPatch, stored_code: bool
) -> None:
    monkeypatch.setattr(sandbox, "BOOTSTRAP", POLICY_SPY)
    ex = sandbox.WorkerExecutor(sources, bwrap=BWRAP, stored_code=stored_code)
    try:
        call = make_call(ADD, 2, 3)
        call.stored = _stored(ADD)
        assert _ok(ex.run(call, MemoryPort(), never)) == 5
        again = make_call(ADD, 4, 4)
        again.stored = call.stored
        assert _ok(ex.run(again, MemoryPort(), never)) == 8  # compiled once: the cache
        if stored_code:
            assert _said(ex) == ["stored=True,policy=False", "stored=False,policy=False"]
        else:  # a worker whose Python may differ gets sources only, and checks them itself
            assert _said(ex) == ["stored=False,policy=True", "stored=False,policy=True"]
    finally:
        ex.close()


def test_without_checked_code_the_worker_checks_the_source(
    sources: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sandbox, "BOOTSTRAP", POLICY_SPY)
    ex = sandbox.WorkerExecutor(sources, bwrap=BWRAP, stored_code=True)
    try:
        err = json.loads(ex.run(make_call(FORBIDDEN), MemoryPort(), never))["err"]
        assert err["type"] == "RejectedFunction" and "'open' is not allowed" in err["message"]
        assert _said(ex) == ["stored=False,policy=True"]
    finally:
        ex.close()


# -- the spawn: posix_spawn, no descriptor leaks -------------------------------------------


def test_no_inheritable_descriptor_reaches_bubblewrap_or_the_worker(
    sources: dict[str, str], tmp_path: object
) -> None:
    """PostgreSQL opens files and sockets without close-on-exec; none may reach the sandbox."""
    from worker_support import descendants, python_pid

    secret = os.path.join(str(tmp_path), "secret")
    fd = os.open(secret, os.O_CREAT | os.O_RDWR, 0o600)
    os.set_inheritable(fd, True)
    ex = sandbox.WorkerExecutor(sources, bwrap=BWRAP)
    try:
        assert _ok(ex.run(make_call(ADD, 1, 1), MemoryPort(), never)) == 2
        root = ex.worker_pid
        assert root is not None
        pids = [root, *descendants(root)]
        assert python_pid(ex) in pids
        for pid in pids:
            targets = [os.readlink(f"/proc/{pid}/fd/{n}") for n in os.listdir(f"/proc/{pid}/fd")]
            assert secret not in targets, (pid, targets)
        worker_fds = sorted(int(n) for n in os.listdir(f"/proc/{python_pid(ex)}/fd"))
        assert worker_fds == [0, 1, 2]
        assert os.getsid(root) == root  # a session of its own
    finally:
        ex.close()
        os.close(fd)
    assert ex.worker_pid is None


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two usable CPUs")
def test_a_spinning_worker_keeps_off_the_backends_cpu(
    executor: sandbox.WorkerExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Sharing one CPU, a backend and its worker run a call about twice as slowly (they evict
    # each other from the core's caches), and the scheduler keeps such a pair together: a call
    # that spins tells the worker the backend's CPU, and the worker keeps off it. A call that
    # does not spin (a busy machine) gives the worker every CPU back.
    allowed = os.sched_getaffinity(0)
    here = min(allowed)
    monkeypatch.setattr(sandbox, "_spare_cpu", lambda: False)
    assert _ok(executor.run(make_call(TWO_QUERIES, 1), MemoryPort(), never)) == [1, 2]
    os.sched_setaffinity(0, {here})  # this process is the backend here
    try:
        monkeypatch.setattr(sandbox, "_spare_cpu", lambda: True)
        assert _ok(executor.run(make_call(TWO_QUERIES, 1), MemoryPort(), never)) == [1, 2]
        worker = python_pid(executor)
        assert os.sched_getaffinity(worker) == allowed - {here}
        monkeypatch.setattr(sandbox, "_spare_cpu", lambda: False)
        assert _ok(executor.run(make_call(TWO_QUERIES, 1), MemoryPort(), never)) == [1, 2]
        assert os.sched_getaffinity(worker) == allowed
    finally:
        os.sched_setaffinity(0, allowed)
