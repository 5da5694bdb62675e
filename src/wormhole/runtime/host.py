"""The backend side: what the SQL functions call.

Each plpython3u function in schema.sql is a two-line body that looks the runtime up in ``GD``
(loading it once per backend) and calls one function here with the real ``plpy``. Everything
about *where* user code runs is decided in one place, :func:`choose_executor`:

* DBA-approved hashes (``wormhole_approve``) and roles the DBA trusts run in-process: fastest,
  no OS boundary, still behind the policy, loops still interruptible;
* everybody else runs in the confined worker (``sandbox.WorkerExecutor``), or not at all when the
  DBA has not enabled it (``wormhole_settings.untrusted_execution``).

In plain CPython (tests) ``plpy`` is ``wormhole.testing.PlpyShim`` over a real connection.
"""

from __future__ import annotations

import json
import math
import os
import re
import time

from . import VERSION, WORKER_MODULES, codec, engine, spawn
from .errors import DatabaseError, Interrupted, LimitExceeded
from .rules import (
    AHEAD_COMPARISONS,
    MAX_AHEAD,
    MAX_AHEAD_TEST_DEPTH,
    MAX_AHEAD_TEST_NODES,
    MAX_AHEAD_VALUE_DEPTH,
    MAX_AHEAD_VALUE_NODES,
)
from .spi import SpiPort

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

    from . import policy, sandbox
    from .rules import Ahead, AheadRef, AheadResult, AheadStep, AheadTest, AheadValue
else:
    class _Sibling:
        """A sibling module imported on first use, then bound in its place: a warm in-process
        call never needs the parser (``policy``) or the worker's machinery (``sandbox``), and
        a new backend should not pay for importing them."""

        def __init__(self, name: str) -> None:
            self._name = name

        def __getattr__(self, attr: str) -> object:
            module = __import__(f"{__package__}.{self._name}", fromlist=["_"])
            globals()[self._name] = module
            return getattr(module, attr)

    policy = _Sibling("policy")
    sandbox = _Sibling("sandbox")

#: SQLSTATEs wormhole raises itself (class WH is unused by PostgreSQL).
WH_REJECTED = "WH002"
WH_NOT_FOUND = "WH004"
WH_BAD_INPUT = "WH005"
WH_UNAVAILABLE = "WH008"
WH_ROLE_CHANGED = "WH009"
WH_REENTRY = "WH010"

MAX_SOURCE_BYTES = 256 * 1024
_HASH = re.compile(r"[0-9a-f]{64}")


class Backend:
    """Per-backend state, kept in ``GD`` for the life of the session."""

    def __init__(self, sources: Mapping[str, str]) -> None:
        #: the runtime's sources (the boot's mapping fetches them only when first needed)
        self.sources = sources
        self.plans: dict[str, Any] = {}
        #: the host's own prepared statements, apart from ``plans`` (which holds the SQL text
        #: of user statements as keys: no user text can name one of these)
        self.host_plans: dict[str, Any] = {}
        self.cfgver: int | None = None
        #: ``str(cfgver)``: the compile-cache key of the whitelist
        self.cfgkey = ""
        #: the SpiPort every call of this backend uses (it holds the per-backend plans)
        self.port: SpiPort | None = None
        self.modules: dict[str, frozenset[str] | None] = {}
        self.limits = engine.Limits()
        self.settings: dict[str, str] = {}
        self.source_cache: dict[str, _Stored] = {}
        self.approved: frozenset[str] = frozenset()
        self.trusted: frozenset[str] = frozenset()
        #: the prepared statement ``_current_role_name`` runs
        self.role_name_plan: Any = None
        self.worker: sandbox.WorkerExecutor | None = None
        #: (plpy, executor) of ``_in_process``, built on the first in-process call
        self.in_process: tuple[Any, Executor] | None = None
        #: ``(plpy, executor, run)`` of ``_in_worker``, built once per ``plpy`` and executor
        self.in_worker: tuple[Any, sandbox.WorkerExecutor, Executor] | None = None
        self.interrupt_flag: Any = _interrupt_flag()
        self.user_ids: Any = _user_id_functions()
        #: PostgreSQL's ``XactIsoLevel`` (ctypes); None outside a backend
        self.isolation: Any = _backend_int("XactIsoLevel")
        self.pid = os.getpid()
        #: a call is running in this backend's worker (nested calls through SQL are refused)
        self.worker_busy = False
        #: whether ``_repair_subtransaction_dealloc`` ran in this backend
        self.subxact_checked = False


_STATE_KEY = "wormhole.backend/" + VERSION

#: this process's id, kept current across ``os.fork`` (``os.getpid()`` is a system call, and
#: a warm call only needs to know that ``GD``'s state was made by this process)
_PID = [os.getpid()]


def _after_fork() -> None:
    _PID[0] = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
else:  # pragma: no cover - every POSIX Python has it
    _PID = None  # type: ignore[assignment]


def _pid() -> int:
    return os.getpid() if _PID is None else _PID[0]


def backend(GD: dict[str, Any], sources: Mapping[str, str]) -> Backend:
    state: Backend | None = GD.get(_STATE_KEY)
    if state is None or state.pid != _pid():
        state = Backend(sources)
        GD[_STATE_KEY] = state
    return state


