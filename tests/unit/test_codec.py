"""The type-preserving JSON codec: round trips, error paths, hostile input, limits."""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid
from collections import OrderedDict
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from wormhole.runtime import codec
from wormhole.runtime.codec import CodecError, decode, decode_value, encode, encode_value
from wormhole.runtime.rows import Rows


def same(a: Any, b: Any) -> bool:
    """Equality including type identity; nan equals nan; -0.0 differs from 0.0;
    aware datetimes/times keep their utcoffset."""
    if type(a) is not type(b):
        return False
    if type(a) is float:
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if type(a) is Decimal:
        return str(a) == str(b)  # exact, including NaN payloads, sNaN, -0, exponent
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if type(a) is dict:
        if len(a) != len(b):
            return False
        bk = list(b.items())
        return all(same(k1, k2) and same(v1, v2) for (k1, v1), (k2, v2) in zip(a.items(), bk))
    if type(a) in (set, frozenset):  # nan members are never ==: match them one by one
        return len(a) == len(b) and all(any(same(x, y) for y in b) for x in a)
    if type(a) in (dt.datetime, dt.time):
        return a == b and a.utcoffset() == b.utcoffset() and a.isoformat() == b.isoformat()
    return bool(a == b)


def roundtrip(v: Any) -> Any:
    text = encode(v)
    assert isinstance(text, str)
    text.encode("ascii")  # always ASCII
    out = decode(text)
    # the embedding API agrees with the text API
    assert same(decode_value(json.loads(json.dumps(encode_value(v)))), out)
    return out


# ---------------------------------------------------------------------------------------------
# strategies

offsets = st.integers(min_value=-86399, max_value=86399).map(
    lambda s: dt.timezone(dt.timedelta(seconds=s))
)
aware_tz = st.one_of(st.just(dt.timezone.utc), offsets)
decimals = st.one_of(
    st.decimals(allow_nan=False, allow_infinity=True),
    st.sampled_from([Decimal("NaN"), Decimal("-NaN"), Decimal("sNaN"), Decimal("NaN123"),
                     Decimal("-0"), Decimal("1E+10"), Decimal("1.000"), Decimal("-Infinity")]),
)
floats = st.floats(allow_nan=True, allow_infinity=True)
# up to 2**13000 (about 3900 digits): crosses the hex-tag threshold (2**12000) while staying
# printable by hypothesis (CPython refuses str() of ints over 4300 digits)
ints = st.one_of(
    st.integers(),
    st.sampled_from([2**63, -(2**63) - 1]),
    st.tuples(st.sampled_from([1, -1]), st.integers(11_990, 13_000), st.integers(-3, 3)).map(
        lambda t: t[0] * 2 ** t[1] + t[2]),
)
hashable_leaves = st.one_of(
    st.none(), st.booleans(), ints, st.floats(allow_nan=False), st.text(),
    st.binary(), decimals.filter(lambda d: not d.is_snan()), st.dates(),
    st.times(timezones=st.one_of(st.none(), aware_tz)),
    st.datetimes(timezones=st.one_of(st.none(), aware_tz)),
    st.timedeltas(), st.uuids(),
)
leaves = st.one_of(
    hashable_leaves, floats, decimals,
    st.binary().map(bytearray), st.binary().map(memoryview),
)
tag_like_keys = st.sampled_from(["$t", "$b", "$d", "$", "$x", "$n"])
hashables = st.recursive(
    hashable_leaves,
    lambda inner: st.one_of(st.tuples(inner, inner), st.frozensets(inner, max_size=3)),
    max_leaves=6,
)


def containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(inner, max_size=5),
        st.lists(inner, max_size=5).map(tuple),
        st.dictionaries(st.text(max_size=5), inner, max_size=5),
        st.dictionaries(tag_like_keys, inner, min_size=1, max_size=1),
        st.dictionaries(hashables, inner, max_size=4),
        st.sets(hashables, max_size=4),
        st.frozensets(hashables, max_size=4),
        st.lists(inner, max_size=4).map(Rows),
    )


values = st.recursive(leaves, containers, max_leaves=25)


def normalised(v: Any) -> Any:
    """What a value decodes to: bytearray/memoryview -> bytes, Rows -> list."""
    t = type(v)
    if t in (bytearray, memoryview):
        return bytes(v)
    if t is Rows or t is list:
        return [normalised(x) for x in v]
    if t is tuple:
        return tuple(normalised(x) for x in v)
    if t is dict:
        return {k: normalised(x) for k, x in v.items()}
    return v


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_roundtrip_preserves_types(v: Any) -> None:
    assert same(roundtrip(v), normalised(v))


