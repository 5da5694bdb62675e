"""``python -m bench [--quick]``: the whole benchmark, one command, on a throwaway cluster.

Starts PostgreSQL in a temporary directory, loads the data, installs wormhole and the
hand-written functions, starts the delay proxies and the client processes, runs the warm
matrix (every path, every implementation, every workload, interleaved per round), then the
cold path, the client-side overhead, a 100k-row result and backend memory over many calls,
and writes ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

import psycopg

from . import clients, database, extras, report
from .clients import IMPLS, LIMIT, WORKLOADS
from .harness import Cell, ClientError, ClientPool, Job, sample_of
from .proxy import DelayProxy
from .report import PATHS, PROXY0, PROXY2, PROXY_HALF, TCP, UNIX

HERE = FsPath(__file__).resolve().parent


@dataclass
class Plan:
    paths: tuple[str, ...]
    multi_paths: tuple[str, ...]  # paths also measured with `clients` concurrent clients
    rounds: int
    duration: float  # seconds per 1-client cell
    multi_duration: float  # seconds per multi-client cell
    cold_trials: int
    overhead_blocks: int
    big_rows: int
    big_repeats: int
    memory_calls: int  # in-process
    worker_memory_calls: int
    memory_seconds: float  # time budget for the in-process memory run (the worker gets 1/4)
    clients: int = 8
    multi_workloads: tuple[str, ...] = ("process_order", "get_user_summary")
    scale: database.Scale = field(default_factory=lambda: database.FULL_SCALE)


FULL = Plan(
    paths=(UNIX, TCP, PROXY0, PROXY_HALF, PROXY2),
    multi_paths=(UNIX, TCP, PROXY_HALF, PROXY2),
    rounds=5, duration=0.4, multi_duration=0.4,
    cold_trials=12, overhead_blocks=30, big_rows=100_000, big_repeats=3,
    memory_calls=1_000_000, worker_memory_calls=100_000, memory_seconds=150,
)
QUICK = Plan(
    paths=(UNIX, PROXY_HALF),
    multi_paths=(UNIX, PROXY_HALF),
    rounds=2, duration=0.12, multi_duration=0.15,
    cold_trials=3, overhead_blocks=5, big_rows=100_000, big_repeats=1,
    memory_calls=20_000, worker_memory_calls=5_000, memory_seconds=12,
)
SMOKE = Plan(
    paths=(UNIX,), multi_paths=(),
    rounds=1, duration=0.01, multi_duration=0.01, clients=1,
    cold_trials=1, overhead_blocks=1, big_rows=1_000, big_repeats=1,
    memory_calls=50, worker_memory_calls=20, memory_seconds=1,
    scale=database.SMOKE_SCALE,
)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- arguments for each workload --------------------------------------------------------------

def workload_args(workload: str, scale: database.Scale, seed: int, n: int = 500
                  ) -> list[tuple[Any, ...]]:
    rng = random.Random(seed)
    if workload == "process_order":
        ids = (rng.randint(1, scale.orders) for _ in range(n))
        return [(i, database.order_user(i, scale)) for i in ids]
    if workload == "get_user_summary":
        return [(rng.randint(1, scale.users),) for _ in range(n)]
    if workload == "follow_chain":
        return [(rng.randint(1, scale.links),) for _ in range(n)]
    if workload == "select1":
        return [()]
    raise ValueError(workload)


def expected_result(workload: str, args: Sequence[Any], scale: database.Scale) -> Any:
    if workload == "process_order":
        return {"status": "success", "order_id": args[0]}
    if workload == "get_user_summary":
        uid = args[0]
        r = (uid - 1) % scale.users  # message i belongs to user 1 + i % users
        count = scale.messages // scale.users if r == 0 else (scale.messages - r) // scale.users + 1
        return {"username": f"user{uid}", "message_count": count}
    if workload == "follow_chain":
        node = args[0]
        for _ in range(10):
            node = database.next_link(node, scale)
        return node
    raise ValueError(workload)


# --- the run ----------------------------------------------------------------------------------

class Bench:
    def __init__(self, plan: Plan, res: report.RunResults) -> None:
        self.plan = plan
        self.res = res
        self.conninfo: dict[str, str] = {}  # path -> bench database, as the app role
        self.conninfo_approved: dict[str, str] = {}

    def dsn_for(self, impl: str, path: str) -> str:
        if impl in clients.BY_KEY and clients.BY_KEY[impl].approved_db:
            return self.conninfo_approved[path]
        return self.conninfo[path]

    def verify(self, pool: ClientPool, paths: Sequence[str]) -> None:
        """Every implementation returns the expected value on every workload, or it is out."""
        for path in paths:
            for impl in IMPLS:
                if impl.key in self.res.failed:
                    continue
                for wl in WORKLOADS:
                    args = workload_args(wl, self.plan.scale, seed=99, n=1)
                    job = Job(impl.key, self.dsn_for(impl.key, path), wl, args, 0)
                    try:
                        got = pool.call(job)
                        want = expected_result(wl, args[0], self.plan.scale)
                        if got != want:
                            raise AssertionError(f"{wl}{args[0]} returned {got!r}, "
                                                 f"expected {want!r}")
                    except (ClientError, AssertionError) as exc:
                        self.res.failed[impl.key] = f"{path}: {exc}"
                        log(f"{impl.key}) {impl.label} fails verification: "
                            f"{str(exc).splitlines()[0]}")
                        break

    def calibrate(self, pool: ClientPool, paths: Sequence[str]) -> None:
        for path in paths:
            cell = self.res.calibration.setdefault(path, Cell())
            job = Job("probe", self.conninfo[path], "select1", [()],
                      max(self.plan.duration, 0.3))
            try:
                cell.rounds[0] = sample_of(pool.run([job]))
            except ClientError as exc:
                cell.error = str(exc)
            pool.close_connections(self.conninfo[path])

    def measure(self, pool: ClientPool, path: str, rnd: int, workload: str, impl: str,
                clients_n: int) -> None:
        key = (path, clients_n, workload, impl)
        cell = self.res.matrix.setdefault(key, Cell())
        if impl in self.res.failed:
            return
        duration = self.plan.duration if clients_n == 1 else self.plan.multi_duration
        jobs = [
            Job(impl, self.dsn_for(impl, path), workload,
                workload_args(workload, self.plan.scale, seed=rnd * 1000 + i * 10 + WORKLOADS.index(workload)),
                duration, together=clients_n > 1)
            for i in range(clients_n)
        ]
        try:
            cell.rounds[rnd] = sample_of(pool.run(jobs))
        except ClientError as exc:
            cell.error = str(exc)
            self.res.failed.setdefault(impl, f"{path}, {clients_n} client(s), {workload}: {exc}")
            log(f"{impl}) failed on {path} ({workload}): {str(exc).splitlines()[0]}")

    def matrix(self, pool: ClientPool) -> None:
        plan = self.plan
        keys = [impl.key for impl in IMPLS]
        for path in plan.paths:
            t0 = time.monotonic()
            for rnd in range(plan.rounds):
                t_round = time.monotonic()
                order = keys[rnd % len(keys):] + keys[: rnd % len(keys)]
                for wl in WORKLOADS:
                    for impl in order:
                        self.measure(pool, path, rnd, wl, impl, 1)
                if path in plan.multi_paths:
                    for wl in plan.multi_workloads:
                        for impl in order:
                            self.measure(pool, path, rnd, wl, impl, plan.clients)
                log(f"  {path} round {rnd + 1}/{plan.rounds}: {time.monotonic() - t_round:.1f} s")
            for dsn in {self.conninfo[path], self.conninfo_approved[path]}:
                pool.close_connections(dsn)
            f = self.res.cell(path, 1, "process_order", LIMIT)
            a = self.res.cell(path, 1, "process_order", "A")
            summary = ""
            if f and a:
                summary = (f"; process_order p50: PL/Python {f.pooled(50):.3f} ms, "
                           f"in-process wormhole {a.ratio(f, 'p50') or 0:.2f}x")
            log(f"path {path} done in {time.monotonic() - t0:.0f} s{summary}")


def machine_info(admin_dsn: str) -> dict[str, str]:
    def read(path: str) -> str:
        try:
            return FsPath(path).read_text()
        except OSError:
            return ""

    cpu = next((line.split(":", 1)[1].strip() for line in read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor() or "?")
    mem = next((line.split(":", 1)[1].strip() for line in read("/proc/meminfo").splitlines()
                if line.startswith("MemTotal")), "?")
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        version = conn.execute("SELECT version()").fetchone()[0]  # type: ignore[index]
        try:
            py = conn.execute("SELECT py_version()").fetchone()[0]  # type: ignore[index]
        except psycopg.Error:
            py = "?"

    def version_of(module: str) -> str:
        if module == "psycopg":
            return (f"{psycopg.__version__} ({psycopg.pq.__impl__} implementation, libpq "
                    f"{psycopg.pq.version()})")
        try:
            from importlib.metadata import version as v

            return v(module)
        except Exception:  # noqa: BLE001
            return "not installed"

    import wormhole

    return {
        "nproc": str(os.cpu_count()),
        "CPU": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "PostgreSQL": version,
        "PL/Python runs Python": py,
        "client": (f"Python {platform.python_version()}; wormhole {wormhole.__version__}; "
                   f"psycopg {version_of('psycopg')}, psycopg2 {version_of('psycopg2-binary')}, "
                   f"asyncpg {version_of('asyncpg')}"),
        "load average before the run": read("/proc/loadavg").strip(),
    }


@contextlib.contextmanager
def environment(plan: Plan, *, mode: str, command: str, admin_dsn: str | None = None
                ) -> Iterator[Bench]:
    """The databases, the delay proxies and the connection strings of every path.

    Own throwaway cluster unless ``admin_dsn`` (a superuser DSN of a server that also listens
    on 127.0.0.1) is given, as the smoke test does; then the databases get unique names and
    are dropped at the end.
    """
    from wormhole.cluster import Cluster

    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cluster = None
    if admin_dsn is None:
        log("starting a throwaway PostgreSQL cluster")
        cluster = Cluster(settings=database.SERVER_SETTINGS).init().start()
        admin_dsn = cluster.dsn()
    suffix = "" if cluster else f"_{os.getpid()}"
    db, db_approved = database.DB + suffix, database.DB_APPROVED + suffix
    proxies: list[DelayProxy] = []
    try:
        info = psycopg.conninfo.conninfo_to_dict(admin_dsn)
        port = int(info.get("port") or 5432)
        log(f"loading data ({plan.scale.messages:,} messages, {plan.scale.orders:,} orders)")
        boundary = database.create(admin_dsn, plan.scale, db=db, db_approved=db_approved)
        admin_bench = psycopg.conninfo.make_conninfo(admin_dsn, dbname=db)
        res = report.RunResults(
            command=command, mode=mode, started=started, machine=machine_info(admin_bench),
            settings=dict(database.SERVER_SETTINGS) if cluster else {"server": "given DSN"},
            plan=plan, boundary=boundary,
        )
        bench = Bench(plan, res)

        def app(host: str, p: int, dbname: str) -> str:
            return psycopg.conninfo.make_conninfo(admin_dsn, host=host, port=p, dbname=dbname,
                                                  user=database.APP_ROLE)

        endpoints = {UNIX: (info.get("host") or "/var/run/postgresql", port),
                     TCP: ("127.0.0.1", port)}
        for path in dict.fromkeys([PROXY0, *plan.paths]):
            delay = PATHS[path].delay_ms
            if delay is not None:
                proxy = DelayProxy(("127.0.0.1", port), delay / 1000.0).start()
                proxies.append(proxy)
                endpoints[path] = ("127.0.0.1", proxy.port)
        for path, (host, p) in endpoints.items():
            bench.conninfo[path] = app(host, p, db)
            bench.conninfo_approved[path] = app(host, p, db_approved)
        yield bench
    finally:
        for proxy in proxies:
            proxy.stop()
        if cluster is not None:
            cluster.destroy()
        else:
            database.drop(admin_dsn, db=db, db_approved=db_approved)


def run(plan: Plan, *, mode: str, output: FsPath | None, command: str) -> report.RunResults:
    """The whole benchmark on a throwaway cluster; writes ``output`` unless None."""
    t_start = time.monotonic()
    with environment(plan, mode=mode, command=command) as bench:
        res = bench.res
        warmup = {wl: workload_args(wl, plan.scale, seed=7, n=50) for wl in WORKLOADS}
        pool = ClientPool(plan.clients, warmup)  # before the parent opens any connection
        try:
            log("verifying every implementation's results")
            bench.verify(pool, [UNIX, PROXY_HALF] if PROXY_HALF in plan.paths else [UNIX])
            log("calibrating round trips per path")
            bench.calibrate(pool, list(bench.conninfo))
            log(f"warm matrix: paths {', '.join(plan.paths)}; {plan.rounds} rounds")
            bench.matrix(pool)
        finally:
            pool.stop()
        unix, unix_approved = bench.conninfo[UNIX], bench.conninfo_approved[UNIX]
        log("cold path")
        res.cold = extras.cold_path(unix, unix_approved, plan.cold_trials)
        log("client-side overhead")
        try:
            res.overhead = extras.client_overhead(unix_approved, plan.overhead_blocks, 200)
        except Exception as exc:  # noqa: BLE001 - report the rest
            log(f"client-side overhead failed: {exc}")
        log(f"{plan.big_rows:,}-row result")
        res.big = extras.big_result(unix, unix_approved, plan.big_rows, plan.big_repeats)
        for label, dsn, calls, budget in (
            ("wormhole in-process (approved)", unix_approved, plan.memory_calls,
             plan.memory_seconds),
            ("wormhole confined worker", unix, plan.worker_memory_calls,
             plan.memory_seconds / 4),
        ):
            log(f"backend memory over {calls:,} calls (at most {budget:.0f} s), {label}")
            res.memory.append(extras.memory(label, dsn, calls, budget_seconds=budget,
                                            warmup_calls=max(1000, calls // 100)))
        log("backend memory, control: the hand-written PL/Python function")
        res.memory.append(extras.memory(
            "control: plpython3u get_user_summary_py", unix, plan.worker_memory_calls,
            budget_seconds=plan.memory_seconds / 4, warmup_calls=1000,
            statement="SELECT * FROM get_user_summary_py($1)"))
        res.machine["load average after the run"] = FsPath("/proc/loadavg").read_text().strip()
        res.seconds = time.monotonic() - t_start
        if output is not None:
            output.write_text(report.render(res))
            log(f"wrote {output} ({res.seconds:.0f} s)")
        return res


def smoke(admin_dsn: str) -> tuple[report.RunResults, str]:
    """Correctness only, in seconds: tiny data on an existing server, every implementation
    checked on the unix socket and through the delay proxy, one short cell each, the report
    rendered. No timing is judged."""
    plan = SMOKE
    with environment(plan, mode="smoke", command="bench.run.smoke()", admin_dsn=admin_dsn
                     ) as bench:
        warmup = {wl: workload_args(wl, plan.scale, seed=7, n=5) for wl in WORKLOADS}
        pool = ClientPool(1, warmup, connection_warmup=0)
        try:
            bench.verify(pool, [UNIX, PROXY0])
            for impl in IMPLS:
                bench.measure(pool, UNIX, 0, "get_user_summary", impl.key, 1)
        finally:
            pool.stop()
        return bench.res, report.render(bench.res)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="wormhole vs client-side drivers, PL/Python and PL/pgSQL, on a throwaway "
                    "PostgreSQL cluster; writes bench/RESULTS.md",
    )
    parser.add_argument("--quick", action="store_true",
                        help="fewer paths, rounds and calls (under 2 minutes)")
    parser.add_argument("--output", type=FsPath, default=HERE / "RESULTS.md",
                        help="where to write the results (default: bench/RESULTS.md)")
    args = parser.parse_args(argv)
    plan, mode = (QUICK, "quick") if args.quick else (FULL, "full")
    command = "python -m bench" + (" --quick" if args.quick else "")
    run(plan, mode=mode, output=args.output, command=command)
    return 0