def _interrupt_flag() -> Any:
    """PostgreSQL's ``InterruptPending`` flag, read through ctypes; None outside a backend.

    PL/Python never reaches ``CHECK_FOR_INTERRUPTS`` while Python runs, so cancel, timeouts and
    terminate go unnoticed. Reading the flag (a ``volatile sig_atomic_t`` in the postgres
    executable) tells us when to run any SPI statement, which then raises PostgreSQL's own error.
    """
    return _backend_int("InterruptPending")


def _backend_int(name: str) -> Any:
    """A global ``int`` of the postgres executable, read through ctypes; None elsewhere."""
    try:
        import ctypes

        return ctypes.c_int.in_dll(ctypes.CDLL(None), name)
    except Exception:  # noqa: BLE001 - not inside a backend (plain CPython)
        return None


#: ``XACT_READ_COMMITTED`` in PostgreSQL's xact.h
_XACT_READ_COMMITTED = 1

#: the key under which ``wormhole_execute``'s own ``SD`` remembers "configuration is current"
_CONFIG_MARK = "wormhole.config"


def _user_id_functions() -> Any:
    try:
        import ctypes

        lib = ctypes.CDLL(None)
        get_user, get_session = lib.GetUserId, lib.GetSessionUserId
        get_user.restype = get_session.restype = ctypes.c_uint
        get_user.argtypes = get_session.argtypes = []
        return (get_user, get_session)
    except Exception:  # noqa: BLE001 - not inside a backend
        return None


def _error(plpy: Any, message: str, sqlstate: str, detail: str | None = None,
           hint: str | None = None) -> BaseException:
    """An exception that ends the SQL statement with ``sqlstate`` (plpy.error keywords)."""
    try:
        plpy.error(message, detail=detail, hint=hint, sqlstate=sqlstate)
    except BaseException as exc:  # noqa: BLE001 - plpy.error always raises
        return exc
    raise AssertionError("plpy.error returned")  # pragma: no cover


#: how many throw-away ``plpy.subtransaction()`` objects the leak probe creates
_SUBXACT_PROBE = 256


def _repair_subtransaction_dealloc(plpy: Any) -> bool:
    """Stop PL/Python from leaking every ``plpy.subtransaction()`` object (once per backend).

    PostgreSQL 15's ``PLy_subtransaction_dealloc`` is an empty function (later releases drop
    it), so each object's 24 bytes are never returned to Python's allocator: one leaked block
    per call, since every call runs in a subtransaction (issue 5: ~32 bytes of backend RSS per
    call, forever). The objects come from ``PyObject_New``, so their type's ``tp_dealloc`` is
    pointed at ``PyObject_Free``, which is what the default deallocator of a plain (non-GC,
    static) type does. Only when a probe proves the leak, and only if a second probe proves the
    repair (else the old pointer is put back). Returns whether the type was repaired.
    """
    try:
        import ctypes
        import sys

        tp = type(plpy.subtransaction())
        if tp.__name__ != "PLySubtransaction" or tp.__flags__ & ((1 << 9) | (1 << 14)):
            return False  # not PL/Python's static, non-GC type (heap type or GC: leave it)
        if not hasattr(sys, "getallocatedblocks"):
            return False

        def leaked() -> int:
            before = sys.getallocatedblocks()
            for _ in range(_SUBXACT_PROBE):
                plpy.subtransaction()
            return sys.getallocatedblocks() - before

        if leaked() < _SUBXACT_PROBE:
            return False  # this PostgreSQL frees them
        # PyTypeObject: ob_refcnt, ob_type, ob_size, tp_name, tp_basicsize, tp_itemsize,
        # then tp_dealloc (CPython's stable layout since 3.0).
        slot = ctypes.c_void_p.from_address(id(tp) + 6 * ctypes.sizeof(ctypes.c_void_p))
        if ctypes.c_ssize_t.from_address(id(tp) + 4 * ctypes.sizeof(ctypes.c_void_p)).value \
                != tp.__basicsize__:
            return False  # not the layout we expect
        old = slot.value
        slot.value = ctypes.cast(ctypes.pythonapi.PyObject_Free, ctypes.c_void_p).value
        if leaked() >= _SUBXACT_PROBE // 2:
            slot.value = old
            return False
        return True
    except Exception:  # noqa: BLE001 - a repair that cannot run leaves PL/Python as it was
        return False


def _audit_log(plpy: Any, event: dict[str, Any]) -> None:
    """Write an audit line to the server log. Not transactional: survives any rollback."""
    try:
        plpy.log("wormhole audit: " + json.dumps(event, default=str, sort_keys=True))
    except Exception:  # noqa: BLE001 - auditing must never turn success into failure
        pass


# --- configuration ----------------------------------------------------------------------------

