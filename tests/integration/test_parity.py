"""query() returns equal Python values client-side and server-side (the type matrix)."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import pytest

from wormhole import query, remote

SCALARS = [
    ("int2", "12::int2"),
    ("int4", "-12345::int4"),
    ("int8", "9007199254740993::int8"),
    ("numeric", "'12345.678900'::numeric"),
    ("numeric_nan", "'NaN'::numeric"),
    ("float4", "1.1::float4"),
    ("float4_small", "'1.17549e-38'::float4"),
    ("float8", "0.1::float8"),
    ("float8_inf", "'-Infinity'::float8"),
    ("bool", "true"),
    ("text", "'héllo ✓'::text"),
    ("varchar", "'v'::varchar(5)"),
    ("char", "'c'::char(3)"),
    ("bytea", "'\\x00ff10'::bytea"),
    ("date", "'2024-02-29'::date"),
    ("time", "'13:14:15.123456'::time"),
    ("timetz", "'13:14:15+05:30'::timetz"),
    ("timestamp", "'2024-02-29 13:14:15.5'::timestamp"),
    ("timestamptz", "'2024-02-29 13:14:15.123+02'::timestamptz"),
    ("interval", "'1 year 2 mons 3 days 04:05:06.789'::interval"),
    ("interval_neg", "'-1 days +02:03:00'::interval"),
    ("uuid", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid"),
    ("json", """'{"a": [1, 2.5, null], "b": "x"}'::json"""),
    ("jsonb", """'{"a": [1, 2.5, null], "b": {"c": true}}'::jsonb"""),
    ("null", "NULL::int"),
]
ARRAYS = [(f"{name}_array", f"ARRAY[{expr}, NULL]") for name, expr in SCALARS
          if name not in ("null", "json")]
ARRAYS.append(("int_2d", "ARRAY[[1, 2], [3, 4]]"))
ARRAYS.append(("text_quotes", """ARRAY['a"b', 'c\\d', 'e,f', '', NULL]::text[]"""))
MATRIX = SCALARS + ARRAYS


@remote
def fetch(sql):
    return query(sql)


def same(a, b):
    if isinstance(a, float) and isinstance(b, float) and a != a:
        return b != b
    if isinstance(a, Decimal) and isinstance(b, Decimal) and a.is_nan():
        return b.is_nan()
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (dt.datetime, dt.time)):
        return a == b and (a.utcoffset() is None) == (b.utcoffset() is None)
    return a == b


@pytest.mark.parametrize("name, expr", MATRIX, ids=[m[0] for m in MATRIX])
def test_type_parity(conn, name, expr):
    sql = f"SELECT {expr} AS v"
    client = query(sql)
    server = fetch(sql)
    assert same(client[0]["v"], server[0]["v"]), (client, server)
    assert client.rowcount == 1


PARAMS = [
    ("SELECT $1::int + 1 AS v", 41),
    ("SELECT $1 + 1 AS v", 41),
    ("SELECT $1::numeric * 2 AS v", Decimal("1.25")),
    ("SELECT $1::date + 1 AS v", dt.date(2024, 2, 28)),
    ("SELECT $1::timestamptz AS v", dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone.utc)),
    ("SELECT $1::interval * 2 AS v", dt.timedelta(days=-1, seconds=30, microseconds=5)),
    ("SELECT $1::uuid AS v", uuid.UUID(int=99)),
    ("SELECT $1::jsonb -> 'a' AS v", {"a": [1, 2]}),
    ("SELECT $1::int[] AS v", [1, None, 3]),
    ("SELECT $1::text[] AS v", ['a"b', "c\\d", None, ""]),
    ("SELECT $1::bytea AS v", b"\x00\x01"),
    ("SELECT $1::bool AS v", False),
    ("SELECT $1 AS v", "plain text"),
    ("SELECT $1::float8 AS v", 1e-300),
    ("SELECT $1::text IS NULL AS v", None),
    ("SELECT $2::int - $1::int AS v, $1 AS w", 3, 10),
]


@remote
def fetch_params(sql, *args):
    return query(sql, *args)


@pytest.mark.parametrize("case", PARAMS, ids=[p[0] for p in PARAMS])
def test_parameter_parity(conn, driver_name, case):
    sql, *args = case
    client = query(sql, *args)
    server = fetch_params(sql, *args)
    if driver_name == "psycopg2" and sql.count("$1") > 1:
        # psycopg2 interpolates on the client: each use of $1 is its own literal, so a
        # parameter reused in another type context is typed separately (README: Limitations)
        assert client[0]["w"] == "3" and server[0]["w"] == 3
        return
    assert same(client[0], server[0]), (client, server)


def test_parameter_count_mismatch_fails_the_same_way(conn):
    from wormhole import errors

    with pytest.raises(errors.DatabaseError) as client:
        query("SELECT $1::int + $2::int AS v", 1)

    @remote
    def wrong():
        try:
            query("SELECT $1::int + $2::int AS v", 1)
        except DatabaseError as e:
            return [e.sqlstate, str(e)]

    assert wrong() == [client.value.sqlstate, str(client.value)]


DatabaseError = __import__("wormhole").DatabaseError


def test_domain_typed_parameters_convert_by_their_base_type(db, conn):
    db.setup_sql(
        "CREATE DOMAIN flag AS boolean NOT NULL;"
        "CREATE DOMAIN positive AS int CHECK (VALUE > 0);"
        "CREATE TABLE flags (id int PRIMARY KEY, on_ flag, n positive);"
        "INSERT INTO flags VALUES (1, false, 1), (2, true, 2);"
    )

    @remote
    def ids_with(flag_value):
        return [r["id"] for r in query("SELECT id FROM flags WHERE on_ = $1 ORDER BY id",
                                       flag_value)]

    assert ids_with(False) == [r["id"] for r in
                               query("SELECT id FROM flags WHERE on_ = $1 ORDER BY id", False)]
    assert ids_with(False) == [1]

    @remote
    def insert_bad():
        try:
            query("INSERT INTO flags VALUES (3, true, $1)", -5)
        except DatabaseError as e:
            return e.sqlstate

    assert insert_bad() == "23514"  # the domain's CHECK still applies


ROW_SET = """
SELECT i AS n,
       timestamptz '2024-02-29 13:14:15.123+02' + i * interval '1 hour 1.5 seconds' AS tz,
       timestamp '1999-12-31 23:59:59' + i * interval '1 day' AS ts,
       date '2000-02-28' + i AS d,
       CASE WHEN i % 3 = 0 THEN NULL ELSE i * 1.5 END AS x
FROM generate_series(1, 40) i
"""


@remote
def fetch_and_use(sql):
    rows = query(sql)
    # the worker holds real date and time values, not text
    used = [[r["tz"].utcoffset() is not None, r["ts"].utcoffset() is None, r["d"].toordinal()]
            for r in rows[:3]]
    return [rows, used, rows[5:7]]


@pytest.mark.parametrize("mode", ["worker", "in-process"])
def test_a_row_set_with_dates_and_times_is_the_same_in_both_modes(db, conn, mode):
    # a row set of >= 8 rows crosses to the worker column by column, its date and time
    # columns as PostgreSQL's text; the function must see the same values as the client
    if mode == "in-process":
        fetch_and_use.install()
        with db.admin() as a:
            a.execute("SELECT wormhole_approve(%s)", (fetch_and_use.hash,))
    client_rows = list(query(ROW_SET))
    rows, used, some = fetch_and_use(ROW_SET)
    assert same(rows, client_rows)
    assert same(some, client_rows[5:7])
    assert used == [[True, True, r["d"].toordinal()] for r in client_rows[:3]]
