"""The benchmark's database: server settings, data, the application role and the hand-written
functions wormhole is compared with.

Two databases hold the same data: ``bench`` (nothing approved: wormhole runs every call in the
confined worker, the default for a regular role) and ``bench_approved`` (a clone of ``bench``
in which a DBA approved the benchmark's functions: wormhole runs them in-process). Everything
else (client-side drivers, PL/Python, PL/pgSQL) runs against ``bench``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

import wormhole
from wormhole.cli import install_schema

from . import functions

APP_ROLE = "bench_app"
DB = "bench"
DB_APPROVED = "bench_approved"

#: like the baseline measurement: commits do not wait for the WAL flush, nothing else is unsafe
SERVER_SETTINGS = {
    "synchronous_commit": "off",
    "fsync": "on",
    "full_page_writes": "on",
    "shared_buffers": "256MB",
    "max_connections": 400,
    "jit": "off",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "30min",
    "log_min_messages": "warning",
    "shared_preload_libraries": "",
}


@dataclass(frozen=True)
class Scale:
    users: int = 10_000
    messages: int = 200_000
    orders: int = 100_000
    products: int = 10_000
    #: nodes of the linked list the 10-query chain walks
    links: int = 10_000


FULL_SCALE = Scale()
SMOKE_SCALE = Scale(users=200, messages=2_000, orders=1_000, products=100, links=200)

#: every product starts with this many units, so no order ever runs out during a run
STOCK = 1_000_000_000
#: the benchmark's tables and sequences (``schema_sql``): what the application role may use
BENCH_TABLES = ("users", "messages", "orders", "inventory", "transactions", "links")
BENCH_SEQUENCES = ("messages_id_seq", "transactions_id_seq")


def order_user(order_id: int, scale: Scale) -> int:
    """The user an order belongs to (how the data is generated; clients pass it along)."""
    return 1 + order_id % scale.users


def next_link(node: int, scale: Scale) -> int:
    """Where the linked list goes from ``node`` (7919 is prime: a permutation of 1..links)."""
    return 1 + (node * 7919) % scale.links


def schema_sql(scale: Scale) -> str:
    """Tables of the product brief (same columns as ``wormhole.demo``), at benchmark scale."""
    return f"""
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
CREATE TABLE links (id bigint PRIMARY KEY, next_id bigint NOT NULL);

INSERT INTO users (id, username) SELECT i, 'user' || i FROM generate_series(1, {scale.users}) i;
INSERT INTO messages (user_id, body, sent_at)
  SELECT 1 + i % {scale.users}, 'hello #' || i,
         timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second'
  FROM generate_series(1, {scale.messages}) i;
CREATE INDEX messages_user_id ON messages (user_id);
INSERT INTO inventory SELECT i, {STOCK} FROM generate_series(1, {scale.products}) i;
INSERT INTO orders
  SELECT i, 1 + i % {scale.users}, 1 + (i * 7) % {scale.products}, 1 + i % 3,
         (1 + i % 3) * 9.99
  FROM generate_series(1, {scale.orders}) i;
INSERT INTO links SELECT i, 1 + (i * 7919) % {scale.links} FROM generate_series(1, {scale.links}) i;
"""


# The same logic by hand, inside the database. Plans are prepared once per backend and kept in
# SD (PL/Python's per-function dictionary): the fastest natural PL/Python, "the PL/Python
# limit". Parameter names avoid ``args`` (PL/Python binds that global to the argument list).
HANDWRITTEN_SQL = """
CREATE FUNCTION process_order_py(p_order_id bigint, p_user_id bigint)
RETURNS TABLE (out_status text, out_order_id bigint) LANGUAGE plpython3u AS $py$
plans = SD.get("plans")
if plans is None:
    plans = SD["plans"] = {
        "order": plpy.prepare("SELECT * FROM orders WHERE id = $1", ["bigint"]),
        "stock": plpy.prepare(
            "SELECT quantity FROM inventory WHERE product_id = $1", ["bigint"]),
        "take": plpy.prepare(
            "UPDATE inventory SET quantity = quantity - $1 WHERE product_id = $2",
            ["int", "bigint"]),
        "record": plpy.prepare(
            "INSERT INTO transactions (order_id, user_id, amount) VALUES ($1, $2, $3)",
            ["bigint", "bigint", "numeric"]),
    }
order = plpy.execute(plans["order"], [p_order_id])[0]
stock = plpy.execute(plans["stock"], [order["product_id"]])[0]
if stock["quantity"] < order["quantity"]:
    plpy.error("Insufficient inventory")
plpy.execute(plans["take"], [order["quantity"], order["product_id"]])
plpy.execute(plans["record"], [p_order_id, p_user_id, order["total"]])
return [("success", p_order_id)]
$py$;

CREATE FUNCTION get_user_summary_py(p_user_id bigint)
RETURNS TABLE (out_username text, out_message_count bigint) LANGUAGE plpython3u AS $py$
plans = SD.get("plans")
if plans is None:
    plans = SD["plans"] = {
        "user": plpy.prepare("SELECT * FROM users WHERE id = $1", ["bigint"]),
        "count": plpy.prepare(
            "SELECT COUNT(*) FROM messages WHERE user_id = $1", ["bigint"]),
    }
