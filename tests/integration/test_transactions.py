"""transaction(): context manager, runner, savepoints, retry policy, lost connections.

Real server, both drivers, autocommit and not. Retries are provoked with real server errors:
``RAISE ... USING ERRCODE = '40001'`` counted by a sequence (sequences are not rolled back, so
they count attempts across retries), terminated backends and a restarted server.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import wormhole
from tests.conftest import APP_ROLE, TEMPLATE, Database, _connect
from wormhole import errors, query, remote, transaction
from wormhole.remote import forget_installed
from wormhole.transaction import RetryEvent, set_retry_defaults

FAIL_40001 = "SELECT raise_sqlstate('40001')"  # a real server error with that SQLSTATE


TX_SCHEMA = (
    "CREATE TABLE t (id int PRIMARY KEY, v text);"
    "CREATE SEQUENCE attempts;"
    "CREATE FUNCTION raise_sqlstate(code text) RETURNS void LANGUAGE plpgsql AS $$ BEGIN "
    "  RAISE EXCEPTION 'simulated failure %', code USING ERRCODE = code; END $$;"
    # a COMMIT that takes a while: a deferred constraint trigger that sleeps when v = 'slow'
    "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "  IF NEW.v = 'slow' THEN PERFORM pg_sleep(30); END IF; RETURN NULL; END $$;"
    "CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON t DEFERRABLE INITIALLY DEFERRED "
    "  FOR EACH ROW EXECUTE FUNCTION slow_commit();"
)


def make_module_db(server) -> Iterator[Database]:
    """One database per test module (creating one per test costs ~1 s); tests reset it with
    :func:`fresh`. Shared with test_transactions_concurrency.py."""
    name = f"tx{os.getpid()}_{next(_names)}"
    with psycopg.connect(server.dsn(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    yield Database(server, name)
    forget_installed()
    with psycopg.connect(server.dsn(), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def make_connector(database: Database, driver_name: str) -> Iterator[Any]:
    """Connections as ``app`` to ``database`` with the test's driver; all closed at the end."""
    made: list[Any] = []

    def make(user: str = APP_ROLE, autocommit: bool = False) -> Any:
        c = _connect(driver_name, database.dsn(user))
        if autocommit:
            c.autocommit = True
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


_names = itertools.count()


@pytest.fixture(scope="module")
def module_db(server) -> Iterator[Database]:
    yield from make_module_db(server)


@pytest.fixture
def connect(module_db, driver_name) -> Iterator[Any]:
    yield from make_connector(module_db, driver_name)


def fresh(database: Database, schema: str) -> Database:
    """Drop and recreate the public tables of ``schema`` (the wormhole_* objects stay)."""
    with database.admin() as admin:
        admin.execute("DROP TABLE IF EXISTS t, accounts, transfers, oncall, decisions CASCADE;"
                      "DROP SEQUENCE IF EXISTS attempts; DROP FUNCTION IF EXISTS slow_commit;"
                      "DROP FUNCTION IF EXISTS raise_sqlstate;"
                      f"ALTER ROLE {APP_ROLE} IN DATABASE {database.name} RESET ALL")
    database.setup_sql(schema)
    return database


@pytest.fixture
def tx_db(module_db):
    return fresh(module_db, TX_SCHEMA)


@pytest.fixture(autouse=True)
def fast_backoff():
    old = set_retry_defaults(backoff=0.001, max_backoff=0.01)
    yield
    set_retry_defaults(max_retries=old.max_retries, backoff=old.backoff,
                       max_backoff=old.max_backoff, on_retry=old.on_retry)


def rows(db, sql="SELECT id, v FROM t ORDER BY id"):
    with db.admin() as admin:
        return [tuple(r) for r in admin.execute(sql).fetchall()]


def status(conn) -> str:
    return wormhole.drivers.for_connection(conn).transaction_status()


def autocommit_of(conn) -> bool:
    return bool(conn.autocommit)


