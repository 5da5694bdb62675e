"""Run-time guards: module views, str.format, print capture, ticks, size and attribute guards."""

from __future__ import annotations

import builtins
import decimal
import textwrap
import time
from collections.abc import Callable
from typing import Any

import pytest

from wormhole.runtime import namespace, policy
from wormhole.runtime.errors import Interrupted, LimitExceeded, PolicyViolation
from wormhole.runtime.namespace import EXCLUDED_BUILTINS, ModuleView, build_globals
from wormhole.runtime.policy import CATALOGUE, check
from wormhole.runtime.rows import Rows

MODULES: dict[str, frozenset[str] | None] = {name: None for name in CATALOGUE}


class Ticker:
    """A tick hook that counts, and raises Interrupted (and keeps raising) after ``limit``."""

    def __init__(self, limit: int | None = None) -> None:
        self.count = 0
        self.limit = limit

    def __call__(self) -> None:
        self.count += 1
        if self.limit is not None and self.count > self.limit:
            raise Interrupted(message="cancelled")


def make(source: str, *, modules: dict[str, frozenset[str] | None] | None = None,
         tick: Callable[[], None] | None = None, printed: list[str] | None = None
         ) -> Callable[..., Any]:
    mods = MODULES if modules is None else modules
    checked = check(textwrap.dedent(source).lstrip("\n"), mods)
    glb = build_globals(modules=mods, query=lambda sql, *a: Rows([]),
                        print_fn=(printed if printed is not None else []).append,
                        tick=tick or (lambda: None))
    exec(checked.code, glb)
    return glb[checked.name]  # type: ignore[return-value]


def glb(modules: dict[str, frozenset[str] | None] | None = None) -> dict[str, Any]:
    return build_globals(modules=MODULES if modules is None else modules,
                         query=lambda sql, *a: Rows([]), print_fn=lambda s: None,
                         tick=lambda: None)


def imp(name: str, modules: dict[str, frozenset[str] | None] | None = None,
        fromlist: tuple[str, ...] = ()) -> Any:
    return glb(modules)["__builtins__"]["__import__"](name, None, None, fromlist, 0)


# ---- module views


@pytest.mark.parametrize("module", sorted(CATALOGUE))
def test_views_expose_only_allowed_names_and_never_modules(module: str) -> None:
    import types

    view = imp(module)
    assert type(view) is ModuleView
    assert set(dir(view)) <= CATALOGUE[module]
    for name in dir(view):
        assert not isinstance(getattr(view, name), types.ModuleType)


@pytest.mark.parametrize(("module", "name"), [
    ("datetime", "sys"), ("json", "codecs"), ("re", "enum"), ("statistics", "sys"),
    ("random", "_os"), ("fractions", "sys"), ("calendar", "sys"), ("uuid", "os"),
    ("string", "Formatter"), ("json", "tool"), ("json", "decoder"), ("datetime",
                                                                     "datetime_CAPI"),
])
def test_reexport_hatches_are_absent(module: str, name: str) -> None:
    view = imp(module)
    with pytest.raises(AttributeError) as info:
        getattr(view, name)
    # CVE-2024-47532: the error must not hand out the real module
    assert getattr(info.value, "obj", None) is view
    assert "available to wormhole functions" in str(info.value)


def test_dba_listing_a_module_valued_name_still_gets_no_module() -> None:
    mods: dict[str, frozenset[str] | None] = {"datetime": frozenset({"date", "sys"})}
    view = imp("datetime", mods)
    assert dir(view) == ["date"]
    with pytest.raises(AttributeError, match="it is a module"):
        getattr(view, "sys")  # noqa: B009 - the attribute access is the test


def test_views_are_read_only_and_have_no_dict() -> None:
    view = imp("math")
    with pytest.raises(AttributeError):
        view.sqrt = print
    with pytest.raises(AttributeError):
        del view.sqrt
    assert not hasattr(view, "__dict__")
    assert repr(view) == "<module 'math' (wormhole view)>"


def test_view_assignment_from_user_code_is_refused() -> None:
    fn = make('''
        def f():
            import math
            math.pi = 3
    ''')
    with pytest.raises(PolicyViolation):
        fn()


def test_module_containers_are_frozen_copies() -> None:
    view = imp("hashlib")
    assert type(view.algorithms_available) is frozenset


