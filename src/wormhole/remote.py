"""``@remote``: ship a function's source to PostgreSQL once, then call it by hash.

The first call in a database installs the function (``wormhole_install(source)``); every later
call is one statement: ``SELECT public.wormhole_execute(hash, args)``. The client remembers per
database which hashes are installed; if the server has lost one (cache cleared, database
restored), ``wormhole_execute`` says so without failing the statement and the client
reinstalls once, transparently, even inside a transaction.
"""

from __future__ import annotations

import ast
import dis
import functools
import inspect
import json
import logging
import sys
import textwrap
import threading
import types
from collections.abc import Callable, Hashable
from typing import Any, Generic, ParamSpec, TypeVar, overload

from . import errors
from .api import current_driver
from .drivers import Driver
from .runtime import codec, engine
from .transaction import retry_standalone

P = ParamSpec("P")
R = TypeVar("R")

log = logging.getLogger("wormhole")
remote_log = logging.getLogger("wormhole.remote")

EXECUTE_SQL = "SELECT public.wormhole_execute($1, $2, 'report')"
INSTALL_SQL = "SELECT public.wormhole_install($1)"
MISSING = '{"missing":true}'
NO_OUTPUT = ',"out":[]}'  # the payload's trailer when the function printed nothing

#: built once (``json.dumps`` with options builds an encoder per call); the arguments' text may
#: hold any character: it is sent as a text parameter, never embedded in SQL
_ARGS_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_BIG_INT = codec._BIG_INT  # ints beyond it are tagged by the codec
_json_str: Callable[[str], str] = json.encoder.encode_basestring  # json's, ensure_ascii=False

_installed: dict[Hashable, set[str]] = {}
_installed_lock = threading.Lock()


def _is_installed(key: Hashable, function_hash: str) -> bool:
    hashes = _installed.get(key)
    return hashes is not None and function_hash in hashes


def _mark_installed(key: Hashable, function_hash: str, installed: bool = True) -> None:
    with _installed_lock:
        hashes = _installed.setdefault(key, set())
        if installed:
            hashes.add(function_hash)
        else:
            hashes.discard(function_hash)


def forget_installed() -> None:
    """Forget which functions are installed where (the next call of each reinstalls it)."""
    with _installed_lock:
        _installed.clear()


