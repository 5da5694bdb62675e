"""wormhole_install stores the checked code; a new backend runs it without the policy's parser,
and checks the source again whenever the whitelist (or Python) is not the one it was made for."""

from __future__ import annotations

import psycopg
import pytest

import wormhole
from wormhole import errors, remote

PACKAGE = "wormhole_rt_0_1_0"


@remote
def doubled(x):
    return [x, x]


@remote
def as_json(value):
    import json
    return json.dumps(value)


@pytest.fixture
def probe(db):
    """``wh_loaded(name)``: is a module loaded in this backend's Python? (a superuser's
    SECURITY DEFINER helper, for the test only)."""
    db.setup_sql(
        "CREATE FUNCTION wh_loaded(name text) RETURNS boolean LANGUAGE plpython3u "
        "SECURITY DEFINER AS $$\nimport sys\nreturn name in sys.modules\n$$;"
        "GRANT EXECUTE ON FUNCTION wh_loaded(text) TO app;",
        grant=False,
    )
    return db


def _approve(db, fn):
    with db.admin() as a:
        a.execute("SELECT wormhole_approve(%s)", (fn.hash,))


def test_install_stores_the_checked_code(db):
    with psycopg.connect(db.dsn(), autocommit=True) as c, wormhole.connection(c):
        doubled.install()
    with db.admin() as a:
        name, code, magic, key = a.execute(
            "SELECT name, code, code_magic, code_key FROM wormhole_functions WHERE hash = %s",
            (doubled.hash,)).fetchone()
    assert name == "doubled" and code and magic and key


def test_a_new_backend_runs_stored_code_without_importing_the_policy(probe):
    with psycopg.connect(probe.dsn(), autocommit=True) as c, wormhole.connection(c):
        doubled.install()
    _approve(probe, doubled)
    with psycopg.connect(probe.dsn(), autocommit=True) as c, wormhole.connection(c):
        assert doubled(3) == [3, 3]
        loaded = c.execute("SELECT wh_loaded(%s)", (f"{PACKAGE}.policy",)).fetchone()[0]
        assert loaded is False
        assert c.execute("SELECT wh_loaded(%s)", (f"{PACKAGE}.engine",)).fetchone()[0]


def test_a_changed_whitelist_checks_the_source_again(probe):
    with psycopg.connect(probe.dsn(), autocommit=True) as c, wormhole.connection(c):
        as_json.install()
    _approve(probe, as_json)
    with probe.admin() as a:
        a.execute("UPDATE wormhole_allowed_modules SET allowed = false WHERE module_name = 'json'")
    with psycopg.connect(probe.dsn(), autocommit=True) as c, wormhole.connection(c):
        with pytest.raises(errors.RejectedFunction) as info:
            as_json([1])
        assert "json" in str(info.value)
        assert c.execute("SELECT wh_loaded(%s)", (f"{PACKAGE}.policy",)).fetchone()[0]
    with probe.admin() as a:
        a.execute("UPDATE wormhole_allowed_modules SET allowed = true WHERE module_name = 'json'")
    with psycopg.connect(probe.dsn(), autocommit=True) as c, wormhole.connection(c):
        assert as_json([1]) == "[1]"
