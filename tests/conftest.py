"""Real-database fixtures (asyncpg ``cluster.py`` / psycopg ``fix_db.py`` habits).

* ``WORMHOLE_TEST_DSN`` (a superuser DSN) reuses a running server; otherwise one throwaway
  PostgreSQL cluster is started per test session (as the ``postgres`` OS user when we are root)
  and removed at the end. A failed warm-up exits the session with the reason instead of failing
  hundreds of tests.
* The schema is installed once into a template database; every test that asks for ``db`` gets
  its own database made from it.
* Application code runs as ``app``: a LOGIN role that is *not* a superuser and holds only
  ``wormhole_user``, like a real application role.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from hypothesis import settings

import wormhole
from wormhole.cli import install_schema
from wormhole.remote import forget_installed
from wormhole.cluster import Cluster, ClusterError

# Timings never decide a test here (CI shares 2 cores with a PostgreSQL cluster): no deadline.
settings.register_profile("wormhole", deadline=None)
settings.load_profile("wormhole")

APP_ROLE = "app"
TEMPLATE = "wormhole_template"


@dataclass
class Server:
    """The server under test: a superuser DSN maker and (when ours) the cluster."""

    cluster: Cluster | None
    base_dsn: str  # superuser, without dbname

    def dsn(self, dbname: str = "postgres", user: str = "postgres") -> str:
        return f"{self.base_dsn} dbname={dbname} user={user}"

    def log_text(self) -> str:
        return self.cluster.log_text() if self.cluster else ""


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    env = os.environ.get("WORMHOLE_TEST_DSN")
    cluster = None
    if env:
        srv = Server(None, env)
    else:
        try:
            cluster = Cluster(settings={"log_min_messages": "log"}).init().start()
        except ClusterError as exc:
            pytest.exit(f"cannot start a throwaway PostgreSQL cluster: {exc}", returncode=3)
        srv = Server(cluster, f"host={cluster.sockdir} port={cluster.port}")
    try:
        with psycopg.connect(srv.dsn(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
            conn.execute(f"CREATE DATABASE {TEMPLATE}")
            exists = conn.execute(
                "SELECT 1 FROM pg_roles WHERE rolname = %s", [APP_ROLE]
            ).fetchone()
            if not exists:
                conn.execute(f"CREATE ROLE {APP_ROLE} LOGIN")
        with psycopg.connect(srv.dsn(TEMPLATE), autocommit=True) as conn:
            verdict = install_schema(conn)
            conn.execute(f"GRANT wormhole_user TO {APP_ROLE}")
        srv.boundary = verdict  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001
        if cluster:
            cluster.destroy()
        pytest.exit(f"warm-up failed (schema install): {exc}", returncode=3)
    yield srv
    if cluster:
        cluster.destroy()


_counter = itertools.count()


@dataclass
class Database:
    server: Server
    name: str

    def dsn(self, user: str = APP_ROLE) -> str:
        return self.server.dsn(self.name, user)

    def admin(self) -> psycopg.Connection[Any]:
        """A superuser connection to this database (autocommit), for setting up fixtures."""
        return psycopg.connect(self.dsn("postgres"), autocommit=True)

    def setup_sql(self, sql: str, grant: bool = True) -> None:
        """Run DDL/DML as the superuser, then give ``app`` the usual privileges on the test's
        own tables and sequences: never on wormhole's (a DBA grants ``wormhole_user``, nothing
        on the tables behind it; the security tests must see exactly that)."""
        with self.admin() as conn:
            conn.execute(sql)  # type: ignore[arg-type]
            if grant:
                conn.execute(GRANT_APP_SQL)


#: what ``Database.setup_sql`` grants ``app``: its usual privileges on every table and sequence
#: of ``public`` that is not wormhole's own
GRANT_APP_SQL = f"""
DO $grant$ DECLARE r record; BEGIN
  FOR r IN SELECT c.relname, c.relkind FROM pg_catalog.pg_class c
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'S')
             AND c.relname NOT LIKE 'wormhole\\_%' AND c.relname NOT LIKE '\\_wormhole\\_%'
  LOOP
    IF r.relkind = 'S' THEN
      EXECUTE pg_catalog.format('GRANT USAGE, SELECT ON SEQUENCE public.%I TO {APP_ROLE}', r.relname);
    ELSE
      EXECUTE pg_catalog.format('GRANT SELECT, INSERT, UPDATE, DELETE ON public.%I TO {APP_ROLE}',
                                r.relname);
    END IF;
  END LOOP;
END $grant$
"""


@pytest.fixture
def db(server: Server) -> Iterator[Database]:
    name = f"t{os.getpid()}_{next(_counter)}"
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    yield Database(server, name)
    forget_installed()
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def dsn(db: Database) -> str:
    """A superuser libpq DSN of this test's own database."""
    return db.dsn("postgres")


def _connect(driver: str, dsn: str) -> Any:
    if driver == "psycopg":
        return psycopg.connect(dsn)
    psycopg2 = pytest.importorskip("psycopg2")
    return psycopg2.connect(dsn)


@pytest.fixture(params=["psycopg", "psycopg2"])
def driver_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def conn(db: Database, driver_name: str) -> Iterator[Any]:
    """A connection as ``app`` (psycopg 3 or psycopg2), set as wormhole's default."""
    c = _connect(driver_name, db.dsn())
    wormhole.set_connection(c)
    yield c
    wormhole.set_connection(None)
    c.close()


@pytest.fixture
def connect(db: Database, driver_name: str) -> Iterator[Any]:
    """Make more connections as ``app`` with the test's driver; all closed at the end."""
    made: list[Any] = []

    def make(user: str = APP_ROLE, autocommit: bool = False) -> Any:
        c = _connect(driver_name, db.dsn(user))
        if autocommit:
            c.autocommit = True
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()
