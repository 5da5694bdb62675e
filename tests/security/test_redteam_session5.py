"""Red team, session 5: deferred statements (``policy._defer_discarded_queries``, the worker's
``nowait``/``derr``) and early dispatch (``WorkerExecutor.dispatch``/``run``/``cancel``).

Attacks and legitimate uses side by side. Three groups:

* **worker, no database** (real bubblewrap, ``MemoryPort``): every trick a function can play to
  swallow a failed deferred statement (try/except after it, ``finally: return``, context
  managers that suppress, generators that catch, nested functions, lambdas, comprehensions,
  class bodies, ``match``, ``functools.partial``/``map``, recursion and aliases), each run in
  the worker *and* in-process: same outcome, same statements run;
* **compromised worker** (a worker whose ``main`` is replaced, as in sessions 3 and 4):
  malformed ``nowait`` bodies and line numbers, a success ``done`` after being told of a failure,
  statements after a failed one, floods that must stay interruptible, and a worker that stops
  reading while a call is dispatched to it;
* **live server**: real tables and a sequence (``nextval`` is not undone by a rollback, so it
  tells whether a statement *ran*): swallowing in both modes, forbidden SQL and role changes in
  deferred statements, row-level security, the audit log, re-entry, floods against
  ``statement_timeout`` and ``pg_cancel_backend``, a compromised worker injected into a real
  backend, and early dispatch against refused arguments, DBA changes between warm calls and
  cancels during the host's checks.

What it found is fixed; each such test says so in a comment above it (the finding).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

import wormhole
from tests.helpers import WORKER_PROBE_SQL, bwrap_children, interrupted_call, worker_state
from wormhole import remote
from wormhole.runtime import codec, engine, sandbox

_WORKER_TESTS = Path(__file__).resolve().parents[1] / "worker"
if str(_WORKER_TESTS) not in sys.path:
    sys.path.insert(0, str(_WORKER_TESTS))

from worker_support import (  # noqa: E402
    _REASON,
    BWRAP,
    MemoryPort,
    never,
    worker_sources,
)

needs_worker = pytest.mark.skipif(_REASON is not None, reason=f"needs the worker: {_REASON}")

query = wormhole.query
DatabaseError = wormhole.DatabaseError

MISSING = "SELECT * FROM missing"  # MemoryPort: 42P01


def _call(source: str, *args: object, modules: dict[str, Any] | None = None,
          **limits: int) -> engine.Call:
    import hashlib

    modules = modules if modules is not None else {}
    return engine.Call(
        source_hash=hashlib.sha256(source.encode("utf-8")).hexdigest(),
        source=source,
        args_json=codec.encode([list(args), {}]),
        modules=modules,
        # the compile cache is keyed by (hash, modules_key): one key per whitelist
        modules_key="rt5-" + ",".join(sorted(modules)),
        limits=engine.Limits(**limits),
    )


def _without_out(payload: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if k != "out"}


# =================================================================================================
# worker, no database: tricks to swallow a failed deferred statement, in the worker and in-process
# =================================================================================================

#: name -> (source, arguments, modules, limits, outcome in-process: "err" or "ok")
SWALLOW: dict[str, tuple[str, tuple[Any, ...], dict[str, Any], dict[str, int], str]] = {
    "try-except-after": ('''\
def f():
    query("DELETE FROM a")
    query("SELECT * FROM missing")
    try:
        query("DELETE FROM b")
    except DatabaseError:
        pass
    return "swallowed"
''', (), {}, {}, "err"),
    "keep-writing-in-a-loop": ('''\
def f():
    query("SELECT * FROM missing")
    n = 0
    for i in range(200):
        try:
            query("DELETE FROM b")
            n += 1
        except Exception:
            pass
    return n
''', (), {}, {}, "err"),
    "finally-return": ('''\
def f():
    query("SELECT * FROM missing")
    try:
        query("DELETE FROM b")
    finally:
        return "swallowed"
''', (), {}, {}, "err"),
    "context-manager-suppresses": ('''\
def f():
    class Quiet:
        def __enter__(self):
            return self

        def __exit__(self, kind, value, trace):
            return True

    query("SELECT * FROM missing")
    with Quiet():
        query("DELETE FROM b")
    with Quiet():
        query("DELETE FROM b")
    return "swallowed"
''', (), {}, {}, "err"),
    "generator-catches-and-goes-on": ('''\
def f():
    def feed():
        for i in range(3):
            try:
                query("DELETE FROM b")
            except DatabaseError:
                pass
            yield i

    for i in feed():
        query("SELECT * FROM missing")
    return "swallowed"
''', (), {}, {}, "err"),
    "nested-function-catches": ('''\
def f():
    def careful():
        try:
            query("DELETE FROM b")
            return "wrote"
        except DatabaseError:
            return "caught"

    query("SELECT * FROM missing")
    return careful()
''', (), {}, {}, "err"),
    "lambda-comprehension-class-body": ('''\
def f():
    query("SELECT * FROM missing")
    try:
        (lambda: query("DELETE FROM b"))()
    except DatabaseError:
        pass
    try:
        [query("DELETE FROM b") for _ in range(3)]
    except DatabaseError:
        pass
    try:
        class K:
            query("DELETE FROM b")
    except DatabaseError:
        pass
    return "swallowed"
''', (), {}, {}, "err"),
    "match-case": ('''\
def f(x):
    match x:
        case [first, *rest]:
            query("SELECT * FROM missing")
            query("DELETE FROM a")
        case _:
            pass
    try:
        query("DELETE FROM b")
    except DatabaseError:
        return "caught"
    return "ok"
''', ([1, 2],), {}, {}, "err"),
    "while-else": ('''\
def f():
    n = 0
    while n < 2:
        n += 1
    else:
        query("SELECT * FROM missing")
    try:
        query("DELETE FROM b")
    except DatabaseError:
        return "caught"
    return n
''', (), {}, {}, "err"),
    "functools-partial-and-map": ('''\
def f():
    import functools
    query("SELECT * FROM missing")
    again = functools.partial(query, "DELETE FROM b")
    for _ in range(3):
        try:
            again()
        except DatabaseError:
            pass
    try:
        list(map(query, ["DELETE FROM b"]))
    except DatabaseError:
        pass
    return "swallowed"
''', (), {"functools": None}, {}, "err"),
    "own-error-after": ('''\
def f():
    query("SELECT * FROM missing")
    raise ValueError("mine, not the statement's")
''', (), {}, {}, "err"),
    "oversized-result-after": ('''\
def f():
    query("SELECT * FROM missing")
    return "x" * 50000
''', (), {}, {"max_result_bytes": 1000}, "err"),
    "recursion-error-after": ('''\
def f():
    query("SELECT * FROM missing")

    def down(k):
        return down(k + 1) + 1

    return down(0)
''', (), {}, {}, "err"),
    "fails-midway-through-a-loop": ('''\
def f(n):
    for i in range(n):
        query("DELETE FROM a")
        if i == 3:
            query("SELECT * FROM missing")
    return n
''', (10,), {}, {}, "err"),
    # not deferred (the entry function is reached again, by name or through an alias): the
    # outer call may catch the inner one's error, in both modes
    "recursion-by-name": ('''\
def f(depth=0):
    if depth:
        query("SELECT * FROM missing")
        return "inner"
    try:
        f(1)
    except DatabaseError:
        query("DELETE FROM b")
        return "caught by the outer call"
    return "no"
''', (), {}, {}, "ok"),
    "recursion-through-an-alias": ('''\
def f(depth=0):
    again = f
    if depth:
        query("SELECT * FROM missing")
        return "inner"
    try:
        again(1)
    except DatabaseError:
        query("DELETE FROM b")
        return "caught"
    return "no"
''', (), {}, {}, "ok"),
    "recursion-through-sorted-key": ('''\
def f(depth=0):
    if depth:
        query("SELECT * FROM missing")
        return depth
    try:
        return sorted([1, 2], key=f)
    except DatabaseError:
        query("DELETE FROM b")
        return "caught"
''', (), {}, {}, "ok"),
}


REJECTED = {
    "except-star": (
        "def f():\n    try:\n        query('SELECT * FROM missing')\n"
        "    except* DatabaseError:\n        pass\n    query('DELETE FROM b')\n"),
    "decorator": (
        "def f():\n    def swallow(fn):\n        return fn\n\n    @swallow\n    def g():\n"
        "        query('DELETE FROM b')\n\n    query('SELECT * FROM missing')\n"
        "    return g()\n"),
    "the-hook-by-name": "def f():\n    _wh_defer(2, 'SELECT * FROM missing')\n    return 1\n",
    "rebinding-through-globals": (
        "def f():\n    globals()['query'] = print\n    query('SELECT * FROM missing')\n"),
    "a-frame-of-the-entry-function": (
        "def f():\n    import sys\n    sys._getframe(0).f_back\n"
        "    query('SELECT * FROM missing')\n"),
}


@pytest.mark.parametrize("name", list(REJECTED))
def test_the_syntax_that_could_catch_or_reach_a_deferred_statement_is_refused(name: str) -> None:
    """except*, decorators, the hook itself, namespaces and frames: refused by the policy, so
    they never reach the rewrite."""
    from wormhole.runtime import policy

    with pytest.raises(policy.PolicyError):
        policy.check(REJECTED[name], {"functools": None})


@pytest.fixture(scope="module")
def confined() -> Any:
    if _REASON is not None:
        pytest.skip(f"needs the worker: {_REASON}")
    ex = sandbox.WorkerExecutor(worker_sources(), bwrap=BWRAP)
    yield ex
    ex.close()


@pytest.mark.parametrize("name", list(SWALLOW))
def test_no_trick_swallows_a_failed_deferred_statement(confined: Any, name: str) -> None:
    """The worker gives exactly the in-process outcome (where nothing is deferred and Python's
    own rules decide), and runs exactly the same statements: nothing after the failed one."""
    source, args, modules, limits, outcome = SWALLOW[name]
    port = MemoryPort()
    expected = json.loads(engine.run_call(_call(source, *args, modules=modules, **limits), port))
    assert ("err" in expected) is (outcome == "err"), expected
    in_process_log = port.log

    port = MemoryPort()
    deferred = confined.deferred
    got = json.loads(confined.run(_call(source, *args, modules=modules, **limits), port, never))
    # the failing statement was sent without waiting wherever the in-process call fails
    assert (confined.deferred > deferred) is (outcome == "err")
    assert _without_out(got) == _without_out(expected)
    assert port.log == in_process_log
    if outcome == "err":
        assert got["err"]["sqlstate"] == "42P01"
        assert port.log[-1] == (MISSING, [])  # the failed statement is the last that ran
    # the worker is not doomed for the next call
    ok = json.loads(confined.run(_call("def f(n):\n    query('DELETE FROM a')\n    return n\n",
                                       3), MemoryPort(), never))
    assert ok == {"ok": 3, "out": []}


CATCH_A_MILLION = """\
def f(n):
    query("SELECT * FROM missing")
    k = 0
    while k < n:
        try:
            query("DELETE FROM b")
        except DatabaseError:
            k += 1
    return k
