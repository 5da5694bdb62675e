"""wormhole's exceptions.

Every exception wormhole raises derives from :class:`WormholeError`::

    WormholeError
    ├── InterfaceError            misuse on the client: no connection, source not capturable
    │   └── ArgumentError         an argument cannot cross to the server (also a TypeError)
    ├── SchemaError               wormhole is not installed in this database, or another version
    ├── RejectedFunction          the server's policy refused the function (.findings)
    ├── RemoteError               user code raised inside PostgreSQL (.remote_type, .remote_traceback)
    │   └── Remote<Builtin>       built-in exceptions keep their type: RemoteValueError is a
    │                             RemoteError *and* a ValueError
    ├── LimitExceeded             a DBA limit (time, memory, result size) ended the call
    ├── WorkerCrashed             the confined worker died (signal, limit); the server is fine
    ├── OutcomeUnknown            the connection broke after COMMIT (or a standalone call) was
    │                             sent: it may or may not have committed (never retried)
    └── DatabaseError             a SQL statement failed: .sqlstate, .detail, .hint
        ├── IntegrityError            class 23 (UniqueViolation 23505, ForeignKeyViolation 23503,
        │                             NotNullViolation 23502, CheckViolation 23514)
        ├── TransactionRollbackError  class 40: SerializationFailure 40001, DeadlockDetected 40P01
        ├── OperationalError          classes 08, 53, 57 (QueryCanceled 57014, AdminShutdown 57P01)
        │   └── ConnectionLost        the connection broke; no SQLSTATE
        ├── ProgrammingError          class 42 (UndefinedTable 42P01, UndefinedColumn 42703,
        │                             InsufficientPrivilege 42501, SyntaxError 42601)
        ├── DataError                 class 22
        ├── ReadOnlySqlTransaction    25006: a write in a read-only transaction (or on a standby)
        └── ForbiddenStatement        WH003: query() refused a statement (COMMIT, SET ROLE, ...)

Retry classification (used by ``wormhole.transaction`` and standalone remote calls):
:func:`is_retryable` is True for 40001 and 40P01; :func:`is_connection_lost` for a broken
connection (no SQLSTATE, class 08 except 08P01, 57P01/57P02/57P03). An error re-raised by a
retrying runner carries ``.attempts`` (how many attempts were made).

``DatabaseError`` is also the class user code sees server-side, so ``except DatabaseError`` in a
``@remote`` function works on both sides. SQLSTATEs are preserved: ``e.sqlstate == "23505"``.
Classes register their SQLSTATE with ``class X(DatabaseError, sqlstate="..."):``; an unknown code
falls back to its two-character class, then to ``DatabaseError``.
"""

from __future__ import annotations

import builtins
from typing import Any, ClassVar

from .runtime import errors as _rt

__all__ = [
    "WormholeError",
    "InterfaceError",
    "ArgumentError",
    "SchemaError",
    "RejectedFunction",
    "Finding",
    "RemoteError",
    "LimitExceeded",
    "WorkerCrashed",
    "OutcomeUnknown",
    "DatabaseError",
    "IntegrityError",
    "UniqueViolation",
    "ForeignKeyViolation",
    "NotNullViolation",
    "CheckViolation",
    "TransactionRollbackError",
    "SerializationFailure",
    "DeadlockDetected",
    "OperationalError",
    "ConnectionLost",
    "QueryCanceled",
    "AdminShutdown",
    "ProgrammingError",
    "UndefinedTable",
    "UndefinedColumn",
    "InsufficientPrivilege",
    "DataError",
    "ForbiddenStatement",
    "ReadOnlySqlTransaction",
    "lookup",
    "RETRYABLE_SQLSTATES",
    "CONNECTION_LOST_SQLSTATES",
    "is_retryable",
    "is_connection_lost",
    "is_read_only_refusal",
]


class WormholeError(Exception):
    """Base class of every error wormhole raises."""

    #: how many attempts a retrying runner made before raising this error (1: no retry)
    attempts: int = 1


