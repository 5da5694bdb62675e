"""The confined worker's main loop (runs inside bubblewrap, never inside a backend).

``sandbox.WorkerExecutor`` starts ``/usr/bin/python3 -I -S -B -c BOOTSTRAP`` inside bubblewrap
with the channel on fds 0 (backend -> worker) and 1 (worker -> backend). ``BOOTSTRAP`` reads one
``boot`` frame holding ``runtime.WORKER_MODULES`` (marshalled code or sources), builds the package
``wormhole_rt`` from them in ``sys.modules`` (so the runtime's relative imports work) and calls
:func:`main`.

The bootstrap itself is ``sandbox.BOOTSTRAP`` (it lives with the backend, which starts it).

``main`` reads ``hello`` (the module whitelist and the limits), applies hard resource limits
that the code it runs cannot raise again, and then serves calls one after the other: for each
``call`` it runs ``engine.run_call`` with a :class:`ChannelPort` (``query()`` becomes a
``query`` message answered by the backend with ``rows`` or ``qerr``; a discarded statement a
``nowait`` message, answered only by ``derr`` if it fails) and answers ``done`` with the
payload text (and again, with the failed statement's error, if ``derr`` answers it). The engine's compile cache lives on across calls, and so do the sources the
backend sent (by hash): a call for a function the worker has seen carries only its arguments.
While a call runs, the worker polls for answers without sleeping for as long as the backend
asked in that call (``spin``, at most ``MAX_SPIN``); between calls it always sleeps.
"""

from __future__ import annotations

import itertools
import math
import os
import resource
import struct
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs a new worker a few ms to import; annotations only
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any

from . import codec, engine, jsonlite
from .channel import (
    CALL,
    DERR,
    DONE,
    HELLO,
    NOWAIT,
    QERR,
    QUERY,
    ROWS,
    Channel,
    ChannelClosed,
)
from .errors import QUERY_ERRORS, DatabaseError, ForbiddenStatement
from .rows import Rows

#: the name of the package the bootstrap builds inside the worker.
PACKAGE = "wormhole_rt"

#: the channel limit inside the worker (the backend is trusted; args are capped by limits).
WORKER_MAX_FRAME = 1024 * 1024 * 1024 - 1
#: how many of the call's ``cpu_seconds`` budgets the worker's hard CPU limit allows in all;
#: once fewer than one budget is left the worker asks to be replaced.
CPU_BUDGETS = 8
#: open file descriptors: the channel, stderr, and a few for the stdlib's lazy imports.
MAX_OPEN_FILES = 16
#: the exit code of a worker that received something it does not understand.
EXIT_PROTOCOL = 2
#: the longest the worker polls its pipe without sleeping (the backend asks per call).
MAX_SPIN = 0.002