def _refresh_config(plpy: Any, state: Backend, SD: dict[str, Any] | None = None) -> None:
    """Reload whitelist, limits, settings, approvals and trusted roles when they changed.

    Every change to a wormhole control table bumps a configuration version (a one-row table,
    transactionally, by trigger) *and* touches ``wormhole_execute``'s catalog row (``ALTER
    FUNCTION ... COST 100``, which changes nothing but the row's version). PL/Python recompiles
    a procedure whose catalog row changed and gives it a fresh ``SD``, in every backend, at the
    first call after it processes that invalidation, which PostgreSQL does at the start of
    every transaction. So ``wormhole_execute`` keeps a mark in its own ``SD`` while the cached
    configuration is current and skips the version read altogether; a fresh ``SD`` means "read
    the version again". The mark is only set when the version was read in READ COMMITTED (a
    fresh snapshot): a REPEATABLE READ snapshot may predate the change that was just
    invalidated, so there the version is read on every call until a READ COMMITTED call
    confirms it. Other callers (``SD`` None) read the version every time.

    When the version moved, the backend reloads the rest through ``_wormhole_config()``, a
    SECURITY DEFINER function (regular roles cannot read the tables themselves).
    """
    if SD is not None and SD.get(_CONFIG_MARK) is state:
        return
    plan = state.host_plans.get("\0cfgver")
    if plan is None:
        plan = plpy.prepare(
            "SELECT version FROM public._wormhole_state WHERE id OPERATOR(pg_catalog.=) 1")
        state.host_plans["\0cfgver"] = plan
    rows = plpy.execute(plan)
    cfgver = int(rows[0]["version"]) if rows else -1
    if state.cfgver != cfgver:
        _load_config(plpy, state, cfgver)
    if SD is not None and state.isolation is not None \
            and state.isolation.value == _XACT_READ_COMMITTED:
        SD[_CONFIG_MARK] = state  # only once the configuration is loaded


def _load_config(plpy: Any, state: Backend, cfgver: int) -> None:
    row = plpy.execute("SELECT public._wormhole_config() AS c")[0]["c"]
    cfg = json.loads(row)
    modules: dict[str, frozenset[str] | None] = {}
    for name, names in cfg["modules"].items():
        modules[name] = None if names is None else frozenset(names)
    state.modules = modules
    state.limits = engine.Limits.from_mapping(cfg["limits"])
    state.settings = dict(cfg["settings"])
    state.approved = frozenset(cfg.get("approved") or ())
    state.trusted = frozenset(cfg.get("trusted") or ())
    state.source_cache.clear()  # a function deleted or edited by a DBA bumps the version too
    state.cfgver = cfgver
    state.cfgkey = str(cfgver)


def _lookup(plpy: Any, state: Backend, function_hash: str,
            SD: dict[str, Any] | None = None) -> tuple[bool, bool]:
    """(approved, trusted) for this call; refreshes the configuration first."""
    _refresh_config(plpy, state, SD)
    trusted = False
    if state.trusted:
        ids = state.user_ids
        if ids is not None:
            trusted = _current_role_name(plpy, state) in state.trusted
        else:
            trusted = plpy.execute(
                "SELECT current_user::pg_catalog.text AS u")[0]["u"] in state.trusted
    return function_hash in state.approved, trusted


def _current_role_name(plpy: Any, state: Backend) -> str:
    """The current role's name, read from the catalog on every call (only made when a DBA
    trusts some roles). Trust is granted by name, and a role can be renamed (or another one
    created under a trusted name) while this backend lives: a cached name would keep judging
    a renamed role by its old one."""
    plan = state.role_name_plan
    if plan is None:
        plan = state.role_name_plan = plpy.prepare(
            "SELECT rolname::pg_catalog.text AS n FROM pg_catalog.pg_roles"
            " WHERE oid OPERATOR(pg_catalog.=) $1", ["pg_catalog.oid"])
    rows = plpy.execute(plan, [int(state.user_ids[0]())])
    return str(rows[0]["n"]) if rows else ""


class _Stored:
    """An installed function as the backend caches it: its source and, when usable here, the
    checked code ``wormhole_install`` stored (marshal; same Python, same whitelist) and the
    statements its every call starts with (``policy.ahead_statements``)."""

    __slots__ = ("source", "name", "code", "ahead", "result")

    def __init__(self, source: str, name: str, code: bytes | None,
                 ahead: Ahead | None = None, result: AheadResult | None = None) -> None:
        self.source = source
        self.name = name
        self.code = code
        self.ahead = ahead
        #: what it returns when the chain is its whole body (``policy.ahead_result``)
        self.result = result


def _ahead(text: object) -> Ahead | None:
    """``wormhole_functions.ahead`` as ``wormhole_install`` wrote it (``_ahead_text``), or None
    for anything else (the backend runs these statements: only their exact shape is taken)."""
    return _ahead_parts(text)[0]


def _ahead_parts(text: object) -> tuple[Ahead | None, AheadResult | None]:
    """:func:`_ahead`, and the function's result where the text has one (``_ahead_text``):
    ``(None, None)`` for anything malformed, ``(chain, None)`` for a chain without it."""
    none: tuple[None, None] = (None, None)
    if type(text) is not str:
        return none
    try:
        count, raw_steps, *rest = json.loads(text)
        if (type(count) is not int or type(raw_steps) is not list or len(raw_steps) > MAX_AHEAD
                or len(rest) > 1):
            return none
        steps: list[AheadStep] = []
        for sql, raw_refs, keys, line, raw_tests in raw_steps:
            # what this step's arguments and tests may read: the parameters, earlier steps
            low = -len(steps)
            refs = []
            for raw in raw_refs:
                ref = _ref(raw, low, count)
                if ref is None:
                    return none
                refs.append(ref)
            if (type(sql) is not str or not _keys(keys) or type(line) is not int
                    or not 0 <= line < 1 << 31):
                return none
            tests = _tests(raw_tests, low, count)
            if tests is None:
                return none
            steps.append((sql, tuple(refs), tuple(keys), line, tests))
        if not steps:
            return none
        result: AheadResult | None = None
        if rest:
            raw_tests, raw_value = rest[0]
            result_tests = _tests(raw_tests, -len(steps), count)
            value = _value(raw_value, -len(steps), count, [0], 1)
            if (result_tests is None or value is None
                    or (value == ("step",) and (result_tests or steps[-1][3]))):
                return none  # ("step",): the last step's own value, one the worker waits for
            result = (result_tests, value)
    except (ValueError, TypeError, RecursionError):  # RecursionError: nested too deep
        return none
    return (count, tuple(steps)), result


