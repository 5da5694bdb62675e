"""Exceptions raised inside the runtime.

These are the exceptions user code can see server-side (``DatabaseError`` from ``query()``),
and the internal signals the host uses. The client-side tree lives in ``wormhole.errors``.
"""

from __future__ import annotations


class DatabaseError(Exception):
    """A SQL statement run by ``query()`` failed. ``sqlstate`` is PostgreSQL's error code.

    The same name is exported client-side (``wormhole.DatabaseError``), so user code can write
    ``except DatabaseError as e: if e.sqlstate == "23505": ...`` and run it on either side.
    """

    def __init__(
        self,
        message: str,
        sqlstate: str | None = None,
        detail: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.detail = detail
        self.hint = hint


class ForbiddenStatement(DatabaseError):
    """``query()`` refused a statement before sending it (SQLSTATE ``WH003``).

    The function runs inside the caller's transaction and under the limits the DBA set, so
    statements that would end or fork that transaction, change the role or session, lift the
    timeouts, or break the type parity of results are refused. This is a guard against misuse,
    not the security boundary (that is the database role the code runs as).
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, "WH003")


class Interrupted(BaseException):
    """The backend was cancelled, terminated or timed out while user code ran.

    A ``BaseException`` on purpose: user code's ``except Exception`` must not swallow it (the
    policy rejects bare ``except:`` and ``BaseException``). ``cause`` is the host's original
    error, re-raised once the user code is unwound.
    """

    def __init__(self, cause: BaseException | None = None, message: str = "interrupted") -> None:
        super().__init__(message)
        self.cause = cause


class LimitExceeded(Exception):
    """A wormhole limit (time, memory, rows, result size, output size) was exceeded."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit


class PolicyViolation(Exception):
    """Raised at run time by a guard (e.g. a forbidden attribute reached dynamically)."""


#: the plain exception types a failed ``query()`` may raise besides ``DatabaseError`` (a value
#: that cannot be sent or converted); the confined worker's ``qerr`` names one of them, so the
#: function sees the same type in both modes
QUERY_ERRORS: tuple[type[Exception], ...] = (TypeError, ValueError, RecursionError, MemoryError)