"""


@needs_worker
# Found by the red team, fixed in session 5 (robustness/parity): after a derr the worker's
# ChannelPort re-raises ONE exception object (raise self.doomed) at every query(); each raise
# chains a new traceback onto the old one and keeps every frame alive, so a function that
# catches and retries a million times exhausts memory_mb and the worker dies ('exited with
# status 1 ... MemoryError'): the call ends as WorkerCrashed instead of the statement's error
# (in-process the first failure raised at once; catching a million fresh query() errors leaks
# nothing). Fix: raise a fresh exception each time (rebuild it from the derr info, or raise
# self.doomed.with_traceback(None)); tb comes from _wh_where anyway.
def test_catching_the_doomed_error_again_and_again_does_not_exhaust_the_worker(
        confined: Any) -> None:
    port = MemoryPort()
    expected = json.loads(engine.run_call(_call(CATCH_A_MILLION, 1_000_000, memory_mb=256),
                                          port))
    assert expected["err"]["tb"] == [[2, "f"]]
    got = json.loads(confined.run(_call(CATCH_A_MILLION, 1_000_000, memory_mb=256),
                                  MemoryPort(), never))
    assert _without_out(got) == _without_out(expected)


# =================================================================================================
# compromised worker: nowait and derr from a worker that does not play by the rules
# =================================================================================================

ERR_TEXT = ('{"err":{"type":"DatabaseError","builtin":false,"message":"%s","sqlstate":null,'
            '"tb":[]},"out":[]}')

_ROGUE_HEAD = '''\
import os, json, time, fcntl
from .channel import Channel


def main(rfd, wfd):
    chan = Channel(rfd, wfd, 1 << 29)

    def send(op, cid, body):
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
        chan.send({'op': op, 'id': cid}, body)

    def nowait(cid, sql, line=1, params=()):
        send('nowait', cid, {'sql': sql, 'params': list(params), 'line': line})

    def ask(cid, sql, params=()):
        send('query', cid, {'sql': sql, 'params': list(params)})
        return chan.recv(None)

    def done(cid, text='{"ok":1,"out":[]}'):
        send('done', cid, text.encode())

    ERR = %r
    calls = 0
    while True:
        head, body = chan.recv(None)
        if head['op'] != 'call':
            continue
        calls += 1
        cid = head['id']
''' % ERR_TEXT


def _rogue(body: str) -> dict[str, str]:
    """The runtime's sources with a worker whose ``main`` runs ``body`` for every call (names:
    ``calls``, ``cid``, ``send``, ``nowait``, ``ask``, ``done``, ``ERR``, ``chan``)."""
    evil = dict(worker_sources())
    evil["worker"] = _ROGUE_HEAD + "".join(
        "        " + line + "\n" for line in body.splitlines())
    return evil


RETURN_ONE = "def f():\n    return 1\n"


def _run_rogue(body: str, port: Any = None, check: Any = never, **limits: int) -> Any:
    ex = sandbox.WorkerExecutor(_rogue(body), bwrap=BWRAP)
    try:
        return ex.run(_call(RETURN_ONE, **limits), port if port is not None else MemoryPort(),
                      check)
    finally:
        ex.close()


_BAD_NOWAIT = {
    "not-json": b"DELETE FROM b",
    "a-list": b'["DELETE FROM b", [], 1]',
    "no-line": b'{"sql":"DELETE FROM b","params":[]}',
    "line-true": b'{"sql":"DELETE FROM b","params":[],"line":true}',
    "line-zero": b'{"sql":"DELETE FROM b","params":[],"line":0}',
    "line-negative": b'{"sql":"DELETE FROM b","params":[],"line":-5}',
    "line-2**31": b'{"sql":"DELETE FROM b","params":[],"line":2147483648}',
    "line-2**64": b'{"sql":"DELETE FROM b","params":[],"line":18446744073709551616}',
    "line-huge": b'{"sql":"DELETE FROM b","params":[],"line":' + b"9" * 5000 + b"}",
    "line-float": b'{"sql":"DELETE FROM b","params":[],"line":1e0}',
    "line-text": b'{"sql":"DELETE FROM b","params":[],"line":"3"}',
    "line-null": b'{"sql":"DELETE FROM b","params":[],"line":null}',
    "extra-key": b'{"sql":"DELETE FROM b","params":[],"line":1,"role":"postgres"}',
    "sql-not-text": b'{"sql":["DELETE FROM b"],"params":[],"line":1}',
    "params-not-list": b'{"sql":"SELECT $1","params":{"0":1},"line":1}',
    "params-tagged-bytes": b'{"sql":"SELECT $1","params":{"$b":"AA=="},"line":1}',
    "not-utf8": b'{"sql":"DELETE FROM b\xff","params":[],"line":1}',
    "pickle": b"\x80\x05\x95\x0b\x00\x00\x00\x00\x00\x00\x00\x8c\x07DELETE\x94.",
}


@needs_worker
@pytest.mark.parametrize("name", list(_BAD_NOWAIT))
def test_a_malformed_nowait_stops_the_worker_and_runs_nothing(name: str) -> None:
    port = MemoryPort()
    body = f"send('nowait', cid, {_BAD_NOWAIT[name]!r})\ndone(cid)\ntime.sleep(30)"
    with pytest.raises(sandbox.WorkerCrashed) as info:
        _run_rogue(body, port)
    assert "malformed" in info.value.reason
    assert port.log == []


@needs_worker
def test_the_largest_line_is_accepted_and_reported() -> None:
    # legitimate side of the above: 2**31 - 1 is a line; the failure names it
    port = MemoryPort()
    text = _run_rogue(
        "nowait(cid, 'SELECT * FROM missing', 2**31 - 1)\n"
        "h, b = ask(cid, 'DELETE FROM b')\n"
        "done(cid, ERR % (h['op'] + ':' + str(json.loads(b)['line'])))\n", port)
    assert json.loads(text)["err"]["message"] == "derr:2147483647"
    assert port.log == [(MISSING, [])]


@needs_worker
@pytest.mark.parametrize("how", ["done-twice", "query-then-done"])
def test_a_success_after_being_told_of_a_failure_is_refused(how: str) -> None:
    """The worker learns that its deferred statement failed (``derr`` after its first ``done``,
    or as the answer to a query) and still reports success: the backend stops it and ends the
    call with the failed statement's error itself (its subtransaction rolls back), never the
    worker's result."""
    port = MemoryPort()
    if how == "done-twice":
        body = ("nowait(cid, 'SELECT * FROM missing', 4)\n"
                "done(cid)\n"
                "h, b = chan.recv(None)\n"
                "assert h['op'] == 'derr'\n"
                "done(cid, '{\"ok\":\"I insist\",\"out\":[]}')\n"
                "time.sleep(30)")
    else:
        body = ("nowait(cid, 'SELECT * FROM missing', 4)\n"
                "h, b = ask(cid, 'DELETE FROM b')\n"
                "assert h['op'] == 'derr'\n"
                "done(cid)\n"
                "time.sleep(30)")
    payload = json.loads(_run_rogue(body, port))
    assert payload["err"]["sqlstate"] == "42P01" and payload["err"]["tb"][0][0] == 4, payload
    assert port.log == [(MISSING, [])]


