"""Launch and supervise the confined worker; the backend's interruptible wait loop.

User code never runs inside a PostgreSQL backend unless a DBA vetted it. Everything else runs in
a worker process that the kernel confines (bubblewrap: user, pid, network, IPC, UTS and cgroup
namespaces, an empty root with a read-only ``/usr``, no capabilities, an unprivileged id, a
cleared environment) and that confines itself further (hard ``setrlimit`` limits, a seccomp
filter) before it loads any user code (``worker.confine``).

One worker per backend process, started on the first call (or just before it, while the
backend boots: ``spawn.prestart``) and reused by the next ones (its compile cache lives on). A worker that dies, sends a malformed frame, outlives its time or is
interrupted is killed (SIGKILL to its process group), reaped, and replaced on the next call.

The backend waits for the worker in a loop that wakes every 20 ms to run the host's
``check_interrupts`` (PostgreSQL's cancel, ``statement_timeout`` and terminate) and to enforce
``limits.timeout_ms``; while it waits it serves the worker's ``query`` messages with the
backend's ``QueryPort`` (SPI, as the calling role). Everything the worker sends is untrusted:
sizes are bounded, types checked strictly, and the result payload is passed on as text, never
decoded into objects here.

Warm calls are dominated by wake-ups, not Python: a call is a ping-pong of small messages
(call, query, rows, ..., done), and each hop that sleeps costs a context switch and, across
CPUs, an inter-processor wake-up (tens of microseconds on a VM). So each call sends only what
the worker lacks (the source once per worker, then the arguments alone; ``hello`` only when
the whitelist or limits changed), and, **only when every runnable task has a CPU at the start
of the call** (``_spare_cpu``: no more runnable tasks than usable CPUs, and at least two CPUs),
both sides poll their pipe without
sleeping for up to ``SPIN_SECONDS`` per wait before they block. A spin that runs out switches
spinning off for the rest of that call, so a busy or slow peer costs at most one spin per side
per call; on a busy server nobody spins. Interrupts are checked exactly as before (a spin is
far shorter than the 20 ms tick). Pinning the pair to one CPU was measured and not adopted: on
a shared server it keeps both on a CPU that another process may be holding.
"""

from __future__ import annotations

import json
import operator
import os
import re
import select
import signal
import datetime as _dt
import time
from collections import deque
from decimal import Context as _DecimalContext
from decimal import Decimal
from decimal import localcontext as _localcontext

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any

    from .rules import AheadRef, AheadStep

    #: a statement ``WorkerExecutor._complete`` ran: ``(QUERY, request, answer op, answer
    #: body)`` or ``(NOWAIT, request, what it raised or None, its line)``; the answer op is
    #: None while the body is the rows (pickled if the call is handed over), the request
    #: ``(sql, params, line)`` while it is not encoded yet (``_request_bytes``)
    _Ran = tuple[str, Any, Any, Any]

from . import WORKER_MODULES, codec
from .channel import (
    ABSOLUTE_MAX_FRAME,
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
    ProtocolError,
    current_cpu,
)
from .engine import Call, Limits, QueryPort, error_payload, source_hash
from .errors import QUERY_ERRORS, DatabaseError, LimitExceeded
from .rows import Rows
from .rules import MAX_AHEAD_ARGS
from .spawn import (
    BOOT_LOADER,
    BOOTSTRAP,
    DEFAULT_BWRAP,
    DEFAULT_PYTHON,
    SANDBOX_ID,
    _Process,
    bwrap_argv,
    take_prestarted,
)
from .spawn import boot_frame as _boot_frame

__all__ = [
    "BOOTSTRAP",
    "BOOT_LOADER",
    "DEFAULT_BWRAP",
    "DEFAULT_PYTHON",
    "WorkerCrashed",
    "WorkerExecutor",
    "available",
    "boot_frame",
    "bwrap_argv",
    "executor_for",
]

#: the backend's wake-up interval while it waits for the worker.
POLL_SECONDS = 0.02
#: how much of the worker's stderr is kept for crash reports.
STDERR_TAIL = 4096
#: how long (seconds) each side of a call polls its pipe without sleeping before it blocks,
#: when every runnable task has a CPU (see ``_spare_cpu``); 0 disables spinning. Per wait.
SPIN_SECONDS = 0.0003
#: how long (seconds) the backend waits, after a deferred statement failed, for the worker to
#: finish the call with that error (it usually takes microseconds); then it stops the worker
#: and ends the call with the error itself, as in-process execution would have at that line
DOOMED_GRACE = 0.05
#: the same once the worker has finished and been told (it only builds the error payload)
DONE_GRACE = 1.0
#: sources the backend remembers having sent to its worker (the worker keeps the same set),
#: by count and by total characters; past either, both sides forget them all and start over.
MAX_KNOWN_SOURCES = 256
MAX_KNOWN_CHARS = 8 << 20

class WorkerCrashed(Exception):
    """The worker died, was killed, could not start, or broke the protocol.

    ``reason`` says what happened (signal or exit status, and the tail of its stderr). The
    worker has been stopped and reaped; the next call starts a fresh one.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"the confined worker failed: {reason}")
        self.reason = reason


# -- the worker process ---------------------------------------------------------------------


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class _Worker:
    """One running worker: the bwrap process, its channel, its stderr tail.

    ``boot`` is what is left to send of the boot frame (all of it for a worker started now;
    the unsent rest, usually nothing, for one started early: ``spawn.prestart``)."""

    def __init__(self, proc: _Process, boot: bytes, limits: Limits) -> None:
        self.limits = limits
        self.started = time.monotonic()
        self.proc = proc
        self.pid = self.proc.pid
        self.errfd = self.proc.stderr
        os.set_blocking(self.errfd, False)
        self.tail = bytearray()
        self.chan = Channel(self.proc.stdout, self.proc.stdin, _max_frame(limits))
        self.hello: bytes | None = None
        #: what ``hello`` was built from (rebuilt only when these change)
        self.hello_modules: object = None
        self.hello_key: tuple[str, Limits] | None = None
        #: hash -> source text this worker has received (calls then carry only arguments)
        self.known: dict[str, str] = {}
        self.known_chars = 0
        self.next_id = 1
        self.alive = True
        self.boot = boot

    def drain(self) -> None:
        """Keep the last ``STDERR_TAIL`` bytes of the worker's stderr (never blocks)."""
        for _ in range(64):
            try:
                chunk = os.read(self.errfd, 65536)
            except (BlockingIOError, OSError):
                return
            if not chunk:
                return
            self.tail += chunk
            if len(self.tail) > STDERR_TAIL:
                del self.tail[: len(self.tail) - STDERR_TAIL]

    def stop(self) -> None:
        """SIGKILL the process group, reap it, close the pipes. Idempotent."""
        if not self.alive:
            return
        self.alive = False
        if self.proc.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.kill()
        self.proc.wait(5.0)  # SIGKILL cannot be ignored
        self.drain()
        self.chan.close()
        self.proc.close()

    def abandon(self) -> None:
        """Forget a worker inherited through fork(): it is the parent's, not ours to kill."""
        self.alive = False
        self.proc.close()

    def exit_reason(self) -> str:
        """Wait briefly for the process to end on its own and describe how it ended."""
        code = self.proc.wait(1.0)
        self.stop()
        if code is None:
            what = "the worker closed its channel"
        else:
            # bubblewrap exits with 128 + N when the sandboxed process was killed by signal N
            signum = -code if code < 0 else code - 128 if code > 128 else 0
            if signum:
                what = f"the worker was killed by signal {signum} ({_signal_name(signum)})"
                what += _signal_hint(signum, self.limits)
            else:
                what = f"the worker exited with status {code}"
        tail = self.tail.decode("utf-8", "replace").strip()
        if tail:
            what += "; its last words: " + tail[-1500:]
        return what