def _tests(raw_tests: object, low: int, count: int) -> tuple[AheadTest, ...] | None:
    if type(raw_tests) is not list or len(raw_tests) > MAX_AHEAD:
        return None
    tests = []
    for raw in raw_tests:
        test = _test(raw, low, count, [0], 1)
        if test is None:
            return None
        tests.append(test)
    return tuple(tests)


def _value(raw: object, low: int, count: int, seen: list[int], depth: int
           ) -> AheadValue | None:
    """A returned value of ``policy._ahead_value``'s shape (or ``("step",)``), or None."""
    seen[0] += 1
    if (type(raw) is not list or not raw or seen[0] > MAX_AHEAD_VALUE_NODES
            or depth > MAX_AHEAD_VALUE_DEPTH):
        return None
    kind = raw[0]
    if kind == "step" and len(raw) == 1 and depth == 1:
        return ("step",)
    if kind in ("ref", "const"):
        return _test(raw, low, count, [0], 1)
    if kind in ("list", "tuple") and len(raw) == 2 and type(raw[1]) is list:
        items = [_value(item, low, count, seen, depth + 1) for item in raw[1]]
        return None if any(i is None for i in items) else (kind, tuple(items))
    if kind == "dict" and len(raw) == 2 and type(raw[1]) is list:
        pairs = []
        for pair in raw[1]:
            if type(pair) is not list or len(pair) != 2:
                return None
            key = _test(["const", pair[0]], low, count, [0], 1)
            value = _value(pair[1], low, count, seen, depth + 1)
            if key is None or value is None:
                return None
            pairs.append((key[1], value))
        return ("dict", tuple(pairs))
    return None


def _keys(path: object) -> bool:
    return type(path) is list and all(type(k) in (int, str) for k in path)


def _ref(raw: object, low: int, count: int) -> AheadRef | None:
    """``[source, keys]``: a parameter (``0 <= source < count``) or an earlier step."""
    if type(raw) is not list or len(raw) != 2:
        return None
    source, path = raw
    if type(source) is not int or not low <= source < count or not _keys(path):
        return None
    return source, tuple(path)


_TEST_OPS = frozenset(AHEAD_COMPARISONS)


def _test(raw: object, low: int, count: int, seen: list[int], depth: int) -> AheadTest | None:
    """One test of ``policy._ahead_test``'s shape, within its limits, or None."""
    seen[0] += 1
    if (type(raw) is not list or not raw or seen[0] > MAX_AHEAD_TEST_NODES
            or depth > MAX_AHEAD_TEST_DEPTH):
        return None
    kind = raw[0]
    if kind == "ref" and len(raw) == 3:
        ref = _ref(raw[1:], low, count)
        return None if ref is None else ("ref", ref[0], ref[1])
    if kind == "const" and len(raw) == 2:
        value = raw[1]
        if (value is None or type(value) in (bool, str)
                or (type(value) is int and -(1 << 63) <= value < 1 << 63)
                or (type(value) is float and math.isfinite(value))):
            return ("const", value)
        return None
    if kind == "not" and len(raw) == 2:
        inner = _test(raw[1], low, count, seen, depth + 1)
        return None if inner is None else ("not", inner)
    if kind in ("and", "or") and len(raw) == 2 and type(raw[1]) is list and raw[1]:
        parts = [_test(part, low, count, seen, depth + 1) for part in raw[1]]
        return None if any(p is None for p in parts) else (kind, tuple(parts))
    if kind == "cmp" and len(raw) == 3 and type(raw[2]) is list and raw[2]:
        left = _test(raw[1], low, count, seen, depth + 1)
        if left is None or left[0] not in ("ref", "const"):
            return None
        pairs = []
        before = left
        for pair in raw[2]:
            if type(pair) is not list or len(pair) != 2 or pair[0] not in _TEST_OPS:
                return None
            right = _test(pair[1], low, count, seen, depth + 1)
            if right is None or right[0] not in ("ref", "const"):
                return None
            if pair[0] in ("is", "is not") and not (_singleton(before) or _singleton(right)):
                return None
            pairs.append((pair[0], right))
            before = right
        return ("cmp", left, tuple(pairs))
    return None


def _singleton(test: AheadTest) -> bool:
    return test[0] == "const" and (test[1] is None or type(test[1]) is bool)


def _ahead_text(ahead: Ahead, result: AheadResult | None = None) -> str:
    count, steps = ahead
    text: list[Any] = [count, [[sql, [[source, list(path)] for source, path in refs], list(keys),
                                line, [_test_json(t) for t in tests]]
                               for sql, refs, keys, line, tests in steps]]
    if result is not None:
        text.append([[_test_json(t) for t in result[0]], _value_json(result[1])])
    return json.dumps(text, separators=(",", ":"))


