"""Transactions that retry themselves: ``transaction()``, and the retry of standalone calls.

Three forms, one object (see docs/transactions.md)::

    with transaction(isolation="serializable"):      # commit on success, rollback on error;
        ...                                           # a with-block cannot re-run itself: NO retry

    @transaction(isolation="serializable", max_retries=5)
    def transfer(src, dst, amount): ...               # the whole function is the unit: retried

    transaction(max_retries=5).run(transfer, 1, 2, 100)

Nested use (same connection) makes savepoints, and the retry belongs to the outermost unit.
A remote call outside any transaction is its own transaction and is retried by
:func:`retry_standalone` (hooked into ``RemoteFunction.call_with``).

How a transaction is driven, on both drivers: when it begins on an idle connection, the
connection is switched to autocommit (a client-side switch, no round trip) and wormhole sends
``BEGIN ISOLATION LEVEL ...`` itself, then ``COMMIT`` or ``ROLLBACK``, then restores the switch.
So the transaction's characteristics never depend on the connection's defaults, and the
connection is idle again (or closed, when it broke) after any outcome.
"""

from __future__ import annotations

import functools
import inspect
import logging
import random
import time
import types
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from . import errors
from .api import _scoped, get_connection
from .drivers import Driver, for_connection

log = logging.getLogger("wormhole")

T = TypeVar("T")

ISOLATION_LEVELS = {
    "serializable": "SERIALIZABLE",
    "repeatable read": "REPEATABLE READ",
    "read committed": "READ COMMITTED",
}

__all__ = [
    "ISOLATION_LEVELS",
    "RetryEvent",
    "RetryPolicy",
    "Transaction",
    "get_retry_defaults",
    "retry_standalone",
    "set_retry_defaults",
    "transaction",
]


