"""The first statement run ahead, in a real confined worker.

When the host knows the statement a function runs first (``policy.first_query`` bound to the
call's arguments: ``call.first``), the backend runs it while the worker wakes up and gets there,
and answers the worker's first ``query`` with its result, if that request is exactly this
statement. Whatever the worker asks instead is served as usual, so a wrong guess can cost a
statement but never a wrong answer. ``MemoryPort`` is a real in-memory ``QueryPort`` that logs
what it runs.
"""

from __future__ import annotations

import json

import pytest
from worker_support import MemoryPort, make_call, never

from wormhole.runtime import codec, sandbox

pytestmark = pytest.mark.worker

FIRST = """\
def f(n):
    x = query("SELECT $1", n)[0]["value"]
    users = query("SELECT * FROM users")
    return [x, len(users)]
"""


def _run(ex: sandbox.WorkerExecutor, source: str, first: object, *args: object
         ) -> tuple[dict, MemoryPort]:
    port = MemoryPort()
    call = make_call(source, *args)
    call.first = first  # type: ignore[assignment]
    return json.loads(ex.run(call, port, never)), port


def test_the_first_statement_runs_once_ahead_and_answers_the_worker(
        executor: sandbox.WorkerExecutor) -> None:
    for n in (7, 8):
        payload, port = _run(executor, FIRST, ("SELECT $1", [n]), n)
        assert payload == {"ok": [n, 2], "out": []}
        assert port.log == [("SELECT $1", [n]), ("SELECT * FROM users", [])]
    # the round trips are the same as without it: the worker still asked for both
    assert (executor.answered, executor.ahead, executor.ahead_unused) == (4, 2, 0)


def test_a_first_statement_the_worker_does_not_ask_for_never_answers_it(
        executor: sandbox.WorkerExecutor) -> None:
    # other arguments than the worker's (a wrong analysis, or a worker that lies): the worker
    # gets the answer to what it asked, the other statement was only run
    payload, port = _run(executor, FIRST, ("SELECT $1", [99]), 7)
    assert payload == {"ok": [7, 2], "out": []}
    assert port.log == [("SELECT $1", [99]), ("SELECT $1", [7]), ("SELECT * FROM users", [])]
    assert (executor.ahead, executor.ahead_unused) == (0, 1)
    # another statement altogether, and a function whose first message is its result
    payload, port = _run(executor, "def f(n):\n    return n\n", ("SELECT $1", [1]), 5)
    assert payload == {"ok": 5, "out": []}
    assert port.log == [("SELECT $1", [1])]
    assert (executor.ahead, executor.ahead_unused) == (0, 2)


def test_the_first_statements_error_is_the_answer_the_worker_gets(
        executor: sandbox.WorkerExecutor) -> None:
    source = "def f(n):\n    rows = query(\"SELECT * FROM nowhere\")\n    return n\n"
    payload, port = _run(executor, source, ("SELECT * FROM nowhere", []), 1)
    assert (payload["err"]["sqlstate"], payload["err"]["tb"]) == ("42P01", [[2, "f"]])
    assert port.log == [("SELECT * FROM nowhere", [])]
    assert (executor.ahead, executor.ahead_unused) == (1, 0)


def test_a_statement_the_worker_could_not_send_is_not_run(
        executor: sandbox.WorkerExecutor) -> None:
    # a parameter the codec refuses (the worker's query() raises before sending anything), a
    # request over the frame limit (the backend would refuse it)
    port = MemoryPort()
    assert sandbox._run_ahead(port, ("SELECT $1", [object()]), 1 << 20) is None
    assert sandbox._run_ahead(port, ("SELECT $1", ["x" * 100]), 50) is None
    assert port.log == []
    request, op, body = sandbox._run_ahead(port, ("SELECT $1", [3]), 1 << 20)
    assert request == codec.encode_query("SELECT $1", [3]).encode()
    assert op == "rows" and port.log == [("SELECT $1", [3])]


def test_the_same_statement_written_differently_is_recognised() -> None:
    request = codec.encode_query("SELECT $1", [1, "a"]).encode()
    assert sandbox._same(b'{"params": [1, "a"], "sql": "SELECT $1"}', request)
    assert not sandbox._same(b'{"params": [1.0, "a"], "sql": "SELECT $1"}', request)
    assert not sandbox._same(b'{"params": [1, "b"], "sql": "SELECT $1"}', request)
    assert not sandbox._same(b'{"sql": "SELECT $1"}', request)
    assert not sandbox._same(b"\xff not json", request)
