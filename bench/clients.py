"""The implementations compared: the same three workloads, written the way each is meant to be
used. Every call is its own transaction and returns the same Python value.

Round trips per call (process_order / get_user_summary / follow_chain):

* wormhole (either mode), PL/Python, PL/pgSQL: one ``SELECT`` in autocommit: 1 / 1 / 1.
* client-side psycopg 3, psycopg2, asyncpg: BEGIN, every statement, COMMIT: 6 / 4 / 12.
* psycopg 3 pipeline mode: as far as the data dependencies allow: 3 / 1 / 10.
  process_order needs the order before it can look at the stock, and the stock before it may
  write; the chain needs every answer before the next question. BEGIN and COMMIT are sent as
  plain statements inside the pipeline: ``conn.transaction()`` inside ``conn.pipeline()`` syncs
  at BEGIN and at COMMIT (psycopg 3.3), which would cost the round trips pipelining saves.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

import wormhole

from . import functions

WORKLOADS = ("process_order", "get_user_summary", "follow_chain")


class InsufficientInventory(Exception):
    pass


@dataclass(frozen=True)
class Impl:
    key: str
    label: str
    round_trips: tuple[int, int, int]  # per workload, in WORKLOADS order
    approved_db: bool = False  # runs against the database where the functions are approved

    def open(self, conninfo: str) -> Session:
        return _OPENERS[self.key](conninfo)


IMPLS = (
    Impl("W", "wormhole, confined worker (default)", (1, 1, 1)),
    Impl("w", "wormhole, confined worker, variants it must run", (1, 1, 1)),
    Impl("A", "wormhole, in-process (approved)", (1, 1, 1), approved_db=True),
    Impl("a", "psycopg 3, client-side", (6, 4, 12)),
    Impl("c", "psycopg 3, pipeline mode", (3, 1, 10)),
    Impl("b", "psycopg2, client-side", (6, 4, 12)),
    Impl("d", "asyncpg, client-side", (6, 4, 12)),
    Impl("f", "plpython3u, plans cached in SD (PL/Python limit)", (1, 1, 1)),
    Impl("e", "PL/pgSQL (in-database limit)", (1, 1, 1)),
)
BY_KEY = {impl.key: impl for impl in IMPLS}
LIMIT = "f"  # every figure is also given as a ratio to this one


class Session(abc.ABC):
    """One connection of one implementation, kept open across rounds like a pooled one."""

    calls: dict[str, Callable[..., Any]]

    def call(self, workload: str, args: Sequence[Any]) -> Any:
        return self.calls[workload](*args)

    def run(self, workload: str, args: Sequence[Sequence[Any]], duration: float
            ) -> tuple[list[int], float]:
        """Call ``workload`` back to back for ``duration`` seconds, cycling through ``args``.

        Returns each call's latency in ns and the elapsed time in seconds.
        """
        fn = self.calls[workload]
        latencies: list[int] = []
        n = len(args)
        clock = time.perf_counter_ns
        start = clock()
        end = start + int(duration * 1e9)
        i = 0
        t1 = start
        while t1 < end:
            a = args[i % n]
            t0 = clock()
            fn(*a)
            t1 = clock()
            latencies.append(t1 - t0)
            i += 1
        return latencies, (t1 - start) / 1e9

    @abc.abstractmethod
    def close(self) -> None:
        """Close the connection(s) this session holds."""


# --- wormhole -------------------------------------------------------------------------------

class WormholeSession(Session):
    """``@remote`` functions called through the public API on a psycopg 3 connection."""

    def __init__(self, conninfo: str, in_worker: bool = False) -> None:
        self.conn = psycopg.connect(conninfo, autocommit=True)
        self.calls = {
            "process_order": functions.process_order,
            "get_user_summary": functions.get_user_summary,
            "follow_chain": functions.follow_chain,
        }
        if in_worker:  # the same logic, with one call the backend cannot finish itself
            self.calls["process_order"] = functions.process_order_in_worker
            self.calls["get_user_summary"] = functions.get_user_summary_in_worker

    def run(self, workload: str, args: Sequence[Sequence[Any]], duration: float
            ) -> tuple[list[int], float]:
        with wormhole.connection(self.conn):
            return super().run(workload, args, duration)

    def call(self, workload: str, args: Sequence[Any]) -> Any:
        with wormhole.connection(self.conn):
            return super().call(workload, args)

    def close(self) -> None:
        self.conn.close()


# --- functions inside the database (PL/Python, PL/pgSQL) -------------------------------------

class InDatabaseSession(Session):
    """One ``SELECT fn(...)`` per call, psycopg 3 in autocommit (prepared after 5 uses)."""

    def __init__(self, conninfo: str, suffix: str) -> None:
        conn = self.conn = psycopg.connect(conninfo, autocommit=True)
        po = f"SELECT * FROM process_order_{suffix}(%s, %s)"
        us = f"SELECT * FROM get_user_summary_{suffix}(%s)"
        ch = f"SELECT follow_chain_{suffix}(%s)"

        def process_order(order_id: int, user_id: int) -> Any:
            status, oid = conn.execute(po, (order_id, user_id)).fetchone()  # type: ignore[misc]
            return {"status": status, "order_id": oid}

        def get_user_summary(user_id: int) -> Any:
            name, count = conn.execute(us, (user_id,)).fetchone()  # type: ignore[misc]
            return {"username": name, "message_count": count}

        def follow_chain(start: int) -> Any:
            return conn.execute(ch, (start,)).fetchone()[0]  # type: ignore[index]

        self.calls = {"process_order": process_order, "get_user_summary": get_user_summary,
                      "follow_chain": follow_chain}

    def close(self) -> None:
        self.conn.close()


# --- client-side: psycopg 3 ------------------------------------------------------------------

ORDER_SQL = "SELECT * FROM orders WHERE id = %s"
STOCK_SQL = "SELECT quantity FROM inventory WHERE product_id = %s"
TAKE_SQL = "UPDATE inventory SET quantity = quantity - %s WHERE product_id = %s"
RECORD_SQL = "INSERT INTO transactions (order_id, user_id, amount) VALUES (%s, %s, %s)"
USER_SQL = "SELECT * FROM users WHERE id = %s"
COUNT_SQL = "SELECT COUNT(*) AS count FROM messages WHERE user_id = %s"
LINK_SQL = "SELECT next_id FROM links WHERE id = %s"


class Psycopg3Session(Session):
    """One statement per round trip inside ``conn.transaction()``."""

    def __init__(self, conninfo: str) -> None:
        conn = self.conn = psycopg.connect(conninfo, autocommit=True, row_factory=dict_row)

        def process_order(order_id: int, user_id: int) -> Any:
            with conn.transaction():
                order = conn.execute(ORDER_SQL, (order_id,)).fetchone()
                stock = conn.execute(STOCK_SQL, (order["product_id"],)).fetchone()
                if stock["quantity"] < order["quantity"]:
                    raise InsufficientInventory("Insufficient inventory")
                conn.execute(TAKE_SQL, (order["quantity"], order["product_id"]))
                conn.execute(RECORD_SQL, (order_id, user_id, order["total"]))
            return {"status": "success", "order_id": order_id}

        def get_user_summary(user_id: int) -> Any:
            with conn.transaction():
                user = conn.execute(USER_SQL, (user_id,)).fetchone()
                count = conn.execute(COUNT_SQL, (user_id,)).fetchone()["count"]
            return {"username": user["username"], "message_count": count}

        def follow_chain(start: int) -> Any:
            node = start
            with conn.transaction():
                for _ in range(functions.CHAIN_LENGTH):
                    node = conn.execute(LINK_SQL, (node,)).fetchone()["next_id"]
            return node

        self.calls = {"process_order": process_order, "get_user_summary": get_user_summary,
                      "follow_chain": follow_chain}

    def close(self) -> None:
        self.conn.close()


class PipelineSession(Session):
    """psycopg 3 pipeline mode: a round trip only where an answer is needed to go on.

    Inside the pipeline, ``fetchone()`` sends a Flush (not a Sync), so the transaction stays
    open; leaving the block sends the one Sync.
    """

    def __init__(self, conninfo: str) -> None:
        conn = self.conn = psycopg.connect(conninfo, autocommit=True, row_factory=dict_row)

        def process_order(order_id: int, user_id: int) -> Any:
            with conn.pipeline():
                conn.execute("BEGIN")
                order = conn.execute(ORDER_SQL, (order_id,)).fetchone()  # round trip 1
                stock = conn.execute(STOCK_SQL, (order["product_id"],)).fetchone()  # 2
                if stock["quantity"] < order["quantity"]:
                    conn.execute("ROLLBACK")
                    raise InsufficientInventory("Insufficient inventory")
                conn.execute(TAKE_SQL, (order["quantity"], order["product_id"]))
                conn.execute(RECORD_SQL, (order_id, user_id, order["total"]))
                conn.execute("COMMIT")
            # round trip 3: the writes and COMMIT, at the Sync that ends the block
            return {"status": "success", "order_id": order_id}

        def get_user_summary(user_id: int) -> Any:
            with conn.pipeline():
                conn.execute("BEGIN")
                user = conn.execute(USER_SQL, (user_id,))
                count = conn.execute(COUNT_SQL, (user_id,))
                conn.execute("COMMIT")
            # one round trip: everything went out at the Sync
            return {"username": user.fetchone()["username"],  # type: ignore[index]
                    "message_count": count.fetchone()["count"]}  # type: ignore[index]

        def follow_chain(start: int) -> Any:
            node = start
            with conn.pipeline():
                conn.execute("BEGIN")
                for _ in range(functions.CHAIN_LENGTH - 1):
                    node = conn.execute(LINK_SQL, (node,)).fetchone()["next_id"]
                last = conn.execute(LINK_SQL, (node,))
                conn.execute("COMMIT")  # the last answer travels with the COMMIT
            return last.fetchone()["next_id"]  # type: ignore[index]

        self.calls = {"process_order": process_order, "get_user_summary": get_user_summary,
                      "follow_chain": follow_chain}

    def close(self) -> None:
        self.conn.close()


# --- client-side: psycopg2 -------------------------------------------------------------------

class Psycopg2Session(Session):
    """psycopg2's habit: an implicit BEGIN before the first statement, then ``commit()``."""

    def __init__(self, conninfo: str) -> None:
        import psycopg2
        import psycopg2.extras

        conn = self.conn = psycopg2.connect(conninfo)
        cur = conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor)

        def process_order(order_id: int, user_id: int) -> Any:
            with conn:  # commits, or rolls back on an exception
                cur.execute(ORDER_SQL, (order_id,))
                order = cur.fetchone()
                cur.execute(STOCK_SQL, (order["product_id"],))
                if cur.fetchone()["quantity"] < order["quantity"]:
                    raise InsufficientInventory("Insufficient inventory")
                cur.execute(TAKE_SQL, (order["quantity"], order["product_id"]))
                cur.execute(RECORD_SQL, (order_id, user_id, order["total"]))
            return {"status": "success", "order_id": order_id}

        def get_user_summary(user_id: int) -> Any:
            with conn:
                cur.execute(USER_SQL, (user_id,))
                user = cur.fetchone()
                cur.execute(COUNT_SQL, (user_id,))
                count = cur.fetchone()["count"]
            return {"username": user["username"], "message_count": count}

        def follow_chain(start: int) -> Any:
            node = start
            with conn:
                for _ in range(functions.CHAIN_LENGTH):
                    cur.execute(LINK_SQL, (node,))
                    node = cur.fetchone()["next_id"]
            return node

        self.calls = {"process_order": process_order, "get_user_summary": get_user_summary,
                      "follow_chain": follow_chain}

    def close(self) -> None:
        self.conn.close()