def _signal_hint(signum: int, limits: Limits) -> str:
    if signum == signal.SIGXCPU:
        return f": it used more than the DBA's {limits.cpu_seconds} s of CPU time (cpu_seconds)"
    if signum == signal.SIGKILL:
        return (
            f" (the hard CPU limit, the memory limit of {limits.memory_mb} MB via the kernel's "
            "OOM killer, or a kill from outside)"
        )
    if signum in (signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS):
        return f" (an interpreter crash, or memory exhausted: memory_mb={limits.memory_mb})"
    if signum == signal.SIGSYS:
        return " (a forbidden system call)"
    return ""


def _max_frame(limits: Limits) -> int:
    size = 4 * limits.max_result_bytes + 8 * limits.max_output_bytes + (1 << 20)
    size = max(size, 4 * limits.max_args_bytes + (1 << 20), 64 << 20)
    return min(size, ABSOLUTE_MAX_FRAME)


def _max_text(limits: Limits) -> int:
    # the engine caps the success payload at max_result_bytes characters; an error payload
    # holds at most max_output_bytes of print() output (JSON-escaped: up to 6x) and a short
    # message and traceback.
    return limits.max_result_bytes + 6 * limits.max_output_bytes + 65536


def _rlimit_key(limits: Limits) -> tuple[int, int]:
    return (limits.memory_mb, limits.cpu_seconds)


def _clip(value: object, limit: int = 8192) -> str | None:
    if value is None:
        return None
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "... [truncated]"


