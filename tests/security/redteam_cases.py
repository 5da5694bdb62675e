"""The red-team cases of ``test_redteam.py``: attacks from the public record, and near misses.

Each attack is the text of one function, shipped through the real SQL API as the regular role
``app``. Sources may use these placeholders, replaced per run by ``test_redteam.py``:

``@CANARY@``  a file outside the database, readable by every OS user; no case may read it
``@PWNED@``   a path no case may create (escapes try to write it, or to ``touch`` it)
``@PORT@``    a TCP listener on 127.0.0.1 that must never see a connection
``@SECRET@``  the canary file's content (never appears in any answer)

Expectations (``Case.expect``):

``reject``  ``wormhole_install`` fails with SQLSTATE WH002 and a finding of ``rule``; the same
            source smuggled straight into ``wormhole_functions`` by a superuser is refused
            again at run time (``RejectedFunction``, WH002), in the worker or, approved,
            in-process: the policy is checked in every process before a hash first runs.
``fail``    installs (one ``accepted`` audit row), then the call returns an ``err`` payload of
            one of ``errors`` (and ``sqlstate``/``limit``/``message`` when given).
``ok``      near misses: legitimate code that must install and return ``result``.

``modes``: where the case runs. Cases that only make sense in the worker (memory bombs, C-level
loops that no in-process tick can interrupt, interpreter crashers: SECURITY.md "What is not
promised" for in-process execution) say so in ``note``.

Families follow /work/shared/research/security.md: RestrictedPython's advisories, the
pysandbox post-mortem, CTF pyjail techniques, the module re-export paths, interpreter crashers,
resource exhaustion, plus query() abuse (P5) and hostile return values (P9).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field

BOTH = ("worker", "in-process")
WORKER = ("worker",)


@dataclass(frozen=True)
class Case:
    id: str
    family: str
    source: str
    expect: str  # "reject" | "fail" | "ok"
    rule: str | None = None  # reject: a finding rule that must be among the findings
    errors: tuple[str, ...] = ()  # fail: acceptable err payload types
    sqlstate: str | None = None  # fail: the err payload's sqlstate
    limit: str | None = None  # fail: the LimitExceeded limit
    message: str | None = None  # fail: a substring of the err message
    result: object = None  # ok: the decoded result
    modes: tuple[str, ...] = BOTH
    args: str = "[[],{}]"
    note: str = ""
    xfail: str | None = None  # "HOLE: ..." for a hole that is not fixed yet (strict)
    refs: tuple[str, ...] = field(default=())


CASES: list[Case] = []


def _src(text: str) -> str:
    return textwrap.dedent(text).strip("\n") + "\n"


def reject(id: str, family: str, source: str, rule: str, **kw: object) -> None:
    CASES.append(Case(id, family, _src(source), "reject", rule=rule, **kw))  # type: ignore[arg-type]


def fail(id: str, family: str, source: str, *errors: str, **kw: object) -> None:
    CASES.append(Case(id, family, _src(source), "fail", errors=errors, **kw))  # type: ignore[arg-type]


def ok(id: str, family: str, source: str, result: object, **kw: object) -> None:
    CASES.append(Case(id, family, _src(source), "ok", result=result, **kw))  # type: ignore[arg-type]


# What an attacker does once out: read the canary, write a file, run a command, connect.
STEAL = "open('@PWNED@', 'w').write(open('@CANARY@').read())"

# =============================================================================================
# builtins that run code, read files or introspect (pysandbox, RestrictedPython safe_builtins)
F = "builtins"
reject("eval", F, """
    def f():
        return eval("__import__('os').system('touch @PWNED@')")
""", "forbidden-name")
reject("exec", F, """
    def f():
        exec("import os; os.system('touch @PWNED@')")
""", "forbidden-name")
reject("compile", F, """
    def f():
        code = compile("open('@CANARY@').read()", "x", "eval")
        return code
""", "forbidden-name")
reject("open-read", F, """
    def f():
        return open('@CANARY@').read()
""", "forbidden-name")
reject("open-write", F, """
    def f():
        with open('@PWNED@', 'w') as out:
            out.write('pwned')
""", "forbidden-name")
reject("dunder-import", F, """
    def f():
        return __import__('os').system('touch @PWNED@')
""", "underscore-name")
reject("input", F, """
    def f():
        return input()
""", "forbidden-name")
reject("breakpoint", F, """
    def f():
        breakpoint()
""", "forbidden-name")
reject("help", F, """
    def f():
        help('os')
""", "forbidden-name")
reject("license", F, """
    def f():
        return str(license)
""", "forbidden-name")
reject("exit", F, """
    def f():
        exit(0)
""", "forbidden-name")
reject("getattr-dunder", F, """
    def f():
        return getattr((), '__cla' + 'ss__')
""", "forbidden-name")
reject("setattr", F, """
    def f(x):
        setattr(x, '__class__', x)
""", "forbidden-name")
reject("delattr-hasattr", F, """
    def f(x):
        return hasattr(x, '__globals__') or delattr(x, 'y')
""", "forbidden-name")
reject("vars-type", F, """
    def f():
        return vars(type(()))['__subclasses__']
""", "forbidden-name")
reject("dir", F, """
    def f():
        return dir()
""", "forbidden-name")
reject("globals", F, """
    def f():
        return globals()['__builtins__']['open']('@CANARY@').read()
""", "forbidden-name")
reject("locals", F, """
    def f():
        return locals()
""", "forbidden-name")
reject("type-three-args", F, """
    def f():
        T = type('T', (), {'x': 1})
        return T
""", "type-call")
reject("object-root", F, """
    def f():
        return [c for c in object.__subclasses__() if 'wrap' in str(c)]
""", "forbidden-name")
reject("memoryview", F, """
    def f():
        return memoryview(b'x')
""", "forbidden-name")
reject("builtins-module", F, """
    def f():
        import builtins
        return builtins.open('@CANARY@').read()
""", "forbidden-name")
reject("alias-eval", F, """
    def f():
        run = eval
        return run('1')
""", "forbidden-name")
reject("descriptor-builtins", F, """
    def f():
        class C:
            x = property(lambda self: 1)
        return C().x
""", "forbidden-name")
fail("id-builtin-missing", F, """
    def f():
        return id(f)
