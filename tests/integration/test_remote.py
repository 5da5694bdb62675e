"""@remote: install once, call by hash, arguments, results, errors, output, atomicity."""

from __future__ import annotations

import datetime as dt
import logging
import traceback
import uuid
from decimal import Decimal

import pytest

import wormhole
from tests.helpers import RoundTrips
from wormhole import DatabaseError, errors, query, remote


@pytest.fixture
def items(db):
    db.setup_sql(
        "CREATE TABLE items (id int PRIMARY KEY, name text UNIQUE, price numeric);"
        "INSERT INTO items VALUES (1, 'apple', 1.50), (2, 'pear', 2.25);"
    )
    return db


@remote
def add(a, b=10, *, scale=1):
    return (a + b) * scale


@remote
def echo(value):
    return value


def test_positional_keyword_and_default_arguments(conn):
    assert add(1) == 11
    assert add(1, 2) == 3
    assert add(1, b=5, scale=3) == 18
    assert add(a=2, scale=2) == 24


def test_wrong_arguments_fail_locally_before_any_round_trip(conn, server):
    with RoundTrips(conn, server) as rt:
        with pytest.raises(TypeError):
            add()
        with pytest.raises(TypeError):
            add(1, 2, 3)
    assert rt.count == 0


def test_unsupported_argument_is_named_before_any_round_trip(conn, server):
    class Thing:
        pass

    with RoundTrips(conn, server) as rt:
        with pytest.raises(errors.ArgumentError, match=r"argument 'value'.*Thing"):
            echo(Thing())
    assert rt.count == 0
    assert issubclass(errors.ArgumentError, TypeError)


VALUES = [
    None, True, False, 0, -1, 2**200, -(2**70), 1.5, float("inf"), float("-inf"), "text", "",
    "ünïcode ✓", b"\x00\xff", Decimal("1.10"), Decimal("-0.000001"), dt.date(2020, 2, 29),
    dt.time(12, 30, 1, 5), dt.datetime(2020, 1, 2, 3, 4, 5, 6),
    dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=-3, minutes=-30))),
    dt.timedelta(days=-1, seconds=5, microseconds=7), uuid.UUID(int=12345), [1, [2, [3]]],
    (1, "a", None), {"k": [1, {"n": (2, 3)}]}, {1: "int key", (1, 2): "tuple key"},
    {"$t": "looks like a tag"},
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_arguments_and_results_keep_their_types(conn, value):
    result = echo(value)
    assert result == value and type(result) is type(value)


def test_nan_round_trips(conn):
    import math

    assert math.isnan(echo(float("nan")))


def test_rows_come_back_as_list_of_dicts(items, conn):
    @remote
    def names():
        return query("SELECT id, name FROM items ORDER BY id")

    assert names() == [{"id": 1, "name": "apple"}, {"id": 2, "name": "pear"}]


def test_statement_without_rows_reports_rowcount(items, conn):
    @remote
    def bump():
        r = query("UPDATE items SET price = price + 1")
        return [len(r), r.rowcount]

    assert bump() == [0, 2]
    r = query("UPDATE items SET price = price + 1")  # and client-side: the same
    assert (len(r), r.rowcount) == (0, 2)


def test_builtin_exception_keeps_type_message_and_user_line(conn):
    with pytest.raises(ValueError, match="bad value 3") as info:
        fails(3)
    exc = info.value
    assert isinstance(exc, errors.RemoteError)
    assert exc.remote_type == "ValueError"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == __file__]
    assert frames, "the traceback must point into this file"
    assert frames[-1].lineno == FAILS_RAISE_LINE
    assert frames[-1].name == "fails"
    assert "raise ValueError" in (frames[-1].line or "")


def _line_of(marker):
    with open(__file__) as f:
        for n, line in enumerate(f, 1):
            if marker in line and "_line_of" not in line:
                return n
    raise AssertionError(marker)


@remote
def fails(n):
    x = n * 2
    if x:
        raise ValueError(f"bad value {n}")  # <- FAILS_RAISE
    return x


FAILS_RAISE_LINE = _line_of("# <- FAILS_RAISE")


def test_custom_exception_surfaces_as_remote_error(conn):
    @remote
    def custom():
        class Oops(Exception):
            pass

        raise Oops("custom failure")

    with pytest.raises(errors.RemoteError, match="custom failure") as info:
        custom()
    assert info.value.remote_type == "Oops"
    assert "Oops" in str(info.value)


def test_database_error_keeps_sqlstate_and_call_is_atomic(items, conn):
    @remote
    def insert_twice():
        query("INSERT INTO items VALUES (3, 'plum', 1)")
        query("INSERT INTO items VALUES (4, 'apple', 1)")  # unique violation

    with pytest.raises(errors.UniqueViolation) as info:
        insert_twice()
    assert info.value.sqlstate == "23505"
    assert isinstance(info.value, DatabaseError)
    # atomic: the first insert did not persist; and the connection is still usable
    assert query("SELECT count(*) AS n FROM items")[0]["n"] == 2


def test_user_code_can_catch_database_error_by_sqlstate(items, conn):
    @remote
    def insert_or_report(name):
        try:
            query("INSERT INTO items VALUES (9, $1, 1)", name)
            return "inserted"
        except DatabaseError as e:
            return e.sqlstate

    assert insert_or_report("apple") == "23505"
    assert insert_or_report("kiwi") == "inserted"


