"""Type parity between PL/Python and psycopg 3, for result rows and for parameters.

Why: the same ``query()`` call must return equal Python values whether the function runs on the
client (psycopg 3, text results) or inside the database (PL/Python's SPI). PL/Python hands back
many types as the server's text output (``date``, ``timestamptz``, ``interval``, ``uuid``,
``json``...) and ``float4`` as the float32 value widened to a double, while psycopg parses the
text output. This module reproduces psycopg's loaders, by column type OID, on PL/Python values.

Assumptions (the host must guarantee them in the backend; they are PostgreSQL's defaults):

* ``DateStyle`` is ``ISO`` (any order), ``IntervalStyle`` is ``postgres``;
* ``extra_float_digits`` >= 1 (the default since PostgreSQL 12: shortest exact output), so the
  text psycopg parses for ``float4``/``float8`` is the shortest round-trip decimal;
* the client and the server use the same session (``TimeZone`` in particular), which holds
  because the server side runs inside the client's own call.

Parameters cross as text in PostgreSQL's input syntax with an unknown type on both sides
(:func:`to_pg_text`), so PostgreSQL infers every parameter type from context the same way on
both sides. PL/Python cannot take text for every inferred type: it converts ``bool`` parameters
by Python truthiness (``'false'`` would be true), ``bytea`` with ``bytes()``, and arrays only
from Python sequences. :func:`to_plpy_param` bridges those cases.

Stdlib only, no ``plpy``: the host passes values in.
"""

from __future__ import annotations

import collections
import datetime as _dt
import itertools
import json
import math
import operator
import re
import struct
from decimal import Decimal
import sys

# typing and uuid stay off the import path of a new backend (uuid imports platform); annotations
# are never evaluated and the UUID type is looked up when a value or column needs it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import uuid
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from typing import Any, cast
else:
    def cast(typ: object, value: object) -> object:
        return value

from .errors import DatabaseError

__all__ = [
    "DataError",
    "Converter",
    "converters_for",
    "convert_rows",
    "apply_converters",
    "apply_converters_in_place",
    "convert_value",
    "unknown_oids",
    "session_tzinfo",
    "to_pg_text",
    "to_plpy_param",
    "parse_array_literal",
]

if TYPE_CHECKING:
    Converter = Callable[[Any], Any]


class DataError(DatabaseError, ValueError):
    """A value PostgreSQL returned has no Python equivalent (BC dates, infinity, 24:00:00).

    Mirrors ``psycopg.DataError``, raised by psycopg's loaders for the same values with the same
    messages, so user code sees the same failure on both sides. It is both a ``DatabaseError``
    (what ``query()`` raises) and a ``ValueError``.
    """


# --------------------------------------------------------------------------------------------
# OIDs (pg_type.oid, fixed in PostgreSQL's catalog)

BOOL, BYTEA, NAME, INT8, INT2, INT4, TEXT = 16, 17, 19, 20, 21, 23, 25
JSON, FLOAT4, FLOAT8, BPCHAR, VARCHAR = 114, 700, 701, 1042, 1043
DATE, TIME, TIMESTAMP, TIMESTAMPTZ, INTERVAL, TIMETZ = 1082, 1083, 1114, 1184, 1186, 1266
NUMERIC, UUID, JSONB = 1700, 2950, 3802

# array OID -> element OID, for the element types this module knows
ARRAY_ELEMENT: dict[int, int] = {
    1000: BOOL, 1001: BYTEA, 1003: NAME, 1005: INT2, 1007: INT4, 1009: TEXT, 1014: BPCHAR,
    1015: VARCHAR, 1016: INT8, 1021: FLOAT4, 1022: FLOAT8, 1182: DATE, 1183: TIME,
    1115: TIMESTAMP, 1185: TIMESTAMPTZ, 1187: INTERVAL, 1270: TIMETZ, 1231: NUMERIC,
    2951: UUID, 199: JSON, 3807: JSONB,
}

# Types PL/Python already returns as psycopg does: ints, bool, text-like, bytea, numeric
# (Decimal), float8 (the exact double, which is what psycopg parses from the shortest output).
IDENTITY_OIDS = frozenset({BOOL, BYTEA, NAME, INT8, INT2, INT4, TEXT, BPCHAR, VARCHAR, NUMERIC,
                           FLOAT8})


# --------------------------------------------------------------------------------------------
# scalar converters (input: the str PL/Python returns; never None)

_F32 = struct.Struct("f")