# --- policy -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class RetryEvent:
    """What ``on_retry`` receives, once per retry (before the back-off sleep)."""

    unit: str  #: what is retried: "transfer()" (a runner) or "f() (standalone call)"
    attempt: int  #: the attempt that just failed (1 = the first)
    error: BaseException  #: why it failed
    delay: float  #: seconds slept before the next attempt
    reconnect: bool  #: the next attempt runs on a new connection from ``connect()``


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry.

    ``max_retries`` retries after the first attempt (so ``max_retries + 1`` attempts in all).
    The sleep before retry *n* (1-based) is drawn uniformly from ``[c/2, c]`` with
    ``c = min(max_backoff, backoff * 2**(n-1))``: capped exponential back-off with jitter, so
    contending clients spread out instead of colliding again in lockstep.
    """

    max_retries: int = 5
    backoff: float = 0.01
    max_backoff: float = 1.0
    on_retry: Callable[[RetryEvent], object] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise errors.InterfaceError(f"max_retries must be an int >= 0, not {self.max_retries!r}")
        if self.backoff < 0 or self.max_backoff < 0:
            raise errors.InterfaceError("backoff and max_backoff must be >= 0 seconds")

    def delay(self, retry: int) -> float:
        ceiling = min(self.max_backoff, self.backoff * (2 ** min(retry - 1, 62)))
        return random.uniform(ceiling / 2, ceiling)


_defaults = RetryPolicy()


def set_retry_defaults(**changes: Any) -> RetryPolicy:
    """Change the defaults (``max_retries``, ``backoff``, ``max_backoff``, ``on_retry``) used by
    standalone remote calls and by ``transaction()`` arguments left unset. Returns the old
    policy (pass its fields back to restore it)."""
    global _defaults
    old = _defaults
    _defaults = replace(_defaults, **changes)
    return old


def get_retry_defaults() -> RetryPolicy:
    return _defaults


def _set_attempts(exc: BaseException, attempts: int) -> None:
    try:
        exc.attempts = attempts  # type: ignore[attr-defined]
    except (AttributeError, TypeError):  # pragma: no cover - exotic exception types
        pass


def _note(exc: BaseException, text: str) -> None:
    add_note = getattr(exc, "add_note", None)  # Python >= 3.11
    if add_note is not None:
        try:
            add_note(text)
        except Exception:  # noqa: BLE001 - cosmetic
            pass


def _describe(exc: BaseException) -> str:
    code = getattr(exc, "sqlstate", None)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}" + (f" [{code}]" if code else "") + (f": {first}" if first else "")


def _announce(policy: RetryPolicy, unit: str, attempt: int, exc: BaseException, delay: float,
              reconnect: bool) -> None:
    log.info(
        "wormhole: %s failed on attempt %d (%s); retry %d of %d in %.3fs%s",
        unit, attempt, _describe(exc), attempt, policy.max_retries, delay,
        " on a new connection" if reconnect else "",
        extra={"wormhole_unit": unit, "wormhole_attempt": attempt,
               "wormhole_sqlstate": getattr(exc, "sqlstate", None)},
    )
    if policy.on_retry is not None:
        policy.on_retry(RetryEvent(unit, attempt, exc, delay, reconnect))


# --- standalone remote calls ------------------------------------------------------------------

def retry_standalone(call: Callable[[], T], unit: str) -> T:
    """Run ``call`` (one remote call that is its own transaction) with the default policy.

    Retried: 40001 and 40P01, from the statement or from the call's payload (the server rolled
    the call back; nothing of it is left). Not retried: everything else, and in particular a
    connection lost while the call's statement was out (``OutcomeUnknown``, raised by the
    caller) and 25006 (the same connection would be refused again).
    """
    policy = _defaults
    attempt = 0
    while True:
        attempt += 1
        try:
            return call()
        except Exception as exc:
            if errors.is_retryable(exc) and attempt <= policy.max_retries:
                delay = policy.delay(attempt)
                _announce(policy, unit + " (standalone call)", attempt, exc, delay, False)
                time.sleep(delay)
                continue
            _set_attempts(exc, attempt)
            if attempt > 1:
                _note(exc, f"wormhole: {unit} gave up after {attempt} attempts")
            raise


# --- frames: one per entered transaction() ------------------------------------------------------

@dataclass
class _Frame:
    owner: Transaction
    driver: Driver
    conn: Any
    savepoint: str | None  # None: the top-level transaction (we sent BEGIN)
    autocommit_before: bool
    owned: bool = False  # opened by transaction(connect=...): closed when the block ends
    scope_token: Any = None
    stack_token: Any = None


_stack: ContextVar[tuple[_Frame, ...]] = ContextVar("wormhole_transactions", default=())


def _outer_frame(conn: Any) -> _Frame | None:
    for frame in reversed(_stack.get()):
        if frame.conn is conn:
            return frame
    return None


def _lost(exc: BaseException, driver: Driver | None) -> bool:
    if errors.is_connection_lost(exc):
        return True
    return driver is not None and isinstance(exc, errors.DatabaseError) and driver.is_closed()


def _restore_autocommit(frame: _Frame) -> None:
    if frame.autocommit_before or frame.driver.is_closed():
        return
    try:
        frame.driver.set_autocommit(False)
    except Exception:  # noqa: BLE001 - a connection that cannot be reset is closed below
        if frame.driver.transaction_status() != "idle":
            frame.driver.close()


def _rollback(frame: _Frame) -> None:
    """Undo the frame; leave the connection idle (top level) or usable (savepoint), or closed."""
    driver = frame.driver
    if driver.is_closed():
        return
    try:
        if frame.savepoint is None:
            if driver.transaction_status() != "idle":  # e.g. a failed COMMIT already ended it
                driver.run_control("ROLLBACK")
        else:
            driver.run_control(f"ROLLBACK TO SAVEPOINT {frame.savepoint}")
            driver.run_control(f"RELEASE SAVEPOINT {frame.savepoint}")
    except Exception as exc:  # noqa: BLE001 - keep the original error; never leave it half-open
        if frame.savepoint is None and not driver.is_closed() \
                and driver.transaction_status() != "idle":
            log.warning("wormhole: ROLLBACK failed (%s); closing the connection so it is not "
                        "left inside a transaction", _describe(exc))
            driver.close()
    finally:
        if frame.savepoint is None:
            _restore_autocommit(frame)


class Transaction:
    """A transaction specification: use it with ``with``, as a decorator, or with ``.run()``.

    Made by :func:`transaction`. Holds only configuration, so one object may be used by many
    threads at once (each thread with its own connection).
    """

    def __init__(
        self,
        isolation: str | None = None,
        readonly: bool | None = None,
        deferrable: bool | None = None,
        *,
        max_retries: int | None = None,
        conn: Any = None,
        connect: Callable[[], Any] | None = None,
        backoff: float | None = None,
        max_backoff: float | None = None,
        on_retry: Callable[[RetryEvent], object] | None = None,
    ) -> None:
        if isolation is not None:
            key = " ".join(str(isolation).replace("_", " ").lower().split())
            if key not in ISOLATION_LEVELS:
                raise errors.InterfaceError(
                    f"unknown isolation level {isolation!r}: use one of "
                    + ", ".join(repr(k) for k in ISOLATION_LEVELS)
                )
            isolation = key
        for name, value in (("readonly", readonly), ("deferrable", deferrable)):
            if value is not None and not isinstance(value, bool):
                raise errors.InterfaceError(f"{name} must be True, False or None")
        if conn is not None:
            for_connection(conn)  # fail now for an unsupported type
        if connect is not None and not callable(connect):
            raise errors.InterfaceError("connect must be a callable returning a new connection")
        self.isolation = isolation
        self.readonly = readonly
        self.deferrable = deferrable
        self.conn = conn
        self.connect = connect
        self._overrides: dict[str, Any] = {
            k: v for k, v in (("max_retries", max_retries), ("backoff", backoff),
                              ("max_backoff", max_backoff), ("on_retry", on_retry))
            if v is not None
        }
        self.policy()  # validate now

    def __repr__(self) -> str:
        parts = [f"{k}={getattr(self, k)!r}" for k in ("isolation", "readonly", "deferrable")
                 if getattr(self, k) is not None]
        parts += [f"{k}={v!r}" for k, v in self._overrides.items()]
        return f"transaction({', '.join(parts)})"

    def policy(self) -> RetryPolicy:
        """The retry policy in force: the defaults with this transaction's overrides."""
        return replace(_defaults, **self._overrides) if self._overrides else _defaults

    def begin_sql(self) -> str:
        sql = "BEGIN"
        if self.isolation is not None:
            sql += " ISOLATION LEVEL " + ISOLATION_LEVELS[self.isolation]
        if self.readonly is not None:
            sql += " READ ONLY" if self.readonly else " READ WRITE"
        if self.deferrable is not None:
            sql += " DEFERRABLE" if self.deferrable else " NOT DEFERRABLE"
        return sql

    # -- connections -----------------------------------------------------------------------------
    def _acquire(self) -> tuple[Any, bool]:
        """(connection, owned): the explicit ``conn``, else a new one from ``connect()`` (ours
        to close), else the connection in scope."""
        if self.conn is not None:
            return self.conn, False
        if self.connect is not None:
            return self._new_connection(), True
        return get_connection(), False

    def _new_connection(self) -> Any:
        assert self.connect is not None
        try:
            conn = self.connect()
        except errors.WormholeError:
            raise
        except Exception as exc:
            if any(c.__name__ == "OperationalError" and c.__module__.startswith("psycopg")
                   for c in type(exc).__mro__):  # refused, starting up, shutting down, ...
                raise errors.ConnectionLost(f"connect() failed: {str(exc).strip()}") from exc
            raise
        for_connection(conn)
        return conn

    # -- frames ----------------------------------------------------------------------------------
    def _open(self, conn: Any) -> _Frame:
        driver = for_connection(conn)
        status = driver.transaction_status()
        if status == "unknown":
            raise errors.ConnectionLost("the connection is closed or broken; nothing was sent")
        if status == "active":
            raise errors.InterfaceError(
                "the connection is busy running a statement (shared between threads?); "
                "give each thread its own connection"
            )
        outer = _outer_frame(conn)
        if status == "idle":
            if outer is not None:
                raise errors.InterfaceError(
                    "the enclosing transaction() on this connection was ended inside its "
                    "block (conn.commit() / conn.rollback()?); let transaction() end it"
                )
            autocommit = driver.get_autocommit()
            if not autocommit:
                driver.set_autocommit(True)  # client-side: we send BEGIN/COMMIT ourselves
            frame = _Frame(self, driver, conn, None, autocommit)
            try:
                driver.run_control(self.begin_sql())
            except BaseException:
                _restore_autocommit(frame)
                raise
        else:  # "intrans" or "inerror": a transaction is open already -> a savepoint
            self._check_nested(outer)
            depth = sum(1 for f in _stack.get() if f.conn is conn)
            name = f"wormhole_sp{depth + 1}"
            driver.run_control(f"SAVEPOINT {name}")
            frame = _Frame(self, driver, conn, name, driver.get_autocommit())
        frame.scope_token = _scoped.set(conn)
        frame.stack_token = _stack.set(_stack.get() + (frame,))
        return frame

    def _check_nested(self, outer: _Frame | None) -> None:
        for name in ("isolation", "readonly", "deferrable"):
            wanted = getattr(self, name)
            if wanted is None:
                continue
            have = getattr(outer.owner, name) if outer is not None else None
            if have != wanted:
                where = ("the enclosing transaction()" if outer is not None
                         else "a transaction already open on this connection")
                raise errors.InterfaceError(
                    f"{name}={wanted!r} cannot be set on a nested transaction: it joins "
                    f"{where} (as a savepoint), whose {name} is "
                    f"{'unset' if have is None else repr(have)}; set it on the outermost one"
                )

    def _pop(self, frame: _Frame) -> None:
        stack = _stack.get()
        if not stack or stack[-1] is not frame:
            raise errors.InterfaceError("transaction() blocks were exited out of order")
        _stack.reset(frame.stack_token)
        _scoped.reset(frame.scope_token)

    def _close(self, frame: _Frame, exc: BaseException | None) -> None:
        """End the frame: commit/release when ``exc`` is None, else roll back."""
        self._pop(frame)
        if exc is not None:
            _rollback(frame)
            return
        driver = frame.driver
        if frame.savepoint is not None:
            try:
                driver.run_control(f"RELEASE SAVEPOINT {frame.savepoint}")
            except BaseException:
                _rollback(frame)
                raise
            return
        status = driver.transaction_status()
        if status in ("idle", "inerror"):
            _rollback(frame)
            if status == "idle":
                raise errors.InterfaceError(
                    "the transaction was ended inside its transaction() block "
                    "(conn.commit()/conn.rollback() or COMMIT?); wormhole cannot tell what "
                    "was committed"
                )
            raise errors.lookup("25P02")(
                "the transaction failed inside its transaction() block (an error was caught "
                "and not re-raised?); it was rolled back, nothing of it is committed",
                "25P02",
            )
        if status == "unknown":
            raise errors.ConnectionLost(
                "the connection was lost before COMMIT was sent: the transaction was rolled "
                "back by the server, nothing of it is committed"
            )
        try:
            driver.run_control("COMMIT")
        except BaseException as err:
            if isinstance(err, Exception) and _lost(err, driver):
                raise errors.OutcomeUnknown(
                    "the connection was lost after COMMIT was sent: the transaction may or may "
                    "not have committed (outcome unknown). It is not retried; check the data "
                    f"before trying again. Cause: {_describe(err)}"
                ) from err
            _rollback(frame)  # e.g. 40001 at commit: the server ended it; make sure it is idle
            raise
        _restore_autocommit(frame)

    # -- context manager: no retry ---------------------------------------------------------------
    def __enter__(self) -> Any:
        conn, owned = self._acquire()
        try:
            frame = self._open(conn)
        except BaseException:
            if owned:
                for_connection(conn).close()
            raise
        frame.owned = owned
        return conn

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: types.TracebackType | None) -> None:
        stack = _stack.get()
        frame = stack[-1] if stack else None
        if frame is None or frame.owner is not self:
            raise errors.InterfaceError("transaction() blocks were exited out of order")
        try:
            self._close(frame, exc)
        finally:
            if frame.owned:
                frame.driver.close()
        if exc is not None and frame.savepoint is None and isinstance(exc, Exception):
            if errors.is_retryable(exc):
                _note(exc, "wormhole: `with transaction()` cannot re-run its block, so it was "
                      "not retried; use @transaction(...) or transaction(...).run(fn) to retry")
            elif _lost(exc, frame.driver):
                _note(exc, "wormhole: the connection was lost before COMMIT: the transaction "
                      "was rolled back, nothing of it is committed")

    # -- runner: retries -------------------------------------------------------------------------
    def __call__(self, fn: Callable[..., T]) -> Callable[..., T]:
        """Decorator: each call of ``fn`` runs as one transaction, retried as a whole."""
        self._check_callable(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> T:
            return self.run(fn, *args, **kwargs)

        wrapper.transaction = self  # type: ignore[attr-defined]
        return wrapper

    @staticmethod
    def _check_callable(fn: Any) -> None:
        if not callable(fn):
            raise errors.InterfaceError(f"transaction() decorates a function, not {fn!r}")
        target = getattr(fn, "local", fn)
        if inspect.iscoroutinefunction(target) or inspect.isgeneratorfunction(target) \
                or inspect.isasyncgenfunction(target):
            raise errors.InterfaceError(
                "transaction() runs plain functions: a generator or coroutine would run after "
                "the transaction committed"
            )

    def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` as one transaction; re-run all of it on a retryable error.

        Retried (up to ``max_retries`` times, with back-off): 40001, 40P01, and, when a
        ``connect`` factory was given, a connection lost before COMMIT was sent and 25006
        (the next attempt runs on a new connection). Never retried: ``OutcomeUnknown`` and every
        other error. Inside another transaction on the same connection it runs once, as a
        savepoint, and errors go to the enclosing unit. The error that ends the run carries
        ``.attempts``.
        """
        self._check_callable(fn)
        policy = self.policy()
        unit = f"{getattr(fn, '__qualname__', None) or repr(fn)}()"
        conn: Any = None
        owned = fresh = False
        attempt = 0
        try:
            while True:
                attempt += 1
                frame: _Frame | None = None
                try:
                    if conn is None:
                        if fresh:  # replacing a lost connection: only the factory will do
                            conn, owned = self._new_connection(), True
                        else:
                            conn, owned = self._acquire()
                    frame = self._open(conn)
                    try:
                        result = fn(*args, **kwargs)
                    except BaseException as exc:
                        self._close(frame, exc)
                        raise
                    self._close(frame, None)
                    return result
                except BaseException as exc:
                    verdict = self._verdict(exc, frame, conn)
                    if verdict in (None, "needs-connect") or attempt > policy.max_retries:
                        _set_attempts(exc, attempt)
                        if attempt > 1:
                            _note(exc, f"wormhole: {unit} gave up after {attempt} attempts")
                        if verdict == "needs-connect":
                            _note(exc, "wormhole: the transaction was rolled back (nothing of "
                                  "it is committed); pass transaction(connect=...) to retry on "
                                  "a new connection")
                        raise
                    reconnect = verdict == "reconnect"
                    if reconnect:  # the next attempt runs on a new connection from connect()
                        if owned and conn is not None:
                            for_connection(conn).close()
                        conn, owned, fresh = None, False, True
                    delay = policy.delay(attempt)
                    _announce(policy, unit, attempt, exc, delay, reconnect)
                    time.sleep(delay)
        finally:
            if owned and conn is not None:
                for_connection(conn).close()

    def _verdict(self, exc: BaseException, frame: _Frame | None, conn: Any) -> str | None:
        """"again" (same connection), "reconnect", "needs-connect" (would be retryable with a
        connect factory) or None (not retryable)."""
        if not isinstance(exc, Exception) or isinstance(exc, errors.OutcomeUnknown):
            return None
        if frame is not None and frame.savepoint is not None:
            return None  # nested: the enclosing unit owns the retry
        if frame is None and conn is not None and _outer_frame(conn) is not None:
            return None
        driver = for_connection(conn) if conn is not None else None
        lost = _lost(exc, driver) or (driver is not None and driver.is_closed())
        if errors.is_retryable(exc) and not lost:
            return "again"
        if lost or (errors.is_read_only_refusal(exc) and not self.readonly):
            return "reconnect" if self.connect is not None else "needs-connect"
        return None


def transaction(
    isolation: str | Callable[..., Any] | None = None,
    readonly: bool | None = None,
    deferrable: bool | None = None,
    *,
    max_retries: int | None = None,
    conn: Any = None,
    connect: Callable[[], Any] | None = None,
    backoff: float | None = None,
    max_backoff: float | None = None,
    on_retry: Callable[[RetryEvent], object] | None = None,
) -> Any:
    """A transaction: ``with transaction(...):`` (no retry), ``@transaction(...)`` or
    ``transaction(...).run(fn, *args)`` (retried as a whole). ``@transaction`` without
    parentheses works too. See docs/transactions.md for the retry policy.

    ``isolation``: ``"serializable"``, ``"repeatable read"``, ``"read committed"`` or None (the
    server's default). ``readonly``/``deferrable``: True/False/None (default). ``max_retries``:
    retries after the first attempt (default 5, see :func:`set_retry_defaults`). ``conn``: the
    connection to use (default: the one in scope). ``connect``: a zero-argument factory; when
    given, the transaction runs on a connection it opens (and closes), and a lost connection or
    a standby's 25006 is retried on a new one.
    """
    if callable(isolation):
        return Transaction()(isolation)
    return Transaction(
        isolation, readonly, deferrable, max_retries=max_retries, conn=conn, connect=connect,
        backoff=backoff, max_backoff=max_backoff, on_retry=on_retry,
    )