class InterfaceError(WormholeError):
    """wormhole was used in a way that cannot work (no connection, no source, bad driver)."""


class ArgumentError(InterfaceError, TypeError):
    """An argument (or keyword argument) of a remote call cannot be sent to the server."""


class SchemaError(WormholeError):
    """wormhole's SQL objects are missing or of another version in this database."""


class Finding:
    """One reason the policy refused a function, with its line in *your* file."""

    __slots__ = ("lineno", "col", "rule", "message")

    def __init__(self, lineno: int, col: int, rule: str, message: str) -> None:
        self.lineno = lineno
        self.col = col
        self.rule = rule
        self.message = message

    def __repr__(self) -> str:
        return f"Finding(line={self.lineno}, rule={self.rule!r}, message={self.message!r})"


class RejectedFunction(WormholeError):
    """The server's policy refused to install the function. ``findings`` says why, per line."""

    def __init__(self, message: str, findings: list[Finding] | None = None) -> None:
        super().__init__(message)
        self.findings = findings or []


class RemoteError(WormholeError):
    """User code raised an exception inside PostgreSQL.

    ``remote_type`` is the exception's class name, ``remote_message`` its message and
    ``remote_traceback`` the frames (file, line, function) in your own source file.
    """

    remote_type: str = ""
    remote_message: str = ""
    remote_traceback: list[tuple[str, int, str]]

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.remote_traceback = []

    def __str__(self) -> str:
        text = super().__str__()
        if self.remote_type and type(self) is RemoteError:
            text = f"{self.remote_type}: {text}"
        if self.remote_traceback:
            frames = "".join(
                f'\n  File "{f}", line {n}, in {fn}' for f, n, fn in self.remote_traceback
            )
            text += "\nRemote traceback (most recent call last):" + frames
        return text


_REMOTE_CLASSES: dict[str, type[RemoteError]] = {}


def remote_class(type_name: str) -> type[RemoteError]:
    """``RemoteValueError`` for ``"ValueError"``: both a RemoteError and a ValueError."""
    cls = _REMOTE_CLASSES.get(type_name)
    if cls is not None:
        return cls
    base = getattr(builtins, type_name, None)
    if (
        isinstance(base, type)
        and issubclass(base, Exception)
        and not issubclass(base, (OSError, UnicodeError, SyntaxError, StopIteration))
    ):
        try:
            cls = type(f"Remote{type_name}", (RemoteError, base), {"__module__": __name__})
        except TypeError:  # incompatible layouts: fall back to the plain class
            cls = RemoteError
    else:
        cls = RemoteError
    _REMOTE_CLASSES[type_name] = cls
    return cls


class LimitExceeded(WormholeError):
    """A limit set by the DBA (``wormhole_limits``) ended the call. ``limit`` names it."""

    def __init__(self, message: str, limit: str = "") -> None:
        super().__init__(message)
        self.limit = limit


class WorkerCrashed(WormholeError):
    """The confined worker running the call died; the server and other sessions are fine."""


class OutcomeUnknown(WormholeError):
    """The connection was lost after COMMIT was sent (or while a remote call ran as its own
    transaction): the transaction may or may not have committed. Never retried automatically;
    check the data before trying again. ``__cause__`` is the driver's error."""


_BY_SQLSTATE: dict[str, type[DatabaseError]] = {}


