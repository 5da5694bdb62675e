"""P3, P4: runaway code ends with a clear error within ~1 s, and never restarts the server.

Each case runs as the regular role ``app`` (confined worker) and, where it applies, as an
approved function in-process. A bystander session opened before the case must still work
after it, and the server log must show no process terminated by a signal (a crash reset).
"""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

import wormhole
from wormhole import errors, remote


@remote
def spin():
    n = 0
    while True:
        n += 1


@remote
def spin_c_level():
    return sum(range(10**12))


@remote
def memory_bomb():
    chunks = []
    while True:
        chunks.append("x" * 10_000_000)


@remote
def huge_integer():
    return len(str(10**10**8))


@remote
def deep_recursion(n):
    def down(k):
        return down(k + 1) + 1

    return down(n)


@pytest.fixture
def bystander(db):
    c = psycopg.connect(db.dsn(), autocommit=True)
    c.execute("SELECT 1")
    yield c
    assert c.execute("SELECT 42").fetchone()[0] == 42, "bystander session lost: crash reset?"
    c.close()


def no_crash_reset(server, mark):
    text = server.log_text()[mark:]
    assert "terminated by signal" not in text, text[-2000:]
    assert "all server processes terminated" not in text


def approve(db, fn):
    with psycopg.connect(db.dsn(), autocommit=True) as c, wormhole.connection(c):
        fn.install()
    with db.admin() as a:
        a.execute("SELECT wormhole_approve(%s)", (fn.hash,))


MODES = ["worker", "in-process"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fn", [spin, memory_bomb, huge_integer], ids=lambda f: f.name)
def test_statement_timeout_stops_runaway_code(db, server, bystander, mode, fn):
    if mode == "in-process":
        if fn is not spin:
            pytest.skip("in-process mode cannot stop C-level work or bound memory (SECURITY.md)")
        approve(db, fn)
    mark = len(server.log_text())
    c = psycopg.connect(db.dsn(), autocommit=True)
    c.execute("SET statement_timeout = '700ms'")
    t0 = time.monotonic()
    with wormhole.connection(c):
        with pytest.raises((errors.QueryCanceled, errors.LimitExceeded, errors.WorkerCrashed,
                            MemoryError, errors.RemoteError)) as info:
            fn()
    elapsed = time.monotonic() - t0
    assert elapsed < 0.7 + 1.0, elapsed
    if isinstance(info.value, errors.QueryCanceled):
        assert "statement timeout" in str(info.value)
    assert c.execute("SELECT 1").fetchone()[0] == 1  # the session survives
    c.close()
    no_crash_reset(server, mark)


@pytest.mark.parametrize("mode", MODES)
def test_deep_recursion_is_a_clear_error(db, server, bystander, conn, mode):
    if mode == "in-process":
        approve(db, deep_recursion)
    mark = len(server.log_text())
    with pytest.raises(RecursionError):
        deep_recursion(0)
    no_crash_reset(server, mark)


def _run_and_interrupt(db, server, fn, how):
    c = psycopg.connect(db.dsn(), autocommit=True)
    pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
    with wormhole.connection(c):
        fn.install()  # so the signal lands while the function runs, not while it installs
    result = {}

    def call():
        t0 = time.monotonic()
        try:
            with wormhole.connection(c):
                fn()
        except BaseException as exc:  # noqa: BLE001
            result["exc"] = exc
        result["elapsed"] = time.monotonic() - t0

    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.5)
    with db.admin() as a:
        t_signal = time.monotonic()
        a.execute(f"SELECT {how}(%s)", (pid,))
    t.join(5)
    assert not t.is_alive(), "the call did not end"
    assert time.monotonic() - t_signal < 1.0, "not stopped within a second of the signal"
    c.close()
    return result


ENDED = (errors.QueryCanceled, errors.OutcomeUnknown, errors.OperationalError,
         errors.LimitExceeded, errors.WorkerCrashed, MemoryError, errors.RemoteError)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("how", ["pg_cancel_backend", "pg_terminate_backend"])
@pytest.mark.parametrize("fn", [spin, memory_bomb, huge_integer], ids=lambda f: f.name)
def test_cancel_and_terminate_stop_runaway_code(db, server, bystander, mode, how, fn):
    if mode == "in-process":
        if fn is not spin:
            pytest.skip("in-process mode cannot stop C-level work or bound memory (SECURITY.md)")
        approve(db, fn)
    mark = len(server.log_text())
    result = _run_and_interrupt(db, server, fn, how)  # asserts: ended within 1 s of the signal
    exc = result["exc"]
    assert isinstance(exc, ENDED), repr(exc)
    if fn is spin and how == "pg_cancel_backend":
        assert isinstance(exc, errors.QueryCanceled), repr(exc)
    if fn is spin and how == "pg_terminate_backend":
        # the backend is gone mid-call: the client cannot know whether it committed
        assert isinstance(exc, (errors.OutcomeUnknown, errors.OperationalError)), repr(exc)
    no_crash_reset(server, mark)


def test_wormhole_time_limit_from_the_dba_table(db, server, bystander):
    with db.admin() as a:
        a.execute("UPDATE wormhole_limits SET value = 500 WHERE name = 'timeout_ms'")
    c = psycopg.connect(db.dsn(), autocommit=True)
    c.execute("SET statement_timeout = 0")
    t0 = time.monotonic()
    with wormhole.connection(c):
        with pytest.raises(errors.LimitExceeded) as info:
            spin()
    assert time.monotonic() - t0 < 1.5
    assert "timeout_ms" in str(info.value) or info.value.limit == "timeout_ms"
    assert c.execute("SELECT 1").fetchone()[0] == 1
    c.close()


def test_worker_is_replaced_after_a_kill(db, server, bystander, conn):
    @remote
    def ok():
        return "fine"

    with db.admin() as a:
        a.execute("UPDATE wormhole_limits SET value = 400 WHERE name = 'timeout_ms'")
    with pytest.raises(errors.LimitExceeded):
        spin()
    assert ok() == "fine"  # a fresh worker
