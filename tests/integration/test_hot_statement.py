"""The hot statement, ``SELECT public.wormhole_execute(hash, args, 'report')``, on the wire.

psycopg 3 sends it through libpq directly, as a named prepared statement: the first call on a
connection is Parse + Bind + Execute + Sync in one round trip, later calls Bind + Execute +
Sync. These tests pin the round trips and what happens when the statement is removed behind
wormhole's back (``DEALLOCATE ALL``, ``DISCARD ALL``, psycopg's own ``DEALLOCATE ALL`` after a
rollback), when the first call fails or its connection is lost, and inside the user's psycopg
pipeline. Real server, no mocks.
"""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

import wormhole
from tests.conftest import _connect
from tests.helpers import RoundTrips
from wormhole import errors, query, remote, transaction


@remote(echo=False)
def double(x):
    return query("SELECT $1::int * 2 AS v", x)[0]["v"]


@remote(echo=False)
def nap(seconds):
    query("SELECT pg_sleep($1)", seconds)
    return seconds


@pytest.fixture
def logged(db):
    """psycopg2's round trips are counted from the server log (log_statement = all)."""
    with db.admin() as admin:
        admin.execute(f"ALTER ROLE app IN DATABASE {db.name} SET log_statement = 'all'")
    return db


def installed(db, driver_name: str) -> None:
    """Install the test functions from another connection, so ours starts cold."""
    other = _connect(driver_name, db.dsn())
    try:
        with wormhole.connection(other):
            double.install()
            nap.install()
        if driver_name == "psycopg2":
            other.commit()
    finally:
        other.close()


def prepared_names(conn) -> list[str]:
    return [r[0] for r in conn.execute("SELECT name FROM pg_prepared_statements").fetchall()]


def test_first_call_on_a_new_connection_is_one_round_trip(logged, server, driver_name):
    installed(logged, driver_name)
    conn = _connect(driver_name, logged.dsn())
    if driver_name == "psycopg2":
        # RoundTrips asks psycopg2's backend pid with a statement, which would open a
        # transaction on a non-autocommit connection (psycopg 3 is counted from libpq's trace)
        conn.autocommit = True
    try:
        with wormhole.connection(conn):
            with RoundTrips(conn, server) as rt:
                assert double(21) == 42
            assert rt.count == 1
            for x in (1, 2):
                with RoundTrips(conn, server) as rt:
                    assert double(x) == 2 * x
                assert rt.count == 1
        assert wormhole.drivers.for_connection(conn).transaction_status() == "idle"
    finally:
        conn.close()


def _psycopg(db, **kwargs) -> psycopg.Connection:
    return psycopg.connect(db.dsn(), **kwargs)


@pytest.mark.parametrize("command", ["DEALLOCATE ALL", "DISCARD ALL"])
def test_statement_removed_then_a_standalone_call_prepares_it_again(db, server, command):
    installed(db, "psycopg")
    with _psycopg(db, autocommit=True) as conn, wormhole.connection(conn):
        assert double(1) == 2
        assert any(n.startswith("wormhole_") for n in prepared_names(conn))
        conn.execute(command)
        with RoundTrips(conn, server) as rt:
            assert double(2) == 4  # 26000 from Bind (nothing ran), prepared again, retried
        assert rt.count == 2
        with RoundTrips(conn, server) as rt:
            assert double(3) == 6
        assert rt.count == 1


def test_psycopg_deallocate_all_after_rollback_does_not_break_a_transaction(db, server):
    """psycopg sends DEALLOCATE ALL after conn.rollback() once it prepared statements of its
    own (prepare_threshold, default 5): a call inside the next transaction must not fail."""
    installed(db, "psycopg")
    with _psycopg(db) as conn, wormhole.connection(conn):
        assert double(1) == 2  # standalone: prepares wormhole's statement
        for _ in range(6):
            conn.execute("SELECT 1").fetchone()  # psycopg prepares this one itself
        conn.rollback()  # ... and then deallocates everything
        assert not any(n.startswith("wormhole_") for n in prepared_names(conn))
        conn.rollback()
        with RoundTrips(conn, server) as rt:
            with transaction():
                assert double(5) == 10
        assert rt.count == 3  # BEGIN, the call (one statement), COMMIT
        conn.execute("BEGIN")
        conn.execute("DEALLOCATE ALL")
        assert double(6) == 12  # inside a transaction: never depends on the named statement
        conn.rollback()