def test_failed_call_inside_a_transaction_leaves_it_usable(items, conn, driver_name):
    @remote
    def boom():
        query("UPDATE items SET price = 0")
        raise RuntimeError("boom")

    query("UPDATE items SET name = 'APPLE' WHERE id = 1")  # opens the client's transaction
    with pytest.raises(RuntimeError):
        boom()
    # the transaction is still usable: our earlier write is visible, boom's is not
    assert query("SELECT name, price FROM items WHERE id = 1") == [
        {"name": "APPLE", "price": Decimal("1.50")}
    ]
    conn.rollback()


def test_print_reaches_the_client(conn, caplog, capsys):
    @remote
    def chatty(n):
        for i in range(n):
            print("line", i)
        return n

    with caplog.at_level(logging.INFO, logger="wormhole.remote"):
        assert chatty(2) == 2
    assert [r.getMessage() for r in caplog.records if r.name == "wormhole.remote"] == [
        "chatty: line 0", "chatty: line 1"
    ]
    assert capsys.readouterr().out == "line 0\nline 1\n"


def test_same_source_shares_the_cache_entry_and_edits_make_new_versions(db, conn):
    # twin_a and twin_b are the same text in two files; twin_c is an edited version
    assert twin_a.hash == twin_b.hash
    assert twin_a.hash != twin_c.hash
    assert twin_a(1) == 2 and twin_b(1) == 2 and twin_c(1) == 3
    with db.admin() as admin:
        n = admin.execute(
            "SELECT count(*) FROM wormhole_functions WHERE name = 'twin'"
        ).fetchone()[0]
    assert n == 2


def _make_twins():
    import importlib.util
    import pathlib
    import tempfile

    d = pathlib.Path(tempfile.mkdtemp())
    out = []
    for i, body in enumerate(["x + 1", "x + 1", "x + 3 - 1"]):
        p = d / f"twin_mod_{i}.py"
        p.write_text(f"from wormhole import remote\n\n@remote\ndef twin(x):\n    return {body}\n")
        spec = importlib.util.spec_from_file_location(f"twin_mod_{i}", p)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        out.append(mod.twin)
    return out


twin_a, twin_b, twin_c = _make_twins()


def test_server_lost_the_function_client_reinstalls_once(db, conn):
    assert add(1, 1) == 2
    with db.admin() as admin:
        admin.execute("DELETE FROM wormhole_functions")
    assert add(2, 2) == 4  # transparently reinstalled


def test_server_lost_the_function_inside_a_transaction(db, items, conn):
    assert add(1, 1) == 2
    with db.admin() as admin:
        admin.execute("DELETE FROM wormhole_functions")
    query("UPDATE items SET price = 7 WHERE id = 1")  # open a transaction
    assert add(3, 3) == 6
    assert query("SELECT price FROM items WHERE id = 1") == [{"price": Decimal("7")}]
    conn.rollback()


def test_no_connection_is_a_clear_error():
    wormhole.set_connection(None)
    with pytest.raises(errors.InterfaceError, match="set_connection"):
        add(1)


def test_connection_scoping_with_threads_and_context_manager(db, connect):
    import threading

    c1, c2 = connect(), connect()
    seen = {}

    def worker(name, c):
        with wormhole.connection(c):
            seen[name] = query("SELECT pg_backend_pid() AS pid")[0]["pid"]

    threads = [threading.Thread(target=worker, args=(n, c)) for n, c in (("a", c1), ("b", c2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen["a"] != seen["b"]
    wormhole.set_connection(c1)
    try:
        with wormhole.connection(c2):
            inner = query("SELECT pg_backend_pid() AS pid")[0]["pid"]
        outer = query("SELECT pg_backend_pid() AS pid")[0]["pid"]
    finally:
        wormhole.set_connection(None)
    assert inner == seen["b"] and outer == seen["a"]


def test_not_installed_schema_is_a_clear_error(server, driver_name):
    import psycopg

    with psycopg.connect(server.dsn(), autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS bare")
        admin.execute("CREATE DATABASE bare")
    try:
        from tests.conftest import _connect

        c = _connect(driver_name, server.dsn("bare"))
        with wormhole.connection(c):
            with pytest.raises(errors.SchemaError, match="wormhole install"):
                add(1)
        c.close()
    finally:
        with psycopg.connect(server.dsn(), autocommit=True) as admin:
            admin.execute("DROP DATABASE bare WITH (FORCE)")


def test_connection_scoping_is_per_asyncio_task(db, connect):
    import asyncio

    c1, c2 = connect(), connect()

    async def task(c, seen, name):
        with wormhole.connection(c):
            for _ in range(3):
                await asyncio.sleep(0)  # let the other task run inside its own block
                assert wormhole.get_connection() is c
                seen.setdefault(name, set()).add(query("SELECT pg_backend_pid() AS p")[0]["p"])

    async def main():
        seen = {}
        await asyncio.gather(task(c1, seen, "a"), task(c2, seen, "b"))
        return seen

    seen = asyncio.run(main())
    assert len(seen["a"]) == 1 and len(seen["b"]) == 1 and seen["a"] != seen["b"]