@pytest.fixture(params=[False, True], ids=["implicit", "autocommit"])
def aconn(request, connect):
    """A connection in scope, in autocommit or not."""
    c = connect(autocommit=request.param)
    with wormhole.connection(c):
        yield c


def nextval() -> int:
    return int(query("SELECT nextval('attempts') AS n")[0]["n"])


# --- context manager ------------------------------------------------------------------------

def test_brief_form_commits_on_success(tx_db, aconn):
    before = autocommit_of(aconn)
    with transaction(max_retries=5) as c:
        assert c is aconn
        query("INSERT INTO t VALUES (1, 'a')")
        query("INSERT INTO t VALUES (2, 'b')")
        assert status(aconn) == "intrans"
    assert rows(tx_db) == [(1, "a"), (2, "b")]
    assert status(aconn) == "idle" and autocommit_of(aconn) == before


def test_context_manager_rolls_back_on_error_and_leaves_connection_idle(tx_db, aconn):
    before = autocommit_of(aconn)
    with pytest.raises(ZeroDivisionError):
        with transaction():
            query("INSERT INTO t VALUES (1, 'a')")
            _ = 1 / 0
    with pytest.raises(errors.UniqueViolation):
        with transaction():
            query("INSERT INTO t VALUES (1, 'a')")
            query("INSERT INTO t VALUES (1, 'a')")
    assert rows(tx_db) == []
    assert status(aconn) == "idle" and autocommit_of(aconn) == before
    query("INSERT INTO t VALUES (3, 'c')")  # the connection is usable
    if not before:
        aconn.commit()
    assert rows(tx_db) == [(3, "c")]


def test_context_manager_does_not_retry_and_says_so(tx_db, aconn):
    with pytest.raises(errors.SerializationFailure) as info:
        with transaction(max_retries=5):
            nextval()
            query(FAIL_40001)
    assert info.value.attempts == 1
    assert "cannot re-run its block" in "".join(getattr(info.value, "__notes__", []))
    assert rows(tx_db, "SELECT last_value FROM attempts") == [(1,)]
    assert status(aconn) == "idle"


def test_isolation_readonly_deferrable_are_applied(tx_db, aconn):
    with transaction(isolation="serializable", readonly=True, deferrable=True):
        got = query("SELECT current_setting('transaction_isolation') AS i, "
                    "current_setting('transaction_read_only') AS r, "
                    "current_setting('transaction_deferrable') AS d")[0]
        assert got == {"i": "serializable", "r": "on", "d": "on"}
    with transaction(isolation="Repeatable_Read", readonly=False):
        got = query("SELECT current_setting('transaction_isolation') AS i, "
                    "current_setting('transaction_read_only') AS r")[0]
        assert got == {"i": "repeatable read", "r": "off"}
    with pytest.raises(errors.InterfaceError, match="unknown isolation level"):
        transaction(isolation="snapshot")


def test_nested_transactions_are_savepoints(tx_db, aconn):
    with transaction():
        query("INSERT INTO t VALUES (1, 'outer')")
        with pytest.raises(ValueError):
            with transaction():
                query("INSERT INTO t VALUES (2, 'inner, rolled back')")
                raise ValueError
        with transaction():
            query("INSERT INTO t VALUES (3, 'inner, kept')")
            with transaction():
                query("INSERT INTO t VALUES (4, 'innermost')")
        assert [r["id"] for r in query("SELECT id FROM t ORDER BY id")] == [1, 3, 4]
    assert rows(tx_db) == [(1, "outer"), (3, "inner, kept"), (4, "innermost")]
    assert status(aconn) == "idle"


def test_nested_settings_must_match_the_outermost(tx_db, aconn):
    with transaction(isolation="serializable"):
        with transaction(isolation="serializable"):
            pass
        with pytest.raises(errors.InterfaceError, match="outermost"):
            with transaction(isolation="read committed"):
                pass
        query("SELECT 1")  # still usable
    assert status(aconn) == "idle"


