"""Run one remote call: the code every executor shares.

``run_call`` is the whole life of a call once the host has chosen where it runs: look up (or
check and compile) the code by hash, build a fresh namespace, decode the arguments, call the
function, encode the result, and turn any exception into the error payload the client
understands. It runs unchanged inside a backend (in-process executor) and inside the confined
worker; the only thing that differs is the ``QueryPort`` that ``query()`` talks to and the
``tick`` hook that notices interrupts.

The payload (JSON text, see docs/architecture.md):
``{"ok": <codec value>, "out": [...]}`` or ``{"err": {...}, "out": [...]}``.
"""

from __future__ import annotations

import builtins

from . import codec, jsonlite, namespace
from .errors import DatabaseError, Interrupted, LimitExceeded
from .rows import Rows
from .rules import Checked, PolicyError

# typing, dataclasses, hashlib and the policy (ast) are kept off this module's import path: a
# backend's first call of an already-checked function should load as little as possible.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any, Protocol

    from .rules import AheadResult, AheadStep

    class QueryPort(Protocol):
        """Where ``query()`` goes: the driver client-side, SPI in a backend, the channel in a
        worker."""

        def query(self, sql: str, params: Sequence[object]) -> Rows: ...
else:
    class QueryPort:
        """Where ``query()`` goes: the driver client-side, SPI in a backend, the channel in a
        worker. (A ``typing.Protocol`` for the type checker; any object with ``query``.)"""

if TYPE_CHECKING:
    from hashlib import sha256 as _sha256
else:
    try:  # the builtin module: no OpenSSL start-up (hashlib's is a few ms in a new backend)
        from _sha256 import sha256 as _sha256
    except ImportError:  # pragma: no cover - Python 3.12 renamed it
        from hashlib import sha256 as _sha256

#: the filename the policy compiles user code under; frames with it are the user's own.
USER_FILENAME = "<wormhole>"


class Limits:
    """Per-call limits, set by the DBA in ``wormhole_limits`` (never by a user GUC)."""

    __slots__ = ("timeout_ms", "memory_mb", "cpu_seconds", "max_output_bytes",
                 "max_result_bytes", "max_args_bytes")
    timeout_ms: int
    memory_mb: int
    cpu_seconds: int
    max_output_bytes: int
    max_result_bytes: int
    max_args_bytes: int

    def __init__(
        self,
        timeout_ms: int = 0,  # 0: only statement_timeout applies
        memory_mb: int = 512,  # worker address space
        cpu_seconds: int = 60,  # worker CPU time
        max_output_bytes: int = 65536,  # print() output returned to the client
        max_result_bytes: int = 256 * 1024 * 1024,  # encoded result
        max_args_bytes: int = 64 * 1024 * 1024,  # encoded arguments
    ) -> None:
        object.__setattr__(self, "timeout_ms", timeout_ms)
        object.__setattr__(self, "memory_mb", memory_mb)
        object.__setattr__(self, "cpu_seconds", cpu_seconds)
        object.__setattr__(self, "max_output_bytes", max_output_bytes)
        object.__setattr__(self, "max_result_bytes", max_result_bytes)
        object.__setattr__(self, "max_args_bytes", max_args_bytes)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Limits are immutable")

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> Limits:
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if key in cls.__slots__ and value is not None:
                kwargs[key] = int(value)  # type: ignore[call-overload]
        return cls(**kwargs)

    def as_dict(self) -> dict[str, int]:
        return {f: getattr(self, f) for f in self.__slots__}

    def _key(self) -> tuple[int, ...]:
        return tuple(getattr(self, f) for f in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return type(other) is Limits and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return "Limits(" + ", ".join(f"{f}={getattr(self, f)!r}" for f in self.__slots__) + ")"


_DEFAULT_LIMITS = Limits()


class Call:
    """One call as the host hands it to an executor."""

    __slots__ = ("source_hash", "source", "args_json", "modules", "modules_key", "limits",
                 "decoded", "stored", "ahead", "result")

    def __init__(
        self,
        source_hash: str,
        source: str,
        args_json: str,
        modules: Mapping[str, frozenset[str] | None],
        modules_key: str = "",  # changes whenever the whitelist changes (compile cache key)
        limits: Limits = _DEFAULT_LIMITS,
        decoded: tuple[list[Any], dict[str, Any]] | None = None,
    ) -> None:
        self.source_hash = source_hash
        self.source = source
        self.args_json = args_json
        self.modules = modules
        self.modules_key = modules_key
        self.limits = limits
        #: the arguments already decoded by the host (in-process), so they are decoded once
        self.decoded = decoded
        #: (name, marshalled code) that ``wormhole_install`` checked under this whitelist and
        #: Python, when the host has it: then this process need not import the policy
        self.stored: tuple[str, bytes] | None = None
        #: ``(steps, arguments)``: the statements this call starts with
        #: (``policy.ahead_statements``) and its positional arguments, which the worker's
        #: backend runs before the worker asks (``sandbox._Ahead``)
        self.ahead: tuple[tuple[AheadStep, ...], list[Any]] | None = None
        #: what the function returns when that chain is its whole body
        #: (``policy.ahead_result``): the backend may then finish the call itself
        #: (``sandbox.WorkerExecutor._complete``)
        self.result: AheadResult | None = None


class BadArguments(DatabaseError):
    """The argument payload is not what the client library sends (WH005)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, sqlstate="WH005")


class HashMismatch(DatabaseError):
    """The stored source does not hash to the requested hash (WH004)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, sqlstate="WH004")


