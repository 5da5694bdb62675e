"""The confined worker, for real: bubblewrap, the worker loop, the backend's wait loop.

Calls go through ``sandbox.WorkerExecutor`` with an in-memory ``QueryPort``. Confinement is
attacked by running snippets with the exact bubblewrap argv the worker uses
(``sandbox.bwrap_argv``), after the worker's own ``confine()`` (rlimits + seccomp), and by
inspecting the running worker from the host (/proc/PID/{status,limits,environ,fd}).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import tempfile
import threading
import time

import pytest
from worker_support import (
    BWRAP,
    MemoryPort,
    make_call,
    never,
    python_pid,
    run_confined,
)

from wormhole.runtime import sandbox
from wormhole.runtime.rows import Rows
from wormhole.runtime.errors import Interrupted, LimitExceeded

pytestmark = pytest.mark.worker


# -- calls ---------------------------------------------------------------------------------------

QUERY_TWICE = """\
def f(n):
    users = query("SELECT * FROM users")
    echo = query("SELECT $1", n)
    gone = query("DELETE FROM users")
    return [[u["name"] for u in users], echo[0]["value"], gone.rowcount, len(gone)]
"""

RAISES = """\
def f():
    x = 1
    raise ValueError("bad value " + str(x))
"""

PRINTS = """\
def f(a, b):
    print("adding", a, b)
    print("done")
    return a + b
"""

CATCHES_DB_ERROR = """\
def f():
    try:
        query("SELECT * FROM nope")
    except Exception as e:
        return [str(e), e.sqlstate, e.hint]
    return None
"""

UNCAUGHT_DB_ERROR = """\
def f():
    return query("BOGUS statement")
"""

LOOP = """\
def f():
    n = 0
    while True:
        n += 1
"""

RETURN_ONE = """\
def f():
    return 1
