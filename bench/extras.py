"""The measurements beyond the warm matrix: cold path, client-side overhead, a 100k-row result
and backend memory over many calls. All over the unix socket, as the application role."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

import wormhole
from wormhole.demo import count_round_trips

from . import functions
from .harness import percentile


def _ms(ns: int | float) -> float:
    return ns / 1e6


def _timed(fn: Callable[[], Any]) -> tuple[int, Any]:
    t0 = time.perf_counter_ns()
    value = fn()
    return time.perf_counter_ns() - t0, value


# --- cold path -------------------------------------------------------------------------------

@dataclass
class ColdCase:
    label: str
    first_ms: list[float] = field(default_factory=list)
    warm_ms: list[float] = field(default_factory=list)
    extra_ms: list[float] = field(default_factory=list)  # first - warm, per trial
    error: str | None = None

    def median(self, values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")


@dataclass
class ColdResult:
    cases: list[ColdCase]
    connect_ms: list[float]
    first_call_round_trips: int | None  # wormhole's first call on a new connection
    trials: int


def cold_path(conninfo: str, conninfo_approved: str, trials: int) -> ColdResult:
    """First call on a new connection vs the warm calls that follow it, per trial.

    "after the interpreter" cases first run ``py_empty()`` (untimed), so PL/Python's own
    start-up is paid before the timed call and what remains is the function's own cold cost;
    PL/Python's start-up is the ``py_empty`` case itself.
    """
    uid = [17]
    wh = functions.get_user_summary

    def wormhole_call(conn: psycopg.Connection[Any]) -> Any:
        with wormhole.connection(conn):
            return wh(uid[0])

    def sql_call(statement: str) -> Callable[[psycopg.Connection[Any]], Any]:
        return lambda conn: conn.execute(statement, (uid[0],)).fetchone()

    cases: list[tuple[str, str, bool, Callable[[psycopg.Connection[Any]], Any]]] = [
        ("wormhole in-process (approved), new connection", conninfo_approved, False,
         wormhole_call),
        ("wormhole in-process (approved), interpreter already up", conninfo_approved, True,
         wormhole_call),
        ("wormhole confined worker, new connection", conninfo, False, wormhole_call),
        ("wormhole confined worker, interpreter already up", conninfo, True, wormhole_call),
        ("plpython3u get_user_summary_py, new connection", conninfo, False,
         sql_call("SELECT * FROM get_user_summary_py(%s)")),
        ("PL/Python interpreter start-up alone (py_empty())", conninfo, False,
         lambda conn: conn.execute("SELECT py_empty()").fetchone()),
        ("PL/pgSQL get_user_summary_plpgsql, new connection", conninfo, False,
         sql_call("SELECT * FROM get_user_summary_plpgsql(%s)")),
        ("psycopg 3 client-side (2 statements, autocommit), new connection", conninfo, False,
         lambda conn: (conn.execute("SELECT * FROM users WHERE id = %s", (uid[0],)).fetchone(),
                       conn.execute("SELECT count(*) FROM messages WHERE user_id = %s",
                                    (uid[0],)).fetchone())),
    ]
    results = [ColdCase(label) for label, *_ in cases]
    connect_ms: list[float] = []
    for trial in range(trials):
        for k in range(len(cases)):
            i = (k + trial) % len(cases)  # rotate, so drift hits every case alike
            label, dsn, preheat, call = cases[i]
            res = results[i]
            uid[0] = 1 + (trial * 97 + i) % 1000
            try:
                ns, conn = _timed(lambda: psycopg.connect(dsn, autocommit=True))
                connect_ms.append(_ms(ns))
                with conn:
                    if preheat:
                        conn.execute("SELECT py_empty()").fetchone()
                    first, _ = _timed(lambda: call(conn))
                    warm = sorted(_timed(lambda: call(conn))[0] for _ in range(9))[4]
                res.first_ms.append(_ms(first))
                res.warm_ms.append(_ms(warm))
                res.extra_ms.append(_ms(first - warm))
            except Exception as exc:  # noqa: BLE001 - report, measure the others
                res.error = f"{type(exc).__name__}: {exc}"

    # the install happens once per database: a new connection's first call is one statement
    rts = None
    try:
        with psycopg.connect(conninfo_approved, autocommit=True) as conn:
            with tempfile.TemporaryFile() as trace:
                conn.pgconn.trace(trace.fileno())
                wormhole_call(conn)
                conn.pgconn.untrace()
                trace.seek(0)
                rts = count_round_trips(trace.read().decode("utf-8", "replace"))
    except Exception:  # noqa: BLE001
        rts = None
    return ColdResult(results, connect_ms, rts, trials)


# --- client-side overhead ---------------------------------------------------------------------

@dataclass
class OverheadResult:
    wormhole_p50_us: float
    raw_p50_us: float
    delta_us: float  # median over blocks of (wormhole p50 - raw p50)
    blocks: int


def client_overhead(conninfo_approved: str, blocks: int, per_block: int) -> OverheadResult:
    """What a wormhole call costs on the client beyond the statement itself.

    The same statement, ``SELECT public.wormhole_execute(hash, args)``, is sent by the
    wormhole client (argument binding and encoding, install-cache lookup, driver dispatch,
    result decoding) and by plain psycopg 3 with the arguments already encoded and the result
    left undecoded, in alternating blocks on one connection (get_user_summary, in-process: a
    small payload each way). The server does identical work in both, so the difference of
    the medians is the client's overhead.
    """
    fn = functions.get_user_summary
    args_json = fn.encode_args(42)
    execute = "SELECT public.wormhole_execute(%s, %s)"
    deltas, wh_p50, raw_p50 = [], [], []
    with psycopg.connect(conninfo_approved, autocommit=True) as conn:
        cur = conn.cursor()
        with wormhole.connection(conn):
            for _ in range(20):
                fn(42)
                cur.execute(execute, (fn.hash, args_json)).fetchone()
            for _ in range(blocks):
                wh = sorted(_timed(lambda: fn(42))[0] for _ in range(per_block))
                raw = sorted(_timed(lambda: cur.execute(execute, (fn.hash, args_json))
                                    .fetchone())[0] for _ in range(per_block))
                a, b = percentile(wh, 50) / 1e3, percentile(raw, 50) / 1e3
                wh_p50.append(a)
                raw_p50.append(b)
                deltas.append(a - b)
    return OverheadResult(statistics.median(wh_p50), statistics.median(raw_p50),
                          statistics.median(deltas), blocks)


# --- a big result ------------------------------------------------------------------------------

@dataclass
class BigResult:
    rows: int
    times_ms: dict[str, list[float]]
    errors: dict[str, str]

    def median(self, label: str) -> float | None:
        values = self.times_ms.get(label)
        return statistics.median(values) if values else None


BIG_PLAIN = "psycopg 3 plain SELECT, fetchall() (tuples)"
BIG_DICT = "psycopg 3 plain SELECT, fetchall() (dict rows)"
BIG_APPROVED = "wormhole in-process (approved)"
BIG_WORKER = "wormhole confined worker"


def big_result(conninfo: str, conninfo_approved: str, rows: int, repeats: int) -> BigResult:
    """A remote function returning ``rows`` rows vs psycopg 3 fetching them with a SELECT."""
    from psycopg.rows import dict_row

    select = f"SELECT {functions.MESSAGE_COLUMNS} FROM messages ORDER BY id LIMIT %s"
    conns = {
        BIG_PLAIN: psycopg.connect(conninfo, autocommit=True),
        BIG_DICT: psycopg.connect(conninfo, autocommit=True, row_factory=dict_row),
        BIG_APPROVED: psycopg.connect(conninfo_approved, autocommit=True),
        BIG_WORKER: psycopg.connect(conninfo, autocommit=True),
    }

    def fetch(label: str, n: int) -> Any:
        conn = conns[label]
        if label in (BIG_APPROVED, BIG_WORKER):
            with wormhole.connection(conn):
                return functions.fetch_messages(n)
        return conn.execute(select, (n,)).fetchall()

    times: dict[str, list[float]] = {label: [] for label in conns}
    errors: dict[str, str] = {}
    check = min(rows, 1000)
    try:
        expected = None
        for label in conns:  # warm up, and check every path returns the same rows
            try:
                got = fetch(label, check)
                first = dict(got[0]) if label != BIG_PLAIN else None
                if len(got) != check:
                    raise AssertionError(f"{len(got)} rows, expected {check}")
                if first is not None:
                    if expected is None:
                        expected = first
                    elif first != expected:
                        raise AssertionError(f"first row {first!r} != {expected!r}")
            except Exception as exc:  # noqa: BLE001
                errors[label] = f"{type(exc).__name__}: {exc}"
        labels = [label for label in conns if label not in errors]
        for r in range(repeats):
            for k in range(len(labels)):
                label = labels[(k + r) % len(labels)]
                ns, got = _timed(lambda: fetch(label, rows))
                if len(got) != rows:
                    errors[label] = f"{len(got)} rows, expected {rows}"
                times[label].append(_ms(ns))
    finally:
        for conn in conns.values():
            conn.close()
    return BigResult(rows, times, errors)


# --- memory -----------------------------------------------------------------------------------

def _status(pid: int) -> dict[str, int]:
    """VmRSS and RssAnon of a process, in kB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon"):
                out[key] = int(value.split()[0])
    return out


