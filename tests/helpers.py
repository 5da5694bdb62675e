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


# -- the backend's confined worker, seen from the tests -------------------------------------------

#: ``wh_worker()``: a superuser's SECURITY DEFINER helper (tests only) that reads this backend's
#: worker executor and any early worker pending (``runtime/spawn.py``) as JSON
WORKER_PROBE_SQL = (
    "CREATE FUNCTION wh_worker() RETURNS text LANGUAGE plpython3u SECURITY DEFINER AS $$\n"
    "import json, sys\n"
    "st = GD.get('wormhole.backend/0.1.0')\n"
    "w = st.worker if st is not None else None\n"
    "sp = sys.modules.get('wormhole_rt_0_1_0.spawn')\n"
    "return json.dumps({'executor': w is not None,\n"
    "                   'adopted': bool(w and w.adopted), 'starts': w.starts if w else 0,\n"
    "                   'dispatched': w.dispatched if w else 0,\n"
    "                   'answered': w.answered if w else 0, 'deferred': w.deferred if w else 0,\n"
    "                   'ahead': w.ahead if w else 0,\n"
    "                   'ahead_unused': w.ahead_unused if w else 0,\n"
    "                   'completed': w.completed if w else 0,\n"
    "                   'handed_over': w.handed_over if w else 0,\n"
    "                   'pending': len(sp._EARLY) if sp else 0})\n"
    "$$; GRANT EXECUTE ON FUNCTION wh_worker() TO app;"
)


def worker_state(conn: Any, keys: tuple[str, ...] = ("executor", "adopted", "starts",
                                                     "pending")) -> dict[str, Any]:
    """What ``wh_worker()`` says about the backend of ``conn`` (a psycopg 3 connection):
    ``keys`` of executor, adopted, starts, pending (early workers), dispatched, answered,
    deferred, ahead, ahead_unused, completed, handed_over (the executor's counters)."""
    import json

    state = json.loads(conn.execute("SELECT wh_worker()").fetchone()[0])
    return {key: state[key] for key in keys}


def bwrap_children(pid: int) -> list[int]:
    """The live bubblewrap processes ``pid`` started (its workers), from /proc."""
    import os

    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] not in "ZX":
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if b"bwrap" in f.read():
                        kids.append(int(entry))
        except OSError:
            continue
    return kids


def pipe_size(pid: int, fd: int) -> int:
    """The capacity of the pipe at descriptor ``fd`` of process ``pid`` (opened through /proc:
    root, or the same user)."""
    import fcntl
    import os

    mine = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK)
    try:
        return fcntl.fcntl(mine, fcntl.F_GETPIPE_SZ)
    finally:
        os.close(mine)



def interrupted_call(db: Any, conn: Any, call: Any, how: str, *,
                     wait: float = 10.0) -> tuple[Any, float]:
    """Run ``call()`` (a statement on ``conn``) in a thread and interrupt it ``how``:
    ``"pg_cancel_backend"`` cancels ``conn``'s backend after 0.7 s (from ``db.admin()``);
    ``"statement_timeout"`` relies on the timeout ``conn`` already has. Returns (what the call
    returned or raised, seconds from the interrupt, or the start, until it ended); fails if the
    call has not ended after ``wait`` seconds."""
    import threading
    import time

    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # noqa: BLE001 - the outcome is what the test looks at
            outcome.append(exc)

    runner = threading.Thread(target=run)
    begin = time.monotonic()
    runner.start()
    if how == "pg_cancel_backend":
        time.sleep(0.7)
        with db.admin() as a:
            begin = time.monotonic()
            a.execute("SELECT pg_cancel_backend(%s)", (conn.info.backend_pid,))
    runner.join(wait)
    assert not runner.is_alive(), "the call did not end"
    return outcome[0], time.monotonic() - begin