@given(st.text())
def test_decode_never_raises_anything_but_codec_error_on_text(text: str) -> None:
    try:
        decode(text)
    except CodecError:
        pass


json_like = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8),
              tag_like_keys),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=4), tag_like_keys, st.sampled_from(
            ["$date", "$time", "$dt", "$td", "$uuid", "$set", "$fset", "$f", "$i"])),
            inner, max_size=3),
    ),
    max_leaves=15,
)


@settings(max_examples=500)
@given(json_like)
def test_decode_hostile_structures(v: Any) -> None:
    """Well-formed JSON with arbitrary (mis)use of tags: a value or CodecError, nothing else."""
    try:
        text = json.dumps(v)
    except ValueError:
        assume(False)
        return
    try:
        decode(text)
    except CodecError:
        pass


@given(st.binary())
def test_decode_bytes_input(data: bytes) -> None:
    try:
        decode(data)
    except CodecError:
        pass


# ---------------------------------------------------------------------------------------------
# examples


@pytest.mark.parametrize(
    "v",
    [
        None, True, False, 0, -1, 2**200, 10**5000, 1.0, -0.0, 1e-320, 5e-324, 1.7976931348623157e308,
        math.nan, math.inf, -math.inf, "", "ü€😀\x00\ud800", [], {}, (), (1,), ((),),
        b"", b"\x00\xff", Decimal("1.50"), Decimal("-0"), Decimal("sNaN"), Decimal("-Infinity"),
        dt.date(1, 1, 1), dt.date(9999, 12, 31), dt.time(0, 0), dt.time(23, 59, 59, 999999),
        dt.time(12, 0, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30, seconds=12))),
        dt.datetime(2026, 1, 2, 3, 4, 5, 6),
        dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone(-dt.timedelta(hours=8))),
        dt.datetime(1, 1, 1, tzinfo=dt.timezone.utc), dt.timedelta(0),
        dt.timedelta(days=-1, microseconds=1), dt.timedelta.max, dt.timedelta.min,
        uuid.UUID(int=0), {"$t": 1}, {"$": 1}, {"$t": 1, "x": 2}, {1: "a", "1": "b"},
        {(1, "x"): [1]}, {None: 1, True: 2, 1.5: 3}, {frozenset({1}): 1}, set(), frozenset(),
        {1, "a", (2, 3)}, [{"a": 1, "b": [1.5, None]}] * 3, {"": {"": {"": None}}},
    ],
    ids=lambda v: f"{type(v).__name__}",
)
def test_examples_roundtrip(v: Any) -> None:
    assert same(roundtrip(v), normalised(v))


def test_wire_format_is_the_documented_one() -> None:
    assert encode([1, "a", None, True, 1.5]) == '[1,"a",null,true,1.5]'
    assert json.loads(encode((1, 2))) == {"$t": [1, 2]}
    assert json.loads(encode(b"\x00")) == {"$b": "AA=="}
    assert json.loads(encode(Decimal("1.5"))) == {"$n": "1.5"}
    assert json.loads(encode(math.nan)) == {"$f": "nan"}
    assert json.loads(encode(-math.inf)) == {"$f": "-inf"}
    assert json.loads(encode(dt.date(2020, 1, 2))) == {"$date": "2020-01-02"}
    assert json.loads(encode(dt.time(1, 2, 3))) == {"$time": "01:02:03"}
    aware = dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert json.loads(encode(aware)) == {"$dt": "2020-01-02T03:04:05+01:00"}
    assert json.loads(encode(dt.timedelta(days=-1, seconds=5, microseconds=6))) == {"$td": [-1, 5, 6]}
    assert json.loads(encode(uuid.UUID(int=1))) == {"$uuid": "00000000-0000-0000-0000-000000000001"}
    assert json.loads(encode({1: 2})) == {"$d": [[1, 2]]}
    assert json.loads(encode({"$x": 2})) == {"$d": [["$x", 2]]}
    assert json.loads(encode({2})) == {"$set": [2]}
    assert json.loads(encode(frozenset())) == {"$fset": []}
    assert json.loads(encode(Rows([{"a": 1}], rowcount=5))) == [{"a": 1}]