class RemoteFunction(Generic[P, R]):
    """The handle ``@remote`` returns. Call it like the function; it runs inside PostgreSQL.

    Attributes: ``source`` (the text shipped), ``hash`` (its sha256, the function's identity),
    ``filename`` and ``lineno`` (where the ``def`` is in your file; remote tracebacks point
    there), ``local`` (the original function, to run client-side against ``query()``).
    """

    def __init__(self, fn: Callable[P, R], *, echo: bool = True) -> None:
        if not inspect.isfunction(fn):
            raise errors.InterfaceError(f"@remote needs a function, got {type(fn).__name__}")
        if fn.__code__.co_freevars:
            names = ", ".join(fn.__code__.co_freevars)
            raise errors.InterfaceError(
                f"@remote function {fn.__qualname__}() uses variables of an enclosing scope "
                f"({names}); pass them as arguments instead"
            )
        if inspect.iscoroutinefunction(fn) or inspect.isgeneratorfunction(fn):
            raise errors.InterfaceError(
                f"@remote function {fn.__qualname__}() must be a plain function "
                "(async and generator functions are not supported yet)"
            )
        self.local = fn
        self.name = fn.__name__
        self.source, self.filename, self.lineno = _capture(fn)
        self.hash = engine.source_hash(self.source)
        self.signature = inspect.signature(fn)
        params = list(self.signature.parameters.values())
        # fast path: f(a, b) called positionally with every argument needs no bind()
        self._positional_names: tuple[str, ...] | None = (
            tuple(p.name for p in params)
            if all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params)
            else None
        )
        self.echo = echo
        functools.update_wrapper(self, fn)

    def __repr__(self) -> str:
        return f"<remote function {self.name} {self.hash[:12]} ({self.filename}:{self.lineno})>"

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        raise errors.InterfaceError("@remote cannot decorate methods; use a module-level function")

    # -- calling ---------------------------------------------------------------------------------
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        args_json = self.encode_args(*args, **kwargs)
        driver = current_driver()
        return self.call_with(driver, args_json)  # type: ignore[no-any-return]

    def encode_args(self, *args: Any, **kwargs: Any) -> str:
        """Bind and encode the arguments; fail before any round trip if one cannot be sent."""
        names = self._positional_names
        if not kwargs and names is not None and len(args) == len(names):
            # written piece by piece, exactly as json.dumps writes them: str, None, bool, small
            # int and finite float need neither the codec's walk nor the encoder's machinery
            parts = []
            for name, v in zip(names, args):
                t = type(v)
                if t is int and -_BIG_INT < v < _BIG_INT:
                    parts.append(int.__repr__(v))
                elif t is str:
                    parts.append(_json_str(v))
                elif v is None:
                    parts.append("null")
                elif t is bool:
                    parts.append("true" if v else "false")
                elif t is float and v - v == 0.0:
                    parts.append(float.__repr__(v))
                else:
                    parts.append(_ARGS_ENCODER.encode(self._encode_one(name, v)))
            return "[[" + ",".join(parts) + "],{}]"
        bound = self.signature.bind(*args, **kwargs)  # TypeError like a local call
        positional = []
        for name, value in zip(self.signature.parameters, bound.args):
            positional.append(self._encode_one(name, value))
        if len(bound.args) > len(self.signature.parameters):  # *args
            for i, value in enumerate(bound.args[len(self.signature.parameters):]):
                positional.append(self._encode_one(f"*args[{i}]", value))
        keywords = {k: self._encode_one(k, v) for k, v in bound.kwargs.items()}
        return _ARGS_ENCODER.encode([positional, keywords])

    def _encode_one(self, name: str, value: Any) -> Any:
        try:
            return codec.encode_value(value)
        except codec.CodecError as exc:
            raise errors.ArgumentError(
                f"{self.name}(): argument {name!r} cannot be sent to the server: {exc}"
            ) from None

    def call_with(self, driver: Driver, args_json: str) -> Any:
        # -- retry hook (wormhole.transaction, issue 4) ------------------------------------------
        # Inside a transaction the call joins it (no hidden commit) and the enclosing unit owns
        # the retry. Outside one it is its own transaction (one autocommit statement), retried
        # on 40001/40P01; a connection lost while its statement was out is OutcomeUnknown.
        if driver.in_transaction():
            return self._call_once(driver, args_json, standalone=False)
        return retry_standalone(
            lambda: self._call_once(driver, args_json, standalone=True), f"{self.name}()"
        )

    def _execute_once(self, driver: Driver, args_json: str, standalone: bool) -> str:
        if standalone and driver.is_closed():
            raise errors.ConnectionLost(
                f"the connection is closed or broken; {self.name}() was not sent"
            )
        try:
            payload = driver.call_text(EXECUTE_SQL, [self.hash, args_json], prepare=True)
        except errors.DatabaseError as exc:
            if standalone and (errors.is_connection_lost(exc) or driver.is_closed()):
                raise errors.OutcomeUnknown(
                    f"the connection was lost while {self.name}() ran as its own transaction: "
                    "it may or may not have committed (outcome unknown). It is not retried; "
                    f"check the data before calling it again. Cause: {type(exc).__name__}: "
                    f"{str(exc).strip()}"
                ) from exc
            mapped = _schema_error(exc)
            if mapped is exc:
                raise  # keeps the driver's error as its cause
            raise mapped from exc
        if payload is None:
            raise errors.SchemaError("wormhole_execute returned NULL; reinstall the schema")
        return payload
        # -- end of the retry hook ---------------------------------------------------------------

    def _call_once(self, driver: Driver, args_json: str, standalone: bool) -> Any:
        key = driver.database_key()
        if not _is_installed(key, self.hash):
            self.install(driver)
        payload = self._execute_once(driver, args_json, standalone)
        if payload == MISSING:
            # the server lost it (cache cleared, database restored): reinstall, once
            log.info("wormhole: %s is not installed on the server any more; reinstalling",
                     self.name)
            _mark_installed(key, self.hash, False)
            self.install(driver)
            payload = self._execute_once(driver, args_json, standalone)
            if payload == MISSING:
                raise errors.SchemaError(
                    f"{self.name}() was installed but the server still does not find it"
                )
        return self._result(payload)

    def install(self, driver: Driver | None = None) -> str:
        """Install the function in the database of ``driver`` (default: the connection in
        scope). Returns the hash. Calls do this themselves; use it to install ahead of time."""
        driver = driver or current_driver()
        try:
            returned = driver.call_text(INSTALL_SQL, [self.source])
        except errors.DatabaseError as exc:
            if exc.sqlstate == "WH002":
                raise self._rejected(exc) from None
            raise _schema_error(exc) from exc
        if returned != self.hash:
            raise errors.SchemaError(
                f"the server hashed {self.name}() to {returned}, the client to {self.hash}; "
                "client and server wormhole versions differ?"
            )
        _mark_installed(driver.database_key(), self.hash)
        return self.hash

    # -- results and errors ----------------------------------------------------------------------
    def _file_line(self, remote_line: int) -> int:
        return self.lineno + remote_line - 1

    def _rejected(self, exc: errors.DatabaseError) -> errors.RejectedFunction:
        findings = []
        try:
            raw = json.loads(exc.detail or "{}").get("findings", [])
        except ValueError:
            raw = []
        for lineno, col, rule, message in raw:
            findings.append(errors.Finding(self._file_line(int(lineno)), int(col), rule, message))
        lines = "\n".join(
            f'  File "{self.filename}", line {f.lineno}: {f.message} [{f.rule}]'
            for f in findings
        )
        return errors.RejectedFunction(
            f"the server refused to install {self.name}():\n{lines}"
            + (f"\nHINT: {exc.hint}" if exc.hint else ""),
            findings,
        )

    def _result(self, payload: str) -> Any:
        # fast path for results: `{"ok":<value>,"out":[...]}` decoded in one pass by the codec
        # (no generic json.loads + second walk). ',"out":[' cannot occur inside the trailing
        # list of strings (quotes are escaped there), so the last occurrence is the trailer.
        if payload.startswith('{"ok":') and payload.endswith("]}"):
            if payload.endswith(NO_OUTPUT):  # nothing printed: the common case
                try:
                    return codec.decode(payload[6:-10])
                except codec.CodecError:
                    raise errors.InterfaceError("malformed payload from wormhole_execute") from None
            cut = payload.rfind(',"out":[')
            if cut > 6:
                try:
                    value = codec.decode(payload[6:cut])
                    lines = json.loads(payload[cut + 7 : -1])
                except (codec.CodecError, ValueError):
                    raise errors.InterfaceError("malformed payload from wormhole_execute") from None
                self._emit(lines)
                return value
        try:
            data = json.loads(payload)
        except ValueError:
            raise errors.InterfaceError("malformed payload from wormhole_execute") from None
        self._emit(data.get("out", ()))
        if "ok" in data:
            try:
                return codec.decode_value(data["ok"])
            except codec.CodecError as exc:
                raise errors.InterfaceError(f"cannot decode the result: {exc}") from None
        err = data.get("err")
        if not isinstance(err, dict):
            raise errors.InterfaceError("malformed payload from wormhole_execute")
        raise self._remote_exception(err)

    def _emit(self, lines: Any) -> None:
        """print() output of the remote function: logged, and echoed on stdout."""
        for line in lines:
            remote_log.info("%s: %s", self.name, line, extra={"remote_function": self.name})
            if self.echo:
                print(line)

    def _remote_exception(self, err: dict[str, Any]) -> BaseException:
        type_name = str(err.get("type", "Exception"))
        message = str(err.get("message", ""))
        sqlstate = err.get("sqlstate")
        frames = [(self.filename, self._file_line(int(n)), str(fn)) for n, fn in err.get("tb", [])]
        exc: BaseException
        if type_name == "RejectedFunction":
            findings = [
                errors.Finding(self._file_line(int(f[0])), int(f[1]), str(f[2]), str(f[3]))
                for f in err.get("findings", [])
            ]
            exc = errors.RejectedFunction(
                f"{self.name}() is refused by the server's policy: {message}", findings
            )
        elif type_name == "LimitExceeded":
            exc = errors.LimitExceeded(message, str(err.get("limit", "")))
        elif type_name == "WorkerCrashed":
            exc = errors.WorkerCrashed(message)
        elif sqlstate and type_name == "DatabaseError":
            exc = errors.lookup(sqlstate)(message, sqlstate, err.get("detail"), err.get("hint"))
            exc.remote_traceback = frames  # type: ignore[attr-defined]
        else:
            cls = errors.remote_class(type_name) if err.get("builtin") else errors.RemoteError
            try:
                exc = cls(message)
            except Exception:  # noqa: BLE001 - odd constructor: keep the error anyway
                exc = errors.RemoteError(message)
            assert isinstance(exc, errors.RemoteError)
            exc.remote_type = type_name
            exc.remote_message = message
            exc.remote_traceback = frames
        return _with_remote_frames(exc, frames)