@needs_worker
def test_nothing_runs_after_a_failed_nowait_whatever_the_worker_sends() -> None:
    """Thousands of nowait statements and queries after the failed one, before and after the
    worker is told: none of them runs; the worker's error ends the call."""
    port = MemoryPort()
    text = _run_rogue(
        "nowait(cid, 'DELETE FROM a', 2)\n"
        "nowait(cid, 'SELECT * FROM missing', 3)\n"
        "for i in range(3000):\n"
        "    nowait(cid, 'DELETE FROM b', 4)\n"
        "    send('nowait', cid, b'garbage, never even parsed')\n"
        "answers = set()\n"
        "for i in range(50):\n"
        "    h, b = ask(cid, 'DELETE FROM b')\n"
        "    answers.add(h['op'])\n"
        "    nowait(cid, 'DELETE FROM b', 5)\n"
        "done(cid, ERR % ','.join(sorted(answers)))\n", port)
    assert json.loads(text)["err"]["message"] == "derr"
    assert port.log == [("DELETE FROM a", []), (MISSING, [])]


@needs_worker
def test_a_done_before_the_derr_then_the_error_is_the_legitimate_path() -> None:
    port = MemoryPort()
    text = _run_rogue(
        "nowait(cid, 'SELECT * FROM missing', 6)\n"
        "done(cid)\n"  # finished before it heard
        "h, b = chan.recv(None)\n"
        "done(cid, ERR % (h['op'] + ':' + str(json.loads(b)['line'])))\n", port)
    assert json.loads(text)["err"]["message"] == "derr:6"
    assert port.log == [(MISSING, [])]


@needs_worker
@pytest.mark.parametrize("first", ["DELETE FROM a", MISSING])
def test_a_worker_that_dies_after_its_nowait_statements_fails_the_call(first: str) -> None:
    """Statements sent without waiting, then the worker exits without a done: the call is an
    error (the host rolls its subtransaction back), never a success: WorkerCrashed, or, when
    a statement had failed already, that statement's error."""
    port = MemoryPort()
    body = f"nowait(cid, {first!r}, 2)\nnowait(cid, 'DELETE FROM b', 3)\nos._exit(0)"
    if first == MISSING:
        payload = json.loads(_run_rogue(body, port))
        assert payload["err"]["sqlstate"] == "42P01" and payload["err"]["tb"][0][0] == 2
    else:
        with pytest.raises(sandbox.WorkerCrashed):
            _run_rogue(body, port)
    assert port.log[0] == (first, [])
    assert len(port.log) == (1 if first == MISSING else 2)


class _Cancel(Exception):
    pass


def _cancel_after(seconds: float, calls: list[float]) -> Any:
    start = time.monotonic()

    def check() -> None:
        now = time.monotonic()
        calls.append(now)
        if now - start > seconds:
            raise _Cancel()

    return check


FLOODS = {
    # statements that all run (the backend is busy the whole time)
    "nowait-flood": "while True:\n    nowait(cid, 'DELETE FROM b', 2)",
    # after a failure: none runs, the backend only reads
    "nowait-flood-after-failure": ("nowait(cid, 'SELECT * FROM missing', 2)\n"
                                   "while True:\n    nowait(cid, 'DELETE FROM b', 3)"),
    # after a failure, queries whose derr answers it never reads: the backend's pipe fills
    "unread-derr-answers": ("nowait(cid, 'SELECT * FROM missing', 2)\n"
                            "while True:\n"
                            "    send('query', cid, {'sql': 'DELETE FROM b', 'params': []})"),
    # a done before the derr, then silence: the backend waits for the second done
    "silent-after-derr": ("nowait(cid, 'SELECT * FROM missing', 2)\ndone(cid)\n"
                          "time.sleep(60)"),
}


#: after a failed deferred statement the outcome is known: the backend waits
#: ``sandbox.DOOMED_GRACE`` for the worker to finish with it, then stops the worker and ends the
#: call with that error itself (in-process the call would have ended at the statement)
AFTER_FAILURE = ("nowait-flood-after-failure", "unread-derr-answers", "silent-after-derr")


@needs_worker
@pytest.mark.parametrize("name", list(FLOODS))
def test_a_flooding_or_silent_worker_cannot_outlast_the_timeout(name: str) -> None:
    """P4: timeout_ms ends the call within about a second, whatever the worker sends; after
    a failed deferred statement the call ends sooner still, with that statement's error."""
    begin = time.monotonic()
    if name in AFTER_FAILURE:
        payload = json.loads(_run_rogue(FLOODS[name], timeout_ms=400))
        assert payload["err"]["sqlstate"] == "42P01" and payload["err"]["tb"][0][0] == 2
        # DOOMED_GRACE; DONE_GRACE once the worker has finished and been told
        assert time.monotonic() - begin < (1.4 if name == "silent-after-derr" else 0.4)
        return
    with pytest.raises(engine.LimitExceeded) as info:
        _run_rogue(FLOODS[name], timeout_ms=400)
    assert info.value.limit == "timeout_ms"
    assert time.monotonic() - begin < 1.4


@needs_worker
@pytest.mark.parametrize("name", [n for n in FLOODS if n not in AFTER_FAILURE])
def test_a_flooding_or_silent_worker_cannot_delay_interrupts(name: str) -> None:
    """P4: the backend checks interrupts every POLL_SECONDS or so while it serves a flood."""
    calls: list[float] = []
    port = MemoryPort()
    begin = time.monotonic()
    with pytest.raises(_Cancel):
        _run_rogue(FLOODS[name], port, _cancel_after(0.5, calls))
    assert time.monotonic() - begin < 1.5
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    assert gaps and max(gaps) < 0.25, max(gaps)
    if "after" in name or "unread" in name or "silent" in name:
        assert port.log == [(MISSING, [])]


# -- early dispatch against a compromised worker ------------------------------------------------


def _dispatch(ex: sandbox.WorkerExecutor, call: engine.Call) -> bool:
    return ex.dispatch(call.source_hash, call.source, call.args_json, call.modules,
                       call.modules_key, call.limits)


@needs_worker
def test_a_refused_dispatched_call_never_serves_what_the_worker_sent() -> None:
    """The worker answers a dispatched call at once (a statement, a query, a success); the host's
    checks refuse the call (``cancel``): nothing it sent is ever run, and it is stopped."""
    port = MemoryPort()
    ex = sandbox.WorkerExecutor(_rogue(
        "if calls == 1:\n"
        "    done(cid)\n"
        "    continue\n"
        "nowait(cid, 'DELETE FROM a', 2)\n"
        "send('query', cid, {'sql': 'DELETE FROM b', 'params': []})\n"
        "done(cid)\n"), bwrap=BWRAP)
    try:
        call = _call(RETURN_ONE)
        assert ex.run(call, port, never) == '{"ok":1,"out":[]}'
        first = ex.worker_pid
        assert _dispatch(ex, call)
        time.sleep(0.3)  # the worker has sent everything by now
        ex.cancel()
        assert ex.worker_pid is None and port.log == []
        # the next call starts afresh, and is not answered by the stopped worker's messages
        again = _call(RETURN_ONE)
        again.modules = call.modules
        assert ex.run(again, port, never) == '{"ok":1,"out":[]}'
        assert ex.worker_pid not in (None, first) and ex.starts == 2 and port.log == []
    finally:
        ex.close()


@needs_worker
def test_a_dispatch_to_a_dead_worker_never_raises_and_the_call_still_runs() -> None:
    ex = sandbox.WorkerExecutor(worker_sources(), bwrap=BWRAP)
    try:
        call = _call("def f(n):\n    return n\n", 1)
        assert ex.run(call, MemoryPort(), never) == '{"ok":1,"out":[]}'
        os.killpg(ex.worker_pid, signal.SIGKILL)
        time.sleep(0.2)
        again = _call("def f(n):\n    return n\n", 2)
        again.modules = call.modules
        _dispatch(ex, again)  # True or False: never an exception
        assert ex.run(again, MemoryPort(), never) == '{"ok":2,"out":[]}'
        assert ex.starts == 2
    finally:
        ex.cancel()
        ex.close()