def source_hash(source: str) -> str:
    """The function's identity: sha256 of its shipped source text (content addressing)."""
    return _sha256(source.encode("utf-8", "surrogatepass")).hexdigest()


# hash + whitelist key -> checked code. Per process (a backend or a worker), never shared.
_COMPILED: dict[tuple[str, str], Checked] = {}
_MAX_COMPILED = 512


def checked_code(call: Call) -> Checked:
    """Return the checked, compiled code for ``call``; check and compile only on a miss.

    The source is re-hashed and re-checked against the *current* whitelist before its first
    run in this process, so a stored row that was edited behind wormhole's back, or a module
    the DBA has since forbidden, is refused at run time too. The re-check is skipped only when
    the host passes the code ``wormhole_install`` checked under an equal whitelist and the same
    Python (``call.stored``): the same check would give the same code. (Imports are checked
    again at run time anyway: the namespace's ``__import__`` only hands out whitelisted names.)
    """
    key = (call.source_hash, call.modules_key)
    hit = _COMPILED.get(key)
    if hit is not None:
        return hit
    actual = source_hash(call.source)
    if actual != call.source_hash:
        raise HashMismatch(
            f"stored source for {call.source_hash[:12]}... hashes to {actual[:12]}...; "
            "refusing to run it (was wormhole_functions edited by hand?)"
        )
    if call.stored is not None:
        import marshal

        name, raw = call.stored
        checked = Checked(name, marshal.loads(raw), (), call.source_hash)
    else:
        from . import policy  # the parser: only when no checked code came with the call

        checked = policy.check(call.source, call.modules)
    if len(_COMPILED) >= _MAX_COMPILED:
        _COMPILED.clear()
    _COMPILED[key] = checked
    return checked


# whitelist -> its Namespace (closures built once). Per process, never shared.
_NAMESPACES: list[namespace.Namespace] = []


def namespace_for(modules: Mapping[str, frozenset[str] | None]) -> namespace.Namespace:
    """The :class:`namespace.Namespace` of this whitelist (the host passes the same mapping
    object until the configuration changes; the worker an equal one)."""
    for ns in _NAMESPACES:
        if ns.modules is modules:
            return ns
    for ns in _NAMESPACES:
        if ns.modules == modules:
            return ns
    ns = namespace.Namespace(modules)
    if len(_NAMESPACES) >= 8:
        del _NAMESPACES[0]
    _NAMESPACES.append(ns)
    return ns


_STR_ONLY = frozenset({str})


def decode_args(args_json: str, limits: Limits) -> tuple[list[Any], dict[str, Any]]:
    """Decode ``[[positional...], {keyword: value}]`` as the client library encodes it."""
    if not isinstance(args_json, str):
        raise BadArguments("arguments must be text (JSON produced by the wormhole client)")
    if len(args_json) > limits.max_args_bytes:
        raise BadArguments(
            f"arguments are {len(args_json)} bytes; the limit is {limits.max_args_bytes} "
            "(wormhole_limits.max_args_bytes)"
        )
    try:
        value = codec.decode(args_json)
    except codec.CodecError as exc:
        raise BadArguments(f"malformed arguments: {exc}") from None
    if (
        type(value) is not list
        or len(value) != 2
        or type(value[0]) is not list
        or type(value[1]) is not dict
        or (value[1] and not _STR_ONLY.issuperset(map(type, value[1])))
    ):
        raise BadArguments(
            "arguments must be [[positional, ...], {keyword: value, ...}] "
            "as produced by the wormhole client"
        )
    return value[0], value[1]


class _Output:
    """Collects ``print()`` output, capped so a loop of prints cannot exhaust memory."""

    __slots__ = ("parts", "size", "limit", "truncated")

    def __init__(self, limit: int) -> None:
        self.parts: list[str] = []
        self.size = 0
        self.limit = limit
        self.truncated = False

    def write(self, text: str) -> None:
        if self.truncated:
            return
        if self.size + len(text) > self.limit:
            text = text[: max(0, self.limit - self.size)]
            self.truncated = True
        self.size += len(text)
        if text:
            self.parts.append(text)

    def lines(self) -> list[str]:
        out = "".join(self.parts)
        result = out.splitlines()
        if self.truncated:
            result.append(f"[wormhole: output truncated at {self.limit} bytes]")
        return result


def _noop() -> None:
    return None