def _float4(v: float) -> float:
    """The double psycopg gets for a float4: ``float()`` of PostgreSQL's shortest output.

    PostgreSQL (Ryu) prints the shortest decimal that reads back as the same float32 and, among
    those, the closest to the exact value. ``'%.{p}e'`` gives the closest p-digit decimal; its
    two neighbours are tried too, because at a power of two the rounding interval is lopsided.
    Measured against the server: a decimal lying exactly halfway between two float32s is never
    chosen (Ryu treats the interval bounds as open there), so ties do not count as round trips.
    """
    if v - v != 0.0 or v == 0.0:  # nan, inf, +-0.0 print and parse back unchanged
        return v
    hit = _f4_cache.get(v)
    if hit is not None:
        return hit
    a = -v if v < 0 else v
    m, e = math.frexp(a)
    ulp = math.ldexp(1.0, max(e - 24, -149))
    hi_mid = a + ulp / 2  # exact in a double: 25 significant bits at most
    lo_mid = a - (ulp / 4 if m == 0.5 and e > -125 else ulp / 2)
    # A p-digit candidate existing implies a (p+1)-digit one does: binary search on p.
    lo, hi = 1, 9
    best = _f4_candidate(a, 9, lo_mid, hi_mid)
    while lo < hi:
        mid = (lo + hi) // 2
        c = _f4_candidate(a, mid, lo_mid, hi_mid)
        if c is None:
            lo = mid + 1
        else:
            best, hi = c, mid
    r = v if best is None else (-best if v < 0 else best)
    if len(_f4_cache) >= 4096:
        _f4_cache.clear()
    _f4_cache[v] = r
    return r


_f4_cache: dict[float, float] = {}


def _f4_candidate(a: float, p: int, lo_mid: float, hi_mid: float) -> float | None:
    """The p-significant-digit decimal closest to ``a`` that reads back as ``a``, if any."""
    s = "%.*e" % (p - 1, a)
    if _rt32(s, a, lo_mid, hi_mid):
        return float(s)
    mant, exp = s.split("e")
    digits = int(mant.replace(".", ""))
    scale = int(exp) - (p - 1)
    best: float | None = None
    for d in (digits - 1, digits + 1):
        cs = f"{d}e{scale}"
        if d > 0 and _rt32(cs, a, lo_mid, hi_mid):
            c = float(cs)
            if best is None or abs(c - a) < abs(best - a):
                best = c
    return best


def _rt32(cs: str, a: float, lo_mid: float, hi_mid: float) -> bool:
    """Does the decimal ``cs`` read back (as strtof would, exactly) as the float32 ``a``?"""
    c = float(cs)
    if c == hi_mid or c == lo_mid:
        # At (or double-rounded onto) a midpoint: decide exactly; an exact tie does not count.
        x = Decimal(cs)
        return Decimal(lo_mid) < x < Decimal(hi_mid)
    try:
        return bool(_F32.unpack(_F32.pack(c))[0] == a)
    except OverflowError:
        return False


def _date(s: str) -> _dt.date:
    # psycopg slices ISO dates at fixed positions; mirror it, failures included.
    try:
        return _dt.date(int(s[:4]), int(s[5:7]), int(s[8:]))
    except ValueError as ex:
        if s == "infinity" or (s and len(s.split()[0]) > 10):
            raise DataError(f"date too large (after year 10K): {s!r}") from None
        elif s == "-infinity" or "BC" in s:
            raise DataError(f"date too small (before year 1): {s!r}") from None
        raise DataError(f"can't parse date {s!r}: {ex}") from None


_USPAD = (0, 100_000, 10_000, 1_000, 100, 10, 1)


def _micros(fr: str | None) -> int:
    if not fr:
        return 0
    us = int(fr[:6])
    return us * _USPAD[len(fr)] if len(fr) < 6 else us


class _Lazy:
    """A regular expression compiled on first use. A new backend imports this module for its
    first call, and most calls never read a time, interval or escaped bytea value: compiling
    these patterns up front cost ~2.5 ms of every backend's first call."""

    def __init__(self, pattern: str | bytes, flags: int = 0) -> None:
        self._args = (pattern, flags)

    def __getattr__(self, name: str) -> Any:  # only reached before the first use
        compiled = re.compile(*self._args)  # type: ignore[type-var]  # str or bytes, as given
        self.match = compiled.match
        self.fullmatch = compiled.fullmatch
        return getattr(compiled, name)


