"""runtime/channel.py: framing, limits, malformed input, end of file, timeouts."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from wormhole.runtime.channel import (  # noqa: E402
    MAX_HEADER,
    Channel,
    ChannelClosed,
    ProtocolError,
)


@pytest.fixture
def pipes() -> Iterator[tuple[Channel, Channel, list[int]]]:
    """Two channels joined back to back: a -> b and b -> a. The list holds the raw fds."""
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    a = Channel(r2, w1)
    b = Channel(r1, w2)
    fds = [r1, w1, r2, w2]
    yield a, b, fds
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def test_round_trip(pipes: tuple[Channel, Channel, list[int]]) -> None:
    a, b, _ = pipes
    a.send({"op": "call", "id": 1, "hash": "abc"}, b"body \x00\xff bytes")
    assert b.recv(1) == ({"op": "call", "id": 1, "hash": "abc"}, b"body \x00\xff bytes")
    b.send({"op": "done", "id": 1})
    assert a.recv(1) == ({"op": "done", "id": 1}, b"")


def test_many_messages_in_order(pipes: tuple[Channel, Channel, list[int]]) -> None:
    a, b, _ = pipes
    for i in range(50):
        a.send({"op": "rows", "id": i}, str(i).encode())
    assert [b.recv(1) for _ in range(50)] == [({"op": "rows", "id": i}, str(i).encode())
                                              for i in range(50)]


def test_call_messages_travel_with_a_compact_header(
    pipes: tuple[Channel, Channel, list[int]],
) -> None:
    a, b, _ = pipes
    for op in ("call", "rows", "qerr", "query", "done"):
        frame = Channel.frame({"op": op, "id": 7}, b"xyz")
        assert len(frame) == 8 + 7 + 3 and frame[8] == 1  # 7 bytes, not JSON
        a.send({"op": op, "id": 2**32 - 1}, b"xyz")
        assert b.recv(1) == ({"op": op, "id": 2**32 - 1}, b"xyz")
    # anything else keeps its JSON header: other ops, more keys, ids out of range or not ints
    for header in ({"op": "hello", "id": 1}, {"op": "done", "id": 1, "recycle": True},
                   {"op": "done", "id": 2**32}, {"op": "done", "id": -1},
                   {"op": "done", "id": True}, {"op": "done", "id": "1"}, {"op": "done"}):
        assert Channel.frame(header)[8:9] == b"{"
        a.send(header)
        assert b.recv(1) == (header, b"")


def test_unicode_header(pipes: tuple[Channel, Channel, list[int]]) -> None:
    a, b, _ = pipes
    a.send({"op": "qerr", "m": "héllo ✓"})
    assert b.recv(1) == ({"op": "qerr", "m": "héllo ✓"}, b"")


def test_big_body_passes_through_a_small_pipe(pipes: tuple[Channel, Channel, list[int]]) -> None:
    a, b, _ = pipes
    body = os.urandom(3 * 1024 * 1024)  # far bigger than the 64 KiB pipe buffer
    received: list[object] = []
    t = threading.Thread(target=lambda: received.append(b.recv(10)))
    t.start()
    a.send({"op": "done"}, body)
    t.join()
    assert received == [({"op": "done"}, body)]


def test_timeout_returns_none(pipes: tuple[Channel, Channel, list[int]]) -> None:
    _, b, _ = pipes
    begin = time.monotonic()
    assert b.recv(0.05) is None
    assert 0.04 < time.monotonic() - begin < 0.5
    assert b.recv(0) is None


def test_partial_frame_survives_timeouts(pipes: tuple[Channel, Channel, list[int]]) -> None:
    _, b, fds = pipes
    frame = Channel.frame({"op": "done", "id": 3}, b"payload")
    w = fds[1]
    for i in range(len(frame) - 1):
        os.write(w, frame[i:i + 1])
        assert b.recv(0.001) is None
    os.write(w, frame[-1:])
    assert b.recv(0.5) == ({"op": "done", "id": 3}, b"payload")


def test_eof(pipes: tuple[Channel, Channel, list[int]]) -> None:
    a, b, fds = pipes
    a.send({"op": "x"})
    os.close(fds[1])
    assert b.recv(1) == ({"op": "x"}, b"")
    with pytest.raises(ChannelClosed):
        b.recv(1)


def test_eof_in_the_middle_of_a_frame(pipes: tuple[Channel, Channel, list[int]]) -> None:
    _, b, fds = pipes
    os.write(fds[1], Channel.frame({"op": "done"}, b"abcdef")[:-2])
    os.close(fds[1])
    with pytest.raises(ChannelClosed, match="middle of a frame"):
        b.recv(1)


def test_send_to_a_closed_peer(pipes: tuple[Channel, Channel, list[int]]) -> None:
    a, _, fds = pipes
    os.close(fds[0])  # the reading end of a -> b
    with pytest.raises(ChannelClosed):
        a.send({"op": "x"}, b"y" * 100000)


@pytest.mark.parametrize(
    "data, match",
    [
        ((0).to_bytes(4, "big") + (0).to_bytes(4, "big"), "header of 0"),
        ((MAX_HEADER + 1).to_bytes(4, "big") + (0).to_bytes(4, "big"), "header of"),
        ((0xFFFFFFFF).to_bytes(4, "big") + (0).to_bytes(4, "big"), "header of"),
        ((2).to_bytes(4, "big") + (1001).to_bytes(4, "big"), "body of 1001"),
        ((3).to_bytes(4, "big") + (0).to_bytes(4, "big") + b"\xff\xfe\xfd", "not UTF-8"),
        ((5).to_bytes(4, "big") + (0).to_bytes(4, "big") + b"[1,2]", "not a JSON object"),
        ((2).to_bytes(4, "big") + (0).to_bytes(4, "big") + b"{}", "no string 'op'"),
        ((10).to_bytes(4, "big") + (0).to_bytes(4, "big") + b'{"op": 1 }', "no string 'op'"),
        ((3).to_bytes(4, "big") + (0).to_bytes(4, "big") + b"{x}", "not UTF-8 JSON"),
        ((19).to_bytes(4, "big") + (0).to_bytes(4, "big") + b'{"op":"a","n":NaN }', "JSON"),
        # compact headers: exactly 7 bytes, a known op (there are 7: 0..6)
        ((7).to_bytes(4, "big") + (0).to_bytes(4, "big") + b"\x01\x07\x00\x00\x00\x00\x01",
         "compact"),
        ((7).to_bytes(4, "big") + (0).to_bytes(4, "big") + b"\x01\xff\x00\x00\x00\x00\x01",
         "compact"),
        ((6).to_bytes(4, "big") + (0).to_bytes(4, "big") + b"\x01\x01\x00\x00\x00\x00",
         "compact"),
        ((8).to_bytes(4, "big") + (0).to_bytes(4, "big") + b"\x01\x01" + b"\x00" * 6,
         "compact"),
        ((1).to_bytes(4, "big") + (0).to_bytes(4, "big") + b"\x01", "compact"),
    ],
)
def test_malformed_frames(data: bytes, match: str) -> None:
    r, w = os.pipe()
    try:
        b = Channel(r, w, max_frame=1000)
        os.write(w, data)
        with pytest.raises(ProtocolError, match=match):
            b.recv(1)
    finally:
        os.close(r)
        os.close(w)


def test_deeply_nested_header_is_a_protocol_error() -> None:
    r, w = os.pipe()
    try:
        b = Channel(r, w)
        head = b"[" * 60000
        os.write(w, len(head).to_bytes(4, "big") + (0).to_bytes(4, "big"))
        t = threading.Thread(target=os.write, args=(w, head))
        t.start()
        with pytest.raises(ProtocolError):
            b.recv(5)
        t.join()
    finally:
        os.close(r)
        os.close(w)


def test_oversized_body_is_refused_before_it_is_read() -> None:
    r, w = os.pipe()
    try:
        b = Channel(r, w, max_frame=10)
        os.write(w, (12).to_bytes(4, "big") + (11).to_bytes(4, "big"))
        with pytest.raises(ProtocolError, match="body of 11"):
            b.recv(1)
    finally:
        os.close(r)
        os.close(w)


def test_send_validates_the_header() -> None:
    with pytest.raises(TypeError):
        Channel.frame({"no": "op"})
    with pytest.raises(TypeError):
        Channel.frame({"op": 1})
    with pytest.raises(ValueError):
        Channel.frame({"op": "x", "big": "y" * MAX_HEADER})
    with pytest.raises(TypeError):
        Channel.frame({"op": "x"}, "text")  # type: ignore[arg-type]


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError):
        Channel(-1, 1)
    with pytest.raises(ValueError):
        Channel(0, 1, max_frame=-5)
    with pytest.raises(ValueError):
        Channel(0, 1, max_frame=2**31)


def test_send_with_tick_notices_a_peer_that_does_not_read(
    pipes: tuple[Channel, Channel, list[int]],
) -> None:
    a, _, _ = pipes
    ticks: list[float] = []

    class Stop(Exception):
        pass

    def tick() -> None:
        ticks.append(time.monotonic())
        if len(ticks) == 3:
            raise Stop

    begin = time.monotonic()
    with pytest.raises(Stop):
        a.send({"op": "rows"}, b"x" * (1024 * 1024), tick=tick)
    assert time.monotonic() - begin < 0.5
    assert len(ticks) == 3


def test_closed_channel(pipes: tuple[Channel, Channel, list[int]]) -> None:
    a, _, _ = pipes
    a.close()
    with pytest.raises(ChannelClosed):
        a.send({"op": "x"})
    with pytest.raises(ChannelClosed):
        a.recv(0)


def test_own_fds_are_closed() -> None:
    r, w = os.pipe()
    Channel(r, w, own_fds=True).close()
    with pytest.raises(OSError):
        os.fstat(r)
    with pytest.raises(OSError):
        os.fstat(w)


def test_a_spinning_end_gives_its_cpu_away_between_polls(
    pipes: tuple[Channel, Channel, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both ends of a channel often share one CPU (the scheduler wakes one on the other's);
    # a spin that never yields would keep the peer it waits for off that CPU.
    import wormhole.runtime.channel as channel_module

    yields: list[None] = []
    monkeypatch.setattr(channel_module, "_yield", lambda: yields.append(None))
    a, b, _ = pipes
    b.spin = 0.002
    assert b.recv(0) is None  # nothing came: spun, yielding between polls, then gave up
    assert len(yields) > 1
    assert b.spin == 0.0


def test_the_backend_side_never_unpickles_or_unmarshals() -> None:
    # Rows go to the worker as pickle (it trusts its backend); nothing the worker sends may be
    # read that way. The backend's side of the channel is channel.py, sandbox.py, spawn.py
    # (which starts the worker) and jsonlite.py (the JSON both read the worker's frames with).
    import ast

    runtime = SRC / "wormhole" / "runtime"
    for name in ("channel.py", "sandbox.py", "spawn.py", "jsonlite.py"):
        tree = ast.parse((runtime / name).read_text("utf-8"))
        modules = {"pickle", "_pickle", "marshal"}
        readers = {"loads", "load", "Unpickler"}
        loads = [
            node.lineno for node in ast.walk(tree)
            if (isinstance(node, ast.Attribute) and node.attr in readers
                and isinstance(node.value, ast.Name) and node.value.id in modules)
            or (isinstance(node, ast.ImportFrom) and node.module in modules
                and any(alias.name in readers for alias in node.names))
        ]
        # spawn.py's bootstrap text (run inside the worker) is a string, not code here
        assert loads == [], f"{name} deserializes at lines {loads}"


def test_a_peer_on_this_cpu_is_waited_for_by_blocking_not_spinning(
    pipes: tuple[Channel, Channel, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each compact header says which CPU its sender ran on. Waiting for a peer that last wrote
    # from this CPU, a spin would keep it off the CPU it needs (yields do not reliably switch
    # to it): recv blocks at once instead; a peer elsewhere is spun for as before.
    import wormhole.runtime.channel as channel_module

    spins: list[None] = []
    monkeypatch.setattr(channel_module, "_yield", lambda: spins.append(None))
    a, b, _ = pipes
    for here, there, spun in ((3, 3, False), (3, 4, True)):
        monkeypatch.setattr(channel_module, "_cpu", lambda: there)
        a.send({"op": "query", "id": 1})
        monkeypatch.setattr(channel_module, "_cpu", lambda: here)
        assert b.recv(1) == ({"op": "query", "id": 1}, b"")
        assert b.peer_cpu == there
        spins.clear()
        b.spin = 0.001
        assert b.recv(0) is None
        assert bool(spins) is spun