def _value_json(value: AheadValue) -> list[Any]:
    kind = value[0]
    if kind in ("list", "tuple"):
        return [kind, [_value_json(v) for v in value[1]]]  # type: ignore[attr-defined]
    if kind == "dict":
        return ["dict", [[k, _value_json(v)] for k, v in value[1]]]  # type: ignore[attr-defined]
    if kind == "step":
        return ["step"]
    return _test_json(value)


def _test_json(test: AheadTest) -> list[Any]:
    kind = test[0]
    if kind == "ref":
        return ["ref", test[1], list(test[2])]  # type: ignore[call-overload]
    if kind == "const":
        return ["const", test[1]]
    if kind == "not":
        return ["not", _test_json(test[1])]  # type: ignore[arg-type]
    if kind in ("and", "or"):
        return [kind, [_test_json(t) for t in test[1]]]  # type: ignore[attr-defined]
    return ["cmp", _test_json(test[1]),  # type: ignore[arg-type]
            [[op, _test_json(right)] for op, right in test[2]]]  # type: ignore[attr-defined]


def _source(plpy: Any, state: Backend, function_hash: str) -> _Stored | None:
    stored = state.source_cache.get(function_hash)
    if stored is None:
        plan = state.host_plans.get("\0function")
        if plan is None:
            plan = plpy.prepare("SELECT * FROM public._wormhole_function($1)",
                                 ["pg_catalog.text"])
            state.host_plans["\0function"] = plan
        rows = plpy.execute(plan, [function_hash])
        row = rows[0] if rows else None
        if row is None or row["source"] is None:
            return None
        code = row["code"]
        usable = (code is not None and row["code_magic"] is not None
                  and bytes(row["code_magic"]) == _magic()
                  and row["code_key"] == code_key(state.modules))
        ahead, result = _ahead_parts(row["ahead"]) if usable else (None, None)
        stored = _Stored(row["source"], row["name"], bytes(code) if usable else None,
                         ahead, result)
        if len(state.source_cache) > 1024:
            state.source_cache.clear()
        state.source_cache[function_hash] = stored
    return stored


def _magic() -> bytes:
    import sys

    magic: bytes = sys.modules["_frozen_importlib_external"].MAGIC_NUMBER
    return magic


def code_key(modules: Mapping[str, frozenset[str] | None]) -> str:
    """What a stored checked code depends on besides Python: this runtime (its policy) and the
    whitelist. Code checked under an equal key passes the same check again."""
    import sys

    runtime = getattr(sys.modules.get(__package__ or ""), "CODE_TAG", None) or VERSION
    canonical = repr((runtime, sorted((k, None if v is None else sorted(v))
                                      for k, v in modules.items())))
    return engine.source_hash(canonical)


def _check_hash(plpy: Any, function_hash: object) -> str:
    if function_hash is None:
        raise _error(plpy, "wormhole_execute: function hash is NULL", WH_BAD_INPUT,
                     hint="pass the sha256 hex digest returned by wormhole_install()")
    if not isinstance(function_hash, str) or _HASH.fullmatch(function_hash) is None:
        raise _error(
            plpy,
            "wormhole_execute: malformed function hash",
            WH_BAD_INPUT,
            detail=f"got {str(function_hash)[:80]!r}",
            hint="pass the 64-character lowercase sha256 hex digest returned by wormhole_install()",
        )
    return function_hash


# --- entry points -----------------------------------------------------------------------------

def install(plpy: Any, GD: dict[str, Any], sources: Mapping[str, str], source: object) -> str:
    """``wormhole_install(source)``: check the function and cache it. Returns its hash.

    Runs as the schema's owner (SECURITY DEFINER) so it can write ``wormhole_functions``; it
    never runs user code, it only parses, checks and compiles it.
    """
    state = backend(GD, sources)
    who = plpy.execute("SELECT session_user::text AS u")[0]["u"]
    if source is None:
        raise _error(plpy, "wormhole_install: source is NULL", WH_BAD_INPUT,
                     hint="pass the text of one function definition")
    if not isinstance(source, str):
        raise _error(plpy, "wormhole_install: source must be text", WH_BAD_INPUT)
    size = len(source.encode("utf-8", "surrogatepass"))
    function_hash = engine.source_hash(source)
    event: dict[str, Any] = {"event": "install", "role": who, "hash": function_hash}
    if size > MAX_SOURCE_BYTES:
        event.update(verdict="rejected", reason="too large")
        _audit_log(plpy, event)
        raise _error(plpy, f"wormhole_install: source is {size} bytes; the limit is "
                     f"{MAX_SOURCE_BYTES}", WH_REJECTED)
    _refresh_config(plpy, state)
    try:
        checked = policy.check(source, state.modules)
    except policy.PolicyError as exc:
        findings = [[f.lineno, f.col, f.rule, f.message] for f in exc.findings]
        event.update(verdict="rejected", reason=str(exc), source=source)
        _audit_log(plpy, event)
        raise _error(
            plpy,
            "wormhole: function rejected by policy: " + "; ".join(
                f"line {f.lineno}: {f.message}" for f in exc.findings[:5]
            ),
            WH_REJECTED,
            detail=json.dumps({"findings": findings}),
            hint="see the findings; modules are allowed by a DBA in wormhole_allowed_modules",
        ) from None
    except Exception as exc:  # noqa: BLE001 - a validator failure is a rejection (fail closed)
        event.update(verdict="rejected", reason=f"validator error: {exc!r}", source=source)
        _audit_log(plpy, event)
        raise _error(plpy, f"wormhole: function rejected (validator error: {exc!r})",
                     WH_REJECTED) from None
    import marshal

    plan = plpy.prepare(
        "WITH ins AS ("
        " INSERT INTO public.wormhole_functions"
        "  (hash, name, source, installed_by, code, code_magic, code_key, ahead)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (hash) DO NOTHING RETURNING 1)"
        " INSERT INTO public.wormhole_audit (role, event, hash, name, source, verdict)"
        " SELECT $4, 'install', $1, $2, $3, CASE WHEN EXISTS (SELECT 1 FROM ins)"
        "   THEN 'accepted' ELSE 'accepted (already installed)' END",
        ["text", "text", "text", "name", "bytea", "bytea", "text", "text"],
    )
    ahead = None if checked.ahead is None else _ahead_text(checked.ahead, checked.result)
    plpy.execute(plan, [checked.source_hash, checked.name, source, who,
                        marshal.dumps(checked.code), _magic(), code_key(state.modules), ahead])
    event.update(verdict="accepted", name=checked.name)
    _audit_log(plpy, event)
    return checked.source_hash


