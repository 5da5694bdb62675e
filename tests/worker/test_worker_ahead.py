"""Statements run ahead, in a real confined worker.

When the host knows the statements a function starts with (``policy.ahead_statements`` and the
call's positional arguments: ``call.ahead``), the backend runs each before the worker asks for
it: the first while the worker wakes up, each next one right after answering the one before,
its arguments taken from the rows the worker was just sent. The worker's ``query`` is answered
from it only if the request is exactly that statement; whatever the worker asks instead is
served as usual and ends the chain, so a wrong guess can cost a statement but never a wrong
answer. Statements whose result the function discards are run ahead too, past ``if``
statements whose test the backend evaluates false, and kept only if the worker then sends
exactly them: anything else fails the call (the host rolls its statements back).
``MemoryPort`` is a real in-memory ``QueryPort`` that logs what it runs.
"""

from __future__ import annotations

import json

import pytest
from worker_support import MemoryPort, make_call, never

from wormhole.runtime import codec, sandbox
from wormhole.runtime.policy import check

pytestmark = pytest.mark.worker

FIRST = """\
def f(n):
    x = query("SELECT $1", n)[0]["value"]
    users = query("SELECT * FROM users")
    return [x, len(users)]
"""


def st(sql: str, refs: tuple[object, ...], keys: tuple[object, ...] = (), line: int = 0,
       tests: tuple[object, ...] = ()) -> tuple[object, ...]:
    return (sql, refs, keys, line, tests)


def steps_of(source: str) -> object:
    ahead = check(source, {}).ahead
    assert ahead is not None
    return ahead[1]


#: FIRST's chain, as policy.ahead_statements gives it (the second statement takes nothing)
FIRST_STEPS = (st("SELECT $1", ((0, ()),), (0, "value")), st("SELECT * FROM users", ()))

CHAINED = """\
def f(n):
    first = query("SELECT * FROM users")[n]
    again = query("SELECT $1", first["name"])[0]
    return again["value"]
"""
CHAINED_STEPS = (st("SELECT * FROM users", (), (0,)),
                 st("SELECT $1", ((-1, ("name",)),), (0,)))


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
        payload, port = _run(executor, CHAINED, (st("SELECT * FROM users", (), (n,)),
                                                 CHAINED_STEPS[1]), n)
        assert payload == {"ok": name, "out": []}
        assert port.log == [("SELECT * FROM users", []), ("SELECT $1", [name])]
    assert (executor.ahead, executor.ahead_unused) == (4, 0)


def test_a_subscript_that_raises_ends_the_chain_where_the_function_ends(
        executor: sandbox.WorkerExecutor) -> None:
    # users[5]: IndexError in the backend and in the function alike; nothing after it runs
    payload, port = _run(executor, CHAINED, (st("SELECT * FROM users", (), (5,)),
                                             CHAINED_STEPS[1]), 5)
    assert payload["err"]["type"] == "IndexError"
    assert port.log == [("SELECT * FROM users", [])]
    assert (executor.ahead, executor.ahead_unused) == (1, 0)


def test_a_statement_the_worker_does_not_ask_for_never_answers_it(
        executor: sandbox.WorkerExecutor) -> None:
    # other arguments than the worker's (a wrong analysis, or a worker that lies): the worker
    # gets the answer to what it asked, the other statement was only run, the chain stops
    wrong = (st("SELECT $1", ((0, ()),)), st("SELECT * FROM users", ()))
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
    steps = (st("SELECT * FROM nowhere", ()), st("SELECT $1", ((0, ()),)))
    payload, port = _run(executor, source, steps, 1)
    assert (payload["err"]["sqlstate"], payload["err"]["tb"]) == ("42P01", [[2, "f"]])
    assert port.log == [("SELECT * FROM nowhere", [])]
    assert (executor.ahead, executor.ahead_unused) == (1, 0)


def test_a_statement_the_worker_could_not_send_is_not_run() -> None:
    # a parameter the codec refuses (the worker's query() raises before sending anything), a
    # request over the frame limit (the backend would refuse it)
    port = MemoryPort()
    step = (st("SELECT $1", ((0, ()),)),)
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
    deferred = codec.encode_query("DELETE $1", [1]).encode()[:-1] + b',"line":3}'
    assert sandbox._same(b'{"line": 3, "params": [1], "sql": "DELETE $1"}', deferred, True)
    assert not sandbox._same(b'{"line": 4, "params": [1], "sql": "DELETE $1"}', deferred, True)
    assert not sandbox._same(b'{"line": "3", "params": [1], "sql": "DELETE $1"}', deferred,
                             True)
    assert not sandbox._same(b'{"params": [1], "sql": "DELETE $1"}', deferred, True)


