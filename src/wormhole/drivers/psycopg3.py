"""The psycopg 3 driver: ``RawCursor`` speaks ``$n`` natively, so SQL passes unchanged.

The hot statement (``call_text``: ``SELECT public.wormhole_*(...)``) does not go through a
cursor: it is sent straight through the connection's libpq wrapper (``conn.pgconn``) under
``conn.lock`` and waited for with psycopg's own generators and ``conn.wait()`` (so Ctrl-C still
cancels the query, notices and notifications still reach psycopg's handlers, and
``conn.info``/``conn.closed`` read libpq's own state). It never sends BEGIN: outside a
transaction the statement is its own transaction whatever ``conn.autocommit`` says (one round
trip, no BEGIN/COMMIT), inside one it joins it. Errors are psycopg's own
(``psycopg.errors.error_from_result``) translated like every other driver error, so SQLSTATEs
and diagnostics are the same as through a cursor.

Prepared statements (``prepare=True``): one named statement per SQL text and connection
(``wormhole_<sha1 of the text>``, never one of psycopg's own ``_pg3_*`` names). The first call
on a connection sends Parse + Bind + Execute + Sync together (libpq pipeline mode, entered and
left inside the call, every result drained before leaving), so it is one round trip like every
later call (Bind + Execute + Sync). If the statement was removed behind our back
(``DEALLOCATE ALL``, ``DISCARD ALL``: SQLSTATE 26000 on the next call), a call made outside a
transaction prepares it again and retries, transparently (nothing ran: the error comes from
Bind); inside a transaction the transaction is aborted by the server, so the call raises the
26000 error with a message saying so, and the next call prepares again.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Hashable, Sequence
from typing import Any

import psycopg
from psycopg import generators, pq
from psycopg.abc import PQGen
from psycopg.errors import error_from_result
from psycopg.pq.abc import PGconn, PGresult
from psycopg.rows import dict_row

from .. import errors
from ..runtime.rows import Rows
from ._common import text_params, translate, unencodable

_STATUS_NAMES = {
    pq.TransactionStatus.IDLE: "idle",
    pq.TransactionStatus.ACTIVE: "active",
    pq.TransactionStatus.INTRANS: "intrans",
    pq.TransactionStatus.INERROR: "inerror",
    pq.TransactionStatus.UNKNOWN: "unknown",
}
_IDLE = int(pq.TransactionStatus.IDLE)
_UNKNOWN = int(pq.TransactionStatus.UNKNOWN)
_OK = int(pq.ConnStatus.OK)
_BAD = int(pq.ConnStatus.BAD)
_TUPLES_OK = int(pq.ExecStatus.TUPLES_OK)
_COMMAND_OK = int(pq.ExecStatus.COMMAND_OK)
_FATAL_ERROR = int(pq.ExecStatus.FATAL_ERROR)
_PIPELINE_SYNC = int(pq.ExecStatus.PIPELINE_SYNC)
_SQLSTATE = pq.DiagnosticField.SQLSTATE
_PIPELINE_OFF = int(pq.PipelineStatus.OFF)


class _State:
    """What wormhole keeps per psycopg connection (in a weak map: never keeps it alive)."""

    __slots__ = ("key", "pgconn", "prepared")

    def __init__(self) -> None:
        self.key: Hashable | None = None
        self.pgconn: Any = None  # the PGconn ``prepared`` belongs to
        self.prepared: set[bytes] = set()


_states: weakref.WeakKeyDictionary[Any, _State] = weakref.WeakKeyDictionary()
_statements: dict[str, tuple[bytes, bytes]] = {}  # sql -> (statement name, sql as UTF-8)


def _statement(sql: str) -> tuple[bytes, bytes]:
    found = _statements.get(sql)
    if found is None:
        text = sql.encode()
        name = b"wormhole_" + hashlib.sha1(text).hexdigest()[:16].encode()
        if len(_statements) > 256:
            _statements.clear()
        found = _statements[sql] = (name, text)
    return found


def _translate(exc: psycopg.Error) -> Exception:
    diag = exc.diag
    return translate(exc, exc.sqlstate, diag.message_primary, diag.message_detail,
                     diag.message_hint)


def _failed(result: PGresult, encoding: str) -> Exception:
    return _translate(error_from_result(result, encoding=encoding))


def _sqlstate(result: PGresult) -> bytes | None:
    return result.error_field(_SQLSTATE)


def _one(results: list[PGresult], encoding: str) -> PGresult:
    """The statement's single row set, or its error raised as a wormhole error."""
    for result in results:
        if result.status == _FATAL_ERROR:
            raise _failed(result, encoding)
    if len(results) != 1 or results[0].status != _TUPLES_OK:
        raise errors.InterfaceError(
            "unexpected results from a wormhole statement: "
            + ", ".join(pq.ExecStatus(r.status).name for r in results)
        )
    return results[0]


