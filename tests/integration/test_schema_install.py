"""Installing the schema: psql -f schema.sql and `wormhole install`, twice, and upgrades."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psycopg
import pytest

from wormhole import cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def blank(server):
    """A database without wormhole."""
    name = f"blank_{os.getpid()}"
    with psycopg.connect(server.dsn(), autocommit=True) as a:
        a.execute(f"DROP DATABASE IF EXISTS {name}")
        a.execute(f"CREATE DATABASE {name}")
    yield name
    with psycopg.connect(server.dsn(), autocommit=True) as a:
        a.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def psql_file(server, dbname):
    env = dict(os.environ)
    cmd = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(ROOT / "schema.sql"),
           server.dsn(dbname)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def test_psql_f_schema_sql_twice_keeps_state(server, blank):
    first = psql_file(server, blank)
    assert first.returncode == 0, first.stderr
    with psycopg.connect(server.dsn(blank), autocommit=True) as a:
        a.execute("GRANT wormhole_user TO app")
        a.execute("UPDATE wormhole_allowed_modules SET allowed = false WHERE module_name = 'json'")
        a.execute("INSERT INTO wormhole_allowed_modules (module_name, allowed, names) "
                  "VALUES ('mymod', true, ARRAY['f'])")
    with psycopg.connect(server.dsn(blank, "app"), autocommit=True) as c:
        h = c.execute("SELECT wormhole_install('def kept(x):\n    return x\n')").fetchone()[0]
    with psycopg.connect(server.dsn(blank), autocommit=True) as a:
        audit_before = a.execute("SELECT count(*) FROM wormhole_audit").fetchone()[0]
        a.execute("SELECT wormhole_approve(%s)", (h,))
    second = psql_file(server, blank)  # an upgrade / re-run
    assert second.returncode == 0, second.stderr
    with psycopg.connect(server.dsn(blank), autocommit=True) as a:
        assert a.execute("SELECT allowed FROM wormhole_allowed_modules "
                         "WHERE module_name = 'json'").fetchone()[0] is False
        assert a.execute("SELECT names FROM wormhole_allowed_modules "
                         "WHERE module_name = 'mymod'").fetchone()[0] == ["f"]
        assert a.execute("SELECT count(*) FROM wormhole_functions WHERE hash = %s",
                         (h,)).fetchone()[0] == 1
        assert a.execute("SELECT count(*) FROM wormhole_approvals").fetchone()[0] == 1
        assert a.execute("SELECT count(*) FROM wormhole_audit").fetchone()[0] > audit_before
    with psycopg.connect(server.dsn(blank, "app"), autocommit=True) as c:
        out = c.execute("SELECT wormhole_execute(%s, '[[5],{}]')", (h,)).fetchone()[0]
        assert out == '{"ok":5,"out":[]}'


def test_cli_install_and_status(server, blank, capsys):
    assert cli.main(["install", "--dsn", server.dsn(blank), "--grant", "app"]) == 0
    out = capsys.readouterr().out
    assert "installed" in out and "confined worker: ok" in out
    assert cli.main(["install", "--dsn", server.dsn(blank)]) == 0  # twice is harmless
    assert cli.main(["status", "--dsn", server.dsn(blank)]) == 0
    status = capsys.readouterr().out
    assert "schema version: 0.1.0" in status and "untrusted_execution: worker" in status


def test_cli_schema_prints_the_checked_in_file(capsys):
    assert cli.main(["schema"]) == 0
    assert capsys.readouterr().out == (ROOT / "schema.sql").read_text()


def test_regular_role_cannot_install_the_schema(server, blank):
    with psycopg.connect(server.dsn(blank, "app"), autocommit=True) as c:
        with pytest.raises(psycopg.Error):
            cli.install_schema(c)


def test_cli_approve_and_revoke_are_audited(db, capsys):
    with psycopg.connect(db.dsn(), autocommit=True) as c:
        h = c.execute("SELECT wormhole_install('def approved(x):\n    return x\n')").fetchone()[0]
    admin_dsn = db.dsn("postgres")
    assert cli.main(["approve", h, "--dsn", admin_dsn, "--note", "reviewed by DBA"]) == 0
    with db.admin() as a:
        assert a.execute("SELECT note FROM wormhole_approvals WHERE hash = %s",
                         (h,)).fetchone()[0] == "reviewed by DBA"
    assert cli.main(["revoke", h, "--dsn", admin_dsn]) == 0
    with db.admin() as a:
        assert a.execute("SELECT count(*) FROM wormhole_approvals").fetchone()[0] == 0
        ops = [r[0] for r in a.execute(
            "SELECT verdict FROM wormhole_audit WHERE detail->>'table' = 'wormhole_approvals' "
            "ORDER BY id")]
    assert ops == ["INSERT", "DELETE"]
    assert "approved" in capsys.readouterr().out


def test_cli_approve_unknown_hash_fails_clearly(db, capsys):
    assert cli.main(["approve", "0" * 64, "--dsn", db.dsn("postgres")]) == 1
    err = capsys.readouterr().err
    assert "no installed function has hash" in err and "hint:" in err


def test_an_install_from_before_the_ahead_column_upgrades(server, blank):
    """The fifth session's schema had no ``wormhole_functions.ahead`` and a
    ``_wormhole_function`` with five OUT columns (CREATE OR REPLACE cannot change those). A
    database left that way takes the new schema; the function installed before keeps running
    (without a chain: its row has none), and one installed after gets its chain."""
    assert psql_file(server, blank).returncode == 0
    with psycopg.connect(server.dsn(blank), autocommit=True) as a:
        a.execute("GRANT wormhole_user TO app")
    with psycopg.connect(server.dsn(blank, "app"), autocommit=True) as c:
        old = c.execute("SELECT wormhole_install(%s)",
                        ('def old(x):\n    return query("SELECT $1::int + 1 AS n", x)[0]["n"]\n',)
                        ).fetchone()[0]
    with psycopg.connect(server.dsn(blank), autocommit=True) as a:
        a.execute("DROP FUNCTION public._wormhole_function(text)")
        a.execute("CREATE FUNCTION public._wormhole_function(function_hash text, OUT source text,"
                  " OUT name text, OUT code bytea, OUT code_magic bytea, OUT code_key text)"
                  " LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp"
                  " AS $$ SELECT f.source, f.name, f.code, f.code_magic, f.code_key"
                  " FROM public.wormhole_functions f WHERE f.hash = function_hash $$")
        a.execute("ALTER TABLE public.wormhole_functions DROP COLUMN ahead")
    upgrade = psql_file(server, blank)
    assert upgrade.returncode == 0, upgrade.stderr
    with psycopg.connect(server.dsn(blank, "app"), autocommit=True) as c:
        new = c.execute("SELECT wormhole_install(%s)",
                        ('def new(x):\n    return query("SELECT $1::int + 2 AS n", x)[0]["n"]\n',)
                        ).fetchone()[0]
        assert c.execute("SELECT wormhole_execute(%s, '[[5],{}]')",
                         (old,)).fetchone()[0] == '{"ok":6,"out":[]}'
        assert c.execute("SELECT wormhole_execute(%s, '[[5],{}]')",
                         (new,)).fetchone()[0] == '{"ok":7,"out":[]}'
    with psycopg.connect(server.dsn(blank), autocommit=True) as a:
        rows = dict(a.execute("SELECT name, ahead IS NOT NULL FROM wormhole_functions"))
        assert rows == {"old": False, "new": True}
        outs = a.execute("SELECT array_agg(p.parameter_name::text ORDER BY p.ordinal_position) "
                         "FROM information_schema.parameters p JOIN information_schema.routines r"
                         " USING (specific_schema, specific_name)"
                         " WHERE r.routine_name = '_wormhole_function' AND p.parameter_mode = 'OUT'"
                         ).fetchone()[0]
        assert outs == ["source", "name", "code", "code_magic", "code_key", "ahead"]
        # dropped and made again: owned by wormhole_owner, not executable by PUBLIC, executable
        # by app through wormhole_user (the backend reads a function's row as the caller)
        owner, public, app = a.execute(
            "SELECT pg_catalog.pg_get_userbyid(p.proowner),"
            " pg_catalog.has_function_privilege('public', p.oid, 'EXECUTE'),"
            " pg_catalog.has_function_privilege('app', p.oid, 'EXECUTE')"
            " FROM pg_catalog.pg_proc p"
            " WHERE p.oid = 'public._wormhole_function(text)'::pg_catalog.regprocedure").fetchone()
        assert (owner, public, app) == ("wormhole_owner", False, True)
