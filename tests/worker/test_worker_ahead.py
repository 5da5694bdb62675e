"""Statements run ahead, in a real confined worker.

When the host knows the statements a function starts with (``policy.ahead_statements`` and the
call's positional arguments: ``call.ahead``), the backend runs each before the worker asks for
it: the first while the worker wakes up, each next one right after answering the one before,
its arguments taken from the rows the worker was just sent. The worker's ``query`` is answered
from it only if the request is exactly that statement; whatever the worker asks instead is
served as usual and ends the chain, so a wrong guess can cost a statement but never a wrong
answer. ``MemoryPort`` is a real in-memory ``QueryPort`` that logs what it runs.
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
#: FIRST's chain, as policy.ahead_statements gives it (the second statement takes nothing)
FIRST_STEPS = (("SELECT $1", ((0, ()),), (0, "value")), ("SELECT * FROM users", (), ()))

CHAINED = """\
def f(n):
    first = query("SELECT * FROM users")[n]
    again = query("SELECT $1", first["name"])[0]
    return again["value"]
"""
CHAINED_STEPS = (("SELECT * FROM users", (), (0,)),
                 ("SELECT $1", ((-1, ("name",)),), (0,)))


def _run(ex: sandbox.WorkerExecutor, source: str, steps: object, *args: object
         ) -> tuple[dict, MemoryPort]:
    port = MemoryPort()
    call = make_call(source, *args)
    call.ahead = (steps, list(args))  # type: ignore[assignment]
    return json.loads(ex.run(call, port, never)), port


def test_the_statements_run_once_ahead_and_answer_the_worker(
        executor: sandbox.WorkerExecutor) -> None:
    for n in (7, 8):
        payload, port = _run(executor, FIRST, FIRST_STEPS, n)
        assert payload == {"ok": [n, 2], "out": []}
        assert port.log == [("SELECT $1", [n]), ("SELECT * FROM users", [])]
    # the round trips are the same as without them: the worker still asked for each
    assert (executor.answered, executor.ahead, executor.ahead_unused) == (4, 4, 0)


def test_a_later_statement_takes_its_argument_from_the_rows_before(
        executor: sandbox.WorkerExecutor) -> None:
    # CHAINED's first row is users[0] here ("ada"): the second statement gets "ada"; with
    # n = 1 "grace"
    for n, name in ((0, "ada"), (1, "grace")):
        payload, port = _run(executor, CHAINED, (("SELECT * FROM users", (), (n,)),
                                                 CHAINED_STEPS[1]), n)
        assert payload == {"ok": name, "out": []}
        assert port.log == [("SELECT * FROM users", []), ("SELECT $1", [name])]
    assert (executor.ahead, executor.ahead_unused) == (4, 0)


def test_a_subscript_that_raises_ends_the_chain_where_the_function_ends(
        executor: sandbox.WorkerExecutor) -> None:
    # users[5]: IndexError in the backend and in the function alike; nothing after it runs
    payload, port = _run(executor, CHAINED, (("SELECT * FROM users", (), (5,)),
                                             CHAINED_STEPS[1]), 5)
    assert payload["err"]["type"] == "IndexError"
    assert port.log == [("SELECT * FROM users", [])]
    assert (executor.ahead, executor.ahead_unused) == (1, 0)


def test_a_statement_the_worker_does_not_ask_for_never_answers_it(
        executor: sandbox.WorkerExecutor) -> None:
    # other arguments than the worker's (a wrong analysis, or a worker that lies): the worker
    # gets the answer to what it asked, the other statement was only run, the chain stops
    wrong = (("SELECT $1", ((0, ()),), ()), ("SELECT * FROM users", (), ()))
    payload, port = _run(executor, "def f(n):\n    return query(\"SELECT $1\", n + 1)\n",
                         wrong, 7)
    assert payload == {"ok": [{"value": 8}], "out": []}
    assert port.log == [("SELECT $1", [7]), ("SELECT $1", [8])]
    assert (executor.ahead, executor.ahead_unused) == (0, 1)
    # a function whose first message is its result
    payload, port = _run(executor, "def f(n):\n    return n\n", FIRST_STEPS, 5)
    assert payload == {"ok": 5, "out": []}
    assert port.log == [("SELECT $1", [5])]
    assert (executor.ahead, executor.ahead_unused) == (0, 2)


def test_a_statements_error_is_the_answer_and_ends_the_chain(
        executor: sandbox.WorkerExecutor) -> None:
    source = ("def f(n):\n    rows = query(\"SELECT * FROM nowhere\")\n"
              "    return query(\"SELECT $1\", n)\n")
    steps = (("SELECT * FROM nowhere", (), ()), ("SELECT $1", ((0, ()),), ()))
    payload, port = _run(executor, source, steps, 1)
    assert (payload["err"]["sqlstate"], payload["err"]["tb"]) == ("42P01", [[2, "f"]])
    assert port.log == [("SELECT * FROM nowhere", [])]
    assert (executor.ahead, executor.ahead_unused) == (1, 0)


def test_a_statement_the_worker_could_not_send_is_not_run() -> None:
    # a parameter the codec refuses (the worker's query() raises before sending anything), a
    # request over the frame limit (the backend would refuse it)
    port = MemoryPort()
    step = (("SELECT $1", ((0, ()),), ()),)
    assert sandbox._Ahead(port, step, [object()], 1 << 20).next() is None
    assert sandbox._Ahead(port, step, ["x" * 100], 50).next() is None
    assert port.log == []
    ahead = sandbox._Ahead(port, step, [3], 1 << 20)
    request, op, _ = ahead.next()
    assert request == codec.encode_query("SELECT $1", [3]).encode()
    assert op == "rows" and port.log == [("SELECT $1", [3])]
    assert ahead.next() is None


def test_the_same_statement_written_differently_is_recognised() -> None:
    request = codec.encode_query("SELECT $1", [1, "a"]).encode()
    assert sandbox._same(b'{"params": [1, "a"], "sql": "SELECT $1"}', request)
    assert not sandbox._same(b'{"params": [1.0, "a"], "sql": "SELECT $1"}', request)
    assert not sandbox._same(b'{"params": [1, "b"], "sql": "SELECT $1"}', request)
    assert not sandbox._same(b'{"sql": "SELECT $1"}', request)
    assert not sandbox._same(b"\xff not json", request)