class ChannelPort:
    """The ``QueryPort`` inside the worker: ``query()`` is an RPC to the backend.

    A statement whose result the function discards, where its error could not be caught
    (``policy._defer_discarded_queries``), is sent without waiting (``defer``): the worker
    runs on while the backend runs it. The backend runs every statement in order and answers
    a deferred one only if it fails, with the answer to the next ``query`` (which then does
    not run) or to ``done``. From then on the call is *doomed*: every ``query()`` raises that
    error again and the call ends with it, reported at the deferred statement's line, as it
    would have ended in-process (where the error could not have been caught either).
    """

    def __init__(self, chan: Channel, call_id: int = 0) -> None:
        self.chan = chan
        self.call_id = call_id
        #: deferred statements sent since the last answer (an answer means they all ran)
        self.pending = 0
        #: what ``derr`` said of a deferred statement that failed: the call's outcome from then
        #: on (the call is *doomed*)
        self._doom: dict[str, Any] | None = None
        #: the function the deferred statements belong to (for the error's traceback)
        self.function = ""
        #: builds the error payload, should a deferred statement's failure come after ``done``
        self.fallback: Callable[[BaseException], str] | None = None

    def _request(self, sql: str, params: Sequence[object]) -> bytes:
        if type(sql) is not str:
            raise TypeError("query() needs the SQL text as a str")
        try:
            body = codec.encode_query(sql, list(params))
        except codec.CodecError as exc:
            raise TypeError(f"a query parameter cannot be sent to the database: {exc}") from None
        try:
            return body.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                "the query text or a parameter is not valid Unicode (a lone surrogate)"
            ) from None

    def defer(self, line: int, function: str, sql: str, params: Sequence[object]) -> None:
        if self._doom is not None:
            raise self._again()
        data = self._request(sql, params)
        # encode_query's text is one JSON object: the line goes in before its closing brace
        self.chan.send({"op": NOWAIT, "id": self.call_id}, b"%s,\"line\":%d}" % (data[:-1], line))
        self.function = function
        self.pending += 1

    def finish(self, text: str, error_payload: Callable[[BaseException], str]) -> str:
        if self._doom is not None:
            return error_payload(self._again())
        if self.pending:
            self.fallback = error_payload
        return text

    def deferred_error(self, body: bytes) -> Exception:
        """The error of the deferred statement a ``derr`` message reports."""
        try:
            info = jsonlite.loads(body.decode("utf-8"))
        except ValueError:
            raise SystemExit(EXIT_PROTOCOL) from None
        if type(info) is not dict or type(info.get("line")) is not int:
            raise SystemExit(EXIT_PROTOCOL)
        self.pending = 0
        self._doom = info
        return self._again()

    def _again(self) -> Exception:
        """The failed statement's error, new each time it is raised (one object raised over
        and over would keep every traceback it went through)."""
        assert self._doom is not None
        exc = _query_error(self._doom)
        exc._wh_where = (self._doom["line"], self.function)  # type: ignore[attr-defined]
        return exc

    def query(self, sql: str, params: Sequence[object]) -> Rows:
        if self._doom is not None:
            raise self._again()
        data = self._request(sql, params)
        self.chan.send({"op": QUERY, "id": self.call_id}, data)
        received = self.chan.recv(None)
        assert received is not None
        header, answer = received
        op = header["op"]
        self.pending = 0
        if op == ROWS:
            try:
                value = _unpickle(answer)
            except Exception:  # noqa: BLE001 - not what the backend sends
                raise SystemExit(EXIT_PROTOCOL) from None
            if type(value) is tuple and len(value) == 4:
                return _columns(*value)
            if type(value) is not tuple or len(value) != 2 or type(value[0]) is not list:
                raise SystemExit(EXIT_PROTOCOL)
            rows, rowcount = value
            return Rows(rows, rowcount if type(rowcount) is int else None)
        if op == QERR:
            raise _query_error(jsonlite.loads(answer.decode("utf-8")))
        if op == DERR:
            raise self.deferred_error(answer)
        raise SystemExit(EXIT_PROTOCOL)


def _columns(names: tuple[str, ...], kinds: list[str], cols: list[list[Any]],
             rowcount: int) -> Rows:
    """A row set the backend sent column by column: date and time columns as PostgreSQL's text
    (kind ``pgtz``/``pgts``/``pgdate``), read here exactly as the backend read it. The rows keep
    that text (``Rows._wire``), so returning them sends it on without formatting it again."""
    try:
        wire: dict[str, tuple[str, list[Any], list[Any]]] = {}
        values = list(cols)
        for index, kind in enumerate(kinds):
            if kind:
                values[index] = codec.pg_column(kind, cols[index])
                wire[names[index]] = (kind, values[index], cols[index])
        rows = Rows(map(dict, map(zip, itertools.repeat(names), zip(*values))), rowcount)
    except Exception:  # noqa: BLE001 - not what the backend sends
        raise SystemExit(EXIT_PROTOCOL) from None
    rows._wire = wire or None
    return rows


def _unpickle(data: bytes) -> Any:
    """Rows from the backend (``pickle``: the backend is trusted; it never unpickles ours)."""
    global _unpickle
    try:  # the C module alone: pickle.py itself imports re, io, codecs and more
        from _pickle import loads
    except ImportError:  # pragma: no cover - a Python without the C accelerator
        from pickle import loads

    _unpickle = loads  # type: ignore[assignment]  # imported on the first query only
    return loads(data)


def _query_error(info: Mapping[str, Any]) -> Exception:
    def text(key: str) -> str | None:
        value = info.get(key)
        return value if type(value) is str else None

    message = text("message") or "query failed"
    kind = text("type")
    for error in QUERY_ERRORS:
        if kind == error.__name__:
            return error(message)
    sqlstate = text("sqlstate")
    if sqlstate == "WH003":  # the same class as in-process (sqltext refuses before sending)
        return ForbiddenStatement(message)
    return DatabaseError(message, sqlstate, text("detail"), text("hint"))