def test_statement_removed_inside_a_transaction_is_a_clear_error(db):
    """With prepare_threshold=None psycopg never deallocates on its own, so the named
    statement is used inside transactions too; removing it there aborts the transaction."""
    installed(db, "psycopg")
    with _psycopg(db, prepare_threshold=None) as conn, wormhole.connection(conn):
        assert double(1) == 2
        with pytest.raises(errors.DatabaseError, match="DEALLOCATE ALL") as info:
            with transaction():
                assert double(2) == 4
                query("DEALLOCATE ALL")
                double(3)
        assert info.value.sqlstate == "26000"
        assert "roll it back" in str(info.value)
        assert wormhole.drivers.for_connection(conn).transaction_status() == "idle"
        with transaction():
            assert double(4) == 8  # prepared again
        assert double(5) == 10


def test_first_call_failing_leaves_the_connection_usable(db, server):
    """An error from the statement itself on the first (pipelined) call: the pipeline is left
    cleanly, the error keeps its SQLSTATE, and the statement is prepared for later calls."""
    installed(db, "psycopg")
    with _psycopg(db, autocommit=True) as conn, wormhole.connection(conn):
        conn.execute("SET statement_timeout = '100ms'")
        with pytest.raises(errors.QueryCanceled) as info:
            nap(5)
        assert info.value.sqlstate == "57014"
        assert conn.pgconn.pipeline_status == 0
        assert wormhole.drivers.for_connection(conn).transaction_status() == "idle"
        conn.execute("RESET statement_timeout")
        with RoundTrips(conn, server) as rt:
            assert nap(0) == 0
        assert rt.count == 1


def test_first_call_failing_inside_a_transaction(db):
    installed(db, "psycopg")
    with _psycopg(db) as conn, wormhole.connection(conn):
        with pytest.raises(errors.QueryCanceled):
            with transaction():
                query("SET LOCAL statement_timeout = '100ms'")
                nap(5)
        assert wormhole.drivers.for_connection(conn).transaction_status() == "idle"
        assert double(2) == 4


def test_connection_lost_during_the_first_call_is_outcome_unknown(db):
    installed(db, "psycopg")
    conn = _psycopg(db, autocommit=True)
    pid = conn.info.backend_pid

    def kill() -> None:
        with db.admin() as admin:
            for _ in range(500):
                if admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s AND "
                                 "wait_event = 'PgSleep'", [pid]).fetchone():
                    admin.execute("SELECT pg_terminate_backend(%s)", [pid])
                    return
                time.sleep(0.02)

    killer = threading.Thread(target=kill, daemon=True)
    killer.start()
    with wormhole.connection(conn):
        with pytest.raises(errors.OutcomeUnknown, match="outcome unknown"):
            nap(30)
        killer.join()
        assert conn.closed and conn.broken
        with pytest.raises(errors.ConnectionLost, match="not sent"):
            double(1)
    conn.close()


def test_inside_the_users_psycopg_pipeline(db):
    installed(db, "psycopg")
    with _psycopg(db, autocommit=True) as conn, wormhole.connection(conn):
        with conn.pipeline():
            assert double(4) == 8
            assert double(5) == 10
        assert conn.pgconn.pipeline_status == 0
        assert double(6) == 12


def test_non_autocommit_connection_standalone_call_sends_no_begin(db, server):
    installed(db, "psycopg")
    with _psycopg(db) as conn, wormhole.connection(conn):
        for x in (1, 2):
            with RoundTrips(conn, server) as rt:
                assert double(x) == 2 * x
            assert rt.count == 1
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            assert conn.autocommit is False


def test_threads_sharing_a_connection_are_serialised(db):
    installed(db, "psycopg")
    with _psycopg(db, autocommit=True) as conn, wormhole.connection(conn):
        results: list[int] = []

        def work(i: int) -> None:
            with wormhole.connection(conn):
                for k in range(20):
                    results.append(double(i * 100 + k))

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == sorted(2 * (i * 100 + k) for i in range(4) for k in range(20))