def test_aware_values_decode_to_fixed_offsets() -> None:
    zi = pytest.importorskip("zoneinfo")
    try:
        paris = zi.ZoneInfo("Europe/Paris")
    except Exception:  # pragma: no cover - no tz database
        pytest.skip("no tz database")
    v = dt.datetime(2026, 7, 1, 12, tzinfo=paris)
    out = decode(encode(v))
    assert isinstance(out, dt.datetime)
    assert out == v and out.utcoffset() == dt.timedelta(hours=2)
    assert type(out.tzinfo) is dt.timezone


def test_big_ints_are_exact() -> None:
    n = 7**20000
    assert decode(encode(n)) == n
    assert decode(encode([-n, {"k": n}])) == [-n, {"k": n}]


# ---------------------------------------------------------------------------------------------
# encode errors


class Foo:
    calls = 0

    def __eq__(self, other: object) -> bool:
        Foo.calls += 1
        return True

    def __hash__(self) -> int:
        Foo.calls += 1
        return 1

    def __iter__(self) -> Any:
        Foo.calls += 1
        return iter([])

    def __repr__(self) -> str:
        Foo.calls += 1
        return "Foo()"


class MyInt(int):
    pass


class MyDict(dict):  # type: ignore[type-arg]
    pass


def test_error_names_type_and_path() -> None:
    with pytest.raises(CodecError) as e:
        encode([1, {"when": Foo()}], root="args")
    msg = str(e.value)
    assert "'Foo'" in msg and "args[1]['when']" in msg and "supported:" in msg


@pytest.mark.parametrize(
    ("value", "path", "typename"),
    [
        ((1, [2, MyInt(3)]), "value[1][1]", "MyInt"),
        ({"a": MyDict()}, "value['a']", "MyDict"),
        (OrderedDict(), "value", "OrderedDict"),
        ({1: Foo()}, "value[1]", "Foo"),
        ({(1, 2): [Foo()]}, "value[(1, 2)][0]", "Foo"),
        ({Foo(): 1}, "value<key #0>", "Foo"),
        ({"x": {Foo()}}, "value['x']{element}", "Foo"),
        ([x for x in range(3)] + [iter([])], "value[3]", "list_iterator"),
        ([lambda: 1], "value[0]", "function"),
        ([(i for i in ())], "value[0]", "generator"),
        ([Foo], "value[0]", "type"),
        ([NotImplemented], "value[0]", "NotImplementedType"),
    ],
)
def test_unsupported_types(value: Any, path: str, typename: str) -> None:
    Foo.calls = 0
    with pytest.raises(CodecError) as e:
        encode(value)
    assert f"at {path};" in str(e.value)
    assert typename in str(e.value)
    assert Foo.calls == 0  # no method of the user object ran


def test_bool_and_exact_types_only() -> None:
    assert decode(encode(True)) is True
    with pytest.raises(CodecError):
        encode(MyInt(1))

    class S(str):
        pass

    with pytest.raises(CodecError, match="'.*S'"):
        encode({"k": S("x")})


def test_encode_value_is_json_able_and_error_path() -> None:
    ev = encode_value({"a": (1, b"x")})
    assert json.loads(json.dumps(ev)) == {"a": {"$t": [1, {"$b": "eA=="}]}}
    with pytest.raises(CodecError, match=r"args\[0\]"):
        encode_value([Foo()], root="args")


# ---------------------------------------------------------------------------------------------
# limits


def nest(depth: int, leaf: Any = 1) -> Any:
    v = leaf
    for _ in range(depth):
        v = [v]
    return v


def test_depth_limit_encode() -> None:
    assert decode(encode(nest(codec.MAX_DEPTH))) == nest(codec.MAX_DEPTH)
    with pytest.raises(CodecError, match="nesting"):
        encode(nest(codec.MAX_DEPTH + 1))
    with pytest.raises(CodecError, match="nesting"):
        encode(nest(codec.MAX_DEPTH, (1,)))  # the tag adds levels
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(CodecError, match="nesting"):
        encode(cyclic)


def test_whatever_encodes_decodes_at_the_limit() -> None:
    for leaf in [(1,), {1: 2}, Decimal(1), {2}, dt.timedelta(1), {"a": 1}]:
        for depth in range(codec.MAX_DEPTH - 4, codec.MAX_DEPTH + 1):
            try:
                text = encode(nest(depth, leaf))
            except CodecError:
                continue
            decode(text)