def test_transaction_inside_a_transaction_the_driver_opened(tx_db, connect):
    """Non-autocommit: a query opened the driver's implicit transaction; ours is a savepoint
    inside it, and committing the outer one stays the user's job (like psycopg's own)."""
    c = connect()
    with wormhole.connection(c):
        query("INSERT INTO t VALUES (1, 'implicit')")
        with transaction():
            query("INSERT INTO t VALUES (2, 'savepoint')")
        with pytest.raises(errors.InterfaceError, match="nested"):
            with transaction(isolation="serializable"):
                pass
        assert status(c) == "intrans"
        c.commit()
    assert rows(tx_db) == [(1, "implicit"), (2, "savepoint")]


def test_transaction_with_explicit_conn_does_not_need_a_scope(tx_db, connect):
    c = connect()
    with transaction(conn=c):
        query("INSERT INTO t VALUES (1, 'x')")  # the transaction's connection is in scope
    assert rows(tx_db) == [(1, "x")]
    with pytest.raises(errors.InterfaceError, match="no database connection"):
        query("SELECT 1")


def test_ending_the_transaction_inside_the_block_is_refused(tx_db, aconn):
    with pytest.raises(errors.InterfaceError, match="ended inside"):
        with transaction():
            query("INSERT INTO t VALUES (1, 'x')")
            wormhole.drivers.for_connection(aconn).run_control("COMMIT")
    assert status(aconn) == "idle"


def test_swallowed_error_inside_the_block_is_not_committed(tx_db, aconn):
    with pytest.raises(errors.DatabaseError) as info:
        with transaction():
            query("INSERT INTO t VALUES (1, 'x')")
            try:
                query("SELECT 1/0")
            except errors.DataError:
                pass
    assert info.value.sqlstate == "25P02"
    assert rows(tx_db) == [] and status(aconn) == "idle"


# --- runner: retries --------------------------------------------------------------------------

def test_decorator_retries_the_whole_unit(tx_db, aconn, caplog):
    events: list[RetryEvent] = []

    @transaction(isolation="serializable", max_retries=5, on_retry=events.append)
    def unit(key):
        n = nextval()
        query("INSERT INTO t VALUES ($1, $2)", key, f"attempt {n}")
        if n < 3:
            query(FAIL_40001)
        return n

    with caplog.at_level(logging.INFO, logger="wormhole"):
        assert unit(7) == 3
    assert rows(tx_db) == [(7, "attempt 3")]  # the failed attempts left nothing behind
    assert [e.attempt for e in events] == [1, 2]
    assert all(isinstance(e.error, errors.SerializationFailure) for e in events)
    assert [e.reconnect for e in events] == [False, False]
    retries = [r for r in caplog.records if r.name == "wormhole" and "retry" in r.getMessage()]
    assert len(retries) == 2 and "unit()" in retries[0].getMessage()
    assert status(aconn) == "idle"


def test_run_form_and_bare_decorator(tx_db, aconn):
    def unit(a, b=0):
        query("INSERT INTO t VALUES ($1, $2)", a, str(b))
        return a + b

    assert transaction(max_retries=1).run(unit, 1, b=2) == 3

    @transaction
    def bare():
        query("INSERT INTO t VALUES (10, 'bare')")

    bare()
    assert rows(tx_db) == [(1, "2"), (10, "bare")]


def test_last_attempt_raises_the_original_error_with_the_attempt_count(tx_db, aconn):
    def always():
        nextval()
        query(FAIL_40001)

    with pytest.raises(errors.SerializationFailure) as info:
        transaction(max_retries=3).run(always)
    assert info.value.attempts == 4
    assert info.value.sqlstate == "40001"
    assert rows(tx_db, "SELECT last_value FROM attempts") == [(4,)]
    assert status(aconn) == "idle"