_RE_TIME: re.Pattern[str] = _Lazy(  # type: ignore[assignment]
    r"^(\d+):(\d+):(\d+)(?:\.(\d+))?")


def _time(s: str) -> _dt.time:
    m = _RE_TIME.match(s)
    if not m:
        raise DataError(f"can't parse time {s!r}")
    ho, mi, se, fr = m.groups()
    try:
        return _dt.time(int(ho), int(mi), int(se), _micros(fr))
    except ValueError as e:
        raise DataError(f"can't parse time {s!r}: {e}") from None


_RE_TIMETZ: re.Pattern[str] = _Lazy(  # type: ignore[assignment]
    r"""(?ix)
    ^
    (\d+) : (\d+) : (\d+) (?: \. (\d+) )?       # Time and micros
    ([-+]) (\d+) (?: : (\d+) )? (?: : (\d+) )?  # Timezone
    $
    """)

_tz_cache: dict[int, _dt.timezone] = {}


def _offset_tz(sgn: str, oh: str, om: str | None, os: str | None) -> _dt.timezone:
    off = 3600 * int(oh) + (60 * int(om) if om else 0) + (int(os) if os else 0)
    if sgn == "-":
        off = -off
    tz = _tz_cache.get(off)
    if tz is None:
        tz = _tz_cache[off] = _dt.timezone(_dt.timedelta(seconds=off))
    return tz


def _timetz(s: str) -> _dt.time:
    m = _RE_TIMETZ.match(s)
    if not m:
        raise DataError(f"can't parse timetz {s!r}")
    ho, mi, se, fr, sgn, oh, om, os = m.groups()
    try:
        return _dt.time(int(ho), int(mi), int(se), _micros(fr), _offset_tz(sgn, oh, om, os))
    except ValueError as e:
        raise DataError(f"can't parse timetz {s!r}: {e}") from None


_RE_TIMESTAMP: re.Pattern[str] = _Lazy(  # type: ignore[assignment]
    r"""(?ix)
    ^
    (\d+) [^a-z0-9] (\d+) [^a-z0-9] (\d+)   # Date
    (?: T | [^a-z0-9] )                     # Separator, including T
    (\d+) [^a-z0-9] (\d+) [^a-z0-9] (\d+)   # Time
    (?: \.(\d+) )?                          # Micros
    $
    """)

_RE_TIMESTAMPTZ: re.Pattern[str] = _Lazy(  # type: ignore[assignment]
    r"""(?ix)
    ^
    (\d+) [^a-z0-9] (\d+) [^a-z0-9] (\d+)       # Date
    (?: T | [^a-z0-9] )                         # Separator, including T
    (\d+) [^a-z0-9] (\d+) [^a-z0-9] (\d+)       # Time
    (?: \.(\d+) )?                              # Micros
    ([-+]) (\d+) (?: : (\d+) )? (?: : (\d+) )?  # Timezone
    $
    """)


def _timestamp_error(s: str, ex: Exception | None = None) -> DataError:
    if s == "-infinity" or s.endswith("BC"):
        return DataError(f"timestamp too small (before year 1): {s!r}")
    if s == "infinity" or (s and len(s.split()[0]) > 10):
        return DataError(f"timestamp too large (after year 10K): {s!r}")
    return DataError(f"can't parse timestamp {s!r}: {ex or '(unknown)'}")


def _timestamp(s: str) -> _dt.datetime:
    if _iso_shaped(s):
        try:  # fast path, as in _timestamptz
            d = _dt.datetime.fromisoformat(s)
        except ValueError:
            pass
        else:
            if d.tzinfo is None:
                return d
    m = _RE_TIMESTAMP.match(s)
    if not m:
        raise _timestamp_error(s)
    ye, mo, da, ho, mi, se, fr = m.groups()
    try:
        return _dt.datetime(int(ye), int(mo), int(da), int(ho), int(mi), int(se), _micros(fr))
    except ValueError as ex:
        raise _timestamp_error(s, ex) from None


def _iso_shaped(s: str) -> bool:
    """``YYYY-MM-DD HH:MM:SS...``: the shape ISO DateStyle prints for years 1..9999 AD."""
    return len(s) >= 19 and s[4] == "-" and s[10] == " " and s[13] == ":" and s[-1] != "C"


