"""wormhole: move computation to the data.

A function decorated with :func:`remote` is shipped into PostgreSQL as source, checked by the
server's policy, cached by hash and run next to the data, so a function with N dependent
queries costs one network round trip instead of N. :func:`query` works the same way on the
client (psycopg 3 or psycopg2) and inside a remote function.

    import psycopg
    from wormhole import remote, query, set_connection

    set_connection(psycopg.connect("dbname=app"))

    @remote
    def rename(user_id, name):
        query("UPDATE users SET name = $1 WHERE id = $2", name, user_id)
        return query("SELECT id, name FROM users WHERE id = $1", user_id)[0]
"""

from __future__ import annotations

from . import errors
from .api import connection, get_connection, query, set_connection
from .errors import (
    DatabaseError,
    InterfaceError,
    OutcomeUnknown,
    RejectedFunction,
    RemoteError,
    SchemaError,
    WormholeError,
)
from .remote import RemoteFunction, remote
from .runtime import VERSION as __version__
from .runtime.rows import Rows
from .transaction import transaction

__all__ = [
    "remote",
    "query",
    "set_connection",
    "connection",
    "get_connection",
    "transaction",
    "RemoteFunction",
    "Rows",
    "errors",
    "WormholeError",
    "InterfaceError",
    "DatabaseError",
    "OutcomeUnknown",
    "RejectedFunction",
    "RemoteError",
    "SchemaError",
    "__version__",
]
