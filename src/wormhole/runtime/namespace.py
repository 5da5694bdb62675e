"""The globals user code runs with (``build_globals``), fresh for every call.

What a function can reach is exactly what this module hands it:

* a curated ``__builtins__`` (an allow-list; every builtin left out is listed in
  ``EXCLUDED_BUILTINS`` with the reason, RestrictedPython ``Guards.py`` style);
* ``query`` and ``DatabaseError``, so code written for the client runs unchanged;
* the hooks the policy's transformer inserts (``policy.HOOKS``): the tick, the attribute
  guards and the size guards;
* whitelisted modules, only as read-only *views* of their allowed public names (never module
  objects: ``datetime.sys``, ``json.codecs``, ``re.enum`` would hand out ``sys.modules``).

Nothing here is a security boundary by itself (see SECURITY.md): in the confined worker these
guards give clear errors and defence in depth; in-process (DBA-approved code only) they are
best effort. What in-process mode cannot stop: C-level loops that never return to Python
(``any(iter(int, 1))`` is wrapped, but e.g. ``sorted`` over a huge list, a regex with
catastrophic backtracking such as ``(a+)+$``, ``bytes(10**10)``, ``'x'.ljust(10**10)``,
``math.prod`` of huge numbers, or ``list(itertools.product(range(10**4), repeat=4))``) and
memory use in general. The worker's OS limits (wall clock, RLIMIT_AS, RLIMIT_CPU) bound those.
"""

from __future__ import annotations

import builtins
import functools
import importlib
import itertools
import math
import sys
import types

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping
    from typing import Any, NoReturn

from .errors import DatabaseError, LimitExceeded, PolicyViolation
from .rules import (
    CATALOGUE,
    DELATTR,
    EXCEPTION_NAMES,
    FORBIDDEN_ATTRIBUTES,
    GETATTR,
    ILSHIFT,
    IMUL,
    IPOW,
    LSHIFT,
    MUL,
    POW,
    SETATTR,
    TICK,
    DEFER,
    allowed_names,
)
from .rows import Rows

__all__ = [
    "CATALOGUE",
    "EXCLUDED_BUILTINS",
    "MAX_INT_BITS",
    "MAX_REPEAT",
    "ModuleView",
    "Namespace",
    "build_globals",
    "safe_builtin_names",
]

#: the largest integer one ``**``, ``*``, ``<<`` or math.factorial/comb/perm may produce
#: (4 Mbit ~ 1.26 million decimal digits, 512 KiB). ``10**10**8`` would need 41 MB and seconds
#: of C code that no interrupt can stop.
MAX_INT_BITS = 1 << 22
#: the most items (or characters) one sequence repetition (``'x' * n``, ``[0] * n``) may produce.
MAX_REPEAT = 10_000_000
#: ranges longer than this are iterated through a ticking generator (they lose ``len()`` and
#: indexing), so ``sum(range(10**12))`` notices interrupts instead of running in C for hours.
RANGE_FAST = 10_000_000

_MODULE_NAME = "__wormhole__"  # what classes get as __module__ (a class body needs __name__)

# --------------------------------------------------------------------------------------------
# builtins

#: builtins handed over unchanged.
_PLAIN_BUILTINS = (
    "abs", "all", "any", "ascii", "bin", "bool", "bytearray", "bytes", "callable", "chr",
    "complex", "dict", "divmod", "enumerate", "filter", "float", "format", "frozenset", "hash",
    "hex", "int", "isinstance", "issubclass", "len", "list", "map", "max", "min", "next", "oct",
    "ord", "repr", "reversed", "round", "set", "slice", "sorted", "str", "sum", "super",
    "tuple", "zip", "NotImplemented", "Ellipsis",
    # ``format(value, spec)`` calls value.__format__(spec): a spec cannot traverse attributes
    # (only ``str.format`` field names can, and that is guarded). ``super`` is allowed by the
    # policy only as ``super()`` with no arguments.
)