"""


def test_query_twice(executor: sandbox.WorkerExecutor) -> None:
    port = MemoryPort()
    text = executor.run(make_call(QUERY_TWICE, 5), port, never)
    assert json.loads(text) == {"ok": [["ada", "grace"], 5, 7, 0], "out": []}
    assert port.log == [("SELECT * FROM users", []), ("SELECT $1", [5]),
                        ("DELETE FROM users", [])]


def test_raises(executor: sandbox.WorkerExecutor) -> None:
    err = json.loads(executor.run(make_call(RAISES), MemoryPort(), never))["err"]
    assert err["type"] == "ValueError" and err["builtin"] is True
    assert err["message"] == "bad value 1"
    assert err["tb"][-1] == [3, "f"]


def test_prints(executor: sandbox.WorkerExecutor) -> None:
    payload = json.loads(executor.run(make_call(PRINTS, 2, 3), MemoryPort(), never))
    assert payload == {"ok": 5, "out": ["adding 2 3", "done"]}


def test_database_error_reaches_user_code(executor: sandbox.WorkerExecutor) -> None:
    payload = json.loads(executor.run(make_call(CATCHES_DB_ERROR), MemoryPort(), never))
    assert payload["ok"] == ['relation "nope" does not exist', "42P01", "check the name"]
    err = json.loads(executor.run(make_call(UNCAUGHT_DB_ERROR), MemoryPort(), never))["err"]
    assert err["type"] == "DatabaseError" and err["sqlstate"] == "42601"


def test_worker_is_reused_and_the_payload_is_text(executor: sandbox.WorkerExecutor) -> None:
    first = executor.run(make_call(RETURN_ONE), MemoryPort(), never)
    pid = executor.worker_pid
    for _ in range(20):
        assert executor.run(make_call(RETURN_ONE), MemoryPort(), never) == first
    assert isinstance(first, str)
    assert executor.worker_pid == pid and executor.starts == 1


def test_policy_still_applies_in_the_worker(executor: sandbox.WorkerExecutor) -> None:
    source = "def f():\n    return open('/etc/passwd').read()\n"
    err = json.loads(executor.run(make_call(source), MemoryPort(), never))["err"]
    assert "passwd" not in json.dumps(err).replace("/etc/passwd", "")
    assert err["type"] in ("RejectedFunction", "NameError", "PolicyViolation")


# -- time ----------------------------------------------------------------------------------------


def test_timeout_kills_a_cpu_loop_within_a_second(executor: sandbox.WorkerExecutor) -> None:
    executor.run(make_call(RETURN_ONE), MemoryPort(), never)  # warm: measure the loop only
    old = executor.worker_pid
    begin = time.monotonic()
    with pytest.raises(LimitExceeded) as info:
        executor.run(make_call(LOOP, timeout_ms=300), MemoryPort(), never)
    elapsed = time.monotonic() - begin
    assert info.value.limit == "timeout_ms"
    assert 0.29 < elapsed < 1.0
    assert executor.worker_pid is None
    assert json.loads(executor.run(make_call(RETURN_ONE), MemoryPort(), never))["ok"] == 1
    assert executor.worker_pid != old


def test_check_interrupts_stops_the_call_quickly(executor: sandbox.WorkerExecutor) -> None:
    executor.run(make_call(RETURN_ONE), MemoryPort(), never)
    fire_at = time.monotonic() + 0.2
    seen: list[float] = []

    def check() -> None:
        if time.monotonic() >= fire_at:
            seen.append(time.monotonic())
            raise Interrupted(None, "canceling statement due to user request")

    with pytest.raises(Interrupted):
        executor.run(make_call(LOOP), MemoryPort(), check)
    stopped = time.monotonic()
    assert stopped - fire_at < 0.06  # one 20 ms wake-up plus the kill
    assert executor.worker_pid is None


def test_any_exception_from_check_interrupts_kills_the_worker(
    executor: sandbox.WorkerExecutor,
) -> None:
    executor.run(make_call(RETURN_ONE), MemoryPort(), never)
    pid = python_pid(executor)

    def check() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        executor.run(make_call(LOOP), MemoryPort(), check)
    time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}") or _is_zombie_or_gone(pid)


class InterruptingPort(MemoryPort):
    def query(self, sql: str, params: "list[object] | tuple[object, ...]") -> Rows:
        raise Interrupted(None, "terminating connection due to administrator command")


def test_interrupt_from_the_port_kills_the_worker(executor: sandbox.WorkerExecutor) -> None:
    with pytest.raises(Interrupted):
        executor.run(make_call(QUERY_TWICE, 1), InterruptingPort(), never)
    assert executor.worker_pid is None


def test_cpu_limit(executor: sandbox.WorkerExecutor) -> None:
    begin = time.monotonic()
    with pytest.raises(sandbox.WorkerCrashed) as info:
        executor.run(make_call(LOOP, cpu_seconds=1), MemoryPort(), never)
    assert time.monotonic() - begin < 15  # 1 CPU-second; wall time depends on machine load
    assert "SIGXCPU" in info.value.reason and "cpu_seconds" in info.value.reason


# -- crashes ---------------------------------------------------------------------------------------


def _is_zombie_or_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def test_killed_worker_is_reported_and_replaced(executor: sandbox.WorkerExecutor) -> None:
    executor.run(make_call(RETURN_ONE), MemoryPort(), never)
    target = python_pid(executor)
    first_bwrap = executor.worker_pid

    killed: list[int] = []

    def kill_it() -> None:  # check_interrupts is called again once the worker is found dead
        if not killed:
            killed.append(target)
            os.kill(target, signal.SIGKILL)

    with pytest.raises(sandbox.WorkerCrashed) as info:
        executor.run(make_call(LOOP), MemoryPort(), kill_it)
    assert "signal 9" in info.value.reason and "SIGKILL" in info.value.reason
    assert executor.worker_pid is None
    assert json.loads(executor.run(make_call(RETURN_ONE), MemoryPort(), never))["ok"] == 1
    assert executor.worker_pid != first_bwrap
    assert executor.starts == 2


def test_worker_killed_between_calls_is_replaced_silently(
    executor: sandbox.WorkerExecutor,
) -> None:
    executor.run(make_call(RETURN_ONE), MemoryPort(), never)
    os.killpg(executor.worker_pid or 0, signal.SIGKILL)
    time.sleep(0.05)
    assert json.loads(executor.run(make_call(RETURN_ONE), MemoryPort(), never))["ok"] == 1
    assert executor.starts == 2


def test_close_leaves_no_process(sources: dict[str, str]) -> None:
    ex = sandbox.WorkerExecutor(sources, bwrap=BWRAP)
    ex.run(make_call(RETURN_ONE), MemoryPort(), never)
    bw = ex.worker_pid
    py = python_pid(ex)
    ex.close()
    time.sleep(0.05)
    assert _is_zombie_or_gone(py) and _is_zombie_or_gone(bw or 0)


def test_worker_dies_with_its_parent(sources: dict[str, str]) -> None:
    """--die-with-parent: a backend that dies (even by SIGKILL) takes its worker with it."""
    ex = sandbox.WorkerExecutor(sources, bwrap=BWRAP)
    holder: dict[str, int] = {}

    def start() -> None:  # a thread stands in for the backend: PDEATHSIG follows the thread
        ex.run(make_call(RETURN_ONE), MemoryPort(), never)
        holder["bwrap"] = ex.worker_pid or 0
        holder["python"] = python_pid(ex)

    t = threading.Thread(target=start)
    t.start()
    t.join()
    time.sleep(0.1)
    assert _is_zombie_or_gone(holder["python"])
    ex.close()


# -- a compromised worker: everything it sends is untrusted -----------------------------------


def _evil_sources(sources: dict[str, str], main_body: str) -> dict[str, str]:
    evil = dict(sources)
    evil["worker"] = (
        "import os, json\n"
        "from .channel import Channel\n"
        "def main(rfd, wfd):\n"
        "    chan = Channel(rfd, wfd, 1 << 29)\n"
        "    chan.recv(None)  # hello\n"
        "    head, body = chan.recv(None)  # call\n"
        "    cid = head['id']\n"
        + "".join("    " + line + "\n" for line in main_body.splitlines())
        + "    chan.recv(None)\n"
    )
    return evil


@pytest.mark.parametrize(
    "body, expect",
    [
        ("os.write(wfd, b'\\xff\\xff\\xff\\xff\\x00\\x00\\x00\\x00')", "malformed"),
        ("os.write(wfd, (5).to_bytes(4, 'big') + (2**31).to_bytes(4, 'big') + b'{\"op\"')",
         "malformed"),
        ("os.write(wfd, (5).to_bytes(4, 'big') + (0).to_bytes(4, 'big') + b'[1,2]')",
         "malformed"),
        ("chan.send({'op': 'done', 'id': cid + 1}, b'{\"ok\":1}')", "malformed"),
        ("chan.send({'op': 'done', 'id': cid}, b'\\xff\\xfe')", "malformed"),
        ("chan.send({'op': 'done', 'id': cid}, b'not a payload')", "malformed"),
        ("chan.send({'op': 'surprise', 'id': cid})", "malformed"),
        ("chan.send({'op': 'query', 'id': cid}, b'{\"sql\": 1, \"params\": []}')", "malformed"),
        ("chan.send({'op': 'query', 'id': cid}, b'{\"sql\": \"x\", \"params\": 5}')",
         "malformed"),
        ("chan.send({'op': 'query', 'id': cid}, b'{\"sql\": \"x\"')", "malformed"),
        ("os._exit(7)", "status 7"),
        ("os.write(2, b'goodbye cruel world'); os._exit(1)", "goodbye cruel world"),
    ],
)
def test_compromised_worker_is_stopped(
    sources: dict[str, str], body: str, expect: str
) -> None:
    ex = sandbox.WorkerExecutor(_evil_sources(sources, body), bwrap=BWRAP)
    try:
        port = MemoryPort()
        with pytest.raises(sandbox.WorkerCrashed) as info:
            ex.run(make_call(RETURN_ONE), port, never)
        assert expect in info.value.reason
        assert ex.worker_pid is None
        assert port.log == []
    finally:
        ex.close()


def test_oversized_result_is_refused(sources: dict[str, str]) -> None:
    body = "chan.send({'op': 'done', 'id': cid}, b'{\"ok\":\"' + b'x' * 300000 + b'\"}')"
    ex = sandbox.WorkerExecutor(_evil_sources(sources, body), bwrap=BWRAP)
    try:
        with pytest.raises(LimitExceeded) as info:
            ex.run(make_call(RETURN_ONE, max_result_bytes=1000, max_output_bytes=1000),
                   MemoryPort(), never)
        assert info.value.limit == "max_result_bytes"
    finally:
        ex.close()


def test_worker_that_stops_reading_cannot_block_the_backend(sources: dict[str, str]) -> None:
    """A worker asks for rows and never reads them: the backend's send still notices interrupts."""
    body = "chan.send({'op': 'query', 'id': cid}, b'{\"sql\":\"SELECT * FROM big\",\"params\":[]}')\n"
    body += "import time\nwhile True: time.sleep(1)"
    ex = sandbox.WorkerExecutor(_evil_sources(sources, body), bwrap=BWRAP)
    port = MemoryPort()
    port.tables["big"] = [{"x": "y" * 1000} for _ in range(20000)]  # ~20 MB of rows
    try:
        begin = time.monotonic()
        with pytest.raises(LimitExceeded):
            ex.run(make_call(RETURN_ONE, timeout_ms=300), port, never)
        assert time.monotonic() - begin < 1.0
    finally:
        ex.close()