@pytest.mark.parametrize("sql, cls", [
    ("INSERT INTO t VALUES (1, 'dup'), (1, 'dup')", errors.UniqueViolation),
    ("SELECT 1/0", errors.DataError),
    ("SELECT * FROM nowhere", errors.UndefinedTable),
])
def test_other_errors_are_not_retried(tx_db, aconn, sql, cls):
    def unit():
        nextval()
        query(sql)

    with pytest.raises(cls) as info:
        transaction(max_retries=5).run(unit)
    assert info.value.attempts == 1
    assert rows(tx_db, "SELECT last_value FROM attempts") == [(1,)]


def test_readonly_refusal_is_not_retried_when_readonly_was_asked(tx_db, aconn):
    def unit():
        nextval()
        query("INSERT INTO t VALUES (1, 'x')")

    with pytest.raises(errors.ReadOnlySqlTransaction) as info:
        transaction(readonly=True, max_retries=5).run(unit)
    assert info.value.attempts == 1


def test_readonly_server_is_retried_on_a_new_connection(tx_db, connect):
    """25006 without readonly=True: the connection went to a read-only server (a standby). With
    a connect factory the retry runs on a new connection; here the first connection's session
    is read-only (default_transaction_read_only), as a standby's would be."""
    made = []

    def factory():
        c = connect()
        if not made:
            cur = c.cursor()
            cur.execute("SET default_transaction_read_only = on")
            cur.close()
            c.commit()
        made.append(c)
        return c

    events: list[RetryEvent] = []

    @transaction(connect=factory, max_retries=3, on_retry=events.append)
    def unit():
        query("INSERT INTO t VALUES (1, 'written')")

    unit()
    assert [e.reconnect for e in events] == [True]
    assert isinstance(events[0].error, errors.ReadOnlySqlTransaction)
    assert len(made) == 2 and all(c.closed for c in made)  # the runner's connections: closed
    assert rows(tx_db) == [(1, "written")]
    # without a factory it is not retried (the same connection would be refused again)
    c = connect()
    cur = c.cursor()
    cur.execute("SET default_transaction_read_only = on")
    cur.close()
    c.commit()

    def plain():
        query("INSERT INTO t VALUES (2, 'refused')")

    with pytest.raises(errors.ReadOnlySqlTransaction) as info:
        transaction(conn=c, max_retries=3).run(plain)
    assert info.value.attempts == 1
    assert "connect=" in "".join(getattr(info.value, "__notes__", []))


def test_failing_connect_is_retried_by_the_factory(tx_db, connect, driver_name):
    calls = []

    def factory():
        calls.append(1)
        if len(calls) < 3:  # nothing listens on port 1: refused, like a server restarting
            return _connect(driver_name, "host=127.0.0.1 port=1 dbname=x user=app")
        return connect()

    events: list[RetryEvent] = []

    @transaction(connect=factory, max_retries=5, on_retry=events.append)
    def unit():
        query("INSERT INTO t VALUES (1, 'x')")

    unit()
    assert len(calls) == 3 and [e.reconnect for e in events] == [True, True]
    assert all(isinstance(e.error, errors.ConnectionLost) for e in events)
    assert rows(tx_db) == [(1, "x")]


def test_nested_runner_leaves_the_retry_to_the_outer_unit(tx_db, aconn):
    inner_runs = []

    @transaction(max_retries=5)
    def inner():
        inner_runs.append(1)
        n = nextval()
        if n < 2:
            query(FAIL_40001)
        query("INSERT INTO t VALUES ($1, 'inner')", n)

    @transaction(max_retries=5)
    def outer():
        query("INSERT INTO t VALUES (100, 'outer') ON CONFLICT DO NOTHING")
        inner()

    outer()
    # the inner failure went to the outer unit, which re-ran everything once
    assert len(inner_runs) == 2
    assert rows(tx_db) == [(2, "inner"), (100, "outer")]


def test_generator_functions_are_refused(tx_db, aconn):
    def gen():
        yield 1

    with pytest.raises(errors.InterfaceError, match="generator"):
        transaction()(gen)


# --- remote calls -----------------------------------------------------------------------------