#: builtins replaced by guarded versions (built in ``build_globals``).
_GUARDED_BUILTINS = ("pow", "type", "range", "iter", "print", "__import__", "__build_class__")

#: every other builtin of CPython 3.11, and why it is missing.
EXCLUDED_BUILTINS: dict[str, str] = {
    "eval": "runs arbitrary code", "exec": "runs arbitrary code",
    "compile": "makes code objects",
    "open": "file access",
    "input": "reads the server's stdin",
    "breakpoint": "starts a debugger (site builtin)",
    "help": "site builtin; imports arbitrary modules (pydoc)",
    "license": "site builtin; reads files", "credits": "site builtin",
    "copyright": "site builtin",
    "exit": "site builtin; raises SystemExit", "quit": "site builtin; raises SystemExit",
    "vars": "introspection: returns namespaces (vars(type)['...'] bypasses attribute checks)",
    "dir": "introspection", "globals": "introspection: the call's globals incl. the hooks",
    "locals": "introspection",
    "getattr": "attribute names as strings bypass the policy's attribute checks",
    "setattr": "attribute names as strings bypass the policy's attribute checks",
    "delattr": "attribute names as strings bypass the policy's attribute checks",
    "hasattr": "attribute names as strings (probes dunders, triggers properties)",
    "object": "root of the class graph (object.__subclasses__())",
    "memoryview": "raw buffer access",
    "classmethod": "descriptors are not supported", "staticmethod": "descriptors are not "
    "supported", "property": "descriptors are not supported",
    "id": "leaks memory addresses (defeats ASLR)",
    "aiter": "async is not supported", "anext": "async is not supported",
    "BaseException": "catching it would swallow the runtime's Interrupted",
    "SystemExit": "must not be raised or caught by user code",
    "KeyboardInterrupt": "must not be raised or caught by user code",
    "GeneratorExit": "must not be raised or caught by user code",
    "BaseExceptionGroup": "exception groups: except* is refused (CPython gh-128049)",
    "ExceptionGroup": "exception groups: except* is refused (CPython gh-128049)",
    "__debug__": "not needed", "__doc__": "not needed", "__loader__": "the import system",
    "__name__": "set to '__wormhole__' in globals instead", "__package__": "not needed",
    "__spec__": "the import system",
    "True": "a keyword; never looked up", "False": "a keyword; never looked up",
    "None": "a keyword; never looked up",
}
_NOT_NEEDED_EXCEPTIONS = (
    # no file, network, process or import access, so these cannot happen in user code; warnings
    # are not user-visible. Catching one of them would only hide a runtime bug.
    "OSError", "EnvironmentError", "IOError", "BlockingIOError", "BrokenPipeError",
    "ChildProcessError", "ConnectionAbortedError", "ConnectionError",
    "ConnectionRefusedError", "ConnectionResetError", "FileExistsError",
    "FileNotFoundError", "InterruptedError", "IsADirectoryError", "NotADirectoryError",
    "PermissionError", "ProcessLookupError", "TimeoutError", "ImportError",
    "ModuleNotFoundError", "EOFError", "SyntaxError", "IndentationError", "TabError",
    "SystemError", "ReferenceError", "BufferError", "StopAsyncIteration", "EncodingWarning",
    "UnicodeTranslateError", "Warning", "UserWarning", "DeprecationWarning",
    "PendingDeprecationWarning", "SyntaxWarning", "RuntimeWarning", "FutureWarning",
    "ImportWarning", "UnicodeWarning", "BytesWarning", "ResourceWarning",
)
EXCLUDED_BUILTINS.update({name: "not reachable from wormhole functions" for name in
                          _NOT_NEEDED_EXCEPTIONS})

_EXCEPTIONS = tuple(sorted(EXCEPTION_NAMES - {"DatabaseError"}))