def _modules(value: object) -> dict[str, frozenset[str] | None]:
    if type(value) is not dict:
        raise SystemExit(EXIT_PROTOCOL)
    result: dict[str, frozenset[str] | None] = {}
    for name, attrs in value.items():
        result[name] = None if attrs is None else frozenset(attrs)
    return result


def _hard(limit: int, value: int) -> None:
    resource.setrlimit(limit, (value, value))


def apply_limits(limits: engine.Limits) -> None:
    """Set the worker's hard resource limits (called once, before any user code is loaded).

    Hard limits can only be lowered by an unprivileged process, so nothing the user's code does
    can raise them again. CPU time is the exception: the soft limit moves with each call
    (:func:`arm_cpu`) under a hard ceiling of ``CPU_BUDGETS`` calls' worth.
    """
    if limits.memory_mb > 0:
        _hard(resource.RLIMIT_AS, limits.memory_mb * 1024 * 1024)
    _hard(resource.RLIMIT_CORE, 0)
    _hard(resource.RLIMIT_FSIZE, 0)
    _hard(resource.RLIMIT_NPROC, 0)
    _hard(resource.RLIMIT_NOFILE, MAX_OPEN_FILES)
    _hard(resource.RLIMIT_MEMLOCK, 0)
    _hard(resource.RLIMIT_MSGQUEUE, 0)
    locks = getattr(resource, "RLIMIT_LOCKS", None)
    if isinstance(locks, int):
        _hard(locks, 0)
    if limits.cpu_seconds > 0:
        total = limits.cpu_seconds * CPU_BUDGETS
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, total))
    _CPU_HARD.clear()  # read again: hard limits only ever go down
    _CPU_SOFT.clear()


# -- seccomp -----------------------------------------------------------------------------------

# Classic BPF, assembled here so no extra package is needed, installed by the worker itself
# (prctl through ctypes) once its limits are set. Not bubblewrap's --seccomp: bubblewrap execs
# python after loading the filter, so the filter could not deny execve.
_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_JGE_K = 0x35
_BPF_RET_K = 0x06
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000
_SECCOMP_RET_KILL_PROCESS = 0x80000000
_EPERM = 1
_AUDIT_ARCH_X86_64 = 0xC000003E
_X32_SYSCALL_BIT = 0x40000000

