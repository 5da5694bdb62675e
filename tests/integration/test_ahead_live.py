"""Statements run ahead, against a real PostgreSQL, in both execution modes.

``wormhole_install`` keeps the statements a function starts with, whatever it is given
(``policy.ahead_statements``), with its checked code. In the confined worker the backend runs
each before the worker asks for it (the first while the worker wakes up, the next after
answering the one before, its arguments from the rows just sent) and answers the worker's
``query`` with its result; statements whose result the function discards are run ahead too,
past ``if`` statements whose test the backend finds false. That may change nothing a function
does: each statement runs once per call, never when the call cannot bind its arguments or stops
before it (an ``if`` whose body raises, a failed statement), and its effects go with the call's
when the call fails. A sequence shows every time a statement ran (``nextval``
is never rolled back). ``wh_worker()`` (a superuser's helper, for the test only) reads the
executor's counters.
"""

from __future__ import annotations

import traceback

import psycopg
import pytest

import wormhole
from tests.helpers import WORKER_PROBE_SQL, worker_state
from wormhole import errors, query, remote

COUNTERS = ("answered", "ahead", "ahead_unused", "completed")


@pytest.fixture
def shop(db):
    db.setup_sql(
        "CREATE SEQUENCE ticket;"
        "CREATE TABLE tickets (id bigint PRIMARY KEY, who text NOT NULL);"
        "CREATE TABLE stock (item text PRIMARY KEY, qty int NOT NULL CHECK (qty > 0));"
        "INSERT INTO stock VALUES ('pen', 10), ('ink', 1);"
        "CREATE TABLE sales (id bigint PRIMARY KEY, item text NOT NULL, n int NOT NULL);"
    )
    db.setup_sql(WORKER_PROBE_SQL, grant=False)
    return db


@remote
def issue(who):
    ticket = query("SELECT nextval('ticket') AS n")[0]["n"]
    query("INSERT INTO tickets VALUES ($1, $2)", ticket, who)
    if who == "nobody":
        raise ValueError("no ticket for nobody")
    return ticket


@remote
def lookup(ticket):
    who = query("SELECT who FROM tickets WHERE id = $1", ticket)[0]["who"]  # LOOKUP
    return who


@remote
def lookup_aloud(ticket):
    who = query("SELECT who FROM tickets WHERE id = $1", ticket)[0]["who"]
    print(who)  # a call: the function is more than its chain, the worker runs it
    return who


@remote
def reissue(ticket):
    old = query("SELECT id, who FROM tickets WHERE id = $1", ticket)[0]
    new = query("SELECT nextval('ticket') AS n, $1::text AS who", old["who"])[0]
    query("INSERT INTO tickets VALUES ($1, $2)", new["n"], new["who"])
    return new["n"]


@remote
def sell(item, n):
    stock = query("SELECT qty FROM stock WHERE item = $1", item)[0]
    if stock["qty"] < n:
        raise ValueError("not enough " + item)
    query("UPDATE stock SET qty = qty - $1 WHERE item = $2", n, item)  # SELL
    query("INSERT INTO sales VALUES (nextval('ticket'), $1, $2)", item, n)
    return stock["qty"] - n


def _last_value(db) -> int:
    with db.admin() as a:
        return a.execute("SELECT last_value FROM ticket").fetchone()[0]


def _tickets(db) -> list[tuple[int, str]]:
    with db.admin() as a:
        return a.execute("SELECT id, who FROM tickets ORDER BY id").fetchall()


@pytest.fixture(params=["worker", "in-process"])
def mode(request, shop):
    if request.param == "in-process":
        with psycopg.connect(shop.dsn(), autocommit=True) as c, wormhole.connection(c):
            for fn in (issue, lookup, lookup_aloud, reissue, sell):
                fn.install()
        with shop.admin() as a:
            for fn in (issue, lookup, lookup_aloud, reissue, sell):
                a.execute("SELECT wormhole_approve(%s)", (fn.hash,))
    return request.param


def test_install_keeps_the_statements_a_function_starts_with(shop):
    with psycopg.connect(shop.dsn(), autocommit=True) as c, wormhole.connection(c):
        issue.install()
        lookup.install()
        reissue.install()

        @remote
        def later(n):
            m = n + 1
            return query("SELECT $1::int AS m", m)

        later.install()
    with shop.admin() as a:
        rows = dict(a.execute("SELECT name, ahead FROM wormhole_functions").fetchall())
    # each step: SQL, arguments, what it assigns, its line if the function discards its
    # result (0: the worker waits for it), the tests of the ``if`` statements before it
    assert rows == {
        # ... and, where the chain is the whole body, what the function returns (the tests
        # of the ifs after the last statement, the value built from the chain's values)
        "issue": '[1,[["SELECT nextval(\'ticket\') AS n",[],[0,"n"],0,[]],'
                 '["INSERT INTO tickets VALUES ($1, $2)",[[-1,[]],[0,[]]],[],3,[]]],'
                 '[[["cmp",["ref",0,[]],[["==",["const","nobody"]]]]],["ref",-1,[]]]]',
        "lookup": '[1,[["SELECT who FROM tickets WHERE id = $1",[[0,[]]],[0,"who"],0,[]]],'
                  '[[],["ref",-1,[]]]]',
        "reissue": '[1,[["SELECT id, who FROM tickets WHERE id = $1",[[0,[]]],[0],0,[]],'
                   '["SELECT nextval(\'ticket\') AS n, $1::text AS who",[[-1,["who"]]],[0],0,'
                   '[]],["INSERT INTO tickets VALUES ($1, $2)",[[-2,["n"]],[-2,["who"]]],[],4,'
                   '[]]],[[],["ref",-2,["n"]]]]',
        "later": None,
    }