_BASE_BUILTINS: dict[str, object] = {
    name: getattr(builtins, name) for name in (*_PLAIN_BUILTINS, *_EXCEPTIONS)
}


def safe_builtin_names() -> frozenset[str]:
    """Every name the curated ``__builtins__`` defines."""
    return frozenset(_BASE_BUILTINS) | frozenset(_GUARDED_BUILTINS)


# --------------------------------------------------------------------------------------------
# size guards (the transformer routes ``**``, ``*`` and ``<<`` here)


def _too_big(what: str, bits: int) -> NoReturn:
    raise LimitExceeded(
        "size", f"{what} would produce a number of about {bits:,} bits; the limit is "
        f"{MAX_INT_BITS:,} bits")


def _is_int(x: object) -> bool:
    # any int, subclasses included: the stdlib hands out int subclasses (``re.I | 10**10`` is
    # a ``RegexFlag`` of any size) that an exact-type check would wave through unguarded.
    # User code cannot define int subclasses (policy: class bases), so none overrides the
    # int methods used here.
    return isinstance(x, int)


def _is_fraction(x: object) -> bool:
    # fractions is imported only when a call uses it (a whitelisted module view, statistics);
    # until then no Fraction can exist
    fractions = sys.modules.get("fractions")
    return fractions is not None and type(x) is fractions.Fraction


def _check_pow(base: Any, exp: Any) -> None:
    if _is_int(exp) and exp > 1:
        if _is_int(base):
            if abs(base) > 1 and (abs(base).bit_length() - 1) * exp > MAX_INT_BITS:
                _too_big(f"{base} ** {exp}", (abs(base).bit_length() - 1) * exp)
        elif _is_fraction(base):
            size = max(abs(base.numerator).bit_length(), base.denominator.bit_length())
            if size > 1 and (size - 1) * exp > MAX_INT_BITS:
                _too_big(f"Fraction ** {exp}", (size - 1) * exp)


def guarded_pow(base: Any, exp: Any, mod: Any = None) -> Any:
    """``base ** exp`` (and ``pow``) with a cap on the size of integer and Fraction results.

    Three-argument ``pow`` is modular, so its result is bounded by ``mod``.
    """
    if mod is None:
        if type(base) is not float and type(exp) is not float:
            _check_pow(base, exp)
        return base**exp
    return builtins.pow(base, exp, mod)


_SEQUENCES = (str, bytes, bytearray, list, tuple)


def guarded_mul(a: Any, b: Any) -> Any:
    """``a * b`` with caps on integer size and on sequence repetition.

    This runs for every ``*`` in user code, so the common cases (floats, small ints) take the
    first branch with no further calls.
    """
    if type(a) is float or type(b) is float:
        return a * b
    ia = isinstance(a, int)  # subclasses too (see _is_int)
    ib = isinstance(b, int)
    if ia and ib:
        if a.bit_length() + b.bit_length() > MAX_INT_BITS:
            _too_big("the multiplication", a.bit_length() + b.bit_length())
    elif ia and isinstance(b, _SEQUENCES) and a > 0:
        _check_repeat(len(b), a)
    elif ib and isinstance(a, _SEQUENCES) and b > 0:
        _check_repeat(len(a), b)
    return a * b


def _check_repeat(length: int, times: int) -> None:
    if length * times > MAX_REPEAT:
        raise LimitExceeded(
            "size", f"repeating a sequence of length {length} {times} times would make "
            f"{length * times:,} items; the limit is {MAX_REPEAT:,}")


def guarded_lshift(a: Any, b: Any) -> Any:
    """``a << b`` with a cap on the result's size."""
    if _is_int(a) and _is_int(b) and a and b > 0 and a.bit_length() + b > MAX_INT_BITS:
        _too_big(f"{a} << {b}", a.bit_length() + b)
    return a << b


def guarded_ipow(a: Any, b: Any) -> Any:
    _check_pow(a, b)
    a **= b
    return a