def _single(pgconn: PGconn) -> PQGen[list[PGresult]]:
    """Send what libpq has queued and collect the one statement's results."""
    gen: PQGen[list[PGresult]] = generators.execute(pgconn)  # the C version when available
    return gen


def _pipelined(pgconn: PGconn) -> PQGen[list[PGresult]]:
    """Pipeline mode: send everything queued, collect every result up to PIPELINE_SYNC.

    Results are drained to the end even after an error (the aborted commands report
    PIPELINE_ABORTED), so the pipeline can be left cleanly. A connection that breaks on the way
    keeps the server's error if one arrived first (as ``generators.fetch_many`` does).
    """
    yield from generators.send(pgconn)
    results: list[PGresult] = []
    idle = 0
    while True:
        try:
            result = yield from generators.fetch(pgconn)
        except psycopg.DatabaseError:
            if any(r.status == _FATAL_ERROR for r in results):
                return results
            raise
        if result is None:
            idle += 1
            if idle > 4:  # defensive: libpq gives one NULL per command, never a run of them
                raise psycopg.OperationalError("the pipeline ended without its sync result")
            continue
        idle = 0
        if result.status == _PIPELINE_SYNC:
            return results
        results.append(result)


class Psycopg3Driver:
    """``Driver`` for ``psycopg.Connection``."""

    __slots__ = ("connection",)

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self.connection = connection

    def _state(self) -> _State:
        state = _states.get(self.connection)
        if state is None:
            state = _states[self.connection] = _State()
        return state

    def query(self, sql: str, params: Sequence[object]) -> Rows:
        args = text_params(sql, params)
        cur = psycopg.RawCursor(self.connection, row_factory=dict_row)
        try:
            cur.execute(sql, args)
            if cur.description is None:
                return Rows((), cur.rowcount)
            return Rows(cur.fetchall(), cur.rowcount)
        except psycopg.Error as exc:
            raise _translate(exc) from exc
        except UnicodeEncodeError as exc:
            raise unencodable(exc) from None
        finally:
            cur.close()

    # -- the hot statement -----------------------------------------------------------------------
    def call_text(self, sql: str, params: Sequence[str | None], prepare: bool = False
                  ) -> str | None:
        conn = self.connection
        pgconn = conn.pgconn
        if pgconn.pipeline_status != _PIPELINE_OFF:
            # the user's psycopg pipeline owns the protocol state: go through a cursor
            return self._call_text_cursor(sql, params, prepare)
        with conn.lock:
            if pgconn.status != _OK:
                raise errors.ConnectionLost("the connection is closed")
            encoding = pgconn._encoding
            try:
                values = [None if p is None else p.encode(encoding) for p in params]
            except UnicodeEncodeError as exc:
                raise unencodable(exc) from None
            try:
                if prepare:
                    result = self._run_prepared(conn, pgconn, sql, values, encoding)
                else:
                    pgconn.send_query_params(_statement(sql)[1], values)
                    result = _one(conn.wait(_single(pgconn)), encoding)
            except psycopg.Error as exc:
                raise _translate(exc) from exc
            if result.ntuples == 0:
                return None
            value = result.get_value(0, 0)
        return None if value is None else value.decode(encoding)

    def _run_prepared(self, conn: psycopg.Connection[Any], pgconn: PGconn, sql: str,
                      values: list[bytes | None], encoding: str) -> PGresult:
        state = self._state()
        if state.pgconn is not pgconn:
            state.pgconn = pgconn
            state.prepared.clear()
        name, text = _statement(sql)
        if pgconn.transaction_status != _IDLE:
            # Inside a transaction a missing statement would abort it, and psycopg itself sends
            # DEALLOCATE ALL after conn.rollback() (or a ROLLBACK/DROP/ALTER through a cursor)
            # once it has prepared statements of its own (prepare_threshold, default 5). So the
            # named statement is used there only when psycopg never prepares
            # (prepare_threshold=None); otherwise the unnamed statement: Parse + Bind + Execute
            # + Sync, one round trip as well, planned again by the server.
            if name in state.prepared and conn.prepare_threshold is None:
                pgconn.send_query_prepared(name, values)
                results = conn.wait(_single(pgconn))
                if len(results) == 1 and results[0].status == _TUPLES_OK:
                    return results[0]
                if any(_sqlstate(r) == b"26000" for r in results):
                    state.prepared.discard(name)
                    err = _failed(results[0], encoding)
                    raise errors.lookup("26000")(
                        "wormhole's prepared statement was removed from this connection "
                        "(DEALLOCATE ALL, DISCARD ALL or DEALLOCATE ran on it) inside the open "
                        "transaction, so the server aborted the transaction: roll it back and "
                        "run it again (the next call prepares the statement again). "
                        f"Server: {err}",
                        "26000",
                    ) from err
                return _one(results, encoding)
            pgconn.send_query_params(text, values)
            return _one(conn.wait(_single(pgconn)), encoding)
        # outside a transaction: the call is its own transaction, so a statement removed
        # behind our back (26000, raised by Bind: nothing ran) is prepared again and retried
        if name in state.prepared:
            pgconn.send_query_prepared(name, values)
            results = conn.wait(_single(pgconn))
            if len(results) == 1 and results[0].status == _TUPLES_OK:
                return results[0]
            if not any(_sqlstate(r) == b"26000" for r in results) \
                    or pgconn.transaction_status != _IDLE:
                return _one(results, encoding)
            state.prepared.discard(name)
        return self._prepare_and_run(conn, pgconn, state, name, text, values, encoding)

    def _prepare_and_run(self, conn: psycopg.Connection[Any], pgconn: PGconn, state: _State,
                         name: bytes, text: bytes, values: list[bytes | None], encoding: str
                         ) -> PGresult:
        """Parse + Bind + Execute + Sync in one round trip (libpq pipeline mode), on an idle
        connection (so the four messages are one implicit transaction, as a single statement
        would be)."""
        pgconn.enter_pipeline_mode()
        try:
            pgconn.send_prepare(name, text)
            pgconn.send_query_prepared(name, values)
            pgconn.pipeline_sync()
            results = conn.wait(_pipelined(pgconn))
        finally:
            self._leave_pipeline(conn, pgconn)
        parse, rest = (results[0], results[1:]) if results else (None, [])
        if parse is not None and parse.status == _COMMAND_OK:
            state.prepared.add(name)
            return _one(rest, encoding)
        if parse is not None and _sqlstate(parse) == b"42P05" \
                and pgconn.transaction_status == _IDLE:
            # already prepared in this session under our name (the name is derived from the
            # text): use it
            state.prepared.add(name)
            pgconn.send_query_prepared(name, values)
            return _one(conn.wait(_single(pgconn)), encoding)
        return _one([r for r in results if r.status == _FATAL_ERROR][:1] or results, encoding)

    @staticmethod
    def _leave_pipeline(conn: psycopg.Connection[Any], pgconn: PGconn) -> None:
        if pgconn.status != _OK or pgconn.pipeline_status == _PIPELINE_OFF:
            return
        try:
            pgconn.exit_pipeline_mode()
        except psycopg.Error:
            # results still pending (interrupted while waiting): the protocol state is lost;
            # close rather than hand psycopg a connection stuck in pipeline mode
            conn.close()

    def _call_text_cursor(self, sql: str, params: Sequence[str | None], prepare: bool
                          ) -> str | None:
        """Inside the user's ``conn.pipeline()``: through a cursor, as psycopg expects."""
        conn = self.connection
        standalone = (
            not conn.autocommit
            and conn.info.transaction_status == pq.TransactionStatus.IDLE
        )
        cur = psycopg.RawCursor(conn)
        try:
            if standalone:
                conn.autocommit = True
            try:
                cur.execute(sql, params, prepare=prepare)
                row = cur.fetchone()
            finally:
                if standalone and not conn.closed:
                    conn.autocommit = False
        except psycopg.Error as exc:
            raise _translate(exc) from exc
        except UnicodeEncodeError as exc:
            raise unencodable(exc) from None
        finally:
            cur.close()
        return None if row is None else row[0]

    # -- state -----------------------------------------------------------------------------------
    def in_transaction(self) -> bool:
        status = self.connection.pgconn.transaction_status
        return status != _IDLE and status != _UNKNOWN  # UNKNOWN: closed or broken

    def transaction_status(self) -> str:
        if self.connection.closed:
            return "unknown"
        return _STATUS_NAMES.get(self.connection.info.transaction_status, "unknown")

    def is_closed(self) -> bool:
        return self.connection.pgconn.status == _BAD

    def get_autocommit(self) -> bool:
        return bool(self.connection.autocommit)

    def set_autocommit(self, on: bool) -> None:
        try:
            self.connection.autocommit = on
        except psycopg.Error as exc:
            raise _translate(exc) from exc

    def run_control(self, sql: str) -> None:
        try:
            self.connection.execute(sql.encode())  # bytes: no placeholder processing
        except psycopg.Error as exc:
            raise _translate(exc) from exc

    def close(self) -> None:
        try:
            self.connection.close()
        except Exception:  # noqa: BLE001 - closing a broken connection must not raise
            pass

    def database_key(self) -> Hashable:
        state = self._state()
        key = state.key
        if key is None:
            info = self.connection.info
            key = state.key = ("pg", info.host, info.port, info.dbname)
        return key