""", "NameError", note="excluded builtin: not in the curated __builtins__")

# =============================================================================================
# object-graph walks (pyjail classics; RestrictedPython's underscore rule)
F = "object-graph"
reject("subclasses", F, """
    def f():
        for c in ().__class__.__bases__[0].__subclasses__():
            if c.__name__ == '_wrap_close':
                return c.__init__.__globals__['system']('touch @PWNED@')
""", "underscore-attribute")
reject("mro-method", F, """
    def f():
        return ValueError.mro()[-1]
""", "forbidden-attribute")
reject("type-mro", F, """
    def f():
        return type(1).mro()
""", "forbidden-attribute")
reject("lambda-globals", F, """
    def f():
        return (lambda: 0).__globals__['__builtins__']['open']('@CANARY@').read()
""", "underscore-attribute")
reject("query-globals", F, """
    def f():
        return query.__globals__['plpy']
""", "underscore-attribute")
reject("builtins-name", F, """
    def f():
        return __builtins__['open']('@CANARY@').read()
""", "underscore-name")
reject("code-replace", F, """
    def f():
        def g():
            return 1
        g.__code__ = g.__code__.replace(co_names=('open',))
        return g()
""", "underscore-attribute")
reject("reduce-ex", F, """
    def f():
        return (1).__reduce_ex__(2)[0].__globals__
""", "underscore-attribute")
reject("bound-self", F, """
    def f():
        import random
        return random.random.__self__
""", "underscore-attribute")
reject("closure-cells", F, """
    def f():
        return query.__closure__[0].cell_contents
""", "underscore-attribute")
reject("cell-contents", F, """
    def f(c):
        return c.cell_contents
""", "forbidden-attribute")
reject("module-dict", F, """
    def f():
        import json
        return json.__dict__
""", "underscore-attribute")
reject("class-assign", F, """
    def f():
        class A:
            pass
        a = A()
        a.__class__ = int
        return a
""", "underscore-attribute")
reject("init-globals", F, """
    def f():
        class A:
            def __init__(self):
                pass
        return A.__init__.__globals__
""", "underscore-attribute")
reject("func-globals-py2", F, """
    def f():
        return f.func_globals
""", "forbidden-attribute")
reject("super-thisclass", F, """
    def f():
        class A:
            def m(self):
                return super().__thisclass__
        return A().m()
""", "underscore-attribute")
reject("super-with-args", F, """
    def f():
        return super(type, int)
""", "super")
reject("exc-traceback", F, """
    def f():
        try:
            1 / 0
        except ZeroDivisionError as e:
            return e.__traceback__
""", "underscore-attribute")

# =============================================================================================
# frames (CVE-2023-37271 and RestrictedPython 7.3: gi_frame.f_back.f_builtins)
F = "frames"
reject("gi-frame-f-back", F, """
    def f():
        g = (x for x in [1])
        return g.gi_frame.f_back.f_builtins['open']('@CANARY@').read()
""", "forbidden-attribute")
reject("f-back", F, """
    def f(frame):
        return frame.f_back.f_globals
""", "forbidden-attribute")
reject("tb-frame", F, """
    def f():
        class C:
            def __enter__(self):
                return self
            def __exit__(self, t, v, tb):
                self.frame = tb.tb_frame
                return True
        c = C()
        with c:
            1 / 0
        return c.frame.f_back.f_builtins
""", "forbidden-attribute")
reject("tb-next", F, """
    def f(tb):
        return tb.tb_next
""", "forbidden-attribute")
reject("cr-frame", F, """
    def f():
        async def co():
            pass
        return co().cr_frame
""", "async")
reject("ag-frame-prefix", F, """
    def f(g):
        return g.ag_frame
""", "forbidden-attribute")
reject("gi-code-consts", F, """
    def f():
        g = (x for x in [1])
        return g.gi_code.co_consts
""", "forbidden-attribute")
reject("gi-prefix-unknown", F, """
    def f(g):
        return g.gi_anything_new
""", "forbidden-attribute")
reject("f-locals", F, """
    def f(frame):
        return frame.f_locals
""", "forbidden-attribute")
reject("generator-finally", F, """
    def f():
        def g():
            try:
                yield 1
            finally:
                print('runs at garbage collection, outside the call')
        return g()
""", "yield-in-cleanup")
reject("generator-with", F, """
    def f():
        def g():
            import decimal
            with decimal.localcontext() as ctx:
                ctx.prec = 1
                yield 1
        it = g()
        next(it)
        return 1
""", "yield-in-cleanup")
fail("generator-to-serializer", F, """
    def f():
        def g():
            yield 1
        return g()
""", "TypeError", message="cannot be sent", note="a generator returned to the trusted codec")
fail("genexp-to-serializer", F, """
    def f():
        return (x for x in range(3))
""", "TypeError", message="cannot be sent")

# =============================================================================================
# str.format / format_map / string.Formatter (CVE-2023-41039, CVE-2026-76825, Jinja2 CVE-2019-10906)
F = "format"
fail("format-class", F, """
    def f():
        return "{0.__class__.__base__.__subclasses__}".format(1)
""", "PolicyViolation", message="format field")
fail("format-globals", F, """
    def f():
        def g():
            pass
        return "{0.__globals__[__builtins__]}".format(g)
""", "PolicyViolation", message="format field")
fail("format-unbound", F, """
    def f():
        return str.format("{0.__class__}", 1)
""", "PolicyViolation", message="format field")
fail("format-item", F, """
    def f():
        return "{0[open]}".format({'open': 1})
""", "PolicyViolation", message="format field")
fail("format-nested-spec", F, """
    def f():
        return "{0:{1.__class__}}".format(1, 2)
""", "PolicyViolation", message="format field")
fail("format-bound-later", F, """
    def f():
        fmt = "{0.__init__.__globals__}".format
        return fmt(f)
""", "PolicyViolation", message="format field")
fail("format-via-map", F, """
    def f():
        return list(map(str.format, ["{0.__class__}"], [1]))
""", "PolicyViolation", message="format field")
fail("format-keyword-field", F, """
    def f():
        return "{x.__class__}".format(x=1)
""", "PolicyViolation", message="format field")
reject("format-map", F, """
    def f():
        return "{x.__class__}".format_map({'x': 1})
""", "forbidden-attribute")
reject("formatter-import", F, """
    def f():
        from string import Formatter
        return Formatter().get_field('0.__class__', [1], {})