class WorkerExecutor:
    """Runs calls in the confined worker; one worker process at a time, started lazily."""

    def __init__(
        self,
        sources: Mapping[str, str | bytes] | Callable[[], Mapping[str, str | bytes]],
        *,
        bwrap: str = DEFAULT_BWRAP,
        python: str = DEFAULT_PYTHON,
        stored_code: bool = False,
        adopt: bool = False,
    ) -> None:
        self._sources_of: Callable[[], Mapping[str, str | bytes]] | None = None
        self._boot: bytes | None = None
        if callable(sources):  # built when a worker is first started here (not adopted)
            self._sources_of = sources
        else:
            self._boot = self._checked_boot(sources)
        #: whether the first worker may be the one ``spawn.prestart`` started early in this
        #: process (the host's executor: its boot frame is the same compiled runtime)
        self.adopt = adopt
        self.bwrap = bwrap
        self.python = python
        self._worker: _Worker | None = None
        #: a call sent before the host finished its checks (``dispatch``), not yet run
        self._early: _Early | None = None
        self._pid = os.getpid()
        #: the spin budget per wait (seconds); see ``SPIN_SECONDS`` and ``_spare_cpu``
        self.spin = SPIN_SECONDS
        #: whether the worker's Python loads this process's marshalled code (``call.stored``
        #: is then sent with a source, and the worker need not check it again)
        self.stored_code = stored_code
        #: statistics (also read by tests and benchmarks)
        self.starts = 0
        #: calls in which both sides were allowed to spin (every runnable task had a CPU)
        self.spun_calls = 0
        #: calls sent before the host's checks were done (``dispatch``) and then run
        self.dispatched = 0
        #: statements the worker waited for (``query``) and sent without waiting (``nowait``)
        self.answered = 0
        self.deferred = 0
        #: statements run ahead (``call.ahead``) whose result answered the worker's ``query``,
        #: and those the worker did not ask for (none, unless the analysis is wrong)
        self.ahead = 0
        self.ahead_unused = 0
        #: calls this backend finished itself, the worker not needed (``_complete``), and
        #: calls it started so but handed to the worker (``_complete`` could not finish)
        self.completed = 0
        self.handed_over = 0
        self.last_start_seconds = 0.0
        #: whether the current worker is one ``spawn.prestart`` started early
        self.adopted = False

    @staticmethod
    def _checked_boot(sources: Mapping[str, str | bytes]) -> bytes:
        missing = [name for name in WORKER_MODULES if name not in sources]
        if missing:
            raise ValueError(f"worker sources are missing: {', '.join(missing)}")
        return boot_frame(sources)

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def worker_pid(self) -> int | None:
        """The pid of the running bubblewrap process (None when no worker is running)."""
        w = self._worker
        return w.pid if w is not None and w.alive else None

    def close(self) -> None:
        """Stop the worker (if any). The executor stays usable: the next call starts one."""
        worker, self._worker = self._worker, None
        if worker is not None:
            if os.getpid() == self._pid:
                worker.stop()
            else:
                worker.abandon()

    def _start(self, limits: Limits) -> _Worker:
        argv = bwrap_argv(self.bwrap, self.python, BOOTSTRAP)
        begin = time.monotonic()
        early = take_prestarted(argv) if self.adopt else None
        self.adopt = False  # once: a worker that dies later is replaced by a new one here
        if early is not None:
            self.starts += 1
            self.adopted = True
            return _Worker(early[0], early[1], limits)
        self.adopted = False
        if self._boot is None:
            assert self._sources_of is not None
            self._boot = self._checked_boot(self._sources_of())
        try:
            worker = _Worker(_Process(argv), self._boot, limits)
        except OSError as exc:
            raise WorkerCrashed(
                f"cannot start {self.bwrap} ({exc.strerror or exc}); install bubblewrap "
                "(Debian: apt-get install bubblewrap) and check that user namespaces are enabled"
            ) from None
        self.starts += 1
        self.last_start_seconds = time.monotonic() - begin
        return worker

    def _current(self, limits: Limits) -> _Worker:
        if os.getpid() != self._pid:  # forked: the worker belongs to the parent
            if self._worker is not None:
                self._worker.abandon()
            self._worker = None
            self._pid = os.getpid()
        worker = self._worker
        if worker is not None and (
            not worker.alive
            or worker.proc.poll() is not None
            or _rlimit_key(worker.limits) != _rlimit_key(limits)
        ):
            worker.stop()
            worker = self._worker = None
        if worker is None:
            worker = self._worker = self._start(limits)
        return worker

    # -- one call ------------------------------------------------------------------------

    def dispatch(self, source_hash: str, source: str, args_json: str,
                 modules: Mapping[str, frozenset[str] | None], modules_key: str,
                 limits: Limits) -> bool:
        """Send a call to the running worker now, before the host has finished its checks, so
        the worker wakes up and starts it while the backend does them; returns whether it did.

        Only when the call needs nothing the worker lacks: the worker is running, has this
        source, and the same whitelist and limits. The worker's queries wait in the pipe until
        :meth:`run` serves them, in the call's subtransaction, exactly as if it had been sent
        there. :meth:`run` checks that the call it is given is the one dispatched; the host
        calls :meth:`cancel` on every path that does not get there. A dispatch that is not run
        stops the worker (it may be running user code): it only costs a new worker.
        """
        worker = self._worker
        if (self._early is not None or worker is None or not worker.alive or worker.boot
                or os.getpid() != self._pid or len(args_json) > _EARLY_MAX_ARGS
                or worker.known.get(source_hash) != source
                or worker.hello_modules is not modules
                or worker.hello_key != (modules_key, limits)):
            return False
        body = args_json.encode("utf-8", "surrogatepass")
        if len(body) > _EARLY_MAX_ARGS:
            return False
        call_id = worker.next_id
        header, spin = self._call_header(call_id, source_hash)
        try:
            # never waits: a worker that stopped reading must not hold the backend here,
            # where nothing checks for interrupts (run's send does, with its tick)
            sent = worker.chan.offer(header, body)
        except (ChannelClosed, OSError):
            sent = None
        if not sent:
            if spin:
                self.spun_calls -= 1  # counted again when run sends the call itself
            if sent is None:  # part of a frame went out, or the pipe is gone: start afresh
                self._discard(worker)
            return False
        worker.next_id += 1
        self._early = _Early(worker, call_id, source_hash, args_json, spin)
        return True

    def cancel(self) -> None:
        """Stop the worker if a dispatched call was not run (see :meth:`dispatch`)."""
        early, self._early = self._early, None
        if early is not None:
            self._discard(early.worker)

    def _call_header(self, call_id: int, source_hash: str) -> tuple[dict[str, Any], float]:
        header: dict[str, Any] = {"op": CALL, "id": call_id, "hash": source_hash}
        spin = self.spin if self.spin > 0 and _spare_cpu() else 0.0
        if spin:
            header["spin"] = spin
            cpu = current_cpu()
            if cpu >= 0:
                header["cpu"] = cpu  # the worker keeps off this CPU while it spins (see main)
            self.spun_calls += 1
        return header, spin

    def run(self, call: Call, port: QueryPort, check_interrupts: Callable[[], None]) -> str:
        """Run ``call`` in the worker and return its payload text (never decoded here).

        Raises ``WorkerCrashed`` when the worker dies or misbehaves, ``LimitExceeded`` for
        ``timeout_ms`` or an oversized result, and re-raises whatever ``check_interrupts`` or
        ``port`` raise other than ``DatabaseError`` (the worker is killed first).
        """
        limits = call.limits
        early, self._early = self._early, None
        started = time.monotonic()
        replay = None
        if (early is None and call.result is not None and call.ahead is not None
                and len(call.args_json) <= MAX_AHEAD_ARGS):
            done = self._complete(call, port, started)
            if isinstance(done, str):
                self.completed += 1
                return done
            replay = done  # the worker runs the call: what ran already answers it first
            self.handed_over += 1
        worker = self._current(limits)
        if early is not None and not early.runs(worker, call):
            if early.worker is worker:  # another call than the one dispatched: start afresh
                self._discard(worker)
                worker = self._current(limits)
            early = None
        try:
            return self._run(worker, call, port, check_interrupts, early, replay, started)
        except ChannelClosed:
            reason = worker.exit_reason()
            self._forget(worker)
            # a cancel reaches the backend's whole process group, and so a worker still being
            # spawned into it: that call ends with the cancel, not with a crashed worker
            check_interrupts()
            raise WorkerCrashed(reason) from None
        except ProtocolError as exc:
            self._discard(worker)
            raise WorkerCrashed(f"the worker sent a malformed message ({exc}); it was stopped") \
                from None
        except BaseException:
            self._discard(worker)
            raise

    def _forget(self, worker: _Worker) -> None:
        if self._worker is worker:
            self._worker = None

    def _discard(self, worker: _Worker) -> None:
        """Stop ``worker`` (its process group) and forget it: the next call starts another."""
        worker.stop()
        self._forget(worker)

    def _complete(self, call: Call, port: QueryPort, started: float
                  ) -> str | deque[_Ran]:
        """Finish a call whose function is its chain of statements (``call.result``) without
        the worker: run every statement as the worker's backend would have run it ahead
        (:meth:`_Ahead.run_all`), then build the result from the same values. The payload text
        is the worker's, exactly (the same values, the same codec, no output: the function
        calls nothing but ``query``).

        Anything else than everything going as the chain says (a test that is true or raises,
        a subscript or statement that fails, a result the codec refuses or over the limit)
        returns what ran instead: the worker then runs the call, and its requests must match
        those statements first (``_run``'s ``replay``). Where the call's statements took longer
        than the DBA's ``timeout_ms``, it ends as a worker call would have (``LimitExceeded``).
        A result that may be large (over ``COMPLETE_MAX_RESULT``, ``max_result_bytes``, or a
        16th of the worker's ``memory_mb``, by a bound taken before it is encoded: ``_fits``) is
        left to the worker too, which builds it under its own limits.
        """
        assert call.ahead is not None and call.result is not None
        steps, args = call.ahead
        tests, returned = call.result
        limits = call.limits
        ahead = _Ahead(port, steps, args, _max_frame(limits))
        deadline = started + limits.timeout_ms / 1000.0 if limits.timeout_ms > 0 else None
        if ahead.run_all(deadline):
            if deadline is not None and time.monotonic() > deadline:
                raise LimitExceeded("timeout_ms", "the call ran longer than the DBA's limit "
                                    "(wormhole_limits.timeout_ms)")
            try:
                for test in tests:
                    if _holds(test, args, ahead.values):
                        raise _Taken
                value = _build(returned, args, ahead.values)
                budget = min(COMPLETE_MAX_RESULT, limits.max_result_bytes,
                             limits.memory_mb * 65536) - 16  # (1 MiB / 16; '{"ok":,"out":[]}')
                if not _fits(value, budget):
                    return ahead.ran
                text = '{"ok":' + codec.encode(value, root="result") + ',"out":[]}'
            except Exception:  # noqa: BLE001 - the function raises or branches: the worker
                return ahead.ran
            if len(text) <= limits.max_result_bytes:
                return text
        return ahead.ran

    def _run(
        self,
        worker: _Worker,
        call: Call,
        port: QueryPort,
        check_interrupts: Callable[[], None],
        early: _Early | None = None,
        replay: deque[_Ran] | None = None,
        started: float | None = None,
    ) -> str:
        limits = call.limits
        chan = worker.chan
        chan.max_frame = _max_frame(limits)
        deadline: float | None = None
        last_tick = time.monotonic()

        #: this call's deferred statement that failed: none of its statements runs after it
        failure: _Failed | None = None

        def tick() -> None:
            nonlocal last_tick
            last_tick = time.monotonic()
            check_interrupts()
            if failure is not None:  # the grace bounds the wait now, not timeout_ms
                if time.monotonic() >= failure.deadline:
                    raise LimitExceeded("timeout_ms", "the worker did not end the call after "
                                        "its deferred statement failed")
            elif deadline is not None and time.monotonic() > deadline:
                raise LimitExceeded(
                    "timeout_ms",
                    f"the call ran longer than the DBA's limit of {limits.timeout_ms} ms "
                    "(wormhole_limits.timeout_ms); the worker was stopped",
                )
            worker.drain()

        if limits.timeout_ms > 0:
            deadline = (last_tick if started is None else started) + limits.timeout_ms / 1000.0
        if early is not None:  # sent already (dispatch)
            call_id, spin = early.call_id, early.spin
            self.dispatched += 1
        else:
            call_id, spin = self._send_call(worker, call, tick)
        chan.spin = spin
        # the statements the function starts with, each run before the worker asks for it:
        # the first now, while the worker wakes up and gets there; the next after each answer
        ahead = None if (call.ahead is None or replay is not None
                         or len(call.args_json) > MAX_AHEAD_ARGS) else _Ahead(
            port, *call.ahead, chan.max_frame)
        pending = None if ahead is None else ahead.next()
        woken = False
        recycle = False
        told = False  # the worker knows (it answered a query with it): its result is that error
        try:
            while True:
                received = chan.recv(POLL_SECONDS)
                if received is None:
                    tick()
                    continue
                if not woken:
                    # the first answer waited for the worker to wake up, which can outlast a
                    # spin after an idle spell without saying anything about the waits after it
                    woken = True
                    chan.spin = spin
                header, payload = received
                if header.get("id") != call_id:
                    raise ProtocolError(
                        f"message for call {header.get('id')!r}, expected {call_id}")
                op = header["op"]
                if replay:  # the statements _complete ran: each the worker's next request
                    kind, request, first, second = replay[0]
                    if type(request) is tuple:  # encoded only now that it is compared
                        request = _request_bytes(request)
                    if op == kind and (payload == request or _same(payload, request,
                                                                   kind == NOWAIT)):
                        replay.popleft()
                        self.ahead += 1
                        if kind == QUERY:
                            self.answered += 1
                            if first is None:  # rows, as _run_statement answers them
                                first, second = _rows_answer(second)
                            chan.send({"op": first, "id": call_id}, second, tick=tick)
                        else:
                            self.deferred += 1
                            if first is not None and failure is None:
                                failure = _Failed(first, second)
                        if time.monotonic() - last_tick >= POLL_SECONDS:
                            tick()
                        continue
                    if any(entry[0] == NOWAIT for entry in replay) and not (
                            op == DONE and payload.startswith(b'{"err"')):
                        raise ProtocolError(
                            f"its {op!r} is not the statement the function runs next, which "
                            "this backend ran already (the call's statements are rolled back)")
                    # no discarded statement left unconfirmed: served as usual from here (a
                    # statement run ahead that the worker did not ask for stays, as in the
                    # chain: a worker that skips one could have run it itself)
                    replay.clear()
                    self.ahead_unused += 1
                if ahead is not None and ahead.unconfirmed:
                    # a discarded statement run ahead: the worker must send exactly it next
                    # (or end the call with an error, which rolls it back)
                    request, error, line = ahead.unconfirmed[0]
                    if op == NOWAIT and (payload == request or _same(payload, request, True)):
                        del ahead.unconfirmed[0]
                        self.deferred += 1
                        self.ahead += 1
                        if error is not None and failure is None:
                            failure = _Failed(error, line)
                        if time.monotonic() - last_tick >= POLL_SECONDS:
                            tick()
                        continue
                    if not (op == DONE and payload.startswith(b'{"err"')):
                        raise ProtocolError(
                            f"its {op!r} is not the statement at line {line}, which the "
                            "function runs next and this backend ran ahead (the call's "
                            "statements are rolled back)")
                if pending is not None:  # is this message the statement run ahead?
                    request, answer_op, answer = pending
                    pending = None
                    if op == QUERY and (payload == request or _same(payload, request)):
                        self.answered += 1
                        self.ahead += 1
                        chan.send({"op": answer_op, "id": call_id}, answer, tick=tick)
                        assert ahead is not None
                        pending = ahead.next()  # while the worker reads this answer
                        if time.monotonic() - last_tick >= POLL_SECONDS:
                            tick()
                        continue
                    self.ahead_unused += 1  # not what the function asked: the chain stops
                if op == QUERY:
                    self.answered += 1
                    if failure is None:
                        answer_op, answer = _serve_query(port, payload)
                    else:  # not run: the call is over, with the deferred statement's error
                        answer_op, answer, told = DERR, failure.body, True
                    chan.send({"op": answer_op, "id": call_id}, answer, tick=tick)
                    if time.monotonic() - last_tick >= POLL_SECONDS:
                        tick()  # a worker that only sends queries must still be interruptible
                elif op == NOWAIT:
                    self.deferred += 1
                    if failure is None:
                        failure = _serve_deferred(port, payload)
                    if time.monotonic() - last_tick >= POLL_SECONDS:
                        tick()
                elif op == DONE:
                    text = _payload_text(payload, limits)
                    recycle = recycle or header.get("recycle") is True
                    if failure is not None:
                        if not told:
                            # the worker finished before it heard: it answers with that error
                            # (building a payload, no user code: a longer grace)
                            chan.send({"op": DERR, "id": call_id}, failure.body, tick=tick)
                            told = True
                            failure.deadline = time.monotonic() + DONE_GRACE
                            continue
                        if not text.startswith('{"err"'):
                            raise ProtocolError("a deferred statement failed, yet the worker's "
                                                "result is not that error")
                    if recycle:
                        self._discard(worker)
                    return text
                else:
                    raise ProtocolError(f"unexpected message {op!r} from the worker")
        except (ChannelClosed, ProtocolError, LimitExceeded):
            if failure is None:
                raise
            # the outcome is known: in-process the call would have ended at the failed
            # statement, so a worker that goes on past it (a loop catching the error: ``tick``
            # ends the grace), dies or misbehaves does not turn it into a timeout or a crash
            self._discard(worker)
            return failure.payload(call)

    def _send_call(self, worker: _Worker, call: Call,
                   tick: Callable[[], None]) -> tuple[int, float]:
        """Send what the worker lacks (boot, hello, the source) and the call; (id, spin)."""
        chan = worker.chan
        limits = call.limits
        if worker.boot:
            _send_raw(chan, worker.boot, tick)
            worker.boot = b""
        if worker.hello_modules is not call.modules or worker.hello_key != (
            call.modules_key, limits
        ):
            hello = _hello_body(call)
            if hello != worker.hello:
                chan.send({"op": HELLO}, hello, tick=tick)
                worker.hello = hello
            worker.hello_modules, worker.hello_key = call.modules, (call.modules_key, limits)
        call_id = worker.next_id
        worker.next_id += 1
        header, spin = self._call_header(call_id, call.source_hash)
        args = call.args_json.encode("utf-8", "surrogatepass")
        if worker.known.get(call.source_hash) != call.source:
            # the worker has not seen this source (or a different text under this hash, which
            # its engine will refuse): send it; later calls send only the arguments
            if (len(worker.known) >= MAX_KNOWN_SOURCES
                    or worker.known_chars + len(call.source) > MAX_KNOWN_CHARS):
                worker.known.clear()
                worker.known_chars = 0
                header["reset"] = True  # the worker forgets its sources too
            worker.known[call.source_hash] = call.source
            worker.known_chars += len(call.source)
            source = call.source.encode("utf-8", "surrogatepass")
            header["src"] = len(source)
            stored = call.stored if self.stored_code else None
            if stored is not None:
                # the code wormhole_install checked under this whitelist: the worker's first
                # run need not load the parser (its engine re-hashes the source all the same)
                header["name"], header["code"] = stored[0], len(stored[1])
                body = source + stored[1] + args
            else:
                body = source + args
        else:
            body = args
        chan.send(header, body, tick=tick)
        return call_id, spin