# -- what the running worker looks like from the host ------------------------------------------


def _status(pid: int) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def test_running_worker_is_confined(executor: sandbox.WorkerExecutor) -> None:
    executor.run(make_call(RETURN_ONE, memory_mb=300, cpu_seconds=5), MemoryPort(), never)
    pid = python_pid(executor)
    status = _status(pid)
    assert status["Seccomp"] == "2"  # a filter is installed
    assert status["NoNewPrivs"] == "1"
    assert status["CapEff"] == "0000000000000000" and status["CapPrm"] == "0000000000000000"
    # no inherited descriptors: only the channel (0, 1) and stderr (2)
    assert sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd")) == [0, 1, 2]
    # an empty environment (Python itself may add LC_CTYPE when it coerces the C locale)
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if item)
    assert set(env) <= {b"PWD", b"LC_CTYPE"}
    with open(f"/proc/{pid}/limits") as f:
        limits = f.read()

    def hard(name: str) -> str:
        line = next(ln for ln in limits.splitlines() if ln.startswith(name))
        return line[len(name):].split()[1]

    assert hard("Max address space") == str(300 * 1024 * 1024)
    assert hard("Max processes") == "0"
    assert hard("Max file size") == "0"
    assert hard("Max core file size") == "0"
    assert hard("Max open files") == "16"
    assert hard("Max cpu time") == str(5 * 8)
    # its own namespaces, not the host's
    for ns in ("user", "pid", "net", "ipc", "uts", "mnt"):
        assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns


# -- attacks run with the worker's exact argv --------------------------------------------------


def _ok(proc: "object") -> str:
    import subprocess

    assert isinstance(proc, subprocess.CompletedProcess)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return str(proc.stdout.decode())


@pytest.mark.parametrize("confine", [False, True], ids=["namespaces", "namespaces+limits"])
def test_no_network(sources: dict[str, str], confine: bool) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    tmp = tempfile.mkdtemp()
    upath = os.path.join(tmp, "s.sock")
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(upath)
    unix.listen(1)
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind("\0wormhole-test-" + str(os.getpid()))
    abstract.listen(1)
    code = f"""
import socket
def attempt(family, address):
    try:
        s = socket.socket(family)
        s.settimeout(2)
        s.connect(address)
        print('CONNECTED', address)
    except OSError as e:
        print('refused', type(e).__name__)
attempt(socket.AF_INET, ('127.0.0.1', {port}))
attempt(socket.AF_INET, ('1.1.1.1', 53))
attempt(socket.AF_UNIX, {upath!r})
attempt(socket.AF_UNIX, '\\0wormhole-test-{os.getpid()}')
attempt(socket.AF_UNIX, '/run/postgresql/.s.PGSQL.5432')
try:
    socket.getaddrinfo('example.com', 80)
    print('RESOLVED')
except OSError as e:
    print('no dns', type(e).__name__)
"""
    try:
        out = _ok(run_confined(sources, code, confine=confine))
        assert "CONNECTED" not in out and "RESOLVED" not in out
        assert out.count("refused") == 5
        for sock in (listener, unix, abstract):
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.accept()
    finally:
        for sock in (listener, unix, abstract):
            sock.close()
        os.unlink(upath)
        os.rmdir(tmp)


