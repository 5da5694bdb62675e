"""Which statement a function runs first, whatever it is given (``policy.first_query``).

The confined worker's backend runs that statement, with the call's arguments, while the worker
wakes up and reaches it (``sandbox.WorkerExecutor``). So the analysis may name a statement only
when every call that binds its arguments runs exactly that statement before anything else:
nothing before it may fail, branch or have an effect. The cases below are the ones it accepts
and, side by side, the near misses it must refuse; ``check`` stores the result in
``Checked.first`` for ``wormhole_install`` to keep with the checked code.
"""

from __future__ import annotations

import textwrap

import pytest

from wormhole.runtime.policy import CATALOGUE, check

MODULES: dict[str, frozenset[str] | None] = {name: None for name in CATALOGUE}


def S(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def first(source: str) -> tuple[str, int, tuple[int, ...]] | None:
    return check(S(source), MODULES).first


@pytest.mark.parametrize(("source", "expected"), [
    # the brief's functions: an assignment whose value starts with query(...)
    ('''
     def process_order(order_id, user_id):
         order = query("SELECT * FROM orders WHERE id = $1", order_id)[0]
         return order
     ''', ("SELECT * FROM orders WHERE id = $1", 2, (0,))),
    # after a docstring; the second parameter only; subscripts, attributes and a method call
    # around the call are evaluated after it
    ('''
     def f(a, b):
         """Doc."""
         return query("SELECT $1::int AS x", b)[0]["x"]
     ''', ("SELECT $1::int AS x", 2, (1,))),
    ('''
     def f(a):
         n = query("SELECT $1", a).rowcount
         return n
     ''', ("SELECT $1", 1, (0,))),
    ('''
     def f(a):
         return query("SELECT $1", a)[0].get("x")
     ''', ("SELECT $1", 1, (0,))),
    # a for loop over it; no parameters passed; a parameter passed twice
    ('''
     def f(a):
         for row in query("SELECT 1"):
             return row
     ''', ("SELECT 1", 1, ())),
    ('''
     def f(a, b):
         x, y = query("SELECT $1, $2, $3", b, a, b)[0].values()
         return x
     ''', ("SELECT $1, $2, $3", 2, (1, 0, 1))),
    # a function with no parameters
    ('''
     def f():
         return query("SELECT now()")
     ''', ("SELECT now()", 0, ())),
])
def test_the_statement_a_function_runs_first(source: str, expected: object) -> None:
    assert first(source) == expected


@pytest.mark.parametrize("source", [
    # something runs before it, or it is not the first thing its statement evaluates
    '''
    def f(a):
        b = a + 1
        return query("SELECT $1", b)
    ''',
    '''
    def f(a):
        return len(query("SELECT $1", a))
    ''',
    '''
    def f(a):
        x = [] + query("SELECT $1", a)
        return x
    ''',
    '''
    def f(a):
        if a:
            return query("SELECT $1", a)
    ''',
    '''
    def f(a):
        try:
            return query("SELECT $1", a)
        except Exception:
            return None
    ''',
    '''
    def f(a):
        with open_thing() as t:
            return query("SELECT $1", a)
    ''',
    '''
    def f(a):
        x = 0
        x += query("SELECT $1", a)[0]["n"]
        return x
    ''',
    # discarded: deferred instead (the worker does not wait for it)
    '''
    def f(a):
        query("UPDATE t SET x = $1", a)
    ''',
    # a docstring alone
    '''
    def f(a):
        """Doc."""
    ''',
    # the SQL is not a literal, or an argument is not a bare parameter
    '''
    def f(a):
        sql = "SELECT $1"
        return query(sql, a)
    ''',
    '''
    def f(a):
        return query(f"SELECT {a}")
    ''',
    '''
    def f(a):
        return query("SELECT $1", a + 1)
    ''',
    '''
    def f(a):
        return query("SELECT $1", 1)
    ''',
    '''
    def f(a):
        return query("SELECT $1", *a)
    ''',
    '''
    def f(a):
        return query("SELECT $1", x=a)
    ''',
    '''
    def f(a):
        return query("SELECT $1", b)
    ''',
    # parameters that are not plain positional ones, or evaluated when the function is defined
    '''
    def f(a, b=1):
        return query("SELECT $1", a)
    ''',
    '''
    def f(a: int):
        return query("SELECT $1", a)
    ''',
    '''
    def f(a) -> int:
        return query("SELECT $1", a)
    ''',
    '''
    def f(*a):
        return query("SELECT 1")
    ''',
    '''
    def f(a, *, b):
        return query("SELECT $1", a)
    ''',
    '''
    def f(a, **k):
        return query("SELECT $1", a)
    ''',
    # its body does not run when it is called
    '''
    def f(a):
        x = query("SELECT $1", a)
        yield x
    ''',
    # query is not wormhole's
    '''
    def f(a):
        x = query("SELECT $1", a)
        query = None
        return x
    ''',
    '''
    def f(query):
        return query("SELECT 1")
    ''',
    '''
    def f(a):
        x = query("SELECT $1", a)
        for query in x:
            pass
        return x
    ''',
    '''
    def f(a):
        x = query("SELECT $1", a)
        def query():
            return 1
        return x
    ''',
    '''
    def f(a):
        x = query("SELECT $1", a)
        try:
            pass
        except Exception as query:
            pass
        return x
    ''',
    '''
    def f(a):
        global query
        return query("SELECT $1", a)
    ''',
    '''
    def f(a):
        x = query("SELECT $1", a)
        y = [query for query in x]
        return y
    ''',
    '''
    def f(a):
        x = query("SELECT $1", a)
        if (query := x):
            pass
        return x
    ''',
])
def test_near_misses_name_no_statement(source: str) -> None:
    try:
        result = first(source)
    except Exception as exc:  # noqa: BLE001 - refused by the policy: no statement either
        assert type(exc).__name__ == "PolicyError"
        return
    assert result is None
