"""Type parity, measured: the same SELECT through psycopg 3 and through PL/Python + pgtypes.

Uses the ``dsn`` fixture: a superuser libpq DSN of a fresh database with plpython3u available.
The runtime modules are shipped into the database as source text (as schema.py does), so the
server runs exactly this checkout's ``errors``, ``rows``, ``codec`` and ``pgtypes``.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from wormhole.runtime import codec, pgtypes

RUNTIME = Path(pgtypes.__file__).resolve().parent
MODULES = ("errors", "rows", "jsonlite", "codec", "pgtypes")

SETUP = r"""
CREATE OR REPLACE FUNCTION wh_test_load(names text[], sources text[]) RETURNS void
LANGUAGE plpython3u AS $f$
import sys, types
pkg = types.ModuleType("whrt")
pkg.__path__ = []
sys.modules["whrt"] = pkg
for name, src in zip(names, sources):
    mod = types.ModuleType("whrt." + name)
    mod.__package__ = "whrt"
    sys.modules["whrt." + name] = mod
    exec(compile(src, "whrt/" + name + ".py", "exec"), mod.__dict__)
    setattr(pkg, name, mod)
GD["whrt"] = pkg
$f$;

CREATE OR REPLACE FUNCTION wh_test_select(q text) RETURNS text
LANGUAGE plpython3u AS $f$
rt = GD["whrt"]
r = plpy.execute(q)
tzname = plpy.execute("SELECT current_setting('TimeZone') AS tz")[0]["tz"]
tz = rt.pgtypes.session_tzinfo(tzname)
unknown = rt.pgtypes.unknown_oids(r.coltypes())
domains = {}
if unknown:
    plan = plpy.prepare("SELECT oid::int AS o, typbasetype::int AS b FROM pg_type "
                        "WHERE oid = ANY($1) AND typtype = 'd'", ["oid[]"])
    domains = {x["o"]: x["b"] for x in plpy.execute(plan, [unknown])}
convs = rt.pgtypes.converters_for(r.coltypes(), tz=tz, domains=domains)
rows = rt.pgtypes.apply_converters(r.colnames(), convs, r)
return rt.codec.encode(rows)
$f$;

CREATE OR REPLACE FUNCTION wh_test_raw(q text) RETURNS text
LANGUAGE plpython3u AS $f$
return repr([dict(row) for row in plpy.execute(q)])
$f$;

CREATE OR REPLACE FUNCTION wh_test_params(q text, params text) RETURNS text
LANGUAGE plpython3u AS $f$
rt = GD["whrt"]
values = rt.codec.decode(params)
plpy.execute("PREPARE wh_infer AS " + q)
try:
    typnames = plpy.execute(
        "SELECT parameter_types::text[] AS t FROM pg_prepared_statements "
        "WHERE name = 'wh_infer'")[0]["t"]
finally:
    plpy.execute("DEALLOCATE wh_infer")
plan = plpy.prepare(q, typnames)
args = [rt.pgtypes.to_plpy_param(v, t) for v, t in zip(values, typnames)]
r = plpy.execute(plan, args)
rows = rt.pgtypes.convert_rows(r.colnames(), r.coltypes(), r)
return rt.codec.encode(rows)
$f$;
"""


@pytest.fixture
def conn(dsn: str) -> Any:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(SETUP)
        c.execute(
            "SELECT wh_test_load(%s, %s)",
            [list(MODULES), [(RUNTIME / f"{m}.py").read_text() for m in MODULES]],
        )
        yield c


def _client_rows(conn: Any, sql: str, params: list[object] | None = None) -> list[dict[str, Any]]:
    cur = psycopg.RawCursor(conn)
    cur.execute(sql, params)
    names = [d.name for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def _server_rows(conn: Any, sql: str) -> Any:
    text = conn.execute("SELECT wh_test_select(%s)", [sql]).fetchone()[0]
    return codec.decode(text)


def same(a: object, b: object) -> bool:
    """Equal values of the same type; nan equals nan; aware datetimes keep their utcoffset."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))  # type: ignore[arg-type]
    if isinstance(a, Decimal):
        return a.is_nan() and b.is_nan() or str(a) == str(b)  # type: ignore[union-attr]
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))  # type: ignore[arg-type]
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)  # type: ignore[attr-defined,index]
    if isinstance(a, (dt.datetime, dt.time)):
        # Same wall time and same offset (= same instant). Not ``==``: PEP 495 makes an
        # inter-zone comparison False when one side is in a DST fold (ZoneInfo vs fixed offset).
        return (a.replace(tzinfo=None) == b.replace(tzinfo=None)  # type: ignore[union-attr]
                and a.utcoffset() == b.utcoffset())  # type: ignore[union-attr]
    return a == b


