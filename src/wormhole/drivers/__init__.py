"""Pick the driver for a connection: the one selection point (psycopg ``pq/__init__.py`` habit).

Driver modules are imported lazily, so wormhole needs only the client library you use.
"""

from __future__ import annotations

from typing import Any

from ..errors import InterfaceError
from .base import Driver

__all__ = ["Driver", "for_connection"]


_by_type: dict[type, Any] = {}


def for_connection(conn: Any) -> Driver:
    """The driver for ``conn``: psycopg 3 or psycopg2, by the connection's type.

    Drivers are light wrappers, made per use; anything worth keeping per connection is kept in
    weak maps keyed by the connection, so wormhole never keeps a connection alive.
    """
    cls = _by_type.get(type(conn))
    if cls is not None:
        return cls(conn)  # type: ignore[no-any-return]
    driver = _select(conn)
    if type(driver) is not type(conn):
        _by_type[type(conn)] = type(driver)
    return driver


def _select(conn: Any) -> Driver:
    module = type(conn).__module__
    if module.startswith("psycopg2"):
        from .psycopg2 import Psycopg2Driver

        return Psycopg2Driver(conn)
    if module.startswith("psycopg"):
        if type(conn).__name__ == "AsyncConnection":
            raise InterfaceError(
                "psycopg AsyncConnection is not supported yet; use a psycopg.Connection"
            )
        from .psycopg3 import Psycopg3Driver

        return Psycopg3Driver(conn)
    if isinstance(conn, Driver):
        return conn  # an object implementing the Protocol itself (e.g. a test's real driver)
    raise InterfaceError(
        f"unsupported connection type {module}.{type(conn).__name__}: pass a psycopg (3) "
        "Connection or a psycopg2 connection to wormhole.set_connection()"
    )
