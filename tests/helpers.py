"""Test helpers that talk to the real server (no mocks)."""

from __future__ import annotations

import re
import time
from typing import Any

from wormhole.demo import count_round_trips


class RoundTrips:
    """Counts the statements a connection sends, exactly.

    psycopg 3: libpq's protocol trace (one Sync or Query message per round trip). psycopg2 has
    no trace hook, so for it the server logs every statement of this backend
    (``log_statement = all`` for the role, set by the test) and we count the log lines.
    """

    def __init__(self, conn: Any, server: Any = None) -> None:
        self.conn = conn
        self.server = server
        self.count = -1

    def __enter__(self) -> RoundTrips:
        if _is_psycopg3(self.conn):
            import tempfile

            self._file = tempfile.TemporaryFile()
            self.conn.pgconn.trace(self._file.fileno())
        else:
            assert self.server is not None and self.server.cluster is not None, \
                "psycopg2 counting needs our own cluster's log"
            cur = self.conn.cursor()
            cur.execute("SELECT pg_backend_pid()")
            self.pid = cur.fetchone()[0]
            cur.close()
            self._mark = len(self.server.log_text())
        return self

    def __exit__(self, *exc: object) -> None:
        if _is_psycopg3(self.conn):
            self.conn.pgconn.untrace()
            self._file.seek(0)
            self.count = count_round_trips(self._file.read().decode("utf-8", "replace"))
            self._file.close()
        else:
            time.sleep(0.2)  # the logger writes asynchronously to the file
            text = self.server.log_text()[self._mark:]
            pat = re.compile(rf"\[{self.pid}\] .*LOG:  (statement|execute [^:]*):")
            self.count = sum(1 for line in text.splitlines() if pat.search(line))


def _is_psycopg3(conn: Any) -> bool:
    return type(conn).__module__.startswith("psycopg.") or type(conn).__module__ == "psycopg"