class _Early:
    """A call :meth:`WorkerExecutor.dispatch` sent before the host's checks were done."""

    __slots__ = ("worker", "call_id", "source_hash", "args_json", "spin")

    def __init__(self, worker: _Worker, call_id: int, source_hash: str, args_json: str,
                 spin: float) -> None:
        self.worker = worker
        self.call_id = call_id
        self.source_hash = source_hash
        self.args_json = args_json
        self.spin = spin

    def runs(self, worker: _Worker, call: Call) -> bool:
        """Is ``call``, in ``worker``, exactly what was dispatched?"""
        return (worker is self.worker and call.source_hash == self.source_hash
                and call.args_json == self.args_json
                and worker.known.get(call.source_hash) == call.source
                and worker.hello_modules is call.modules
                and worker.hello_key == (call.modules_key, call.limits))


#: the largest arguments (bytes) sent by ``dispatch``: far below a pipe's 64 KiB, so an empty
#: pipe takes them at once (a pipe the worker has filled or shrunk makes ``dispatch`` decline)
_EARLY_MAX_ARGS = 16384

_LOADAVG: list[int] = []  # [fd of /proc/loadavg, usable CPUs], opened on first use


def _spare_cpu() -> bool:
    """Is there a CPU for the worker while this backend spins?

    Reads the number of runnable tasks (``/proc/loadavg``'s fourth field, counting this
    backend) from a descriptor kept open: one ``pread``, and asks :func:`_spin_allowed`.
    False where it cannot tell.
    """
    if not _LOADAVG:
        try:
            fd = os.open("/proc/loadavg", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            fd = -1
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = os.cpu_count() or 1
        _LOADAVG[:] = [fd, cpus]
    fd, cpus = _LOADAVG
    if fd < 0 or cpus < 2:
        return False
    try:
        fields = os.pread(fd, 128, 0).split()
        running = int(fields[3].split(b"/")[0])
    except (OSError, IndexError, ValueError):
        return False
    return _spin_allowed(running, cpus)


def _spin_allowed(running: int, cpus: int) -> bool:
    """Spin when every runnable task, this backend included, has a CPU of its own.

    The count is a snapshot, and the task beside us is most often about to sleep: the
    client or a network proxy that has just handed over the request. Measured on a 2-core VM
    with the benchmark's delay proxy (+1 ms): allowing one other runnable task took the
    worker's ``get_user_summary`` from 1.11x to 1.07x of PL/Python, ``process_order`` from
    1.13x to 1.10x. A spinning side yields between polls, and a spin that runs out is not
    repeated in that call. On a busy server (more runnable tasks than CPUs) both sides block
    at once, as if spinning were off.
    """
    return cpus >= 2 and running <= cpus


def boot_frame(sources: Mapping[str, str | bytes]) -> bytes:
    """The ``boot`` frame ``BOOT_LOADER`` reads: ``WORKER_MODULES`` in order, each as its source
    text or as ``marshal.dumps`` of its compiled code (from the same Python as the worker's)."""
    return _boot_frame(sources, WORKER_MODULES)


def _send_raw(chan: Channel, frame: bytes, tick: Callable[[], None]) -> None:
    """Send an already framed message (the boot frame is built once per executor)."""
    os.set_blocking(chan.wfd, False)
    data = memoryview(frame)
    wpoll = select.poll()
    wpoll.register(chan.wfd, select.POLLOUT)
    while data:
        try:
            n = os.write(chan.wfd, data)
        except BlockingIOError:
            n = 0
        except BrokenPipeError:
            raise ChannelClosed("the worker closed its channel during start-up") from None
        data = data[n:]
        if data and not wpoll.poll(int(POLL_SECONDS * 1000)):
            tick()


def _hello_body(call: Call) -> bytes:
    modules = {
        name: None if attrs is None else sorted(attrs) for name, attrs in call.modules.items()
    }
    return json.dumps(
        {"modules": modules, "modules_key": call.modules_key, "limits": call.limits.as_dict()},
        sort_keys=True,
        separators=(",", ":"),
    ).encode("utf-8")


_REQUEST_KEYS = frozenset({"sql", "params"})
#: what a statement the worker asked for may fail with (its answer says so, the call goes on)
_FAILURES: tuple[type[Exception], ...] = (DatabaseError, *QUERY_ERRORS)
_DEFERRED_KEYS = frozenset({"sql", "params", "line"})


def _request(payload: bytes, keys: frozenset[str]) -> dict[str, Any]:
    """A ``query`` or ``nowait`` request from the worker, checked (untrusted input)."""
    try:  # (the channel bounded the payload by ``_max_frame(limits)`` already)
        request = codec.decode(payload, max_bytes=ABSOLUTE_MAX_FRAME)
    except codec.CodecError as exc:
        raise ProtocolError(f"malformed query request: {exc}") from None
    if (type(request) is not dict or request.keys() != keys
            or type(request["sql"]) is not str or type(request["params"]) is not list):
        raise ProtocolError("a query request must be {'sql': str, 'params': list}"
                            + (" with an int 'line'" if "line" in keys else ""))
    return request


def _failure(exc: BaseException) -> dict[str, Any]:
    """What the worker is told of a statement that failed (``qerr``/``derr``)."""
    if isinstance(exc, DatabaseError):
        return {
            "message": _clip(exc.args[0] if exc.args else str(exc)),
            "sqlstate": _clip(exc.sqlstate, 16),
            "detail": _clip(exc.detail),
            "hint": _clip(exc.hint),
        }
    # what converting the result raised (a jsonb value nested too deep, say): in-process
    # the function gets the same exception from query() and can catch it
    kind = next(k for k in QUERY_ERRORS if isinstance(exc, k))  # subclasses: their base
    return {"type": kind.__name__, "message": _clip(str(exc))}


def _serve_query(port: QueryPort, payload: bytes) -> tuple[str, bytes]:
    """Run one ``query`` request from the worker; returns the answer (op, body)."""
    request = _request(payload, _REQUEST_KEYS)
    op, body, _ = _run_statement(port, request["sql"], request["params"])
    return op, body


class _Ahead:
    """The statements a call starts with (``call.ahead``: ``policy.ahead_statements`` and the
    call's positional arguments), each run before the worker asks for it.

    :meth:`next` runs the next statement the worker waits for and returns ``(the request the
    worker will send for it, answer op, answer body)``, or None when the chain is over. Its
    arguments are the call's, or values an earlier statement assigned (its rows subscripted
    with literal keys), taken here from the same rows the worker gets; the request is encoded
    as the worker's ``ChannelPort`` encodes it (same codec, same values). Before a statement,
    the tests of the ``if`` statements the function passes on its way there are evaluated on
    the same values (:func:`_truth`): the chain goes on only where each is false. The
    statements whose result the function discards that come first are run too, each kept in
    :attr:`unconfirmed` until the worker sends it (``nowait``): ``_run`` accepts nothing else
    from the worker meanwhile, so their effects stay only if the function ran them.

    The chain stops where the function would stop or could go elsewhere: a test that is true
    or raises, a subscript that raises (no rows: ``IndexError``), a statement that fails (the
    worker's ``query()`` raises; a discarded one is kept with its error), an argument the
    worker could not send (the codec refuses it, the frame is over the limit: not run).
    """

    __slots__ = ("port", "steps", "args", "max_frame", "values", "unconfirmed", "ran")

    def __init__(self, port: QueryPort, steps: tuple[AheadStep, ...], args: list[Any],
                 max_frame: int) -> None:
        self.port = port
        self.steps = steps
        self.args = args
        self.max_frame = max_frame
        #: what each step run so far assigned (read by the steps after it)
        self.values: list[Any] = []
        #: discarded statements run ahead that the worker has not sent yet, oldest first:
        #: ``(its nowait request, what it raised or None, its line)``
        self.unconfirmed: list[tuple[bytes, Exception | None, int]] = []

    def next(self) -> tuple[bytes, str, bytes] | None:
        while True:
            index = len(self.values)
            if index >= len(self.steps):
                return None
            sql, refs, keys, line, tests = self.steps[index]
            try:
                params = self._arguments(refs, tests)
                request = _request_bytes((sql, params, line))
            except Exception:  # noqa: BLE001 - the function raises or branches there
                self._stop()
                return None
            if len(request) > self.max_frame:
                self._stop()
                return None
            if line:
                try:
                    self.port.query(sql, params)
                except _FAILURES as exc:  # the call fails there once the worker gets there
                    self.unconfirmed.append((request, exc, line))
                    self._stop()
                    return None
                self.unconfirmed.append((request, None, line))
                continue
            op, body, rows = _run_statement(self.port, sql, params)
            if rows is None or index + 1 >= len(self.steps) or rows._wire:
                # it failed (the worker's query() raises), or it was the last; or the worker
                # reads some of its values from PostgreSQL's text itself (a large row set's
                # dates and times): the next steps' arguments are taken only from values sent
                # as they are
                self._stop()
            else:
                try:
                    self.values[index] = _follow(rows, keys)
                except Exception:  # noqa: BLE001 - the function raises there too: no next step
                    self._stop()
            return request, op, body

    def run_all(self, deadline: float | None = None) -> bool:
        """Run every step now, each as :meth:`next` runs it (``WorkerExecutor._complete``):
        whether all ran as the chain says, every value taken (the last step's too). What ran
        is in :attr:`ran`, in order, each with the answer the worker gets if it asks (a
        statement that fails is the last). Past ``deadline`` (the DBA's ``timeout_ms``) no
        further statement runs: ``LimitExceeded``, as the worker's backend would raise it."""
        self.ran: deque[_Ran] = deque()
        for index, (sql, refs, keys, line, tests) in enumerate(self.steps):
            if deadline is not None and time.monotonic() > deadline:
                raise LimitExceeded("timeout_ms", "the call ran longer than the DBA's limit "
                                    "(wormhole_limits.timeout_ms)")
            try:
                params = self._arguments(refs, tests)
                # the worker could send it (the codec takes it, as UTF-8, within the frame
                # limit): known from the values' types, or else by encoding it
                statement = (sql, params, line)
                request: bytes | tuple[str, list[Any], int] = statement
                if not _sendable(sql, params, self.max_frame):
                    request = _request_bytes(statement)
                    if len(request) > self.max_frame:
                        return False
            except Exception:  # noqa: BLE001 - the function raises or branches there
                return False
            if line:
                try:
                    self.port.query(sql, params)
                except _FAILURES as exc:
                    self.ran.append((NOWAIT, request, exc, line))
                    return False
                self.ran.append((NOWAIT, request, None, line))
                continue
            try:
                rows = self.port.query(sql, params)
            except _FAILURES as exc:  # the worker's query() raises: its answer
                self.ran.append((QUERY, request, QERR, _failure_body(exc)))
                return False
            # pickled only if the call is handed over (every value the SPI port returns pickles)
            self.ran.append((QUERY, request, None, rows))
            if rows._wire:
                return False
            try:
                self.values[index] = _follow(rows, keys)
            except Exception:  # noqa: BLE001 - the function raises there too
                return False
        return True

    def _arguments(self, refs: tuple[AheadRef, ...], tests: tuple[Any, ...]) -> list[Any]:
        """The next step's arguments, once the tests before it are false (a true one raises
        ``_Taken``: the function runs that ``if``'s body); raises where the function would."""
        self.values.append(None)
        for test in tests:
            if _holds(test, self.args, self.values):
                raise _Taken
        return [_follow(self.args[source] if source >= 0 else self.values[-1 - source], path)
                for source, path in refs]

    def _stop(self) -> None:
        """No more steps; nothing kept (rows held for later steps are let go)."""
        self.steps = ()
        self.values = []


class _Taken(Exception):
    """A test before a statement run ahead is true: the function goes into that ``if``."""


def _build(value: Any, args: list[Any], values: list[Any]) -> Any:
    """The value ``policy._ahead_value`` describes (``("step",)``: the last step's), built
    from the chain's values as the function's ``return`` builds it."""
    kind = value[0]
    if kind == "dict":
        return {key: _build(item, args, values) for key, item in value[1]}
    if kind == "list":
        return [_build(item, args, values) for item in value[1]]
    if kind == "tuple":
        return tuple(_build(item, args, values) for item in value[1])
    if kind == "step":
        return values[-1]
    return _operand(value, args, values)


#: the comparisons of a test (``policy._ahead_test``): Python's own operators
_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
    "==": operator.eq, "!=": operator.ne, "is": operator.is_, "is not": operator.is_not,
    "in": lambda a, b: a in b, "not in": lambda a, b: a not in b,
}