""", "import-name")
reject("formatter-attribute", F, """
    def f():
        import string
        return string.Formatter().vformat('{0.__globals__}', [f], {})
""", "module-attribute")
reject("fstring-dunder", F, """
    def f():
        return f"{f.__globals__}"
""", "underscore-attribute")
reject("template", F, """
    def f():
        import string
        return string.Template('$x').substitute(x=1)
""", "module-attribute")

# =============================================================================================
# disguise: computed names, match patterns, look-alike identifiers, invisible characters
F = "disguise"
reject("attrgetter", F, """
    def f():
        from operator import attrgetter
        return attrgetter('__class__')(1)
""", "import-name")
reject("methodcaller", F, """
    def f():
        import operator
        return operator.methodcaller('__reduce_ex__', 2)(1)
""", "module-attribute")
reject("functools-wraps", F, """
    def f():
        from functools import update_wrapper
        return update_wrapper
""", "import-name")
reject("match-class-kwd", F, """
    def f():
        try:
            f.nope
        except AttributeError as e:
            match e:
                case AttributeError(obj=o):
                    return o
""", "match-class-attributes")
reject("match-class-dunder", F, """
    def f(x):
        match x:
            case int(__class__=c):
                return c
""", "match-class-attributes")
reject("nfkc-eval", F, """
    def f():
        return ｅval('1')
""", "non-ascii-identifier")
reject("nfkc-attribute", F, """
    def f():
        return "{}".ｆormat_map({})
""", "non-ascii-identifier")
reject("nfkc-dunder", F, """
    def f():
        return ().__ｃlass__
""", "non-ascii-identifier")
reject("nfkc-import", F, """
    def f():
        from json import ｄumps
        return ｄumps(1)
""", "non-ascii-identifier")
reject("nfkc-parameter", F, """
    def f(ｑuery=1):
        return ｑuery
""", "non-ascii-identifier")
reject("nfkc-keyword", F, """
    def f():
        return dict(ｅval=1)
""", "non-ascii-identifier")
reject("cyrillic-homoglyph", F, """
    def f():
        \u0435val = 1
        return \u0435val
""", "non-ascii-identifier")
reject("lone-cr", F,
       "def f():\n    x = 1 # harmless comment\r    return open('@CANARY@').read()\n    return x\n",
       "bad-character")
reject("utf7-cookie", F, """
    # -*- coding: utf-7 -*-
    def f():
        return 1  # +AAo-    return open('@CANARY@').read()
""", "coding-cookie")
reject("cookie-line-two", F,
       "\n# vim: set fileencoding=utf-7 :\ndef f():\n    return 1\n", "coding-cookie")
reject("bidi-override", F, """
    def f(role):
        if role != "admin\u202e \u2066# check\u2069 \u2066":
            return open('@CANARY@').read()
""", "bad-character")
reject("zero-width", F, """
    def f():
        e\u200bval = 1
        return 1
""", "bad-character")
reject("form-feed", F, "def f():\n    \x0creturn 1\n", "bad-character")
reject("line-separator", F, "def f():\n    x = 1 # \u2028return open('@CANARY@').read()\n    return x\n",
       "bad-character")

# =============================================================================================
# implicit calls at definition time (decorators, defaults, annotations, metaclasses, hooks)
F = "implicit-calls"
reject("decorator", F, """
    @print
    def f():
        return 1
""", "decorator")
reject("decorator-nested", F, """
    def f():
        @lambda g: open('@CANARY@').read()
        def g():
            pass
        return g
""", "decorator")
reject("class-decorator", F, """
    def f():
        @print
        class A:
            pass
""", "decorator")
reject("default-runs-code", F, """
    def f(x=print('at install')):
        return x
""", "default-value")
reject("lambda-default", F, """
    def f():
        g = lambda x=open('@CANARY@').read(): x
        return g()
""", "default-value")
reject("kwonly-default", F, """
    def f(*, x=[].append(1)):
        return x
""", "default-value")
reject("annotation-call", F, """
    def f(x: open('@PWNED@', 'w') = None):
        return x
""", "annotation")
reject("return-annotation", F, """
    def f() -> print('defined'):
        return 1
""", "annotation")
reject("annassign-annotation", F, """
    def f():
        y: print('x') = 1
        return y
""", "annotation")
reject("metaclass", F, """
    def f():
        class M(type):
            pass
        class A(metaclass=M):
            pass
""", "class-keyword")
reject("class-kwargs", F, """
    def f():
        class A(**{'metaclass': type}):
            pass
""", "class-keyword")
reject("init-subclass", F, """
    def f():
        class A:
            def __init_subclass__(cls):
                pass
        class B(A):
            pass
""", "dunder-method")
reject("class-getitem", F, """
    def f():
        class A:
            def __class_getitem__(cls, item):
                return item
        return A[1]
""", "dunder-method")
reject("set-name", F, """
    def f():
        class D:
            def __set_name__(self, owner, name):
                pass
""", "dunder-method")
reject("getattr-hook", F, """
    def f():
        class A:
            def __getattribute__(self, name):
                return 1
""", "dunder-method")
reject("del-hook", F, """
    def f():
        class A:
            def __del__(self):
                print('at garbage collection')
        return A()
""", "dunder-method")
reject("format-hook", F, """
    def f():
        class A:
            def __format__(self, spec):
                return spec
        return format(A(), 'x')
""", "dunder-method")
reject("index-hook", F, """
    def f():
        class Big:
            def __index__(self):
                return 10 ** 10
        return 'x' * Big()
""", "dunder-method")
reject("reduce-hook", F, """
    def f():
        class A:
            def __reduce__(self):
                return (print, ('x',))
""", "dunder-method")
reject("descriptor-get", F, """
    def f():
        class D:
            def __get__(self, obj, owner):
                return 1
""", "dunder-method")
reject("dunder-class-attribute", F, """
    def f():
        class P:
            __match_args__ = ('__class__',)
""", "underscore-name")
fail("stdlib-base-at-run-time", F, """
    def f():
        import collections
        class C(collections.Counter):
            def most_common(self, n=None):
                return 1
        return C()
