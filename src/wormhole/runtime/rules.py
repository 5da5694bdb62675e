"""The policy's rules as data: hook names, forbidden names, the module catalogue, findings.

Split from ``policy.py`` (the checker, which needs ``ast``) so that code that only *runs*
checked functions (``namespace``, ``engine``) never imports the parser: a backend's first call
of an already-checked function loads none of it. ``policy`` re-exports every name here.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import CodeType

#: code is compiled under this filename, so tracebacks say which frames are the user's own and
#: line numbers are relative to the shipped source (line 1 = the ``def`` line).
FILENAME = "<wormhole>"

MAX_SOURCE_CHARS = 64 * 1024
#: AST nesting; CPython's own recursive passes (ast construction, compile) fail somewhere past
#: 1,000 and a 700-term sum is already ~700 deep. 200 leaves room for the hooks we add.
MAX_DEPTH = 200
MAX_NODES = 50_000
#: most findings reported; past that the list stops being useful and only costs memory.
MAX_FINDINGS = 200

# --------------------------------------------------------------------------------------------
# hooks (namespace.build_globals binds every one of these)

TICK = "_wh_tick"
GETATTR = "_wh_getattr"
SETATTR = "_wh_setattr"
DELATTR = "_wh_delattr"
POW = "_wh_pow"
MUL = "_wh_mul"
LSHIFT = "_wh_lshift"
IPOW = "_wh_ipow"
IMUL = "_wh_imul"
ILSHIFT = "_wh_ilshift"
#: ``query(...)`` as a statement whose result is discarded, where its error could not be caught
#: (``policy._defer_discarded_queries``): ``_wh_defer(line, sql, *params)``
DEFER = "_wh_defer"
HOOKS = (TICK, GETATTR, SETATTR, DELATTR, POW, MUL, LSHIFT, IPOW, IMUL, ILSHIFT, DEFER)

#: attribute reads routed through ``_wh_getattr`` (see the module docstring).
DYNAMIC_ATTRIBUTES = frozenset({"format", "obj"})

# --------------------------------------------------------------------------------------------
# names


def _reasons(reason: str, *names: str) -> dict[str, str]:
    return {name: reason for name in names}


#: names user code may not use at all (read, bind or delete), with the reason in the message.
FORBIDDEN_NAMES: dict[str, str] = {
    **_reasons("runs arbitrary code", "eval", "exec", "compile"),
    **_reasons("reads files on the server", "open"),
    **_reasons("reads the server's standard input", "input"),
    **_reasons(
        "is an interactive helper added by the site module (help() imports modules, "
        "breakpoint() starts a debugger, exit() and quit() raise SystemExit)",
        "breakpoint", "help", "license", "credits", "copyright", "exit", "quit",
    ),
    **_reasons("exposes namespaces (introspection)", "vars", "dir", "globals", "locals"),
    **_reasons(
        "takes the attribute name as a string, which would bypass the attribute checks",
        "getattr", "setattr", "delattr", "hasattr",
    ),
    **_reasons(
        "is the root of the class graph (object.__subclasses__() reaches every class)",
        "object",
    ),
    **_reasons("gives raw access to buffers", "memoryview"),
    **_reasons(
        "creates descriptors, which are not supported in wormhole functions",
        "classmethod", "staticmethod", "property",
    ),
    **_reasons("is PL/Python's own handle and is out of reach", "plpy", "GD", "SD", "TD"),
    **_reasons(
        "cannot be caught or raised by wormhole functions (it would swallow the runtime's "
        "interrupt)",
        "BaseException", "SystemExit", "KeyboardInterrupt", "GeneratorExit",
        "BaseExceptionGroup", "ExceptionGroup",
    ),
    **_reasons("is the module of all builtins", "builtins"),
}

#: attribute names that are never allowed, even without a leading underscore: frames, code and
#: generator internals (CVE-2023-37271 walked ``gi_frame.f_back``), ``format_map`` (traverses
#: attributes from a string, CVE-2023-41039) and ``mro`` (``ValueError.mro()[-2]`` is
#: ``BaseException``, which could then catch the runtime's interrupt).
FORBIDDEN_ATTRIBUTES: frozenset[str] = frozenset({
    "format_map", "mro",
    "gi_frame", "gi_code", "gi_yieldfrom", "gi_running", "gi_suspended", "gi_yieldframe",
    "cr_frame", "cr_code", "cr_await", "cr_running", "cr_suspended", "cr_origin",
    "ag_frame", "ag_code", "ag_await", "ag_running",
    "f_back", "f_builtins", "f_code", "f_globals", "f_locals", "f_lasti", "f_lineno",
    "f_trace", "f_trace_lines", "f_trace_opcodes",
    "tb_frame", "tb_next", "tb_lasti", "tb_lineno",
    "co_code", "co_consts", "co_names", "co_varnames", "co_cellvars", "co_freevars",
    "co_filename", "co_name", "co_qualname", "co_firstlineno", "co_lnotab", "co_linetable",
    "co_exceptiontable", "co_flags", "co_argcount", "co_posonlyargcount",
    "co_kwonlyargcount", "co_nlocals", "co_stacksize", "co_positions", "co_lines",
    "func_globals", "func_code", "func_closure", "func_defaults", "func_dict",
    "im_func", "im_self", "im_class", "cell_contents",
})
#: prefixes of generator/coroutine internals; no ordinary API uses them.
_FORBIDDEN_ATTRIBUTE_PREFIXES = ("gi_", "cr_", "ag_")

#: dunder methods a class body may *define* (never call or read: ``x.__eq__`` stays forbidden).
#: Deliberately small. Left out: ``__getattr__``/``__getattribute__``/``__setattr__`` (they
#: intercept the runtime's own attribute guards), ``__format__`` (str.format), ``__del__`` (runs
#: at garbage collection, outside any call), ``__init_subclass__``/``__set_name__``/
#: ``__class_getitem__``/``__instancecheck__`` (implicit calls from class machinery),
#: ``__reduce__*``/``__getstate__`` (serialisation hooks), ``__index__``/``__int__`` (called by
#: C code inside the size guards).
DUNDER_METHODS = frozenset({
    "__init__", "__repr__", "__str__",
    "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__hash__", "__bool__",
    "__len__", "__iter__", "__next__", "__contains__", "__getitem__",
    "__enter__", "__exit__",
    "__add__", "__sub__", "__mul__", "__truediv__", "__neg__",
})

#: exceptions that must not be caught: the runtime's ``Interrupted`` is a BaseException.
_UNCATCHABLE = frozenset({
    "BaseException", "SystemExit", "KeyboardInterrupt", "GeneratorExit",
    "BaseExceptionGroup", "ExceptionGroup",
})

#: the exception classes namespace.py provides as builtins; the only builtins a class may
#: inherit from (plus the user's own classes and, checked at run time, module exceptions).
EXCEPTION_NAMES = frozenset({
    "Exception", "ArithmeticError", "AssertionError", "AttributeError", "FloatingPointError",
    "IndexError", "KeyError", "LookupError", "NameError", "NotImplementedError",
    "OverflowError", "RecursionError", "RuntimeError", "StopIteration", "TypeError",
    "UnboundLocalError", "UnicodeError", "UnicodeDecodeError", "UnicodeEncodeError",
    "ValueError", "ZeroDivisionError", "MemoryError", "DatabaseError",
})

#: names every function sees without importing; an import alias may not shadow them.
GLOBAL_NAMES = frozenset({"query", "DatabaseError", "print"})

# --------------------------------------------------------------------------------------------
# the catalogue: module -> vetted public names (used when the DBA whitelists a module with
# NULL names). Never a module object: ``datetime.sys``, ``json.codecs``, ``re.enum``,
# ``statistics.sys``, ``random._os``, ``fractions.sys``, ``calendar.sys``, ``uuid.os`` are
# measured re-export escape hatches on this Python. Names missing on an older Python are skipped.

CATALOGUE: dict[str, frozenset[str]] = {
    "math": frozenset({
        "acos", "acosh", "asin", "asinh", "atan", "atan2", "atanh", "cbrt", "ceil", "comb",
        "copysign", "cos", "cosh", "degrees", "dist", "e", "erf", "erfc", "exp", "exp2",
        "expm1", "fabs", "factorial", "floor", "fmod", "frexp", "fsum", "gamma", "gcd", "hypot",
        "inf", "isclose", "isfinite", "isinf", "isnan", "isqrt", "lcm", "ldexp", "lgamma", "log",
        "log10", "log1p", "log2", "modf", "nan", "nextafter", "perm", "pi", "pow", "prod",
        "radians", "remainder", "sin", "sinh", "sqrt", "tan", "tanh", "tau", "trunc", "ulp",
        # factorial/comb/perm are replaced by size-guarded versions in namespace.py
    }),
    "cmath": frozenset({
        "acos", "acosh", "asin", "asinh", "atan", "atanh", "cos", "cosh", "e", "exp", "inf",
        "infj", "isclose", "isfinite", "isinf", "isnan", "log", "log10", "nan", "nanj",
        "phase", "pi", "polar", "rect", "sin", "sinh", "sqrt", "tan", "tanh", "tau",
    }),
    # json: no dump/load (they take file objects), no JSONEncoder/JSONDecoder classes (subclass
    # hooks), no codecs/decoder/encoder/scanner (modules).
    "json": frozenset({"dumps", "loads", "JSONDecodeError"}),
    # datetime: no sys, no datetime_CAPI (a PyCapsule of C pointers).
    "datetime": frozenset({
        "date", "datetime", "time", "timedelta", "timezone", "tzinfo", "MINYEAR", "MAXYEAR",
        "UTC",
    }),
    # decimal: no getcontext/setcontext/DefaultContext/BasicContext/ExtendedContext: the
    # current context is per thread and lives for the whole process, so changing it would
    # change every later call (and the runtime's own Decimal handling). localcontext() and
    # Context() give a function its own precision.
    "decimal": frozenset({
        "Decimal", "Context", "localcontext", "DecimalTuple",
        "ROUND_05UP", "ROUND_CEILING", "ROUND_DOWN", "ROUND_FLOOR", "ROUND_HALF_DOWN",
        "ROUND_HALF_EVEN", "ROUND_HALF_UP", "ROUND_UP",
        "MAX_EMAX", "MAX_PREC", "MIN_EMIN", "MIN_ETINY",
        "DecimalException", "Clamped", "DivisionByZero", "FloatOperation", "Inexact",
        "InvalidOperation", "Overflow", "Rounded", "Subnormal", "Underflow",
    }),
    # fractions: no sys, no math/numbers/operator/re modules it imports.
    "fractions": frozenset({"Fraction"}),
    "statistics": frozenset({
        "NormalDist", "StatisticsError", "correlation", "covariance", "fmean",
        "geometric_mean", "harmonic_mean", "linear_regression", "mean", "median",
        "median_grouped", "median_high", "median_low", "mode", "multimode", "pstdev",
        "pvariance", "quantiles", "stdev", "variance",
    }),
    # re: no enum/sre_compile/sre_parse/copyreg/functools (modules), no template()/purge().
    # Catastrophic backtracking runs in C and cannot be interrupted in-process.
    "re": frozenset({
        "compile", "escape", "findall", "finditer", "fullmatch", "match", "search", "split",
        "sub", "subn", "error", "Pattern", "Match",
        "A", "ASCII", "I", "IGNORECASE", "L", "LOCALE", "M", "MULTILINE", "NOFLAG", "S",
        "DOTALL", "U", "UNICODE", "X", "VERBOSE",
    }),
    # string: constants and capwords only. Formatter traverses attributes and returns live
    # objects (CVE-2023-41039, CVE-2026-76825); Template is left out to keep one formatting
    # path (f-strings and the guarded str.format).
    "string": frozenset({
        "ascii_letters", "ascii_lowercase", "ascii_uppercase", "capwords", "digits",
        "hexdigits", "octdigits", "printable", "punctuation", "whitespace",
    }),
    # collections: no abc (a module), no UserDict/UserList/UserString (only useful as bases).
    "collections": frozenset({
        "ChainMap", "Counter", "OrderedDict", "defaultdict", "deque", "namedtuple",
    }),
    # itertools: count/cycle/repeat are wrapped so an endless one still notices interrupts.
    "itertools": frozenset({
        "accumulate", "chain", "combinations", "combinations_with_replacement", "compress",
        "count", "cycle", "dropwhile", "filterfalse", "groupby", "islice", "pairwise",
        "permutations", "product", "repeat", "starmap", "takewhile", "tee", "zip_longest",
    }),
    # functools: no wraps/update_wrapper (they copy arbitrary attributes, dunders included,
    # between objects), no singledispatch/partialmethod/cached_property (descriptors,
    # __set_name__), no total_ordering (sets dunders with setattr).
    "functools": frozenset({"cmp_to_key", "lru_cache", "cache", "partial", "reduce"}),
    # operator: no attrgetter/methodcaller (attribute names as strings bypass the attribute
    # checks), no in-place i* functions (they would bypass the size guards); mul/pow/lshift are
    # replaced by the guarded versions.
    "operator": frozenset({
        "abs", "add", "and_", "concat", "contains", "countOf", "eq", "floordiv", "ge",
        "getitem", "gt", "index", "indexOf", "inv", "invert", "is_", "is_not", "itemgetter",
        "le", "lshift", "lt", "mod", "mul", "ne", "neg", "not_", "or_", "pos", "pow", "rshift",
        "sub", "truediv", "truth", "xor",
    }),
    # random: the functions are bound to a fresh Random() per call (namespace.py), so calls
    # share no generator state and seed() only affects the caller. No _os (a module).
    "random": frozenset({
        "Random", "SystemRandom", "betavariate", "choice", "choices", "expovariate",
        "gammavariate", "gauss", "getrandbits", "lognormvariate", "normalvariate",
        "paretovariate", "randbytes", "randint", "random", "randrange", "sample", "seed",
        "shuffle", "triangular", "uniform", "vonmisesvariate", "weibullvariate",
    }),
    "heapq": frozenset({
        "heapify", "heappop", "heappush", "heappushpop", "heapreplace", "merge", "nlargest",
        "nsmallest",
    }),
    "bisect": frozenset({
        "bisect", "bisect_left", "bisect_right", "insort", "insort_left", "insort_right",
    }),
    # uuid: no uuid1/getnode (they may run ifconfig/ip/arp as subprocesses to find a MAC
    # address), no os/sys (modules), no SafeUUID (enum members are shared, mutable objects).
    "uuid": frozenset({
        "UUID", "uuid3", "uuid4", "uuid5", "NAMESPACE_DNS", "NAMESPACE_OID",
        "NAMESPACE_URL", "NAMESPACE_X500",
    }),
    # hashlib: no file_digest (file objects), no pbkdf2_hmac/scrypt (deliberately slow C loops
    # that cannot be interrupted in-process), no shake_* (digest length is caller-chosen).
    "hashlib": frozenset({
        "algorithms_available", "algorithms_guaranteed", "blake2b", "blake2s", "md5", "new",
        "sha1", "sha224", "sha256", "sha384", "sha3_224", "sha3_256", "sha3_384", "sha3_512",
        "sha512",
    }),
    "base64": frozenset({
        "a85decode", "a85encode", "b16decode", "b16encode", "b32decode", "b32encode",
        "b32hexdecode", "b32hexencode", "b64decode", "b64encode", "b85decode", "b85encode",
        "standard_b64decode", "standard_b64encode", "urlsafe_b64decode", "urlsafe_b64encode",
    }),
    # textwrap: the functions only. TextWrapper has a class-level dict
    # (unicode_whitespace_trans) that every call in the process would share and could change.
    "textwrap": frozenset({"dedent", "fill", "indent", "shorten", "wrap"}),
    # calendar: no sys; no setfirstweekday (module-global state shared by later calls), no
    # LocaleTextCalendar/LocaleHTMLCalendar (they call locale.setlocale, which is process-wide
    # and would change the backend's locale), no prcal/prmonth (print to the server log), no
    # HTMLCalendar (class-level lists, cssclasses, shared by every call and mutable).
    "calendar": frozenset({
        "Calendar", "TextCalendar", "IllegalMonthError", "IllegalWeekdayError",
        "MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY",
        "calendar", "day_abbr", "day_name", "firstweekday", "isleap", "leapdays", "month",
        "month_abbr", "month_name", "monthcalendar", "monthrange", "timegm", "weekday",
        "weekheader",
    }),
    # time: clocks and conversions only. No sleep (blocks in C: an in-process call could not be
    # cancelled), no tzset (changes the process's time zone), no clock_settime*.
    "time": frozenset({
        "altzone", "asctime", "ctime", "daylight", "gmtime", "localtime", "mktime",
        "monotonic", "monotonic_ns", "perf_counter", "perf_counter_ns", "process_time",
        "process_time_ns", "strftime", "strptime", "struct_time", "time", "time_ns",
        "timezone", "tzname",
    }),
    # unicodedata: no ucd_3_2_0 (an object of the old database, not needed).
    "unicodedata": frozenset({
        "bidirectional", "category", "combining", "decimal", "decomposition", "digit",
        "east_asian_width", "is_normalized", "lookup", "mirrored", "name", "normalize",
        "numeric", "unidata_version",
    }),
}

#: names refused even when a DBA lists them explicitly: they defeat the policy's invariant that
#: every attribute name appears literally in the source, or they return live interpreter state.
HARD_DENY: dict[str, frozenset[str]] = {
    "operator": frozenset({"attrgetter", "methodcaller"}),
    "string": frozenset({"Formatter"}),
    "functools": frozenset({"wraps", "update_wrapper"}),
    "decimal": frozenset({"getcontext", "setcontext", "DefaultContext", "BasicContext",
                          "ExtendedContext"}),
}


def _dba_hint(module: str) -> str:
    return (
        f"a DBA can allow it with: INSERT INTO wormhole_allowed_modules (module_name, allowed) "
        f"VALUES ('{module}', true)"
    )


def allowed_names(module: str, modules: Mapping[str, frozenset[str] | None]) -> frozenset[str]:
    """The names ``module`` exposes to user code under this whitelist.

    Raises ``KeyError`` if the module is not whitelisted and ``LookupError`` (with the message
    for the DBA) if it is whitelisted with NULL names but wormhole has no catalogue for it.
    Underscore names and ``HARD_DENY`` names are removed even when the DBA listed them.
    """
    names = modules[module]
    if names is None:
        if module not in CATALOGUE:
            raise LookupError(
                f"module {module!r} is whitelisted without a list of names and wormhole has no "
                f"catalogue for it; a DBA must list the public names functions may use"
            )
        names = CATALOGUE[module]
    deny = HARD_DENY.get(module, frozenset())
    return frozenset(n for n in names if n.isidentifier() and not n.startswith("_")
                     and n not in deny)


# --------------------------------------------------------------------------------------------
# results


class Finding:
    """One reason the policy refuses a function: line (1 = the ``def``), column, rule, message."""

    __slots__ = ("lineno", "col", "rule", "message")

    def __init__(self, lineno: int, col: int, rule: str, message: str) -> None:
        self.lineno = lineno
        self.col = col
        self.rule = rule
        self.message = message

    def _key(self) -> tuple[int, int, str, str]:
        return (self.lineno, self.col, self.rule, self.message)

    def __eq__(self, other: object) -> bool:
        return type(other) is Finding and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (f"Finding(lineno={self.lineno!r}, col={self.col!r}, rule={self.rule!r}, "
                f"message={self.message!r})")


class PolicyError(Exception):
    """The function was refused. ``findings`` holds every reason, sorted by position."""

    def __init__(self, findings: list[Finding]) -> None:
        self.findings = list(findings)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(f"line {f.lineno}: {f.message}" for f in self.findings)


#: a value the chain knows: ``(source, keys)``, its source a parameter's index (``>= 0``) or
#: ``-1 - i`` for what step ``i`` assigned, subscripted with literal keys
AheadRef = tuple[int, tuple[int | str, ...]]
#: the test of an ``if`` the chain goes past (``policy._ahead_test``), as nested tuples:
#: ``("ref", source, keys)``, ``("const", value)``, ``("cmp", left, ((op, right), ...))``,
#: ``("and", (test, ...))``, ``("or", (test, ...))``, ``("not", test)``
AheadTest = tuple[object, ...]
#: one statement of a function's leading chain (``policy.ahead_statements``): ``(sql,
#: arguments, keys, line, tests)``: its arguments are references (:data:`AheadRef`); its own
#: ``keys`` give what it assigns (its rows, subscripted) for the steps after it; ``line`` is 0
#: for a statement the worker waits for (``query``), else the line of a statement whose result
#: the function discards (``nowait``); ``tests`` are the tests of the ``if`` statements before
#: it, each of which must be false for the function to get there
AheadStep = tuple[str, tuple[AheadRef, ...], tuple[int | str, ...], int, tuple[AheadTest, ...]]
#: ``(positional parameters, steps)``: the statements a function starts with, whatever it is
#: given, for a call with exactly that many positional arguments and no keywords
Ahead = tuple[int, tuple[AheadStep, ...]]
#: what a function whose whole body is its chain returns (``policy.ahead_result``): ``(tests,
#: value)``, the tests of the ``if`` statements after the last step and the returned value as
#: nested tuples: ``("const", value)``, ``("ref", source, keys)``, ``("step",)`` (the last
#: step's value: ``return query(...)[0]``), ``("dict", ((key, value), ...))`` with literal
#: keys, ``("list", (value, ...))``, ``("tuple", (value, ...))``
AheadValue = tuple[object, ...]
AheadResult = tuple[tuple[AheadTest, ...], AheadValue]
#: the longest chain kept
MAX_AHEAD = 8
#: the largest test of an ``if`` a chain goes past: nodes, and depth (``("not", ...)`` nests)
MAX_AHEAD_TEST_NODES = 32
MAX_AHEAD_TEST_DEPTH = 8
#: the longest arguments (their JSON text, characters) of a call whose statements the
#: backend runs ahead or finishes itself: what it evaluates then (tests, the result) costs at
#: most what arguments this small can make it cost, and the worker cannot fail to decode them
MAX_AHEAD_ARGS = 16384
#: the largest returned value the backend builds itself (``policy.ahead_result``)
MAX_AHEAD_VALUE_NODES = 64
MAX_AHEAD_VALUE_DEPTH = 8
#: the comparison operators a test may use (``is``/``is not`` only against None, True, False:
#: identity of any other value differs between the backend and the worker)
AHEAD_COMPARISONS = ("<", "<=", ">", ">=", "==", "!=", "in", "not in", "is", "is not")


class Checked:
    """A function that passed: its name, compiled module code, parameter names and hash.

    ``exec(code, namespace.build_globals(...))`` defines the function under ``name``.
    """

    __slots__ = ("name", "code", "params", "source_hash", "ahead", "result")

    def __init__(self, name: str, code: CodeType, params: tuple[str, ...],
                 source_hash: str, ahead: Ahead | None = None,
                 result: AheadResult | None = None) -> None:
        self.name = name
        self.code = code
        self.params = params
        self.source_hash = source_hash
        #: the statements every call starts with, as far as the source says so
        #: (``policy.ahead_statements``)
        self.ahead = ahead
        #: what it returns when those statements are its whole body (``policy.ahead_result``)
        self.result = result

    def __repr__(self) -> str:
        return f"Checked(name={self.name!r}, params={self.params!r}, hash={self.source_hash!r})"