def _timestamptz(s: str) -> _dt.datetime:
    """Aware datetime with the offset PostgreSQL printed (the session TimeZone's, at that time).

    psycopg returns the same instant in ``ZoneInfo(TimeZone)``; ``==``, ``utcoffset()`` and
    ``isoformat()`` agree. Pass ``tz=`` to :func:`converters_for` to get psycopg's tzinfo too.
    """
    if _iso_shaped(s):
        # fast path (C): Python 3.11+ reads PostgreSQL's ISO output (``+05``, ``+05:30``,
        # ``+05:53:28``, 1-6 fraction digits) as the same value; anything it rejects, or
        # an older Python, takes the regex below
        try:
            d = _dt.datetime.fromisoformat(s)
        except ValueError:
            pass
        else:
            if d.tzinfo is not None:
                return d
    m = _RE_TIMESTAMPTZ.match(s)
    if not m:
        raise _timestamp_error(s)
    ye, mo, da, ho, mi, se, fr, sgn, oh, om, os = m.groups()
    try:
        return _dt.datetime(int(ye), int(mo), int(da), int(ho), int(mi), int(se), _micros(fr),
                            _offset_tz(sgn, oh, om, os))
    except ValueError as ex:
        raise _timestamp_error(s, ex) from None


def _timestamptz_in(tz: _dt.tzinfo) -> Converter:
    def conv(s: str) -> _dt.datetime:
        dt = _timestamptz(s)
        try:
            return dt.astimezone(tz)
        except OverflowError:
            # near datetime.min/max the shift may overflow: psycopg keeps the fixed offset
            return dt

    return conv


_RE_INTERVAL: re.Pattern[str] = _Lazy(  # type: ignore[assignment]
    r"""
    (?: ([-+]?\d+) \s+ years? \s* )?                # Years
    (?: ([-+]?\d+) \s+ mons? \s* )?                 # Months
    (?: ([-+]?\d+) \s+ days? \s* )?                 # Days
    (?: ([-+])? (\d+) : (\d+) : (\d+ (?:\.\d+)?)    # Time
    )?
    """, re.VERBOSE)


def _interval(s: str) -> _dt.timedelta:
    """psycopg's rule: a year is 365 days, a month 30 days; the time part carries its sign."""
    m = _RE_INTERVAL.match(s)
    if not m:  # pragma: no cover - every group is optional, the pattern always matches
        raise DataError(f"can't parse interval {s!r}")
    ye, mo, da, sgn, ho, mi, se = m.groups()
    days = 0
    seconds = 0
    micros = 0
    if ye:
        days += 365 * int(ye)
    if mo:
        days += 30 * int(mo)
    if da:
        days += int(da)
    if ho:
        seconds = 3600 * int(ho) + 60 * int(mi)
        micros = round(float(se) * 1_000_000)
        if sgn == "-":
            seconds = -seconds
            micros = -micros
    try:
        return _dt.timedelta(days=days, seconds=seconds, microseconds=micros)
    except OverflowError as e:
        raise DataError(f"can't parse interval {s!r}: {e}") from None


def _uuid(s: str) -> uuid.UUID:
    import uuid

    return uuid.UUID(s)


_SCALAR: dict[int, Converter] = {
    FLOAT4: _float4,
    DATE: _date,
    TIME: _time,
    TIMETZ: _timetz,
    TIMESTAMP: _timestamp,
    TIMESTAMPTZ: _timestamptz,
    INTERVAL: _interval,
    UUID: _uuid,
    JSON: json.loads,
    JSONB: json.loads,
}


def _array_of(conv: Converter) -> Converter:
    """Apply ``conv`` to every non-NULL element of a (nested) list from PL/Python."""

    def walk(lst: list[Any]) -> list[Any]:
        return [
            None if x is None else (walk(x) if type(x) is list else conv(x)) for x in lst
        ]

    return walk


def session_tzinfo(name: str | None) -> _dt.tzinfo:
    """The tzinfo psycopg uses for a session ``TimeZone`` setting (``ZoneInfo``, else UTC).

    For a host that wants ``timestamptz`` values with exactly psycopg's tzinfo (pass the result
    as ``tz=`` to :func:`converters_for`). Imported lazily: ``zoneinfo`` reads the system
    tz database.
    """
    if not name or name == "UTC":
        return _dt.timezone.utc
    try:
        from zoneinfo import ZoneInfo

        return ZoneInfo(name)
    except Exception:  # unknown or POSIX-style names: psycopg falls back to UTC too
        return _dt.timezone.utc