class _Rollback(Exception):
    """Raised inside the call's subtransaction to undo its writes; carries the payload."""


def execute(plpy: Any, GD: dict[str, Any], sources: Mapping[str, str],
            function_hash: object, args_json: object, missing: object = "error",
            SD: dict[str, Any] | None = None) -> str:
    """``wormhole_execute(hash, args)``: run an installed function; return the payload text.

    The call runs in a subtransaction: if user code raises, its writes are rolled back and the
    error comes back as an ``err`` payload, so the statement itself succeeds and the client's
    transaction stays usable. Cancel, statement_timeout and terminate end the statement with
    PostgreSQL's own error.
    """
    state: Backend | None = GD.get(_STATE_KEY)
    if state is None or state.pid != _pid():
        state = backend(GD, sources)
    if not state.subxact_checked:
        state.subxact_checked = True
        _repair_subtransaction_dealloc(plpy)
    if type(function_hash) is not str or (
            function_hash not in state.source_cache  # only well-formed hashes get there
            and _HASH.fullmatch(function_hash) is None):
        function_hash = _check_hash(plpy, function_hash)  # raises the right error
    if type(args_json) is not str:
        raise _error(plpy, "wormhole_execute: arguments are NULL", WH_BAD_INPUT,
                     hint="pass the JSON text produced by the wormhole client, e.g. '[[],{}]'")
    worker = state.worker
    current = SD is not None and SD.get(_CONFIG_MARK) is state  # the configuration is current
    if (worker is not None and current and not state.trusted
            and function_hash not in state.approved and not state.worker_busy):
        # warm, and the call will run in the worker: send it now, so the worker wakes up and
        # starts while the checks below run (sandbox.WorkerExecutor.dispatch); the worker's
        # first query then waits for the subtransaction below
        known = state.source_cache.get(function_hash)
        # (a function whose chain is its whole body is not sent: the backend may finish its
        # call without the worker, sandbox.WorkerExecutor._complete)
        if known is not None and known.result is None and worker.dispatch(
                function_hash, known.source, args_json, state.modules, state.cfgkey,
                state.limits):
            try:
                return _execute(plpy, state, function_hash, args_json, missing, SD)
            finally:
                worker.cancel()  # nothing, once the call ran
    return _execute(plpy, state, function_hash, args_json, missing, SD)


def _execute(plpy: Any, state: Backend, function_hash: str, args_json: str, missing: object,
             SD: dict[str, Any] | None) -> str:
    if SD is not None and not state.trusted and SD.get(_CONFIG_MARK) is state:
        # warm: the configuration is current and no role is trusted (what _lookup does)
        approved, trusted = function_hash in state.approved, False
    else:
        approved, trusted = _lookup(plpy, state, function_hash, SD)  # also refreshes limits
    try:
        decoded = engine.decode_args(args_json, state.limits)  # checks max_args_bytes too
    except engine.BadArguments as exc:
        raise _error(plpy, f"wormhole_execute: {exc}", WH_BAD_INPUT,
                     hint="arguments are [[positional, ...], {keyword: value}] in wormhole's "
                     "JSON codec, e.g. '[[1, \"a\"], {}]'") from None
    stored = state.source_cache.get(function_hash) or _source(plpy, state, function_hash)
    if stored is None:
        if missing == "report":  # the client library: it reinstalls and calls again
            return '{"missing":true}'
        raise _error(plpy, f"wormhole_execute: no function with hash {function_hash} is "
                     "installed in this database", WH_NOT_FOUND,
                     hint="install it first with wormhole_install(source)")
    call = engine.Call(
        source_hash=function_hash,
        source=stored.source,
        args_json=args_json,
        modules=state.modules,
        modules_key=state.cfgkey,
        limits=state.limits,
    )
    cached = state.in_process
    if (approved or trusted) and cached is not None and cached[0] is plpy:
        executor = cached[1]  # what choose_executor returns for this call
    else:
        executor = choose_executor(plpy, state, approved=approved, trusted=trusted)
    if approved or trusted:
        call.decoded = decoded  # in-process: decode once (the worker decodes its own copy)
        if stored.code is not None:
            call.stored = (stored.name, stored.code)
    elif stored.ahead is not None:
        # the statements the function starts with, and these arguments: the worker's backend
        # runs them ahead (sandbox._Ahead); only for a call that binds positionally
        count, steps = stored.ahead
        args, kwargs = decoded
        if not kwargs and len(args) == count:
            call.ahead = (steps, args)
            call.result = stored.result
    port = state.port
    if port is None or port.plpy is not plpy:
        port = state.port = SpiPort(plpy, state.plans)
    roles_before = _roles(plpy, state)
    try:
        with plpy.subtransaction():
            payload = executor(call, port)
            if _roles(plpy, state) != roles_before:
                raise _error(
                    plpy,
                    "wormhole: the remote function changed the session's role; refused",
                    WH_ROLE_CHANGED,
                    hint="query() runs as the calling role; SET ROLE and friends are refused",
                )
            if payload.startswith('{"err"'):
                raise _Rollback(payload)
    except _Rollback as rb:
        payload = rb.args[0]
        _audit_log(plpy, {"event": "call-failed", "hash": function_hash,
                          "error": payload[:2000]})
    except Interrupted as exc:
        cause = exc.cause
        if isinstance(cause, LimitExceeded):
            payload = engine.error_payload(cause)
            _audit_log(plpy, {"event": "call-limit", "hash": function_hash,
                              "limit": cause.limit})
        elif isinstance(cause, BaseException):
            _audit_log(plpy, {"event": "call-interrupted", "hash": function_hash})
            raise cause from None
        else:
            raise _error(plpy, str(exc), "57014") from None
    return payload