user = plpy.execute(plans["user"], [p_user_id])[0]
count = plpy.execute(plans["count"], [p_user_id])[0]["count"]
return [(user["username"], count)]
$py$;

CREATE FUNCTION follow_chain_py(p_start bigint) RETURNS bigint LANGUAGE plpython3u AS $py$
plan = SD.get("plan")
if plan is None:
    plan = SD["plan"] = plpy.prepare("SELECT next_id FROM links WHERE id = $1", ["bigint"])
node = p_start
for _ in range(10):
    node = plpy.execute(plan, [node])[0]["next_id"]
return node
$py$;

-- the cheapest PL/Python call: measures the interpreter's start-up in a new backend
CREATE FUNCTION py_empty() RETURNS int LANGUAGE plpython3u AS $py$
return 1
$py$;

CREATE FUNCTION py_version() RETURNS text LANGUAGE plpython3u AS $py$
import sys
return sys.version.split()[0]
$py$;

CREATE FUNCTION process_order_plpgsql(p_order_id bigint, p_user_id bigint)
RETURNS TABLE (out_status text, out_order_id bigint) LANGUAGE plpgsql AS $pl$
DECLARE
  o orders;
  stock int;
BEGIN
  SELECT * INTO o FROM orders WHERE id = p_order_id;
  SELECT quantity INTO stock FROM inventory WHERE product_id = o.product_id;
  IF stock < o.quantity THEN
    RAISE EXCEPTION 'Insufficient inventory';
  END IF;
  UPDATE inventory SET quantity = quantity - o.quantity WHERE product_id = o.product_id;
  INSERT INTO transactions (order_id, user_id, amount) VALUES (p_order_id, p_user_id, o.total);
  RETURN QUERY SELECT 'success'::text, p_order_id;
END
$pl$;

CREATE FUNCTION get_user_summary_plpgsql(p_user_id bigint)
RETURNS TABLE (out_username text, out_message_count bigint) LANGUAGE plpgsql AS $pl$
DECLARE
  u users;
  n bigint;
BEGIN
  SELECT * INTO u FROM users WHERE id = p_user_id;
  SELECT COUNT(*) INTO n FROM messages WHERE user_id = p_user_id;
  RETURN QUERY SELECT u.username, n;
END
$pl$;

CREATE FUNCTION follow_chain_plpgsql(p_start bigint) RETURNS bigint LANGUAGE plpgsql AS $pl$
DECLARE
  node bigint := p_start;
BEGIN
  FOR i IN 1..10 LOOP
    SELECT next_id INTO node FROM links WHERE id = node;
  END LOOP;
  RETURN node;
END
$pl$;
"""


def _connect(dsn: str, **kw: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True, **kw)


def ensure_role(admin: psycopg.Connection[Any], role: str = APP_ROLE) -> None:
    """A LOGIN role that is not a superuser and holds only ``wormhole_user``."""
    exists = admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone()
    if not exists:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))


def create(conninfo: str, scale: Scale, *, db: str = DB, db_approved: str = DB_APPROVED,
           role: str = APP_ROLE) -> str:
    """Create both databases from scratch; return the boundary self-test's verdict.

    ``conninfo`` names a superuser and any database of the server (not ``db``).
    """
    with _connect(conninfo) as admin:
        for name in (db_approved, db):
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                          .format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
        ensure_role(admin, role)

    with _connect(psycopg.conninfo.make_conninfo(conninfo, dbname=db)) as admin:
        verdict = install_schema(admin)
        admin.execute(sql.SQL("GRANT wormhole_user TO {}").format(sql.Identifier(role)))
        with admin.cursor() as cur:  # many statements, no parameters: simple protocol
            cur.execute(schema_sql(scale).encode())
            cur.execute(HANDWRITTEN_SQL.encode())
        # the benchmark's own tables only: wormhole's live in the same schema, and no role
        # that runs remote functions may write those
        admin.execute(
            sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {1} TO {0};"
                    " GRANT USAGE, SELECT ON SEQUENCE {2} TO {0}")
            .format(sql.Identifier(role),
                    sql.SQL(", ").join(sql.Identifier("public", t) for t in BENCH_TABLES),
                    sql.SQL(", ").join(sql.Identifier("public", s) for s in BENCH_SEQUENCES))
        )
        admin.execute("VACUUM ANALYZE")

    # install the functions once, as the application role (what a first call would do)
    with _connect(psycopg.conninfo.make_conninfo(conninfo, dbname=db, user=role)) as app:
        with wormhole.connection(app):
            for fn in functions.ALL:
                fn.install()

    # the clone in which a DBA approved them: wormhole runs them in-process there
    with _connect(conninfo) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}")
                      .format(sql.Identifier(db_approved), sql.Identifier(db)))
    with _connect(psycopg.conninfo.make_conninfo(conninfo, dbname=db_approved)) as admin:
        for fn in functions.ALL:
            admin.execute("SELECT public.wormhole_approve(%s, %s)",
                          [fn.hash, f"benchmark: {fn.name}"])
    return verdict


def drop(conninfo: str, *, db: str = DB, db_approved: str = DB_APPROVED) -> None:
    with _connect(conninfo) as admin:
        for name in (db_approved, db):
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                          .format(sql.Identifier(name)))
