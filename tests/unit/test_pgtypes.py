"""pgtypes without a database: converters on the literal values PL/Python produces.

The inputs below were captured from PL/Python on PostgreSQL 15 (DateStyle ISO, IntervalStyle
postgres) and the expected outputs from psycopg 3.3 on the same queries.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import struct
import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wormhole.runtime import pgtypes
from wormhole.runtime.errors import DatabaseError
from wormhole.runtime.pgtypes import (
    DataError,
    apply_converters,
    convert_rows,
    converters_for,
    convert_value,
    parse_array_literal,
    to_pg_text,
    to_plpy_param,
)

UTC = dt.timezone.utc


def tz(**kw: int) -> dt.timezone:
    return dt.timezone(dt.timedelta(**kw))


def f32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


# (oid, PL/Python value, psycopg value)
SAMPLES: list[tuple[int, Any, Any]] = [
    (21, 1, 1), (23, 2, 2), (20, 3, 3), (16, True, True), (25, "x", "x"), (1043, "y", "y"),
    (1042, "z  ", "z  "), (19, "n", "n"), (17, b"\x00\x01\xff", b"\x00\x01\xff"),
    (1700, Decimal("1.5"), Decimal("1.5")), (1700, Decimal("NaN"), Decimal("NaN")),
    (701, 1e300, 1e300), (701, math.inf, math.inf),
    (700, 1.100000023841858, 1.1), (700, 123456792.0, 123456790.0),
    (700, 3.4028234663852886e38, 3.4028235e38), (700, 1.401298464324817e-45, 1e-45),
    (700, 16777216.0, 16777216.0), (700, 0.10000000149011612, 0.1),
    (700, 1.1754943508222875e-38, 1.1754944e-38), (700, -7223008256.0, -7223008300.0),
    (700, -131504635904.0, -131504636000.0), (700, -0.0, -0.0), (700, -math.inf, -math.inf),
    (1082, "2026-11-24", dt.date(2026, 11, 24)), (1082, "0001-01-01", dt.date(1, 1, 1)),
    (1083, "12:34:56.789", dt.time(12, 34, 56, 789000)), (1083, "00:00:00", dt.time(0)),
    (1083, "23:59:59.999999", dt.time(23, 59, 59, 999999)),
    (1266, "12:34:56+05:30:12", dt.time(12, 34, 56, tzinfo=tz(seconds=19812))),
    (1266, "01:02:03.5-08", dt.time(1, 2, 3, 500000, tzinfo=tz(hours=-8))),
    (1114, "2026-01-02 03:04:05.6", dt.datetime(2026, 1, 2, 3, 4, 5, 600000)),
    (1114, "2020-01-01 00:00:00", dt.datetime(2020, 1, 1)),
    (1184, "2026-11-24 22:32:54.886866+00",
     dt.datetime(2026, 11, 24, 22, 32, 54, 886866, tzinfo=UTC)),
    # the offset PostgreSQL printed (the session zone's at that instant) is kept
    (1184, "1900-01-01 00:09:21+00:09:21",
     dt.datetime(1900, 1, 1, 0, 9, 21, tzinfo=tz(seconds=561))),
    (1184, "2026-07-01 14:00:00+02", dt.datetime(2026, 7, 1, 14, tzinfo=tz(hours=2))),
    (1186, "10 mons", dt.timedelta(days=300)),
    (1186, "-1 days +02:03:00", dt.timedelta(days=-1, seconds=7380)),
    (1186, "-00:00:01", dt.timedelta(seconds=-1)),
    (1186, "-1 years -2 mons +3 days -04:05:06.789",
     dt.timedelta(days=-423, seconds=71693, microseconds=211000)),
    (1186, "1 mon 00:00:00.000001", dt.timedelta(days=30, microseconds=1)),
    (1186, "100 years", dt.timedelta(days=36500)), (1186, "-11 mons", dt.timedelta(days=-330)),
    (1186, "1 year", dt.timedelta(days=365)), (1186, "00:00:00", dt.timedelta(0)),
    (1186, "100:00:00", dt.timedelta(hours=100)), (1186, "1 day", dt.timedelta(days=1)),
    (2950, "b02ffa83-1e8d-4357-bcbd-aac34273763e",
     uuid.UUID("b02ffa83-1e8d-4357-bcbd-aac34273763e")),
    (114, '{"a": 1.10}', {"a": 1.1}), (3802, '{"a": 1}', {"a": 1}), (3802, "null", None),
    (3802, '"s"', "s"), (3802, "[1, 2.5e3]", [1, 2500.0]),
    # arrays, as PL/Python returns them
    (1007, [1, None, 3], [1, None, 3]), (1016, [[1, 2], [3, 4]], [[1, 2], [3, 4]]),
    (1021, [1.100000023841858, None], [1.1, None]),
    (1009, ["a b", 'c"d', None, "NULL", ""], ["a b", 'c"d', None, "NULL", ""]),
    (1001, [b"\x00\xff"], [b"\x00\xff"]),
    (1182, ["2020-01-01"], [dt.date(2020, 1, 1)]), (1183, ["12:00:00"], [dt.time(12)]),
    (1270, ["12:00:00+01"], [dt.time(12, tzinfo=tz(hours=1))]),
    (1115, ["2020-01-01 00:00:00"], [dt.datetime(2020, 1, 1)]),
    (1185, ["2020-01-01 00:00:00+00", None], [dt.datetime(2020, 1, 1, tzinfo=UTC), None]),
    (1187, ["1 day", "-1 years -2 mons +3 days -04:05:06.789"],
     [dt.timedelta(days=1), dt.timedelta(days=-423, seconds=71693, microseconds=211000)]),
    (2951, ["49b0aff2-c1d0-4d8e-8d30-529d5168252f"],
     [uuid.UUID("49b0aff2-c1d0-4d8e-8d30-529d5168252f")]),
    (199, ['{"a":1}'], [{"a": 1}]), (3807, ['{"a": 1}'], [{"a": 1}]),
    (1003, ["x"], ["x"]), (1014, ["ab"], ["ab"]), (1015, ["a"], ["a"]), (1000, [True], [True]),
    (1005, [1], [1]), (1231, [Decimal("1.5"), Decimal("NaN")], [Decimal("1.5"), Decimal("NaN")]),
    (1022, [0.1], [0.1]), (1182, [["2020-01-01", None], [None, "2021-02-03"]],
                           [[dt.date(2020, 1, 1), None], [None, dt.date(2021, 2, 3)]]),
    (1007, [], []),
    # unknown OIDs (enum, composite...) pass through unchanged
    (17916, "ok", "ok"), (17928, {"a": 1, "b": "x"}, {"a": 1, "b": "x"}),
]


def same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if type(a) is float:
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b))
    if type(a) is Decimal:
        return str(a) == str(b)
    if type(a) is list:
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if type(a) is dict:
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if type(a) in (dt.datetime, dt.time):
        return a == b and a.utcoffset() == b.utcoffset()
    return bool(a == b)


@pytest.mark.parametrize(("oid", "plpy_value", "expected"), SAMPLES)
def test_convert_value_matches_psycopg(oid: int, plpy_value: Any, expected: Any) -> None:
    assert same(convert_value(oid, plpy_value), expected)
    assert convert_value(oid, None) is None


def test_identity_types_need_no_converter() -> None:
    convs = converters_for([16, 17, 19, 20, 21, 23, 25, 701, 1042, 1043, 1700, 99999])
    assert convs == [None] * 12
    assert all(c is not None for c in converters_for([700, 1082, 1083, 1114, 1184, 1186, 1266,
                                                       2950, 114, 3802, 1182, 1021, 199]))
    # arrays of identity types need nothing either
    assert converters_for([1007, 1009, 1001, 1000, 1231]) == [None] * 5


def test_convert_rows_and_duplicate_names() -> None:
    rows = [{"d": "2020-01-01", "n": 1, "t": None}, {"d": None, "n": 2, "t": "12:00:00"}]
    out = convert_rows(["d", "n", "t"], [1082, 23, 1083], rows)
    assert out == [{"d": dt.date(2020, 1, 1), "n": 1, "t": None},
                   {"d": None, "n": 2, "t": dt.time(12)}]
    assert rows[0]["d"] == "2020-01-01"  # input left alone
    # PL/Python keeps the last of two same-named columns: its type applies, once
    out = convert_rows(["x", "x"], [1082, 1083], [{"x": "12:00:00"}])
    assert out == [{"x": dt.time(12)}]
    out = apply_converters(["x", "x"], converters_for([1184, 1184]),
                           [{"x": "2020-01-01 00:00:00+00"}])
    assert out == [{"x": dt.datetime(2020, 1, 1, tzinfo=UTC)}]
    assert convert_rows(["a"], [23], [{"a": 1}]) == [{"a": 1}]


def test_timestamptz_in_session_zone() -> None:
    paris = pgtypes.session_tzinfo("Europe/Paris")
    if paris is UTC:  # pragma: no cover - no tz database on this machine
        pytest.skip("no tz database")
    conv = converters_for([1184], tz=paris)[0]
    assert conv is not None
    v = conv("2026-07-01 14:00:00+02")
    assert v.tzinfo is paris and v == dt.datetime(2026, 7, 1, 12, tzinfo=UTC)
    assert pgtypes.session_tzinfo("UTC") is UTC
    assert pgtypes.session_tzinfo("No/Such_Zone") is UTC


def test_domains_resolve_to_base_type() -> None:
    convs = converters_for([50001, 50002, 50003], domains={50001: 1082, 50002: 50001})
    assert convs[0] is not None and convs[0]("2020-01-02") == dt.date(2020, 1, 2)
    assert convs[1] is not None and convs[1]("2020-01-02") == dt.date(2020, 1, 2)
    assert convs[2] is None
    assert pgtypes.unknown_oids([23, 1082, 50001, 1007, 17928]) == [50001, 17928]


@pytest.mark.parametrize(
    ("oid", "text", "message"),
    [
        (1082, "infinity", "date too large (after year 10K): 'infinity'"),
        (1082, "-infinity", "date too small (before year 1): '-infinity'"),
        (1082, "0044-03-15 BC", "date too small (before year 1): '0044-03-15 BC'"),
        (1082, "10000-01-01", "date too large (after year 10K): '10000-01-01'"),
        (1114, "infinity", "timestamp too large (after year 10K): 'infinity'"),
        (1114, "-infinity", "timestamp too small (before year 1): '-infinity'"),
        (1184, "0044-03-15 10:00:00+00 BC",
         "timestamp too small (before year 1): '0044-03-15 10:00:00+00 BC'"),
        (1184, "10000-01-01 00:00:00+00",
         "timestamp too large (after year 10K): '10000-01-01 00:00:00+00'"),
        (1083, "24:00:00", "can't parse time '24:00:00': hour must be in 0..23"),
        (1266, "24:00:00+00", "can't parse timetz '24:00:00+00': hour must be in 0..23"),
        (1182, ["2020-01-01", "infinity"], "date too large (after year 10K): 'infinity'"),
    ],
)
def test_unrepresentable_values_raise_like_psycopg(oid: int, text: Any, message: str) -> None:
    with pytest.raises(DataError) as e:
        convert_value(oid, text)
    assert str(e.value) == message
    assert isinstance(e.value, ValueError) and isinstance(e.value, DatabaseError)


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_float4_output_is_shortest_roundtrip(bits: int) -> None:
    v = struct.unpack("f", struct.pack("I", bits))[0]
    out = pgtypes.convert_value(700, v)
    if math.isnan(v) or math.isinf(v):
        assert same(out, v)
        return
    assert f32(out) == v  # reads back as the same float32
    assert len(repr(out)) <= len(repr(v))


# ---------------------------------------------------------------------------------------------
# to_pg_text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, None), (True, "true"), (False, "false"), (0, "0"), (-(2**70), str(-(2**70))),
        (1.5, "1.5"), (1e300, "1e+300"), (-0.0, "-0.0"), (math.nan, "NaN"),
        (math.inf, "Infinity"), (-math.inf, "-Infinity"), (Decimal("1.50"), "1.50"),
        (Decimal("NaN"), "NaN"), (Decimal("-Infinity"), "-Infinity"), (Decimal("1E+2"), "1E+2"),
        ("it's", "it's"), ("", ""), (b"\x00\xff", "\\x00ff"), (bytearray(b"a"), "\\x61"),
        (memoryview(b"ab"), "\\x6162"), (dt.date(44, 3, 15), "0044-03-15"),
        (dt.time(1, 2, 3, 4), "01:02:03.000004"),
        (dt.time(1, 2, tzinfo=tz(hours=-3)), "01:02:00-03:00"),
        (dt.datetime(2024, 1, 2, 3, 4, 5), "2024-01-02T03:04:05"),
        (dt.datetime(2024, 1, 2, tzinfo=tz(hours=1, seconds=7)), "2024-01-02T00:00:00+01:00:07"),
        (dt.timedelta(days=-1, seconds=5, microseconds=7), "-1 days +5 seconds +7 microseconds"),
        (dt.timedelta(microseconds=-1), "-1 days +86399 seconds +999999 microseconds"),
        (dt.timedelta(0), "+0 days +0 seconds +0 microseconds"),
        (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        ({"a": [1, None], "b": "ü"}, '{"a": [1, null], "b": "ü"}'),
        ([], "{}"), ((), "{}"), ([[]], "{}"), ([[], ()], "{}"), ([1, None, 3], '{"1",NULL,"3"}'),
        ([["a", 'b"'], ["c\\", None]], '{{"a","b\\""},{"c\\\\",NULL}}'),
        ([b"\x00"], '{"\\\\x00"}'), ([True, 1.5, Decimal("2")], '{"true","1.5","2"}'),
        (["NULL", ""], '{"NULL",""}'), ([{"a": 1}], '{"{\\"a\\": 1}"}'),
        ([dt.date(2020, 1, 1)], '{"2020-01-01"}'),
    ],
)
def test_to_pg_text(value: Any, text: str | None) -> None:
    assert to_pg_text(value) == text


class MyStr(str):
    pass


@pytest.mark.parametrize("value", [object(), {1, 2}, frozenset(), MyStr("x"), complex(1, 2),
                                   [object()], range(3)])
def test_to_pg_text_rejects_other_types(value: Any) -> None:
    with pytest.raises(TypeError) as e:
        to_pg_text(value)
    assert "cannot send" in str(e.value)


def test_to_pg_text_json_errors_are_clear() -> None:
    with pytest.raises(TypeError, match="Decimal inside a dict parameter"):
        to_pg_text({"a": Decimal("1")})
    with pytest.raises(ValueError):
        to_pg_text({"a": math.nan})
    with pytest.raises(ValueError, match="NUL"):
        to_pg_text("a\x00b")


# ---------------------------------------------------------------------------------------------
# to_plpy_param (behaviour measured against plpy; see tests/integration/test_pgtypes_live.py)


@pytest.mark.parametrize(
    ("value", "typname", "expected"),
    [
        (None, "integer", None), (5, "integer", "5"), ("x", "text", "x"),
        (1.5, "double precision", "1.5"), ({"a": 1}, "jsonb", '{"a": 1}'),
        (dt.date(2020, 1, 2), "date", "2020-01-02"),
        (False, "boolean", False), (True, "boolean", True), ("false", "boolean", False),
        ("  Of ", "boolean", False), ("on", "boolean", True), ("T", "boolean", True),
        ("ye", "boolean", True), ("n", "boolean", False), (1, "boolean", True),
        (0, "boolean", False),
        (b"\x00", "bytea", b"\x00"), (bytearray(b"a"), "bytea", b"a"),
        (memoryview(b"a"), "bytea", b"a"), ("\\x00FF", "bytea", b"\x00\xff"),
        ("\\x 00 ff\n", "bytea", b"\x00\xff"), ("a\\\\b\\001", "bytea", b"a\\b\x01"),
        ("é", "bytea", "é".encode()),
        ([1, None, 3], "integer[]", ["1", None, "3"]), ((1, 2), "integer[]", ["1", "2"]),
        ([[1, 2], [3, 4]], "bigint[]", [["1", "2"], ["3", "4"]]), ([], "integer[]", []),
        ("{1,2,NULL}", "integer[]", ["1", "2", None]),
        ("[0:1]={7,8}", "integer[]", ["7", "8"]),
        ([True, "f", None], "boolean[]", [True, False, None]),
        ([b"\x00", None, "\\x01"], "bytea[]", [b"\x00", None, b"\x01"]),
        ([{"a": 1}], "jsonb[]", ['{"a": 1}']),
        ([dt.timedelta(days=1)], "interval[]", ["+1 days +0 seconds +0 microseconds"]),
        ([1.5], "timestamp with time zone[]", ["1.5"]),
    ],
)
def test_to_plpy_param(value: Any, typname: str, expected: Any) -> None:
    out = to_plpy_param(value, typname)
    assert out == expected and type(out) is type(expected)


@pytest.mark.parametrize(
    ("value", "typname", "message", "sqlstate"),
    [
        ("maybe", "boolean", 'invalid input syntax for type boolean: "maybe"', "22P02"),
        (2, "boolean", 'invalid input syntax for type boolean: "2"', "22P02"),
        ("o", "boolean", 'invalid input syntax for type boolean: "o"', "22P02"),
        ("", "boolean", 'invalid input syntax for type boolean: ""', "22P02"),
        ("\\x0", "bytea", "invalid hexadecimal data: odd number of digits", "22023"),
        ("\\xzz", "bytea", 'invalid hexadecimal digit: "z"', "22023"),
        ("a\\b", "bytea", "invalid input syntax for type bytea", "22P02"),
        ("a\\", "bytea", "invalid input syntax for type bytea", "22P02"),
        (5, "integer[]", 'malformed array literal: "5"', "22P02"),
        ("{1,2", "integer[]", 'malformed array literal: "{1,2"', "22P02"),
    ],
)
def test_to_plpy_param_errors_mirror_postgres(value: Any, typname: str, message: str,
                                              sqlstate: str) -> None:
    with pytest.raises(DatabaseError) as e:
        to_plpy_param(value, typname)
    assert str(e.value) == message and e.value.sqlstate == sqlstate


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{}", []), (" { } ", []), ("{1,2}", ["1", "2"]), ("{ a , b }", ["a", "b"]),
        ('{"a b",NULL,null,"NULL",""}', ["a b", None, None, "NULL", ""]),
        ('{"q\\"x","b\\\\s"}', ['q"x', "b\\s"]), ("{a\\,b}", ["a,b"]), ("{\\NULL}", ["NULL"]),
        ("{{1,2},{3,4}}", [["1", "2"], ["3", "4"]]), ("[1:2]={x,y}", ["x", "y"]),
        ("{{}}", None), ("{1,}", None), ("{,1}", None), ("{1 2}", ["1 2"]), ("1", None),
        ("{1}x", None), ('{"a"b}', None), ('{a"b"}', None), ("{1,{2}}", [("1"), ["2"]]),
        ("[1:2]{x}", None),
    ],
)
def test_parse_array_literal(text: str, expected: Any) -> None:
    if expected is None:
        with pytest.raises(DatabaseError, match="malformed array literal"):
            parse_array_literal(text)
    else:
        assert parse_array_literal(text) == expected


@given(st.recursive(st.one_of(st.none(), st.text()),
                    lambda inner: st.lists(inner, min_size=1, max_size=4), max_leaves=12))
def test_array_text_parses_back(value: Any) -> None:
    """What to_pg_text sends for a list, array_in (our copy) reads back element for element."""
    if not isinstance(value, list):
        value = [value]
    if any("\x00" in s for s in _strings(value)):
        return
    assert parse_array_literal(to_pg_text(value) or "") == value


def _strings(v: Any) -> list[str]:
    if isinstance(v, list):
        return [s for x in v for s in _strings(x)]
    return [v] if isinstance(v, str) else []


def test_json_loads_is_the_json_rule() -> None:
    conv = converters_for([3802])[0]
    assert conv is json.loads
