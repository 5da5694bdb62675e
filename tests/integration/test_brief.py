"""The product brief's examples, as a regular role, with psycopg 3 and psycopg2.

These are the README's examples: if this file fails, the README is wrong.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.helpers import RoundTrips
from wormhole import errors
from wormhole.demo import DEMO_SQL, get_user_summary, process_order, update_user_stats


@pytest.fixture
def brief(db):
    db.setup_sql(DEMO_SQL)
    with db.admin() as admin:
        admin.execute("ALTER ROLE app IN DATABASE " + db.name + " SET log_statement = 'all'")
    return db


def test_get_user_summary(brief, conn):
    assert get_user_summary(42) == {"username": "user42", "message_count": 20}


def test_update_user_stats(brief, conn):
    rows = update_user_stats(42)
    assert rows == [{"username": "user42", "message_count": 20}]
    conn.commit()
    with brief.admin() as admin:
        assert admin.execute("SELECT message_count FROM users WHERE id = 42").fetchone()[0] == 20


def test_process_order(brief, conn):
    assert process_order(7, 8) == {"status": "success", "order_id": 7}
    conn.commit()
    with brief.admin() as admin:
        qty, = admin.execute("SELECT quantity FROM inventory WHERE product_id = 8").fetchone()
        assert qty == 100 - 2  # order 7: product 8, quantity 1 + 7 % 3 = 2
        amount, = admin.execute("SELECT amount FROM transactions WHERE order_id = 7").fetchone()
        assert amount == Decimal("19.98")


def test_process_order_insufficient_inventory_is_atomic(brief, conn):
    with brief.admin() as admin:
        admin.execute("UPDATE inventory SET quantity = 0 WHERE product_id = 8")
    with pytest.raises(Exception, match="Insufficient inventory") as info:
        process_order(7, 8)
    assert isinstance(info.value, errors.RemoteError)
    assert info.value.remote_type == "Exception"
    with brief.admin() as admin:
        assert admin.execute("SELECT count(*) FROM transactions").fetchone()[0] == 0


def test_warm_call_is_exactly_one_statement(brief, conn, server):
    get_user_summary(1)  # cold: installs
    process_order(1, 2)
    for uid in (2, 3):
        with RoundTrips(conn, server) as rt:
            get_user_summary(uid)
        assert rt.count == 1
    with RoundTrips(conn, server) as rt:
        process_order(7, 8)
    assert rt.count == 1


def test_first_call_installs_then_executes(brief, conn, server, driver_name):
    with RoundTrips(conn, server) as rt:
        get_user_summary(5)
    # wormhole_install + wormhole_execute (psycopg 3 prepares the execute statement in the
    # same round trip as its first execution: Parse + Bind + Execute + Sync)
    assert rt.count == 2


def test_examples_inside_a_transaction_block(brief, conn):
    """The brief's `with transaction():` form (commit on success)."""
    from wormhole import transaction

    with transaction():
        result = get_user_summary(123)
    assert result == {"username": "user123", "message_count": 20}