@needs_worker
@pytest.mark.parametrize("shrink", [False, True], ids=["full-64k-pipe", "shrunk-pipe"])
# Found by the red team, fixed in session 5: WorkerExecutor.dispatch sends the call with
# chan.send(header, args) WITHOUT a tick; the descriptor is non-blocking after the first call,
# so a frame larger than the pipe's free space waits in poll(-1) for the worker to read. A
# compromised worker that stops reading its stdin after a call (and may shrink the pipe to 4
# KiB with F_SETPIPE_SZ, which seccomp allows; or not even that: 16384 characters of 4-byte
# UTF-8 args, within _EARLY_MAX_ARGS, are 64 KiB + header) blocks the backend forever,
# uninterruptibly: pg_cancel_backend/statement_timeout/pg_terminate_backend only set flags and
# Python retries poll() on EINTR, so only SIGKILL (a cluster crash-restart) frees it (P3, P4).
# Fix: dispatch must never block: write with a non-blocking single os.write and give up (stop
# the worker, return False) unless the whole frame was taken, or cap the frame by the pipe's
# free space (FIONREAD/F_GETPIPE_SZ) and count bytes, not characters.
def test_a_worker_that_stops_reading_cannot_block_a_dispatch(shrink: bool) -> None:
    ex = sandbox.WorkerExecutor(_rogue(
        ("fcntl.fcntl(0, 1031, 4096)  # F_SETPIPE_SZ: the smallest pipe\n" if shrink else "")
        + "done(cid)\n"
        "time.sleep(60)  # and never read again\n"), bwrap=BWRAP)
    try:
        call = _call("def f(x):\n    return 1\n", "a")
        assert ex.run(call, MemoryPort(), never) == '{"ok":1,"out":[]}'
        big = _call("def f(x):\n    return 1\n", "a")
        big.modules = call.modules
        if shrink:
            big.args_json = codec.encode([["x" * 12000], {}])
        else:  # what a client may send straight to wormhole_execute: raw UTF-8 text
            big.args_json = '[["' + "\U0001f600" * 16375 + '"],{}]'
        assert len(big.args_json) <= sandbox._EARLY_MAX_ARGS
        outcome: list[Any] = []
        runner = threading.Thread(target=lambda: outcome.append(_dispatch(ex, big)),
                                  daemon=True)
        runner.start()
        runner.join(2.0)
        blocked = runner.is_alive()
        if blocked:  # free the thread: the pipe's reader dies, the write fails
            os.killpg(ex.worker_pid, signal.SIGKILL)
            runner.join(10.0)
        assert not blocked, "dispatch blocked on a worker that does not read"
    finally:
        ex.cancel()
        ex.close()


# =================================================================================================
# live server
# =================================================================================================

TABLES = (
    "CREATE TABLE t (id serial PRIMARY KEY, v int NOT NULL CHECK (v > 0),"
    "  who text NOT NULL DEFAULT current_user);"
    "CREATE SEQUENCE probe;"
    "CREATE TABLE owned (id serial PRIMARY KEY, owner text NOT NULL, note text);"
    "ALTER TABLE owned ENABLE ROW LEVEL SECURITY;"
    "CREATE POLICY mine ON owned USING (owner = current_user)"
    "  WITH CHECK (owner = current_user);"
    "INSERT INTO owned (owner, note) VALUES ('postgres', 'theirs'), ('app', 'mine');"
)

ROGUE_SQL = """
CREATE FUNCTION wh_rogue(worker_src text) RETURNS text LANGUAGE plpython3u SECURITY DEFINER AS $$
import sys
st = GD.get('wormhole.backend/0.1.0')
pkg = type(st).__module__.rpartition('.')[0]
sb = sys.modules[pkg + '.sandbox']
srcs = {n: st.sources[n] for n in sys.modules[pkg].WORKER_MODULES}
srcs['worker'] = worker_src
if st.worker is not None:
    st.worker.close()
st.worker = sb.WorkerExecutor(srcs)
return 'ok'
$$;
GRANT EXECUTE ON FUNCTION wh_rogue(text) TO app;
"""


@pytest.fixture
def lab(db: Any) -> Any:
    db.setup_sql(TABLES)
    db.setup_sql(WORKER_PROBE_SQL, grant=False)
    return db


@pytest.fixture
def bystander(lab: Any, server: Any) -> Any:
    """A session opened before the attack; afterwards it must still answer (no crash reset)."""
    mark = len(server.log_text())
    c = psycopg.connect(lab.dsn(), autocommit=True)
    c.execute("SELECT 1")
    yield c
    assert c.execute("SELECT 42").fetchone()[0] == 42, "bystander session lost: crash reset?"
    c.close()
    text = server.log_text()[mark:]
    assert "terminated by signal" not in text, text[-2000:]
    assert "all server processes terminated" not in text


def _install(db: Any, *fns: Any) -> None:
    with psycopg.connect(db.dsn(), autocommit=True) as c, wormhole.connection(c):
        for fn in fns:
            fn.install()


def _approve(db: Any, *fns: Any) -> None:
    _install(db, *fns)
    with db.admin() as a:
        for fn in fns:
            a.execute("SELECT wormhole_approve(%s)", (fn.hash,))


def _exec(c: Any, fn: Any, *args: Any, raw: str | None = None) -> dict[str, Any]:
    text = c.execute("SELECT wormhole_execute(%s, %s)",
                     (fn.hash, raw if raw is not None else codec.encode([list(args), {}]))
                     ).fetchone()[0]
    return json.loads(text)


def _rows(db: Any) -> list[tuple[int, str]]:
    with db.admin() as a:
        return a.execute("SELECT v, who FROM t ORDER BY id").fetchall()


def _probe(db: Any) -> int:
    """How many times nextval('probe') ran, rolled back or not (sequences are not undone)."""
    with db.admin() as a:
        value, called = a.execute("SELECT last_value, is_called FROM probe").fetchone()
    return int(value) if called else 0


def _app(db: Any, timeout: str = "20s") -> Any:
    c = psycopg.connect(db.dsn(), autocommit=True)
    c.execute(f"SET statement_timeout = '{timeout}'")
    return c


def _zombies(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] == "Z":
            out.append(int(entry))
    return out


# -- swallowing, live -----------------------------------------------------------------------------

@remote
def swallow_try(v):
    query("INSERT INTO t (v) VALUES (1)")
    query("INSERT INTO t (v) VALUES ($1)", v)
    try:
        query("SELECT nextval('probe')")
    except DatabaseError:
        pass
    for i in range(5):
        try:
            query("INSERT INTO t (v) VALUES ($1)", 100 + i)
        except DatabaseError:
            pass
    return "swallowed"


@remote
def swallow_finally(v):
    query("INSERT INTO t (v) VALUES ($1)", v)
    try:
        query("SELECT nextval('probe')")
    finally:
        return "swallowed"


@remote
def swallow_context(v):
    class Quiet:
        def __enter__(self):
            return self

        def __exit__(self, kind, value, trace):
            return True

    query("INSERT INTO t (v) VALUES ($1)", v)
    with Quiet():
        query("SELECT nextval('probe')")
    with Quiet():
        query("INSERT INTO t (v) VALUES (7)")
    return "swallowed"


@remote
def swallow_generator(v):
    def feed():
        for i in range(3):
            try:
                query("SELECT nextval('probe')")
            except DatabaseError:
                pass
            yield i

    for i in feed():
        query("INSERT INTO t (v) VALUES ($1)", v)
    return "swallowed"


@remote
def swallow_partial(v):
    import functools

    query("INSERT INTO t (v) VALUES ($1)", v)
    again = functools.partial(query, "SELECT nextval('probe')")
    for _ in range(3):
        try:
            again()
        except DatabaseError:
            pass
    try:
        list(map(query, ["INSERT INTO t (v) VALUES (8)"]))
    except DatabaseError:
        pass
    return "swallowed"


#: function -> (line of the failing statement, nextval calls before it, rows on success,
#: nextval calls on success)
LIVE_SWALLOW = {
    swallow_try: (3, 0, 7, 1),
    swallow_finally: (2, 0, 1, 1),
    swallow_context: (9, 0, 2, 1),
    swallow_generator: (11, 1, 3, 3),
    swallow_partial: (4, 0, 2, 3),
}


@needs_worker
@pytest.mark.parametrize("mode", ["worker", "in-process"])
@pytest.mark.parametrize("fn", list(LIVE_SWALLOW), ids=lambda f: f.name)
def test_a_failed_deferred_statement_cannot_be_swallowed_live(
        lab: Any, bystander: Any, mode: str, fn: Any) -> None:
    """v = -1 breaks t's CHECK: the call fails at that line in both modes, no row stays, and
    the statement after it never ran (the sequence did not move). v = 5: every statement runs.
    The worker is not doomed for the next (dispatched) call."""
    line, before, rows_ok, probes_ok = LIVE_SWALLOW[fn]
    if mode == "in-process":
        _approve(lab, fn)
    else:
        _install(lab, fn)
    with _app(lab) as c:
        for _ in range(2):  # twice: the second one is dispatched early in the worker
            payload = _exec(c, fn, -1)
            err = payload["err"]
            assert (err["sqlstate"], err["tb"]) == ("23514", [[line, fn.name]]), payload
        assert _rows(lab) == [] and _probe(lab) == 2 * before
        assert _exec(c, fn, 5) == {"ok": "swallowed", "out": []}
        assert len(_rows(lab)) == rows_ok and _probe(lab) == 2 * before + probes_ok
        if mode == "worker":
            state = worker_state(c, ("starts", "dispatched"))
            assert state["starts"] == 1 and state["dispatched"] >= 2
        else:
            assert bwrap_children(c.info.backend_pid) == []


