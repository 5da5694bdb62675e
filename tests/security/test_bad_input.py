"""P11: bad input straight to the SQL API gets a clear SQL error and changes nothing."""

from __future__ import annotations

import psycopg
import pytest

GOOD = "def f(x):\n    return x + 1\n"


@pytest.fixture
def app(db):
    with psycopg.connect(db.dsn(), autocommit=True) as c:
        yield c


def state(db):
    with db.admin() as a:
        return (
            a.execute("SELECT count(*) FROM wormhole_functions").fetchone()[0],
            a.execute("SELECT count(*) FROM wormhole_audit").fetchone()[0],
            a.execute("SELECT count(*) FROM wormhole_approvals").fetchone()[0],
            a.execute("SELECT md5(string_agg(module_name || allowed, ',' ORDER BY module_name))"
                      " FROM wormhole_allowed_modules").fetchone()[0],
        )


def sqlerr(app, sql, params=()):
    with pytest.raises(psycopg.Error) as info:
        app.execute(sql, params)
    return info.value


@pytest.mark.parametrize(
    "hash_, args, sqlstate, words",
    [
        (None, "[[],{}]", "WH005", "NULL"),
        ("abc", "[[],{}]", "WH005", "malformed function hash"),
        ("G" * 64, "[[],{}]", "WH005", "malformed function hash"),
        ("0" * 64, "[[],{}]", "WH004", "no function with hash"),
        ("0" * 64, None, "WH005", "NULL"),
        ("0" * 64, "not json", "WH005", "malformed"),
        ("0" * 64, "{}", "WH005", "arguments must be"),
        ("0" * 64, "[[1], []]", "WH005", "arguments must be"),
        ("0" * 64, '[[{"$bogus": 1}], {}]', "WH005", "malformed"),
        ("0" * 64, "[" * 100000 + "]" * 100000, "WH005", "malformed"),
    ],
)
def test_execute_rejects_bad_input(db, app, hash_, args, sqlstate, words):
    before = state(db)
    err = sqlerr(app, "SELECT wormhole_execute(%s, %s)", (hash_, args))
    assert err.sqlstate == sqlstate
    assert words in str(err)
    assert state(db) == before


def test_execute_wrong_types_is_a_clear_error(app):
    err = sqlerr(app, "SELECT wormhole_execute(123, 456)")
    assert err.sqlstate == "42883"  # no such function (integer, integer)


def test_huge_arguments_are_refused(db, app):
    with db.admin() as a:
        a.execute("UPDATE wormhole_limits SET value = 1000 WHERE name = 'max_args_bytes'")
    err = sqlerr(app, "SELECT wormhole_execute(%s, %s)", ("0" * 64, "[[" + '"x",' * 1000 + "1],{}]"))
    assert err.sqlstate == "WH005" and "limit" in str(err)


@pytest.mark.parametrize(
    "source, sqlstate",
    [
        (None, "WH005"),
        ("def f(:\n    pass\n", "WH002"),
        ("", "WH002"),
        ("import os\n", "WH002"),
        ("x" * 300_000, "WH002"),
        ("def f():\n    return 1\n\x07", "WH002"),
    ],
)
def test_install_rejects_bad_source(db, app, source, sqlstate):
    before = state(db)[:1] + state(db)[2:]
    err = sqlerr(app, "SELECT wormhole_install(%s)", (source,))
    assert err.sqlstate == sqlstate
    assert state(db)[:1] + state(db)[2:] == before


def test_install_and_execute_from_sql(db, app):
    h = app.execute("SELECT wormhole_install(%s)", (GOOD,)).fetchone()[0]
    assert len(h) == 64
    out = app.execute("SELECT wormhole_execute(%s, %s)", (h, "[[41],{}]")).fetchone()[0]
    assert out == '{"ok":42,"out":[]}'
    err = app.execute("SELECT wormhole_execute(%s, %s)", (h, '[["x"],{}]')).fetchone()[0]
    assert err.startswith('{"err"') and "TypeError" in err


@pytest.mark.parametrize("tag", ["$set", "$d"])
def test_keys_crafted_to_share_one_hash_are_refused_at_once(db, app, tag):
    """Arguments whose set elements or dict keys all hash alike (ints ``i * (2**61 - 1)``:
    only ``str`` hashes are randomised) would make the backend spend n² probes decoding them,
    in C, deaf to cancels; they are refused as malformed, at once, and change nothing."""
    import json
    import time

    m = (1 << 61) - 1
    keys = [i * m + 7 for i in range(1, 20_001)]
    body = [[k, 1] for k in keys] if tag == "$d" else keys
    args = json.dumps([[{tag: body}], {}])
    digest = app.execute("SELECT wormhole_install(%s)", (GOOD,)).fetchone()[0]
    before = state(db)
    begin = time.monotonic()
    err = sqlerr(app, "SELECT wormhole_execute(%s, %s)", (digest, args))
    assert time.monotonic() - begin < 1.0
    assert err.sqlstate == "WH005" and "share one hash" in str(err)
    assert state(db) == before