def test_depth_limit_decode() -> None:
    assert decode("[" * 200 + "]" * 200) == nest(199, [])
    with pytest.raises(CodecError, match="nesting"):
        decode("[" * 201 + "]" * 201)
    with pytest.raises(CodecError, match="nesting"):
        decode('{"a":' * 201 + "1" + "}" * 201)
    with pytest.raises(CodecError):
        decode("[" * 100_000 + "]" * 100_000)  # json's own RecursionError
    with pytest.raises(CodecError):
        decode('{"$t":' * 50_000 + "[]" + "}" * 50_000)
    assert decode("[" * 5 + "]" * 5, max_depth=5) == nest(4, [])
    with pytest.raises(CodecError):
        decode("[" * 6 + "]" * 6, max_depth=5)


def test_size_limit() -> None:
    text = encode("x" * 1000)
    assert decode(text, max_bytes=len(text)) == "x" * 1000
    with pytest.raises(CodecError, match="too large"):
        decode(text, max_bytes=len(text) - 1)
    wide = json.dumps("€" * 100, ensure_ascii=False)  # 3 UTF-8 bytes each
    with pytest.raises(CodecError, match="too large"):
        decode(wide, max_bytes=250)
    with pytest.raises(CodecError, match="too large"):
        decode(b"[]" * 10, max_bytes=5)


@pytest.mark.parametrize(
    "text",
    [
        "", "[", "{", "nul", "NaN", "Infinity", "-Infinity", "[NaN]", "1" * 5000,
        '{"$zz": 1}', '{"$b": "***"}', '{"$b": 1}', '{"$b": "AAA"}', '{"$n": "abc"}',
        '{"$n": 1.5}', '{"$f": "NaN"}', '{"$f": 1}', '{"$date": "2020-13-01"}',
        '{"$date": 20200101}', '{"$time": "25:00"}', '{"$dt": "yesterday"}', '{"$dt": "' + "1" * 100 + '"}',
        '{"$td": [1, 2]}', '{"$td": [1, 2, "3"]}', '{"$td": [1e9, 0, 0]}', '{"$td": [1000000000, 0, 0]}',
        '{"$uuid": "xyz"}', '{"$uuid": "{12345678-1234-5678-1234-567812345678}"}',
        '{"$uuid": ["a"]}', '{"$t": {}}', '{"$t": "ab"}', '{"$d": [[1]]}', '{"$d": [[[1], 2]]}',
        '{"$d": {"a": 1}}', '{"$set": [[1]]}', '{"$set": 1}', '{"$fset": [{}]}',
        '{"$set": [{"$n": "sNaN"}]}', '{"$i": "xyz"}', '{"$i": ""}', '{"$i": "-"}', '{"$i": 5}',
        "[1,]", "\"\\ud800", "'a'", "\x00",
    ],
)
def test_malformed_input_raises_codec_error(text: str) -> None:
    with pytest.raises(CodecError):
        decode(text)


def test_decode_rejects_non_text() -> None:
    with pytest.raises(CodecError):
        decode(123)  # type: ignore[arg-type]
    with pytest.raises(CodecError):
        decode(b"\xff\xfe")


def test_codec_error_is_value_error() -> None:
    assert issubclass(CodecError, ValueError)


def test_plain_rows_are_not_copied_on_encode_value() -> None:
    rows = [{"a": 1, "b": "x"}]
    assert encode_value(rows)[0] is rows[0]
    flat = [1, "x", None]
    assert encode_value(flat) is flat


# ---------------------------------------------------------------------------------------------
# row sets ($rows): lists of >= ROWSET_MIN dicts with the same keys in the same order


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(max_size=4), min_size=1, max_size=4, unique=True), st.data())
def test_row_sets_roundtrip(names: list[str], data: Any) -> None:
    from wormhole.runtime.codec import ROWSET_MIN

    n = data.draw(st.integers(ROWSET_MIN, ROWSET_MIN + 4))
    rows = [{k: data.draw(values) for k in names} for _ in range(n)]
    for v in (rows, Rows(rows, rowcount=99), {"rows": rows, "rowcount": 3}):
        assert same(roundtrip(v), normalised(v))


