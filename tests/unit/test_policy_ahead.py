"""Which statements a function starts with, whatever it is given (``policy.ahead_statements``).

The confined worker's backend runs them, with the call's arguments, before the worker asks
(``sandbox._Ahead``): the first while the worker wakes up, each next one after answering the
one before. So the analysis may name a statement only when every call that binds its arguments
runs exactly these statements, in order, before anything else: nothing before or between them
may fail, branch or have an effect that the backend cannot evaluate itself (literal subscripts
of the rows). The cases below are the ones it accepts and, side by side, the near misses it must
refuse; ``check`` stores the result in ``Checked.ahead`` for ``wormhole_install`` to keep with
the checked code.
"""

from __future__ import annotations

import textwrap

import pytest

from wormhole.runtime.policy import CATALOGUE, MAX_AHEAD, check

MODULES: dict[str, frozenset[str] | None] = {name: None for name in CATALOGUE}


def S(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def first(source: str) -> tuple[str, int, tuple[int, ...]] | None:
    """The first statement as (sql, parameters, indexes of the parameters it passes)."""
    ahead = check(S(source), MODULES).ahead
    if ahead is None:
        return None
    count, steps = ahead
    sql, refs, _ = steps[0]
    assert all(source >= 0 and path == () for source, path in refs), refs
    return sql, count, tuple(source for source, _ in refs)


def chain(source: str) -> list[object] | None:
    ahead = check(S(source), MODULES).ahead
    return None if ahead is None else list(ahead[1])


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
def test_the_statement_a_function_starts_with(source: str, expected: object) -> None:
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
        assert "global query" in source, "only `global` is refused by the policy itself"
        return
    assert result is None


@pytest.mark.parametrize("declaration", ["global query", "nonlocal query"])
def test_a_declared_query_names_no_statement(declaration: str) -> None:
    """The policy refuses ``global`` (and ``nonlocal`` at the top of a function is a syntax
    error), so the analysis is asked directly: it must not trust a ``query`` declared away."""
    import ast

    from wormhole.runtime.policy import ahead_statements

    tree = ast.parse(S(f'''
        def f(a):
            def g():
                {declaration}
                query = None
            return query("SELECT $1", a)
        '''))
    fn = tree.body[0]
    assert isinstance(fn, ast.FunctionDef)
    assert ahead_statements(tree, fn) is None
    plain = ast.parse(S('''
        def f(a):
            return query("SELECT $1", a)
        '''))
    assert ahead_statements(plain, plain.body[0]) is not None  # type: ignore[arg-type]


def test_the_brief_functions_start_with_a_chain() -> None:
    """``process_order``'s second statement takes its argument from the first's row; both of
    ``get_user_summary``'s take the parameter. Each step keeps the literal subscripts that give
    what it assigns, for the steps after it."""
    from wormhole import demo

    order = check(demo.process_order.source, MODULES).ahead
    assert order == (2, (
        ("SELECT * FROM orders WHERE id = $1", ((0, ()),), (0,)),
        ("SELECT quantity FROM inventory WHERE product_id = $1", ((-1, ("product_id",)),),
         (0,)),
    ))
    summary = check(demo.get_user_summary.source, MODULES).ahead
    assert summary == (1, (
        ("SELECT * FROM users WHERE id = $1", ((0, ()),), (0,)),
        ("SELECT COUNT(*) FROM messages WHERE user_id = $1", ((0, ()),), (0, "count")),
    ))


@pytest.mark.parametrize(("source", "expected"), [
    # a name an earlier statement assigned, as it is or subscripted; a parameter rebound
    ('''
     def f(a):
         row = query("SELECT $1 AS x", a)[0]
         a = query("SELECT $1", row)[0]["y"]
         return query("SELECT $1, $2", a, row["x"])
     ''', [("SELECT $1 AS x", ((0, ()),), (0,)),
           ("SELECT $1", ((-1, ()),), (0, "y")),
           ("SELECT $1, $2", ((-2, ()), (-1, ("x",))), ())]),
    # the chain stops after a statement whose value is not the rows and literal subscripts
    ('''
     def f(a):
         n = query("SELECT $1", a).rowcount
         return query("SELECT $1", n)
     ''', [("SELECT $1", ((0, ()),), ())]),
    ('''
     def f(a):
         x = query("SELECT $1", a)[a]
         return query("SELECT $1", x)
     ''', [("SELECT $1", ((0, ()),), ())]),
    ('''
     def f(a):
         x = query("SELECT $1", a)[-1]
         return query("SELECT $1", x)
     ''', [("SELECT $1", ((0, ()),), ())]),
    # ... after one that assigns more than one plain name, and after a return or a for
    ('''
     def f(a):
         x = y = query("SELECT $1", a)[0]
         return query("SELECT $1", a)
     ''', [("SELECT $1", ((0, ()),), (0,))]),
    ('''
     def f(a):
         x, = query("SELECT $1", a)
         return query("SELECT $1", a)
     ''', [("SELECT $1", ((0, ()),), ())]),
    ('''
     def f(a):
         for r in query("SELECT $1", a):
             pass
         return query("SELECT 2")
     ''', [("SELECT $1", ((0, ()),), ())]),
    # ... at a statement that is anything else, or whose argument is computed
    ('''
     def f(a):
         x = query("SELECT $1", a)[0]
         if not x:
             return None
         return query("SELECT $1", x["v"])
     ''', [("SELECT $1", ((0, ()),), (0,))]),
    ('''
     def f(a):
         x = query("SELECT $1", a)[0]
         return query("SELECT $1", x["v"] + 1)
     ''', [("SELECT $1", ((0, ()),), (0,))]),
    ('''
     def f(a):
         x = query("SELECT $1", a)[0]
         return query("SELECT $1", x[a])
     ''', [("SELECT $1", ((0, ()),), (0,))]),
    ('''
     def f(a):
         x = query("SELECT $1", a)[0]
         query("UPDATE t SET v = $1", x["v"])
         return 1
     ''', [("SELECT $1", ((0, ()),), (0,))]),
])
def test_the_chain_follows_what_the_backend_can_evaluate(source: str, expected: object) -> None:
    assert chain(source) == expected


def test_the_chain_is_bounded() -> None:
    body = "".join(f"    x{i} = query(\"SELECT $1\", a)[0]\n" for i in range(20))
    steps = chain("def f(a):\n" + body + "    return 1\n")
    assert steps is not None and len(steps) == MAX_AHEAD


def test_the_stored_chain_reads_back_and_anything_else_is_ignored() -> None:
    """``wormhole_functions.ahead`` holds the chain as JSON (``host._ahead_text``); the backend
    reads it back (``host._ahead``) and ignores a text that is not a well-formed chain: an
    argument from a parameter the call does not have, or from a step not run yet."""
    from wormhole import demo
    from wormhole.runtime import host

    for fn in (demo.process_order, demo.get_user_summary):
        ahead = check(fn.source, MODULES).ahead
        assert ahead is not None
        assert host._ahead(host._ahead_text(ahead)) == ahead
    assert host._ahead('[1,[["SELECT $1",[[0,[]]],[]]]]') == (1, (("SELECT $1", ((0, ()),), ()),))
    for text in [None, 3, "", "[", "{}", "[1, []]", "[1, 2]", '["1", [["S", [], []]]]',
                 '[1,[["SELECT $1",[[1,[]]],[]]]]',       # parameter 1 of 1
                 '[1,[["SELECT $1",[[-1,[]]],[]]]]',      # step 0 reads its own value
                 '[1,[["S",[],[]],["T",[[-2,[]]],[]]]]',  # step 1 reads step 1
                 '[1,[["S",[],[1.5]]]]', '[1,[["S",[[0,[null]]],[]]]]', '[1,[[1,[],[]]]]',
                 '[1,[["S",[],[]]' + ',["S",[],[]]' * MAX_AHEAD + ']]']:
        assert host._ahead(text) is None, text