def converters_for(coltypes: Sequence[int], *, tz: _dt.tzinfo | None = None,
                   domains: Mapping[int, int] | None = None) -> list[Converter | None]:
    """One converter per column (None: PL/Python's value is already psycopg's).

    Compute once per plan and reuse for every row. Unknown OIDs (enums, composites, extension
    types) get None: PL/Python's value is left unchanged. ``tz`` (see :func:`session_tzinfo`):
    convert ``timestamptz`` to that zone, as psycopg does.

    ``domains`` maps a domain's OID to its base type's OID (``pg_type.typbasetype``): PL/Python
    reports a domain column by the domain's OID, while the wire protocol (hence psycopg) reports
    the base type, so without it a ``date`` domain would stay a str on the server side.
    """
    scalar = dict(_SCALAR)
    if tz is not None:
        scalar[TIMESTAMPTZ] = _timestamptz_in(tz)
    out: list[Converter | None] = []
    for oid in coltypes:
        if domains:
            seen = 0
            while oid in domains and seen < 32:  # domains over domains
                oid = domains[oid]
                seen += 1
        conv = scalar.get(oid)
        if conv is None:
            elem = ARRAY_ELEMENT.get(oid)
            if elem is not None:
                econv = scalar.get(elem)
                if econv is not None:
                    conv = _array_of(econv)
        out.append(conv)
    return out


def unknown_oids(coltypes: Iterable[int]) -> list[int]:
    """The OIDs this module has no rule for: candidates for a domain lookup by the host."""
    return [o for o in coltypes
            if o not in _SCALAR and o not in ARRAY_ELEMENT and o not in IDENTITY_OIDS]


def convert_value(oid: int, value: Any, *, tz: _dt.tzinfo | None = None) -> Any:
    """Convert one PL/Python value of type ``oid`` (convenience; use converters_for in loops)."""
    if value is None:
        return None
    conv = converters_for([oid], tz=tz)[0]
    return value if conv is None else conv(value)