# (SQL expression, array OID of its array, or None) - each also run as ARRAY[...] and NULL
EXPRESSIONS = [
    "1::int2", "(-32768)::int2", "2147483647::int4", "(-9223372036854775807 - 1)::int8",
    "1.5::numeric", "'NaN'::numeric", "'-0.000100'::numeric", "'Infinity'::numeric",
    "123456789012345678901234567890.123456789::numeric",
    "1.1::float4", "'NaN'::float4", "'-Infinity'::float4", "3.4028235e38::float4",
    "1e-45::float4", "16777217::float4", "123456789::float4", "0.1::float4",
    "-7223008256::float4", "(-0.0)::float4",
    "1.1::float8", "'NaN'::float8", "'Infinity'::float8", "1e-320::float8", "(-0.0)::float8",
    "true", "false",
    "'x y'::text", "''::text", "'a\"b\\c,{}'::text", "'NULL'::text", "'ü€😀'::text",
    "'v'::varchar(3)", "'ab'::char(4)", "'nm'::name",
    "'\\x00ff10'::bytea", "''::bytea",
    "'2026-11-24'::date", "'0001-01-01'::date", "'9999-12-31'::date",
    "'12:34:56.789'::time", "'00:00:00'::time", "'23:59:59.999999'::time",
    "'12:34:56+05:30:12'::timetz", "'01:02:03.5-08'::timetz",
    "'2026-01-02 03:04:05.6'::timestamp", "'0001-01-01 00:00:00'::timestamp",
    "'2026-11-24 22:32:54.886866+00'::timestamptz", "'2026-07-01 12:00:00+02'::timestamptz",
    "'1 year -2 mons'::interval", "'-1 days +02:03:00'::interval", "'-00:00:01'::interval",
    "'-1 year -2 mons +3 days -04:05:06.789'::interval", "'1 mon 00:00:00.000001'::interval",
    "'100:00:00'::interval", "'0'::interval",
    "'b02ffa83-1e8d-4357-bcbd-aac34273763e'::uuid",
    "'{\"a\": 1.10, \"b\": [null, true], \"c\": \"x\"}'::json", "'[1, 2.5e3]'::jsonb",
    "'\"s\"'::jsonb", "'null'::jsonb",
]


@pytest.mark.parametrize("expr", EXPRESSIONS)
def test_select_parity(conn: Any, expr: str) -> None:
    sql = f"SELECT {expr} AS v, ARRAY[{expr}, NULL] AS a, NULL::{_type_of(conn, expr)} AS n"
    client = _client_rows(conn, sql)
    server = _server_rows(conn, sql)
    assert same(client, server), (client, server)


def _type_of(conn: Any, expr: str) -> str:
    return conn.execute(f"SELECT pg_typeof({expr})::text").fetchone()[0]


@pytest.mark.parametrize("tz", ["UTC", "Europe/Paris", "America/St_Johns", "Asia/Kathmandu"])
def test_timestamptz_in_session_timezones(conn: Any, tz: str) -> None:
    conn.execute(f"SET TimeZone = '{tz}'")
    sql = ("SELECT '2026-03-29 01:30:00+00'::timestamptz AS a, "
           "'1900-01-01 00:00:00+00'::timestamptz AS b, '2026-10-25 00:30:00+00'::timestamptz AS c, "
           "ARRAY['2026-10-25 01:30:00+00'::timestamptz] AS d")
    client = _client_rows(conn, sql)
    server = _server_rows(conn, sql)
    assert same(client, server), (client, server)


def test_nested_and_bounded_arrays(conn: Any) -> None:
    sql = ("SELECT '{{1,2},{3,NULL}}'::int8[] AS a, '[2:3]={1,2}'::int[] AS b, '{}'::int[] AS c,"
           " '{{\"a b\",NULL},{\"c\\\"d\",\"NULL\"}}'::text[] AS d,"
           " '{{2020-01-01},{2021-02-03}}'::date[] AS e,"
           " '{{\"1 day\"},{\"-2 mons\"}}'::interval[] AS f")
    assert same(_client_rows(conn, sql), _server_rows(conn, sql))


def test_duplicate_column_names(conn: Any) -> None:
    sql = "SELECT '2020-01-01'::date AS x, '2021-01-01'::date AS x"
    server = _server_rows(conn, sql)
    client = _client_rows(conn, sql)  # dict(zip()) keeps the last, like PL/Python
    assert same(client, server)


@pytest.mark.parametrize(
    "expr",
    ["'infinity'::date", "'-infinity'::date", "'0044-03-15 BC'::date",
     "'infinity'::timestamp", "'-infinity'::timestamptz", "'0044-03-15 10:00 BC'::timestamptz",
     "'24:00:00'::time", "'24:00:00+00'::timetz", "'10000-01-01'::date"],
)
def test_unrepresentable_values_fail_alike(conn: Any, expr: str) -> None:
    with pytest.raises(psycopg.DataError) as client_err:
        _client_rows(conn, f"SELECT {expr} AS v")
    with pytest.raises(psycopg.Error) as server_err:
        _server_rows(conn, f"SELECT {expr} AS v")
    # the server-side DataError carries psycopg's message
    assert str(client_err.value) in str(server_err.value)