def _holds(test: Any, args: list[Any], values: list[Any]) -> bool:
    """:func:`_truth` under ``decimal``'s default context, the worker's (other code in this
    backend may have changed the current one: a ``Decimal`` NaN compared with ``<`` raises
    only while ``InvalidOperation`` is trapped)."""
    with _localcontext(_DEFAULT_CONTEXT):
        return _truth(test, args, values)


_DEFAULT_CONTEXT = _DecimalContext()


def _truth(test: Any, args: list[Any], values: list[Any]) -> bool:
    """Is ``test`` (``policy._ahead_test``) true of these values? Evaluated as the worker's
    Python evaluates the ``if`` (the same operands in the same order, ``and``/``or`` and
    chained comparisons stopping at the same place), so it raises where the function would.
    The values are parameters and rows: plain values whose truth and comparisons run no user
    code."""
    kind = test[0]
    if kind == "cmp":
        left = _compared(_operand(test[1], args, values), False)
        for op, right_test in test[2]:
            if type(left) in _CONTAINERS:  # (``a in b < c``: b compared as a value)
                raise _Declined("a container compared as a value")
            right = _compared(_operand(right_test, args, values), op in ("in", "not in"))
            if not _COMPARE[op](left, right):
                return False
            left = right
        return True
    if kind == "and":
        return all(_truth(part, args, values) for part in test[1])
    if kind == "or":
        return any(_truth(part, args, values) for part in test[1])
    if kind == "not":
        return not _truth(test[1], args, values)
    return bool(_operand(test, args, values))