def guarded_imul(a: Any, b: Any) -> Any:
    """``a *= b``: the same checks as ``*``, then the in-place operator (lists stay the same
    object, as Python's own ``*=`` keeps them)."""
    if _is_int(a) and _is_int(b):
        if a.bit_length() + b.bit_length() > MAX_INT_BITS:
            _too_big("the multiplication", a.bit_length() + b.bit_length())
    elif _is_int(b) and isinstance(a, _SEQUENCES) and b > 0:
        _check_repeat(len(a), b)
    elif _is_int(a) and isinstance(b, _SEQUENCES) and a > 0:
        _check_repeat(len(b), a)
    a *= b
    return a


def guarded_ilshift(a: Any, b: Any) -> Any:
    if _is_int(a) and _is_int(b) and a and b > 0 and a.bit_length() + b > MAX_INT_BITS:
        _too_big(f"{a} << {b}", a.bit_length() + b)
    a <<= b
    return a


def _factorial(n: Any) -> Any:
    if _is_int(n) and n > 2 and n * (n.bit_length() - 1) > MAX_INT_BITS:
        _too_big(f"factorial({n})", n * (n.bit_length() - 1))
    return math.factorial(n)


def _comb(n: Any, k: Any) -> Any:
    if _is_int(n) and _is_int(k) and 0 <= k <= n:
        bits = min(k, n - k) * n.bit_length()
        if bits > MAX_INT_BITS:
            _too_big(f"comb({n}, {k})", bits)
    return math.comb(n, k)


def _perm(n: Any, k: Any = None) -> Any:
    if _is_int(n) and (k is None or _is_int(k)):
        kk = n if k is None else k
        if 0 <= kk <= n and kk * n.bit_length() > MAX_INT_BITS:
            _too_big(f"perm({n}, {kk})", kk * n.bit_length())
    return math.perm(n, k)


# --------------------------------------------------------------------------------------------
# attribute guards


def _check_attribute_name(name: object) -> str:
    # ``type(name) is str``: a str subclass could override startswith (RestrictedPython 7.2).
    if type(name) is not str:
        raise PolicyViolation("attribute names must be str")
    if name.startswith(("_", "gi_", "cr_", "ag_")) or name in FORBIDDEN_ATTRIBUTES:
        raise PolicyViolation(f"attribute {name!r} is not allowed")
    return name


_FORMATTER: Any = None


@functools.lru_cache(maxsize=256)
def _check_format(fmt: str, depth: int = 0) -> None:
    """Refuse replacement fields that look up attributes or items (``{0.__class__}``,
    ``{0[k]}``), including in nested format specs; ``str.format`` would resolve them in C.
    """
    global _FORMATTER
    if depth > 2:
        raise ValueError("Max string recursion exceeded")
    if _FORMATTER is None:
        from string import Formatter

        _FORMATTER = Formatter()
    for _literal, field, spec, _conversion in _FORMATTER.parse(fmt):
        if field is not None and ("." in field or "[" in field):
            raise PolicyViolation(
                f"format field {{{field}}} is not allowed: str.format fields may not look up "
                f"attributes or items (use an f-string, whose expressions are checked)")
        if spec:
            _check_format(spec, depth + 1)


def safe_format(fmt: str, /, *args: Any, **kwargs: Any) -> str:
    """``str.format`` with the field check (what ``str.format`` means in user code)."""
    if not isinstance(fmt, str):
        raise TypeError("descriptor 'format' requires a 'str' object")
    _check_format(str(fmt))
    return str.format(fmt, *args, **kwargs)


