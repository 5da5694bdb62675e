"""Over-blocking, measured against the real server: the legitimate functions of
tests/unit/test_legit.py install and run as the regular role ``app`` in the confined worker,
with the right result. (Attacks and legitimate uses side by side: see test_redteam.py too.)"""

from __future__ import annotations

import json
import textwrap

import psycopg
import pytest

from tests.unit.test_legit import LEGIT, ORDERS
from wormhole.runtime import codec
from wormhole.runtime.policy import CATALOGUE


@pytest.fixture(scope="module")
def legit_db(server):
    name = "legit_server"
    with psycopg.connect(server.dsn(), autocommit=True) as a:
        a.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        a.execute(f"CREATE DATABASE {name} TEMPLATE wormhole_template")
    with psycopg.connect(server.dsn(name), autocommit=True) as a:
        a.execute("CREATE TABLE orders (id int PRIMARY KEY, customer int, total numeric, "
                  "placed date, seen boolean); CREATE TABLE dupes (id int PRIMARY KEY)")
        for module in CATALOGUE:  # the DBA allows every module the runtime has vetted
            a.execute("INSERT INTO wormhole_allowed_modules (module_name, allowed) "
                      "VALUES (%s, true) ON CONFLICT (module_name) DO UPDATE SET allowed = true",
                      (module,))
        a.execute("INSERT INTO dupes VALUES (1)")
        for r in ORDERS:
            a.execute("INSERT INTO orders VALUES (%s, %s, %s, %s)",
                      (r["id"], r["customer"], r["total"], r["placed"]))
        a.execute("GRANT SELECT, INSERT, UPDATE ON orders, dupes TO app")
    with psycopg.connect(server.dsn(name, "app"), autocommit=True) as c:
        yield c
    with psycopg.connect(server.dsn(), autocommit=True) as a:
        a.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_enough_legitimate_functions():
    assert len(LEGIT) >= 25


@pytest.mark.parametrize(("source", "args", "kwargs", "expected"),
                         [case[1:] for case in LEGIT], ids=[case[0] for case in LEGIT])
def test_legitimate_function_runs_on_the_server(legit_db, source, args, kwargs, expected):
    try:
        expected_text = codec.encode(expected)
        codec.encode([args, kwargs])
    except codec.CodecError:
        pytest.skip("arguments or result are not data the codec sends (a Fraction, a function)")
    source = textwrap.dedent(source).lstrip("\n")
    h = legit_db.execute("SELECT wormhole_install(%s)", (source,)).fetchone()[0]
    payload = legit_db.execute(
        "SELECT wormhole_execute(%s, %s)",
        (h, json.dumps([[codec.encode_value(a) for a in args],
                        {k: codec.encode_value(v) for k, v in kwargs.items()}])),
    ).fetchone()[0]
    data = json.loads(payload)
    assert "ok" in data, data.get("err")
    assert codec.decode_value(data["ok"]) == codec.decode(expected_text)