def _operand(test: Any, args: list[Any], values: list[Any]) -> Any:
    if test[0] == "const":
        return test[1]
    source = test[1]
    return _follow(args[source] if source >= 0 else values[-1 - source], test[2])


class _Declined(OverflowError):
    """An operand the backend does not compare itself: the chain stops, the worker decides."""


#: operands compared at a cost bounded by their type alone
_SCALARS = frozenset({bool, float, type(None), _dt.date, _dt.datetime, _dt.time,
                      _dt.timedelta})
#: what may stand on the right of ``in``/``not in`` (and nowhere else)
_CONTAINERS = frozenset({list, tuple, Rows, set, frozenset, dict})
#: the longest str or bytes operand, and the most elements a container operand may hold
_MAX_OPERAND_TEXT = 4096
_MAX_OPERAND_ITEMS = 10_000


def _compared(value: Any, container: bool) -> Any:
    """``value``, as an operand of a comparison the backend makes itself, or ``_Declined``:
    every comparison must cost little and be the same as in the worker, whatever the values.

    Scalars only (an int of at most 64 bits: a wider one compares with a ``Decimal`` by
    converting it, in time growing with its square, in C, where no cancel is noticed; a str
    or bytes of at most 4096 characters; a ``Decimal`` of at most 64 digits), and, on the
    right of ``in``, a str or a container of at most 10,000 such scalars (``dict``: its keys).
    A test is then at most 10,000 comparisons of short values, and a call at most ~72 tests."""
    t = type(value)
    if t in _SCALARS:
        return value
    if t is int:
        if value.bit_length() <= _MAX_INT_BITS:
            return value
    elif t is str or t is bytes:
        if len(value) <= (_MAX_OPERAND_TEXT * 16 if container else _MAX_OPERAND_TEXT):
            return value
    elif t is Decimal:
        if len(value.as_tuple().digits) <= 64:
            return value
    elif container and t in _CONTAINERS and len(value) <= _MAX_OPERAND_ITEMS:
        for item in value:  # (a dict: its keys, which ``in`` compares)
            _compared(item, False)
        return value
    raise _Declined(f"a {t.__name__} operand the backend does not compare itself")