""", "PolicyViolation", message="may not inherit")

# =============================================================================================
# str subclass tricks against the guards (RestrictedPython 7.2, PR #282)
F = "str-subclass"
reject("str-subclass-startswith", F, """
    def f():
        class S(str):
            def startswith(self, *a):
                return False
        return S('__class__')
""", "class-base")
reject("dict-subclass", F, """
    def f():
        class D(dict):
            def items(self):
                return [('__class__', 1)]
        return D()
""", "class-base")
reject("computed-base", F, """
    def f():
        class S(type('')):
            pass
""", "class-base")
reject("type-base", F, """
    def f():
        class M(type):
            pass
""", "class-base")
reject("namedtuple-base", F, """
    def f():
        import collections
        class T(collections.namedtuple('T', 'a')):
            pass
""", "class-base")

# =============================================================================================
# except* and the runtime's interrupt (CVE-2025-22153, CPython gh-128049)
F = "exceptions"
reject("except-star-evil-split", F, """
    def f():
        class Evil(Exception):
            def split(self, *a):
                return 1
        try:
            raise Evil()
        except* ValueError:
            pass
""", "try-star")
reject("exception-group", F, """
    def f():
        raise ExceptionGroup('x', [ValueError()])
""", "forbidden-name")
reject("catch-base-exception", F, """
    def f():
        while True:
            try:
                pass
            except BaseException:
                pass
""", "catch-base-exception")
reject("bare-except", F, """
    def f():
        while True:
            try:
                pass
            except:
                pass
""", "bare-except")
reject("catch-base-in-tuple", F, """
    def f():
        try:
            pass
        except (ValueError, BaseException):
            pass
""", "catch-base-exception")
reject("computed-except-type", F, """
    def f():
        try:
            pass
        except type(f):
            pass
""", "except-type")
fail("swallow-interrupt-with-exit", F, """
    def f():
        class Swallow:
            def __enter__(self):
                return self
            def __exit__(self, t, v, tb):
                return True
        with Swallow():
            while True:
                pass
        return 'swallowed'
""", "LimitExceeded", limit="timeout_ms",
     note="in-process: __exit__'s own tick re-raises; worker: killed at the limit")

# =============================================================================================
# AttributeError.obj (CVE-2024-47532) and positional-only hook names (CVE-2026-55830)
F = "hooks"
fail("attributeerror-obj-module", F, """
    def f():
        import json
        m = json
        try:
            m.codecs
        except AttributeError as e:
            return e.obj
""", "PolicyViolation", message="'obj'")
fail("attributeerror-obj-user", F, """
    def f():
        try:
            f.nope
        except AttributeError as e:
            return e.obj
""", "PolicyViolation", message="'obj'")
reject("posonly-getattr-hook", F, """
    def f(_getattr_=None, /):
        return _getattr_
""", "underscore-name")
reject("posonly-wh-hook", F, """
    def f(_wh_getattr=lambda o, n: 1, /):
        return ().__class__
""", "underscore-name")
reject("nested-posonly-tick", F, """
    def f():
        def g(_wh_tick=None, /):
            while True:
                pass
        return g()
""", "underscore-name")
reject("vararg-hook", F, """
    def f(*_wh_setattr, **_wh_delattr):
        return 1
""", "underscore-name")
reject("lambda-posonly-hook", F, """
    def f():
        return (lambda _wh_mul=0, /: 'x' * 10 ** 10)()
""", "underscore-name")
reject("comprehension-hook", F, """
    def f():
        return [_wh_pow for _wh_pow in [1]]
""", "underscore-name")
reject("match-capture-hook", F, """
    def f(x):
        match x:
            case _wh_tick:
                return 1
""", "underscore-name")
reject("except-as-hook", F, """
    def f():
        try:
            pass
        except ValueError as _wh_getattr:
            pass
""", "underscore-name")
reject("walrus-hook", F, """
    def f():
        return (_wh_pow := 1)
""", "underscore-name")
reject("import-as-hook", F, """
    def f():
        import json as _wh_tick
        return 1
""", "underscore-name")
reject("class-named-hook", F, """
    def f():
        class _wh_tick:
            pass
""", "underscore-name")

# =============================================================================================
# module re-export paths (measured on CPython 3.11.7) and import tricks
F = "modules"
reject("datetime-sys", F, """
    def f():
        import datetime
        return datetime.sys.modules['os'].system('touch @PWNED@')
""", "module-attribute")
reject("json-codecs", F, """
    def f():
        import json
        return json.codecs.open('@CANARY@').read()
""", "module-attribute")
reject("re-enum-builtins", F, """
    def f():
        import re
        return re.enum.bltns.open('@CANARY@').read()
""", "module-attribute")
reject("statistics-sys", F, """
    def f():
        import statistics
        return statistics.sys.modules['os']
""", "module-attribute")
reject("random-os", F, """
    def f():
        import random
        return random._os.system('touch @PWNED@')
""", "underscore-attribute")
reject("fractions-sys", F, """
    def f():
        import fractions
        return fractions.sys.modules
""", "module-attribute")
reject("calendar-sys", F, """
    def f():
        import calendar
        return calendar.sys.modules
""", "module-attribute", note="calendar is whitelisted (catalogue names) for this suite")
reject("inspect-not-whitelisted", F, """
    def f():
        import inspect
        return inspect.currentframe().f_back.f_globals
""", "forbidden-module")
fail("dataclasses-inspect-os", F, """
    def f():
        import dataclasses
        return dataclasses.inspect.os.system('touch @PWNED@')
""", "AttributeError", message="it is a module",
     note="dataclasses whitelisted with names [dataclass, inspect]: the policy lets the listed "
          "name through, the module view never hands out a module")
reject("uuid-os", F, """
    def f():
        import uuid
        return uuid.os.system('touch @PWNED@')
""", "module-attribute")
reject("from-datetime-import-sys", F, """
    def f():
        from datetime import sys
        return sys.modules
""", "import-name")
reject("import-json-tool", F, """
    def f():
        import json.tool
        return 1
""", "import-dotted")
reject("import-plpy", F, """
    def f():
        import plpy
        return plpy.execute("SELECT pg_read_file('/etc/passwd')")
""", "forbidden-name")
reject("import-main", F, """
    def f():
        import __main__
        return __main__
""", "underscore-name")
reject("import-os", F, """
    def f():
        import os
        os.system('touch @PWNED@')
""", "forbidden-module")
reject("import-sys-alias", F, """
    def f():
        import sys as s
        return s.modules