def guarded_getattr(obj: object, name: str) -> object:
    """``obj.name`` for the names whose meaning depends on ``obj`` (``policy.DYNAMIC_ATTRIBUTES``).

    ``str.format`` becomes ``safe_format``; ``AttributeError.obj`` (the object a failed lookup
    was made on, possibly the runtime's own; CVE-2024-47532) is refused.
    """
    _check_attribute_name(name)
    if name == "format":
        if obj is str:
            return safe_format
        if isinstance(obj, str):
            text = obj

            def format(*args: Any, **kwargs: Any) -> str:  # noqa: A001 - it is str.format
                return safe_format(text, *args, **kwargs)

            return format
    elif name == "obj" and isinstance(obj, BaseException):
        raise PolicyViolation("the 'obj' attribute of exceptions is not available")
    return getattr(obj, name)


# --------------------------------------------------------------------------------------------
# module views


class ModuleView:
    """A read-only view of a module's allowed public names; never the module itself.

    Values live in a plain dict built once; nothing here ever calls ``getattr`` on the real
    module at access time, so a failed lookup's ``AttributeError`` carries the view, not the
    module (CVE-2024-47532). ``__slots__`` means no ``__dict__`` to reach or replace.
    """

    __slots__ = ("_wh_name", "_wh_values", "_wh_refused")

    def __init__(self, name: str, values: Mapping[str, object],
                 refused: Mapping[str, str]) -> None:
        object.__setattr__(self, "_wh_name", name)
        object.__setattr__(self, "_wh_values", values)
        object.__setattr__(self, "_wh_refused", refused)

    def __getattr__(self, attr: str) -> object:
        values: Mapping[str, object] = object.__getattribute__(self, "_wh_values")
        if type(attr) is str and attr in values:
            return values[attr]
        name = object.__getattribute__(self, "_wh_name")
        reason = object.__getattribute__(self, "_wh_refused").get(attr)
        raise AttributeError(
            f"module {name!r} has no attribute {attr!r} available to wormhole functions"
            + (f" ({reason})" if reason else ""))

    def __setattr__(self, attr: str, value: object) -> None:
        raise AttributeError("module views are read-only")

    def __delattr__(self, attr: str) -> None:
        raise AttributeError("module views are read-only")

    def __dir__(self) -> list[str]:
        return sorted(object.__getattribute__(self, "_wh_values"))

    def __repr__(self) -> str:
        return f"<module {object.__getattribute__(self, '_wh_name')!r} (wormhole view)>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("module views cannot be pickled")


#: per-module replacements for catalogued names (size guards).
_STATIC_OVERRIDES: dict[str, dict[str, object]] = {
    "math": {"factorial": _factorial, "comb": _comb, "perm": _perm},
    "operator": {"mul": guarded_mul, "pow": guarded_pow, "lshift": guarded_lshift},
}

#: random's module functions are bound methods of one hidden shared instance; these are
#: re-bound to a fresh ``Random()`` per call instead.
_RANDOM_METHODS = frozenset({
    "betavariate", "choice", "choices", "expovariate", "gammavariate", "gauss", "getrandbits",
    "lognormvariate", "normalvariate", "paretovariate", "randbytes", "randint", "random",
    "randrange", "sample", "seed", "shuffle", "triangular", "uniform", "vonmisesvariate",
    "weibullvariate",
})

_STATIC_VALUES: dict[tuple[str, frozenset[str]], tuple[dict[str, object], dict[str, str]]] = {}
#: ids of every value a view or the builtins hand out; those objects live as long as the
#: process (the caches keep them alive, so the ids stay valid) and must not be changed.
_SHARED_IDS: set[int] = {id(v) for v in _BASE_BUILTINS.values()}
_CALLABLE_TYPES = (types.FunctionType, types.BuiltinFunctionType, types.MethodType,
                   types.BuiltinMethodType, types.MethodWrapperType, types.WrapperDescriptorType,
                   types.MethodDescriptorType, types.ClassMethodDescriptorType,
                   types.GetSetDescriptorType, types.MemberDescriptorType, functools.partial)


