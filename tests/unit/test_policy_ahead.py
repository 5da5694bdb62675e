"""Which statements a function starts with, whatever it is given (``policy.ahead_statements``).

The confined worker's backend runs them, with the call's arguments, before the worker asks
(``sandbox._Ahead``): the first while the worker wakes up, each next one after answering the
one before. So the analysis may name a statement only when every call that binds its arguments
runs exactly these statements, in order, before anything else: nothing before or between them
may fail, branch or have an effect that the backend cannot evaluate itself (literal subscripts
of the rows, and the tests of ``if`` statements made of comparisons of those, which the backend
evaluates to know the function skips their bodies). The cases below are the ones it accepts and, side by side, the near misses it must
refuse; ``check`` stores the result in ``Checked.ahead`` for ``wormhole_install`` to keep with
the checked code.
"""

from __future__ import annotations

import textwrap

import pytest

from wormhole.runtime.policy import (
    CATALOGUE,
    MAX_AHEAD,
    MAX_AHEAD_TEST_DEPTH,
    MAX_AHEAD_TEST_NODES,
    MAX_AHEAD_VALUE_DEPTH,
    MAX_AHEAD_VALUE_NODES,
    check,
)

MODULES: dict[str, frozenset[str] | None] = {name: None for name in CATALOGUE}