""", "forbidden-module")
reject("alias-reexport", F, """
    def f():
        import json as j
        return j.codecs
""", "module-attribute")
reject("from-json-import-decoder", F, """
    def f():
        from json import decoder
        return decoder
""", "import-name")
reject("from-re-import-enum", F, """
    def f():
        from re import enum
        return enum
""", "import-name")
reject("relative-import", F, """
    def f():
        from . import host
        return host
""", "relative-import")
reject("star-import", F, """
    def f():
        from json import *
        return 1
""", "star-import")
reject("alias-shadows-builtin", F, """
    def f():
        import json as print
        return 1
""", "import-shadow")
reject("alias-shadows-module", F, """
    def f():
        import json as math
        return 1
""", "import-shadow")
reject("ctypes", F, """
    def f():
        import ctypes
        return ctypes.CDLL(None)
""", "forbidden-module")
reject("decimal-getcontext", F, """
    def f():
        import decimal
        decimal.getcontext().prec = 1
""", "module-attribute")
reject("collections-abc", F, """
    def f():
        import collections
        return collections.abc
""", "module-attribute")
reject("datetime-capi", F, """
    def f():
        import datetime
        return datetime.datetime_CAPI
""", "module-attribute")
fail("rebound-alias-reexport", F, """
    def f():
        import json
        j = json
        return j.codecs.open('@CANARY@').read()
""", "AttributeError", message="no attribute 'codecs'",
     note="the policy cannot follow the alias; the module view refuses at run time")
fail("dba-listed-module-name", F, """
    def f():
        import typing
        return typing.sys.modules
""", "AttributeError", message="it is a module",
     note="the DBA listed names [List, sys] for typing: a listed module is still never handed out")
fail("dba-listed-from-import", F, """
    def f():
        from dataclasses import inspect
        return inspect.os
""", "ImportError", "AttributeError")

# =============================================================================================
# PL/Python's own handles
F = "plpy"
reject("plpy-name", F, """
    def f():
        return plpy.execute("SELECT 1")
""", "forbidden-name")
reject("gd", F, """
    def f():
        return list(GD)
""", "forbidden-name")
reject("sd", F, """
    def f():
        SD['x'] = 1
""", "forbidden-name")
reject("td", F, """
    def f():
        return TD['new']
""", "forbidden-name")

# =============================================================================================
# shared state: the attribute guards (only the call's own objects may change)
F = "shared-state"
fail("set-attr-shared-function", F, """
    def f():
        import json
        d = json.dumps
        d.x = 1
""", "PolicyViolation", message="cannot set attribute")
fail("set-attr-stdlib-class", F, """
    def f():
        import collections
        C = collections.Counter
        C.most_common = lambda self, n=None: 'pwned'
""", "PolicyViolation", message="cannot set attribute")
fail("del-attr-stdlib-class", F, """
    def f():
        import fractions
        del fractions.Fraction.limit_denominator
""", "PolicyViolation", message="cannot delete attribute")
fail("del-attr-in-tuple", F, """
    def f():
        import fractions
        F = fractions.Fraction
        del (F.limit_denominator,)
""", "PolicyViolation", message="cannot delete attribute",
     note="was a HOLE (fixed in policy.py): `del (a.b,)` skipped _wh_delattr")
fail("del-attr-in-list", F, """
    def f():
        import collections
        C = collections.Counter
        x = [1]
        del [x[0], C.most_common]
""", "PolicyViolation", message="cannot delete attribute",
     note="was a HOLE (fixed in policy.py)")
fail("augassign-shared-attr", F, """
    def f():
        import calendar
        c = calendar.day_name
        c.format += 'x'
""", "PolicyViolation", message="cannot set attribute")
fail("set-attr-module-view", F, """
    def f():
        import json
        j = json
        j.dumps = print
""", "PolicyViolation", message="cannot set attribute")
fail("print-file", F, """
    def f():
        print('x', file=1)
""", "PolicyViolation", message="file=")

# =============================================================================================
# resource exhaustion (P3, P4)
F = "resources"
fail("iter-int-endless", F, """
    def f():
        return any(iter(int, 1))
""", "LimitExceeded", limit="timeout_ms")
fail("while-true", F, """
    def f():
        while True:
            pass
""", "LimitExceeded", limit="timeout_ms")
fail("sum-huge-range", F, """
    def f():
        return sum(range(10**15))
""", "LimitExceeded", limit="timeout_ms")
fail("type-of-range", F, """
    def f():
        R = type(range(1))
        return sum(R(10**15))
""", "LimitExceeded", limit="timeout_ms",
     note="was a HOLE (fixed in namespace.py): type(range(1)) was the real range, an unticked "
          "C loop in-process")
fail("itertools-count", F, """
    def f():
        import itertools
        return sum(itertools.count())
""", "LimitExceeded", limit="timeout_ms")
fail("itertools-cycle", F, """
    def f():
        import itertools
        return max(itertools.cycle([1, 2]))
""", "LimitExceeded", limit="timeout_ms")
fail("print-flood-endless", F, """
    def f():
        while True:
            print('x' * 1000)
""", "LimitExceeded", limit="timeout_ms")
fail("pow-tower", F, """
    def f():
        return 10**10**8
""", "LimitExceeded", limit="size")
fail("pow-builtin", F, """
    def f():
        return pow(10, 10**8)
""", "LimitExceeded", limit="size")
fail("pow-inplace", F, """
    def f():
        x = 10
        x **= 10**8
        return x
""", "LimitExceeded", limit="size")
fail("str-repeat", F, """
    def f():
        return len('x' * 10**10)
""", "LimitExceeded", limit="size")
fail("list-repeat-inplace", F, """
    def f():
        x = [0]
        x *= 10**10
""", "LimitExceeded", limit="size")
fail("lshift", F, """
    def f():
        return 1 << 10**10
""", "LimitExceeded", limit="size")
fail("factorial", F, """
    def f():
        import math
        return math.factorial(10**7)
""", "LimitExceeded", limit="size")
fail("comb", F, """
    def f():
        import math
        return math.comb(10**7, 5 * 10**6)
""", "LimitExceeded", limit="size")
fail("operator-mul", F, """
    def f():
        import operator
        return operator.mul('x', 10**10)