def test_the_first_statement_runs_once_per_call(shop, mode):
    with psycopg.connect(shop.dsn(), autocommit=True) as c, wormhole.connection(c):
        assert [issue("ada"), issue("grace"), issue("alan")] == [1, 2, 3]
        assert lookup(2) == "grace"
    assert _last_value(shop) == 3
    assert _tickets(shop) == [(1, "ada"), (2, "grace"), (3, "alan")]


def test_in_the_worker_the_statement_run_ahead_answers_its_query(shop):
    with psycopg.connect(shop.dsn(), autocommit=True) as c, wormhole.connection(c):
        issue("ada")
        before = worker_state(c, COUNTERS)
        assert lookup_aloud(1) == "ada"
        assert lookup_aloud(1) == "ada"
        after = worker_state(c, COUNTERS)
    delta = {k: after[k] - before[k] for k in COUNTERS}
    # two calls, each with one answered query: both answered from the statement run ahead
    assert delta == {"answered": 2, "ahead": 2, "ahead_unused": 0, "completed": 0}


def test_a_function_that_is_its_chain_needs_no_worker(shop):
    """issue, lookup, reissue are their chains of statements, an ``if`` and a ``return`` of
    their values: the backend runs the statements and builds the result itself (the same
    payload the worker would send). Where the function goes elsewhere (issue("nobody"): its
    test is true), the worker runs it, its requests answered by what already ran."""
    with psycopg.connect(shop.dsn(), autocommit=True) as c, wormhole.connection(c):
        issue("ada")
        before = worker_state(c, COUNTERS + ("handed_over",))
        assert issue("grace") == 2
        assert lookup(1) == "ada"
        assert reissue(2) == 3
        with pytest.raises(ValueError, match="no ticket for nobody"):
            issue("nobody")
        after = worker_state(c, COUNTERS + ("handed_over",))
    delta = {k: after[k] - before[k] for k in COUNTERS + ("handed_over",)}
    # nobody's call: its SELECT answered, its INSERT confirmed, from what the backend ran
    assert delta == {"answered": 1, "ahead": 2, "ahead_unused": 0, "completed": 3,
                     "handed_over": 1}
    assert _tickets(shop) == [(1, "ada"), (2, "grace"), (3, "grace")]
    assert _last_value(shop) == 4


def test_its_effects_go_with_a_failed_call(shop, mode):
    with psycopg.connect(shop.dsn(), autocommit=True) as c, wormhole.connection(c):
        with pytest.raises(ValueError, match="no ticket for nobody"):
            issue("nobody")
        assert issue("ada") == 2
    # the failed call's INSERT is gone with it; its nextval, like any nextval, is not
    assert _tickets(shop) == [(2, "ada")]


def test_its_error_is_the_functions_at_its_line(shop, mode):
    with psycopg.connect(shop.dsn()) as c, wormhole.connection(c):
        with pytest.raises(errors.DataError) as info:
            lookup("not a number")
        assert info.value.sqlstate == "22P02"
        frames = [f for f in traceback.extract_tb(info.value.__traceback__)
                  if f.filename == __file__ and f.name == "lookup"]
        assert frames and "# LOOKUP" in (frames[-1].line or "")
        with pytest.raises(IndexError):
            lookup(12345)
        c.rollback()


def test_a_call_that_cannot_bind_its_arguments_runs_nothing(shop):
    """Straight to wormhole_execute: too many arguments, keywords. The function never starts
    (TypeError in the worker), so its first statement must not have run either: the sequence
    did not move. Keywords that do bind run it the usual way (asked by the worker)."""
    with psycopg.connect(shop.dsn(), autocommit=True) as c:
        with wormhole.connection(c):
            assert issue("ada") == 1
        before = worker_state(c, COUNTERS)
        for args in ('[["a", "b"], {}]', '[[], {}]', '[[], {"whom": "x"}]'):
            text = c.execute("SELECT wormhole_execute(%s, %s)",
                             (issue.hash, args)).fetchone()[0]
            assert '"TypeError"' in text, text
        assert _last_value(shop) == 1
        text = c.execute("SELECT wormhole_execute(%s, %s)",
                         (issue.hash, '[[], {"who": "kw"}]')).fetchone()[0]
        assert text.startswith('{"ok":2'), text
        after = worker_state(c, COUNTERS)
    assert {k: after[k] - before[k] for k in COUNTERS} == {
        "answered": 1, "ahead": 0, "ahead_unused": 0, "completed": 0}
    assert _last_value(shop) == 2


