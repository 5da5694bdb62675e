"""Deferred statements and early dispatch against a real PostgreSQL, in both execution modes.

In the confined worker a ``query()`` statement whose result is discarded (and whose error could
not be caught) is sent without waiting; a warm call is sent to the worker before the host's
checks are done. Neither may change what a function does: the same function, approved (run
in-process, where nothing is deferred), must give the same result, the same error at the same
line, and leave the same rows. ``wh_worker()`` (a superuser's helper, for the test only) reads
the backend's executor counters.
"""

from __future__ import annotations

import traceback

import psycopg
import pytest

import wormhole
from tests.helpers import WORKER_PROBE_SQL, bwrap_children, worker_state
from wormhole import errors, query, remote

COUNTERS = ("starts", "dispatched", "answered", "deferred")


@pytest.fixture
def shop(db):
    db.setup_sql(
        "CREATE TABLE stock (product_id int PRIMARY KEY, quantity int NOT NULL"
        "  CHECK (quantity >= 0));"
        "CREATE TABLE orders (id int PRIMARY KEY, product_id int NOT NULL, quantity int NOT NULL);"
        "CREATE TABLE ledger (id serial PRIMARY KEY, order_id int NOT NULL);"
        "INSERT INTO stock VALUES (1, 10), (2, 1);"
        "INSERT INTO orders VALUES (100, 1, 3), (200, 2, 5);"
    )
    db.setup_sql(WORKER_PROBE_SQL, grant=False)
    return db


@remote
def place(order_id):
    order = query("SELECT product_id, quantity FROM orders WHERE id = $1", order_id)[0]
    query("UPDATE stock SET quantity = quantity - $1 WHERE product_id = $2",  # TAKE
          order["quantity"], order["product_id"])
    query("INSERT INTO ledger (order_id) VALUES ($1)", order_id)
    return int(order["quantity"])  # (a call: the worker runs it, not the backend alone)


def _line_of(marker: str) -> int:
    with open(__file__) as f:
        for n, line in enumerate(f, 1):
            if marker in line and "_line_of" not in line:
                return n
    raise AssertionError(marker)


def _ledger(db) -> list[tuple[int]]:
    with db.admin() as a:
        return a.execute("SELECT order_id FROM ledger ORDER BY id").fetchall()


def _stock(db) -> list[tuple[int, int]]:
    with db.admin() as a:
        return a.execute("SELECT product_id, quantity FROM stock ORDER BY 1").fetchall()


@pytest.fixture(params=["worker", "in-process"])
def mode(request, shop):
    if request.param == "in-process":
        with psycopg.connect(shop.dsn(), autocommit=True) as c, wormhole.connection(c):
            place.install()
        with shop.admin() as a:
            a.execute("SELECT wormhole_approve(%s)", (place.hash,))
    return request.param


def test_a_function_with_deferred_statements_does_what_it_says(shop, mode):
    with psycopg.connect(shop.dsn(), autocommit=True) as c, wormhole.connection(c):
        assert place(100) == 3
        assert place(100) == 3
    assert _stock(shop) == [(1, 4), (2, 1)]
    assert _ledger(shop) == [(100,), (100,)]


def test_a_failed_deferred_statement_fails_the_call_at_its_line(shop, mode):
    """Order 200 takes 5 of product 2, which has 1: the UPDATE breaks the CHECK. The call
    fails with that error, at the UPDATE's line, the INSERT after it never ran, and the
    client's transaction is still usable."""
    with psycopg.connect(shop.dsn()) as c, wormhole.connection(c):
        with pytest.raises(errors.CheckViolation) as info:
            place(200)
        assert info.value.sqlstate == "23514"
        frames = [f for f in traceback.extract_tb(info.value.__traceback__)
                  if f.filename == __file__ and f.name == "place"]
        assert frames and frames[-1].lineno == _line_of("# TAKE")
        assert place(100) == 3  # the same transaction goes on
        c.commit()
    assert _stock(shop) == [(1, 7), (2, 1)]
    assert _ledger(shop) == [(100,)]


def test_in_the_worker_the_writes_wait_for_no_answer(shop):
    with psycopg.connect(shop.dsn(), autocommit=True) as c, wormhole.connection(c):
        place(100)
        before = worker_state(c, COUNTERS)
        place(100)
        after = worker_state(c, COUNTERS)
    delta = {k: after[k] - before[k] for k in COUNTERS}
    # one answer (the order), two statements sent without waiting, and the call itself was
    # sent before the host's checks (warm: the worker had the source)
    assert delta == {"starts": 0, "dispatched": 1, "answered": 1, "deferred": 2}


@remote
def bulk(n):
    for i in range(n):
        query("INSERT INTO ledger (order_id) VALUES ($1)", i)
    return query("SELECT count(*) AS n FROM ledger")[0]["n"]


def test_a_loop_of_inserts_costs_one_answer(shop):
    with psycopg.connect(shop.dsn(), autocommit=True) as c, wormhole.connection(c):
        assert bulk(1000) == 1000
        assert worker_state(c, ("answered", "deferred")) == {"answered": 1, "deferred": 1000}
    assert len(_ledger(shop)) == 1000


def test_a_dispatched_call_the_checks_refuse_stops_the_worker(shop):
    """Arguments sent straight to wormhole_execute that the host refuses (malformed JSON): the
    call was already dispatched to the warm worker, so the worker is stopped (it may have
    started the call); the SQL error is the usual one, and the next call gets a new worker."""
    with psycopg.connect(shop.dsn(), autocommit=True) as c:
        with wormhole.connection(c):
            assert place(100) == 3
        (first,) = bwrap_children(c.info.backend_pid)
        with pytest.raises(psycopg.Error) as info:
            c.execute("SELECT wormhole_execute(%s, %s)", (place.hash, "[[100], {"))
        assert info.value.sqlstate == "WH005"
        assert bwrap_children(c.info.backend_pid) == []
        with wormhole.connection(c):
            assert place(100) == 3
        (second,) = bwrap_children(c.info.backend_pid)
        assert second != first
        assert worker_state(c, ("starts",)) == {"starts": 2}
    assert _ledger(shop) == [(100,), (100,)]