@pytest.mark.parametrize("confine", [False, True], ids=["namespaces", "namespaces+limits"])
def test_filesystem(sources: dict[str, str], confine: bool) -> None:
    code = """
import os
print(sorted(os.listdir('/')))
for path in ['/etc/passwd', '/etc/shadow', '/home', '/root', '/tmp', '/proc/1/environ',
             '/sys/kernel', '/dev/mem', '/var/lib/postgresql', '/work', '/run']:
    print(path, os.path.exists(path))
for path in ['/x', '/tmp/x', '/usr/x', '/usr/lib/python3.11/os.py', '/bin/x']:
    try:
        with open(path, 'a') as f:
            f.write('pwned')
        print('WROTE', path)
    except OSError as e:
        print('write refused', path, e.errno)
try:
    os.mkdir('/d'); print('MKDIR')
except OSError as e:
    print('mkdir refused', e.errno)
print('uid', os.getuid(), os.getgid(), os.geteuid())
"""
    out = _ok(run_confined(sources, code, confine=confine))
    lines = out.splitlines()
    assert lines[0] == "['bin', 'lib', 'lib64', 'usr']"
    assert all(line.endswith("False") for line in lines[1:12]), out
    assert "WROTE" not in out and "MKDIR" not in out
    assert out.count("write refused") == 5
    assert "uid 65534 65534 65534" in out


def test_processes(sources: dict[str, str]) -> None:
    code = f"""
import os, subprocess
print('pid', os.getpid())
try:
    os.kill({os.getpid()}, 0); print('SIGNALLED HOST')
except OSError as e:
    print('kill refused', type(e).__name__)
try:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    print('FORKED')
except OSError as e:
    print('fork refused', type(e).__name__)
try:
    subprocess.run(['/bin/sh', '-c', 'true']); print('EXECUTED')
except OSError as e:
    print('exec refused', type(e).__name__)
try:
    os.execv('/bin/sh', ['/bin/sh', '-c', 'true'])
except OSError as e:
    print('execv refused', type(e).__name__)
import threading
try:
    threading.Thread(target=print).start(); print('THREAD')
except RuntimeError as e:
    print('thread refused')
"""
    out = _ok(run_confined(sources, code))
    assert "SIGNALLED" not in out and "FORKED" not in out and "EXECUTED" not in out
    assert "THREAD" not in out
    assert int(out.split()[1]) < 10  # its own pid namespace


def test_process_isolation_without_seccomp(sources: dict[str, str]) -> None:
    """Even without the worker's own limits, host processes are invisible (pid namespace)."""
    code = f"""
import os
try:
    os.kill({os.getpid()}, 0); print('SIGNALLED HOST')
except ProcessLookupError:
    print('no such process')
print(os.path.exists('/proc'))
"""
    out = _ok(run_confined(sources, code, confine=False))
    assert out.split() == ["no", "such", "process", "False"]


def test_memory_bomb(sources: dict[str, str]) -> None:
    code = """
try:
    hog = bytearray(400 * 1024 * 1024)
    print('ALLOCATED')
except MemoryError:
    print('MemoryError')
try:
    hog = [bytearray(1024) for _ in range(10 ** 6)]
    print('ALLOCATED')
except MemoryError:
    print('MemoryError')
"""
    proc = run_confined(sources, code, memory_mb=256)
    out = proc.stdout.decode()
    assert "ALLOCATED" not in out
    assert proc.returncode == 0 or proc.returncode > 128  # MemoryError, or killed


def test_environment_is_cleared(sources: dict[str, str]) -> None:
    code = "import os\nprint(sorted(os.environ))"
    out = _ok(run_confined(sources, code, env={"PGPASSWORD": "secret", "HOME": "/root"}))
    names = eval(out)  # a list of str printed by the child
    assert "PGPASSWORD" not in names and "HOME" not in names
    assert set(names) <= {"PWD", "LC_CTYPE"}


