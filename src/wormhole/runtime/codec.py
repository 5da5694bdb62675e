"""Type-preserving JSON codec for arguments, results and query rows.

Why not pickle: the decode side runs on text produced by a sandboxed worker (and on the client,
on text produced by the database), so decoding must never execute code or construct arbitrary
classes. Why not plain ``json``: a round trip must preserve Python types that SQL and user code
care about (tuple vs list, ``Decimal``, ``datetime`` with its offset, bytes, ...), and plain JSON
silently coerces them (tuple -> list, int keys -> str keys, nan -> invalid JSON).

Format: plain JSON for ``None``, ``bool``, ``int``, finite ``float``, ``str``, ``list`` and
``dict`` with all-``str`` keys (unless it is a single-key dict whose key starts with ``"$"``,
which would be mistaken for a tag). Everything else is a single-key "tag" object::

    {"$t": [...]}                 tuple
    {"$b": "<base64>"}            bytes (bytearray and memoryview encode as bytes)
    {"$n": "1.5"}                 Decimal (str(); NaN, sNaN, Infinity, -0 included)
    {"$f": "nan"|"inf"|"-inf"}    non-finite float
    {"$i": "<hex>"}               int too large for int(str) (Python's 4300-digit limit)
    {"$date": iso}  {"$time": iso}  {"$dt": iso}   (aware values keep their utcoffset)
    {"$td": [days, seconds, microseconds]}
    {"$uuid": "..."}
    {"$d": [[k, v], ...]}         dict with a non-str key, or a single "$..." key
    {"$set": [...]}  {"$fset": [...]}

Encoding accepts exact types only (``type(x) is int``): a subclass may override ``__str__``,
``__iter__``, ``__eq__``... and encoding must never run user code, so the type is checked before
anything else is touched. ``Rows`` (a list subclass of our own) encodes as a plain list.

Decoding never raises anything but :class:`CodecError`, whatever the input text: nesting depth
and text size are bounded, and every tag payload is validated.
"""

from __future__ import annotations

import binascii
import datetime as _dt
import itertools
import math
import operator
import sys
from decimal import Decimal

from .jsonlite import Decoder as _Decoder
from .jsonlite import Encoder as _Encoder
from .rows import Rows

# typing and uuid stay off the import path (a new backend and every worker start import this
# module; uuid imports platform): annotations are never evaluated, and the UUID type is
# registered the first time an encode finds the uuid module loaded (no UUID can exist before).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import uuid
    from collections.abc import Callable
    from typing import Any, NoReturn

__all__ = [
    "CodecError",
    "MAX_DEPTH",
    "MAX_BYTES",
    "encode",
    "encode_query",
    "pg_column",
    "decode",
    "encode_value",
    "decode_value",
]

MAX_DEPTH = 200
"""Maximum container nesting (list, dict, tuple, set, tag payloads count) on both sides."""

MAX_BYTES = 1 << 30
"""Default maximum size of a text to decode (PostgreSQL's own limit for a text value is 1 GB)."""

# Ints whose decimal repr would hit CPython's int_max_str_digits guard (4300 digits by default,
# present in 3.10.7+/3.11) are sent as hex, which has no such limit and parses in linear time.
_BIG_INT = 1 << 12_000  # about 3612 decimal digits, safely under 4300

_SUPPORTED = (
    "None, bool, int, float, str, bytes, bytearray, memoryview, list, tuple, dict, set, "
    "frozenset, Decimal, date, time, datetime, timedelta, UUID, Rows"
)


class CodecError(ValueError):
    """A value cannot be encoded, or a text cannot be decoded (malformed, hostile, too big)."""