""", "LimitExceeded", limit="size")
fail("intflag-repeat", F, """
    def f():
        import re
        big = re.I | 10**10
        return len('x' * big)
""", "LimitExceeded", limit="size",
     note="was a HOLE (fixed in namespace.py): re.I | n is an int subclass the size guards "
          "waved through ('x' * 10 GB in-process)")
fail("intflag-pow", F, """
    def f():
        import re
        return 10 ** (re.I | 10**8)
""", "LimitExceeded", limit="size", note="was a HOLE (fixed in namespace.py)")
fail("subscript-augassign", F, """
    def f():
        x = ['x']
        x[int(0)] *= 10**10
        return len(x[0])
""", "LimitExceeded", limit="size",
     note="was a HOLE (fixed in policy.py): a[f()] *= n was left unguarded")
fail("attribute-subscript-augassign", F, """
    def f():
        class Box:
            def __init__(self):
                self.items = ['x']
        b = Box()
        b.items[0] *= 10**10
        return len(b.items[0])
""", "LimitExceeded", limit="size", note="was a HOLE (fixed in policy.py)")
fail("int-str-digits", F, """
    def f():
        return str(10**5000)
""", "ValueError", message="digits")
fail("deep-recursion", F, """
    def f():
        def down(n):
            return down(n + 1) + 1
        return down(0)
""", "RecursionError")
fail("recursion-through-str", F, """
    def f():
        class A:
            def __str__(self):
                return str(self)
        return str(A())
""", "RecursionError")
fail("recursion-through-sorted", F, """
    def f():
        def key(x):
            return sorted([x, x], key=key)
        return key(1)
""", "RecursionError")
fail("recursion-through-map", F, """
    def f():
        def down(x):
            return list(map(down, [x]))
        return down(1)
""", "RecursionError")
fail("recursion-through-eq", F, """
    def f():
        class A:
            def __eq__(self, other):
                return [self] == [other]
            def __hash__(self):
                return 1
        return A() == A()
""", "RecursionError")
fail("deep-json", F, """
    def f():
        import json
        return len(json.loads('[' * 200000 + ']' * 200000))
""", "RecursionError")
fail("deep-repr", F, """
    def f():
        x = []
        for _ in range(200000):
            x = [x]
        return len(repr(x))
""", "RecursionError")
fail("deep-regex", F, """
    def f():
        import re
        return re.compile('(' * 5000 + 'a' + ')' * 5000).pattern
""", "RecursionError", "error", "OverflowError")
fail("regex-backtracking", F, """
    def f():
        import re
        return bool(re.match(r'(a+)+$', 'a' * 64 + 'b'))
""", "LimitExceeded", limit="timeout_ms", modes=WORKER,
     note="worker only: a C-level regex backtrack cannot be interrupted in-process "
          "(SECURITY.md)")
fail("itertools-product-c-loop", F, """
    def f():
        import itertools
        return max(itertools.product(range(10), repeat=30))
""", "LimitExceeded", limit="timeout_ms", modes=WORKER,
     note="worker only: max() over a C iterator never returns to Python")
fail("memory-bomb", F, """
    def f():
        chunks = []
        while True:
            chunks.append('x' * 10_000_000)
""", "MemoryError", "WorkerCrashed", "LimitExceeded", modes=WORKER,
     note="worker only: in-process memory is bounded only by the OS")
fail("bytearray-bomb", F, """
    def f():
        return len(bytearray(10**10))
""", "MemoryError", "WorkerCrashed", modes=WORKER, note="worker only: one C allocation")
fail("ljust-bomb", F, """
    def f():
        return len('x'.ljust(10**10))
""", "MemoryError", "WorkerCrashed", modes=WORKER, note="worker only: one C allocation")
fail("format-width-bomb", F, """
    def f():
        return len(f"{1:>10000000000}")
""", "MemoryError", "WorkerCrashed", "ValueError", modes=WORKER,
     note="worker only: one C allocation")
fail("decimal-precision-bomb", F, """
    def f():
        import decimal
        with decimal.localcontext(decimal.Context(prec=decimal.MAX_PREC)):
            return str(decimal.Decimal(3) ** 10**9)
""", "LimitExceeded", "MemoryError", "WorkerCrashed", "Overflow", "InvalidOperation",
     modes=WORKER, note="worker only: libmpdec works in C")
fail("fraction-exponent-string", F, """
    def f():
        import fractions
        return fractions.Fraction('1e100000000').denominator
""", "LimitExceeded", "MemoryError", "WorkerCrashed", modes=WORKER,
     note="worker only: fractions.py computes 10**exp itself, past the size guards (residual "
          "in-process gap, see the report)")
fail("decimal-to-int", F, """
    def f():
        import decimal
        return int(decimal.Decimal('1e100000000')) % 7
""", "LimitExceeded", "MemoryError", "WorkerCrashed", modes=WORKER,
     note="worker only: a 332-Mbit int built in C, minutes of work no in-process tick sees "
          "(residual in-process gap)")
fail("huge-result", F, """
    def f():
        return ['x' * 9_000_000 for _ in range(3)]
""", "LimitExceeded", limit="max_result_bytes",
     note="the suite sets wormhole_limits.max_result_bytes to 8 MB")

# =============================================================================================
# interpreter crashers (worker only: in-process a crasher restarts the cluster, SECURITY.md)
F = "crashers"
fail("deep-tuple-hash", F, """
    def f():
        t = ()
        for _ in range(1_000_000):
            t = (t,)
        return hash(t)
""", "WorkerCrashed", "RecursionError", "MemoryError", "LimitExceeded", modes=WORKER,
     note="segfaults CPython 3.11 (tuplehash has no recursion check): only the worker dies "
          "(or, on a loaded machine, the 1 s limit ends the build-up first)")
fail("deep-map-chain", F, """
    def f():
        x = iter([1])
        for _ in range(1_000_000):
            x = map(abs, x)
        return next(x)
""", "WorkerCrashed", "RecursionError", "MemoryError", "LimitExceeded", modes=WORKER,
     note="segfaults CPython 3.11 (nested map_next): only the worker dies")
reject("recursionlimit-crasher", F, """
    def f():
        import sys
        sys.setrecursionlimit(10**6)
        def g(x):
            return list(map(g, [x]))
        return g(1)