def test_a_chain_runs_each_statement_once_and_stops_where_the_function_does(shop, mode):
    """reissue's second statement takes the first's row; a ticket that does not exist ends
    the function at [0] (IndexError), before the second statement: the sequence shows it
    never ran."""
    with psycopg.connect(shop.dsn(), autocommit=True) as c, wormhole.connection(c):
        assert issue("ada") == 1
        assert reissue(1) == 2
        assert reissue(2) == 3
        with pytest.raises(IndexError):
            reissue(99)
    assert _last_value(shop) == 3
    assert _tickets(shop) == [(1, "ada"), (2, "ada"), (3, "ada")]


def test_in_the_worker_a_chain_answers_every_query_it_holds(shop):
    with psycopg.connect(shop.dsn(), autocommit=True) as c, wormhole.connection(c):
        issue("ada")
        reissue(1)
        before = worker_state(c, COUNTERS)
        # keywords: no chain for this call, the worker asks for each statement
        text = c.execute("SELECT wormhole_execute(%s, %s)",
                         (reissue.hash, '[[], {"ticket": 1}]')).fetchone()[0]
        assert text.startswith('{"ok":3'), text
        after = worker_state(c, COUNTERS)
    assert {k: after[k] - before[k] for k in COUNTERS} == {
        "answered": 2, "ahead": 0, "ahead_unused": 0, "completed": 0}


def _stock(db) -> dict[str, int]:
    with db.admin() as a:
        return dict(a.execute("SELECT item, qty FROM stock").fetchall())


def _sales(db) -> list[tuple[int, str, int]]:
    with db.admin() as a:
        return a.execute("SELECT id, item, n FROM sales ORDER BY id").fetchall()


def test_writes_past_a_false_test_run_once(shop, mode):
    with psycopg.connect(shop.dsn(), autocommit=True) as c, wormhole.connection(c):
        assert sell("pen", 2) == 8
        assert sell("pen", 3) == 5
    assert _stock(shop) == {"pen": 5, "ink": 1}
    assert _sales(shop) == [(1, "pen", 2), (2, "pen", 3)]
    assert _last_value(shop) == 2


def test_a_true_test_runs_nothing_after_it(shop, mode):
    """``sell("pen", 100)``: the test is true, the function raises in the body; neither write
    may have run, not even for a moment (the sequence would show the INSERT)."""
    with psycopg.connect(shop.dsn(), autocommit=True) as c, wormhole.connection(c):
        with pytest.raises(ValueError, match="not enough pen"):
            sell("pen", 100)  # (the worker runs this one: the backend's test is true)
        with pytest.raises(TypeError):
            sell("pen", "many")  # a test that raises: the function raises there too
        assert sell("pen", 1) == 9
    assert _stock(shop) == {"pen": 9, "ink": 1}
    assert _sales(shop) == [(1, "pen", 1)]
    assert _last_value(shop) == 1


def test_a_write_that_fails_ends_the_call_at_its_line(shop, mode):
    """``sell("ink", 1)``: the test is false, the UPDATE breaks the CHECK: the call fails with
    its error at its line, the INSERT after it never runs, nothing is kept."""
    with psycopg.connect(shop.dsn()) as c, wormhole.connection(c):
        with pytest.raises(errors.IntegrityError) as info:
            sell("ink", 1)
        assert info.value.sqlstate == "23514"
        frames = [f for f in traceback.extract_tb(info.value.__traceback__)
                  if f.filename == __file__ and f.name == "sell"]
        assert frames and "# SELL" in (frames[-1].line or "")
        c.rollback()
    assert _stock(shop) == {"pen": 10, "ink": 1}
    assert _sales(shop) == []
    with shop.admin() as a:  # nextval never ran: the INSERT after the UPDATE never did
        assert a.execute("SELECT is_called FROM ticket").fetchone()[0] is False


def test_in_the_worker_the_writes_are_run_ahead(shop):
    with psycopg.connect(shop.dsn(), autocommit=True) as c, wormhole.connection(c):
        sell("pen", 1)
        before = worker_state(c, COUNTERS + ("deferred",))
        assert sell("pen", 1) == 8
        after = worker_state(c, COUNTERS + ("deferred",))
    # (sell returns a computed value: the worker runs it) the SELECT answered from the
    # statement run ahead, both writes run ahead and confirmed
    assert {k: after[k] - before[k] for k in COUNTERS + ("deferred",)} == {
        "answered": 1, "ahead": 3, "ahead_unused": 0, "completed": 0, "deferred": 2}