def test_guarded_import_refuses_what_the_policy_refuses() -> None:
    with pytest.raises(ImportError, match="not allowed"):
        imp("os")
    with pytest.raises(ImportError):
        imp("datetime", fromlist=("sys",))
    with pytest.raises(ImportError):
        glb()["__builtins__"]["__import__"]("json", None, None, (), 1)
    with pytest.raises(ImportError, match="list the public names"):
        imp("mystery", {"mystery": None})


def test_random_state_is_per_call() -> None:
    source = '''
        def f(seed):
            import random
            if seed is not None:
                random.seed(seed)
            return random.random()
    '''
    a = make(source)(None)
    b = make(source)(7)
    c = make(source)(7)
    assert b == c != a


# ---- str.format traversal


@pytest.mark.parametrize("expr", [
    '"{0.__class__}".format(1)',
    '"{0.real}".format(1)',
    '"{0[0]}".format([1])',
    '"{x.__globals__}".format(x=f)',
    '"{0:{1.__class__}}".format(1, 2)',
    'str.format("{0.__class__}", 1)',
    'fmt.format(1)',
    'list(map(str.format, ["{0.__class__}"], [1]))',
])
def test_format_traversal_fails(expr: str) -> None:
    fn = make(f'''
        def f(fmt):
            return {expr}
    ''')
    with pytest.raises(PolicyViolation, match="format field"):
        fn("{0.__class__.__base__}")


def test_format_still_works_for_plain_fields() -> None:
    fn = make('''
        def f():
            return "{}-{1}-{name:>4}".format("a", "b", name="c") if False else \
                "{0}-{1}-{name:>4}".format("a", "b", name="c")
    ''')
    assert fn() == "a-b-   c"


def test_attribute_error_obj_is_refused() -> None:
    fn = make('''
        def f():
            try:
                (1).nothing
            except AttributeError as e:
                return e.obj
    ''')
    with pytest.raises(PolicyViolation):
        fn()


def test_obj_attribute_of_own_objects_still_works() -> None:
    fn = make('''
        def f():
            class Box:
                def __init__(self):
                    self.obj = 5
            return Box().obj
    ''')
    assert fn() == 5


# ---- print capture


def test_print_capture_and_file_refused() -> None:
    printed: list[str] = []
    fn = make('''
        def f():
            print("a", 1, None)
            print("x", "y", sep="", end="!")
            print(file=None)
    ''', printed=printed)
    fn()
    assert printed == ["a 1 None\n", "xy!", "\n"]
    fn2 = make('''
        def f(x):
            print("leak", file=x)
    ''')
    with pytest.raises(PolicyViolation):
        fn2(object())


# ---- ticks


def test_tick_runs_in_functions_loops_comprehensions_and_lambdas() -> None:
    ticker = Ticker()
    fn = make('''
        def f(n):
            total = 0
            for i in range(n):
                total += i
            while total > 0:
                total -= 100
            squares = [i for i in range(n)]
            g = lambda x: x
            return sum(g(x) for x in squares)
    ''', tick=ticker)
    fn(50)
    # entry + 50 for + >=12 while + 50 list comp + 50 genexp + 50 lambda calls
    assert ticker.count >= 1 + 50 + 12 + 50 + 50 + 50


@pytest.mark.parametrize("body", [
    "while True:\n        pass",
    "for i in range(10**12):\n        pass",
    "return sum(range(10**12))",
    "return any(iter(int, 1))",
    "import itertools\n    return sum(itertools.count())",
    "import itertools\n    return max(itertools.cycle([1]))",
    "import itertools\n    return list(itertools.repeat(1))",
    "return [x for x in iter(int, 1)]",
    "def r():\n        return r()\n    return r()",
])
def test_interrupt_stops_loops(body: str) -> None:
    fn = make(f"def f():\n    {body}\n", tick=Ticker(limit=1000))
    started = time.monotonic()
    with pytest.raises((Interrupted, RecursionError)):
        fn()
    assert time.monotonic() - started < 2


def test_interrupt_is_not_swallowed_by_except_exception() -> None:
    ticker = Ticker(limit=10)
    fn = make('''
        def f():
            n = 0
            while True:
                try:
                    while True:
                        n += 1
                except Exception:
                    pass
    ''', tick=ticker)
    with pytest.raises(Interrupted):
        fn()


# ---- size guards


