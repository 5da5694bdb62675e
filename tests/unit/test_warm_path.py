"""The warm in-process path's shortcuts give exactly what the general code gives.

``codec.encode`` writes flat values without its walk (``codec._encode_walk``),
``SpiPort.query`` builds its ``Rows`` and parameters inline, ``engine.decode_args`` skips the
key check of an empty keyword dict, and ``host`` keeps the process id across forks instead of
asking the kernel on every call. No timings here: only that the results are the same.
"""

from __future__ import annotations

import math
import os
from decimal import Decimal
from typing import Any

import pytest

from wormhole.runtime import codec, engine, host, pgtypes, spi
from wormhole.runtime.rows import Rows

RESULTS: list[Any] = [
    None, True, False, 0, -1, 7, 2**63, 10**200, 1 << 12_001, 10**5000, 1.5, -0.0, 1e300,
    math.nan, math.inf, -math.inf, "", "success", "é\u2028\x00\"\\", "\ud800",
    {}, {"username": "user7", "message_count": 20}, {"status": "success", "order_id": 5},
    {"$t": 1}, {"$rows": 1}, {"$": 1}, {"$x": 1, "y": 2}, {"a": None, "b": True, "c": 1.25},
    {"a": math.nan}, {"a": 10**5000}, {"a": 1 << 12_001}, {"a": [1]}, {"a": {"b": 1}},
    {1: "x"}, {"a": Decimal("1.5")}, {"a": b"x"}, {str(i): i for i in range(16)},
    {str(i): i for i in range(17)}, {"a": (1, 2)}, [1, 2], (1, 2), Rows([{"a": 1}], 1),
    Decimal("2.50"), b"\x00",
]


@pytest.mark.parametrize("value", RESULTS, ids=[str(i) for i in range(len(RESULTS))])
def test_encode_shortcut_is_the_walk(value: Any) -> None:
    try:
        expected: Any = codec._encode_walk(value, type(value), "result", codec.MAX_DEPTH)
    except codec.CodecError as exc:
        expected = ("CodecError", str(exc))
    try:
        got: Any = codec.encode(value, root="result")
    except codec.CodecError as exc:
        got = ("CodecError", str(exc))
    assert got == expected


class _IntSub(int):
    def __str__(self) -> str:
        return "42"


def test_encode_refuses_subclasses() -> None:
    with pytest.raises(codec.CodecError):
        codec.encode(_IntSub(1), root="result")
    with pytest.raises(codec.CodecError):
        codec.encode({"a": _IntSub(1)}, root="result")


def test_decode_args_shapes() -> None:
    limits = engine.Limits()
    assert engine.decode_args("[[7],{}]", limits) == ([7], {})
    assert engine.decode_args('[[],{"a":1}]', limits) == ([], {"a": 1})
    with pytest.raises(engine.BadArguments):
        engine.decode_args('[[],{"$d":[[1,2]]}]', limits)  # a dict with an int key
    with pytest.raises(engine.BadArguments):
        engine.decode_args('[[],[]]', limits)
    with pytest.raises(engine.BadArguments):
        engine.decode_args('[[7],{}] x', limits)


# --- SpiPort over a fake plpy -------------------------------------------------------------------

class _Result(list):  # type: ignore[type-arg]
    def __init__(self, rows: list[dict[str, Any]], nrows: int) -> None:
        super().__init__(rows)
        self._n = nrows

    def nrows(self) -> int:
        return self._n

    def colnames(self) -> list[str]:
        return list(self[0]) if self else ["a"]

    def coltypes(self) -> list[int]:
        return [23] * len(self.colnames())  # int4: no conversion


class _Plpy:
    class SPIError(Exception):
        pass

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def execute(self, plan: Any, args: list[Any] | None = None) -> _Result:
        self.sent.append(args)
        return _Result([{"a": 1}, {"a": 2}], 2)


def _port(typnames: list[str]) -> tuple[spi.SpiPort, _Plpy]:
    plpy = _Plpy()
    port = spi.SpiPort(plpy)
    port.plans["SQL"] = spi._Plan(object(), typnames, len(typnames))
    return port, plpy


def test_spi_rows_are_complete_rows() -> None:
    port, _ = _port([])
    for _ in range(2):  # the first execution learns the columns, the second takes the warm path
        rows = port.query("SQL", ())
        assert type(rows) is Rows
        assert rows == [{"a": 1}, {"a": 2}]
        assert rows.rowcount == 2
        for slot in Rows.__slots__:  # every attribute Rows.__init__ sets is set
            getattr(rows, slot)
        assert rows._wire is None


class _Command(_Result):
    """An UPDATE without RETURNING: no rows, no columns, a count."""

    def colnames(self) -> list[str]:
        raise RuntimeError("no result set")  # as plpy raises plpy.Error


def test_spi_commands_give_empty_rows_with_their_count() -> None:
    port, plpy = _port(["integer"])
    plpy.execute = lambda plan, args=None: _Command([], 5)  # type: ignore[method-assign]
    for _ in range(2):
        rows = port.query("SQL", (1,))
        assert type(rows) is Rows and rows == [] and rows.rowcount == 5 and rows._wire is None


def test_spi_several_text_parameters() -> None:
    port, plpy = _port(["bigint", "text", "numeric"])
    port.query("SQL", (5, "a", Decimal("1.50")))
    assert plpy.sent[-1] == ["5", "a", "1.50"]


@pytest.mark.parametrize("value", [7, -3, 2**70, True, False, 1.5, "x", None, Decimal("1.0"),
                                   [1, 2], {"a": 1}])
def test_spi_text_parameters_are_to_pg_text(value: Any) -> None:
    port, plpy = _port(["text"])
    port.query("SQL", (value,))
    assert plpy.sent[-1] == [pgtypes.to_pg_text(value)]


def test_spi_huge_int_parameter_fails_as_before() -> None:
    port, _ = _port(["numeric"])
    with pytest.raises(spi.DatabaseError) as info:
        port.query("SQL", (10**5000,))
    assert info.value.sqlstate == "22023"


def test_spi_boolean_and_array_parameters_keep_their_converters() -> None:
    port, plpy = _port(["boolean", "integer[]"])
    port.query("SQL", ("false", [1, 2]))
    assert plpy.sent[-1] == [False, pgtypes.to_plpy_param([1, 2], "integer[]")]
    assert plpy.sent[-1][0] is False


# --- host -----------------------------------------------------------------------------------------

def test_pid_follows_fork() -> None:
    assert host._pid() == os.getpid()
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        ok = host._pid() == os.getpid() != os.getppid()
        os.write(w, b"1" if ok else b"0")
        os._exit(0)
    os.close(w)
    got = os.read(r, 1)
    os.close(r)
    os.waitpid(child, 0)
    assert got == b"1"
