"""Which ``query()`` statements the confined worker may send without waiting for their answer.

``policy._defer_discarded_queries`` rewrites a ``query(...)`` statement into
``_wh_defer(line, ...)`` only where that cannot change what the function does: its result is
discarded, and its error could not have been caught (the function the client calls, outside
``try`` and ``with``, never reached recursively, not a generator, ``query`` never rebound).
In-process ``_wh_defer`` is ``query`` itself: the tests at the bottom run both.
"""

from __future__ import annotations

import ast
import textwrap

import pytest

from wormhole.runtime import engine, policy
from wormhole.runtime.errors import DatabaseError
from wormhole.runtime.policy import CATALOGUE, check
from wormhole.runtime.rows import Rows

MODULES: dict[str, frozenset[str] | None] = {name: None for name in CATALOGUE}


def S(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def deferred_lines(source: str) -> list[int]:
    """The lines of the statements the policy defers in ``source`` (checked first)."""
    check(source, MODULES)  # the rewrite only ever runs on accepted code
    tree = ast.parse(source)
    fn = tree.body[0]
    assert isinstance(fn, ast.FunctionDef)
    count = policy._defer_discarded_queries(tree, fn)
    lines = sorted(
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        and node.func.id == policy.DEFER
    )
    assert len(lines) == count
    return lines


@pytest.mark.parametrize(("source", "lines"), [
    (S('''
        def f(a):
            query("UPDATE t SET x = $1", a)
            return 1
        '''), [2]),
    (S('''
        def f(rows):
            for r in rows:
                query("INSERT INTO t VALUES ($1)", r)
            else:
                query("DELETE FROM u")
            while False:
                query("SELECT 1")
            if rows:
                query("SELECT 2")
            elif rows is None:
                pass
            else:
                query("SELECT 3")
            match rows:
                case []:
                    query("SELECT 4")
            return len(rows)
        '''), [3, 5, 7, 9, 13, 16]),
    # a result that is used waits for its answer
    (S('''
        def f(a):
            x = query("SELECT $1::int AS v", a)
            query("SELECT 1")[0]
            print(query("SELECT 2"))
            return query("SELECT 3")
        '''), []),
    # an error that an except or a context manager could catch must be raised where it happens
    (S('''
        def f(a):
            try:
                query("UPDATE t SET x = 1")
            except DatabaseError:
                query("UPDATE t SET x = 2")
            else:
                query("UPDATE t SET x = 3")
            finally:
                query("UPDATE t SET x = 4")
            query("UPDATE t SET x = 5")
            return a
        '''), [10]),
    # other functions' statements: they may be called from inside a try
    (S('''
        def f(a):
            def helper():
                query("UPDATE t SET x = 1")
            g = lambda: query("UPDATE t SET x = 2")
            class K:
                query("UPDATE t SET x = 3")
            helper()
            return a
        '''), []),
    # keyword arguments, no arguments, unpacked arguments: left to run (or fail) as written
    (S('''
        def f(a):
            query()
            query("SELECT 1", x=1)
            query(*a)
            query("SELECT $1", *a)
            return a
        '''), [5]),
])
def test_which_statements_are_deferred(source: str, lines: list[int]) -> None:
    assert deferred_lines(source) == lines


@pytest.mark.parametrize("source", [
    # recursion (or anything that can call the function again from inside a try)
    S('''
        def f(n):
            query("UPDATE t SET x = $1", n)
            if n:
                return f(n - 1)
            return n
        '''),
    S('''
        def f(n):
            query("UPDATE t SET x = $1", n)
            g = f
            return n
        '''),
    # a generator's body runs while its consumer iterates
    S('''
        def f(n):
            query("UPDATE t SET x = $1", n)
            yield n
        '''),
    # ``query`` is not the runtime's wherever the source binds the name
    S('''
        def f(n):
            query("UPDATE t SET x = $1", n)
            query = print
            return n
        '''),
    S('''
        def f(n, query=None):
            query("UPDATE t SET x = $1", n)
            return n
        '''),
    S('''
        def f(n):
            query("UPDATE t SET x = $1", n)
            for query in []:
                pass
            return n
        '''),
    S('''
        def f(n):
            query("UPDATE t SET x = $1", n)
            return [(query := 1) for _ in ()]
        '''),
    S('''
        def f(n):
            query("UPDATE t SET x = $1", n)
            def g():
                def query():
                    pass
            return n
        '''),
    S('''
        def f(n):
            query("UPDATE t SET x = $1", n)
            try:
                pass
            except ValueError as query:
                pass
            return n
        '''),
])
def test_nothing_is_deferred_where_it_could_change_the_outcome(source: str) -> None:
    assert deferred_lines(source) == []


def test_check_compiles_the_deferred_form() -> None:
    checked = check(S('''
        def f(a):
            query("UPDATE t SET x = $1", a)
            return a
        '''), MODULES)
    (code,) = [c for c in checked.code.co_consts if hasattr(c, "co_names")]
    assert policy.DEFER in code.co_names and "query" not in code.co_names
    assert policy.DEFER in policy.HOOKS  # the namespace binds it for every call


class Recorder:
    """A real ``QueryPort`` (no ``defer``): statements run at once, in order."""

    def __init__(self, failing: str = "") -> None:
        self.log: list[tuple[str, tuple[object, ...]]] = []
        self.failing = failing

    def query(self, sql: str, params: tuple[object, ...]) -> Rows:
        self.log.append((sql, tuple(params)))
        if self.failing and sql.startswith(self.failing):
            raise DatabaseError("new row violates check constraint", "23514")
        return Rows([{"n": len(self.log)}])


def _run(source: str, port: Recorder, *args: object) -> str:
    digest = engine.source_hash(source)
    call = engine.Call(digest, source, engine.codec.encode([list(args), {}]), MODULES)
    return engine.run_call(call, port)


ORDER = S('''
    def f(a):
        query("UPDATE inventory SET quantity = quantity - $1", a)
        n = query("SELECT count(*) AS n FROM t")[0]["n"]
        query("INSERT INTO transactions VALUES ($1)", n)
        return n
    ''')


def test_in_process_a_deferred_statement_is_an_ordinary_query() -> None:
    port = Recorder()
    assert _run(ORDER, port, 3) == '{"ok":2,"out":[]}'
    assert port.log == [
        ("UPDATE inventory SET quantity = quantity - $1", (3,)),
        ("SELECT count(*) AS n FROM t", ()),
        ("INSERT INTO transactions VALUES ($1)", (2,)),
    ]


def test_in_process_a_deferred_statement_fails_at_its_line() -> None:
    port = Recorder(failing="UPDATE")
    text = _run(ORDER, port, 3)
    info = engine.codec.decode(text)["err"]
    assert info["sqlstate"] == "23514" and info["tb"] == [[2, "f"]]
    assert len(port.log) == 1  # nothing after it ran