@pytest.mark.parametrize("expr", [
    "10 ** 10 ** 8",
    "pow(10, 10 ** 9)",
    "'x' * 10 ** 10",
    "[0] * 10 ** 9",
    "10 ** 9 * b'x'",
    "1 << 10 ** 9",
    "(2 ** 4000000) * (2 ** 4000000)",
])
def test_size_guards(expr: str) -> None:
    fn = make(f"def f():\n    return {expr}\n")
    started = time.monotonic()
    with pytest.raises(LimitExceeded):
        fn()
    assert time.monotonic() - started < 1


@pytest.mark.parametrize("body", [
    "x = 'ab'\n    x *= 10 ** 9",
    "x = 10\n    x **= 10 ** 9",
    "x = 1\n    x <<= 10 ** 9",
    "from math import factorial\n    return factorial(10 ** 7)",
    "import math\n    return math.comb(10 ** 7, 5 * 10 ** 6)",
    "import math\n    return math.perm(10 ** 7)",
    "import operator\n    return operator.mul('x', 10 ** 10)",
    "import operator\n    return operator.pow(10, 10 ** 9)",
    "from fractions import Fraction\n    return Fraction(3, 2) ** 10 ** 8",
    "class A:\n        def __init__(self):\n            self.s = 'x'\n"
    "    a = A()\n    a.s *= 10 ** 10",
])
def test_size_guards_in_statements_and_modules(body: str) -> None:
    fn = make(f"def f():\n    {body}\n")
    with pytest.raises(LimitExceeded):
        fn()


def test_normal_arithmetic_is_untouched() -> None:
    fn = make('''
        def f():
            return (2 ** 64, 3 * 4, 2.5 * 2, "ab" * 3, [1] * 2, 1 << 10, (-2) ** 3,
                    2 ** -1, 0 ** 10 ** 9, 1 ** 10 ** 12, (-1) ** 10 ** 9)
    ''')
    assert fn() == (2**64, 12, 5.0, "ababab", [1, 1], 1024, -8, 0.5, 0, 1, 1)


# ---- attribute stores and the class machinery


@pytest.mark.parametrize("body", [
    "from fractions import Fraction\n    Fraction.limit_denominator = None",
    "import json\n    json.dumps.cache = {}",
    "from calendar import month_name\n    month_name.format = '%B'",
    "DatabaseError.sqlstate = 'x'",
    "from fractions import Fraction\n    del Fraction.limit_denominator",
    "from statistics import NormalDist\n    NormalDist.mean = 1",
    "import re\n    re.I.x = 1",
    "from datetime import timezone\n    timezone.utc.x = 1",
    "len.x = 1",
    "x, DatabaseError.hint = 1, 2",
])
def test_shared_objects_cannot_be_changed(body: str) -> None:
    fn = make(f"def f():\n    {body}\n")
    with pytest.raises(PolicyViolation):
        fn()


def test_objects_the_call_created_can_be_changed() -> None:
    fn = make('''
        def f():
            from decimal import Context
            ctx = Context()
            ctx.prec = 5
            class A:
                pass
            a = A()
            a.x, a.y = 1, 2
            A.z = 3
            del a.y
            return ctx.prec, a.x, A.z
    ''')
    assert fn() == (5, 1, 3)


def test_type_is_one_argument_and_never_a_metaclass() -> None:
    fn = make('''
        def f(k):
            t = type
            if k == 1:
                return t(int)
            return t("X", (), {})
    ''')
    with pytest.raises(PolicyViolation):
        fn(1)
    with pytest.raises(PolicyViolation):
        fn(3)


@pytest.mark.parametrize("base", [
    "from collections import OrderedDict as Base",
    "from decimal import Decimal as Base",
    "from fractions import Fraction as Base",
    "Base = type(query)",
])
def test_class_bases_checked_at_run_time(base: str) -> None:
    fn = make(f'''
        def f():
            {base}
            class A(Base):
                pass
    ''')
    with pytest.raises(PolicyViolation):
        fn()


def test_module_exception_bases_are_fine() -> None:
    fn = make('''
        def f():
            import json
            from decimal import InvalidOperation
            class Bad(json.JSONDecodeError):
                pass
            class Worse(InvalidOperation):
                pass
            return issubclass(Worse, ArithmeticError)
    ''')
    assert fn() is True