def run_call(call: Call, port: QueryPort, tick: Callable[[], None] = _noop) -> str:
    """Run ``call`` and return the payload text. Never raises, except for interrupts.

    ``Interrupted`` (cancel, timeout, termination noticed by ``tick`` or by the port) is
    re-raised so the host can end the statement with PostgreSQL's own error. Everything else
    (the user's exceptions, database errors, policy refusals, bad arguments) becomes an
    ``err`` payload, so the host can roll back the call's subtransaction and still return
    normally: the client's transaction stays usable.

    A port may defer statements whose result is discarded (``defer(line, function, sql,
    params)``, see ``policy._defer_discarded_queries``); its ``finish(text, error_payload)``
    then has the last word on the payload (a deferred statement that failed comes first).
    """
    out = _Output(call.limits.max_output_bytes)
    text = _run(call, port, tick, out)
    finish = getattr(port, "finish", None)
    if finish is not None:
        text = finish(text, lambda exc: error_payload(exc, out))
    return text


def _run(call: Call, port: QueryPort, tick: Callable[[], None], out: _Output) -> str:
    try:
        checked = _COMPILED.get((call.source_hash, call.modules_key)) or checked_code(call)
        if call.decoded is not None:
            args, kwargs = call.decoded
        else:
            args, kwargs = decode_args(call.args_json, call.limits)
        port_query = port.query

        def query(sql: str, *args: object) -> Rows:
            return port_query(sql, args)

        port_defer = getattr(port, "defer", None)
        defer: Callable[..., None] | None = None  # without one the namespace's is query()
        if port_defer is not None:
            entry = checked.name

            def defer(line: int, sql: str, *args: object) -> None:
                port_defer(line, entry, sql, args)

        ns = _NAMESPACES[-1] if _NAMESPACES and _NAMESPACES[-1].modules is call.modules \
            else namespace_for(call.modules)
        glb, previous = ns.enter(query=query, print_fn=out.write, tick=tick, defer=defer)
        try:
            exec(checked.code, glb)  # defines the function; the policy allows nothing else
            function: Callable[..., Any] = glb[checked.name]  # type: ignore[assignment]
            result = function(*args, **kwargs)
        finally:
            ns.leave(previous)
        try:
            value = codec.encode(result, root="result")  # text directly: no second pass
        except codec.CodecError as exc:
            raise TypeError(f"the return value cannot be sent to the client: {exc}") from None
        if out.parts or out.truncated:
            text = ('{"ok":' + value + ',"out":'
                    + jsonlite.dumps(out.lines(), ensure_ascii=False, separators=(",", ":")) + "}")
        else:
            text = '{"ok":' + value + ',"out":[]}'
        if len(text) > call.limits.max_result_bytes:
            raise LimitExceeded(
                "max_result_bytes",
                f"the result is {len(text)} bytes; the DBA's limit is "
                f"{call.limits.max_result_bytes} (wormhole_limits.max_result_bytes)",
            )
        return text
    except Interrupted:
        raise
    except RecursionError as exc:
        return error_payload(exc, out)
    except Exception as exc:  # noqa: BLE001 - every user error becomes a payload
        return error_payload(exc, out)


_BUILTIN_EXCEPTIONS = frozenset(
    name
    for name, obj in vars(builtins).items()
    if isinstance(obj, type) and issubclass(obj, BaseException)
)


def error_info(exc: BaseException) -> dict[str, Any]:
    """Describe ``exc`` as plain data (no objects cross back to the client)."""
    etype = type(exc)
    name = etype.__name__
    builtin = etype.__module__ == "builtins" and name in _BUILTIN_EXCEPTIONS
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001 - a user __str__ that raises must not lose the error
        message = f"<{name}: str() failed>"
    if len(message) > 8192:
        message = message[:8192] + "... [truncated]"
    info: dict[str, Any] = {"type": name, "builtin": builtin, "message": message}
    if isinstance(exc, PolicyError):
        info["type"] = "RejectedFunction"
        info["builtin"] = False
        info["findings"] = [
            [f.lineno, f.col, f.rule, f.message] for f in exc.findings
        ]
        info["sqlstate"] = "WH002"
    elif isinstance(exc, DatabaseError):
        info["sqlstate"] = exc.sqlstate
        info["detail"] = exc.detail
        info["hint"] = exc.hint
        if type(exc) is DatabaseError or isinstance(exc, (BadArguments, HashMismatch)):
            info["type"] = "DatabaseError"
            info["builtin"] = False
    elif isinstance(exc, LimitExceeded):
        info["type"] = "LimitExceeded"
        info["builtin"] = False
        info["sqlstate"] = "WH006"
        info["limit"] = exc.limit
    where = getattr(exc, "_wh_where", None)  # a deferred statement's (line, function)
    if where is not None:
        info["tb"] = [list(where)]
        return info
    tb = []
    frame_tb = exc.__traceback__
    while frame_tb is not None:
        code = frame_tb.tb_frame.f_code
        if code.co_filename == USER_FILENAME:
            tb.append([frame_tb.tb_lineno, code.co_name])
        frame_tb = frame_tb.tb_next
    info["tb"] = tb[-50:]
    return info


def error_payload(exc: BaseException, out: _Output | None = None) -> str:
    lines = out.lines() if out is not None else []
    return jsonlite.dumps({"err": error_info(exc), "out": lines}, ensure_ascii=False,
                      separators=(",", ":"))