def _roles(plpy: Any, state: Backend) -> tuple[object, ...]:
    """(current user, session user) of this backend, cheaply.

    ``query()`` refuses SET ROLE and friends lexically, but a PL/pgSQL function could still run
    one dynamically; comparing before and after the call catches it, and the error that follows
    undoes the GUC change. Inside a backend the ids come from ``GetUserId()`` and
    ``GetSessionUserId()`` through ctypes (no SPI round); elsewhere from a query.
    """
    ids = state.user_ids
    if ids is not None:
        return (ids[0](), ids[1]())
    row = plpy.execute("SELECT current_user::pg_catalog.text AS c,"
                       " session_user::pg_catalog.text AS s")[0]
    return (row["c"], row["s"])


if TYPE_CHECKING:
    Executor = Callable[[engine.Call, Any], str]


def choose_executor(plpy: Any, state: Backend, *, approved: bool, trusted: bool) -> Executor:
    """THE selection point: in-process for vetted code, the confined worker for the rest."""
    if approved or trusted:
        return _in_process(plpy, state)
    mode = state.settings.get("untrusted_execution", "unavailable")
    if mode == "worker":
        return _in_worker(plpy, state)
    if mode == "disabled":
        hint = ("a DBA disabled untrusted execution (wormhole_settings.untrusted_execution); "
                "they can approve this function: wormhole approve HASH")
    else:
        hint = ("the confined worker does not work on this server: install bubblewrap "
                "(apt-get install bubblewrap), then run `wormhole install` again; or a DBA "
                "can approve this function: wormhole approve HASH")
    raise _error(plpy, "wormhole: this function is not approved and untrusted execution "
                 "is not available", WH_UNAVAILABLE, hint=hint)


def _interrupt_check(plpy: Any, state: Backend) -> Callable[[], None]:
    flag = state.interrupt_flag

    def check() -> None:
        if flag is not None and flag.value:
            try:
                plpy.execute("SELECT 1")  # CHECK_FOR_INTERRUPTS raises the real error
            except plpy.SPIError as exc:
                raise Interrupted(exc, str(exc)) from None

    return check


def _in_process(plpy: Any, state: Backend) -> Executor:
    # built once per backend (it depends only on plpy and the backend's state); everything
    # that belongs to one call (deadline, fired, tick) is still created inside run() per call
    cached = state.in_process
    if cached is not None and cached[0] is plpy:
        return cached[1]
    spawn.discard_prestarted()  # a worker started early for a call that runs here: not needed
    check = _interrupt_check(plpy, state)
    flag = state.interrupt_flag

    def run(call: engine.Call, port: Any) -> str:
        deadline = (
            time.monotonic() + call.limits.timeout_ms / 1000.0 if call.limits.timeout_ms else None
        )
        fired: list[BaseException] = []

        def tick() -> None:
            if fired:
                raise Interrupted(fired[0])
            if deadline is not None and time.monotonic() > deadline:
                fired.append(LimitExceeded(
                    "timeout_ms",
                    f"the call ran longer than the DBA's limit of {call.limits.timeout_ms} ms "
                    "(wormhole_limits.timeout_ms)",
                ))
                raise Interrupted(fired[0])
            if flag is None or flag.value:  # check()'s own test, without its frame when clear
                try:
                    check()
                except Interrupted as exc:
                    fired.append(exc.cause if exc.cause is not None else exc)
                    raise

        return engine.run_call(call, port, tick)

    state.in_process = (plpy, run)
    return run