def _descendants(pid: int) -> list[int]:
    """Processes below ``pid`` (the confined worker runs under the backend, via bwrap)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


@dataclass
class MemoryResult:
    label: str
    calls: int
    warmup_calls: int
    samples: list[tuple[int, int, int, int]]  # (calls so far, backend VmRSS, RssAnon, worker kB)
    seconds: float
    error: str | None = None
    planned: int = 0  # calls intended; fewer were made when the time budget ran out

    @property
    def growth_kb(self) -> int:
        """RssAnon growth of the backend from after the warm-up to the end."""
        return self.samples[-1][2] - self.samples[0][2] if len(self.samples) > 1 else 0

    @property
    def worker_growth_kb(self) -> int:
        return self.samples[-1][3] - self.samples[0][3] if len(self.samples) > 1 else 0


EXECUTE_SQL = "SELECT public.wormhole_execute($1, $2)"


class _PipelinedCaller:
    """Sends one statement (``SELECT public.wormhole_execute(hash, args)``: exactly what the
    wormhole client sends) many times, fast.

    Each call is its own statement and its own transaction (a Sync after each), but they go
    in batches over libpq's pipeline mode, so the server does nothing but run calls.
    """

    BATCH = 200

    def __init__(self, conninfo: str, statement: str, params: list[str]) -> None:
        from psycopg import pq

        self.pq = pq
        self.pg = pq.PGconn.connect(conninfo.encode())
        if self.pg.status != pq.ConnStatus.OK:
            raise RuntimeError(self.pg.get_error_message().decode())
        res = self.pg.prepare(b"call", statement.encode())
        if res.status != pq.ExecStatus.COMMAND_OK:
            raise RuntimeError((res.error_message or b"prepare failed").decode())
        res = self.pg.exec_(b"SELECT pg_backend_pid()")
        self.pid = int(res.get_value(0, 0) or 0)
        self.wormhole = statement == EXECUTE_SQL
        self.params = [p.encode() for p in params]
        self.pg.enter_pipeline_mode()

    def calls(self, n: int) -> None:
        pq, pg = self.pq, self.pg
        while n > 0:
            batch = min(n, self.BATCH)
            for _ in range(batch):
                pg.send_query_prepared(b"call", self.params)
                pg.pipeline_sync()
            while pg.flush() != 0:
                pass
            for _ in range(batch):
                res = pg.get_result()
                if res is None or res.status != pq.ExecStatus.TUPLES_OK:
                    raise RuntimeError(pg.get_error_message().decode() or "no result")
                payload = (res.get_value(0, 0) or b"").decode()
                if self.wormhole and not payload.startswith('{"ok"'):
                    raise RuntimeError(f"the call failed: {payload[:300]}")
                if pg.get_result() is not None:  # end of this statement's results
                    raise RuntimeError("unexpected extra result")
                sync = pg.get_result()
                if sync is None or sync.status != pq.ExecStatus.PIPELINE_SYNC:
                    raise RuntimeError("pipeline out of step")
            n -= batch

    def close(self) -> None:
        self.pg.finish()


def memory(label: str, conninfo: str, calls: int, warmup_calls: int,
           budget_seconds: float, checkpoints: int = 10, statement: str = EXECUTE_SQL
           ) -> MemoryResult:
    """Backend RSS after a warm-up and at checkpoints over ``calls`` more calls of
    get_user_summary on one connection (installed and warmed through the public API first).
    ``statement``: another one-parameter statement to run instead, as a control.

    Stops at the first checkpoint past ``budget_seconds``; ``calls`` of the result says how
    many calls were made.
    """
    fn = functions.get_user_summary
    samples: list[tuple[int, int, int, int]] = []
    t0 = time.monotonic()
    caller = None
    done = 0
    try:
        if statement == EXECUTE_SQL:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                with wormhole.connection(conn):
                    fn(1)  # installed (once per database) and working
            caller = _PipelinedCaller(conninfo, statement, [fn.hash, fn.encode_args(42)])
        else:
            caller = _PipelinedCaller(conninfo, statement, ["42"])

        def sample(done: int) -> None:
            s = _status(caller.pid)
            worker = 0
            for child in _descendants(caller.pid):
                try:
                    worker += _status(child).get("RssAnon", 0)
                except OSError:
                    pass
            samples.append((done, s["VmRSS"], s["RssAnon"], worker))

        caller.calls(warmup_calls)
        sample(0)
        step = max(1, calls // checkpoints)
        deadline = time.monotonic() + budget_seconds
        while done < calls and time.monotonic() < deadline:
            caller.calls(min(step, calls - done))
            done = min(calls, done + step)
            sample(done)
    except Exception as exc:  # noqa: BLE001
        return MemoryResult(label, samples[-1][0] if samples else 0, warmup_calls, samples,
                            time.monotonic() - t0, f"{type(exc).__name__}: {exc}")
    finally:
        if caller is not None:
            caller.close()
    return MemoryResult(label, done, warmup_calls, samples, time.monotonic() - t0,
                        planned=calls)
