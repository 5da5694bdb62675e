"""JSON from the C accelerator ``_json`` alone, for the runtime's own messages.

``import json`` costs a new worker ~5 ms before it can run anything: ``json.decoder`` and
``json.encoder`` import ``re`` (for regular expressions the C accelerator never uses), and ``re``
imports ``enum``, ``functools`` and ``collections``. The worker's start is on the critical path
of a new connection's first call, so the modules a worker loads (``codec``, ``channel``,
``engine``, ``worker``) use this instead.

Same text and same verdicts as ``json``: encoding is the very C encoder ``json.JSONEncoder``
uses for a one-shot ``encode`` without ``indent``; decoding runs the C scanner once over the
text, skipping JSON whitespace around the value as ``json`` does, and raises ``json``'s own
``JSONDecodeError`` (``json`` is imported only then). A Python without ``_json`` uses
``json`` throughout. User code never sees this module: its ``json`` is the whitelisted one.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only
    from collections.abc import Callable
    from typing import Any

__all__ = ["Decoder", "Encoder", "dumps", "loads"]

_CONSTANTS = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}

_c_make_encoder: Any = None
_c_make_scanner: Any = None
try:
    from _json import encode_basestring as _c_str
    from _json import encode_basestring_ascii as _c_ascii
    from _json import make_encoder as _c_make_encoder
    from _json import make_scanner as _c_make_scanner
except ImportError:  # pragma: no cover - a Python without the C accelerator
    pass


def _no_default(o: object) -> Any:
    raise TypeError(f"Object of type {o.__class__.__name__} is not JSON serializable")


class Encoder:
    """``json.JSONEncoder(default, ensure_ascii, allow_nan, check_circular=False,
    separators)``: ``encode(obj)`` gives the same text. Stateless, so one serves every call
    (without circular-reference markers: the caller bounds depth, or nests nothing)."""

    def __init__(self, *, default: Callable[[Any], Any] | None = None, ensure_ascii: bool = True,
                 allow_nan: bool = True, separators: tuple[str, str] = (", ", ": ")) -> None:
        self._args = (default or _no_default, ensure_ascii, allow_nan, separators)
        if _c_make_encoder is not None:
            self._c = _c_make_encoder(None, default or _no_default,
                                      _c_ascii if ensure_ascii else _c_str, None,
                                      separators[1], separators[0], False, False, allow_nan)
        else:  # pragma: no cover
            import json

            self._py = json.JSONEncoder(default=default, ensure_ascii=ensure_ascii,
                                        allow_nan=allow_nan, check_circular=False,
                                        separators=separators)

    def encode(self, obj: object) -> str:
        if _c_make_encoder is not None:
            return "".join(self._c(obj, 0))
        return self._py.encode(obj)  # pragma: no cover


def dumps(obj: object, *, ensure_ascii: bool = True,
          separators: tuple[str, str] = (", ", ": ")) -> str:
    """``json.dumps(obj, ensure_ascii=..., separators=...)``, circular references refused."""
    if _c_make_encoder is None:  # pragma: no cover
        import json

        return json.dumps(obj, ensure_ascii=ensure_ascii, separators=separators)
    # a fresh encoder with fresh markers: an encoder that raised midway may keep stale ones
    c = _c_make_encoder({}, _no_default, _c_ascii if ensure_ascii else _c_str, None,
                        separators[1], separators[0], False, False, True)
    return "".join(c(obj, 0))


class Decoder:
    """``json.JSONDecoder(object_hook=..., parse_constant=...)``: ``decode(text)`` gives the
    same value or raises the same kind of error (``ValueError``: ``json.JSONDecodeError``).
    ``scan_once(text, idx)`` is the C scanner itself (``(value, end)``, ``StopIteration``
    when there is no value at ``idx``)."""

    # what _json.make_scanner reads from its context (json.JSONDecoder's attributes)
    strict = True
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    def __init__(self, *, object_hook: Callable[[dict[str, Any]], Any] | None = None,
                 parse_constant: Callable[[str], Any] | None = None) -> None:
        self.object_hook = object_hook
        self._constant = parse_constant
        self.parse_constant = parse_constant or _CONSTANTS.__getitem__
        self.memo: dict[str, str] = {}
        self.scan_once: Callable[[str, int], tuple[Any, int]]
        if _c_make_scanner is not None:
            self.scan_once = _c_make_scanner(self)
        else:  # pragma: no cover
            self.scan_once = self._json().scan_once

    def _json(self) -> Any:  # pragma: no cover - a Python without the C accelerator
        import json

        return json.JSONDecoder(object_hook=self.object_hook, parse_constant=self._constant)

    def decode(self, text: str) -> Any:
        """One scan, as ``json.loads``: JSON whitespace around the value is skipped, anything
        else is an error (``json.JSONDecodeError``, imported only then)."""
        start = len(text) - len(text.lstrip(_WHITESPACE))
        try:
            value, end = self.scan_once(text, start)
        except StopIteration as exc:
            raise _decode_error("Expecting value", text, exc.value) from None
        if end != len(text):
            end = len(text) - len(text[end:].lstrip(_WHITESPACE))
            if end != len(text):
                raise _decode_error("Extra data", text, end)
        return value


#: what ``json`` skips around a value (its WHITESPACE pattern)
_WHITESPACE = " \t\n\r"


def _decode_error(message: str, text: str, pos: int) -> ValueError:
    from json import JSONDecodeError  # the same class json raises (a ValueError)

    return JSONDecodeError(message, text, pos)


_LOADS = Decoder()


def loads(text: str) -> Any:
    """``json.loads(text)`` for ``str``."""
    return _LOADS.decode(text)
