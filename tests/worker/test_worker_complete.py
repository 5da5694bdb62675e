"""Calls the backend finishes without the worker (``WorkerExecutor._complete``).

A function whose whole body is its chain of statements, the ``if`` statements the backend
evaluates and a ``return`` of the chain's values (``policy.ahead_result``) needs no Python to
run: the backend runs its statements and builds its result itself. The payload must be the
worker's, byte for byte, and the statements the same, each once. Wherever the function goes
elsewhere (a true test, a subscript or a statement that fails, a result the codec refuses or
over the limit), the worker runs the call and its requests are answered, in order, by what
already ran. Each case below runs the same call both ways, on two ``MemoryPort`` s, and
compares.
"""

from __future__ import annotations

import pytest
from worker_support import MemoryPort, make_call, never

from wormhole.runtime import sandbox
from wormhole.runtime.policy import check

pytestmark = pytest.mark.worker


def _both(executor: sandbox.WorkerExecutor, source: str, *args: object,
          **limits: int) -> tuple[str, MemoryPort, str, MemoryPort]:
    """(payload, port) through ``_complete`` (or its hand-over), then through the worker."""
    checked = check(source, {})
    assert checked.ahead is not None
    results = []
    for complete in (True, False):
        port = MemoryPort()
        call = make_call(source, *args, **limits)
        call.ahead = (checked.ahead[1], list(args))
        call.result = checked.result if complete else None
        results += [executor.run(call, port, never), port]
    return results[0], results[1], results[2], results[3]  # type: ignore[return-value]


COMPLETE = [
    ('def f(n):\n    return query("SELECT $1", n)\n', (7,)),
    ('def f(n):\n    return query("SELECT $1", n)[0]["value"]\n', ("x",)),
    ('def f(n):\n    u = query("SELECT * FROM users")\n'
     '    v = query("SELECT $1", u[1]["name"])[0]\n'
     '    return {"users": u, "v": v, "n": [n, (n, None), -2.5, True]}\n', (3,)),
    ('def f(n):\n    """Doc."""\n    query("DELETE FROM users WHERE id = $1", n)\n', (1,)),
    ('def f(n):\n    x = query("SELECT $1", n)[0]\n    if x["value"] is None or n > 5:\n'
     '        raise ValueError("no")\n    query("DELETE FROM users WHERE id = $1", n)\n'
     '    return x\n', (2,)),
    ('def f(a, b):\n    x = query("SELECT $1", a)[0]["value"]\n    if a in b:\n'
     '        return "in"\n    return {1: x, True: b, "k": {"deep": [x]}}\n', (1, [2, 3])),
]


@pytest.mark.parametrize(("source", "args"), COMPLETE)
def test_the_backend_finishes_it_as_the_worker_would(
        executor: sandbox.WorkerExecutor, source: str, args: tuple[object, ...]) -> None:
    done, port, by_worker, worker_port = _both(executor, source, *args)
    assert done == by_worker
    assert port.log == worker_port.log
    assert (executor.completed, executor.handed_over) == (1, 0)


HANDED_OVER = [
    # a test that is true: the function goes into the if (an error, or another return)
    ('def f(n):\n    x = query("SELECT $1", n)[0]\n    if x["value"] > 5:\n'
     '        raise ValueError("too big")\n    query("DELETE FROM users WHERE id = $1", n)\n'
     '    return x\n', (9,)),
    ('def f(a, b):\n    x = query("SELECT $1", a)[0]["value"]\n    if a in b:\n'
     '        return "in"\n    return x\n', (2, [2, 3])),
    # a test or a returned subscript that raises, a statement that fails
    ('def f(n):\n    x = query("SELECT $1", n)[0]\n    if x["value"] < 1:\n'
     '        pass\n    return x\n', ("text",)),
    ('def f(n):\n    x = query("SELECT $1", n)[0]\n    return x["missing"]\n', (1,)),
    ('def f(n):\n    query("DELETE FROM users WHERE id = $1", n)\n'
     '    return query("SELECT * FROM nowhere")\n', (1,)),
    ('def f(n):\n    query("UPSERT $1", n)\n    return query("SELECT $1", n)\n', (1,)),
    ('def f(n):\n    return query("SELECT * FROM users")[5]\n', (1,)),
    # building the result raises (a subscript of a parameter that has none)
    ('def f(n):\n    x = query("SELECT $1", n)[0]\n    return [x, {"k": n["k"]}]\n', (5,)),
]


@pytest.mark.parametrize(("source", "args"), HANDED_OVER)
def test_where_the_function_goes_elsewhere_the_worker_runs_it(
        executor: sandbox.WorkerExecutor, source: str, args: tuple[object, ...]) -> None:
    done, port, by_worker, worker_port = _both(executor, source, *args)
    assert done == by_worker
    assert port.log == worker_port.log  # each statement once: the worker's requests answered
    assert executor.completed == 0