#: syscalls the worker never needs, x86_64 numbers. Denied with EPERM, so Python raises a clean
#: ``PermissionError``. Processes (fork/clone/exec), sockets, tracing, namespaces, mounts,
#: kernel keyrings, BPF, perf, io_uring, userfaultfd, module loading, reboot & co.
_DENIED_X86_64 = {
    "socket": 41, "connect": 42, "accept": 43, "sendto": 44, "sendmsg": 46, "bind": 49,
    "listen": 50, "socketpair": 53, "clone": 56, "fork": 57, "vfork": 58, "execve": 59,
    "kill": 62, "ptrace": 101, "syslog": 103, "setuid": 105, "setgid": 106,
    "setreuid": 113, "setregid": 114, "setresuid": 117, "setresgid": 119,
    "personality": 135, "chroot": 161, "mount": 165, "umount2": 166, "swapon": 167,
    "swapoff": 168, "reboot": 169, "sethostname": 170, "setdomainname": 171, "iopl": 172,
    "ioperm": 173, "init_module": 175, "delete_module": 176, "quotactl": 179, "tkill": 200,
    "kexec_load": 246, "add_key": 248, "request_key": 249, "keyctl": 250,
    "migrate_pages": 256, "unshare": 272, "move_pages": 279, "perf_event_open": 298,
    "accept4": 288, "recvmmsg": 299, "fanotify_init": 300, "name_to_handle_at": 303,
    "open_by_handle_at": 304, "setns": 308, "sendmmsg": 307, "process_vm_readv": 310,
    "process_vm_writev": 311, "kcmp": 312, "finit_module": 313, "seccomp": 317,
    "bpf": 321, "execveat": 322, "userfaultfd": 323, "pkey_alloc": 330,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
    "fspick": 433, "pidfd_open": 434, "clone3": 435, "pidfd_getfd": 438,
    "landlock_create_ruleset": 444, "process_madvise": 440, "mount_setattr": 442,
    "memfd_secret": 447,
}


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def seccomp_program() -> bytes | None:
    """The worker's seccomp filter as a BPF program, or None where it is not written yet.

    Only x86_64 is covered (syscall numbers are per architecture); on other machines the worker
    still has its namespaces and rlimits (python3-seccomp would cover them: future work). Any other architecture value at run time (i386 or x32
    entry points) kills the process.
    """
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        return None
    numbers = sorted(set(_DENIED_X86_64.values()))
    prog = [
        _insn(_BPF_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
        _insn(_BPF_JEQ_K, 1, 0, _AUDIT_ARCH_X86_64),
        _insn(_BPF_RET_K, 0, 0, _SECCOMP_RET_KILL_PROCESS),
        _insn(_BPF_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
        _insn(_BPF_JGE_K, 0, 1, _X32_SYSCALL_BIT),
        _insn(_BPF_RET_K, 0, 0, _SECCOMP_RET_KILL_PROCESS),
    ]
    deny_ret = _SECCOMP_RET_ERRNO | _EPERM
    for index, number in enumerate(numbers):
        # on a match jump to the final "deny"; it sits (remaining comparisons + 1) ahead
        remaining = len(numbers) - index - 1
        prog.append(_insn(_BPF_JEQ_K, remaining + 1, 0, number))
    prog.append(_insn(_BPF_RET_K, 0, 0, _SECCOMP_RET_ALLOW))
    prog.append(_insn(_BPF_RET_K, 0, 0, deny_ret))
    return b"".join(prog)


_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2


def install_seccomp() -> bool:
    """Install :func:`seccomp_program` on this process (irreversible). False where unsupported."""
    program = seccomp_program()
    if program is None:
        return False
    import ctypes

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    prctl = libc.prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong,
                      ctypes.c_ulong]
    if prctl(_PR_SET_NO_NEW_PRIVS, 1, None, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    if prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")
    return True


def confine(limits: engine.Limits) -> bool:
    """Everything the worker does to itself before user code: rlimits, then seccomp.

    Returns whether the seccomp filter is installed. ``ctypes`` is loaded before the limits (it
    maps libffi), and the filter last (it denies nothing the limits need).
    """
    import ctypes  # noqa: F401 - load it while memory and files are not yet limited

    apply_limits(limits)
    try:
        return install_seccomp()
    except OSError as exc:
        sys.stderr.write(f"wormhole worker: seccomp filter not installed: {exc}\n")
        return False


def cpu_used() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


_CPU_HARD: list[int] = []  # the hard RLIMIT_CPU, read once after ``apply_limits``
_CPU_SOFT: list[int] = []  # the soft RLIMIT_CPU ``arm_cpu`` last set


def _cpu_hard() -> int:
    if not _CPU_HARD:
        _CPU_HARD.append(resource.getrlimit(resource.RLIMIT_CPU)[1])
    return _CPU_HARD[0]


def arm_cpu(limits: engine.Limits) -> bool:
    """Give the next call ``cpu_seconds`` of CPU (soft limit); False once the budget is spent."""
    if limits.cpu_seconds <= 0:
        return True
    hard = _cpu_hard()
    soft = math.ceil(cpu_used()) + limits.cpu_seconds
    if hard != resource.RLIM_INFINITY and soft > hard:
        return False
    if _CPU_SOFT != [soft]:  # the soft limit moves once per CPU second, not per call
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
        _CPU_SOFT[:] = [soft]
    return True


_CPUS: list[frozenset[int]] = []  # [the CPUs this worker may use, the set it uses now]


def steer(avoid: object) -> None:
    """Keep off CPU ``avoid`` (the backend's, when it asked this call to spin), or use every
    allowed CPU again (``None``). Measured on a 2-core VM: a backend and its worker sharing
    one CPU run a call's ping-pong about twice as slowly as on two (each evicts the other from
    that core's caches), and once the scheduler has put them together it keeps them there,
    since only one of them is ever runnable. The backend asks only while every runnable task
    has a CPU, so on a busy server the worker goes wherever the scheduler sends it. One
    ``sched_setaffinity`` when the set changes, none otherwise."""
    if not _CPUS:
        try:
            allowed = frozenset(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            allowed = frozenset()
        _CPUS[:] = [allowed, allowed]
    allowed, now = _CPUS
    wanted = allowed
    if type(avoid) is int and avoid in allowed and len(allowed) > 1:
        wanted = allowed - {avoid}
    if wanted != now:
        try:
            os.sched_setaffinity(0, wanted)
        except OSError:
            return
        _CPUS[1] = wanted


def _seal_stdio() -> None:
    # The channel is fds 0 and 1; nothing may print onto it by accident.
    sys.stdin = None
    sys.stdout = None


def main(rfd: int = 0, wfd: int = 1) -> None:
    """Serve calls until the backend closes the channel."""
    _seal_stdio()
    try:
        import faulthandler

        faulthandler.enable()  # a crash leaves a Python traceback in the stderr tail
    except Exception:  # noqa: BLE001 - diagnostics only
        pass
    chan = Channel(rfd, wfd, WORKER_MAX_FRAME)
    modules: dict[str, frozenset[str] | None] = {}
    modules_key = ""
    limits: engine.Limits | None = None
    sources: dict[str, str] = {}  # hash -> source, as the backend sent them
    armed = False  # whether the CPU limit was re-armed after the last call
    # the last call, while a deferred statement of it may still be reported failed (``derr``)
    last: ChannelPort | None = None
    try:
        while True:
            received = chan.recv(None)
            assert received is not None
            header, body = received
            op = header["op"]
            if op == DERR and last is not None and header.get("id") == last.call_id:
                # a deferred statement of the call just answered failed: that is its outcome
                assert last.fallback is not None
                _done(chan, last.call_id, last.fallback(last.deferred_error(body)), False)
                last = None
                continue
            last = None
            if op == HELLO:
                hello = jsonlite.loads(body.decode("utf-8"))
                if type(hello) is not dict:
                    raise SystemExit(EXIT_PROTOCOL)
                modules = _modules(hello.get("modules"))
                modules_key = str(hello.get("modules_key", ""))
                new_limits = engine.Limits.from_mapping(hello.get("limits") or {})
                if limits is None:
                    confine(new_limits)
                limits = new_limits
                armed = False
            elif op == CALL and limits is not None:
                call_id = header.get("id")
                function_hash = header.get("hash")
                if type(call_id) is not int or type(function_hash) is not str:
                    raise SystemExit(EXIT_PROTOCOL)
                if header.get("reset") is True:
                    sources.clear()
                size = header.get("src")
                stored: tuple[str, bytes] | None = None
                if size is None:
                    source = sources.get(function_hash)
                    if source is None:  # the backend always sends a source we do not have
                        raise SystemExit(EXIT_PROTOCOL)
                    args_json = body.decode("utf-8", "surrogatepass")
                else:
                    if type(size) is not int or not 0 <= size <= len(body):
                        raise SystemExit(EXIT_PROTOCOL)
                    source = body[:size].decode("utf-8", "surrogatepass")
                    code_size = header.get("code")
                    if code_size is not None:  # checked code for this call's first run
                        name = header.get("name")
                        if (type(code_size) is not int or type(name) is not str
                                or not 0 <= code_size <= len(body) - size):
                            raise SystemExit(EXIT_PROTOCOL)
                        stored = (name, body[size:size + code_size])
                        size += code_size
                    args_json = body[size:].decode("utf-8", "surrogatepass")
                    sources[function_hash] = source
                call = engine.Call(
                    source_hash=function_hash,
                    source=source,
                    args_json=args_json,
                    modules=modules,
                    modules_key=modules_key,
                    limits=limits,
                )
                call.stored = stored
                spin = header.get("spin")
                steer(header.get("cpu") if type(spin) is float and spin > 0 else None)
                # armed after the previous call (the worker has been idle since): not again
                recycle = False if armed else not arm_cpu(limits)
                # poll without sleeping while the backend runs our queries, this call only
                chan.spin = min(spin, MAX_SPIN) if type(spin) is float and spin > 0 else 0.0
                port = ChannelPort(chan, call_id)
                try:
                    payload = engine.run_call(call, port)
                finally:
                    chan.spin = 0.0
                # re-armed: the idle worker has its budget
                recycle = recycle or not arm_cpu(limits)
                armed = True
                _done(chan, call_id, payload, recycle)
                if port.fallback is not None:
                    last = port
            else:
                raise SystemExit(EXIT_PROTOCOL)
    except ChannelClosed:
        return


def _done(chan: Channel, call_id: int, payload: str, recycle: bool) -> None:
    try:
        data = payload.encode("utf-8")
    except UnicodeEncodeError:
        data = engine.error_payload(ValueError(
            "the result contains text that is not valid Unicode (a lone surrogate)"
        )).encode("utf-8")
    reply: dict[str, Any] = {"op": DONE, "id": call_id}
    if recycle:
        reply["recycle"] = True
    chan.send(reply, data)
