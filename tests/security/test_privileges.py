"""P5, P6, P7: privileges, query() restrictions, content addressing."""

from __future__ import annotations

import psycopg
import pytest

import wormhole
from wormhole import errors, query, remote

TABLES = ["wormhole_allowed_modules", "wormhole_functions", "wormhole_audit",
          "wormhole_approvals", "wormhole_trusted_roles", "wormhole_limits",
          "wormhole_settings", "_wormhole_state"]


@pytest.fixture
def outsider(server, db):
    """A role that was never granted wormhole_user."""
    with db.admin() as a:
        if not a.execute("SELECT 1 FROM pg_roles WHERE rolname = 'outsider'").fetchone():
            a.execute("CREATE ROLE outsider LOGIN")
    with psycopg.connect(db.dsn("outsider"), autocommit=True) as c:
        yield c


def test_public_gets_nothing(outsider):
    for sql in ("SELECT wormhole_install('def f():\n    return 1\n')",
                "SELECT wormhole_execute(repeat('0', 64), '[[],{}]')",
                "SELECT wormhole_query('SELECT 1')"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            outsider.execute(sql)


@pytest.mark.parametrize("table", TABLES)
def test_regular_role_cannot_write_wormhole_tables(db, table):
    _cannot_touch(db, table)


@pytest.mark.parametrize("table", TABLES)
def test_the_demo_and_the_test_fixtures_grant_no_wormhole_table(db, table):
    """The demo's setup (``wormhole.demo.setup``, what the README's first command runs) and
    the tests' own ``setup_sql`` give the application role its tables, and no more: a grant
    on ALL TABLES IN SCHEMA public would have handed it the whitelist, the approvals and the
    audit log (found in the sixth session: both did, after wormhole was installed)."""
    from wormhole import demo

    with db.admin() as a:
        demo.setup(a, "app")
    db.setup_sql("CREATE TABLE mine (x int)")
    with psycopg.connect(db.dsn(), autocommit=True) as c:
        c.execute("INSERT INTO mine VALUES (1)")
        c.execute("INSERT INTO messages (user_id, body) VALUES (1, 'mine')")
    _cannot_touch(db, table)


def _cannot_touch(db, table):
    with psycopg.connect(db.dsn(), autocommit=True) as c:
        statements = [f"DELETE FROM public.{table}",
                      f"UPDATE public.{table} SET {_col(table)} = NULL"]
        if table != "_wormhole_state":  # readable on purpose: the configuration version
            statements.append(f"SELECT * FROM public.{table}")
        for sql in statements:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(sql)


def _col(table):
    return {"wormhole_allowed_modules": "notes", "wormhole_functions": "name",
            "wormhole_audit": "reason", "wormhole_approvals": "note",
            "wormhole_trusted_roles": "note", "wormhole_limits": "notes",
            "wormhole_settings": "value", "_wormhole_state": "version"}[table]


def test_regular_role_cannot_create_plpython_functions(db):
    with psycopg.connect(db.dsn(), autocommit=True) as c:
        with pytest.raises(psycopg.Error) as info:
            c.execute("CREATE FUNCTION pg_temp.evil() RETURNS int LANGUAGE plpython3u "
                      "AS 'return 1'")
        assert info.value.sqlstate in ("42501",)


def test_regular_role_cannot_approve_or_change_the_whitelist(db):
    with psycopg.connect(db.dsn(), autocommit=True) as c:
        for sql in ("SELECT wormhole_approve(repeat('0', 64))",
                    "SELECT wormhole_revoke(repeat('0', 64))",
                    "UPDATE wormhole_allowed_modules SET allowed = true"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(sql)


def test_security_definer_functions_pin_search_path(db):
    with db.admin() as a:
        rows = a.execute(
            "SELECT proname, proconfig FROM pg_proc WHERE prosecdef "
            "AND proname LIKE '%wormhole%'").fetchall()
    assert rows
    for name, config in rows:
        assert config == ["search_path=pg_catalog, pg_temp"], name


def test_query_runs_as_the_caller_with_row_level_security(db, conn):
    db.setup_sql(
        "CREATE TABLE notes (owner name NOT NULL DEFAULT current_user, body text);"
        "ALTER TABLE notes ENABLE ROW LEVEL SECURITY;"
        "CREATE POLICY own ON notes USING (owner = current_user);"
        "INSERT INTO notes VALUES ('app', 'mine'), ('someone_else', 'theirs');"
    )

    @remote
    def whoami_and_notes():
        me = query("SELECT current_user AS u, session_user AS s")[0]
        return [me["u"], me["s"], [r["body"] for r in query("SELECT body FROM notes")]]

    assert whoami_and_notes() == ["app", "app", ["mine"]]


@pytest.mark.parametrize(
    "sql",
    [
        "COMMIT",
        "ROLLBACK",
        "BEGIN",
        "SAVEPOINT x",
        "SET ROLE postgres",
        "set session authorization postgres",
        "RESET ROLE",
        "SELECT set_config('role', 'postgres', false)",
        "SELECT pg_catalog.set_config('statement_timeout', '0', false)",
        "SELECT 1; SELECT 2",
        "SET statement_timeout = 0",
        "DO $$ BEGIN END $$",
        "COPY (SELECT 1) TO '/tmp/x'",
        "LOAD 'plpython3'",
    ],
)
def test_query_refuses_dangerous_statements_server_side(db, conn, sql):
    @remote
    def run(statement):
        try:
            query(statement)
            return "ran"
        except DatabaseError as e:
            return e.sqlstate

    assert run(sql) == "WH003"


DatabaseError = wormhole.DatabaseError


def test_role_change_behind_query_checks_fails_the_call(db, conn):
    db.setup_sql(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'other') "
        "THEN CREATE ROLE other; END IF; END $$;"
        "GRANT other TO app;"
        "CREATE FUNCTION sneaky() RETURNS text LANGUAGE plpgsql AS "
        "$$ BEGIN EXECUTE 'SET ROLE other'; RETURN current_user; END $$;"
        "GRANT EXECUTE ON FUNCTION sneaky() TO app;",
        grant=False,
    )

    @remote
    def switch():
        return query("SELECT sneaky() AS u")[0]["u"]

    with pytest.raises(errors.DatabaseError) as info:
        switch()
    assert info.value.sqlstate == "WH009"
    conn.rollback()
    assert query("SELECT current_user AS u")[0]["u"] == "app"


def test_tampered_source_is_refused(db, conn):
    @remote
    def honest():
        return "honest"

    assert honest() == "honest"
    with db.admin() as a:
        a.execute("UPDATE wormhole_functions SET source = replace(source, 'honest', 'evil!')")
    c2 = psycopg.connect(db.dsn())  # a new backend: nothing cached
    try:
        with wormhole.connection(c2):
            with pytest.raises(errors.DatabaseError) as info:
                honest()
        assert info.value.sqlstate == "WH004"
    finally:
        c2.close()