@remote
def fails_late(v):
    query("INSERT INTO t (v) VALUES (2)")
    query("INSERT INTO t (v) VALUES ($1)", v)
    query("SELECT nextval('probe')")
    return v


@needs_worker
def test_a_failed_call_leaves_the_clients_transaction_usable_and_its_own_rows(
        lab: Any, bystander: Any) -> None:
    _install(lab, fails_late)
    with psycopg.connect(lab.dsn()) as c:
        c.execute("INSERT INTO t (v) VALUES (42)")
        for _ in range(3):
            assert _exec(c, fails_late, 0)["err"]["tb"] == [[3, "fails_late"]]
        assert _exec(c, fails_late, 9) == {"ok": 9, "out": []}
        c.commit()
    assert [v for v, _ in _rows(lab)] == [42, 2, 9] and _probe(lab) == 1


@needs_worker
def test_a_call_failing_through_a_deferred_statement_is_audited(
        lab: Any, bystander: Any, server: Any) -> None:
    """P10: the failed call is written to the server log (no rollback undoes it)."""
    if not server.log_text():
        pytest.skip("not our cluster: its log is not readable here")
    _install(lab, fails_late)
    mark = len(server.log_text())
    with _app(lab) as c:
        for _ in range(2):  # cold, then dispatched
            assert "err" in _exec(c, fails_late, -3)
    lines: list[str] = []
    for _ in range(100):
        lines = [line for line in server.log_text()[mark:].splitlines()
                 if "wormhole audit:" in line and fails_late.hash in line]
        if len(lines) >= 2:
            break
        time.sleep(0.05)
    assert len(lines) == 2, lines
    for line in lines:
        event = json.loads(line.split("wormhole audit: ", 1)[1])
        assert event["event"] == "call-failed" and event["hash"] == fails_late.hash
        assert '"23514"' in event["error"]
    assert _rows(lab) == [] and _probe(lab) == 0


# -- privileges of deferred statements ------------------------------------------------------------

@remote
def rls_writes(owner):
    query("INSERT INTO owned (owner, note) VALUES (current_user, 'deferred')")
    query("UPDATE owned SET note = 'touched'")
    query("DELETE FROM owned WHERE note = 'theirs'")
    query("INSERT INTO owned (owner, note) VALUES ($1, 'forged')", owner)
    query("SELECT nextval('probe')")
    return query("SELECT current_user::text AS u, count(*) AS n FROM owned")[0]


def _owned(db: Any) -> list[tuple[str, str]]:
    with db.admin() as a:
        return a.execute("SELECT owner, note FROM owned ORDER BY id").fetchall()


@needs_worker
def test_deferred_statements_run_as_the_caller_under_row_level_security(
        lab: Any, bystander: Any) -> None:
    _install(lab, rls_writes)
    with _app(lab) as c:
        for _ in range(2):
            payload = _exec(c, rls_writes, "postgres")  # a row the policy refuses
            assert payload["err"]["sqlstate"] == "42501", payload
            assert payload["err"]["tb"] == [[5, "rls_writes"]]
        assert _owned(lab) == [("postgres", "theirs"), ("app", "mine")]
        assert _probe(lab) == 0
        # legitimate: its own rows only; the other role's row is neither seen, changed nor gone
        assert _exec(c, rls_writes, "app") == {"ok": {"u": "app", "n": 3}, "out": []}
    assert _owned(lab) == [("postgres", "theirs"), ("app", "touched"), ("app", "touched"),
                           ("app", "forged")]


@remote
def run_this(sql):
    query("INSERT INTO t (v) VALUES (1)")
    query(sql)
    query("SELECT nextval('probe')")
    return query("SELECT current_user::text AS u")[0]["u"]


FORBIDDEN = [
    "SET ROLE postgres", "SET LOCAL ROLE postgres", "RESET ROLE", "SET ROLE NONE",
    "SET SESSION AUTHORIZATION postgres", "RESET SESSION AUTHORIZATION",
    "COMMIT", "ROLLBACK", "BEGIN", "START TRANSACTION", "SAVEPOINT x", "RELEASE SAVEPOINT x",
    "ROLLBACK TO SAVEPOINT x", "PREPARE TRANSACTION 'x'", "END", "ABORT",
    "SELECT set_config('role', 'postgres', false)", "SET statement_timeout = 0",
    "RESET statement_timeout", "DO $$ BEGIN END $$", "COPY t TO STDOUT", "LOAD 'plpgsql'",
    "SELECT 1; SELECT 2", "DISCARD ALL",
]


@needs_worker
@pytest.mark.parametrize("sql", FORBIDDEN)
def test_a_deferred_statement_is_refused_exactly_as_query_refuses_it(
        lab: Any, bystander: Any, sql: str) -> None:
    """P5 for deferred statements: forbidden SQL is refused (WH003) at its line in both modes,
    nothing after it runs, and the session's role is untouched."""
    _install(lab, run_this)
    with _app(lab) as c:
        worker = [_exec(c, run_this, sql) for _ in range(2)]  # cold, then dispatched
        assert c.execute("SELECT current_user::text, session_user::text").fetchone() == \
            ("app", "app")
    _approve(lab, run_this)
    with _app(lab) as c:
        in_process = _exec(c, run_this, sql)
    for payload in (*worker, in_process):
        err = payload["err"]
        assert (err["sqlstate"], err["tb"]) == ("WH003", [[3, "run_this"]]), payload
    assert worker[0] == worker[1] and _without_out(worker[0]) == _without_out(in_process)
    assert _rows(lab) == [] and _probe(lab) == 0


@remote
def sneak_role():
    query("INSERT INTO t (v) VALUES (3)")
    query("SELECT wh5_become('wh5_other')")
    query("INSERT INTO t (v) VALUES (4)")
    return 1


@needs_worker
def test_a_role_change_behind_a_deferred_statement_fails_the_call(
        lab: Any, bystander: Any) -> None:
    """A PL/pgSQL function runs SET ROLE dynamically from a deferred statement: the call fails
    (WH009), every write of the call is undone, and the session's role is back."""
    _other_role(lab)
    lab.setup_sql(
        "CREATE FUNCTION public.wh5_become(r text) RETURNS int LANGUAGE plpgsql AS "
        "$f$ BEGIN EXECUTE format('SET ROLE %I', r); RETURN 1; END $f$;"
        "GRANT EXECUTE ON FUNCTION public.wh5_become(text) TO app;", grant=False)
    _install(lab, sneak_role)
    with _app(lab) as c:
        for _ in range(2):
            with pytest.raises(psycopg.Error) as info:
                _exec(c, sneak_role)
            assert info.value.sqlstate == "WH009"
            assert c.execute("SELECT current_user::text").fetchone() == ("app",)
    assert _rows(lab) == []


def _other_role(db: Any) -> None:
    db.setup_sql(
        "DO $$ BEGIN CREATE ROLE wh5_other NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL;"
        " END $$;"
        "GRANT wh5_other TO app; GRANT wormhole_user TO wh5_other;"
        "GRANT INSERT, SELECT ON t, owned TO wh5_other;"
        "GRANT USAGE ON SEQUENCE t_id_seq, owned_id_seq TO wh5_other;", grant=False)


@remote
def who_writes(v):
    query("INSERT INTO t (v) VALUES ($1)", v)
    query("INSERT INTO owned (owner, note) VALUES (current_user, 'w')")
    return str(query("SELECT current_user::text AS u")[0]["u"])  # (the worker runs it)


@needs_worker
def test_dispatched_deferred_statements_run_as_the_role_current_at_each_call(
        lab: Any, bystander: Any) -> None:
    """The worker is shared by every role the session becomes; a warm call dispatched after
    SET ROLE runs its deferred statements as that role (and its RLS), not the previous one."""
    _other_role(lab)
    _install(lab, who_writes)
    with _app(lab) as c:
        assert [_exec(c, who_writes, i)["ok"] for i in (1, 2)] == ["app", "app"]
        c.execute("SET ROLE wh5_other")
        assert _exec(c, who_writes, 3) == {"ok": "wh5_other", "out": []}
        c.execute("RESET ROLE")
        assert _exec(c, who_writes, 4) == {"ok": "app", "out": []}
        assert worker_state(c, ("dispatched", "starts")) == {"dispatched": 3, "starts": 1}
    assert _rows(lab) == [(1, "app"), (2, "app"), (3, "wh5_other"), (4, "app")]
    assert _owned(lab)[2:] == [("app", "w"), ("app", "w"), ("wh5_other", "w"), ("app", "w")]


@remote
def fail_then_spin(v):
    query("INSERT INTO t (v) VALUES ($1)", v)
    n = 0
    while True:
        n += 1