def test_unknown_types_and_domains(conn: Any) -> None:
    conn.execute("CREATE TYPE mood AS ENUM ('sad', 'ok')")
    conn.execute("CREATE DOMAIN posint AS int CHECK (VALUE > 0)")
    conn.execute("CREATE DOMAIN dday AS date")
    conn.execute("CREATE DOMAIN dday2 AS dday")
    sql = "SELECT 'ok'::mood AS m, 5::posint AS p, '2020-01-02'::dday AS d, '2020-01-03'::dday2 AS e"
    assert same(_client_rows(conn, sql), _server_rows(conn, sql))


def test_known_differences_composites_and_domain_arrays(conn: Any) -> None:
    """Documented gaps: psycopg returns unregistered composite and domain-array types as text,
    PL/Python as a dict / a list. pgtypes leaves PL/Python's value unchanged."""
    conn.execute("CREATE TYPE pair AS (a int, b text)")
    conn.execute("CREATE DOMAIN dday AS date")
    sql = "SELECT ROW(1, 'x')::pair AS c, ARRAY['2020-01-01'::dday] AS a"
    assert _client_rows(conn, sql) == [{"c": "(1,x)", "a": "{2020-01-01}"}]
    assert _server_rows(conn, sql) == [{"c": {"a": 1, "b": "x"}, "a": ["2020-01-01"]}]


# ---------------------------------------------------------------------------------------------
# parameters: client text (to_pg_text through psycopg, unknown type) vs server to_plpy_param

PARAM_CASES: list[tuple[str, list[object]]] = [
    ("SELECT $1::int AS v", [5]),
    ("SELECT $1::int8 AS v", [-(2**63)]),
    ("SELECT $1 + 1 AS v", [41]),
    ("SELECT $1::numeric AS v", [Decimal("1.50")]),
    ("SELECT $1::numeric AS v", [Decimal("NaN")]),
    ("SELECT $1::numeric AS v", [Decimal("1E+2")]),
    ("SELECT $1::float8 AS v", [0.1]),
    ("SELECT $1::float8 AS v", [math.inf]),
    ("SELECT $1::float8 AS v", [math.nan]),
    ("SELECT $1::float8 AS v", [-0.0]),
    ("SELECT $1::float4 AS v", [1.1]),
    ("SELECT $1::bool AS v", [False]),
    ("SELECT $1::bool AS v", [True]),
    ("SELECT $1::bool AS v", ["false"]),
    ("SELECT $1::bool AS v", ["  Of "]),
    ("SELECT $1::bool AS v", [0]),
    ("SELECT NOT $1 AS v", [False]),
    ("SELECT $1::bool[] AS v", [[True, False, None]]),
    ("SELECT $1::bool[] AS v", [["f", "yes"]]),
    ("SELECT $1::text AS v", ["it's \"q\" \\ %s $1"]),
    ("SELECT $1 AS v", ["untyped"]),
    ("SELECT length($1) AS v", ["héllo"]),
    ("SELECT $1::bytea AS v", [b"\x00\xff\\x"]),
    ("SELECT $1::bytea AS v", [bytearray(b"ab")]),
    ("SELECT $1::bytea AS v", ["a\\\\b\\001"]),
    ("SELECT $1::bytea AS v", ["\\x 00 ff"]),
    ("SELECT $1::bytea[] AS v", [[b"\x00", None, b"\\\""]]),
    ("SELECT $1::date AS v", [dt.date(2024, 2, 29)]),
    ("SELECT $1::date AS v", [dt.date(1, 1, 1)]),
    ("SELECT $1::time AS v", [dt.time(1, 2, 3, 4)]),
    ("SELECT $1::timetz AS v", [dt.time(1, 2, 3, tzinfo=dt.timezone(dt.timedelta(hours=-3)))]),
    ("SELECT $1::timestamp AS v", [dt.datetime(2024, 1, 2, 3, 4, 5, 6)]),
    ("SELECT $1::timestamptz AS v",
     [dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30)))]),
    ("SELECT $1::timestamptz AS v",
     [dt.datetime(2024, 1, 2, tzinfo=dt.timezone(dt.timedelta(hours=1, seconds=7)))]),
    ("SELECT $1::interval AS v", [dt.timedelta(days=-1, seconds=5, microseconds=7)]),
    ("SELECT $1::interval AS v", [dt.timedelta(microseconds=-1)]),
    ("SELECT $1::interval AS v", [dt.timedelta(days=400, hours=30)]),
    ("SELECT $1::interval AS v", [dt.timedelta(days=-999999999)]),
    ("SELECT now() - $1::interval < now() AS v", [dt.timedelta(seconds=1)]),
    ("SELECT $1::uuid AS v", [uuid.UUID("b02ffa83-1e8d-4357-bcbd-aac34273763e")]),
    ("SELECT $1::jsonb AS v", [{"a": [1, 2.5, None, "x"], "b": {"c": True}}]),
    ("SELECT $1::json AS v", [{"k": "ü"}]),
    ("SELECT $1::jsonb -> 'a' AS v", [{"a": 1}]),
    ("SELECT $1::int[] AS v", [[1, None, 3]]),
    ("SELECT $1::int[] AS v", [(1, 2)]),
    ("SELECT $1::int[] AS v", [[]]),
    ("SELECT $1::int[] AS v", [[[], []]]),
    ("SELECT $1::int[] AS v", [[[1, 2], [3, 4]]]),
    ("SELECT $1::int[] AS v", ["{1,2,NULL}"]),
    ("SELECT $1::int[] AS v", [" [0:1]={ 7 , 8 } "]),
    ("SELECT $1::text[] AS v", [["a b", 'q"', "back\\slash", "NULL", None, "", "{x}"]]),
    ("SELECT $1::text[] AS v", ['{"a b",NULL,null,"NULL",c\\,d}']),
    ("SELECT $1::numeric[] AS v", [[Decimal("1.5"), Decimal("NaN")]]),
    ("SELECT $1::float8[] AS v", [[1.5, math.inf, None]]),
    ("SELECT $1::date[] AS v", [[dt.date(2020, 1, 1), None]]),
    ("SELECT $1::timestamptz[] AS v", [[dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)]]),
    ("SELECT $1::interval[] AS v", [[dt.timedelta(days=-2, microseconds=3)]]),
    ("SELECT $1::uuid[] AS v", [[uuid.UUID(int=1)]]),
    ("SELECT $1::jsonb[] AS v", [[{"a": 1}, None]]),
    ("SELECT 3 = ANY($1) AS v", [[1, 2, 3]]),
    ("SELECT $1 = ANY($2::int[]) AS v", [2, [1, 2]]),
    ("SELECT array_length($1::text[], 1) AS v", [["x", "y"]]),
    ("SELECT $1::int AS a, $2::text AS b, $3::bool AS c", [None, None, None]),
    ("SELECT $1::int[] AS v", [[None]]),
]


