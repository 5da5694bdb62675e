"""The warm in-process path inside a real backend: the role check follows SET ROLE made by the
session, and still refuses a role change made behind query()'s back."""

from __future__ import annotations

import psycopg
import pytest

import wormhole
from wormhole import errors, query, remote


@remote
def switch_role():
    return query("SELECT sneaky() AS u")[0]["u"]


@remote
def whoami():
    return query("SELECT current_user::text AS u")[0]["u"]


@pytest.fixture
def roles_db(db):
    db.setup_sql(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'other') "
        "THEN CREATE ROLE other; END IF; END $$;"
        "GRANT other TO app; GRANT wormhole_user TO other;"
        "CREATE FUNCTION sneaky() RETURNS text LANGUAGE plpgsql AS "
        "$$ BEGIN EXECUTE 'SET ROLE other'; RETURN current_user; END $$;"
        "GRANT EXECUTE ON FUNCTION sneaky() TO app;",
        grant=False,
    )
    with psycopg.connect(db.dsn(), autocommit=True) as c, wormhole.connection(c):
        switch_role.install()
        whoami.install()
    with db.admin() as a:
        for fn in (switch_role, whoami):
            a.execute("SELECT wormhole_approve(%s)", (fn.hash,))
    return db


def test_a_role_the_session_set_itself_is_the_role_queries_run_as(roles_db):
    with psycopg.connect(roles_db.dsn(), autocommit=True) as c, wormhole.connection(c):
        assert whoami() == "app"
        c.execute("SET ROLE other")
        assert whoami() == "other"


def test_in_process_role_change_fails_the_call(roles_db):
    with psycopg.connect(roles_db.dsn(), autocommit=True) as c, wormhole.connection(c):
        with pytest.raises(errors.DatabaseError) as info:
            switch_role()
        assert info.value.sqlstate == "WH009"
        assert c.execute("SELECT current_user::text").fetchone()[0] == "app"
        assert whoami() == "app"