def test_row_set_form_and_pg_text_columns() -> None:
    from wormhole.runtime import pgtypes
    from wormhole.runtime.codec import ROWSET_MIN

    texts = ["2020-01-0%d 03:04:05.5+05:30" % (i % 9 + 1) for i in range(ROWSET_MIN)]
    texts[1] = "1900-01-01 00:00:00+05:53:28"
    rows = Rows([{"id": i, "t": t} for i, t in enumerate(texts)])
    pgtypes.apply_converters_in_place(["id", "t"], [None, pgtypes._timestamptz], rows,
                                      keep := {})
    rows._wire = keep
    text = encode(rows)
    assert text.startswith('{"$rows":[["id","t"],["","pgtz"],')
    assert same(decode(text), normalised(rows))
    # the Python 3.10 fallback reads PostgreSQL's text as fromisoformat does
    from wormhole.runtime.codec import _pg_iso
    for t in texts + ["2020-01-01 00:00:00", "2020-01-01 00:00:00.123456-00:01:15"]:
        a, b = _pg_iso(t), dt.datetime.fromisoformat(t)
        assert a == b and a.utcoffset() == b.utcoffset() and a.isoformat() == b.isoformat()
    # a row changed after the query: that column is re-encoded from the values
    rows[2]["t"] = dt.datetime(2021, 1, 1)
    assert same(decode(encode(rows)), normalised(rows))
    assert '"pgtz"' not in encode(rows)


@pytest.mark.parametrize("payload", [
    '{"$rows":1}', '{"$rows":[["a"],[""],[[1],[2]]]}', '{"$rows":[["a","a"],["",""],[[1],[2]]]}',
    '{"$rows":[["a"],["pgtz"],[["x"]]]}', '{"$rows":[["a"],["pgdate"],[[1]]]}',
    '{"$rows":[["a"],["zz"],[[1]]]}', '{"$rows":[["a","b"],["",""],[[1],[2,3]]]}',
    '{"$rows":[["a"],["dt"],[[5]]]}', '{"$rows":[[],[],[]]}',
])
def test_malformed_row_sets_are_codec_errors(payload: str) -> None:
    with pytest.raises(CodecError):
        decode(payload)


@pytest.mark.parametrize(
    "params",
    [
        [],
        [1, "a", None, True, 1.5],
        [Decimal("12.50"), Decimal("-0"), Decimal("NaN"), Decimal("1E+3")],
        [dt.date(2024, 2, 29), dt.datetime(2024, 1, 1, 12, 0, tzinfo=dt.timezone.utc),
         dt.time(1, 2, 3), dt.timedelta(days=-1, microseconds=5)],
        [b"\x00\xff", bytearray(b"ab"), memoryview(b"cd")],
        [float("nan"), float("inf")],  # tagged: the full path
        [10**400, uuid.UUID(int=7), (1, 2), {"$n": "x"}, [1, [2]]],
        [{"a": Decimal("1")}],
    ],
)
def test_a_query_request_is_the_codec_text_of_sql_and_params(params: list[Any]) -> None:
    sql = "SELECT $1"
    text = codec.encode_query(sql, params)
    assert text == encode({"sql": sql, "params": params}, root="params")
    assert same(decode(text), {"sql": sql, "params": [p.tobytes() if type(p) is memoryview
                                                      else bytes(p) if type(p) is bytearray
                                                      else p for p in params]})


def test_a_set_is_the_same_text_in_every_process() -> None:
    """A set's elements are written in the order of their text, not of the set (``str`` hashes
    differ between processes): the worker's backend compares statements as text."""
    assert encode({"b", "a", 3, Decimal("1.5")}) == '{"$set":["a","b",3,{"$n":"1.5"}]}'
    assert encode({"b", "a", frozenset({2, 1}), (1, "x")}) == (
        '{"$set":["a","b",{"$fset":[1,2]},{"$t":[1,"x"]}]}')
    assert encode({"x%d" % i for i in range(50)}) == encode(
        set(sorted("x%d" % i for i in range(50))))


@pytest.mark.parametrize("tag", ["$set", "$fset", "$d"])
def test_keys_crafted_to_share_one_hash_are_refused_at_once(tag: str) -> None:
    """ints (floats, decimals, tuples of them) hash alike in every process; n keys sharing one
    hash make a set or dict cost n² probes, in C, uninterruptibly (10,000 took 0.44 s)."""
    import time

    m = (1 << 61) - 1
    keys = [i * m + 7 for i in range(1, 10_001)]
    assert len({hash(k) for k in keys}) == 1
    body = [[k, 1] for k in keys] if tag == "$d" else keys
    text = json.dumps({tag: body})
    begin = time.perf_counter()
    with pytest.raises(CodecError, match="share one hash"):
        decode(text)
    assert time.perf_counter() - begin < 0.1
    # as many keys as allowed, and many equal ones (one key), decode as always
    few = keys[:codec.MAX_SAME_HASH]
    assert decode(json.dumps({tag: [[k, 1] for k in few] if tag == "$d" else few}))
    same = [1, 1.0, True] * 100
    assert decode(json.dumps({tag: [[k, 1] for k in same] if tag == "$d" else same}))
