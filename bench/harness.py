"""Client processes and the statistics of a measurement.

Every client is its own process (forked once, kept for the whole run) with its own
connections, opened on first use and kept like a pool's; 1-client figures come from client 0,
8-client figures from all eight started together on a barrier. The parent only sends commands
and collects latencies, so it takes no CPU from the measurement.
"""

from __future__ import annotations

import multiprocessing
import statistics
import traceback
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from . import clients

#: calls per workload on a new connection before it is ever timed (prepares, plan caches, the
#: worker process, the install round trip)
CONNECTION_WARMUP = 12


class ProbeSession(clients.Session):
    """``SELECT 1`` (psycopg 3, prepared after 5 uses): one round trip, for calibration."""

    def __init__(self, conninfo: str) -> None:
        import psycopg

        conn = self.conn = psycopg.connect(conninfo, autocommit=True)
        self.calls = {"select1": lambda: conn.execute("SELECT 1").fetchone()}

    def close(self) -> None:
        self.conn.close()


def open_session(key: str, conninfo: str) -> clients.Session:
    if key == "probe":
        return ProbeSession(conninfo)
    return clients.BY_KEY[key].open(conninfo)


@dataclass
class Job:
    """Run one workload of one implementation over one connection string."""

    impl: str
    conninfo: str
    workload: str
    args: Sequence[Sequence[Any]]
    duration: float
    warmup_calls: int = 2
    together: bool = False  # wait on the shared barrier (multi-client cells)


class ClientError(RuntimeError):
    pass


def _client_main(conn: Any, barrier: Any, connection_warmup: int) -> None:
    sessions: dict[tuple[str, str], clients.Session] = {}

    def session(job: Job) -> clients.Session:
        key = (job.impl, job.conninfo)
        s = sessions.get(key)
        if s is None:
            s = sessions[key] = open_session(job.impl, job.conninfo)
            names = ["select1"] if job.impl == "probe" else clients.WORKLOADS
            for name in names:
                for i in range(connection_warmup):
                    s.call(name, job.args[i % len(job.args)] if name == job.workload
                           else _warmup_args(name, i))
        return s

    while True:
        op, payload = conn.recv()
        job: Job | None = None
        try:
            if op == "stop":
                for s in sessions.values():
                    s.close()
                conn.send(("ok", None))
                return
            if op == "close":  # every session on this connection string
                for key in [k for k in sessions if k[1] == payload]:
                    sessions.pop(key).close()
                conn.send(("ok", None))
            elif op == "call":
                job = payload
                conn.send(("ok", session(job).call(job.workload, job.args[0])))
            elif op == "run":
                job = payload
                s = session(job)
                for i in range(job.warmup_calls):
                    s.call(job.workload, job.args[-1 - i % len(job.args)])
                if job.together:
                    barrier.wait(60)
                latencies, elapsed = s.run(job.workload, job.args, job.duration)
                conn.send(("ok", (array("q", latencies), elapsed)))
        except BaseException as exc:  # noqa: BLE001 - report it to the parent and carry on
            if job is not None and job.together:
                barrier.abort()
            conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


_WARMUP_ARGS: dict[str, Sequence[Sequence[Any]]] = {}


def _warmup_args(workload: str, i: int) -> Sequence[Any]:
    args = _WARMUP_ARGS[workload]
    return args[i % len(args)]


class ClientPool:
    """``n`` client processes. Start it before the parent opens any connection of its own."""

    def __init__(self, n: int, warmup_args: dict[str, Sequence[Sequence[Any]]],
                 connection_warmup: int = CONNECTION_WARMUP) -> None:
        _WARMUP_ARGS.update(warmup_args)  # inherited by the forked clients
        ctx = multiprocessing.get_context("fork")
        self.barrier = ctx.Barrier(n)
        self.n = n
        self.pipes = []
        self.procs = []
        for i in range(n):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_client_main, args=(child, self.barrier, connection_warmup),
                            name=f"bench-client-{i}", daemon=True)
            p.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(p)

    def _ask(self, i: int, op: str, payload: Any) -> Any:
        self.pipes[i].send((op, payload))
        return self._answer(i)

    def _answer(self, i: int) -> Any:
        status, value = self.pipes[i].recv()
        if status != "ok":
            raise ClientError(value)
        return value

    def call(self, job: Job) -> Any:
        return self._ask(0, "call", job)

    def run(self, jobs: Sequence[Job]) -> list[tuple[array, float]]:
        """Run ``jobs[i]`` on client ``i``, all at once; every result, or ClientError."""
        for i, job in enumerate(jobs):
            self.pipes[i].send(("run", job))
        results, errors = [], []
        for i in range(len(jobs)):
            try:
                results.append(self._answer(i))
            except ClientError as exc:
                errors.append(str(exc))
        if errors:
            self.barrier.reset()
            raise ClientError(errors[0])
        return results

    def close_connections(self, conninfo: str) -> None:
        for i in range(self.n):
            self._ask(i, "close", conninfo)

    def stop(self) -> None:
        for i in range(self.n):
            try:
                self._ask(i, "stop", None)
            except (ClientError, OSError, EOFError):
                pass
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.terminate()


# --- statistics ------------------------------------------------------------------------------

def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(round(q / 100.0 * len(sorted_values) + 0.5)) - 1))
    return float(sorted_values[k])


@dataclass
class Sample:
    """One cell of one round: every call's latency (ns), and calls/s over all clients."""

    latencies: list[int]
    throughput: float

    @property
    def p50(self) -> float:
        return percentile(sorted(self.latencies), 50) / 1e6

    @property
    def p99(self) -> float:
        return percentile(sorted(self.latencies), 99) / 1e6


def sample_of(results: Sequence[tuple[array, float]]) -> Sample:
    latencies: list[int] = []
    throughput = 0.0
    for lat, elapsed in results:
        latencies.extend(lat)
        throughput += len(lat) / elapsed if elapsed > 0 else 0.0
    return Sample(latencies, throughput)


@dataclass
class Cell:
    """All rounds of one (path, clients, workload, implementation)."""

    rounds: dict[int, Sample] = field(default_factory=dict)
    error: str | None = None

    @property
    def calls(self) -> int:
        return sum(len(s.latencies) for s in self.rounds.values())

    @property
    def throughput(self) -> float:
        return statistics.median(s.throughput for s in self.rounds.values())

    def pooled(self, q: float) -> float:
        values = sorted(v for s in self.rounds.values() for v in s.latencies)
        return percentile(values, q) / 1e6

    def ratio(self, other: Cell, metric: str) -> float | None:
        """Median over rounds of this cell's ``metric`` / the other's, paired by round."""
        ratios = []
        for r, mine in self.rounds.items():
            theirs = other.rounds.get(r)
            if theirs is None:
                continue
            a, b = getattr(mine, metric), getattr(theirs, metric)
            if a > 0 and b > 0:
                ratios.append(a / b)
        return statistics.median(ratios) if ratios else None