GUARDED = """\
def f(n):
    x = query("SELECT $1", n)[0]
    if x["value"] > 100:
        raise ValueError("too big")
    query("DELETE FROM users WHERE id = $1", x["value"])
    query("DELETE FROM users WHERE id = $1", n)
    return n
"""


def test_discarded_statements_past_a_false_test_run_ahead_once(
        executor: sandbox.WorkerExecutor) -> None:
    steps = steps_of(GUARDED)
    assert [step[3] for step in steps] == [0, 5, 6]  # type: ignore[attr-defined]
    payload, port = _run(executor, GUARDED, steps, 7)
    assert payload == {"ok": 7, "out": []}
    assert port.log == [("SELECT $1", [7]), ("DELETE FROM users WHERE id = $1", [7]),
                        ("DELETE FROM users WHERE id = $1", [7])]
    assert (executor.ahead, executor.ahead_unused, executor.deferred) == (3, 0, 2)


def test_a_true_test_ends_the_chain_before_the_if(executor: sandbox.WorkerExecutor) -> None:
    # the function raises in the if's body: nothing after it is run, ahead or not
    payload, port = _run(executor, GUARDED, steps_of(GUARDED), 500)
    assert payload["err"]["type"] == "ValueError"
    assert port.log == [("SELECT $1", [500])]
    # a test that raises (a str compared with an int) ends it too, as it ends the function
    payload, port = _run(executor, GUARDED, steps_of(GUARDED), "x")
    assert payload["err"]["type"] == "TypeError"
    assert port.log == [("SELECT $1", ["x"])]
    assert (executor.ahead, executor.ahead_unused, executor.deferred) == (2, 0, 0)


def test_a_discarded_statement_that_fails_ahead_fails_the_call_at_its_line(
        executor: sandbox.WorkerExecutor) -> None:
    source = ('def f(n):\n    query("UPSERT $1", n)\n'
              '    query("DELETE FROM users WHERE id = $1", n)\n    return n\n')
    steps = steps_of(source)
    assert [step[3] for step in steps] == [2, 3]  # type: ignore[attr-defined]
    payload, port = _run(executor, source, steps, 4)
    assert (payload["err"]["sqlstate"], payload["err"]["tb"]) == ("42601", [[2, "f"]])
    assert port.log == [("UPSERT $1", [4])]  # once, and nothing after it


@pytest.mark.parametrize("source", [
    # the worker sends another statement than the one run ahead ...
    'def f(n):\n    query("DELETE FROM users WHERE id = $1", n + 1)\n    return n\n',
    # ... asks for a query first, or ends the call without it
    'def f(n):\n    return query("SELECT $1", n)\n',
    "def f(n):\n    return n\n",
])
def test_a_worker_that_skips_a_statement_run_ahead_fails_the_call(
        executor: sandbox.WorkerExecutor, source: str) -> None:
    """A discarded statement run ahead may be a write: it is kept only if the worker sends
    exactly it. Anything else (a wrong analysis, a lying worker) fails the call, which the host
    then rolls back with every statement of the call."""
    steps = (st("DELETE FROM users WHERE id = $1", ((0, ()),), (), 2),)
    with pytest.raises(sandbox.WorkerCrashed, match="line 2"):
        _run(executor, source, steps, 3)
    payload, _ = _run(executor, "def f(n):\n    return n\n", (), 1)  # a new worker
    assert payload == {"ok": 1, "out": []}


def test_a_function_that_raises_before_a_statement_run_ahead_keeps_its_error(
        executor: sandbox.WorkerExecutor) -> None:
    # (its error payload makes the host roll back what was run ahead, as in-process)
    steps = (st("DELETE FROM users WHERE id = $1", ((0, ()),), (), 2),)
    payload, port = _run(executor, "def f(n):\n    raise KeyError(n)\n", steps, 3)
    assert payload["err"]["type"] == "KeyError"
    assert port.log == [("DELETE FROM users WHERE id = $1", [3])]