def _freeze(value: object) -> object:
    """Module-level containers are shared by every call in the process: hand out copies that
    cannot be changed (``hashlib.algorithms_available.clear()`` must not reach the next call)."""
    if isinstance(value, (set, frozenset)) and type(value) in (set, frozenset):
        return frozenset(value)
    if isinstance(value, list) and type(value) is list:
        return tuple(value)
    if isinstance(value, dict) and type(value) is dict:
        return types.MappingProxyType(dict(value))
    return value


def _static_values(module: str, names: frozenset[str]) -> tuple[dict[str, object],
                                                                  dict[str, str]]:
    """The module's allowed values, imported once per process per (module, names)."""
    key = (module, names)
    hit = _STATIC_VALUES.get(key)
    if hit is not None:
        return hit
    real = importlib.import_module(module)
    overrides = _STATIC_OVERRIDES.get(module, {})
    values: dict[str, object] = {}
    refused: dict[str, str] = {}
    for name in sorted(names):
        if name in overrides:
            values[name] = overrides[name]
            continue
        try:
            value = getattr(real, name)
        except AttributeError:
            continue  # not on this Python version
        if isinstance(value, types.ModuleType):
            refused[name] = "it is a module; modules are reachable only as views of " \
                            "whitelisted names"
            continue
        values[name] = _freeze(value)
    _SHARED_IDS.update(id(v) for v in values.values())
    _STATIC_VALUES[key] = (values, refused)
    return values, refused


def _ticking(iterable: Iterable[Any], tick: Callable[[], object]) -> Iterator[Any]:
    """Iterate with a tick per item, so an endless C-level source notices interrupts."""
    for item in iterable:
        tick()
        yield item


def _view(module: str, names: frozenset[str], tick: Callable[[], object]) -> ModuleView:
    static, refused = _static_values(module, names)
    values = static
    if module == "random":
        import random

        rng = random.Random()  # seeded from os.urandom: calls share no generator state
        values = dict(static)
        for name in _RANDOM_METHODS & names:
            values[name] = getattr(rng, name)
    elif module == "itertools":
        values = dict(static)
        if "count" in names:
            values["count"] = lambda start=0, step=1: _ticking(
                itertools.count(start, step), tick)
        if "cycle" in names:
            values["cycle"] = lambda iterable: _ticking(itertools.cycle(iterable), tick)
        if "repeat" in names:
            def repeat(obj: object, times: int | None = None) -> Iterator[object]:
                if times is None or times > RANGE_FAST:
                    return _ticking(itertools.repeat(obj) if times is None
                                    else itertools.repeat(obj, times), tick)
                return itertools.repeat(obj, times)
            values["repeat"] = repeat
    return ModuleView(module, values, refused)


# --------------------------------------------------------------------------------------------
# per-call globals


def _exception_base(base: object) -> bool:
    """A class from outside the call may be a base only if it is a plain exception class whose
    hierarchy runs no class-creation hooks."""
    return (isinstance(base, type) and type(base) is type and issubclass(base, Exception)
            and not any("__init_subclass__" in vars(c) for c in base.__mro__
                        if c is not object))


def guarded_type(*args: object) -> type:
    """One-argument ``type()``. Three arguments would create classes with arbitrary
    dunders; the type of a class (``type(int)`` is ``type``) would give that back.

    ``build_globals`` wraps this per call so that the type of a range is the call's guarded
    ``range`` (``type(range(1))(10**15)`` must not hand out the real, unticked ``range``).
    """
    if len(args) != 1:
        raise PolicyViolation("type() takes exactly one argument in wormhole functions")
    result = type(args[0])
    if issubclass(result, type):
        raise PolicyViolation("the type of a class is not available")
    return result


class _Call:
    """What belongs to one call: its hooks and the objects it created."""

    __slots__ = ("tick", "print_fn", "glb", "user_classes")

    def __init__(self, tick: Callable[[], None], print_fn: Callable[[str], None],
                 glb: dict[str, object]) -> None:
        self.tick = tick
        self.print_fn = print_fn
        self.glb = glb
        self.user_classes: set[type] = set()