# ---- per-call freshness and the curated builtins


def test_globals_are_fresh_per_call() -> None:
    a, b = glb(), glb()
    assert a is not b and a["__builtins__"] is not b["__builtins__"]
    for hook in policy.HOOKS:
        assert hook in a
    assert a["__name__"] == "__wormhole__"


def test_decimal_context_is_not_leaked() -> None:
    before = decimal.getcontext().prec
    fn = make('''
        def f():
            from decimal import Decimal, localcontext
            with localcontext() as ctx:
                ctx.prec = 3
                return Decimal(1) / Decimal(3)
    ''')
    assert str(fn()) == "0.333"
    assert decimal.getcontext().prec == before


def test_dangerous_builtins_are_absent() -> None:
    b = glb()["__builtins__"]
    for name in ("eval", "exec", "compile", "open", "getattr", "setattr", "vars", "dir",
                 "globals", "locals", "object", "memoryview", "help", "breakpoint", "input",
                 "BaseException", "SystemExit", "id"):
        assert name not in b, name
    assert b["__import__"] is not builtins.__import__
    assert b["type"] is not type and b["pow"] is not pow


def test_every_builtin_is_provided_or_its_exclusion_documented() -> None:
    provided = namespace.safe_builtin_names()
    undocumented = [n for n in dir(builtins) if n not in provided and n not in EXCLUDED_BUILTINS]
    assert not undocumented, undocumented
    assert not provided & set(EXCLUDED_BUILTINS)


def test_user_code_cannot_reach_builtins_through_functions() -> None:
    # every route needs an underscore or a forbidden name, which the policy refuses
    for source in ("def f():\n    return f.__globals__\n",
                   "def f():\n    return f.__builtins__\n",
                   "def f():\n    return print.__self__\n"):
        with pytest.raises(policy.PolicyError):
            check(source, MODULES)


# ---- one Namespace per whitelist, entered per call


def _enter(ns: namespace.Namespace, source: str, printed: list[str],
           tick: Callable[[], None] = lambda: None) -> tuple[Callable[..., Any], Any]:
    checked = check(textwrap.dedent(source).lstrip("\n"), MODULES)
    g, previous = ns.enter(query=lambda sql, *a: Rows([]), print_fn=printed.append, tick=tick)
    exec(checked.code, g)
    return g[checked.name], previous  # type: ignore[return-value]


def test_every_call_gets_fresh_globals_from_a_shared_namespace() -> None:
    ns = namespace.Namespace(MODULES)
    a, _ = ns.enter(query=lambda sql, *x: Rows([]), print_fn=lambda s: None, tick=lambda: None)
    b, _ = ns.enter(query=lambda sql, *x: Rows([]), print_fn=lambda s: None, tick=lambda: None)
    assert a is not b and a is not ns.template
    a["leak"] = 1
    assert "leak" not in b and "leak" not in ns.template


def test_a_nested_call_has_its_own_print_sink_tick_and_classes() -> None:
    ns = namespace.Namespace(MODULES)
    outer_out: list[str] = []
    inner_out: list[str] = []
    outer_ticks = Ticker()
    inner_ticks = Ticker()
    outer, prev_outer = _enter(ns, """
        def outer():
            class Mine:
                pass
            print("outer")
            return Mine
    """, outer_out, outer_ticks)
    mine = outer()
    inner, prev_inner = _enter(ns, """
        def inner(cls):
            print("inner")
            for i in range(3):
                pass
            cls.x = 1
    """, inner_out, inner_ticks)
    # the inner call may not change a class the outer call defined
    with pytest.raises(PolicyViolation):
        inner(mine)
    assert inner_out == ["inner\n"] and inner_ticks.count > 0
    ns.leave(prev_inner)
    ticks_before = outer_ticks.count
    outer()  # the outer call is current again: its sink and tick
    assert outer_out == ["outer\n", "outer\n"]
    assert inner_out == ["inner\n"] and outer_ticks.count > ticks_before
    ns.leave(prev_outer)
    assert ns.cur is None


def test_a_function_kept_past_its_call_cannot_print_or_define_classes() -> None:
    ns = namespace.Namespace(MODULES)
    f, previous = _enter(ns, """
        def f():
            print("late")
    """, [])
    ns.leave(previous)
    with pytest.raises(PolicyViolation, match="has ended"):
        f()