# --- client-side: asyncpg --------------------------------------------------------------------

def _dollar(sql: str) -> str:
    """``%s`` placeholders to asyncpg's ``$n``."""
    parts = sql.split("%s")
    return "".join(p + (f"${i}" if i < len(parts) else "") for i, p in enumerate(parts, 1))


class AsyncpgSession(Session):
    """asyncpg: every statement prepared and cached by asyncpg; one event loop per process.

    The timing loop runs inside the event loop, so the figures include no loop start-up.
    """

    def __init__(self, conninfo: str) -> None:
        import asyncpg

        self.loop = asyncio.new_event_loop()
        kw = psycopg.conninfo.conninfo_to_dict(conninfo)
        self.conn = self.loop.run_until_complete(asyncpg.connect(
            host=kw.get("host"), port=int(kw.get("port", 5432)), user=kw.get("user"),
            database=kw.get("dbname"),
        ))
        conn = self.conn
        order_sql, stock_sql, take_sql, record_sql, user_sql, count_sql, link_sql = map(
            _dollar, (ORDER_SQL, STOCK_SQL, TAKE_SQL, RECORD_SQL, USER_SQL, COUNT_SQL, LINK_SQL))

        async def process_order(order_id: int, user_id: int) -> Any:
            async with conn.transaction():
                order = await conn.fetchrow(order_sql, order_id)
                stock = await conn.fetchrow(stock_sql, order["product_id"])
                if stock["quantity"] < order["quantity"]:
                    raise InsufficientInventory("Insufficient inventory")
                await conn.execute(take_sql, order["quantity"], order["product_id"])
                await conn.execute(record_sql, order_id, user_id, order["total"])
            return {"status": "success", "order_id": order_id}

        async def get_user_summary(user_id: int) -> Any:
            async with conn.transaction():
                user = await conn.fetchrow(user_sql, user_id)
                count = await conn.fetchval(count_sql, user_id)
            return {"username": user["username"], "message_count": count}

        async def follow_chain(start: int) -> Any:
            node = start
            async with conn.transaction():
                for _ in range(functions.CHAIN_LENGTH):
                    node = await conn.fetchval(link_sql, node)
            return node

        self.async_calls = {"process_order": process_order, "get_user_summary": get_user_summary,
                            "follow_chain": follow_chain}
        self.calls = {name: self._blocking(fn) for name, fn in self.async_calls.items()}

    def _blocking(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        return lambda *a: self.loop.run_until_complete(fn(*a))

    def run(self, workload: str, args: Sequence[Sequence[Any]], duration: float
            ) -> tuple[list[int], float]:
        return self.loop.run_until_complete(self._run(workload, args, duration))

    async def _run(self, workload: str, args: Sequence[Sequence[Any]], duration: float
                   ) -> tuple[list[int], float]:
        fn = self.async_calls[workload]
        latencies: list[int] = []
        n = len(args)
        clock = time.perf_counter_ns
        start = clock()
        end = start + int(duration * 1e9)
        i = 0
        t1 = start
        while t1 < end:
            a = args[i % n]
            t0 = clock()
            await fn(*a)
            t1 = clock()
            latencies.append(t1 - t0)
            i += 1
        return latencies, (t1 - start) / 1e9

    def close(self) -> None:
        self.loop.run_until_complete(self.conn.close())
        self.loop.close()


_OPENERS: dict[str, Callable[[str], Session]] = {
    "W": WormholeSession,
    "w": lambda conninfo: WormholeSession(conninfo, in_worker=True),
    "A": WormholeSession,
    "a": Psycopg3Session,
    "c": PipelineSession,
    "b": Psycopg2Session,
    "d": AsyncpgSession,
    "f": lambda conninfo: InDatabaseSession(conninfo, "py"),
    "e": lambda conninfo: InDatabaseSession(conninfo, "plpgsql"),
}