def test_only_stdio_descriptors(sources: dict[str, str]) -> None:
    rfd, wfd = os.pipe()  # inheritable by accident? close_fds and bwrap must not pass it
    os.set_inheritable(rfd, True)
    try:
        code = """
import os
open_fds = []
for fd in range(64):
    try:
        os.fstat(fd)
        open_fds.append(fd)
    except OSError:
        pass
print(open_fds)
"""
        out = _ok(run_confined(sources, code))
        assert out.strip() == "[0, 1, 2]"
    finally:
        os.close(rfd)
        os.close(wfd)


def test_cannot_raise_its_limits(sources: dict[str, str]) -> None:
    code = """
import resource
for name in ('RLIMIT_AS', 'RLIMIT_NPROC', 'RLIMIT_FSIZE', 'RLIMIT_NOFILE', 'RLIMIT_CPU'):
    which = getattr(resource, name)
    soft, hard = resource.getrlimit(which)
    try:
        resource.setrlimit(which, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        print('RAISED', name)
    except (ValueError, OSError):
        print('kept', name)
"""
    out = _ok(run_confined(sources, code))
    assert "RAISED" not in out and out.count("kept") == 5


def test_no_new_namespaces_or_tracing(sources: dict[str, str]) -> None:
    code = """
import os, ctypes
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWUSER = 0x10000000
print('unshare', libc.unshare(CLONE_NEWUSER), ctypes.get_errno())
PTRACE_TRACEME = 0
print('ptrace', libc.ptrace(PTRACE_TRACEME, 0, None, None), ctypes.get_errno())
"""
    out = _ok(run_confined(sources, code))
    assert "unshare -1" in out and "ptrace -1" in out


def test_available_reports_success(sources: dict[str, str]) -> None:
    assert sandbox.available(BWRAP) == (True, "bubblewrap starts a confined python3")
    ok, reason = sandbox.available(BWRAP, sources=sources)
    assert ok, reason


def test_available_reports_what_to_install() -> None:
    ok, reason = sandbox.available("/nonexistent/bwrap")
    assert not ok and "apt-get install bubblewrap" in reason


def test_executor_for_is_per_process(sources: dict[str, str]) -> None:
    a = sandbox.executor_for(sources, bwrap=BWRAP)
    assert sandbox.executor_for(sources, bwrap=BWRAP) is a
    a.close()


ECHO_EACH = """\
def f(values):
    return [query("SELECT $1", v)[0]["value"] for v in values]
"""


def test_every_type_survives_the_round_trip_through_the_backend(
    executor: sandbox.WorkerExecutor,
) -> None:
    # arguments -> worker -> query() parameters (JSON to the backend) -> rows (pickle to the
    # worker) -> the result (JSON): every type the SPI port returns keeps its type and value
    import datetime as dt
    import uuid
    from decimal import Decimal

    from wormhole.runtime import codec

    values = [
        None, True, False, 0, -(2**70), 1.5, "", "héllo ✓", "$x", b"\x00\xff",
        Decimal("12.50"), Decimal("-0.000001"),
        dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone.utc),
        dt.datetime(2026, 1, 2, 3, 4, 5), dt.date(2026, 11, 25), dt.time(23, 59, 59),
        dt.timedelta(days=-1, seconds=5), uuid.UUID("12345678-1234-5678-1234-567812345678"),
        [1, [2, None], "x"], {"a": [1, {"b": Decimal("1.1")}], "$t": 1},
    ]
    port = MemoryPort()
    text = executor.run(make_call(ECHO_EACH, values), port, never)
    got = codec.decode(text)["ok"]
    assert got == values
    assert [type(v) for v in got] == [type(v) for v in values]
    assert [p for _, p in port.log] == [[v] for v in values]


class _UnsendablePort(MemoryPort):
    def query(self, sql: str, params: "list[object] | tuple[object, ...]") -> Rows:
        return Rows([{"value": threading.Lock()}])


UNSENDABLE = """\
def f():
    try:
        query("SELECT $1", 1)
    except TypeError as e:
        return str(e)
"""


def test_a_result_value_that_cannot_be_sent_is_a_type_error_in_the_function(
    executor: sandbox.WorkerExecutor,
) -> None:
    text = executor.run(make_call(UNSENDABLE), _UnsendablePort(), never)
    assert "cannot be sent to the worker" in json.loads(text)["ok"]
    assert executor.run(make_call(RETURN_ONE), MemoryPort(), never) == '{"ok":1,"out":[]}'