_SPIN_AFTER_FAILURE = (
    "FIXED FINDING (parity, not a privilege problem): in the worker the failed deferred statement is "
    "only reported at the function's next query() or at done, so code after it keeps running: "
    "an endless (or long, or memory-hungry) computation after the failure turns the call into "
    "QueryCanceled at statement_timeout (aborting the client's transaction), a LimitExceeded "
    "at timeout_ms, or a WorkerCrashed, instead of the statement's own error at its line, "
    "which is what in-process gives and what the feature promises. Fix: once _serve_deferred "
    "reports a failure the backend knows the call's outcome; it should not wait for the "
    "worker indefinitely: stop it (after at most a short grace period for its done) and return "
    "the error payload built from the derr info (type/message/sqlstate/detail/hint, tb "
    "[[line, the function's name]]).")


@needs_worker
@pytest.mark.parametrize("mode", [
    "in-process",
    "worker",  # found by the red team, fixed in session 5: see _SPIN_AFTER_FAILURE
])
def test_a_failed_deferred_statement_ends_the_call_as_in_process(
        lab: Any, bystander: Any, mode: str) -> None:
    """The same function, the same outcome: in-process the failed INSERT raises at once, so the
    loop after it never runs; the call is a CheckViolation at line 2 within milliseconds, and
    the client's transaction stays usable."""
    if mode == "in-process":
        _approve(lab, fail_then_spin)
    else:
        _install(lab, fail_then_spin)
    with psycopg.connect(lab.dsn()) as c:
        c.execute("SET statement_timeout = '4s'")
        begin = time.monotonic()
        try:
            payload = _exec(c, fail_then_spin, -1)
        finally:
            elapsed = time.monotonic() - begin
        assert payload["err"]["sqlstate"] == "23514" and payload["err"]["tb"] == \
            [[2, "fail_then_spin"]], payload
        assert elapsed < 1.0
        assert c.execute("SELECT 1").fetchone() == (1,)
        c.rollback()
    assert _rows(lab) == []


@remote
def reenter(h):
    query("INSERT INTO t (v) VALUES (5)")
    query("SELECT wormhole_execute($1, '[[1],{}]')", h)
    query("SELECT nextval('probe')")
    return 1


@remote
def plain(n):
    return n


@needs_worker
def test_re_entry_from_a_deferred_statement_is_refused(lab: Any, bystander: Any) -> None:
    _install(lab, reenter, plain)
    with _app(lab) as c:
        for _ in range(2):
            payload = _exec(c, reenter, plain.hash)
            assert (payload["err"]["sqlstate"], payload["err"]["tb"]) == \
                ("WH010", [[3, "reenter"]]), payload
        assert _exec(c, plain, 4) == {"ok": 4, "out": []}
        assert len(bwrap_children(c.info.backend_pid)) == 1
    assert _rows(lab) == [] and _probe(lab) == 0


@remote
def internal_key():
    query("INSERT INTO t (v) VALUES (6)")
    query("\x00cfgver")
    query("SELECT nextval('probe')")
    return 1


@needs_worker
# Found by the red team, fixed in session 5 (robustness, not a privilege escape): SpiPort.plans
# is the host's state.plans, which also holds the host's own PLyPlan objects under the keys
# '\x00cfgver' and '\x00function'. query('\x00cfgver') (deferred or not) finds a PLyPlan
# instead of a _Plan and raises AttributeError ('nparams'); it skips sqltext.check_statement.
# In the worker that is not one of _FAILURES, so it escapes _serve_deferred/_serve_query and
# WorkerExecutor.run as a Python error: the worker is killed and wormhole_execute itself fails
# with an internal AttributeError (the client's transaction is aborted) instead of a clean call
# error; in-process the function gets a catchable AttributeError. Fix: keep the host's internal
# plans in their own dict (or check type(entry) is _Plan), so such a text is prepared and
# refused by PostgreSQL like any other.
def test_a_statement_text_equal_to_an_internal_plan_key_is_an_ordinary_error(
        lab: Any, bystander: Any) -> None:
    _install(lab, internal_key)
    with psycopg.connect(lab.dsn()) as c:
        c.execute("SET statement_timeout = '20s'")
        try:
            payload = _exec(c, internal_key)
        finally:
            c.rollback()
    assert payload["err"]["tb"] == [[3, "internal_key"]], payload
    assert _rows(lab) == [] and _probe(lab) == 0


# -- floods and interrupts, live ------------------------------------------------------------------

@remote
def flood():
    while True:
        query("INSERT INTO t (v) VALUES (1)")


def _call_in_thread(db: Any, fn: Any, timeout: str) -> tuple[Any, list[Any], threading.Thread]:
    c = _app(db, timeout)
    outcome: list[Any] = []

    def call() -> None:
        begin = time.monotonic()
        try:
            outcome.append(_exec(c, fn))
        except BaseException as exc:  # noqa: BLE001 - examined by the caller
            outcome.append(exc)
        outcome.append(time.monotonic() - begin)

    runner = threading.Thread(target=call)
    runner.start()
    return c, outcome, runner


@needs_worker
@pytest.mark.parametrize("mode", ["worker", "in-process"])
@pytest.mark.parametrize("how", ["statement_timeout", "pg_cancel_backend"])
def test_a_flood_of_deferred_statements_stays_interruptible(
        lab: Any, bystander: Any, mode: str, how: str) -> None:
    if mode == "in-process":
        _approve(lab, flood)
    else:
        _install(lab, flood)
    c, outcome, runner = _call_in_thread(lab, flood, "1s" if how == "statement_timeout" else "0")
    try:
        if how == "pg_cancel_backend":
            time.sleep(0.7)
            with lab.admin() as a:
                sent = time.monotonic()
                a.execute("SELECT pg_cancel_backend(%s)", (c.info.backend_pid,))
        runner.join(5.0)
        assert not runner.is_alive(), "the call did not end"
        if how == "pg_cancel_backend":
            assert time.monotonic() - sent < 1.0
        else:
            assert outcome[1] < 2.0
        assert isinstance(outcome[0], psycopg.errors.QueryCanceled), outcome
        c.execute("SET statement_timeout = '20s'")
        assert c.execute("SELECT 1").fetchone() == (1,)
        assert len(bwrap_children(c.info.backend_pid)) == 0
    finally:
        runner.join(30.0)
        c.close()
    assert _rows(lab) == []


def _inject(c: Any, body: str) -> None:
    """Replace this backend's worker executor with one whose worker runs ``body`` (a superuser's
    test helper; the backend must have made a worker call already)."""
    source = _rogue(body)["worker"]
    assert c.execute("SELECT wh_rogue(%s)", (source,)).fetchone() == ("ok",)


@needs_worker
@pytest.mark.parametrize("how", ["statement_timeout", "pg_cancel_backend"])
def test_a_compromised_worker_flooding_a_real_backend_is_stopped(
        lab: Any, bystander: Any, how: str) -> None:
    """A compromised worker sends nowait statements as fast as it can and never finishes: the
    backend runs them in the call's subtransaction, the cancel or timeout ends the call within
    about a second, nothing stays, no crash."""
    lab.setup_sql(ROGUE_SQL, grant=False)
    _install(lab, plain)
    c = _app(lab, "1s" if how == "statement_timeout" else "0")
    try:
        assert _exec(c, plain, 1) == {"ok": 1, "out": []}
        _inject(c, "while True:\n    nowait(cid, 'INSERT INTO t (v) VALUES (1)', 2)")
        outcome, took = interrupted_call(lab, c, lambda: _exec(c, plain, 2), how, wait=5.0)
        assert took < (1.0 if how == "pg_cancel_backend" else 2.0)
        assert isinstance(outcome, psycopg.errors.QueryCanceled), outcome
        assert bwrap_children(c.info.backend_pid) == []
    finally:
        c.close()
    assert _rows(lab) == []


@needs_worker
def test_a_compromised_worker_cannot_use_nowait_for_what_query_refuses(
        lab: Any, bystander: Any) -> None:
    """Its nowait statements change the role (refused: derr), then it sends more statements and
    claims success twice: the call is an error, nothing stays, the role is untouched."""
    lab.setup_sql(ROGUE_SQL, grant=False)
    _install(lab, plain)
    with _app(lab) as c:
        assert _exec(c, plain, 1) == {"ok": 1, "out": []}
        _inject(c, (
            "nowait(cid, 'INSERT INTO t (v) VALUES (11)', 2)\n"
            "nowait(cid, 'SET ROLE postgres', 3)\n"
            "nowait(cid, 'INSERT INTO t (v) VALUES (12)', 4)\n"
            "nowait(cid, \"SELECT set_config('role', 'postgres', false)\", 5)\n"
            "nowait(cid, \"SELECT nextval('probe')\", 6)\n"
            "done(cid)\n"
            "h, b = chan.recv(None)\n"
            "done(cid, '{\"ok\":\"' + h['op'] + ':' + str(json.loads(b).get('sqlstate')) + '\",\"out\":[]}')\n"
            "time.sleep(30)"))
        payload = _exec(c, plain, 2)
        # the backend ends the call with the refused statement's own error, at its line, and
        # stops the worker that claimed success
        assert (payload["err"]["type"], payload["err"]["sqlstate"]) == \
            ("ForbiddenStatement", "WH003"), payload
        assert payload["err"]["tb"][0][0] == 3
        assert c.execute("SELECT current_user::text, session_user::text").fetchone() == \
            ("app", "app")
        assert bwrap_children(c.info.backend_pid) == []
    assert _rows(lab) == [] and _probe(lab) == 0