class _EncodeFailure(Exception):
    """Internal: carries the offending type name up the stack while the path is collected.

    Building a path string for every element would slow down the common case; instead the path
    segments are prepended only while unwinding after a failure.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.segments: list[str] = []


# --------------------------------------------------------------------------------------------
# encode


def _type_name(obj: object) -> str:
    # Read from the class, never from the instance: no user code runs. A metaclass could
    # still make __qualname__ odd; fall back to the C-level name.
    name = type(obj).__qualname__
    return name if type(name) is str else type(obj).__name__


def _enc(obj: object, depth: int) -> Any:
    """Return a JSON-able equivalent of ``obj``; ``obj`` itself when nothing needs changing.

    ``depth`` is the number of JSON brackets enclosing ``obj`` in the output, so that the limit
    means the same thing here and in :func:`decode` (which counts brackets in the text).
    """
    t = type(obj)
    if t is str or t is bool or obj is None:
        return obj
    if t is int:
        if -_BIG_INT < obj < _BIG_INT:  # type: ignore[operator]
            return obj
        _check_depth(depth + 1)
        return {"$i": format(obj, "x")}
    if t is float:
        if obj - obj == 0.0:  # type: ignore[operator]  # finite (nan - nan and inf - inf are nan)
            return obj
        _check_depth(depth + 1)
        return {"$f": "nan" if obj != obj else ("inf" if obj > 0 else "-inf")}  # type: ignore[operator]
    if t is dict:
        return _enc_dict(obj, depth + 1)  # type: ignore[arg-type]
    if t is list or t is Rows:
        return _enc_list(obj, depth + 1)  # type: ignore[arg-type]
    enc = _TAGGERS.get(t)
    if enc is None:
        raise _EncodeFailure(f"cannot encode value of type {_type_name(obj)!r}")
    if depth >= _max_depth_box[0]:  # every tag opens at least one more level
        raise _EncodeFailure(f"nesting deeper than {_max_depth_box[0]} levels")
    return enc(obj, depth)


def _check_depth(depth: int) -> None:
    if depth > _max_depth_box[0]:
        raise _EncodeFailure(f"nesting deeper than {_max_depth_box[0]} levels")


def _is_plain(values: Any) -> bool:
    """True when every value is JSON-native as is (so the container can be reused unchanged)."""
    for v in values:
        t = type(v)
        if t is str or v is None or t is bool:
            continue
        if t is int:
            if -_BIG_INT < v < _BIG_INT:
                continue
        elif t is float:
            if v - v == 0.0:
                continue
        return False
    return True


def _enc_items(seq: Any, depth: int) -> list[Any]:
    """Encode the members of a list/tuple whose own bracket is at level ``depth``."""
    _check_depth(depth)
    out: list[Any] = []
    append = out.append
    i = -1
    try:
        for v in seq:
            i += 1
            append(_enc(v, depth))
    except _EncodeFailure as f:
        f.segments.append(f"[{i}]")
        raise
    return out


def _enc_list(seq: list[Any], depth: int) -> list[Any]:
    """A list (or Rows) whose bracket is at level ``depth``; returned as is when all plain."""
    _check_depth(depth)
    if _is_plain(seq):
        return seq
    return _enc_items(seq, depth)


def _enc_dict(d: dict[Any, Any], depth: int) -> Any:
    """A dict whose brace is at level ``depth``. All-str keys and plain values: ``d`` itself."""
    _check_depth(depth)
    if not _STR_ONLY.issuperset(map(type, d)) or (len(d) == 1 and next(iter(d))[:1] == "$"):
        return _enc_pairs(d, depth - 1)
    if _is_plain(d.values()):
        return d
    out: dict[str, Any] = {}
    k = ""
    # scalar tags sit one level below this dict: check that once, then dispatch directly
    tags = _SCALAR_TAGS if depth < _max_depth_box[0] else _NO_TAGS
    try:
        for k, v in d.items():
            t = type(v)
            if t is str or v is None or t is bool:
                out[k] = v
            elif t in tags:
                out[k] = tags[t](v)
            else:
                out[k] = _enc(v, depth)
    except _EncodeFailure as f:
        f.segments.append(f"[{k!r}]")
        raise
    return out


_STR_ONLY = frozenset({str})


def _enc_pairs(d: dict[Any, Any], depth: int) -> dict[str, Any]:
    """``{"$d": [[k, v], ...]}`` for the dict at ``depth``: keys and values sit 3 levels in."""
    _check_depth(depth + 3 if d else depth + 2)
    pairs: list[list[Any]] = []
    inner = depth + 3
    for i, (k, v) in enumerate(d.items()):
        try:
            ek = _enc(k, inner)
        except _EncodeFailure as f:
            f.segments.append(f"<key #{i}>")
            raise
        try:
            ev = _enc(v, inner)
        except _EncodeFailure as f:
            # The key encoded fine, so it is made of our own exact types: repr is safe.
            shown = repr(k)
            f.segments.append(f"[{shown}]" if len(shown) <= 60 else f"[<key #{i}>]")
            raise
        pairs.append([ek, ev])
    return {"$d": pairs}


def _enc_tuple(obj: tuple[Any, ...], depth: int) -> dict[str, Any]:
    return {"$t": _enc_items(obj, depth + 2)}


def _enc_set(tag: str) -> Callable[[Any, int], dict[str, Any]]:
    def enc(obj: set[Any] | frozenset[Any], depth: int) -> dict[str, Any]:
        _check_depth(depth + 2)
        items: list[Any] = []
        try:
            for v in obj:  # iterating a set never calls the elements' methods
                items.append(_enc(v, depth + 2))
        except _EncodeFailure as f:
            f.segments.append("{element}")
            raise
        if len(items) > 1:
            # in the order of their text, not of the set: a set of str iterates in an order
            # that differs between processes (hash randomisation), and the same value must
            # be the same text everywhere (the worker's backend compares statements, and the
            # payloads of calls it finishes itself, as text). Sets nested in sets are encoded
            # again at each level (the backend never does it for the worker: sandbox._same)
            items.sort(key=_PLAIN_ENCODER.encode)
        return {tag: items}

    return enc


def _enc_td(o: _dt.timedelta, depth: int) -> dict[str, Any]:
    _check_depth(depth + 2)
    return {"$td": [o.days, o.seconds, o.microseconds]}


_TAGGERS: dict[type, Callable[[Any, int], Any]] = {
    tuple: _enc_tuple,
    bytes: lambda o, d: {"$b": _b64encode(o).decode("ascii")},
    bytearray: lambda o, d: {"$b": _b64encode(bytes(o)).decode("ascii")},
    memoryview: lambda o, d: {"$b": _b64encode(o.tobytes()).decode("ascii")},
    Decimal: lambda o, d: {"$n": str(o)},
    _dt.date: lambda o, d: {"$date": o.isoformat()},
    _dt.time: lambda o, d: {"$time": o.isoformat()},
    _dt.datetime: lambda o, d: {"$dt": o.isoformat()},
    _dt.timedelta: _enc_td,
    set: _enc_set("$set"),
    frozenset: _enc_set("$fset"),
}

# The active depth limit. A one-element list rather than a parameter threaded through every
# call: the recursion is hot and the limit almost never changes. Runtime code is single-threaded
# per process (a backend, the worker); the client only encodes with the default.
_max_depth_box = [MAX_DEPTH]


def encode_value(obj: object, *, root: str = "value", max_depth: int = MAX_DEPTH) -> Any:
    """Return a JSON-able structure (for embedding in a larger message) that decodes to ``obj``.

    The result may share (unmodified) plain containers with ``obj``; serialise it before
    mutating ``obj``. ``root`` names ``obj`` in error messages (``args[1]['when']``).
    """
    if not _UUID_READY and "uuid" in sys.modules:
        _register_uuid()
    old = _max_depth_box[0]
    _max_depth_box[0] = max_depth
    try:
        return _enc(obj, 0)
    except _EncodeFailure as f:
        path = root + "".join(reversed(f.segments))
        if f.reason.startswith("cannot encode"):
            raise CodecError(f"{f.reason} at {path}; supported: {_SUPPORTED}") from None
        raise CodecError(f"cannot encode {path}: {f.reason}") from None
    except RecursionError:
        raise CodecError(f"cannot encode {root}: nesting too deep") from None
    except (ValueError, TypeError, OverflowError) as e:  # e.g. a released memoryview
        raise CodecError(f"cannot encode {root}: {type(e).__name__}: {e}") from None
    finally:
        _max_depth_box[0] = old


# Fast path. Most payloads are lists of flat row dicts. Instead of rebuilding them, check their
# shape with C-speed type sets (``set(map(type, values))``) and let ``json.dumps`` serialise them
# directly, converting the scalar tag types through ``default=``. Anything unusual (tuple, set,
# non-str keys, a "$" key, unsupported types, deep nesting) takes the full walk, which also
# produces the error message with the path. nan/inf floats and oversized ints make
# ``json.dumps`` raise ValueError (allow_nan=False, int_max_str_digits): full walk too.
_SCALAR_TAGS: dict[type, Callable[[Any], dict[str, Any]]] = {
    bytes: lambda o: {"$b": _b64encode(o).decode("ascii")},
    bytearray: lambda o: {"$b": _b64encode(bytes(o)).decode("ascii")},
    memoryview: lambda o: {"$b": _b64encode(o.tobytes()).decode("ascii")},
    Decimal: lambda o: {"$n": str(o)},
    _dt.date: lambda o: {"$date": o.isoformat()},
    _dt.time: lambda o: {"$time": o.isoformat()},
    _dt.datetime: lambda o: {"$dt": o.isoformat()},
    _dt.timedelta: lambda o: {"$td": [o.days, o.seconds, o.microseconds]},
}
_LEAVES = frozenset({str, int, float, bool, type(None)} | set(_SCALAR_TAGS))
_NESTS = frozenset({list, dict, Rows})
_LEAVES_OR_NESTS = _LEAVES | _NESTS
_NESTS_SET_DICT = frozenset({dict})
_chain = itertools.chain.from_iterable


_NO_TAGS: dict[type, Callable[[Any], dict[str, Any]]] = {}


def _default(o: object) -> dict[str, Any]:
    return _SCALAR_TAGS[type(o)](o)  # only reached for types _fast_ok accepted


def _fast_ok(obj: object, max_depth: int) -> bool:
    """True when ``obj`` can go straight to ``json.dumps(default=_default)``.

    Works level by level on all the members of that level at once, with C-level iteration
    (``set(map(type, chain(...)))``), so a list of 100k row dicts costs a few passes in C rather
    than 100k Python-level checks.
    """
    members: list[Any] = [obj]
    depth = 0
    str_only = _STR_ONLY.issuperset
    while True:
        ts = set(map(type, members))
        if ts <= _LEAVES:
            return True
        if not ts <= _LEAVES_OR_NESTS:
            return False
        depth += 1
        if depth + 2 > max_depth:  # a tagged leaf inside may add two brackets
            return False
        if ts <= _NESTS_SET_DICT:
            dicts: list[Any] = members
            lists: list[Any] = []
        else:
            dicts = [m for m in members if type(m) is dict]
            lists = [m for m in members if type(m) is list or type(m) is Rows]
        if dicts:
            if not str_only(map(type, _chain(dicts))):
                return False
            if 1 in map(len, dicts):
                for d in dicts:
                    if len(d) == 1 and next(iter(d))[:1] == "$":
                        return False
        members = list(_chain(map(dict.values, dicts)))
        if lists:
            members.extend(_chain(lists))


#: built once: ``json.dumps`` with options builds a new ``JSONEncoder`` on every call. Same
#: options, same output (``ensure_ascii`` stays on).
_FAST_ENCODER = _Encoder(default=_default, allow_nan=False, separators=(",", ":"))
_PLAIN_ENCODER = _Encoder(allow_nan=False, separators=(",", ":"))

try:  # JSONEncoder.encode builds a C encoder on every call; these are built once (stateless:
    # no circular-reference markers), same options, same output
    from _json import encode_basestring_ascii as _c_ascii
    from _json import make_encoder as _c_make_encoder

    _C_FAST = _c_make_encoder(None, _default, _c_ascii, None, ":", ",", False, False, False)

    def _fast_text(obj: object) -> str:
        return "".join(_C_FAST(obj, 0))
except ImportError:  # pragma: no cover - a Python without the C accelerator
    def _fast_text(obj: object) -> str:
        return _FAST_ENCODER.encode(obj)


def encode(obj: object, *, root: str = "value", max_depth: int = MAX_DEPTH) -> str:
    """Encode ``obj`` as JSON text (ASCII only, so it survives any transport and encoding)."""
    if not _UUID_READY and "uuid" in sys.modules:
        _register_uuid()
    t = type(obj)
    # the commonest values (a scalar; a small dict of str keys and scalars, not one "$" key,
    # which would read as a tag) straight to the C encoder: what the walk below ends up doing
    if max_depth > 2 and (t in _FLAT or (
            t is dict and len(obj) <= 16  # type: ignore[arg-type]
            and _FLAT.issuperset(map(type, obj.values()))  # type: ignore[attr-defined]
            and _STR_ONLY.issuperset(map(type, obj))  # type: ignore[call-overload]
            and (len(obj) != 1 or next(iter(obj))[:1] != "$"))):  # type: ignore[arg-type,call-overload]
        try:
            return _fast_text(obj)
        except (ValueError, OverflowError):
            pass  # nan/inf or an int too long for str(): the walk tags them
    return _encode_walk(obj, t, root, max_depth)


def _encode_walk(obj: object, t: type, root: str, max_depth: int) -> str:
    """:func:`encode` without its shortcut for flat values (which must agree with this)."""
    if t is list or t is Rows:
        if len(obj) >= ROWSET_MIN:  # type: ignore[arg-type]
            text = _rowset_text(obj, 1, max_depth)  # type: ignore[arg-type]
            if text is not None:
                return text
    elif t is dict and len(obj) <= 16:  # type: ignore[arg-type]
        text = _dict_with_rowsets(obj, max_depth)  # type: ignore[arg-type]
        if text is not None:
            return text
    if _fast_ok(obj, max_depth):
        try:
            return _fast_text(obj)
        except (ValueError, OverflowError):
            pass  # nan/inf or an int too long for str(): the full walk tags them
    value = encode_value(obj, root=root, max_depth=max_depth)
    try:
        return _PLAIN_ENCODER.encode(value)
    except (ValueError, TypeError, RecursionError) as e:  # pragma: no cover - guarded above
        raise CodecError(f"cannot encode {root}: {e}") from None


_FLAT = frozenset({str, int, float, bool, type(None)})


def encode_query(sql: str, params: list[Any]) -> str:
    """``encode({"sql": sql, "params": params}, root="params")``, the text of a ``query`` request.

    Parameters that are all scalars (the usual case, ``Decimal`` and dates included) go
    straight to the C encoder, with the same output; anything else takes the full path.
    """
    if _LEAVES.issuperset(map(type, params)):
        try:
            return _fast_text({"sql": sql, "params": params})
        except (ValueError, OverflowError):
            pass  # nan/inf or an int too long for str(): the full walk tags them
    return encode({"sql": sql, "params": params}, root="params")


# --------------------------------------------------------------------------------------------
# row sets: a list of dicts that all have the same keys in the same order (what query() returns)
#
#   {"$rows": [["id", "when"], ["", "dt"], [[1, 2], ["2020-01-02T03:04:05", null]]]}
#
# column names once, then one kind per column, then the values column by column. A kind says
# how the column's non-null values are written: "" plain JSON (str, int, bool, finite float),
# "dt"/"date"/"time" isoformat text, "n" Decimal text, "uuid" text, "b" base64, "td"
# [days, seconds, microseconds], "*" each value encoded like any other value (tags included).
# Decodes to a plain list of dicts, exactly like the row-by-row form. Used for lists of at
# least ROWSET_MIN rows; encoding and decoding a column is a C-level map, not a per-value walk.

ROWSET_MIN = 8
"""Lists shorter than this keep the row-by-row form (small payloads stay as they were)."""

_DICT_ONLY = frozenset({dict})
_NONE_TYPE = type(None)
_PLAIN_COLUMN = frozenset({str, int, bool, float})


def _b64encode(o: bytes) -> bytes:
    """``base64.b64encode(o)`` (the ``base64`` module imports ``re``: ~4 ms of a new worker)."""
    return binascii.b2a_base64(o, newline=False)


_a2b_base64: Any = binascii.a2b_base64  # strict_mode is 3.11's (the stubs checked are 3.10's)


def _b64decode(s: str) -> bytes:
    """``base64.b64decode(s, validate=True)``: only the alphabet and final padding, else
    ``binascii.Error`` (a ``ValueError``)."""
    try:
        return bytes(_a2b_base64(s, strict_mode=True))
    except TypeError:  # pragma: no cover - Python < 3.11: no strict mode
        import base64

        return base64.b64decode(s, validate=True)


def _b64(o: bytes) -> str:
    return _b64encode(o).decode("ascii")


#: column kinds for columns whose non-null values all have one of these exact types
_COLUMN_KINDS: dict[type, tuple[str, Callable[[Any], Any]]] = {
    _dt.datetime: ("dt", _dt.datetime.isoformat),
    _dt.date: ("date", _dt.date.isoformat),
    _dt.time: ("time", _dt.time.isoformat),
    Decimal: ("n", str),
    bytes: ("b", _b64),
    _dt.timedelta: ("td", lambda o: [o.days, o.seconds, o.microseconds]),
}


def _rowset_text(seq: list[Any], depth: int, max_depth: int) -> str | None:
    """The ``$rows`` text for ``seq`` (whose bracket is at level ``depth``), or None when
    ``seq`` is not a row set (or anything in it needs the general path, e.g. for an error
    message with its path)."""
    if not _DICT_ONLY.issuperset(map(type, seq)):
        return None
    names = tuple(seq[0])
    if not names or not _STR_ONLY.issuperset(map(type, names)):
        return None
    if len(names) == 1 and names[0][:1] == "$":
        return None
    if not all(map(names.__eq__, map(tuple, seq))):
        return None
    if depth + 2 > max_depth:
        return None
    kinds: list[str] = []
    texts: list[str] = []
    encoder = _PLAIN_ENCODER.encode
    wire = seq._wire if type(seq) is Rows else None
    try:
        for name in names:
            col = list(map(operator.itemgetter(name), seq))
            if wire is not None and name in wire:
                kind, values, pgtext = wire[name]
                # every row still holds exactly the values PostgreSQL printed as pgtext
                if len(values) == len(col) and all(map(operator.is_, col, values)):
                    kinds.append(kind)
                    texts.append(encoder(pgtext))
                    continue
            ts = set(map(type, col))
            has_none = _NONE_TYPE in ts
            ts.discard(_NONE_TYPE)
            if ts <= _PLAIN_COLUMN:
                kinds.append("")
            elif len(ts) == 1 and next(iter(ts)) in _COLUMN_KINDS:
                kind, fn = _COLUMN_KINDS[next(iter(ts))]
                if kind == "td" and depth + 4 > max_depth:
                    return None
                if has_none:
                    col = [None if v is None else fn(v) for v in col]
                else:
                    col = list(map(fn, col))
                kinds.append(kind)
            else:
                # anything else, value by value as in the row-by-row form; a value sits at
                # the same depth as there (row dict inside this list)
                old = _max_depth_box[0]
                _max_depth_box[0] = max_depth
                try:
                    col = [_enc(v, depth + 1) for v in col]
                finally:
                    _max_depth_box[0] = old
                kinds.append("*")
            texts.append(encoder(col))
    except (_EncodeFailure, ValueError, TypeError, OverflowError, RecursionError):
        return None  # nan/inf, an int too long for str(), an unsupported type: general path
    return ('{"$rows":[' + encoder(names) + "," + encoder(kinds) + ",[" + ",".join(texts)
            + "]]}")


def _dict_with_rowsets(d: dict[Any, Any], max_depth: int) -> str | None:
    """``{"rows": [...row set...], "rowcount": 3}`` and the like: a small str-keyed dict with
    a row set among its values gets that member in the ``$rows`` form."""
    for v in d.values():
        if (type(v) is list or type(v) is Rows) and len(v) >= ROWSET_MIN:
            break
    else:
        return None
    if not _STR_ONLY.issuperset(map(type, d)) or (len(d) == 1 and next(iter(d))[:1] == "$"):
        return None
    found = False
    parts: list[str] = []
    for k, v in d.items():
        t = type(v)
        text = None
        if (t is list or t is Rows) and len(v) >= ROWSET_MIN:
            text = _rowset_text(v, 2, max_depth)
        if text is None:
            try:
                text = encode(v, max_depth=max_depth - 1)
            except CodecError:
                return None  # the general path names the path in its message
        else:
            found = True
        parts.append(_PLAIN_ENCODER.encode(k) + ":" + text)
    if not found:
        return None
    return "{" + ",".join(parts) + "}"


def _dec_column(kind: str, col: list[Any]) -> list[Any]:
    if kind == "" or kind == "*":
        return col  # plain JSON, or already decoded by the parser's hook
    if kind in _PG_KINDS:  # PostgreSQL's ISO text, parsed as the server parsed it
        return _dec_pg_column(kind, col)
    fn = _COLUMN_DECODERS.get(kind)
    if fn is None:
        raise CodecError(f"malformed $rows payload: unknown column kind {kind[:20]!r}")
    try:
        if None in col:
            return [None if v is None else fn(v) for v in col]
        return list(map(fn, col))
    except CodecError:
        raise
    except (ValueError, TypeError, OverflowError) as e:
        raise CodecError(f"malformed $rows {kind!r} column: {type(e).__name__}") from None


# "pgtz" / "pgts" / "pgdate": a timestamptz / timestamp / date column as PostgreSQL printed it
# (ISO DateStyle), sent only when the server read every value of the column with
# datetime.fromisoformat (pgtypes' fast path), so fromisoformat reads it back identically.
# Python 3.10's fromisoformat does not read every such text ("+05" offsets, short fractions):
# the regex below reads the same values there.
_PG_KINDS = frozenset({"pgtz", "pgts", "pgdate"})
_PG_ISO: list[Any] = []  # the pattern, compiled on first use (``re`` costs a new worker ~4 ms)


def _pg_iso(s: Any) -> _dt.datetime:
    if type(s) is not str:
        raise TypeError("expected text")
    if not _PG_ISO:
        import re

        _PG_ISO.append(re.compile(r"(\d{4})-(\d\d)-(\d\d)[ T](\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?"
                                  r"(?:([-+])(\d\d)(?::?(\d\d))?(?::?(\d\d))?)?"))
    m = _PG_ISO[0].fullmatch(s)
    if m is None:
        raise ValueError("not ISO")
    ye, mo, da, ho, mi, se, fr, sgn, oh, om, osec = m.groups()
    tz = None
    if sgn:
        off = _dt.timedelta(hours=int(oh), minutes=int(om or 0), seconds=int(osec or 0))
        tz = _dt.timezone(-off if sgn == "-" else off)
    return _dt.datetime(int(ye), int(mo), int(da), int(ho), int(mi), int(se),
                        int((fr or "0").ljust(6, "0")), tz)


def _dec_pg_column(kind: str, col: list[Any]) -> list[Any]:
    try:
        if kind == "pgdate":
            if not _STR_ONLY.issuperset(map(type, col)) or set(map(len, col)) - {10}:
                raise ValueError("expected YYYY-MM-DD")
            return list(map(_dt.date.fromisoformat, col))
        try:
            out = list(map(_dt.datetime.fromisoformat, col))
        except ValueError:  # Python 3.10
            out = list(map(_pg_iso, col))
        tzs = set(map(operator.attrgetter("tzinfo"), out))
        if (None in tzs) if kind == "pgtz" else (tzs != {None}):
            raise ValueError("wrong time zone presence")
        return out
    except (ValueError, TypeError, OverflowError) as e:
        raise CodecError(f"malformed $rows {kind!r} column: {type(e).__name__}") from None


def pg_column(kind: str, texts: list[Any]) -> list[Any]:
    """A ``pgtz``/``pgts``/``pgdate`` column (PostgreSQL's ISO text) read back into values,
    exactly as ``pgtypes`` read it on the server. Raises ``CodecError`` for anything else."""
    if kind not in _PG_KINDS:
        raise CodecError(f"not a PostgreSQL text column kind: {kind[:20]!r}")
    return _dec_pg_column(kind, texts)


def _dec_rows(p: object) -> list[dict[str, Any]]:
    if type(p) is not list or len(p) != 3:
        _bad("$rows", p, "expected [names, kinds, columns]")
    names, kinds, cols = p
    if (type(names) is not list or type(kinds) is not list or type(cols) is not list
            or not names or len(kinds) != len(names) or len(cols) != len(names)
            or not _STR_ONLY.issuperset(map(type, names))
            or not _STR_ONLY.issuperset(map(type, kinds))
            or len(set(names)) != len(names)
            or set(map(type, cols)) != {list}):
        _bad("$rows", p, "expected [names, kinds, columns] of equal lengths")
    n = len(cols[0])
    if any(len(c) != n for c in cols):
        _bad("$rows", p, "columns of different lengths")
    cols = [_dec_column(k, c) for k, c in zip(kinds, cols)]
    return list(map(dict, map(zip, itertools.repeat(tuple(names)), zip(*cols))))


# --------------------------------------------------------------------------------------------
# decode


def _bad(tag: str, payload: object, why: str = "") -> NoReturn:
    shown = repr(payload)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    raise CodecError(f"malformed {tag} payload {shown}" + (f": {why}" if why else ""))


def _need_str(tag: str, p: object) -> str:
    if type(p) is not str:
        _bad(tag, p, "expected a string")
    return p


def _need_list(tag: str, p: object) -> list[Any]:
    if type(p) is not list:
        _bad(tag, p, "expected a list")
    return p


def _dec_b(p: object) -> bytes:
    s = _need_str("$b", p)
    try:
        return _b64decode(s)
    except (binascii.Error, ValueError) as e:
        _bad("$b", p, str(e))


def _dec_n(p: object) -> Decimal:
    s = _need_str("$n", p)
    if len(s) > 100_000:
        _bad("$n", p, "too long")
    try:
        return Decimal(s)
    except Exception as e:  # decimal.InvalidOperation (an ArithmeticError)
        _bad("$n", p, type(e).__name__)


_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _dec_f(p: object) -> float:
    if type(p) is not str or p not in _FLOATS:
        _bad("$f", p, 'expected "nan", "inf" or "-inf"')
    return _FLOATS[p]


def _dec_i(p: object) -> int:
    s = _need_str("$i", p)
    body = s[1:] if s[:1] == "-" else s
    if not body or not all(c in "0123456789abcdef" for c in body):
        _bad("$i", p, "expected lowercase hex digits")
    return int(s, 16)


def _dec_iso(tag: str, parse: Callable[[str], Any]) -> Callable[[object], Any]:
    def dec(p: object) -> Any:
        s = _need_str(tag, p)
        if len(s) > 64:
            _bad(tag, p, "too long")
        try:
            return parse(s)
        except (ValueError, TypeError, OverflowError) as e:
            _bad(tag, p, str(e))

    return dec


def _dec_td(p: object) -> _dt.timedelta:
    lst = _need_list("$td", p)
    if len(lst) != 3 or any(type(x) is not int for x in lst):
        _bad("$td", p, "expected [days, seconds, microseconds] ints")
    try:
        return _dt.timedelta(days=lst[0], seconds=lst[1], microseconds=lst[2])
    except (OverflowError, ValueError) as e:
        _bad("$td", p, str(e))


def _register_uuid() -> None:
    """Teach the encoder the UUID type (called once the uuid module is loaded)."""
    global _UUID_READY, _LEAVES, _LEAVES_OR_NESTS
    UUID = sys.modules["uuid"].UUID
    _TAGGERS[UUID] = lambda o, d: {"$uuid": str(o)}
    _SCALAR_TAGS[UUID] = lambda o: {"$uuid": str(o)}
    _COLUMN_KINDS[UUID] = ("uuid", str)
    _LEAVES = _LEAVES | {UUID}
    _LEAVES_OR_NESTS = _LEAVES_OR_NESTS | {UUID}
    _UUID_READY = True


_UUID_READY = False


def _dec_uuid(p: object) -> uuid.UUID:
    s = _need_str("$uuid", p)
    if len(s) != 36:
        _bad("$uuid", p, "expected the 36-character hyphenated form")
    try:
        import uuid

        return uuid.UUID(s)
    except ValueError as e:
        _bad("$uuid", p, str(e))


def _dec_t(p: object) -> tuple[Any, ...]:
    return tuple(_need_list("$t", p))


#: the most keys of one decoded set or dict that may share one hash value
MAX_SAME_HASH = 64


def _hashes_spread(tag: str, p: object, keys: list[Any]) -> None:
    """Refuse keys crafted to share one hash value. Only ``str`` hashes are randomised: ints,
    floats, decimals and tuples of them hash the same in every process, so n keys that all
    hash alike (``i * (2**61 - 1)``) make building a set or dict take n² probes, in C, where no
    cancel is noticed (measured: 10,000 of them, 235 KB of arguments, 0.44 s; 64 MB, hours).
    Equal keys (``1``, ``1.0``, ``True``) are one key: counted as they come, they stay few."""
    if len(keys) <= MAX_SAME_HASH:
        return
    #: hash value -> the distinct keys seen with it (a hash value is an int below 2**61: a dict
    #: of them cannot be flooded)
    seen: dict[int, list[Any]] = {}
    try:
        for key in keys:
            h = hash(key)
            alike = seen.get(h)
            if alike is None:
                seen[h] = [key]
            elif key not in alike:  # at most MAX_SAME_HASH comparisons
                if len(alike) >= MAX_SAME_HASH:
                    _bad(tag, p, f"more than {MAX_SAME_HASH} elements share one hash value")
                alike.append(key)
    except TypeError:
        return  # unhashable: building it says so


def _dec_d(p: object) -> dict[Any, Any]:
    lst = _need_list("$d", p)
    out: dict[Any, Any] = {}
    for pair in lst:
        if type(pair) is not list or len(pair) != 2:
            _bad("$d", p, "expected a list of [key, value] pairs")
    _hashes_spread("$d", p, [pair[0] for pair in lst])
    for pair in lst:
        try:
            out[pair[0]] = pair[1]
        except TypeError:
            _bad("$d", p, "unhashable key")
    return out


def _dec_set(tag: str, make: Callable[[list[Any]], Any]) -> Callable[[object], Any]:
    def dec(p: object) -> Any:
        items = _need_list(tag, p)
        _hashes_spread(tag, p, items)
        try:
            return make(items)
        except TypeError:
            _bad(tag, p, "unhashable element")

    return dec


_UNTAGGERS: dict[str, Callable[[object], Any]] = {
    "$t": _dec_t,
    "$b": _dec_b,
    "$n": _dec_n,
    "$f": _dec_f,
    "$i": _dec_i,
    "$date": _dec_iso("$date", _dt.date.fromisoformat),
    "$time": _dec_iso("$time", _dt.time.fromisoformat),
    "$dt": _dec_iso("$dt", _dt.datetime.fromisoformat),
    "$td": _dec_td,
    "$uuid": _dec_uuid,
    "$d": _dec_d,
    "$set": _dec_set("$set", set),
    "$fset": _dec_set("$fset", frozenset),
    "$rows": _dec_rows,
}

#: per-kind decoders of row-set columns; ISO columns are checked to be short strings by the
#: C-level parser itself (fromisoformat rejects anything else with ValueError/TypeError)
_COLUMN_DECODERS: dict[str, Callable[[Any], Any]] = {
    "dt": _dt.datetime.fromisoformat,
    "date": _dt.date.fromisoformat,
    "time": _dt.time.fromisoformat,
    "n": _dec_n,
    "uuid": _dec_uuid,
    "b": _dec_b,
    "td": _dec_td,
}


def _hook(d: dict[str, Any]) -> Any:
    """``json.loads`` object hook: multi-key dicts (the common row case) return at once."""
    if len(d) != 1:
        return d
    for k, v in d.items():
        if k[:1] != "$":
            return d
        untag = _UNTAGGERS.get(k)
        if untag is None:
            shown = k if len(k) <= 40 else k[:37] + "..."
            raise CodecError(f"unknown tag {shown!r}")
        return untag(v)
    return d  # pragma: no cover


def _reject_constant(name: str) -> NoReturn:
    raise CodecError(f"non-standard JSON constant {name!r}")


_CONTAINERS = frozenset({list, dict, tuple, set, frozenset})


def _too_deep(root: object, limit: int) -> bool:
    """True when the decoded ``root`` nests containers more than ``limit`` deep.

    Runs after ``json.loads`` (whose own recursion guard already bounds the C stack), level by
    level over all members of a level at once with C-level iteration, like :func:`_fast_ok`.
    Tags count as one level here (two brackets in the text), so whatever :func:`encode`
    accepts with the same limit decodes.
    """
    members: list[Any] = [root]
    depth = 0
    str_only = _STR_ONLY.issuperset
    while True:
        ts = set(map(type, members))
        if ts.isdisjoint(_CONTAINERS):
            return False
        depth += 1
        if depth > limit:
            return True
        if ts <= _NESTS_SET_DICT:
            dicts: list[Any] = members
            others: list[Any] = []
        else:
            dicts = [m for m in members if type(m) is dict]
            others = [m for m in members if type(m) in _CONTAINERS and type(m) is not dict]
        members = list(_chain(map(dict.values, dicts)))
        if not str_only(map(type, _chain(dicts))):  # tuple/frozenset keys from "$d"
            members.extend([k for k in _chain(dicts) if type(k) is not str])
        if others:
            members.extend(_chain(others))


def decode_value(value: Any, *, max_depth: int = MAX_DEPTH) -> object:
    """Decode a JSON-able structure produced by :func:`encode_value` (already parsed JSON).

    Used when a message was parsed as a whole and carries an encoded value inside it.
    """
    return _walk(value, 0, max_depth)


def _walk(v: Any, depth: int, max_depth: int) -> Any:
    t = type(v)
    if t is list:
        if depth >= max_depth:
            raise CodecError(f"nesting deeper than {max_depth} levels")
        return [_walk(x, depth + 1, max_depth) for x in v]
    if t is dict:
        if depth >= max_depth:
            raise CodecError(f"nesting deeper than {max_depth} levels")
        d = {k: _walk(x, depth + 1, max_depth) for k, x in v.items()}
        try:
            return _hook(d)
        except CodecError:
            raise
        except Exception as e:  # pragma: no cover - defensive
            raise CodecError(f"cannot decode: {type(e).__name__}") from None
    if t is str or t is int or t is bool or v is None:
        return v
    if t is float:
        if v - v != 0.0:
            raise CodecError("non-finite float outside a $f tag")
        return v
    raise CodecError(f"not a JSON value: {t.__name__}")


#: one decoder per process: ``json.loads`` with hooks builds a decoder and a C scanner per call.
_DECODER = _Decoder(object_hook=_hook, parse_constant=_reject_constant)


def decode(text: str | bytes, *, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> object:
    """Decode text produced by :func:`encode`. Raises only :class:`CodecError`.

    ``max_bytes`` bounds the UTF-8 size of the text (checked before parsing); ``max_depth`` the
    nesting of the result (``json.loads``' own recursion guard bounds the stack while parsing;
    its ``RecursionError`` becomes a ``CodecError`` too).
    """
    if isinstance(text, (bytes, bytearray)):
        if len(text) > max_bytes:
            raise CodecError(f"text too large: {len(text)} bytes > {max_bytes}")
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise CodecError(f"text is not UTF-8: {e}") from None
    elif type(text) is not str:
        raise CodecError(f"cannot decode a {type(text).__name__}; expected str or bytes")
    n = len(text)
    if n > max_bytes or (n * 4 > max_bytes and len(text.encode("utf-8", "surrogatepass")) > max_bytes):
        raise CodecError(f"text too large (limit {max_bytes} bytes)")
    try:
        # the C scanner, once (json.loads without its Python frames and whitespace regexes)
        value = _DECODER.decode(text)
    except CodecError:
        raise
    except RecursionError:
        raise CodecError("nesting too deep") from None
    except ValueError as e:  # JSONDecodeError, int digit limit
        raise CodecError(f"invalid JSON: {e}") from None
    except Exception as e:  # defensive: decode must only ever raise CodecError
        raise CodecError(f"cannot decode: {type(e).__name__}: {e}") from None
    # Fewer opening brackets than the limit cannot nest deeper: small messages skip the walk.
    if text.count("[") + text.count("{") > max_depth and _too_deep(value, max_depth):
        raise CodecError(f"nesting deeper than {max_depth} levels")
    return value