@remote(echo=False)
def flaky_insert(key, fail_below):
    n = query("SELECT nextval('attempts') AS n")[0]["n"]
    query("INSERT INTO t VALUES ($1, $2)", key, "call " + str(n))
    if n < fail_below:
        query("SELECT raise_sqlstate('40001')")
    return n


@remote(echo=False)
def sleepy_insert(key, seconds):
    query("INSERT INTO t VALUES ($1, 'sleepy')", key)
    query("SELECT pg_sleep($1)", seconds)
    return key


def test_standalone_remote_call_is_retried(tx_db, aconn):
    events: list[RetryEvent] = []
    set_retry_defaults(on_retry=events.append)
    assert flaky_insert(1, 3) == 3
    assert rows(tx_db) == [(1, "call 3")]
    assert [e.attempt for e in events] == [1, 2]
    assert "standalone" in events[0].unit
    assert status(aconn) == "idle"


def test_standalone_remote_call_gives_up_with_the_attempt_count(tx_db, aconn):
    set_retry_defaults(max_retries=2)
    with pytest.raises(errors.SerializationFailure) as info:
        flaky_insert(1, 100)
    assert info.value.attempts == 3
    assert rows(tx_db) == []


def test_remote_call_inside_a_transaction_joins_it_and_the_unit_retries(tx_db, aconn):
    calls = []

    @transaction(max_retries=5)
    def unit():
        query("INSERT INTO t VALUES (100, 'client side')")
        calls.append(flaky_insert(1, 2))  # fails once: not retried alone, the unit is

    unit()
    assert calls == [2]
    assert rows(tx_db) == [(1, "call 2"), (100, "client side")]

    # no hidden commit: the transaction's rollback undoes the remote call's writes
    with pytest.raises(RuntimeError):
        with transaction():
            flaky_insert(2, 0)
            raise RuntimeError
    assert rows(tx_db) == [(1, "call 2"), (100, "client side")]


# --- lost connections -------------------------------------------------------------------------

def backend_pid(conn) -> int:
    if hasattr(conn, "info") and hasattr(conn.info, "backend_pid"):
        return int(conn.info.backend_pid)
    return int(conn.get_backend_pid())


def terminate_when(db, pid: int, predicate_sql: str, timeout: float = 10.0) -> threading.Thread:
    """In a thread: wait until the backend matches ``predicate_sql`` then terminate it."""

    def run():
        deadline = time.monotonic() + timeout
        with db.admin() as admin:
            while time.monotonic() < deadline:
                hit = admin.execute(
                    f"SELECT 1 FROM pg_stat_activity WHERE pid = %s AND ({predicate_sql})",
                    [pid],
                ).fetchone()
                if hit:
                    admin.execute("SELECT pg_terminate_backend(%s)", [pid])
                    return
                time.sleep(0.02)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


SLEEPING = "wait_event = 'PgSleep'"


def test_terminated_backend_during_a_standalone_call_is_outcome_unknown(tx_db, aconn):
    flaky_insert(0, 0)  # installed; warm
    killer = terminate_when(tx_db, backend_pid(aconn), SLEEPING)
    with pytest.raises(errors.OutcomeUnknown, match="outcome unknown") as info:
        sleepy_insert(1, 30)
    killer.join()
    assert info.value.attempts == 1
    assert errors.is_connection_lost(info.value.__cause__)
    assert rows(tx_db) == [(0, "call 1")]  # consistent: the killed call left nothing
    assert status(aconn) == "unknown"  # closed, not idle in transaction
    with pytest.raises(errors.ConnectionLost, match="not sent"):
        flaky_insert(2, 0)  # known not to have been sent: a plain ConnectionLost


