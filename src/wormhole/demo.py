"""The README demo: the product brief's three examples against a real PostgreSQL.

``python -m wormhole.demo`` (or ``wormhole demo``) starts a throwaway cluster, installs the
schema, creates the brief's tables, connects as a regular (non-superuser) role and runs
``get_user_summary``, ``update_user_stats`` and ``process_order``, printing each result and the
number of round trips it took. ``--dsn`` uses your server instead (as a superuser, to install).
"""

from __future__ import annotations

import sys
from typing import Any

from wormhole import query, remote, set_connection

DEMO_SQL = """
CREATE TABLE users (
  id bigint PRIMARY KEY, username text NOT NULL, message_count int NOT NULL DEFAULT 0);
CREATE TABLE messages (id bigserial PRIMARY KEY, user_id bigint NOT NULL REFERENCES users,
  body text NOT NULL, sent_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE orders (id bigint PRIMARY KEY, user_id bigint NOT NULL REFERENCES users,
  product_id bigint NOT NULL, quantity int NOT NULL, total numeric(12, 2) NOT NULL);
CREATE TABLE inventory (product_id bigint PRIMARY KEY, quantity int NOT NULL);
CREATE TABLE transactions (id bigserial PRIMARY KEY, order_id bigint NOT NULL,
  user_id bigint NOT NULL, amount numeric(12, 2) NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now());
INSERT INTO users (id, username) SELECT i, 'user' || i FROM generate_series(1, 1000) i;
INSERT INTO messages (user_id, body)
  SELECT 1 + (i % 1000), 'hello #' || i FROM generate_series(1, 20000) i;
INSERT INTO inventory SELECT i, 100 FROM generate_series(1, 100) i;
INSERT INTO orders SELECT i, 1 + (i % 1000), 1 + (i % 100), 1 + (i % 3), (1 + (i % 3)) * 9.99
  FROM generate_series(1, 1000) i;
"""


# --- the brief's examples, as written there ----------------------------------------------------

@remote
def get_user_summary(user_id):
    user = query("SELECT * FROM users WHERE id = $1", user_id)[0]
    message_count = query(
        "SELECT COUNT(*) FROM messages WHERE user_id = $1", user_id)[0]['count']

    return {
        "username": user['username'],
        "message_count": message_count
    }


@remote
def update_user_stats(user_id):
    # This code runs INSIDE PostgreSQL
    messages = query("SELECT COUNT(*) FROM messages WHERE user_id = $1", user_id)
    query("UPDATE users SET message_count = $1 WHERE id = $2", messages[0]['count'], user_id)
    return query("SELECT username, message_count FROM users WHERE id = $1", user_id)


@remote
def process_order(order_id, user_id):
    # Get order details
    order = query("SELECT * FROM orders WHERE id = $1", order_id)[0]

    # Check inventory
    inventory = query(
        "SELECT quantity FROM inventory WHERE product_id = $1",
        order['product_id']
    )[0]

    if inventory['quantity'] < order['quantity']:
        raise Exception("Insufficient inventory")

    # Update inventory
    query(
        "UPDATE inventory SET quantity = quantity - $1 WHERE product_id = $2",
        order['quantity'],
        order['product_id']
    )

    # Record transaction
    query(
        "INSERT INTO transactions (order_id, user_id, amount) VALUES ($1, $2, $3)",
        order_id,
        user_id,
        order['total']
    )

    return {"status": "success", "order_id": order_id}


#: the demo's own tables and sequences: what ``setup`` grants the application role, and only
#: these (wormhole's tables live in the same schema; a grant on ALL TABLES would hand the role
#: the whitelist, approvals and audit log, which only the wormhole_* functions may write)
DEMO_TABLES = ("users", "messages", "orders", "inventory", "transactions")
DEMO_SEQUENCES = ("messages_id_seq", "transactions_id_seq")


def setup(admin_conn: Any, app_role: str) -> None:
    """Create the demo tables (as a superuser) and let ``app_role`` use them."""
    admin_conn.execute(DEMO_SQL)
    role = '"' + app_role.replace('"', '""') + '"'
    admin_conn.execute(
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON "
        f"{', '.join('public.' + t for t in DEMO_TABLES)} TO {role};"
        f" GRANT USAGE, SELECT ON SEQUENCE "
        f"{', '.join('public.' + s for s in DEMO_SEQUENCES)} TO {role}"
    )


def run(app_dsn: str) -> None:
    import psycopg

    conn = psycopg.connect(app_dsn, autocommit=True)
    set_connection(conn)
    try:
        examples = [
            ("get_user_summary(42)", lambda: get_user_summary(42)),
            ("update_user_stats(42)", lambda: update_user_stats(42)),
            ("process_order(7, 8)", lambda: process_order(7, 8)),
        ]
        for title, call in examples:
            call()  # first call installs the function (once per database)
            with _Trace(conn) as trace:
                result = call()
            print(f"{title}\n  -> {result!r}\n  round trips: {trace.round_trips} "
                  f"(warm call; the same statements sent from the client: {_CLIENT_RTS[title]})")
    finally:
        set_connection(None)
        conn.close()


_CLIENT_RTS = {
    "get_user_summary(42)": 2,
    "update_user_stats(42)": 3,
    "process_order(7, 8)": 4,
}


class _Trace:
    """Counts round trips of a psycopg 3 connection exactly, from libpq's protocol trace."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.round_trips = 0

    def __enter__(self) -> _Trace:
        import tempfile

        self._file = tempfile.TemporaryFile()
        self.conn.pgconn.trace(self._file.fileno())
        self.conn.pgconn.set_trace_flags(0)
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.pgconn.untrace()
        self._file.seek(0)
        text = self._file.read().decode("utf-8", "replace")
        self._file.close()
        self.round_trips = count_round_trips(text)


def count_round_trips(trace: str) -> int:
    """Round trips in a libpq trace: one per Sync (extended protocol) or Query (simple)."""
    n = 0
    for line in trace.splitlines():
        fields = line.split("\t")
        if len(fields) >= 3 and fields[1] == "F" and fields[3:4] and fields[3] in ("Sync", "Query"):
            n += 1
        elif len(fields) >= 3 and fields[0] == "F" and fields[2] in ("Sync", "Query"):
            n += 1
    return n


def main(dsn: str | None = None) -> int:
    import psycopg

    from .cli import install_schema

    app_role = "wormhole_demo_app"
    if dsn:
        admin = psycopg.connect(dsn, autocommit=True)
        print(install_schema(admin))
        _ensure_role(admin, app_role)
        row = admin.execute("SELECT to_regclass('public.users')").fetchone()
        if row is None or row[0] is None:
            setup(admin, app_role)
        app_dsn = psycopg.conninfo.make_conninfo(dsn, user=app_role)
        admin.close()
        run(app_dsn)
        return 0
    from .cluster import Cluster

    print("starting a throwaway PostgreSQL cluster ...")
    with Cluster() as cluster:
        admin = psycopg.connect(cluster.dsn(), autocommit=True)
        admin.execute("CREATE DATABASE demo")
        admin.close()
        admin = psycopg.connect(cluster.dsn("demo"), autocommit=True)
        print(install_schema(admin))
        _ensure_role(admin, app_role)
        setup(admin, app_role)
        admin.close()
        print(f"connected as {app_role!r}: a regular role that holds only wormhole_user\n")
        run(cluster.dsn("demo", app_role))
    return 0


def _ensure_role(admin: Any, role: str) -> None:
    if not admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone():
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
    admin.execute(f'GRANT wormhole_user TO "{role}"')


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[2] if len(sys.argv) > 2 and sys.argv[1] == "--dsn" else None))