#: the largest int an operand of a test may be: a ``bigint``'s 64 bits (PostgreSQL returns no
#: wider int). Wider ones compare with a ``Decimal`` by converting, each time (``a in
#: row["numeric_array"]`` once per element: ~21 µs each at 4096 bits, ~0.09 µs at 64)
_MAX_INT_BITS = 64

#: the largest result the backend encodes itself (``WorkerExecutor._complete``), in characters
COMPLETE_MAX_RESULT = 1 << 20


def _fits(value: Any, budget: int) -> bool:
    """Is ``value``'s codec text surely at most ``budget`` characters? A bound walked before
    encoding, each reference counted again (``[x] * 63`` is 63 times ``x``'s text), stopping as
    soon as it is passed: what the backend would spend building the text is bounded by it."""
    left = budget
    stack = [value]
    while stack:
        v = stack.pop()
        t = type(v)
        if t is str:
            # each character escaped at most to \uXXXX, or to a surrogate pair of them
            left -= (6 if v.isascii() else 12) * len(v) + 2
        elif t is list or t is tuple or t is Rows or t is set or t is frozenset:
            left -= 16 + len(v)
            stack.extend(v)
        elif t is dict:
            left -= 2 + 2 * len(v)
            stack.extend(v)
            stack.extend(v.values())
        elif t is bytes or t is bytearray:
            left -= 16 + 2 * len(v)
        elif t is int:
            left -= 24 + v.bit_length() // 3
        elif t is Decimal:
            left -= 48 + len(v.as_tuple().digits)
        else:  # None, bool, float, dates and times, UUID: short
            left -= 64
        if left < 0:
            return False
    return True


def _follow(value: Any, keys: tuple[int | str, ...]) -> Any:
    """``value[k0][k1]...``: literal subscripts on rows (a list of dicts of plain values)."""
    for key in keys:
        value = value[key]
    return value


def _same(payload: bytes, request: bytes, deferred: bool = False) -> bool:
    """Is the worker's request ``payload`` the statement ``request`` (which this backend
    encoded), though not byte for byte? Decoded and encoded again here, so a worker whose
    Python writes a value differently still gets the answer, and the statement is not run
    twice. ``deferred``: a ``nowait`` request, with its line. A request holding a set is never
    taken this way: encoding one sorts its elements by their text, at each level of nesting
    again (the codec), which the worker could make cost the backend more than its size."""
    if b'"$set"' in payload or b'"$fset"' in payload:
        return False
    try:
        mine = _request(payload, _DEFERRED_KEYS if deferred else _REQUEST_KEYS)
        text = codec.encode_query(mine["sql"], mine["params"]).encode("utf-8")
        if deferred:
            line = mine["line"]
            if type(line) is not int:
                return False
            text = b'%s,"line":%d}' % (text[:-1], line)
        return text == request
    except Exception:  # noqa: BLE001 - malformed: served (and refused) as any request
        return False


def _run_statement(port: QueryPort, sql: str, params: list[Any]
                   ) -> tuple[str, bytes, Rows | None]:
    """Run a statement for the worker: ``(rows, pickled rows, the rows)`` or ``(qerr, the
    error, None)``."""
    try:
        rows = port.query(sql, params)
    except _FAILURES as exc:
        return QERR, _failure_body(exc), None
    op, body = _rows_answer(rows)
    return op, body, (rows if op == ROWS else None)


def _request_bytes(statement: tuple[str, list[Any], int]) -> bytes:
    """The worker's request for ``(sql, params, line)``: ``query``'s, or with a line
    ``nowait``'s (``worker.ChannelPort``)."""
    sql, params, line = statement
    request = codec.encode_query(sql, params).encode("utf-8")
    return b'%s,"line":%d}' % (request[:-1], line) if line else request


#: parameter types the codec always takes, whose text is short (bounded by ``_SHORT``)
_SHORT_TYPES = frozenset({int, float, bool, type(None), Decimal, _dt.date, _dt.datetime,
                          _dt.time, _dt.timedelta})
_SHORT = 96


def _sendable(sql: str, params: list[Any], max_frame: int) -> bool:
    """Would the worker surely send this statement: the codec takes every value, the text is
    valid UTF-8 (no lone surrogate) and within ``max_frame``? Known here from the types alone
    (ints up to 64 bits, ASCII strings), without encoding; False where it cannot tell."""
    if not sql.isascii():
        return False
    left = max_frame - 6 * len(sql) - 64 - len(params)  # (a comma between parameters)
    for value in params:
        t = type(value)
        if t is str:
            if not value.isascii():
                return False
            left -= 6 * len(value) + 2  # a control character is written \u00XX
        elif t in _SHORT_TYPES:
            if t is int and value.bit_length() > 64 or t is Decimal and len(
                    value.as_tuple().digits) > 64:
                return False
            left -= _SHORT
        else:
            return False
    return left >= 0


def _rows_answer(rows: Rows) -> tuple[str, bytes]:
    """The answer to a ``query`` whose statement gave ``rows``: ``(rows, pickle)``, or ``(qerr,
    a TypeError)`` for a value pickle refuses."""
    try:
        return ROWS, _pickle(_rows_value(rows))
    except Exception as exc:  # noqa: BLE001 - pickle's own errors (PicklingError) too
        error = TypeError(f"a value in the result cannot be sent to the worker: {exc}")
        return QERR, _failure_body(error)


def _failure_body(exc: Exception) -> bytes:
    return json.dumps(_failure(exc)).encode("utf-8")