def test_a_result_over_the_limit_is_the_workers_error(
        executor: sandbox.WorkerExecutor) -> None:
    source = 'def f(n):\n    return query("SELECT $1", n)\n'
    done, port, by_worker, _ = _both(executor, source, "x" * 500, max_result_bytes=200)
    assert done == by_worker and '"max_result_bytes"' in done
    assert port.log == [("SELECT $1", ["x" * 500])]
    assert (executor.completed, executor.handed_over) == (0, 1)


def test_no_worker_is_started_for_a_call_the_backend_finishes(sources: dict[str, str]) -> None:
    ex = sandbox.WorkerExecutor(sources)
    try:
        call = make_call('def f(n):\n    return query("SELECT $1", n)\n', 4)
        checked = check(call.source, {})
        call.ahead = (checked.ahead[1], [4])  # type: ignore[index]
        call.result = checked.result
        assert ex.run(call, MemoryPort(), never) == '{"ok":[{"value":4}],"out":[]}'
        assert (ex.starts, ex.worker_pid, ex.completed) == (0, None, 1)
    finally:
        ex.close()


@pytest.mark.parametrize("rogue", [
    # after the hand-over the worker must send what already ran, exactly
    'def f(n):\n    query("DELETE FROM users WHERE id = $1", n + 1)\n    return 1\n',
    'def f(n):\n    return n\n',
])
def test_a_worker_that_does_not_send_what_already_ran_fails_the_call(
        executor: sandbox.WorkerExecutor, rogue: str) -> None:
    """The call is handed over after a write ran (the test after it is true); the worker's
    source here is another function than the chain's (as a lying worker would be)."""
    chain = check('def f(n):\n    query("DELETE FROM users WHERE id = $1", n)\n'
                  '    if n > 0:\n        raise ValueError(n)\n    return 1\n', {})
    call = make_call(rogue, 1)
    call.ahead = (chain.ahead[1], [1])  # type: ignore[index]
    call.result = chain.result
    port = MemoryPort()
    with pytest.raises(sandbox.WorkerCrashed, match="ran already"):
        executor.run(call, port, never)
    assert port.log == [("DELETE FROM users WHERE id = $1", [1])]


def test_tests_the_backend_cannot_evaluate_cheaply_are_left_to_the_worker(
        sources: dict[str, str]) -> None:
    """(Review of the seventh session.) A wide int inside a list compared with many decimals
    (``[2**28000] in [[Decimal(1)], ...]``) cost the backend seconds per test, in C: operands
    of tests are short scalars, containers of at most 10,000 of them on the right of ``in``;
    anything else stops the chain at once and the worker decides."""
    import time
    from decimal import Decimal

    source = ('def f(p, q):\n    query("DELETE FROM users WHERE id = $1", q)\n'
              + "".join(f"    if p in q or p == {i}:\n        return 1\n" for i in range(8))
              + "    return 2\n")
    checked = check(source, {})
    assert checked.result is not None
    p, q = [int("f" * 7000, 16)], [[Decimal(1)]] * 640
    call = make_call(source, p, q)
    call.ahead, call.result = (checked.ahead[1], [p, q]), checked.result  # type: ignore[index]
    ex = sandbox.WorkerExecutor(sources)
    try:
        begin = time.monotonic()
        done = ex._complete(call, MemoryPort(), begin)
        assert time.monotonic() - begin < 0.3
    finally:
        ex.close()
    assert not isinstance(done, str)  # handed over


def test_the_deadline_counts_the_last_statement_too(sources: dict[str, str]) -> None:
    import time

    from wormhole.runtime.errors import LimitExceeded

    class Slow(MemoryPort):
        def query(self, sql: str, params: "list[object] | tuple[object, ...]") -> object:
            time.sleep(0.05)
            return super().query(sql, params)

    source = 'def f(n):\n    return query("SELECT $1", n)\n'
    checked = check(source, {})
    call = make_call(source, 1, timeout_ms=20)
    call.ahead, call.result = (checked.ahead[1], [1]), checked.result  # type: ignore[index]
    ex = sandbox.WorkerExecutor(sources)
    try:
        with pytest.raises(LimitExceeded):
            ex._complete(call, Slow(), time.monotonic())
    finally:
        ex.close()


def test_a_request_holding_a_set_is_never_reencoded_to_be_compared() -> None:
    """Re-encoding sorts a set's elements by their text at each level of nesting: the worker
    could make that cost the backend far more than its size."""
    request = b'{"sql":"SELECT $1","params":[{"$set":["a","b"]}]}'
    assert not sandbox._same(b'{"params":[{"$set":["a","b"]}],"sql":"SELECT $1"}', request)
    assert request == request  # byte for byte it is still the statement run ahead