_DISPATCH_BLOCKS = (
    "FIXED FINDING (same root cause as test_a_worker_that_stops_reading_cannot_block_a_dispatch, in "
    "a real backend): a compromised worker that shrinks its stdin pipe and stops reading makes "
    "the next warm call's dispatch block in poll(-1) inside wormhole_execute; pg_cancel_backend "
    "and pg_terminate_backend do not end it (the test frees the backend by killing the worker "
    "from outside; without that only SIGKILL of the backend, i.e. a crash restart, would). "
    "Fix: a dispatch that cannot be written at once must be abandoned (stop the worker, "
    "return False), never waited for without a tick.")


@needs_worker
# Found by the red team, fixed in session 5: see _DISPATCH_BLOCKS.
def test_a_compromised_worker_cannot_wedge_a_real_backend_through_dispatch(
        lab: Any, bystander: Any) -> None:
    lab.setup_sql(ROGUE_SQL, grant=False)
    _install(lab, plain)
    c = _app(lab, "2s")
    pid = c.info.backend_pid
    outcome: list[Any] = []
    runner = threading.Thread(target=lambda: outcome.append(None))
    try:
        assert _exec(c, plain, 1) == {"ok": 1, "out": []}
        _inject(c, "fcntl.fcntl(0, 1031, 4096)  # F_SETPIPE_SZ\n"
                   "done(cid)\n"
                   "time.sleep(600)  # never reads again")
        assert _exec(c, plain, 2) == {"ok": 1, "out": []}  # the rogue's answer (not dispatched)

        def call() -> None:
            try:
                outcome.append(_exec(c, plain, raw='[["' + "x" * 8000 + '"],{}]'))
            except BaseException as exc:  # noqa: BLE001
                outcome.append(exc)

        runner = threading.Thread(target=call)
        runner.start()
        time.sleep(0.5)
        with lab.admin() as a:
            sent = time.monotonic()
            a.execute("SELECT pg_cancel_backend(%s)", (pid,))
            runner.join(1.5)
            ended_in = time.monotonic() - sent if not runner.is_alive() else None
            if runner.is_alive():
                a.execute("SELECT pg_terminate_backend(%s)", (pid,))
                runner.join(1.5)
                if runner.is_alive():  # free the backend: its worker dies, the write fails
                    for worker in bwrap_children(pid):
                        os.kill(worker, signal.SIGKILL)
        runner.join(20.0)
        assert ended_in is not None and ended_in < 1.0, "the backend was stuck in dispatch"
        # the dispatch is declined (the pipe cannot take it at once), the worker stopped, and
        # the call runs in a fresh worker: done before the cancel, or ended by it
        assert outcome[0] == {"ok": 1, "out": []} or isinstance(
            outcome[0], psycopg.errors.QueryCanceled), outcome
    finally:
        if runner.ident is not None:
            runner.join(20.0)
        c.close()


# -- early dispatch, live -------------------------------------------------------------------------

@remote
def eager(n):
    query("SELECT nextval('probe')")
    query("INSERT INTO t (v) VALUES (1)")
    return int(n)  # (a call: the worker runs it, not the backend alone)


REFUSED_ARGS = {
    "malformed": "[[100], {",
    "object": '{"a": 1}',
    "three-items": "[[1],{},3]",
    "positional-not-list": "[1,{}]",
    "keywords-not-object": "[[1],[]]",
    "null-json": "null",
    "tagged-keywords": '[[1],{"$b":"AA=="}]',
    "not-json": "x" * 4000,
    "too-large": '[["' + "y" * 300 + '"],{}]',
}


@needs_worker
@pytest.mark.parametrize("name", list(REFUSED_ARGS))
def test_a_dispatched_call_with_refused_arguments_runs_nothing(
        lab: Any, bystander: Any, name: str) -> None:
    """The call is sent to the warm worker before the host decodes the arguments; the host then
    refuses them (WH005): the worker is stopped before any of its statements is served (the
    sequence never moves), and the next call runs in a new worker."""
    _install(lab, eager)
    if name == "too-large":
        with lab.admin() as a:
            a.execute("UPDATE wormhole_limits SET value = 200 WHERE name = 'max_args_bytes'")
    with _app(lab) as c:
        for i in range(3):  # cold, then warm (dispatched)
            assert _exec(c, eager, i) == {"ok": i, "out": []}
        assert worker_state(c, ("dispatched",))["dispatched"] >= 1
        (first,) = bwrap_children(c.info.backend_pid)
        probes = _probe(lab)
        with pytest.raises(psycopg.Error) as info:
            _exec(c, eager, raw=REFUSED_ARGS[name])
        assert info.value.sqlstate == "WH005"
        time.sleep(0.2)
        assert _probe(lab) == probes
        assert bwrap_children(c.info.backend_pid) == [] and _zombies(c.info.backend_pid) == []
        assert _exec(c, eager, 7) == {"ok": 7, "out": []}
        assert bwrap_children(c.info.backend_pid) not in ([], [first])
    assert len(_rows(lab)) == 4


@needs_worker
def test_null_arguments_are_refused_before_anything_is_dispatched(
        lab: Any, bystander: Any) -> None:
    # legitimate side: refused before the dispatch, so the warm worker lives on
    _install(lab, eager)
    with _app(lab) as c:
        for i in range(2):
            _exec(c, eager, i)
        (first,) = bwrap_children(c.info.backend_pid)
        with pytest.raises(psycopg.Error) as info:
            c.execute("SELECT wormhole_execute(%s, NULL)", (eager.hash,))
        assert info.value.sqlstate == "WH005"
        assert bwrap_children(c.info.backend_pid) == [first]
        assert _exec(c, eager, 3) == {"ok": 3, "out": []}
        assert bwrap_children(c.info.backend_pid) == [first]


@remote
def allocate(mb, spin=False):
    import math

    if spin:
        while True:
            pass
    try:
        return math.floor(len(bytes(mb << 20)) / (1 << 20))
    except MemoryError:
        return "MemoryError"


@remote
def where():
    try:
        return "in-process" if len(bytes(3_000_000_000)) else "?"
    except MemoryError:
        return "worker"


@needs_worker
@pytest.mark.parametrize("change", ["timeout_ms", "memory_mb", "max_args_bytes", "whitelist",
                                    "approve", "trust", "revoke", "delete", "edit"])
def test_a_dba_change_reaches_the_next_warm_dispatched_call(
        lab: Any, bystander: Any, change: str) -> None:
    """P1 with early dispatch: warm calls are sent to the worker before the host's checks; a
    change committed by a DBA in between applies to the very next call."""
    _install(lab, allocate, where)
    if change == "revoke":
        _approve(lab, where)
    with _app(lab) as c:
        for _ in range(3):
            assert _exec(c, allocate, 200) == {"ok": 200, "out": []}
            assert _exec(c, where)["ok"] == ("in-process" if change == "revoke" else "worker")
        before = worker_state(c, ("dispatched", "starts"))
        assert before["dispatched"] >= 2
        with lab.admin() as a:
            if change == "timeout_ms":
                a.execute("UPDATE wormhole_limits SET value = 300 WHERE name = 'timeout_ms'")
            elif change == "memory_mb":
                a.execute("UPDATE wormhole_limits SET value = 150 WHERE name = 'memory_mb'")
            elif change == "max_args_bytes":
                a.execute("UPDATE wormhole_limits SET value = 40 WHERE name = 'max_args_bytes'")
            elif change == "whitelist":
                a.execute("UPDATE wormhole_allowed_modules SET allowed = false "
                          "WHERE module_name = 'math'")
            elif change == "approve":
                a.execute("SELECT wormhole_approve(%s)", (where.hash,))
            elif change == "trust":
                a.execute("INSERT INTO wormhole_trusted_roles (role_name) VALUES ('app')")
            elif change == "delete":
                a.execute("DELETE FROM wormhole_functions WHERE hash = %s", (allocate.hash,))
            elif change == "edit":  # behind wormhole's back: the text no longer has its hash
                a.execute("UPDATE wormhole_functions SET source = replace(source, '<< 20', "
                          "'<< 21'), code = NULL WHERE hash = %s", (allocate.hash,))
            else:
                a.execute("SELECT wormhole_revoke(%s)", (where.hash,))
        if change == "timeout_ms":
            begin = time.monotonic()
            payload = _exec(c, allocate, 1, True)
            assert payload["err"]["type"] == "LimitExceeded", payload
            assert time.monotonic() - begin < 2.0
        elif change == "memory_mb":
            assert _exec(c, allocate, 200) == {"ok": "MemoryError", "out": []}
        elif change == "max_args_bytes":
            with pytest.raises(psycopg.Error) as info:
                _exec(c, allocate, 10 ** 30, False)
            assert info.value.sqlstate == "WH005"
        elif change == "whitelist":
            payload = _exec(c, allocate, 1)
            assert "err" in payload and "math" in payload["err"]["message"], payload
        elif change == "delete":
            with pytest.raises(psycopg.Error) as info:
                _exec(c, allocate, 200)
            assert info.value.sqlstate == "WH004"
        elif change == "edit":
            payload = _exec(c, allocate, 200)
            assert payload["err"]["sqlstate"] == "WH004", payload
        elif change in ("approve", "trust"):
            assert _exec(c, where) == {"ok": "in-process", "out": []}
            assert worker_state(c, ("dispatched",)) == {"dispatched": before["dispatched"]}
        else:
            assert _exec(c, where) == {"ok": "worker", "out": []}