def _worker_modules(state: Backend, same: bool | None = None) -> dict[str, str | bytes]:
    """What the worker boots from: the code this backend already compiled (``marshal.dumps``
    bytes, when the worker runs the same Python as the server's PL/Python: ``same``) or,
    failing that, the sources (``sandbox.boot_frame``)."""
    import marshal
    import sys

    package = sys.modules.get(__package__ or "")
    codes = getattr(package, "CODES", None) or {}
    out: dict[str, str | bytes] = {}
    if same is None:
        same = sys.version_info[:2] == spawn.python_version(sandbox.DEFAULT_PYTHON)
    for name in WORKER_MODULES:
        code = codes.get(name)
        if same and code is not None:
            out[name] = marshal.dumps(code)
        else:
            out[name] = state.sources[name]
    return out


def _in_worker(plpy: Any, state: Backend) -> Executor:
    if state.worker_busy:
        # a remote function in the worker called wormhole_execute through query(): the
        # backend's one worker is busy with the outer call
        raise _error(
            plpy,
            "wormhole: a remote function running in the confined worker cannot call another "
            "remote function through SQL",
            WH_REENTRY,
            hint="call the other function's logic directly, or have a DBA approve both",
        )
    cached = state.in_worker
    if cached is not None and cached[0] is plpy and cached[1] is state.worker:
        return cached[2]
    check = _interrupt_check(plpy, state)
    if state.worker is None:
        import sys

        same = sys.version_info[:2] == spawn.python_version(sandbox.DEFAULT_PYTHON)
        # the boot frame is built only if this executor starts a worker itself: the first
        # one is usually the worker the boot function started early (spawn.prestart)
        state.worker = sandbox.WorkerExecutor(lambda: _worker_modules(state, same),
                                              stored_code=same, adopt=True)
    worker = state.worker

    def run(call: engine.Call, port: Any) -> str:
        if call.stored is None:
            # the code wormhole_install checked, when usable here (same Python, same
            # whitelist): the worker then runs it without loading the parser
            entry = state.source_cache.get(call.source_hash)
            if entry is not None and entry.source is call.source and entry.code is not None:
                call.stored = (entry.name, entry.code)
        state.worker_busy = True
        try:
            return worker.run(call, port, check)
        except LimitExceeded as exc:
            return engine.error_payload(exc)
        except sandbox.WorkerCrashed as exc:
            return engine.error_payload(exc)
        finally:
            state.worker_busy = False

    state.in_worker = (plpy, worker, run)
    return run


def cache_code(plpy: Any, GD: dict[str, Any], package: Any) -> int:
    """Store the runtime's compiled code for later backends (install script only).

    Runs as the schema owner; the table is readable by wormhole roles (it is our own code, not
    a secret) and writable only here. Returns the number of modules stored.
    """
    import marshal

    plan = plpy.prepare(
        "UPDATE public._wormhole_code SET code = $3, magic = $4 WHERE tag = $1 AND module = $2",
        ["text", "text", "bytea", "bytea"],
    )
    names = ("__init__", *package.MODULES)
    for name in names:
        code = package.CODES[name]  # compiled now if this backend never imported it
        plpy.execute(plan, [package.CODE_TAG, name, marshal.dumps(code), _magic()])
    return len(names)


def selftest(plpy: Any, GD: dict[str, Any], sources: Mapping[str, str]) -> str:
    """Check the OS boundary from inside this backend; enable or disable the worker to match.

    Called by the schema script and ``wormhole install``. A DBA's explicit ``disabled`` stays.
    """
    state = backend(GD, sources)
    ok, reason = sandbox.available()
    rows = plpy.execute("SELECT value FROM public.wormhole_settings "
                        "WHERE name OPERATOR(pg_catalog.=) 'untrusted_execution'")
    current = rows[0]["value"] if rows else None
    if ok and current in (None, "unavailable"):
        wanted: str | None = "worker"
    elif not ok and current in (None, "worker"):
        wanted = "unavailable"
    else:
        wanted = None
    if wanted is not None:
        plan = plpy.prepare(
            "INSERT INTO public.wormhole_settings (name, value) VALUES ('untrusted_execution', $1)"
            " ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
            ["pg_catalog.text"],
        )
        plpy.execute(plan, [wanted])
        current = wanted
    state.cfgver = None
    if ok:
        return f"confined worker: ok ({reason}); untrusted execution: {current}"
    return (f"confined worker unavailable: {reason}; untrusted execution: {current} "
            "(install bubblewrap and run `wormhole install` again)")


def query(plpy: Any, GD: dict[str, Any], sources: Mapping[str, str], sql: object,
          params_json: object) -> str:
    """``wormhole_query(sql, params)``: ``query()`` from SQL; returns the rows as codec text."""
    state = backend(GD, sources)
    if not isinstance(sql, str):
        raise _error(plpy, "wormhole_query: sql is NULL", WH_BAD_INPUT)
    try:
        params = codec.decode(params_json if isinstance(params_json, str) else "[]")
    except codec.CodecError as exc:
        raise _error(plpy, f"wormhole_query: malformed parameters: {exc}", WH_BAD_INPUT) from None
    if type(params) is not list:
        raise _error(plpy, "wormhole_query: parameters must be a JSON array", WH_BAD_INPUT)
    port = SpiPort(plpy, state.plans)
    try:
        rows = port.query(sql, params)
    except DatabaseError as exc:
        raise _error(plpy, str(exc), exc.sqlstate or "XX000", exc.detail, exc.hint) from None
    except Interrupted as exc:
        if isinstance(exc.cause, BaseException):
            raise exc.cause from None
        raise
    return codec.encode({"rows": list(rows), "rowcount": rows.rowcount})