def test_terminated_backend_inside_a_runner_without_factory(tx_db, aconn):
    @transaction(max_retries=5)
    def unit():
        query("INSERT INTO t VALUES (5, 'client')")
        sleepy_insert(1, 30)

    killer = terminate_when(tx_db, backend_pid(aconn), SLEEPING)
    with pytest.raises(errors.OperationalError) as info:
        unit()
    killer.join()
    assert errors.is_connection_lost(info.value)
    assert info.value.attempts == 1
    assert "connect=" in "".join(getattr(info.value, "__notes__", []))
    assert rows(tx_db) == []  # before COMMIT: rolled back by the server


def test_terminated_backend_inside_a_runner_with_factory_is_retried(tx_db, connect):
    made = []

    def factory():
        made.append(connect())
        if len(made) == 1:
            terminate_when(tx_db, backend_pid(made[0]), SLEEPING)
        return made[-1]

    @transaction(connect=factory, max_retries=5)
    def unit():
        query("INSERT INTO t VALUES (5, 'client')")
        sleepy_insert(1, 30 if len(made) == 1 else 0)  # the first attempt gets killed
        return wormhole.get_connection()

    used = unit()
    assert used is made[1] and len(made) == 2
    assert all(c.closed for c in made)
    assert rows(tx_db) == [(1, "sleepy"), (5, "client")]  # exactly once


def test_connection_lost_during_commit_is_outcome_unknown(tx_db, aconn):
    events = []

    @transaction(max_retries=5, on_retry=events.append)
    def unit():
        query("INSERT INTO t VALUES (1, 'slow')")  # its deferred trigger sleeps at COMMIT

    killer = terminate_when(tx_db, backend_pid(aconn), SLEEPING + " AND query = 'COMMIT'")
    with pytest.raises(errors.OutcomeUnknown, match="after COMMIT was sent") as info:
        unit()
    killer.join()
    assert events == [] and info.value.attempts == 1  # never retried
    assert errors.is_connection_lost(info.value.__cause__)
    assert rows(tx_db) == []  # (it happened not to commit; the client could not know)


def test_closed_connection_is_reported_before_anything_is_sent(tx_db, connect):
    c = connect()
    c.close()
    with pytest.raises(errors.ConnectionLost):
        with transaction(conn=c):
            pass


# --- server restart ---------------------------------------------------------------------------

def test_server_restart_during_remote_calls(tx_db, server, connect, driver_name):
    """A fast restart while (a) a standalone remote call and (b) a runner with a connection
    factory are both inside the server: (a) -> OutcomeUnknown, (b) -> retried on a new
    connection once the server is back, exactly once. The cluster is running afterwards."""
    if server.cluster is None:
        pytest.skip("needs our own throwaway cluster")
    standalone = connect()
    with wormhole.connection(standalone):
        flaky_insert(0, 0)  # warm: installed
    made: list[Any] = []

    def factory():
        made.append(connect())
        return made[-1]

    outcome: dict[str, Any] = {}

    def call_standalone():
        with wormhole.connection(standalone):
            try:
                sleepy_insert(1, 30)
            except BaseException as exc:  # noqa: BLE001
                outcome["a"] = exc

    @transaction(connect=factory, max_retries=40, backoff=0.05, max_backoff=0.25)
    def unit():
        query("INSERT INTO t VALUES (20, 'runner')")
        return sleepy_insert(2, 30 if len(made) == 1 else 0)

    def call_runner():
        try:
            outcome["b"] = unit()
        except BaseException as exc:  # noqa: BLE001
            outcome["b"] = exc

    threads = [threading.Thread(target=call_standalone), threading.Thread(target=call_runner)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 15
    with tx_db.admin() as admin:
        while time.monotonic() < deadline:
            n = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND "
                              + SLEEPING, [tx_db.name]).fetchone()[0]
            if n == 2:
                break
            time.sleep(0.02)
        assert n == 2
    server.cluster.restart()
    for t in threads:
        t.join(60)
    assert isinstance(outcome["a"], errors.OutcomeUnknown), outcome
    assert outcome["b"] == 2, outcome
    assert len(made) >= 2 and all(c.closed for c in made)
    assert rows(tx_db) == [(0, "call 1"), (2, "sleepy"), (20, "runner")]