def _schema_error(exc: errors.DatabaseError) -> BaseException:
    if exc.sqlstate == "42883":  # undefined_function
        return errors.SchemaError(
            "wormhole is not installed in this database (wormhole_execute does not exist): "
            "run `wormhole install --dsn ...` or `psql -f schema.sql` as a superuser"
        )
    if exc.sqlstate == "42501":
        exc.hint = exc.hint or "a DBA can grant it: GRANT wormhole_user TO <your role>"
    return exc


def _with_remote_frames(exc: BaseException, frames: list[tuple[str, int, str]]) -> BaseException:
    """Attach traceback entries for the remote frames, so tracebacks show *your* file and line.

    Each entry is a real frame of a tiny code object compiled under your file name and renamed
    to your function, so ``traceback`` prints the right file, line, function and source line.
    """
    tb: types.TracebackType | None = None
    for filename, lineno, name in reversed(frames[-20:]):
        try:
            # the frame-grabbing statement sits on the user's line, so every Python version's
            # traceback machinery (tb_lineno, or code positions at tb_lasti on 3.11+) agrees
            code = compile("\n" * (max(lineno, 1) - 1) + "_f = _g()", filename, "exec")
            code = code.replace(co_name=name)
            scope: dict[str, Any] = {"_g": sys._getframe}
            exec(code, scope)
            lasti = 0
            for ins in dis.get_instructions(code):
                pos = getattr(ins, "positions", None)
                if pos is not None and pos.lineno == lineno:
                    lasti = ins.offset
                    break
            tb = types.TracebackType(tb, scope["_f"], lasti, lineno)
        except Exception:  # noqa: BLE001 - cosmetic: never lose the error over a traceback
            break
    if tb is not None:
        exc = exc.with_traceback(tb)
    return exc


