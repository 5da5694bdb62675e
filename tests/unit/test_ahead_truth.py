"""The backend's evaluation of an ``if`` test the chain goes past (``sandbox._truth``) against
Python's own.

The backend runs the statements after such an ``if`` only where it finds the test false, so
it must find exactly what the worker's Python finds: the same truth, and an exception wherever
Python raises one (the function then raises, and the chain must stop). Hypothesis builds tests
of the shapes ``policy._ahead_test`` accepts over values of the types parameters and rows
hold, and compares the two.
"""

from __future__ import annotations

import ast
import datetime as dt
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from wormhole.runtime.policy import _ahead_test
from wormhole.runtime.sandbox import _Declined, _holds

#: a, b: the function's parameters; x: what the chain's first statement assigned
NAMES = {"a": 0, "b": 1, "x": -1}

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.integers(), st.floats(),
    st.text(max_size=3), st.decimals(allow_nan=True), st.sampled_from([
        dt.date(2026, 1, 1), dt.datetime(2026, 1, 1, 12),
        dt.datetime(2026, 1, 1, 12, tzinfo=dt.timezone.utc), Decimal("NaN"), float("nan")]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from(["k", "s", 0]), inner, max_size=2)),
    max_leaves=6,
)
operands = st.sampled_from([
    "a", "b", "x", 'x["k"]', "x[0]", 'a["k"]', "a[0]", "b[-1]", "None", "True", "False",
    "0", "-1", "2", "1.5", "-0.0", '"s"', '"abc"', '""',
])
comparisons = st.sampled_from(["<", "<=", ">", ">=", "==", "!=", "in", "not in"])


@st.composite
def compare(draw: Any) -> str:
    parts = [draw(operands)]
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.booleans()) and parts[-1] in ("None", "True", "False", "a", "x"):
            parts.append(draw(st.sampled_from(["is", "is not"])))
            parts.append(draw(st.sampled_from(["None", "True", "False"])))
        else:
            parts.append(draw(comparisons))
            parts.append(draw(operands))
    return " ".join(parts)


tests = st.recursive(
    st.one_of(compare(), operands),
    lambda inner: st.one_of(
        st.builds(lambda t: f"not ({t})", inner),
        st.builds(lambda l, r, op: f"({l}) {op} ({r})", inner, inner,
                  st.sampled_from(["and", "or"]))),
    max_leaves=4,
)


def python(test: str, args: list[Any], x: Any) -> tuple[str, object]:
    try:
        return "ok", bool(eval(test, {}, {"a": args[0], "b": args[1], "x": x}))  # noqa: S307
    except Exception as exc:  # noqa: BLE001 - the outcome compared
        return "raises", type(exc)


def backend(tree: Any, args: list[Any], x: Any) -> tuple[str, object]:
    try:
        return "ok", _holds(tree, args, [x])
    except Exception as exc:  # noqa: BLE001 - the outcome compared
        return "raises", type(exc)


@settings(max_examples=1500, deadline=None)
@given(test=tests, a=values, b=values, x=values)
def test_the_backend_finds_what_python_finds(test: str, a: Any, b: Any, x: Any) -> None:
    tree = _ahead_test(ast.parse(test, mode="eval").body, NAMES)
    if tree is None:  # over the limits: never evaluated by the backend
        return
    found = backend(tree, [a, b], x)
    if found == ("raises", _Declined):  # an operand it does not compare: the worker decides
        return
    assert found == python(test, [a, b], x), test


def test_it_declines_only_what_may_cost_much() -> None:
    """Wide ints, long texts, many-digit decimals, containers but on the right of ``in``, and
    containers of those: declined (the chain stops). Short scalars are compared."""
    x = {"k": 1, "s": "abc", "l": [1, 2, 3]}
    for test, args in [('a == 1', [2 ** 65, 0]), ('a == "x"', ["x" * 5000, 0]),
                       ('a < 1', [Decimal("1" * 100), 0]), ('a == b', [[1], [1]]),
                       ('a in b', [1, [[1]] * 10]), ('a in b', [1, list(range(10_001))]),
                       ('a in b', [1, [2 ** 65]]), ('x["l"] < a', [[1], 0])]:
        tree = _ahead_test(ast.parse(test, mode="eval").body, NAMES)
        assert backend(tree, args, x) == ("raises", _Declined), (test, args)
    for test, args in [('a in b', [1, list(range(10_000))]), ('a in x["l"]', [3, 0]),
                       ('"b" in x["s"]', [0, 0]), ('a == 1', [2 ** 63, 0]),
                       ('x["k"] in b', [0, {1: 2}])]:
        tree = _ahead_test(ast.parse(test, mode="eval").body, NAMES)
        assert backend(tree, args, x) == python(test, args, x), (test, args)


def test_it_compares_under_the_default_decimal_context() -> None:
    """Other code in the backend may change the current context; the worker compares under the
    default one, where a NaN compared with ``<`` raises."""
    import decimal

    tree = _ahead_test(ast.parse("a < 1", mode="eval").body, NAMES)
    with decimal.localcontext() as ctx:
        ctx.traps[decimal.InvalidOperation] = False
        assert backend(tree, [Decimal("NaN"), 0], None) == ("raises",
                                                            decimal.InvalidOperation)


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return [leaf for item in value for leaf in _leaves(item)]
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    return [value]


def test_stopping_where_python_stops() -> None:
    """``and``, ``or`` and chained comparisons evaluate only as far as Python does: what Python
    never reaches cannot raise."""
    for test, args, x, expected in [
        ('x and x["k"] > 1', [0, 0], {}, False),    # {} is false: x["k"] never read
        ('x or x["k"]', [0, 0], {"a": 1}, True),    # a true x: x["k"] never read
        ('a > 1 > x["k"]', [0, 0], {}, False),      # 0 > 1 is false: stops there
        ('not (a < b) and a["k"]', [0, 1], None, False),
    ]:
        tree = _ahead_test(ast.parse(test, mode="eval").body, NAMES)
        assert tree is not None
        assert backend(tree, args, x) == python(test, args, x) == ("ok", expected), test