def S(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def first(source: str) -> tuple[str, int, tuple[int, ...]] | None:
    """The first statement as (sql, parameters, indexes of the parameters it passes)."""
    ahead = check(S(source), MODULES).ahead
    if ahead is None:
        return None
    count, steps = ahead
    sql, refs, _, line, tests = steps[0]
    assert line == 0 and tests == ()
    assert all(source >= 0 and path == () for source, path in refs), refs
    return sql, count, tuple(source for source, _ in refs)


def chain(source: str) -> list[object] | None:
    ahead = check(S(source), MODULES).ahead
    return None if ahead is None else list(ahead[1])


def st(sql: str, refs: tuple[object, ...], keys: tuple[object, ...] = (), line: int = 0,
       tests: tuple[object, ...] = ()) -> tuple[object, ...]:
    """A step: a statement the worker waits for (``line`` 0) or one whose result the function
    discards (its line), after ``tests`` (the ``if`` statements it passes)."""
    return (sql, refs, keys, line, tests)


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
    # an if with an else (or elif), or whose test calls, computes or is not the chain's
    '''
    def f(a):
        if a:
            pass
        else:
            pass
        return query("SELECT $1", a)
    ''',
    '''
    def f(a):
        if len(a) > 1:
            pass
        return query("SELECT $1", a)
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
        st("SELECT * FROM orders WHERE id = $1", ((0, ()),), (0,)),
        st("SELECT quantity FROM inventory WHERE product_id = $1", ((-1, ("product_id",)),),
           (0,)),
        # past `if inventory['quantity'] < order['quantity']: raise ...`, both writes, whose
        # results the function discards (the worker sends them without waiting)
        st("UPDATE inventory SET quantity = quantity - $1 WHERE product_id = $2",
           ((-1, ("quantity",)), (-1, ("product_id",))), (), 15,
           (("cmp", ("ref", -2, ("quantity",)), (("<", ("ref", -1, ("quantity",))),)),)),
        st("INSERT INTO transactions (order_id, user_id, amount) VALUES ($1, $2, $3)",
           ((0, ()), (1, ()), (-1, ("total",))), (), 22),
    ))
    assert demo.process_order.source.splitlines()[14].strip() == "query("
    assert demo.process_order.source.splitlines()[21].strip() == "query("
    summary = check(demo.get_user_summary.source, MODULES).ahead
    assert summary == (1, (
        st("SELECT * FROM users WHERE id = $1", ((0, ()),), (0,)),
        st("SELECT COUNT(*) FROM messages WHERE user_id = $1", ((0, ()),), (0, "count")),
    ))


@pytest.mark.parametrize(("source", "expected"), [
    # a name an earlier statement assigned, as it is or subscripted; a parameter rebound
    ('''
     def f(a):
         row = query("SELECT $1 AS x", a)[0]
         a = query("SELECT $1", row)[0]["y"]
         return query("SELECT $1, $2", a, row["x"])
     ''', [st("SELECT $1 AS x", ((0, ()),), (0,)),
           st("SELECT $1", ((-1, ()),), (0, "y")),
           st("SELECT $1, $2", ((-2, ()), (-1, ("x",))), ())]),
    # the chain stops after a statement whose value is not the rows and literal subscripts
    ('''
     def f(a):
         n = query("SELECT $1", a).rowcount
         return query("SELECT $1", n)
     ''', [st("SELECT $1", ((0, ()),), ())]),
    ('''
     def f(a):
         x = query("SELECT $1", a)[a]
         return query("SELECT $1", x)
     ''', [st("SELECT $1", ((0, ()),), ())]),
    ('''
     def f(a):
         x = query("SELECT $1", a)[-1]
         return query("SELECT $1", x)
     ''', [st("SELECT $1", ((0, ()),), ())]),
    # ... after one that assigns more than one plain name, and after a return or a for
    ('''
     def f(a):
         x = y = query("SELECT $1", a)[0]
         return query("SELECT $1", a)
     ''', [st("SELECT $1", ((0, ()),), (0,))]),
    ('''
     def f(a):
         x, = query("SELECT $1", a)
         return query("SELECT $1", a)
     ''', [st("SELECT $1", ((0, ()),), ())]),
    ('''
     def f(a):
         for r in query("SELECT $1", a):
             pass
         return query("SELECT 2")
     ''', [st("SELECT $1", ((0, ()),), ())]),
    # ... at a statement that is anything else, or whose argument is computed
    ('''
     def f(a):
         x = query("SELECT $1", a)[0]
         return query("SELECT $1", x["v"] + 1)
     ''', [st("SELECT $1", ((0, ()),), (0,))]),
    ('''
     def f(a):
         x = query("SELECT $1", a)[0]
         return query("SELECT $1", x[a])
     ''', [st("SELECT $1", ((0, ()),), (0,))]),
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
    argument from a parameter the call does not have, or from a step not run yet, a test of
    another shape than ``policy._ahead_test`` makes, or over its limits."""
    from wormhole import demo
    from wormhole.runtime import host

    for fn in (demo.process_order, demo.get_user_summary):
        ahead = check(fn.source, MODULES).ahead
        assert ahead is not None
        assert host._ahead(host._ahead_text(ahead)) == ahead
    assert host._ahead('[1,[["SELECT $1",[[0,[]]],[],0,[]]]]') == (
        1, (st("SELECT $1", ((0, ()),)),))
    test = '["cmp",["ref",0,["k"]],[["<",["const",1.5]],["is not",["const",null]]]]'
    assert host._ahead('[1,[["U",[],[],7,[["not",%s]]]]]' % test) == (1, (st(
        "U", (), (), 7, (("not", ("cmp", ("ref", 0, ("k",)),
                                  (("<", ("const", 1.5)), ("is not", ("const", None))))),)),))
    deep = '["const",1]'
    for _ in range(MAX_AHEAD_TEST_DEPTH):
        deep = '["not",%s]' % deep
    wide = '["and",[%s]]' % ",".join(['["const",1]'] * MAX_AHEAD_TEST_NODES)
    for text in [None, 3, "", "[", "{}", "[1, []]", "[1, 2]", '["1", [["S", [], [], 0, []]]]',
                 '[1,[["SELECT $1",[[0,[]]],[]]]]',            # the fifth session's shape
                 '[1,[["SELECT $1",[[1,[]]],[],0,[]]]]',       # parameter 1 of 1
                 '[1,[["SELECT $1",[[-1,[]]],[],0,[]]]]',      # step 0 reads its own value
                 '[1,[["S",[],[],0,[]],["T",[[-2,[]]],[],0,[]]]]',  # step 1 reads step 1
                 '[1,[["S",[],[1.5],0,[]]]]', '[1,[["S",[[0,[null]]],[],0,[]]]]',
                 '[1,[[1,[],[],0,[]]]]', '[1,[["S",[],[],-1,[]]]]', '[1,[["S",[],[],2147483648,[]]]]',
                 '[1,[["S",[],[],true,[]]]]', '[1,[["S",[],[],0,{}]]]',
                 '[1,[["S",[],[],0,[]]' + ',["S",[],[],0,[]]' * MAX_AHEAD + ']]',
                 # tests: unknown kinds and operators, operands that are tests, identity with
                 # anything but None/True/False, reads of steps not run, values JSON can hold
                 # but a test cannot, too deep, too many nodes
                 '[1,[["S",[],[],0,[["call",["ref",0,[]]]]]]]',
                 '[1,[["S",[],[],0,[["cmp",["ref",0,[]],[["<<",["const",1]]]]]]]]',
                 '[1,[["S",[],[],0,[["cmp",["not",["ref",0,[]]],[["<",["const",1]]]]]]]]',
                 '[1,[["S",[],[],0,[["cmp",["ref",0,[]],[]]]]]]',
                 '[1,[["S",[],[],0,[["cmp",["ref",0,[]],[["is",["const",1]]]]]]]]',
                 '[1,[["S",[],[],0,[["cmp",["ref",0,[]],[["is",["ref",0,[]]]]]]]]]',
                 '[1,[["S",[],[],0,[["ref",-1,[]]]]]]',
                 '[1,[["S",[],[],0,[["ref",1,[]]]]]]',
                 '[1,[["S",[],[],0,[["const",NaN]]]]]',
                 '[1,[["S",[],[],0,[["const",Infinity]]]]]',
                 '[1,[["S",[],[],0,[["const",[1]]]]]]',
                 '[1,[["S",[],[],0,[["const",{"a":1}]]]]]',
                 '[1,[["S",[],[],0,[["const",99999999999999999999]]]]]',
                 '[1,[["S",[],[],0,[["and",[]]]]]]',
                 '[1,[["S",[],[],0,[%s]]]]' % deep,
                 '[1,[["S",[],[],0,[%s]]]]' % wide,
                 '[1,[["S",[],[],0,[' + "[" * 100000 + "]" * 100000 + ']]]]']:
        assert host._ahead(text) is None, text


def test_discarded_statements_join_the_chain() -> None:
    """A ``query(...)`` statement whose result the function discards binds nothing, so the
    chain goes on after it. It keeps its line: the worker sends it without waiting
    (``nowait``), with that line; where it cannot (the function's name is used: recursion),
    it waits for the answer like any other (line 0)."""
    assert chain('''
        def f(a):
            query("UPDATE t SET x = $1", a)
            x = query("SELECT $1", a)[0]
            query("DELETE FROM t WHERE x = $1", x["v"])
            return query("SELECT 2")
        ''') == [st("UPDATE t SET x = $1", ((0, ()),), (), 2),
                   st("SELECT $1", ((0, ()),), (0,)),
                   st("DELETE FROM t WHERE x = $1", ((-2, ("v",)),), (), 4),
                   st("SELECT 2", ())]
    assert chain('''
        def f(a):
            query("UPDATE t SET x = $1", a)
            return f
        ''') == [st("UPDATE t SET x = $1", ((0, ()),))]
    # only the call itself: a subscript or method of a discarded result waits for it
    assert chain('''
        def f(a):
            query("SELECT $1", a)[0]
            return 1
        ''') is None
    assert chain('''
        def f(a):
            len(query("SELECT $1", a))
            return 1
        ''') is None


@pytest.mark.parametrize(("test", "expected"), [
    ('x["q"] < a', ("cmp", ("ref", -1, ("q",)), (("<", ("ref", 0, ())),))),
    ("not x", ("not", ("ref", -1, ()))),
    ("x", ("ref", -1, ())),
    ('0 <= x["q"] < 10 != a', ("cmp", ("const", 0), (("<=", ("ref", -1, ("q",))),
                                                     ("<", ("const", 10)),
                                                     ("!=", ("ref", 0, ()))))),
    ('x is None or a is not True and x["s"] in "abc"',
     ("or", (("cmp", ("ref", -1, ()), (("is", ("const", None)),)),
             ("and", (("cmp", ("ref", 0, ()), (("is not", ("const", True)),)),
                      ("cmp", ("ref", -1, ("s",)), (("in", ("const", "abc")),))))))),
    ('a not in x and -1.5 > x[0] >= -3 == False',
     ("and", (("cmp", ("ref", 0, ()), (("not in", ("ref", -1, ())),)),
              ("cmp", ("const", -1.5), ((">", ("ref", -1, (0,))), (">=", ("const", -3)),
                                        ("==", ("const", False))))))),
])
def test_the_chain_goes_past_an_if_whose_test_the_backend_evaluates(
        test: str, expected: object) -> None:
    """The backend evaluates the test on the same values (``sandbox._truth``) and goes on only
    where it is false: the function then skips the body, whatever it holds."""
    steps = chain(f'''
        def f(a):
            x = query("SELECT $1", a)[0]
            if {test}:
                query("INSERT INTO log VALUES ($1)", a)
                raise ValueError("no")
            return query("SELECT $1", x["v"])
        ''')
    assert steps == [st("SELECT $1", ((0, ()),), (0,)),
                     st("SELECT $1", ((-1, ("v",)),), (), 0, (expected,))]


@pytest.mark.parametrize("test", [
    "f(x)", "x.y", "x + 1 > 2", "x[a] > 1", "x is 1", "x is a", "a is not x['k']",
    "x < b", "(x or a) < 1", "x < (1, 2)", "x < [1]", "x == b'1'", "x < 1e999",
    "x == 2 ** 64", "-True < x", "lambda: x", "(y := x)", "x if a else a", "x < 'a' * 2",
    "query('SELECT 1')", "not " * 9 + "x",
    " and ".join(["x"] * 40),
    "x == '" + "a" * 1025 + "'",
])
def test_an_if_whose_test_the_backend_cannot_evaluate_ends_the_chain(test: str) -> None:
    """Calls, attributes, arithmetic, computed subscripts, identity with anything but None,
    True and False (two equal values are not one object in both processes), names the chain
    does not know, literals that are not plain scalars, and tests over the size limits."""
    steps = chain(f'''
        def f(a):
            x = query("SELECT $1", a)[0]
            if {test}:
                pass
            return query("SELECT 2")
        ''')
    assert steps == [st("SELECT $1", ((0, ()),), (0,))]


def test_an_if_with_else_or_at_the_end_ends_the_chain() -> None:
    for tail in ("if a:\n        pass\n    else:\n        pass\n",
                 "if a:\n        pass\n    elif x:\n        pass\n",
                 "if a:\n        pass\n"):
        steps = chain('def f(a):\n    x = query("SELECT $1", a)[0]\n    ' + tail
                      + '    return 1\n')
        assert steps == [st("SELECT $1", ((0, ()),), (0,))], tail
    # tests gather before the statement they lead to
    assert chain('''
        def f(a):
            if a:
                return 1
            if not a:
                return 2
            return query("SELECT $1", a)
        ''') == [st("SELECT $1", ((0, ()),), (), 0, (("ref", 0, ()), ("not", ("ref", 0, ()))))]


@pytest.mark.parametrize("source", [
    '''
    def f(a):
        query("UPDATE t SET x = $1", a)
        x = query("SELECT $1", a)[0]
        if x["n"] > 1:
            query("DELETE FROM t")
        query("INSERT INTO t VALUES ($1)", x["n"])
        return x
    ''',
    '''
    def f(a):
        query("UPDATE t SET x = $1", a)
        return f
    ''',
    '''
    def f(a, b):
        """Doc."""
        query("SELECT 1")
        query("SELECT $1, $2", b, a)
        if not a:
            return None
        query("SELECT 3")
    ''',
])
def test_the_chains_discarded_statements_are_those_the_worker_sends_without_waiting(
        source: str) -> None:
    """A step with a line is answered by the worker's ``nowait``, a step without one by its
    ``query``: the chain must agree with the rewrite (``_defer_discarded_queries``) that decides
    which the worker sends, or every call would fail (a discarded statement run ahead that the
    worker does not send fails the call)."""
    import ast

    from wormhole.runtime.policy import _defer_discarded_queries

    steps = chain(source) or []
    tree = ast.parse(S(source))
    fn = tree.body[0]
    assert isinstance(fn, ast.FunctionDef)
    _defer_discarded_queries(tree, fn)
    deferred = {node.lineno for node in ast.walk(tree)
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id == "_wh_defer"}
    lines = {step[3] for step in steps if step[3]}  # type: ignore[index]
    assert lines <= deferred
    plain = S(source).splitlines()
    for step in steps:
        if not step[3]:  # type: ignore[index]
            # a step the worker waits for is not a statement it defers
            assert not any(step[0] in plain[line - 1] for line in deferred)  # type: ignore[index]
    assert steps, source


def result(source: str) -> object:
    return check(S(source), MODULES).result


@pytest.mark.parametrize(("source", "expected"), [
    # the brief's functions: a dict of literals, parameters and the chain's values
    ('''
     def f(user_id):
         user = query("SELECT * FROM users WHERE id = $1", user_id)[0]
         n = query("SELECT count(*) FROM messages WHERE user_id = $1", user_id)[0]["count"]
         return {"username": user["username"], "message_count": n}
     ''', ((), ("dict", (("username", ("ref", -1, ("username",))),
                         ("message_count", ("ref", -2, ())))))),
    # the last statement's own value; falling off the end; tests after the last statement
    ('''
     def f(a):
         return query("SELECT $1", a)[0]
     ''', ((), ("step",))),
    ('''
     def f(a):
         query("UPDATE t SET x = $1", a)
     ''', ((), ("const", None))),
    ('''
     def f(a):
         x = query("SELECT $1", a)
         if not x:
             raise LookupError(a)
         return [x, (a, -1), {1: None, "k": x[0]}]
     ''', ((("not", ("ref", -1, ())),),
           ("list", (("ref", -1, ()), ("tuple", (("ref", 0, ()), ("const", -1))),
                     ("dict", ((1, ("const", None)), ("k", ("ref", -1, (0,))))))))),
    ('''
     def f(a):
         """Doc."""
         query("UPDATE t SET x = $1", a)
         return
     ''', ((), ("const", None))),
])
def test_a_function_that_is_its_chain_has_a_result(source: str, expected: object) -> None:
    """The backend can then finish the call without the worker (``sandbox._complete``)."""
    assert result(source) == expected


@pytest.mark.parametrize("source", [
    # something after the chain that is not a return of its values
    'def f(a):\n    x = query("SELECT $1", a)[0]\n    print(x)\n    return x\n',
    'def f(a):\n    x = query("SELECT $1", a)[0]\n    y = x\n    return y\n',
    'def f(a):\n    x = query("SELECT $1", a)[0]\n    return x["n"] + 1\n',
    'def f(a):\n    x = query("SELECT $1", a)[0]\n    return str(x)\n',
    'def f(a):\n    x = query("SELECT $1", a)[0]\n    return {**x}\n',
    'def f(a):\n    x = query("SELECT $1", a)[0]\n    return [*x]\n',
    'def f(a):\n    x = query("SELECT $1", a)[0]\n    return {x["k"]: 1}\n',
    'def f(a):\n    x = query("SELECT $1", a)[0]\n    return x.get("k")\n',
    'def f(a):\n    x = query("SELECT $1", a)[0]\n    return {"a": 1, "b": [[[[[[[[x]]]]]]]]}\n',
    'def f(a):\n    x = query("SELECT $1", a)[0]\n    return [' + ", ".join(["x"] * 70) + ']\n',
    # a statement whose value is more than its rows and literal subscripts, or a loop
    'def f(a):\n    return query("SELECT $1", a).rowcount\n',
    'def f(a):\n    return query("SELECT $1", a)[0].get("k")\n',
    'def f(a):\n    for r in query("SELECT $1", a):\n        return r\n',
    # an if that is not a test the backend evaluates, or has an else
    'def f(a):\n    x = query("SELECT $1", a)[0]\n    if len(x):\n        pass\n    return x\n',
    'def f(a):\n    x = query("SELECT $1", a)[0]\n    if x:\n        pass\n    else:\n'
    '        return 1\n    return x\n',
    # the chain's limit
    "def f(a):\n" + "".join(f'    x{i} = query("SELECT $1", a)[0]\n' for i in range(9))
    + "    return x0\n",
    # no statement at all
    "def f(a):\n    return a\n",
])
def test_anything_else_has_none(source: str) -> None:
    assert check(source, MODULES).result is None


def test_the_result_is_kept_with_the_chain_and_read_back() -> None:
    from wormhole import demo
    from wormhole.runtime import host

    for fn in (demo.process_order, demo.get_user_summary):
        checked = check(fn.source, MODULES)
        assert checked.result is not None
        text = host._ahead_text(checked.ahead, checked.result)  # type: ignore[arg-type]
        assert host._ahead_parts(text) == (checked.ahead, checked.result)
        assert host._ahead(text) == checked.ahead
    chain = '[1,[["S",[[0,[]]],[0],0,[]]]'
    assert host._ahead_parts(chain + "]") == ((1, (st("S", ((0, ()),), (0,)),)), None)
    assert host._ahead_parts(chain + ',[[],["step"]]]')[1] == ((), ("step",))
    assert host._ahead_parts(chain + ',[[],["dict",[[1,["ref",-1,["k"]]]]]]]')[1] == (
        (), ("dict", ((1, ("ref", -1, ("k",))),)))
    deep = '["const",1]'
    for _ in range(MAX_AHEAD_VALUE_DEPTH):
        deep = '["list",[%s]]' % deep
    for tail in [',[]', ',[[]]', ',[[],["step"],1]', ',[[],["call"]]', ',[[],["ref",-2,[]]]',
                 ',[[],["ref",1,[]]]', ',[[],["list",[["step"]]]]',
                 ',[[],["dict",[[[1],["const",1]]]]]', ',[[],["dict",[["k"]]]]',
                 ',[[],["const",NaN]]', ',[[["ref",-2,[]]],["const",1]]', ',[[],%s]' % deep,
                 ',[[],["list",[%s]]]' % ",".join(['["const",1]'] * MAX_AHEAD_VALUE_NODES),
                 ',[[],["step"]],[[],["step"]]']:
        assert host._ahead_parts(chain + tail + "]") == (None, None), tail
    # ("step",) only for a last step the worker waits for, with no test after it
    assert host._ahead_parts('[1,[["S",[],[],3,[]]],[[],["step"]]]') == (None, None)
    assert host._ahead_parts(chain + ',[[["const",true]],["step"]]]') == (None, None)