@needs_worker
@pytest.mark.parametrize("change", ["max_args_bytes", "timeout_ms", "approve"])
def test_a_change_in_the_callers_own_transaction_reaches_a_dispatched_call(
        lab: Any, bystander: Any, change: str) -> None:
    """A superuser (not trusted: its unapproved calls run in the worker) changes the
    configuration inside its transaction; its next call in that transaction obeys it."""
    _install(lab, allocate, where)
    with lab.admin() as a:
        for _ in range(3):
            assert _exec(a, where) == {"ok": "worker", "out": []}
            assert _exec(a, allocate, 1) == {"ok": 1, "out": []}
        assert worker_state(a, ("dispatched",))["dispatched"] >= 2
        a.autocommit = False
        if change == "max_args_bytes":
            a.execute("UPDATE wormhole_limits SET value = 40 WHERE name = 'max_args_bytes'")
            with pytest.raises(psycopg.Error) as info:
                _exec(a, allocate, 10 ** 30, False)
            assert info.value.sqlstate == "WH005"
        elif change == "timeout_ms":
            a.execute("UPDATE wormhole_limits SET value = 300 WHERE name = 'timeout_ms'")
            begin = time.monotonic()
            assert _exec(a, allocate, 1, True)["err"]["type"] == "LimitExceeded"
            assert time.monotonic() - begin < 2.0
        else:
            a.execute("SELECT wormhole_approve(%s)", (where.hash,))
            assert _exec(a, where) == {"ok": "in-process", "out": []}
        a.rollback()
        a.autocommit = True
        assert _exec(a, where) == {"ok": "worker", "out": []}
        assert _exec(a, allocate, 1) == {"ok": 1, "out": []}


@remote
def busy(n, k):
    query("SELECT nextval('probe')")
    for i in range(k):
        query("INSERT INTO t (v) VALUES (1)")
    return n


@needs_worker
@pytest.mark.parametrize("how", ["statement_timeout", "pg_cancel_backend"])
def test_interrupts_around_dispatched_calls_leave_no_worker_behind(
        lab: Any, bystander: Any, how: str) -> None:
    """Tiny statement timeouts (or a storm of cancels) land anywhere in warm dispatched calls,
    the host's checks included: never more than one worker, no zombie, the session and the
    next call are fine, and every call is all or nothing. (A cancel that lands while a new
    worker is being spawned kills it: see the spawn finding below; such a call is an error
    payload, counted as failed here.)"""
    _install(lab, busy)
    with _app(lab) as c:
        pid = c.info.backend_pid
        assert _exec(c, busy, 0, 1) == {"ok": 0, "out": []}
        stop = threading.Event()

        def storm() -> None:
            with lab.admin() as a:
                while not stop.is_set():
                    a.execute("SELECT pg_cancel_backend(%s)", (pid,))
                    time.sleep(0.004)

        stormer = threading.Thread(target=storm)
        if how == "pg_cancel_backend":
            stormer.start()
        written = 2
        failed = crashed = 0
        try:
            for i in range(80):
                k = 1 + (i * 7) % 60
                if how == "statement_timeout":
                    # deferred inserts are quick: enough of them that 1-4 ms always expire
                    k *= 40
                    c.execute(f"SET statement_timeout = '{1 + i % 4}ms'")
                try:
                    payload = _exec(c, busy, i, k)
                except psycopg.errors.QueryCanceled:
                    failed += 1
                else:
                    if "err" in payload:
                        assert payload["err"]["type"] == "WorkerCrashed", payload
                        crashed += 1
                    else:
                        assert payload == {"ok": i, "out": []}, payload
                        written += k
                if how == "statement_timeout":
                    c.execute("SET statement_timeout = '20s'")
                assert len(bwrap_children(pid)) <= 1
                assert _zombies(pid) == []
        finally:
            stop.set()
            if stormer.ident is not None:
                stormer.join()
        c.execute("SET statement_timeout = '20s'")
        assert _exec(c, busy, 99, 1) == {"ok": 99, "out": []}
        assert len(bwrap_children(pid)) == 1
    assert failed + crashed > 0
    assert len(_rows(lab)) == written  # every call that returned wrote all, the others none


_SPAWN_RACE = r"""
import json, os, signal, sys, time
sys.path[:0] = [%(src)r, %(tests)r]
from worker_support import BWRAP, MemoryPort, make_call, worker_sources
from wormhole.runtime import sandbox

pending = []
signal.signal(signal.SIGINT, lambda *a: pending.append(1))  # a backend's cancel handler


class Canceled(Exception):
    pass


def check():  # PostgreSQL's CHECK_FOR_INTERRUPTS: the cancel ends the call
    if pending:
        pending.clear()
        raise Canceled()


leader = os.getpid()
stormer = os.fork()
if stormer == 0:
    while True:  # pg_cancel_backend: kill(-backend, SIGINT), the backend's process group
        try:
            os.kill(-leader, signal.SIGINT)
        except ProcessLookupError:
            os._exit(0)
        time.sleep(0.0003)
outcome = {"ok": 0, "canceled": 0, "crashed": []}
ex = sandbox.WorkerExecutor(worker_sources(), bwrap=BWRAP)
begin = time.monotonic()
try:
    while time.monotonic() - begin < 25 and not outcome["crashed"]:
        ex.close()  # every call starts a new worker: posix_spawn, as a backend's first call
        try:
            ex.run(make_call("def f():\n    return 1\n"), MemoryPort(), check)
            outcome["ok"] += 1
        except Canceled:
            outcome["canceled"] += 1
        except sandbox.WorkerCrashed as exc:
            outcome["crashed"].append(exc.reason)
        pending.clear()
finally:
    os.kill(stormer, signal.SIGKILL)
    os.waitpid(stormer, 0)
    ex.close()
print(json.dumps(outcome))
"""


@needs_worker
# Found by the red team, fixed in session 5 (found by the cancel storm above; spawn.py, not new
# in this session): pg_cancel_backend/pg_terminate_backend signal the backend's whole process
# group (kill(-pid)). _Process spawns bwrap with posix_spawn(setsid=True): until the child has
# called setsid it is still in that group, the backend's SIGINT handler has been reset to
# SIG_DFL in it, and the signal (blocked, then unblocked) kills it. WorkerExecutor.run then
# sees ChannelClosed and returns WorkerCrashed('killed by signal 2 (SIGINT)') as an err PAYLOAD
# without checking interrupts, so the statement succeeds with a misleading error and the cancel
# itself is lost (no QueryCanceled; an explicit transaction is not aborted). Fix: in
# WorkerExecutor.run call check_interrupts() before turning ChannelClosed/a dead worker into
# WorkerCrashed (the real cancel wins), and keep group signals from killing the new child (e.g.
# setsigmask with SIGINT/SIGTERM/SIGHUP/SIGQUIT/SIGUSR1/SIGUSR2 blocked for the spawn, or retry
# a start that died of one of them).
def test_a_cancel_that_lands_while_a_worker_is_spawned_is_a_cancel_not_a_crash(
        tmp_path: Path) -> None:
    """In a process that is its own process group (like a backend) with a SIGINT handler, a
    storm of group SIGINTs while calls start new workers: each call must end with its result or
    with the cancel (what check_interrupts raises), never with a worker 'killed by SIGINT'."""
    import subprocess

    script = tmp_path / "race.py"
    script.write_text(_SPAWN_RACE % {"src": str(Path(__file__).resolve().parents[2] / "src"),
                                     "tests": str(_WORKER_TESTS)})
    proc = subprocess.run(["setsid", sys.executable, str(script)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outcome = json.loads(proc.stdout.strip().splitlines()[-1])
    assert outcome["crashed"] == [], outcome
    assert outcome["ok"] + outcome["canceled"] > 0


def test_no_backend_crashed_while_these_attacks_ran(server: Any) -> None:
    """Last in the file: none of the attacks above made PostgreSQL restart its backends."""
    log = server.log_text()
    if not log:
        pytest.skip("not our cluster: its log is not readable here")
    assert "was terminated by signal" not in log
    assert "terminating any other active server processes" not in log
    assert "all server processes terminated; reinitializing" not in log