class DatabaseError(WormholeError, _rt.DatabaseError):
    """A SQL statement failed in PostgreSQL (client- or server-side). ``sqlstate`` is kept."""

    sqlstate_code: ClassVar[str | None] = None

    def __init_subclass__(cls, sqlstate: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if sqlstate is not None:
            cls.sqlstate_code = sqlstate
            _BY_SQLSTATE[sqlstate] = cls

    def __init__(
        self,
        message: str,
        sqlstate: str | None = None,
        detail: str | None = None,
        hint: str | None = None,
    ) -> None:
        _rt.DatabaseError.__init__(self, message, sqlstate or self.sqlstate_code, detail, hint)

    def __str__(self) -> str:
        text = Exception.__str__(self)
        if self.detail:
            text += f"\nDETAIL: {self.detail}"
        if self.hint:
            text += f"\nHINT: {self.hint}"
        return text

    def __reduce__(self) -> Any:
        return (type(self), (Exception.__str__(self), self.sqlstate, self.detail, self.hint))


def lookup(sqlstate: str | None) -> type[DatabaseError]:
    """The most specific class for ``sqlstate``: exact code, then its class, then the base."""
    if not sqlstate:
        return DatabaseError
    return _BY_SQLSTATE.get(sqlstate) or _BY_SQLSTATE.get(sqlstate[:2]) or DatabaseError


class IntegrityError(DatabaseError, sqlstate="23"):
    pass


class UniqueViolation(IntegrityError, sqlstate="23505"):
    pass


class ForeignKeyViolation(IntegrityError, sqlstate="23503"):
    pass


class NotNullViolation(IntegrityError, sqlstate="23502"):
    pass


class CheckViolation(IntegrityError, sqlstate="23514"):
    pass


class TransactionRollbackError(DatabaseError, sqlstate="40"):
    pass


class SerializationFailure(TransactionRollbackError, sqlstate="40001"):
    pass


class DeadlockDetected(TransactionRollbackError, sqlstate="40P01"):
    pass


class OperationalError(DatabaseError, sqlstate="08"):
    pass


_BY_SQLSTATE["53"] = OperationalError
_BY_SQLSTATE["57"] = OperationalError


class ConnectionLost(OperationalError):
    """The connection broke (server restart, terminated backend, network). ``sqlstate`` is
    None: the server never answered. Whether a statement ran is decided by what was sent."""


class QueryCanceled(OperationalError, sqlstate="57014"):
    pass


class AdminShutdown(OperationalError, sqlstate="57P01"):
    pass


class ProgrammingError(DatabaseError, sqlstate="42"):
    pass


class UndefinedTable(ProgrammingError, sqlstate="42P01"):
    pass


class UndefinedColumn(ProgrammingError, sqlstate="42703"):
    pass


class InsufficientPrivilege(ProgrammingError, sqlstate="42501"):
    pass


class DataError(DatabaseError, sqlstate="22"):
    pass


class ForbiddenStatement(DatabaseError, sqlstate="WH003"):
    pass


class ReadOnlySqlTransaction(DatabaseError, sqlstate="25006"):
    """cannot execute ... in a read-only transaction (e.g. sent to a standby)."""


# --- retry classification ---------------------------------------------------------------------

#: SQLSTATEs after which re-running the whole transaction is safe and may succeed
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})  # serialization_failure, deadlock_detected

#: SQLSTATEs meaning the server ended the session (admin/crash shutdown, starting up)
CONNECTION_LOST_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})


def _sqlstate(exc: BaseException) -> str | None:
    code = getattr(exc, "sqlstate", None)
    return code if isinstance(code, str) else None


def is_retryable(exc: BaseException) -> bool:
    """True for a serialization failure (40001) or a deadlock (40P01), whether the statement
    failed or the error came back in a remote call's payload. The transaction was rolled back
    by the server: running the whole unit again is safe."""
    return _sqlstate(exc) in RETRYABLE_SQLSTATES


def is_connection_lost(exc: BaseException) -> bool:
    """True when the error means the connection is gone (server restart, terminated backend,
    network). Says nothing about *when* it broke: that decides retry vs. OutcomeUnknown."""
    if isinstance(exc, ConnectionLost):
        return True
    code = _sqlstate(exc)
    if code is None:
        return False
    return code in CONNECTION_LOST_SQLSTATES or (code.startswith("08") and code != "08P01")


def is_read_only_refusal(exc: BaseException) -> bool:
    """25006: "cannot execute ... in a read-only transaction" (e.g. a hot standby)."""
    return _sqlstate(exc) == "25006"
