"""``query()`` and connection scoping.

The connection in scope is, in order: the innermost ``with wormhole.connection(conn):`` block of
the current thread or asyncio task (a context variable), else the process-wide default from
``set_connection(conn)``. Context variables make the scoping safe with threads and asyncio:
each thread and each task sees its own innermost block.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from .drivers import Driver, for_connection
from .errors import InterfaceError
from .runtime.rows import Rows

_default: Any = None
_scoped: ContextVar[Any] = ContextVar("wormhole_connection", default=None)


def set_connection(conn: Any) -> None:
    """Make ``conn`` (psycopg 3 or psycopg2) the default connection; ``None`` clears it."""
    global _default
    if conn is not None:
        for_connection(conn)  # fail now, not at the first call, for an unsupported type
    _default = conn


@contextmanager
def connection(conn: Any) -> Iterator[Any]:
    """Use ``conn`` for every wormhole call and ``query()`` in this block (this thread/task)."""
    for_connection(conn)
    token = _scoped.set(conn)
    try:
        yield conn
    finally:
        _scoped.reset(token)


def get_connection() -> Any:
    """The connection in scope, or ``InterfaceError`` saying how to set one."""
    conn = _scoped.get()
    if conn is None:
        conn = _default
    if conn is None:
        raise InterfaceError(
            "no database connection: call wormhole.set_connection(conn) or use "
            "`with wormhole.connection(conn):`"
        )
    return conn


def current_driver() -> Driver:
    return for_connection(get_connection())


def query(sql: str, *args: object) -> Rows:
    """Run one SQL statement with ``$1..$n`` parameters; return its rows as a list of dicts.

    The same call works in a ``@remote`` function, where it runs inside PostgreSQL. Every
    parameter is sent as text whose type PostgreSQL infers from the statement (on both sides),
    and rows come back as equal Python values on both sides. A statement without rows returns
    an empty ``Rows`` whose ``rowcount`` says how many rows it touched.
    """
    if not isinstance(sql, str):
        raise InterfaceError(f"query() needs the SQL text as a str, not {type(sql).__name__}")
    return current_driver().query(sql, args)
