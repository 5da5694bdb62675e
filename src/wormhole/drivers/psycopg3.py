"""The psycopg 3 driver: ``RawCursor`` speaks ``$n`` natively, so SQL passes unchanged."""

from __future__ import annotations

import weakref
from collections.abc import Hashable, Sequence
from typing import Any

import psycopg
from psycopg import pq
from psycopg.rows import dict_row

from ..runtime.rows import Rows
from ._common import text_params, translate

_keys: weakref.WeakKeyDictionary[Any, Hashable] = weakref.WeakKeyDictionary()
_STATUS_NAMES = {
    pq.TransactionStatus.IDLE: "idle",
    pq.TransactionStatus.ACTIVE: "active",
    pq.TransactionStatus.INTRANS: "intrans",
    pq.TransactionStatus.INERROR: "inerror",
    pq.TransactionStatus.UNKNOWN: "unknown",
}


def _translate(exc: psycopg.Error) -> Exception:
    diag = exc.diag
    return translate(exc, exc.sqlstate, diag.message_primary, diag.message_detail,
                     diag.message_hint)


class Psycopg3Driver:
    """``Driver`` for ``psycopg.Connection``."""

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self.connection = connection

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
        finally:
            cur.close()

    def call_text(self, sql: str, params: Sequence[str | None], prepare: bool = False
                  ) -> str | None:
        conn = self.connection
        standalone = (
            not conn.autocommit
            and conn.info.transaction_status == pq.TransactionStatus.IDLE
        )
        cur = psycopg.RawCursor(conn)
        try:
            if standalone:
                # one statement on its own: autocommit for its duration (a client-side switch,
                # no round trip), instead of BEGIN + SELECT + COMMIT
                conn.autocommit = True
            try:
                # the hot statement is prepared on first use per connection (one extra round
                # trip, once), so every later call is exactly one round trip; psycopg would
                # otherwise prepare on the 5th execution, adding a round trip to a later call.
                # (Pipelining the prepare with the first execution saved that round trip but
                # broke when the statement failed inside the pipeline: "cannot exit pipeline
                # mode while busy" under concurrent deadlocks.)
                cur.execute(sql, params, prepare=prepare)
                row = cur.fetchone()
            finally:
                if standalone and not conn.closed:  # a broken connection keeps the real error
                    conn.autocommit = False
        except psycopg.Error as exc:
            raise _translate(exc) from exc
        finally:
            cur.close()
        return None if row is None else row[0]

    def in_transaction(self) -> bool:
        if self.connection.closed:
            return False
        return self.connection.info.transaction_status != pq.TransactionStatus.IDLE

    def transaction_status(self) -> str:
        if self.connection.closed:
            return "unknown"
        return _STATUS_NAMES.get(self.connection.info.transaction_status, "unknown")

    def is_closed(self) -> bool:
        return bool(self.connection.closed)

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
        key = _keys.get(self.connection)
        if key is None:
            info = self.connection.info
            key = ("pg", info.host, info.port, info.dbname)
            _keys[self.connection] = key
        return key