""", "forbidden-module", note="research: recursion through map after setrecursionlimit "
                              "segfaults 3.11; needs sys")
reject("validator-recursion-sum", F,
       "def f():\n    return " + " + ".join(["1"] * 700) + "\n", "too-deep")
reject("deep-parentheses", F,
       "def f():\n    return " + "(" * 180 + "1" + ")" * 180 + " + " + "-" * 300 + "1\n",
       "too-deep")
reject("too-large-source", F,
       "def f():\n" + "    x = 1\n" * 12000 + "    return x\n", "too-large")

# =============================================================================================
# hostile return values (P9: results are data; user methods are never called by the codec)
F = "return-values"
fail("evil-eq-object", F, """
    def f():
        class Evil:
            def __eq__(self, other):
                while True:
                    pass
            def __hash__(self):
                while True:
                    pass
        return [Evil()]
""", "TypeError", message="cannot be sent")
fail("evil-str-object", F, """
    def f():
        class Evil:
            def __str__(self):
                while True:
                    pass
            def __repr__(self):
                while True:
                    pass
        return {'k': Evil()}
""", "TypeError", message="cannot be sent")
fail("evil-iter-object", F, """
    def f():
        class Evil:
            def __iter__(self):
                return self
            def __next__(self):
                return 1
            def __len__(self):
                return 10**6
        return Evil()
""", "TypeError", message="cannot be sent")
fail("evil-key-object", F, """
    def f():
        class K:
            def __hash__(self):
                return 1
        return {K(): 1}
""", "TypeError", message="cannot be sent")
fail("evil-str-exception", F, """
    def f():
        class Boom(Exception):
            def __str__(self):
                while True:
                    pass
        raise Boom()
""", "LimitExceeded", limit="timeout_ms",
     note="the runtime calls str() on the user's exception: still a ticking, bounded call")
fail("return-function", F, """
    def f():
        return f
""", "TypeError", message="cannot be sent")
fail("return-module-view", F, """
    def f():
        import json
        return json
""", "TypeError", message="cannot be sent")
fail("return-class", F, """
    def f():
        class A:
            pass
        return A
""", "TypeError", message="cannot be sent")
fail("return-exception", F, """
    def f():
        return ValueError('x')
""", "TypeError", message="cannot be sent")
fail("return-namedtuple", F, """
    def f():
        import collections
        return collections.namedtuple('T', 'a')(1)
""", "TypeError", message="cannot be sent", note="tuple subclass: exact types only")
fail("return-cycle", F, """
    def f():
        a = []
        a.append(a)
        return a
""", "TypeError")
fail("return-deep-nesting", F, """
    def f():
        x = []
        for _ in range(100000):
            x = [x]
        return x
""", "TypeError")

# =============================================================================================
# query() abuse (P5, P6): the SQL runs as the caller, one statement, no role/txn/settings changes
F = "query"


def q(id: str, sql: str, *states: str | None, **kw: object) -> None:
    src = "def f(*args):\n    return query(" + repr(sql) + ", *args)\n"
    # the worker reports a refused statement as DatabaseError, in-process as ForbiddenStatement
    # (a DatabaseError subclass); both carry the SQLSTATE
    CASES.append(Case(id, F, src, "fail", errors=("DatabaseError", "ForbiddenStatement"),  # type: ignore[arg-type]
                      sqlstate=states[0] if len(states) == 1 else None,
                      **kw, refs=states))


q("set-role", "SET ROLE postgres", "WH003")
q("set-role-comment", "SET/**/ROLE postgres", "WH003")
q("set-local-role", "set local role postgres", "WH003")
q("session-authorization", "SET SESSION AUTHORIZATION postgres", "WH003")
q("reset-all", "RESET ALL", "WH003")
q("set-config-role", "SELECT set_config('role', 'postgres', false)", "WH003")
q("set-config-quoted", "SELECT \"set_config\"('statement_timeout', '0', false)", "WH003")
q("set-config-qualified", "SELECT pg_catalog . set_config('statement_timeout', '0', false)",
  "WH003")
q("set-config-unicode-escape",
  "SELECT U&\"\\0073et_config\"('statement_timeout', '0', false)", "WH003")
q("update-pg-settings", "UPDATE pg_settings SET setting = '0' WHERE name = 'statement_timeout'",
  "WH003")
q("set-statement-timeout", "SET statement_timeout = 0", "WH003")
q("commit", "COMMIT", "WH003")
q("rollback-savepoint", "ROLLBACK", "WH003")
q("prepare-transaction", "PREPARE TRANSACTION 'x'", "WH003")
q("multi-statement", "SELECT 1; SELECT pg_read_file('/etc/passwd')", "WH003")
q("copy-to-program", "COPY (SELECT 1) TO PROGRAM 'touch @PWNED@'", "WH003")
q("copy-from-file", "COPY pg_temp.x FROM '@CANARY@'", "WH003")
q("do-block", "DO $$ BEGIN PERFORM 1; END $$", "WH003")
q("load-library", "LOAD 'plpython3'", "WH003")
q("pg-read-file", "SELECT pg_read_file('/etc/passwd') AS x", "42501")
q("pg-read-canary", "SELECT pg_read_file('@CANARY@') AS x", "42501")
q("pg-read-binary", "SELECT pg_read_binary_file('@CANARY@') AS x", "42501")
q("pg-ls-dir", "SELECT pg_ls_dir('/') AS x", "42501")
q("lo-import", "SELECT lo_import('@CANARY@') AS x", "42501")
q("lo-export", "SELECT lo_export(0, '@PWNED@') AS x", "42501")
q("create-plpython-function",
  "CREATE FUNCTION pg_temp.evil() RETURNS int LANGUAGE plpython3u AS "
  "$$ import os; os.system('touch @PWNED@'); return 1 $$", "42501")
q("create-extension-dblink", "CREATE EXTENSION dblink", "42501", "58P01", "0A000",
  note="dblink is not trusted (or not installed): a regular role cannot create it")
q("approve-self", "SELECT wormhole_approve(repeat('0', 64))", "42501")
q("whitelist-os", "INSERT INTO wormhole_allowed_modules (module_name, allowed) "
  "VALUES ('os', true) ON CONFLICT (module_name) DO UPDATE SET allowed = true", "42501")
q("trust-self", "INSERT INTO wormhole_trusted_roles (role_name, note) VALUES ('app', 'x')",
  "42501")
q("wipe-audit", "DELETE FROM wormhole_audit", "42501")
q("rewrite-source", "UPDATE wormhole_functions SET source = 'x'", "42501")
q("alter-role-superuser", "ALTER ROLE app SUPERUSER", "42501")
q("alter-system", "ALTER SYSTEM SET log_min_messages = 'panic'", "42501", "WH003", "25001")
q("terminate-superuser", "SELECT pg_terminate_backend($1) AS x", "42501",
  args="[[@ADMINPID@],{}]")
q("reload-conf", "SELECT pg_reload_conf() AS x", "42501")
q("nested-execute-unknown", "SELECT wormhole_execute(repeat('0', 64), '[[],{}]') AS x",
  "WH004", message="no function with hash",
  note="the inner function's custom SQLSTATE survives query() (spi.py unpacks spidata)")
fail("nested-execute-self", F, """
    def f(h, depth):
        import json
        if depth > 0:
            return ['inner', depth]
        inner = json.dumps([[h, depth + 1], {}])
        row = query("SELECT wormhole_execute($1, $2) AS x", h, inner)[0]
        return ['outer', row['x']]
