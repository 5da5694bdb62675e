"""The psycopg2 driver: ``$n`` is rewritten to ``%(pN)s`` by the runtime's SQL lexer."""

from __future__ import annotations

import weakref
from collections.abc import Hashable, Sequence
from typing import Any

import psycopg2  # type: ignore[import-untyped]
import psycopg2.extensions  # type: ignore[import-untyped]
import psycopg2.extras  # type: ignore[import-untyped]

from ..runtime import sqltext
from ..runtime.rows import Rows
from ._common import text_params, translate, unencodable

_keys: weakref.WeakKeyDictionary[Any, Hashable] = weakref.WeakKeyDictionary()
_sql_cache: dict[str, str] = {}
_STATUS_READY = psycopg2.extensions.TRANSACTION_STATUS_IDLE
_STATUS_NAMES = {
    psycopg2.extensions.TRANSACTION_STATUS_IDLE: "idle",
    psycopg2.extensions.TRANSACTION_STATUS_ACTIVE: "active",
    psycopg2.extensions.TRANSACTION_STATUS_INTRANS: "intrans",
    psycopg2.extensions.TRANSACTION_STATUS_INERROR: "inerror",
    psycopg2.extensions.TRANSACTION_STATUS_UNKNOWN: "unknown",
}


def _translate(exc: psycopg2.Error) -> Exception:
    diag = getattr(exc, "diag", None)
    return translate(
        exc,
        exc.pgcode,
        getattr(diag, "message_primary", None),
        getattr(diag, "message_detail", None),
        getattr(diag, "message_hint", None),
    )


def _pyformat(sql: str) -> str:
    text = _sql_cache.get(sql)
    if text is None:
        text = sqltext.to_pyformat(sql)
        if len(_sql_cache) > 4096:
            _sql_cache.clear()
        _sql_cache[sql] = text
    return text


def _bytes(value: Any) -> Any:
    """psycopg2 returns bytea as memoryview; psycopg 3 and the server return bytes."""
    if type(value) is memoryview:
        return value.tobytes()
    if type(value) is list:
        return [_bytes(v) for v in value]
    return value


class Psycopg2Driver:
    """``Driver`` for psycopg2 connections."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    def _cursor(self) -> Any:
        cur = self.connection.cursor()
        # parity with psycopg 3: uuid as UUID (psycopg2 returns str unless registered);
        # registered on this cursor only, never globally on the user's connection
        psycopg2.extras.register_uuid(None, cur)
        return cur

    def query(self, sql: str, params: Sequence[object]) -> Rows:
        args = text_params(sql, params)
        named = {f"p{i}": v for i, v in enumerate(args, 1)}
        cur = self._cursor()
        try:
            cur.execute(_pyformat(sql), named)
            if cur.description is None:
                return Rows((), cur.rowcount)
            names = [d.name for d in cur.description]
            rows = [
                {n: _bytes(v) for n, v in zip(names, row)} for row in cur.fetchall()
            ]
            return Rows(rows, cur.rowcount)
        except psycopg2.Error as exc:
            raise _translate(exc) from exc
        except UnicodeEncodeError as exc:
            raise unencodable(exc) from None
        finally:
            cur.close()

    def call_text(self, sql: str, params: Sequence[str | None], prepare: bool = False
                  ) -> str | None:
        conn = self.connection
        cur = None
        try:
            standalone = (not conn.autocommit
                          and conn.get_transaction_status() == _STATUS_READY)
            cur = conn.cursor()
            if standalone:
                conn.autocommit = True  # one statement on its own: no BEGIN/COMMIT round trips
            try:
                cur.execute(_pyformat(sql), {f"p{i}": v for i, v in enumerate(params, 1)})
                row = cur.fetchone()
            finally:
                if standalone and not conn.closed:  # a broken connection keeps the real error
                    conn.autocommit = False
        except psycopg2.Error as exc:
            raise _translate(exc) from exc
        except UnicodeEncodeError as exc:
            raise unencodable(exc) from None
        finally:
            if cur is not None:
                cur.close()
        return None if row is None else row[0]

    def in_transaction(self) -> bool:
        if self.connection.closed:
            return False
        return bool(self.connection.get_transaction_status() != _STATUS_READY)

    def transaction_status(self) -> str:
        if self.connection.closed:
            return "unknown"
        return _STATUS_NAMES.get(self.connection.get_transaction_status(), "unknown")

    def is_closed(self) -> bool:
        return bool(self.connection.closed)

    def get_autocommit(self) -> bool:
        return bool(self.connection.autocommit)

    def set_autocommit(self, on: bool) -> None:
        try:
            self.connection.autocommit = on
        except psycopg2.Error as exc:
            raise _translate(exc) from exc

    def run_control(self, sql: str) -> None:
        cur = None
        try:
            cur = self.connection.cursor()
            cur.execute(sql)
        except psycopg2.Error as exc:
            raise _translate(exc) from exc
        except UnicodeEncodeError as exc:
            raise unencodable(exc) from None
        finally:
            if cur is not None:
                cur.close()

    def close(self) -> None:
        try:
            self.connection.close()
        except Exception:  # noqa: BLE001 - closing a broken connection must not raise
            pass

    def database_key(self) -> Hashable:
        try:
            key = _keys.get(self.connection)
        except TypeError:
            key = None
        if key is None:
            info = self.connection.info
            key = ("pg", info.host, info.port, info.dbname)
            try:
                _keys[self.connection] = key
            except TypeError:
                pass
        return key