class Namespace:
    """The globals of calls under one whitelist: built once, entered once per call.

    The guarded builtins, hooks and module views are closures built here once (per process and
    whitelist) instead of per call; what belongs to a call (its tick, its print sink, its own
    globals and classes) lives in a small ``_Call`` that :meth:`enter` swaps in and
    :meth:`leave` swaps back out, so calls nested through SQL (in-process) each see their own.
    Every call still gets a fresh globals dict; nothing a call can change is shared: the
    builtins dict is not reachable from user code (``__builtins__`` is an underscore name), the
    closures and views refuse attribute writes, and classes and functions belong to the call
    that defined them.
    """

    def __init__(self, modules: Mapping[str, frozenset[str] | None]) -> None:
        self.modules = modules
        self.cur: _Call | None = None
        views: dict[str, ModuleView] = {}

        def tick() -> None:
            cur = self.cur
            if cur is not None:
                cur.tick()

        def guarded_import(name: str, globals: object = None, locals: object = None,
                           fromlist: Iterable[str] | None = (), level: int = 0) -> ModuleView:
            if type(name) is not str or level != 0:
                raise ImportError("relative imports are not allowed")
            if name not in modules:
                raise ImportError(f"module {name!r} is not allowed")
            if "." in name and not fromlist:
                raise ImportError(f"'import {name}' is not allowed; use 'from {name} import ...'")
            try:
                names = allowed_names(name, modules)
            except LookupError as exc:
                raise ImportError(str(exc)) from None
            for wanted in fromlist or ():
                if type(wanted) is not str or wanted not in names:
                    raise ImportError(f"cannot import {wanted!r} from {name!r}")
            view = views.get(name)
            if view is None:
                view = views[name] = _view(name, names, tick)
            return view

        def build_class(func: Callable[[], None], name: str, *bases: object,
                        **keywords: object) -> type:
            if keywords:
                raise PolicyViolation("class keywords (metaclass=...) are not allowed")
            user_classes = self._call().user_classes
            for base in bases:
                if not ((isinstance(base, type) and base in user_classes)
                        or _exception_base(base)):
                    raise PolicyViolation(
                        f"class {name!r} may not inherit from {base!r}: bases must be your own "
                        f"classes or exception classes")
            cls: type = builtins.__build_class__(func, name, *bases)
            user_classes.add(cls)
            return cls

        def guarded_range(*args: int) -> Iterable[int]:
            r = range(*args)
            try:
                n = len(r)
            except OverflowError:
                n = RANGE_FAST + 1
            return r if n <= RANGE_FAST else _ticking(r, tick)

        def call_type(*args: object) -> Any:
            result = guarded_type(*args)
            # the real range would build long ranges that sum()/any() walk in C, unticked
            return guarded_range if result is range else result

        def guarded_iter(obj: Any, *sentinel: object) -> Iterator[Any]:
            if not sentinel:
                return iter(obj)
            # iter(callable, sentinel) over a builtin (iter(int, 1)) is an endless C loop
            return _ticking(iter(obj, *sentinel), tick)

        def guarded_print(*args: object, sep: str | None = " ", end: str | None = "\n",
                          file: object = None, flush: bool = False) -> None:
            if file is not None:
                raise PolicyViolation("print(file=...) is not available; print() output is "
                                      "returned to the client")
            sep = " " if sep is None else sep
            end = "\n" if end is None else end
            if type(sep) is not str or type(end) is not str:
                raise TypeError("sep and end must be str")
            self._call().print_fn(sep.join([str(a) for a in args]) + end)

        def mutable(obj: object) -> bool:
            """May user code change ``obj``'s attributes?

            Yes for the call's own classes, their instances and its own functions, and for
            other objects the call created (a ``decimal.Context``, a ``TextWrapper``). No for
            anything shared by every call in the process: classes and functions it did not
            define (module classes and functions: trusted code calls them later), module
            views, and the values a view or the builtins hand out (``calendar.month_name``).
            """
            cur = self._call()
            if type(obj) in cur.user_classes or (isinstance(obj, type)
                                                 and obj in cur.user_classes):
                return True
            if type(obj) is types.FunctionType:
                return obj.__globals__ is cur.glb
            if isinstance(obj, (type, ModuleView, *_CALLABLE_TYPES)):
                return False
            return id(obj) not in _SHARED_IDS

        def guarded_setattr(obj: object, name: str, value: object) -> None:
            _check_attribute_name(name)
            if not mutable(obj):
                raise PolicyViolation(
                    f"cannot set attribute {name!r} on a {type(obj).__name__!r} object: only "
                    f"your own classes, their instances and your functions can be changed")
            setattr(obj, name, value)

        def guarded_delattr(obj: object, name: str) -> None:
            _check_attribute_name(name)
            if not mutable(obj):
                raise PolicyViolation(
                    f"cannot delete attribute {name!r} of a {type(obj).__name__!r} object")
            delattr(obj, name)

        self.builtins: dict[str, object] = {
            **_BASE_BUILTINS,
            "pow": guarded_pow,
            "type": call_type,
            "range": guarded_range,
            "iter": guarded_iter,
            "print": guarded_print,
            "__import__": guarded_import,
            "__build_class__": build_class,
        }
        self.template: dict[str, object] = {
            "__builtins__": self.builtins,
            "__name__": _MODULE_NAME,
            "DatabaseError": DatabaseError,
            GETATTR: guarded_getattr,
            SETATTR: guarded_setattr,
            DELATTR: guarded_delattr,
            POW: guarded_pow,
            MUL: guarded_mul,
            LSHIFT: guarded_lshift,
            IPOW: guarded_ipow,
            IMUL: guarded_imul,
            ILSHIFT: guarded_ilshift,
        }

    def _call(self) -> _Call:
        cur = self.cur
        if cur is None:
            raise PolicyViolation("this wormhole call has ended")
        return cur

    def enter(self, *, query: Callable[..., Rows], print_fn: Callable[[str], None],
              tick: Callable[[], None], defer: Callable[..., None] | None = None,
              ) -> tuple[dict[str, object], _Call | None]:
        """Fresh globals for one call; returns them and the token :meth:`leave` needs.

        ``defer(line, sql, *params)`` runs a statement whose result is discarded
        (``policy._defer_discarded_queries``); without one it is ``query``."""
        glb = self.template.copy()
        glb["query"] = query
        glb[DEFER] = defer if defer is not None else _deferred_by(query)
        glb[TICK] = tick
        previous = self.cur
        self.cur = _Call(tick, print_fn, glb)
        return glb, previous

    def leave(self, previous: _Call | None) -> None:
        """End the call :meth:`enter` started (the enclosing call, if any, is current again)."""
        self.cur = previous


def _deferred_by(query: Callable[..., Rows]) -> Callable[..., None]:
    def defer(line: int, sql: str, *params: object) -> None:
        query(sql, *params)

    return defer


def build_globals(
    *,
    modules: Mapping[str, frozenset[str] | None],
    query: Callable[..., Rows],
    print_fn: Callable[[str], None],
    tick: Callable[[], None],
) -> dict[str, object]:
    """Fresh globals for one call of checked code: ``exec(checked.code, build_globals(...))``.

    ``modules`` is the DBA's whitelist (as for ``policy.check``); ``query`` is bound as the
    global ``query``; ``print_fn`` receives each ``print()``'s text (the caller caps the total);
    ``tick`` is called between Python-level steps and must return None (it raises to stop the
    call; once it has raised it should keep raising). Nothing is shared between calls except
    immutable, vetted values. (The engine keeps one :class:`Namespace` per whitelist and
    enters it per call; this builds a new one, for tests and one-off use.)
    """
    glb, _ = Namespace(modules).enter(query=query, print_fn=print_fn, tick=tick)
    return glb