class _Failed:
    """A deferred statement that failed: the call's outcome, whatever the worker does next."""

    __slots__ = ("exc", "line", "body", "deadline")

    def __init__(self, exc: Exception, line: int) -> None:
        self.exc = exc
        self.line = line
        info = _failure(exc)
        info["line"] = line
        #: what the worker is told (``derr``)
        self.body = json.dumps(info).encode("utf-8")
        #: when the backend stops waiting for the worker to finish with it
        self.deadline = time.monotonic() + DOOMED_GRACE

    def payload(self, call: Call) -> str:
        """The call's error payload, built here (the worker was stopped before it answered)."""
        if call.stored is not None:  # the name wormhole_install checked
            name = call.stored[0]
        else:  # the source's one top-level def (the policy allows nothing else)
            match = _DEF_NAME.search(call.source)
            name = match.group(1) if match else "?"
        self.exc._wh_where = (self.line, name)  # type: ignore[attr-defined]
        return error_payload(self.exc)


_DEF_NAME = re.compile(r"^def[ \t]+(\w+)", re.MULTILINE)


def _serve_deferred(port: QueryPort, payload: bytes) -> _Failed | None:
    """Run one ``nowait`` request (its result is discarded); what failed, if it did."""
    request = _request(payload, _DEFERRED_KEYS)
    line = request["line"]
    if type(line) is not int or not 0 < line < 1 << 31:
        raise ProtocolError("a deferred statement's line must be a positive int")
    try:
        port.query(request["sql"], request["params"])
    except _FAILURES as exc:
        return _Failed(exc, line)
    return None



def _rows_value(rows: Rows) -> tuple[Any, ...]:
    """What crosses to the worker for ``rows``: ``(rows, rowcount)``, or, for a row set whose
    date and time columns the SPI port read from PostgreSQL's text (``Rows._wire``),
    ``(names, kinds, columns, rowcount)`` with those columns as that text: pickling 100k
    ``datetime`` objects costs far more than the worker reading the text again."""
    wire = rows._wire if type(rows) is Rows else None
    if wire and type(rows[0]) is dict:
        names = tuple(rows[0])
        if set(map(len, rows)) == {len(names)}:
            kinds: list[str] = []
            cols: list[list[Any]] = []
            try:
                for name in names:
                    kept = wire.get(name)
                    if kept is not None and len(kept[2]) == len(rows):
                        kinds.append(kept[0])
                        cols.append(kept[2])
                    else:
                        kinds.append("")
                        cols.append(list(map(operator.itemgetter(name), rows)))
            except KeyError:  # not one row shape after all: the plain form
                pass
            else:
                return names, kinds, cols, rows.rowcount
    return list(rows), rows.rowcount


def _pickle(value: object) -> bytes:
    """Rows for the worker, as ``pickle`` (the fastest stdlib form that keeps every type the SPI
    port returns: ``Decimal``, dates and times, ``UUID``). Only ever this direction: the worker
    is not trusted, and the backend never unpickles (or unmarshals) anything it sends."""
    global _pickle
    try:  # the C module alone: pickle.py itself imports re, io, codecs and more
        from _pickle import dumps as c_dumps
    except ImportError:  # pragma: no cover - a Python without the C accelerator
        from pickle import dumps as c_dumps

    def dumps(value: object) -> bytes:
        return c_dumps(value, 5)

    _pickle = dumps  # imported on the first query served: most calls' first need of it
    return dumps(value)


def _payload_text(payload: bytes, limits: Limits) -> str:
    """Validate the worker's result: UTF-8 text within the limits, shaped like a payload."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("the result is not valid UTF-8") from None
    if len(text) > _max_text(limits):
        raise LimitExceeded(
            "max_result_bytes",
            f"the result is {len(text)} characters; the DBA's limit is "
            f"{limits.max_result_bytes} (wormhole_limits.max_result_bytes)",
        )
    if not (text.startswith('{"ok":') or text.startswith('{"err":')):
        raise ProtocolError("the result is not a wormhole payload")
    return text


# -- per-process executor and the installation check --------------------------------------

_EXECUTORS: dict[tuple[int, str, str, str], WorkerExecutor] = {}


def executor_for(
    sources: Mapping[str, str], *, bwrap: str = DEFAULT_BWRAP, python: str = DEFAULT_PYTHON
) -> WorkerExecutor:
    """The executor of this process (keyed by pid: a forked child never reuses its parent's)."""
    digest = source_hash(json.dumps([sources.get(n, "") for n in WORKER_MODULES]))
    key = (os.getpid(), bwrap, python, digest)
    executor = _EXECUTORS.get(key)
    if executor is None:
        for other in [k for k in _EXECUTORS if k[0] != os.getpid()]:
            _EXECUTORS.pop(other).close()  # abandons (different pid): never kills the parent's
        executor = _EXECUTORS[key] = WorkerExecutor(sources, bwrap=bwrap, python=python)
    return executor


class _NoQueries:
    def query(self, sql: str, params: Sequence[object]) -> Any:
        raise DatabaseError("no database in the installation check")


_PROBE = (
    "import os, sys\n"
    "data = os.read(0, 64)\n"
    "os.write(1, b'wormhole-probe:' + data + b':' + str(os.getuid()).encode())\n"
)

_CHECK_SOURCE = "def wormhole_check():\n    return 42\n"


def available(
    bwrap: str = DEFAULT_BWRAP,
    python: str = DEFAULT_PYTHON,
    sources: Mapping[str, str] | None = None,
) -> tuple[bool, str]:
    """Can this machine run the confined worker? Returns ``(ok, reason)``.

    Always starts the sandbox for real (the exact argv the worker uses) and does a round trip
    through its pipes. With ``sources`` it also boots the runtime and runs a trivial call.
    """
    import subprocess

    if not os.path.exists(bwrap):
        return False, (
            f"{bwrap} was not found: install bubblewrap (Debian/Ubuntu: apt-get install "
            "bubblewrap; RHEL/Fedora: dnf install bubblewrap)"
        )
    if not os.path.exists(python):
        return False, f"{python} was not found: the worker needs the system's python3 in /usr"
    try:
        proc = subprocess.run(
            bwrap_argv(bwrap, python, _PROBE),
            input=b"ping",
            capture_output=True,
            timeout=20,
            env={},
            close_fds=True,
            start_new_session=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"cannot run {bwrap}: {exc}"
    expected = f"wormhole-probe:ping:{SANDBOX_ID}".encode()
    if proc.returncode != 0 or proc.stdout != expected:
        err = proc.stderr.decode("utf-8", "replace").strip()[-800:]
        hint = ""
        if "namespace" in err.lower() or "permission" in err.lower():
            hint = (
                "; unprivileged user namespaces seem disabled (sysctl "
                "kernel.unprivileged_userns_clone=1, or on Ubuntu 24.04+ an AppArmor profile "
                "for bwrap / kernel.apparmor_restrict_unprivileged_userns=0)"
            )
        return False, f"bubblewrap could not start the sandbox (status {proc.returncode}): {err}{hint}"
    if sources is None:
        return True, "bubblewrap starts a confined python3"
    executor = WorkerExecutor(sources, bwrap=bwrap, python=python)
    try:
        digest = source_hash(_CHECK_SOURCE)
        text = executor.run(
            Call(digest, _CHECK_SOURCE, "[[],{}]", {}, "check"), _NoQueries(), lambda: None
        )
    except (WorkerCrashed, LimitExceeded) as exc:
        return False, f"the worker started but a trivial call failed: {exc}"
    finally:
        executor.close()
    if not text.startswith('{"ok":42'):
        return False, f"the worker started but a trivial call failed: {text[:800]}"
    return True, "bubblewrap starts the confined worker and a trivial call runs"
