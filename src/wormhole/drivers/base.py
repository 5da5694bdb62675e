"""The driver seam: one Protocol, implemented per client library, chosen in one place.

A driver turns a user's connection object into the few operations wormhole needs. The
async drivers (psycopg ``AsyncConnection``, asyncpg) will implement an ``AsyncDriver`` twin of
this Protocol; nothing above this layer touches a driver module directly.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, Protocol, runtime_checkable

from ..runtime.rows import Rows


@runtime_checkable
class Driver(Protocol):
    """What wormhole needs from a client connection."""

    @property
    def connection(self) -> Any:
        """The user's connection object (psycopg.Connection, psycopg2 connection, ...)."""
        ...

    def query(self, sql: str, params: Sequence[object]) -> Rows:
        """Run one statement with ``$n`` parameters (sent as text of unknown type)."""
        ...

    def call_text(self, sql: str, params: Sequence[str | None], prepare: bool = False
                  ) -> str | None:
        """Run ``sql`` (a ``SELECT public.wormhole_*(...)``) and return its single text value.

        ``prepare``: the statement is the hot path; a driver that can should prepare it on the
        server, without an extra round trip (psycopg 3 does, in the round trip of its first
        execution on a connection; psycopg2 cannot).

        Outside a transaction the statement runs on its own (autocommit for that one
        statement: one round trip, no BEGIN/COMMIT); inside one it joins it.
        """
        ...

    def in_transaction(self) -> bool:
        """True when the connection has a transaction open (ours or the user's)."""
        ...

    def database_key(self) -> Hashable:
        """Identifies the database (host, port, dbname) for the per-database install cache."""
        ...

    # -- transaction control (used by wormhole.transaction) -----------------------------------
    def transaction_status(self) -> str:
        """libpq's view of the session: ``"idle"``, ``"active"`` (a statement is running),
        ``"intrans"``, ``"inerror"`` (a failed transaction waits for ROLLBACK) or ``"unknown"``
        (the connection is closed or broken). Never raises, never does a round trip."""
        ...

    def is_closed(self) -> bool:
        """True when the connection was closed or is broken (lost). Never raises."""
        ...

    def get_autocommit(self) -> bool:
        """The connection's autocommit switch (client-side state, no round trip)."""
        ...

    def set_autocommit(self, on: bool) -> None:
        """Flip autocommit (client-side, no round trip). Only valid while ``"idle"``."""
        ...

    def run_control(self, sql: str) -> None:
        """Run a parameterless control statement (BEGIN ..., COMMIT, ROLLBACK, SAVEPOINT x,
        RELEASE SAVEPOINT x, ROLLBACK TO SAVEPOINT x) exactly as given: no implicit BEGIN is
        added by the driver. Errors are translated like ``query()``'s."""
        ...

    def close(self) -> None:
        """Close the connection (never raises)."""
        ...