def apply_converters(colnames: Sequence[str], converters: Sequence[Converter | None],
                     rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Apply per-column ``converters`` (from :func:`converters_for`) to PL/Python rows.

    Returns new dicts (PL/Python's own are left alone). PL/Python rows are dicts, so of two
    columns with the same name only the last survives (psycopg's dict rows do the same); the
    converter of that last column is the one applied, exactly once.
    """
    return apply_converters_in_place(colnames, converters, [dict(r) for r in rows])


def apply_converters_in_place(colnames: Sequence[str],
                              converters: Sequence[Converter | None],
                              rows: list[dict[str, Any]],
                              keep: dict[str, tuple[str, list[Any], list[Any]]] | None = None,
                              ) -> list[dict[str, Any]]:
    """:func:`apply_converters` on row dicts the caller owns (PL/Python's own result rows):
    converted column by column, in place, with C-level maps. Returns ``rows``.

    ``keep``: for columns of :data:`FAST_COLUMN_KINDS`, record ``name -> (kind, values,
    texts)`` so the codec can send PostgreSQL's text instead of re-formatting the values
    (``Rows._wire``)."""
    by_name: dict[str, Converter | None] = {}
    for name, conv in zip(colnames, converters):
        by_name[name] = conv  # last one wins, like the row dict
    for name, conv in by_name.items():
        if conv is None:
            continue
        col = list(map(operator.itemgetter(name), rows))
        fast = (_column_fast(conv, col) if conv in FAST_COLUMN_KINDS and None not in col
                else None)
        if fast is None:
            new = convert_column(conv, col)
        else:
            new = fast
            if keep is not None:  # the codec may send PostgreSQL's text instead (Rows._wire)
                keep[name] = (FAST_COLUMN_KINDS[conv], new, col)
        # dict.__setitem__ over (row, name, value): the loop runs in C
        collections.deque(map(dict.__setitem__, rows, itertools.repeat(name), new), 0)
    return rows


_TZINFO = operator.attrgetter("tzinfo")


def _column_fast(conv: Converter, col: list[Any]) -> list[Any] | None:
    """The whole column through a C-level parser when that gives what ``conv`` gives for
    every value (PostgreSQL's ISO output; Python 3.11+), else None."""
    try:
        if conv is _timestamptz:
            out = list(map(_dt.datetime.fromisoformat, col))
            return out if None not in list(map(_TZINFO, out)) else None
        if conv is _timestamp:
            out = list(map(_dt.datetime.fromisoformat, col))
            return out if set(map(_TZINFO, out)) == {None} else None
        if conv is _date:
            if set(map(len, col)) == {10}:  # YYYY-MM-DD only (10000+ and BC are longer)
                return list(map(_dt.date.fromisoformat, col))
            return None
    except (ValueError, TypeError):
        return None
    return None


#: converters with a column-level fast path; such a column can cross in the codec's row-set
#: form as PostgreSQL's own text (kinds "pgtz", "pgts", "pgdate": codec._dec_pg_column)
FAST_COLUMN_KINDS: dict[Converter, str] = {_timestamptz: "pgtz", _timestamp: "pgts",
                                            _date: "pgdate"}


def convert_column(conv: Converter, col: list[Any]) -> list[Any]:
    """``conv`` applied to every non-NULL value of ``col`` (a new list)."""
    if None in col:
        return [None if v is None else conv(v) for v in col]
    if conv in FAST_COLUMN_KINDS:
        out = _column_fast(conv, col)
        if out is not None:
            return out
    return list(map(conv, col))


def convert_rows(colnames: Sequence[str], coltypes: Sequence[int],
                 rows: Iterable[Mapping[str, Any]], *, tz: _dt.tzinfo | None = None
                 ) -> list[dict[str, Any]]:
    """PL/Python result rows -> new dicts holding the values psycopg 3 returns.

    ``colnames``/``coltypes`` are ``PLyResult.colnames()``/``coltypes()``. For repeated
    queries compute :func:`converters_for` once and call :func:`apply_converters`.
    """
    return apply_converters(colnames, converters_for(coltypes, tz=tz), rows)


# --------------------------------------------------------------------------------------------
# parameters


def _json_default(o: object) -> Any:
    raise TypeError(
        f"cannot send a {type(o).__qualname__} inside a dict parameter: it is sent as JSON, "
        "which only holds None, bool, int, float, str, list and dict (convert it first, e.g. "
        "str(value) or float(value))"
    )


def _check_nul(s: str) -> str:
    if "\x00" in s:
        raise ValueError("a PostgreSQL text parameter cannot contain NUL (\\x00) characters")
    return s


def _float_text(v: float) -> str:
    if v != v:
        return "NaN"
    if v == math.inf:
        return "Infinity"
    if v == -math.inf:
        return "-Infinity"
    return repr(v)


def _interval_text(td: _dt.timedelta) -> str:
    # Explicit signs on every field: unambiguous under every IntervalStyle (in sql_standard a
    # leading '-' would otherwise apply to the following fields too). Parsed exactly.
    return "%+d days %+d seconds %+d microseconds" % (td.days, td.seconds, td.microseconds)


def _no_elements(seq: Sequence[Any]) -> bool:
    return all((type(x) is list or type(x) is tuple) and _no_elements(x) for x in seq)


def _array_text(seq: Sequence[Any]) -> str:
    if _no_elements(seq):
        # [[]] is an empty array for PL/Python; PostgreSQL's array_in rejects '{{}}'
        return "{}"
    parts = []
    for x in seq:
        t = type(x)
        if x is None:
            parts.append("NULL")
        elif t is list or t is tuple:
            parts.append(_array_text(x))
        else:
            s = to_pg_text(x)
            assert s is not None
            parts.append('"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "{" + ",".join(parts) + "}"


_TEXT: dict[type, Callable[[Any], str]] = {
    bool: lambda v: "true" if v else "false",
    int: str,
    float: _float_text,
    Decimal: str,
    str: _check_nul,
    bytes: lambda v: "\\x" + v.hex(),
    bytearray: lambda v: "\\x" + v.hex(),
    memoryview: lambda v: "\\x" + v.tobytes().hex(),
    _dt.date: lambda v: v.isoformat(),
    _dt.time: lambda v: v.isoformat(),
    _dt.datetime: lambda v: v.isoformat(),
    _dt.timedelta: _interval_text,
    dict: lambda v: _check_nul(json.dumps(v, ensure_ascii=False, allow_nan=False,
                                          default=_json_default)),
    list: _array_text,
    tuple: _array_text,
}


def to_pg_text(value: object) -> str | None:
    """``value`` in PostgreSQL's text input syntax (None for NULL), for an untyped parameter.

    Exact types only (a subclass could change ``str()``); lists and tuples become array
    literals with every element double-quoted, dicts become JSON. Raises ``TypeError`` naming
    the type for anything else.
    """
    if value is None:
        return None
    f = _TEXT.get(type(value))
    if f is None:
        if isinstance(value, list):  # Rows and other list subclasses of our own
            return _array_text(value)
        uuid_module = sys.modules.get("uuid")  # no UUID exists before uuid is imported
        if uuid_module is not None and type(value) is uuid_module.UUID:
            _TEXT[uuid_module.UUID] = str
            return str(value)
        raise TypeError(
            f"cannot send a value of type {type(value).__qualname__!r} as a query parameter; "
            "supported: None, bool, int, float, Decimal, str, bytes, bytearray, memoryview, "
            "date, time, datetime, timedelta, UUID, dict (as JSON), list/tuple (as array)"
        )
    return f(value)


_SPACE = " \t\n\r\v\f"


def _bool_in(text: str) -> bool:
    """PostgreSQL's ``boolin``: t/true/y/yes/on/1 and f/false/n/no/off/0, prefixes allowed."""
    s = text.strip(_SPACE).lower()
    n = len(s)
    if n:
        c = s[0]
        if c == "t" and "true".startswith(s) or c == "y" and "yes".startswith(s):
            return True
        if c == "f" and "false".startswith(s) or c == "n" and "no".startswith(s):
            return False
        if c == "o" and n >= 2:
            if "on".startswith(s):
                return True
            if "off".startswith(s):
                return False
        if s == "1":
            return True
        if s == "0":
            return False
    raise DatabaseError(f'invalid input syntax for type boolean: "{text}"', "22P02")


_HEX_SKIP = " \n\t\r"
_OCTAL: re.Pattern[bytes] = _Lazy(  # type: ignore[assignment]
    rb"[0-3][0-7][0-7]")


def _bytea_in(text: str) -> bytes:
    """PostgreSQL's ``byteain`` (hex ``\\x..`` format, else the escape format)."""
    if text.startswith("\\x"):
        h = text[2:]
        if any(c in h for c in _HEX_SKIP):
            h = "".join(c for c in h if c not in _HEX_SKIP)
        try:
            return bytes.fromhex(h)
        except ValueError:
            if len(h) % 2 and all(c in "0123456789abcdefABCDEF" for c in h):
                raise DatabaseError("invalid hexadecimal data: odd number of digits",
                                    "22023") from None
            bad = next((c for c in h if c not in "0123456789abcdefABCDEF"), "?")
            raise DatabaseError(f'invalid hexadecimal digit: "{bad}"', "22023") from None
    if "\\" not in text:
        return text.encode("utf-8")
    out = bytearray()
    raw = text.encode("utf-8")
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c != 0x5C:
            out.append(c)
            i += 1
        elif raw[i + 1:i + 2] == b"\\":
            out.append(0x5C)
            i += 2
        elif _OCTAL.fullmatch(raw, i + 1, i + 4):
            out.append(int(raw[i + 1:i + 4], 8))
            i += 4
        else:
            raise DatabaseError("invalid input syntax for type bytea", "22P02")
    return bytes(out)


def parse_array_literal(text: str) -> list[Any]:
    """Parse a PostgreSQL array literal into nested lists of ``str`` (``None`` for NULL).

    Used when an array-typed parameter is given as a string (PL/Python needs a list). Follows
    ``array_in``: optional ``[lo:hi]=`` decoration (dropped), double-quoted elements with
    backslash escapes, unquoted elements trimmed, unquoted ``NULL`` (any case) is NULL.
    """
    def bad(why: str) -> DatabaseError:
        return DatabaseError(f'malformed array literal: "{text}"', "22P02", detail=why)

    s = text
    i = 0
    n = len(s)
    while i < n and s[i] in _SPACE:
        i += 1
    if i < n and s[i] == "[":
        eq = s.find("=", i)
        if eq < 0:
            raise bad('Missing "=" after array dimensions.')
        i = eq + 1
        while i < n and s[i] in _SPACE:
            i += 1
    if i >= n or s[i] != "{":
        raise bad('Array value must start with "{" or dimension information.')

    def parse(i: int) -> tuple[list[Any], int]:
        # s[i] == "{"
        i += 1
        out: list[Any] = []
        expect_elem = True
        while True:
            while i < n and s[i] in _SPACE:
                i += 1
            if i >= n:
                raise bad("Unexpected end of input.")
            c = s[i]
            if c == "}":
                if out and expect_elem:
                    raise bad('Unexpected "}" character.')
                return out, i + 1
            if not expect_elem:
                if c != ",":
                    raise bad(f'Unexpected "{c}" character.')
                expect_elem = True
                i += 1
                continue
            if c == "{":
                sub, i = parse(i)
                if not sub:  # only the outermost array may be empty
                    raise bad('Unexpected "}" character.')
                out.append(sub)
            elif c == '"':
                buf = []
                i += 1
                while True:
                    if i >= n:
                        raise bad("Unexpected end of input.")
                    c = s[i]
                    if c == "\\":
                        if i + 1 >= n:
                            raise bad("Unexpected end of input.")
                        buf.append(s[i + 1])
                        i += 2
                    elif c == '"':
                        i += 1
                        break
                    else:
                        buf.append(c)
                        i += 1
                out.append("".join(buf))
            else:
                buf = []
                quoted_any = False
                while i < n and s[i] not in ',{}"':
                    if s[i] == "\\":
                        if i + 1 >= n:
                            raise bad("Unexpected end of input.")
                        buf.append(s[i + 1])
                        quoted_any = True
                        i += 2
                    else:
                        buf.append(s[i])
                        i += 1
                if i < n and s[i] in '{"':
                    raise bad(f'Unexpected "{s[i]}" character.')
                word = "".join(buf).strip(_SPACE)
                if not word:
                    raise bad('Unexpected "," character.' if i < n and s[i] == "," else
                              'Unexpected "}" character.')
                out.append(None if not quoted_any and word.upper() == "NULL" else word)
            expect_elem = False

    result, i = parse(i)
    while i < n and s[i] in _SPACE:
        i += 1
    if i != n:
        raise bad("Junk after closing right brace.")
    return result


def _elem_for_plpy(base: str) -> Callable[[Any], Any]:
    if base == "boolean":
        return lambda v: v if type(v) is bool else _bool_in(_text_or_raise(v))
    if base == "bytea":
        return lambda v: bytes(v) if type(v) in (bytes, bytearray, memoryview) else _bytea_in(
            _text_or_raise(v))
    return _text_or_raise


def _text_or_raise(v: Any) -> str:
    s = to_pg_text(v)
    assert s is not None
    return s


def _nested_for_plpy(v: Any, elem: Callable[[Any], Any]) -> Any:
    if v is None:
        return None
    t = type(v)
    if t is list or t is tuple or isinstance(v, list):
        return [_nested_for_plpy(x, elem) for x in v]
    return elem(v)


def plpy_param_converter(typname: str) -> Callable[[object], object]:
    """``to_plpy_param`` for one parameter type, chosen once per plan: most types need only
    ``to_pg_text``; arrays, ``boolean`` and ``bytea`` need the full conversion."""
    if typname.endswith("[]") or typname in ("boolean", "bytea"):
        return lambda value: to_plpy_param(value, typname)
    return to_pg_text


def to_plpy_param(value: object, typname: str) -> object:
    """What to pass to ``plpy.execute(plan, [...])`` for a parameter PostgreSQL typed ``typname``.

    ``typname`` is ``format_type()`` text (``'integer[]'``, ``'timestamp with time zone'``,
    ``'boolean'``, ``'bytea'``); for a domain pass its base type's name (PL/Python converts
    domains through their base type). The result makes PL/Python build the same datum the
    client's text parameter ``to_pg_text(value)`` gives:

    * arrays: a nested list (PL/Python rejects a string for an array type); a string value is
      parsed as an array literal first;
    * ``boolean``: a real bool (PL/Python uses truthiness, so ``'false'`` would be true), from
      the text by PostgreSQL's ``boolin`` rules;
    * ``bytea``: bytes (PL/Python calls ``bytes()`` on the value), from the text by ``byteain``;
    * anything else: ``to_pg_text(value)``, which PL/Python feeds to the type's input function.

    Invalid input raises ``DatabaseError`` with PostgreSQL's SQLSTATE and message.
    """
    if value is None:
        return None
    if typname.endswith("[]"):
        elem = _elem_for_plpy(typname[:-2])
        if type(value) in (list, tuple) or isinstance(value, list):
            return _nested_for_plpy(value, elem)
        return _nested_for_plpy(parse_array_literal(_text_or_raise(value)), elem)
    if typname == "boolean":
        if type(value) is bool:
            return value
        return _bool_in(_text_or_raise(value))
    if typname == "bytea":
        t = type(value)
        if t is bytes or t is bytearray or t is memoryview:
            return bytes(cast("bytes", value))
        return _bytea_in(_text_or_raise(value))
    return to_pg_text(value)