def _client_param_rows(conn: Any, sql: str, values: list[object]) -> Any:
    texts = [pgtypes.to_pg_text(v) for v in values]
    return _client_rows(conn, sql, texts)  # str params go as unknown-typed text


def _server_param_rows(conn: Any, sql: str, values: list[object]) -> Any:
    text = conn.execute(
        "SELECT wh_test_params(%s, %s)", [sql, codec.encode(values)]
    ).fetchone()[0]
    return codec.decode(text)


@pytest.mark.parametrize(("sql", "values"), PARAM_CASES, ids=[f"{i}" for i in range(len(PARAM_CASES))])
def test_param_parity(conn: Any, sql: str, values: list[object]) -> None:
    client = _client_param_rows(conn, sql, values)
    server = _server_param_rows(conn, sql, values)
    assert same(client, server), (client, server)


@pytest.mark.parametrize(
    ("sql", "values"),
    [
        ("SELECT $1::bool AS v", ["maybe"]),
        ("SELECT $1::bool AS v", [2]),
        ("SELECT $1::int[] AS v", ["{1,2"]),
        ("SELECT $1::int[] AS v", [5]),
        ("SELECT $1::bytea AS v", ["\\x0"]),
        ("SELECT $1::bytea AS v", ["\\xzz"]),
        ("SELECT $1::bytea AS v", ["a\\b"]),
        ("SELECT $1::int AS v", ["x"]),
    ],
)
def test_invalid_params_fail_alike(conn: Any, sql: str, values: list[object]) -> None:
    with pytest.raises(psycopg.Error) as client_err:
        _client_param_rows(conn, sql, values)
    with pytest.raises(psycopg.Error) as server_err:
        _server_param_rows(conn, sql, values)
    assert client_err.value.sqlstate is not None
    # same primary message (the server's is wrapped by PL/Python's context)
    assert client_err.value.diag.message_primary in str(server_err.value)


def test_plpy_bool_truthiness_is_why_to_plpy_param_exists(conn: Any) -> None:
    conn.execute(
        "CREATE FUNCTION wh_b(x text) RETURNS bool LANGUAGE plpython3u AS "
        "$f$ return plpy.execute(plpy.prepare('SELECT $1 AS v', ['boolean']), [x])[0]['v'] $f$"
    )
    assert conn.execute("SELECT wh_b('false')").fetchone()[0] is True
