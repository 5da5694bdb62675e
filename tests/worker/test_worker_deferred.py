"""Statements sent without waiting, and calls sent before the host's checks, in a real worker.

A ``query()`` statement whose result the function discards, where its error could not be
caught (``policy._defer_discarded_queries``), goes to the backend as ``nowait``: the worker
runs on. The backend runs the call's statements in order and answers a deferred one only if
it fails; the call then ends with that error, at that line, and nothing after it runs: what
in-process execution would have done. ``WorkerExecutor.dispatch`` sends a warm call before the
host has finished its checks; ``run`` serves it, ``cancel`` stops a worker whose dispatched call
is not run. ``MemoryPort`` is a real in-memory ``QueryPort`` that logs what it runs.
"""

from __future__ import annotations

import json

import pytest
from worker_support import BWRAP, MemoryPort, make_call, never

from wormhole.runtime import sandbox

pytestmark = pytest.mark.worker


def _run(ex: sandbox.WorkerExecutor, source: str, *args: object) -> tuple[dict, MemoryPort]:
    port = MemoryPort()
    text = ex.run(make_call(source, *args), port, never)
    return json.loads(text), port


def _sql(port: MemoryPort) -> list[str]:
    return [sql for sql, _ in port.log]


MIXED = """\
def f(n):
    query("DELETE FROM a")
    query("DELETE FROM b")
    x = query("SELECT $1", n)[0]["value"]
    query("DELETE FROM c")
    return x
"""


def test_discarded_statements_go_without_waiting_and_run_in_order(
        executor: sandbox.WorkerExecutor) -> None:
    payload, port = _run(executor, MIXED, 7)
    assert payload == {"ok": 7, "out": []}
    assert _sql(port) == ["DELETE FROM a", "DELETE FROM b", "SELECT $1", "DELETE FROM c"]
    assert (executor.answered, executor.deferred) == (1, 3)


def test_a_loop_of_deferred_statements_waits_for_none(executor: sandbox.WorkerExecutor) -> None:
    payload, port = _run(executor, "def f(n):\n    for i in range(n):\n"
                         "        query(\"DELETE FROM t\")\n    return n\n", 500)
    assert payload == {"ok": 500, "out": []}
    assert len(port.log) == 500
    assert (executor.answered, executor.deferred) == (0, 500)


CAUGHT = """\
def f():
    query("DELETE FROM a")
    query("SELECT * FROM missing")
    query("DELETE FROM b")
    try:
        query("SELECT $1", 1)
    except DatabaseError:
        print("caught")
    return 1
"""


def test_a_failed_deferred_statement_ends_the_call_at_its_line(
        executor: sandbox.WorkerExecutor) -> None:
    """The statement after it never runs, and the next query() raises its error (it did not
    run either): the call ends with the failed statement's error, reported at its line, even
    though the function caught what query() raised and returned."""
    payload, port = _run(executor, CAUGHT)
    err = payload["err"]
    assert (err["type"], err["sqlstate"], err["tb"]) == ("DatabaseError", "42P01", [[3, "f"]])
    assert 'relation "missing" does not exist' in err["message"]
    assert payload["out"] == ["caught"]
    assert _sql(port) == ["DELETE FROM a", "SELECT * FROM missing"]


@pytest.mark.parametrize("tail", ["    return 5\n", "    raise ValueError('mine')\n"])
def test_a_failure_found_when_the_function_is_done_replaces_its_outcome(
        executor: sandbox.WorkerExecutor, tail: str) -> None:
    """The function finished (returned, or raised its own error) before the backend reached
    the failed statement: its outcome is replaced by that statement's error, which came first.
    The worker stays usable."""
    source = "def f():\n    query(\"DELETE FROM a\")\n    query(\"SELECT * FROM missing\")\n" + tail
    payload, port = _run(executor, source)
    assert payload["err"]["sqlstate"] == "42P01" and payload["err"]["tb"] == [[3, "f"]]
    assert _sql(port) == ["DELETE FROM a", "SELECT * FROM missing"]
    payload, _ = _run(executor, MIXED, 2)
    assert payload == {"ok": 2, "out": []}
    assert executor.starts == 1


def test_a_dispatched_call_is_served_by_run(executor: sandbox.WorkerExecutor) -> None:
    call = make_call(MIXED, 4)
    assert not executor.dispatch(call.source_hash, call.source, call.args_json, call.modules,
                                 call.modules_key, call.limits)  # no worker yet
    executor.run(call, MemoryPort(), never)
    modules = call.modules  # the host passes one whitelist object until it changes
    call = make_call(MIXED, 5)
    call.modules = modules
    assert executor.dispatch(call.source_hash, call.source, call.args_json, call.modules,
                             call.modules_key, call.limits)
    port = MemoryPort()
    assert json.loads(executor.run(call, port, never)) == {"ok": 5, "out": []}
    assert executor.dispatched == 1 and executor.starts == 1
    assert len(port.log) == 4


def test_a_dispatched_call_that_is_not_run_stops_the_worker(
        executor: sandbox.WorkerExecutor) -> None:
    call = make_call(MIXED, 4)
    executor.run(call, MemoryPort(), never)
    first = executor.worker_pid
    assert executor.dispatch(call.source_hash, call.source, call.args_json, call.modules,
                             call.modules_key, call.limits)
    executor.cancel()  # the host's checks refused the call
    assert executor.worker_pid is None
    assert json.loads(executor.run(call, MemoryPort(), never)) == {"ok": 4, "out": []}
    assert executor.worker_pid != first and executor.starts == 2 and executor.dispatched == 0


def test_a_different_call_than_the_one_dispatched_runs_in_a_fresh_worker(
        executor: sandbox.WorkerExecutor) -> None:
    call = make_call(MIXED, 4)
    executor.run(call, MemoryPort(), never)
    executor.dispatch(call.source_hash, call.source, call.args_json, call.modules,
                      call.modules_key, call.limits)
    other = make_call(MIXED, 9)  # other arguments than the ones sent
    other.modules = call.modules
    port = MemoryPort()
    assert json.loads(executor.run(other, port, never)) == {"ok": 9, "out": []}
    assert executor.starts == 2 and executor.dispatched == 0
    assert ("SELECT $1", [9]) in port.log


def test_only_a_known_source_is_dispatched(sources: dict[str, str]) -> None:
    ex = sandbox.WorkerExecutor(sources, bwrap=BWRAP)
    try:
        ex.run(make_call(MIXED, 1), MemoryPort(), never)
        other = make_call("def f():\n    return 1\n")
        assert not ex.dispatch(other.source_hash, other.source, other.args_json,
                               other.modules, other.modules_key, other.limits)
        big = make_call(MIXED, "x" * 20000)
        assert not ex.dispatch(big.source_hash, big.source, big.args_json, big.modules,
                               big.modules_key, big.limits)
    finally:
        ex.close()