def _capture(fn: Callable[..., Any]) -> tuple[str, str, int]:
    """The text to ship (the ``def`` without decorators, dedented), the file and def line."""
    try:
        lines, start = inspect.getsourcelines(fn)
        filename = inspect.getsourcefile(fn) or fn.__code__.co_filename
    except (OSError, TypeError):
        raise errors.InterfaceError(
            f"the source of {fn.__qualname__}() is not available (defined in a REPL or built "
            "dynamically?): define @remote functions in a file"
        ) from None
    text = textwrap.dedent("".join(lines)).replace("\r\n", "\n")
    try:
        tree = ast.parse(text)
    except SyntaxError as exc:
        raise errors.InterfaceError(f"cannot parse the source of {fn.__qualname__}(): {exc}")
    node = tree.body[0] if tree.body else None
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        raise errors.InterfaceError(f"cannot find the def of {fn.__qualname__}()")
    body = text.splitlines()[node.lineno - 1 : node.end_lineno]
    return "\n".join(body) + "\n", filename, start + node.lineno - 1


@overload
def remote(fn: Callable[P, R]) -> RemoteFunction[P, R]: ...


@overload
def remote(*, echo: bool = True) -> Callable[[Callable[P, R]], RemoteFunction[P, R]]: ...


def remote(fn: Any = None, *, echo: bool = True) -> Any:
    """Run the decorated function inside PostgreSQL, next to the data.

    ``@remote`` or ``@remote(echo=False)``. ``echo`` prints the function's ``print()`` output on
    the client's stdout (it is always also logged on the ``wormhole.remote`` logger).
    """
    if fn is None:
        return lambda f: RemoteFunction(f, echo=echo)
    return RemoteFunction(fn, echo=echo)


__all__ = ["remote", "RemoteFunction", "forget_installed"]