""", "DatabaseError", sqlstate="WH010", args='[["@HASH@", 0],{}]', modes=WORKER,
     message="cannot call another remote function",
     note="re-entering wormhole from inside a call while the backend's worker is busy with "
          "the outer call is refused with a clear error (host._in_worker); in-process the "
          "nested call simply works (near miss below)")

# =============================================================================================
# near misses: legitimate code that sits next to the attacks and must still work
F = "near-miss"
ok("legit-format", F, """
    def f():
        return "{0}-{1:>4}-{x!r}".format(1, 2, x='y') + format(3.14159, '.2f')
""", "1-   2-'y'3.14")
ok("legit-percent-mapping", F, """
    def f():
        return "%(a)s and %(b)05.1f" % {'a': 'x', 'b': 2.5}
""", "x and 002.5")
ok("legit-match-class-positional", F, """
    def f(x):
        match x:
            case int(n) if n > 1:
                return ['int', n]
            case {'k': v, **rest}:
                return ['dict', v, sorted(rest)]
            case [first, *others]:
                return ['list', first, len(others)]
        return None
""", ["int", 5], args="[[5],{}]")
ok("legit-own-class-attributes", F, """
    def f():
        class Point:
            def __init__(self, x, y):
                self.x = x
                self.y = y
            def __eq__(self, other):
                return (self.x, self.y) == (other.x, other.y)
            def __hash__(self):
                return hash((self.x, self.y))
        p = Point(1, 2)
        p.x += 10
        del p.y
        p.y = 5
        items = [[1], [2]]
        items[len(items) - 1] *= 3
        return [p.x, p.y, Point(1, 2) == Point(1, 2), len({Point(1, 2), Point(1, 2)}), items]
""", [11, 5, True, 1, [[1], [2, 2, 2]]])
ok("legit-exception-subclass", F, """
    def f():
        import json
        class Oops(ValueError):
            def __init__(self, code):
                super().__init__(f'code {code}')
                self.code = code
        try:
            json.loads('{')
        except json.JSONDecodeError as e:
            first = e.msg
        try:
            raise Oops(7)
        except Oops as e:
            return [first, e.code, str(e)]
""", ["Expecting property name enclosed in double quotes", 7, "code 7"])
ok("legit-generator-consumed", F, """
    def f():
        def evens(n):
            for i in range(n):
                if i % 2 == 0:
                    yield i
        return list(evens(10)) + [sum(x * x for x in range(4))]
""", [0, 2, 4, 6, 8, 14])
ok("legit-bounded-sizes", F, """
    def f():
        import math, re
        return [len('ab' * 1000), (2 ** 1000) % 97, len(str(math.factorial(1000))),
                1 << 100, re.I * 2, len(range(10**12)) if False else 0, sum(range(1000))]
""", [2000, 2 ** 1000 % 97, 2568, 1 << 100, 4, 0, 499500])
ok("legit-type-checks", F, """
    def f():
        return [type(1) is int, type('x') == str, list(type(range(0))(3)),
                type(range(1)) is type(range(5)), type([]) is list]
""", [True, True, [0, 1, 2], True, True])
ok("legit-query-as-caller", F, """
    def f():
        row = query("SELECT current_user AS u, session_user AS s, "
                    "current_setting('statement_timeout') AS t")[0]
        return [row['u'], row['s'], row['t']]
""", ["app", "app", "10s"])
ok("legit-print-flood-truncated", F, """
    def f():
        for _ in range(2000):
            print('x' * 100)
        return 'done'
""", "done", note="bounded: output is truncated at max_output_bytes, the call succeeds")
ok("legit-decimal-localcontext", F, """
    def f():
        import decimal
        with decimal.localcontext() as ctx:
            ctx.prec = 5
            third = decimal.Decimal(1) / decimal.Decimal(3)
        return [str(third), str(decimal.Decimal(1) / decimal.Decimal(3))]
""", ["0.33333", "0.3333333333333333333333333333"])
ok("legit-deep-but-bounded", F, """
    def f():
        def down(n):
            return 0 if n == 0 else down(n - 1) + 1
        x = []
        for _ in range(50):
            x = [x]
        return [down(200), len(repr(x))]
""", [200, 102])
ok("legit-unicode-in-strings", F, """
    def f():
        return ["ｅval and \u0435val are just text", "π ≈ 3.14", "{0}".format("é")]
""", ["ｅval and \u0435val are just text", "π ≈ 3.14", "é"])
ok("legit-nested-execute-in-process", F, """
    def f(h, depth):
        import json
        if depth > 0:
            return ['inner', depth]
        inner = json.dumps([[h, depth + 1], {}])
        return ['outer', query("SELECT wormhole_execute($1, $2) AS x", h, inner)[0]['x']]
""", ["outer", '{"ok":["inner",1],"out":[]}'], args='[["@HASH@", 0],{}]', modes=("in-process",),
   note="approved code calling itself through SQL: a nested in-process call")
ok("legit-calendar-and-operator", F, """
    def f():
        import calendar, operator
        return [calendar.isleap(2024), operator.mul(3, 4), operator.itemgetter(1)([5, 6])]
""", [True, 12, 6])
