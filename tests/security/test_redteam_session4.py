"""Red team, session 4: the early worker start (``runtime/spawn.py``, ``_wormhole_worker_hint``,
the boot's ``spawn.prestart``), JSON over ``_json`` alone (``runtime/jsonlite.py``), base64
through ``binascii`` and the channel's compact-frame fast paths.

Attacks and legitimate uses side by side. Three groups:

* **unit**: ``jsonlite`` against ``json`` (hostile text: deep nesting, huge numbers, lone
  surrogates, constants, trailing data, whitespace), the errors every caller maps, base64
  against ``base64.b64decode(validate=True)``, and the channel's one-read fast path against a
  reference parser of the frame format over every way of cutting the byte stream into reads;
* **worker, no database** (real bubblewrap): an early worker whose boot frame does not fit the
  pipe, one that dies between adoption and its boot, a compromised worker that smuggles a
  query behind its answer;
* **live server**: a regular role (``app``, member of ``wormhole_user`` only) against the early
  start: descriptors, one extra process at most, a worker killed or stalled before adoption,
  limits changed after the early start, in-process calls that stop it, a stale or broken hint,
  the hint's privileges, and interrupts delivered while the hint runs.

Its three findings were fixed in the same session and are plain tests now: a cancel or
timeout during the hint was swallowed (``cancel-in-hint``), a pending early worker kept its
enlarged boot pipe (the bootstrap now gives it back), and ``jsonlite`` scanned a text with
surrounding whitespace twice (it scans once now).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wormhole
from tests.helpers import WORKER_PROBE_SQL, bwrap_children, pipe_size, worker_state
from wormhole import remote
from wormhole.runtime import WORKER_MODULES, codec, jsonlite, sandbox, spawn
from wormhole.runtime.channel import (
    _OPS,
    MAX_HEADER,
    Channel,
    ChannelClosed,
    ProtocolError,
    decode_header,
)

_WORKER_TESTS = Path(__file__).resolve().parents[1] / "worker"
if str(_WORKER_TESTS) not in sys.path:
    sys.path.insert(0, str(_WORKER_TESTS))

from worker_support import (  # noqa: E402
    _REASON,
    BWRAP,
    MemoryPort,
    descendants,
    make_call,
    never,
    python_pid,
    worker_sources,
)

needs_worker = pytest.mark.skipif(_REASON is not None, reason=f"needs the worker: {_REASON}")

query = wormhole.query

# =================================================================================================
# unit: jsonlite is json, for hostile text too
# =================================================================================================


def _reject(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _verdict(fn: Any, text: str) -> tuple[str, Any]:
    """("ok", canonical value) or ("error", the builtin error class callers catch)."""
    try:
        value = fn(text)
    except RecursionError:
        return ("error", RecursionError)
    except ValueError:
        return ("error", ValueError)
    # NaN != NaN: compare the canonical text (repr keeps floats exact, -0.0 apart)
    return ("ok", repr(value))


HOSTILE_JSON = [
    "", " ", "\n", "[", "]", "{", "}", "[1,", "[1,]", "{\"a\":1,}", "{\"a\"}", "{1:2}",
    "nul", "tru", "falsey", "'a'", "\"\\x\"", "\"\\u12\"", "\"\\u12g4\"", "\"abc", "\"\x00\"",
    "\"\x1f\"", "\"\x7f\"",
    # constants: refused by parse_constant where the caller rejects them
    "NaN", "-NaN", "Infinity", "-Infinity", "+Infinity", "nan", "inf", "[NaN]",
    "{\"a\": -Infinity}", "1e999999", "-1e999999", "1e-999999",
    # numbers
    "1" * 4300, "1" * 4301, "-" + "9" * 4301, "0" * 2, "01", "-0", "-", "1.", ".5", "1e",
    "1e+", "0x10", "1_000", "1" * 4300 + ".5", "1" * 5000 + "e5",
    # surrogates (escaped: valid JSON; raw ones cannot come out of UTF-8)
    "\"\\ud800\"", "\"\\udc00\"", "\"\\udc00\\ud800\"", "\"\\ud83d\\ude00\"", "\"\ud800\"",
    # whitespace: JSON's four, and what is not JSON whitespace
    " 1", "1 ", "\t1\r\n", "\x0c1", "1\x0c", "\xa01", "1\u2028", "\ufeff1", "\ufeff{}",
    # trailing data
    "1 2", "[1]x", "{}{}", "[] []", "\"a\"\"b\"", "1/*c*/", "[1]\x00",
    # nesting
    "[" * 100_000, "[" * 100_000 + "]" * 100_000, "{\"a\":" * 50_000 + "1" + "}" * 50_000,
    "[" * 50 + "]" * 50, "[{\"a\":[" * 2000 + "]}]" * 2000,
]


@pytest.mark.parametrize("text", HOSTILE_JSON, ids=range(len(HOSTILE_JSON)))
def test_jsonlite_gives_jsons_verdict_on_hostile_text(text: str) -> None:
    assert _verdict(jsonlite.loads, text) == _verdict(json.loads, text)
    ours = jsonlite.Decoder(parse_constant=_reject)
    theirs = json.JSONDecoder(parse_constant=_reject)
    assert _verdict(ours.decode, text) == _verdict(theirs.decode, text)


@pytest.mark.parametrize("text", HOSTILE_JSON, ids=range(len(HOSTILE_JSON)))
def test_every_caller_turns_a_bad_text_into_its_own_error(text: str) -> None:
    bad = _verdict(json.JSONDecoder(parse_constant=_reject).decode, text)[0] == "error"
    # the codec: the backend decodes the worker's query requests with it
    if bad:
        with pytest.raises(codec.CodecError):
            codec.decode(text)
        with pytest.raises(codec.CodecError):
            codec.decode(text.encode("utf-8", "surrogatepass"))
    # the channel's JSON header
    raw = text.encode("utf-8", "surrogatepass")
    try:
        header = decode_header(raw)
    except ProtocolError:
        pass
    else:
        assert not bad and type(header) is dict and type(header["op"]) is str


JSONISH = st.text(alphabet=st.sampled_from(list("[]{}\":,.-+0123456789eEtrufalsnNIiy \t\n\r\\u/")
                                           + ["\x0c", "\xa0", "\ud800", "\udc00", "\ufeff",
                                              "\x00", "é"]), max_size=40)


@settings(deadline=None, max_examples=400)
@given(JSONISH)
def test_jsonlite_gives_jsons_verdict_on_any_text(text: str) -> None:
    assert _verdict(jsonlite.loads, text) == _verdict(json.loads, text)
    ours = jsonlite.Decoder(parse_constant=_reject)
    theirs = json.JSONDecoder(parse_constant=_reject)
    assert _verdict(ours.decode, text) == _verdict(theirs.decode, text)


def test_a_worker_without_json_still_raises_value_and_recursion_errors() -> None:
    """The C scanner imports ``json.decoder`` only to raise: errors are still ``ValueError``
    (or ``RecursionError``) in a process that never imported ``json`` (a new worker)."""
    code = (
        "import sys\n"
        "ns = {'__name__': 'jsonlite'}\n"
        f"exec(compile(open({jsonlite.__file__!r}).read(), 'jsonlite', 'exec'), ns)\n"
        "assert 'json' not in sys.modules\n"
        "dec = ns['Decoder'](parse_constant=lambda n: (_ for _ in ()).throw(ValueError(n)))\n"
        "out = []\n"
        "for t in ['[1,', '1' * 5000, '[' * 100000, 'NaN', ' 1 x', '', '\"\\\\ud800']:\n"
        "    try:\n"
        "        dec.decode(t)\n"
        "        out.append('ok')\n"
        "    except RecursionError:\n"
        "        out.append('RecursionError')\n"
        "    except ValueError:\n"
        "        out.append('ValueError')\n"
        "    except BaseException as e:\n"
        "        out.append('other:' + type(e).__name__)\n"
        "print(','.join(out))\n"
    )
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == ",".join(["ValueError", "ValueError", "RecursionError", "ValueError",
                            "ValueError", "ValueError", "ValueError"])


def test_jsonlite_runs_the_object_hook_once_per_object_like_json() -> None:
    for text in ('{"a": 1} ', ' {"a": 1}', '[{}, {}] x'):
        seen: list[Any] = []
        ours = jsonlite.Decoder(object_hook=lambda d: seen.append(d) or d)
        theirs: list[Any] = []
        ref = json.JSONDecoder(object_hook=lambda d: theirs.append(d) or d)
        assert _verdict(ours.decode, text)[0] == _verdict(ref.decode, text)[0]
        assert len(seen) == len(theirs), text


# =================================================================================================
# unit: base64 through binascii is base64.b64decode(validate=True)
# =================================================================================================


def _b64_verdict(fn: Any, s: str) -> tuple[str, Any]:
    try:
        return ("ok", fn(s))
    except ValueError:  # binascii.Error is a ValueError
        return ("error", None)


B64_HOSTILE = [
    "", "=", "==", "===", "====", "A", "AA", "AAA", "AAAA", "AA=", "AA==", "AA===", "AAA=",
    "AAA==", "A===", "=AAA", "AA=A", "AA==AA==", "AAAA====", "AAAA=", "AAAAA", "AA==\n",
    "AA ==", " AAAA", "AAAA\n", "A\nAAA", "AA-_", "AA+/", "QUJD", "QUJDRA==", "QUJDRA=",
    "QUJDRA", "QUJDRA===", "QU\x00JD", "QUJD\u00e9", "QUJD\ud800", "\uff21\uff21\uff21\uff21",
    "QUJD\t", "QUJD\r\n", "YQ", "YR==", "YQ==", "YW=", "AAAA" * 1000 + "=",
]


@pytest.mark.parametrize("s", B64_HOSTILE, ids=range(len(B64_HOSTILE)))
def test_b64_decoding_gives_the_validating_decoders_verdict(s: str) -> None:
    ref = _b64_verdict(lambda t: base64.b64decode(t, validate=True), s)
    assert _b64_verdict(codec._b64decode, s) == ref
    # through the codec: bytes, or a CodecError (never another exception)
    text = json.dumps({"$b": s})
    if ref[0] == "ok":
        assert codec.decode(text) == ref[1]
    else:
        with pytest.raises(codec.CodecError):
            codec.decode(text)


@settings(deadline=None, max_examples=400)
@given(st.text(alphabet=st.sampled_from(list("AQgw+/=-_ \n\t\x00é") + ["\ud800", "\uff21"]),
               max_size=24))
def test_b64_decoding_gives_the_validating_decoders_verdict_on_any_text(s: str) -> None:
    ref = _b64_verdict(lambda t: base64.b64decode(t, validate=True), s)
    assert _b64_verdict(codec._b64decode, s) == ref


@settings(deadline=None, max_examples=200)
@given(st.binary(max_size=64))
def test_b64_round_trips_like_base64(data: bytes) -> None:
    assert codec._b64encode(data) == base64.b64encode(data)
    assert codec.decode(codec.encode(data)) == data


# =================================================================================================
# unit: the channel's one-read fast path is the reassembling parser, for any cut of the stream
# =================================================================================================

SMALL_MAX_FRAME = 64


def _prefix(hlen: int, blen: int) -> bytes:
    return hlen.to_bytes(4, "big") + blen.to_bytes(4, "big")


def _compact(op: int, cpu: int, call_id: int, body: bytes = b"", hlen: int = 7,
             blen: int | None = None) -> bytes:
    head = (bytes([1, op, cpu]) + call_id.to_bytes(4, "big") + b"\0" * 16)[:hlen]
    return _prefix(hlen, len(body) if blen is None else blen) + head + body


def _json_frame(head: bytes, body: bytes = b"") -> bytes:
    return _prefix(len(head), len(body)) + head + body


_bodies = st.one_of(st.binary(max_size=16),
                    st.binary(min_size=SMALL_MAX_FRAME - 2, max_size=SMALL_MAX_FRAME + 2))


def _lying_length(hlen: int, op: int, cpu: int, call_id: int, body: bytes) -> bytes:
    # all seven bytes of a compact header, and a header length field that says otherwise
    return _prefix(hlen, len(body)) + bytes([1, op, cpu]) + call_id.to_bytes(4, "big") + body


_LYING_HLEN = [0, 1, 2, 6, 8, 15, MAX_HEADER + 1]
_frames = st.one_of(
    # well-formed compact frames (some bodies over the limit)
    st.builds(_compact, st.integers(0, 4), st.integers(0, 255), st.integers(0, 2**32 - 1),
              _bodies),
    # op index out of range
    st.builds(_compact, st.integers(5, 255), st.integers(0, 255), st.integers(0, 2**32 - 1),
              _bodies),
    # the compact marker with a wrong header length
    st.builds(_compact, st.integers(0, 4), st.integers(0, 255), st.integers(0, 99), _bodies,
              st.sampled_from([1, 2, 6, 8, 9, 15])),
    # a compact header whose length field lies
    st.builds(_lying_length, st.sampled_from(_LYING_HLEN), st.integers(0, 4),
              st.integers(0, 255), st.integers(0, 2**32 - 1), _bodies),
    # a body length that lies about what follows (longer or shorter)
    st.builds(lambda op, body, delta: _compact(op, 0, 1, body, blen=max(0, len(body) + delta)),
              st.integers(0, 4), _bodies, st.integers(-3, 3)),
    # JSON headers, good and bad
    st.builds(_json_frame, st.sampled_from([
        b'{"op":"done","id":1}', b'{"op":"done","id":2,"recycle":true}', b'{"op":"x"}',
        b'{"op":1}', b"[]", b'"op"', b'{"op":"x","n":NaN}', b'{"op":"x"} x', b" {\"op\":\"x\"}",
        b"{\xff}", b'{"op":"\\ud800"}', b"{", b"\x02\x03", b"\x01",
    ]), _bodies),
    # impossible header lengths (prefix only) and plain garbage
    st.builds(_prefix, st.sampled_from([0, MAX_HEADER + 1, 2**32 - 1]), st.integers(0, 10)),
    st.binary(min_size=1, max_size=20),
)


def _reference(stream: bytes, max_frame: int) -> tuple[list[tuple[dict[str, Any], bytes, int]],
                                                           str]:
    """The frame format as documented (channel.py's module docstring), parsed from the whole
    stream at once: the frames, then "eof", "eof-mid" or "error"."""
    out: list[tuple[dict[str, Any], bytes, int]] = []
    i = 0
    dec = json.JSONDecoder(parse_constant=_reject)
    while True:
        if len(stream) - i < 8:
            return out, "eof" if i == len(stream) else "eof-mid"
        hlen = int.from_bytes(stream[i:i + 4], "big")
        blen = int.from_bytes(stream[i + 4:i + 8], "big")
        if hlen == 0 or hlen > MAX_HEADER or blen > max_frame:
            return out, "error"
        if len(stream) - i < 8 + hlen + blen:
            return out, "eof-mid"
        head = stream[i + 8:i + 8 + hlen]
        body = stream[i + 8 + hlen:i + 8 + hlen + blen]
        i += 8 + hlen + blen
        if head[0] == 1:
            if hlen != 7 or head[1] >= len(_OPS):
                return out, "error"
            out.append(({"op": _OPS[head[1]], "id": int.from_bytes(head[3:7], "big")}, body,
                        -1 if head[2] == 255 else head[2]))
            continue
        try:
            header = dec.decode(head.decode("utf-8"))
        except ValueError:
            return out, "error"
        if type(header) is not dict or type(header.get("op")) is not str:
            return out, "error"
        out.append((header, body, -2))  # -2: a JSON header leaves peer_cpu as it was


def _through_channel(chunks: list[bytes], max_frame: int) -> tuple[
        list[tuple[dict[str, Any], bytes, int]], str]:
    """Write each chunk whole, then let the channel read it (one read per chunk: each is at
    most the 64 KiB a read asks for), as a worker's writes arrive at the backend."""
    r, w = os.pipe()
    chan = Channel(r, os.open(os.devnull, os.O_WRONLY), max_frame, own_fds=True)
    got: list[tuple[dict[str, Any], bytes, int]] = []

    def take(timeout: float | None) -> bool:
        frame = chan.recv(timeout)
        if frame is None:
            return False
        got.append((frame[0], frame[1], chan.peer_cpu))
        return True

    try:
        for chunk in chunks:
            os.write(w, chunk)
            while take(0.002):
                pass
        os.close(w)
        w = -1
        while take(None):
            pass
    except ProtocolError:
        return got, "error"
    except ChannelClosed as exc:
        return got, "eof-mid" if "middle" in str(exc) else "eof"
    finally:
        if w >= 0:
            os.close(w)
        chan.close()
    raise AssertionError("recv(None) returned None")  # pragma: no cover


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_frames, min_size=1, max_size=5), st.data())
def test_the_fast_path_accepts_exactly_what_the_reassembling_parser_accepts(
    frames: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(frames)
    mode = data.draw(st.sampled_from(["per-frame", "random", "whole", "bytes"]))
    if mode == "per-frame":  # each read exactly one frame: the fast path's case
        chunks = frames
    elif mode == "whole":
        chunks = [stream]
    elif mode == "bytes":
        chunks = [stream[i:i + 1] for i in range(min(len(stream), 40))] + [stream[40:]]
    else:
        cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(stream) - 1)), max_size=6)))
        bounds = [0, *cuts, len(stream)]
        chunks = [stream[a:b] for a, b in zip(bounds, bounds[1:])]
    chunks = [c for c in chunks if c]
    ref_frames, ref_end = _reference(stream, SMALL_MAX_FRAME)
    got_frames, got_end = _through_channel(chunks, SMALL_MAX_FRAME)
    assert got_end == ref_end
    assert [(h, b) for h, b, _ in got_frames] == [(h, b) for h, b, _ in ref_frames]
    for (_, _, got_cpu), (_, _, ref_cpu) in zip(got_frames, ref_frames):
        if ref_cpu != -2:
            assert got_cpu == ref_cpu


@pytest.mark.parametrize("blen", [SMALL_MAX_FRAME, SMALL_MAX_FRAME + 1])
def test_one_read_of_exactly_one_oversized_compact_frame_is_refused(blen: int) -> None:
    frame = _compact(4, 3, 9, b"x" * blen)
    got, end = _through_channel([frame], SMALL_MAX_FRAME)
    if blen <= SMALL_MAX_FRAME:
        assert got == [({"op": "done", "id": 9}, b"x" * blen, 3)] and end == "eof"
    else:
        assert got == [] and end == "error"


@pytest.mark.parametrize("hlen", _LYING_HLEN)
def test_a_compact_header_with_a_lying_length_field_is_refused_in_one_read(hlen: int) -> None:
    frame = _lying_length(hlen, 4, 0, 1, b'{"ok":1,"out":[]}')
    got, end = _through_channel([frame], 1 << 20)
    assert got == [] and (got, end) == _reference(frame, 1 << 20)
    assert end == ("eof-mid" if 7 < hlen <= MAX_HEADER else "error")


def test_a_fast_path_frame_is_returned_before_a_later_reads_garbage() -> None:
    # read 1 is exactly one frame (fast path); read 2 is garbage: the frame, then the error
    got, end = _through_channel([_compact(3, 1, 5, b"q"), b"\x00" * 8], 1 << 20)
    assert got == [({"op": "query", "id": 5}, b"q", 1)] and end == "error"
    # a frame followed by a partial one in the same read: never the fast path, one frame, then
    # the partial one is "in the middle" at end of file
    got, end = _through_channel([_compact(4, 1, 6, b"a") + _compact(4, 1, 7, b"b")[:10]], 1 << 20)
    assert got == [({"op": "done", "id": 6}, b"a", 1)] and end == "eof-mid"


_ids = st.one_of(st.integers(-2, 2**32 + 1), st.booleans(), st.text(max_size=3), st.none(),
                 st.floats(allow_nan=False))


@settings(deadline=None, max_examples=300)
@given(st.sampled_from([*_OPS, "boot", "hello", "", "x"]), _ids,
       st.sampled_from([None, "recycle"]), st.binary(max_size=40))
def test_send_writes_what_frame_builds_and_the_peer_reads_it_back(
    op: str, call_id: Any, extra: str | None, body: bytes
) -> None:
    header: dict[str, Any] = {"op": op, "id": call_id}
    if extra:
        header[extra] = True
    try:
        expected = Channel.frame(header, body)
    except (TypeError, ValueError) as exc:
        r, w = os.pipe()
        chan = Channel(r, w, own_fds=True)
        try:
            with pytest.raises(type(exc)):
                chan.send(header, body)
        finally:
            chan.close()
        return
    r, w = os.pipe()
    devnull = os.open(os.devnull, os.O_RDONLY)
    sender = Channel(devnull, w)
    try:
        sender.send(header, body)
    finally:
        os.close(w)
        os.close(devnull)
    try:
        data = os.read(r, len(expected) + 100)
    finally:
        os.close(r)
    if expected[8] == 1:  # compact: only the CPU byte may differ (the CPU the sender ran on)
        assert data[:10] + data[11:] == expected[:10] + expected[11:]
    else:
        assert data == expected
    r2, w2 = os.pipe()
    os.write(w2, data)
    os.close(w2)
    back = Channel(r2, os.open(os.devnull, os.O_WRONLY), own_fds=True)
    try:
        assert back.recv(None) == (json.loads(json.dumps(header)), body)
    finally:
        back.close()


# =================================================================================================
# worker, no database: early workers that misbehave between their start and their first call
# =================================================================================================

ADD = "def f(a, b):\n    return a + b\n"


@pytest.fixture
def compiled() -> dict[str, bytes]:
    import marshal

    sources = worker_sources()
    return {name: marshal.dumps(compile(sources[name], f"<wormhole runtime {name}>", "exec"))
            for name in WORKER_MODULES}


@pytest.fixture
def small_boot_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    """F_SETPIPE_SZ refused (a user over pipe-user-pages-soft): the boot frame does not fit."""
    real = fcntl.fcntl

    def refuse(fd: int, cmd: int, *args: Any) -> Any:
        if cmd == fcntl.F_SETPIPE_SZ:
            raise PermissionError(1, "Operation not permitted")
        return real(fd, cmd, *args)

    monkeypatch.setattr(fcntl, "fcntl", refuse)


@pytest.fixture(autouse=True)
def _no_leftover_early_worker() -> Any:
    yield
    spawn.discard_prestarted()


def _status(pid: int) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


@needs_worker
def test_an_early_worker_whose_boot_frame_does_not_fit_its_pipe_gets_the_rest_on_adoption(
    compiled: dict[str, bytes], small_boot_pipe: None
) -> None:
    assert spawn.prestart(compiled, WORKER_MODULES, bwrap=BWRAP)
    rest = spawn._EARLY[0][3]
    assert len(rest) > 0  # the precondition: part of the frame is still to be sent
    ex = sandbox.WorkerExecutor(lambda: pytest.fail("no boot frame needed"), bwrap=BWRAP,
                                adopt=True)
    try:
        assert json.loads(ex.run(make_call(ADD, 2, 3, memory_mb=300), MemoryPort(),
                                 never))["ok"] == 5
        assert ex.adopted and ex.starts == 1
        pid = python_pid(ex)
        assert sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd")) == [0, 1, 2]
        status = _status(pid)
        assert status["Seccomp"] == "2" and status["NoNewPrivs"] == "1"
        assert json.loads(ex.run(make_call(ADD, 1, 1, memory_mb=300), MemoryPort(),
                                 never))["ok"] == 2
    finally:
        ex.close()


@needs_worker
def test_an_early_worker_that_dies_during_its_boot_is_a_clean_error_then_replaced(
    compiled: dict[str, bytes], small_boot_pipe: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Adopted alive, killed before the rest of its boot frame is written: the call fails with
    WorkerCrashed (no hang on the half-written pipe) and the next call starts a new worker."""
    assert spawn.prestart(compiled, WORKER_MODULES, bwrap=BWRAP)
    assert spawn._EARLY[0][3]
    real_take = sandbox.take_prestarted

    def take_then_die(argv: list[str]) -> Any:
        taken = real_take(argv)
        assert taken is not None
        taken[0].kill()
        taken[0].wait(5.0)
        return taken

    monkeypatch.setattr(sandbox, "take_prestarted", take_then_die)
    ex = sandbox.WorkerExecutor(worker_sources(), bwrap=BWRAP, adopt=True)
    try:
        with pytest.raises(sandbox.WorkerCrashed):
            ex.run(make_call(ADD, 2, 3), MemoryPort(), never)
        assert ex.worker_pid is None and ex.adopted
        assert json.loads(ex.run(make_call(ADD, 4, 5), MemoryPort(), never))["ok"] == 9
        assert ex.starts == 2 and not ex.adopted
    finally:
        ex.close()


RETURN_ONE = "def f():\n    return 1\n"


def _evil_worker(main_body: str) -> dict[str, str]:
    evil = dict(worker_sources())
    evil["worker"] = (
        "import os, time\n"
        "from .channel import Channel\n"
        "def compact(op, cpu, cid, body=b''):\n"
        "    head = bytes([1, op, cpu]) + cid.to_bytes(4, 'big')\n"
        "    return (7).to_bytes(4, 'big') + len(body).to_bytes(4, 'big') + head + body\n"
        "def main(rfd, wfd):\n"
        "    chan = Channel(rfd, wfd, 1 << 29)\n"
        "    chan.recv(None)  # hello\n"
        "    head, body = chan.recv(None)  # call\n"
        "    cid = head['id']\n"
        + "".join("    " + line + "\n" for line in main_body.splitlines())
        + "    chan.recv(None)\n"
        "    time.sleep(30)\n"
    )
    return evil


@needs_worker
def test_a_query_smuggled_behind_an_answer_is_never_served() -> None:
    """One write: the answer to call 1, then a query for call 1. The backend returns the answer;
    the smuggled query, read during call 2, names a finished call: the worker is stopped and
    nothing is queried."""
    port = MemoryPort()
    sql = b'{"sql":"SELECT * FROM users","params":[]}'
    ex = sandbox.WorkerExecutor(_evil_worker(
        f"os.write(wfd, compact(4, 0, cid, b'{{\"ok\":1,\"out\":[]}}') + compact(3, 0, cid, {sql!r}))"
    ), bwrap=BWRAP)
    try:
        assert ex.run(make_call(RETURN_ONE), port, never) == '{"ok":1,"out":[]}'
        with pytest.raises(sandbox.WorkerCrashed) as info:
            ex.run(make_call(RETURN_ONE), port, never)
        assert "malformed" in info.value.reason
        assert port.log == [] and ex.worker_pid is None
    finally:
        ex.close()


@needs_worker
def test_a_legitimate_query_and_answer_in_one_write_are_served_in_order() -> None:
    # legitimate side: a query then (in the same write, before the rows came back) nothing else;
    # the answer after the rows
    port = MemoryPort()
    sql = b'{"sql":"SELECT * FROM users","params":[]}'
    ex = sandbox.WorkerExecutor(_evil_worker(
        f"os.write(wfd, compact(3, 0, cid, {sql!r}))\n"
        "chan.recv(None)  # rows\n"
        "os.write(wfd, compact(4, 0, cid, b'{\"ok\":2,\"out\":[]}'))"
    ), bwrap=BWRAP)
    try:
        assert ex.run(make_call(RETURN_ONE), port, never) == '{"ok":2,"out":[]}'
        assert port.log == [("SELECT * FROM users", [])]
    finally:
        ex.close()


# =================================================================================================
# live server: a regular role against the early start
# =================================================================================================

UNKNOWN = "ab" * 32  # well-formed, never installed: the hint says "worker", the call fails


@remote
def doubled(x):
    return int(query("SELECT $1::int * 2 AS v", x)[0]["v"])  # (the worker runs it)


@pytest.fixture
def probe(db: Any) -> Any:
    """``wh_worker()``: a superuser's helper reading the backend's executor (test only)."""
    db.setup_sql(WORKER_PROBE_SQL, grant=False)
    with psycopg.connect(db.dsn(), autocommit=True) as c, wormhole.connection(c):
        doubled.install()
    return db


_state = worker_state
_children = bwrap_children


def _python_under(root: int) -> int:
    for _ in range(200):
        for pid in descendants(root):
            try:
                if "python" in os.readlink(f"/proc/{pid}/exe"):
                    return pid
            except OSError:
                continue
        time.sleep(0.01)
    raise AssertionError("no python under the worker's bwrap")


def _fd_targets(pid: int) -> dict[int, str]:
    out = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
    return out


_pipe_size = pipe_size


def _pipe_queued(pid: int, fd: int) -> int:
    """Bytes waiting in the pipe at descriptor ``fd`` of process ``pid`` (FIONREAD)."""
    import array
    import termios

    mine = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK)
    try:
        buf = array.array("i", [0])
        fcntl.ioctl(mine, termios.FIONREAD, buf)
        return buf[0]
    finally:
        os.close(mine)


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in "ZX"
    except FileNotFoundError:
        return True


def _pending(db: Any, hash_: str = UNKNOWN) -> Any:
    """A new connection whose first wormhole_execute failed before the host chose where it
    runs (no such function): the early worker it started is pending, never adopted yet."""
    c = psycopg.connect(db.dsn(), autocommit=True)
    c.execute("SET statement_timeout = '30s'")
    with pytest.raises(psycopg.Error):
        c.execute("SELECT wormhole_execute(%s, '[[],{}]')", (hash_,))
    return c


def _call(c: Any, x: int) -> int:
    with wormhole.connection(c):
        return doubled(x)


@needs_worker
def test_a_pending_early_worker_holds_nothing_of_the_backend(probe: Any) -> None:
    with _pending(probe) as c:
        backend = c.info.backend_pid
        assert _state(c)["pending"] == 1
        (root,) = _children(backend)
        py = _python_under(root)
        # the worker's python: its channel and stderr, nothing else
        assert sorted(_fd_targets(py)) == [0, 1, 2]
        assert all(t.startswith("pipe:") for t in _fd_targets(py).values())
        # bubblewrap: the same three pipes, and only descriptors it made itself
        backend_files = {t for t in _fd_targets(backend).values() if not t.startswith("pipe:")
                         and not t.startswith("anon_inode:")}
        for pid in (root, *descendants(root)):
            targets = _fd_targets(pid)
            assert [targets[fd] for fd in (0, 1, 2)] == [_fd_targets(py)[fd] for fd in (0, 1, 2)]
            extra = {fd: t for fd, t in targets.items() if fd > 2}
            assert all(t.startswith("anon_inode:") for t in extra.values()), (pid, extra)
            assert not set(targets.values()) & backend_files
        with open(f"/proc/{py}/environ", "rb") as f:
            env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if item)
        assert set(env) <= {b"PWD", b"LC_CTYPE"}
        assert os.getsid(root) == root


@needs_worker
def test_failed_first_calls_never_start_a_second_early_worker(probe: Any) -> None:
    with _pending(probe) as c:
        backend = c.info.backend_pid
        (early,) = _children(backend)
        for h in ("cd" * 32, "ef" * 32, UNKNOWN):  # more failing calls: the runtime is booted
            with pytest.raises(psycopg.Error):
                c.execute("SELECT wormhole_execute(%s, '[[],{}]')", (h,))
        # a DBA-style direct boot by the regular role starts nothing either
        c.execute("SELECT public._wormhole_boot()")
        assert _children(backend) == [early]
        # legitimate: the next real call adopts that very worker
        assert _call(c, 21) == 42
        assert _state(c) == {"executor": True, "adopted": True, "starts": 1, "pending": 0}
        assert _children(backend) == [early]
        assert _status(_python_under(early))["Seccomp"] == "2"


@needs_worker
def test_an_early_worker_killed_before_adoption_is_replaced(probe: Any) -> None:
    with _pending(probe) as c:
        backend = c.info.backend_pid
        (early,) = _children(backend)
        os.kill(early, signal.SIGKILL)
        for _ in range(500):
            if _gone(early):
                break
            time.sleep(0.01)
        assert _call(c, 4) == 8
        assert _state(c) == {"executor": True, "adopted": False, "starts": 1, "pending": 0}
        (fresh,) = _children(backend)
        assert fresh != early
        assert not os.path.exists(f"/proc/{early}")  # reaped, not left a zombie


@needs_worker
def test_a_stalled_early_worker_cannot_hang_the_backend(probe: Any) -> None:
    """The early worker is stopped (SIGSTOP) before it is adopted: the call waits for it while
    checking interrupts, so statement_timeout ends it; the stopped worker is killed and the next
    call gets a new one."""
    with _pending(probe) as c:
        backend = c.info.backend_pid
        (early,) = _children(backend)
        tree = [early, *descendants(early)]
        for pid in tree:
            os.kill(pid, signal.SIGSTOP)
        try:
            c.execute("SET statement_timeout = '1500ms'")
            with pytest.raises(psycopg.errors.QueryCanceled):
                c.execute("SELECT wormhole_execute(%s, %s)",
                          (doubled.hash, codec.encode([[3], {}])))
        finally:
            for pid in tree:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        assert early not in _children(backend)
        c.execute("SET statement_timeout = '30s'")
        assert _call(c, 5) == 10
        assert _state(c)["starts"] == 2 and _state(c)["pending"] == 0


@needs_worker
def test_limits_changed_after_the_early_start_reach_the_adopted_worker(probe: Any) -> None:
    with _pending(probe) as c:
        backend = c.info.backend_pid
        (early,) = _children(backend)
        py = _python_under(early)
        assert _status(py)["Seccomp"] == "0"  # not confined yet: it runs only its bootstrap
        with probe.admin() as a:
            a.execute("UPDATE wormhole_limits SET value = 300 WHERE name = 'memory_mb'")
        assert _call(c, 6) == 12
        assert _state(c)["adopted"] is True
        assert _children(backend) == [early]
        status = _status(py)
        assert status["Seccomp"] == "2" and status["NoNewPrivs"] == "1"
        with open(f"/proc/{py}/limits") as f:
            rows = {line[:26].strip(): line[26:].split() for line in f.readlines()[1:]}
        assert rows["Max address space"][:2] == [str(300 << 20)] * 2
        assert rows["Max processes"][:2] == ["0", "0"]
        assert sorted(_fd_targets(py)) == [0, 1, 2]


@needs_worker
def test_an_in_process_call_stops_a_pending_worker_and_closes_its_pipes(probe: Any) -> None:
    with _pending(probe) as c:
        backend = c.info.backend_pid
        (early,) = _children(backend)
        tree = [early, *descendants(early)]
        pipes = {_fd_targets(early)[fd] for fd in (0, 1, 2)}
        assert pipes & set(_fd_targets(backend).values())  # the backend's ends, while pending
        with probe.admin() as a:
            a.execute("SELECT wormhole_approve(%s)", (doubled.hash,))
        assert _call(c, 7) == 14  # in-process
        assert _children(backend) == []
        assert not pipes & set(_fd_targets(backend).values())  # no descriptor left behind
        assert _state(c) == {"executor": False, "adopted": False, "starts": 0, "pending": 0}
        for _ in range(500):  # bubblewrap's own children die with it (--die-with-parent)
            if all(_gone(pid) for pid in tree):
                break
            time.sleep(0.01)
        assert all(_gone(pid) for pid in tree), [p for p in tree if not _gone(p)]


HINT_SIG = "public._wormhole_worker_hint(text, text)"


@needs_worker
@pytest.mark.parametrize("case", ["dropped", "revoked", "null", "error", "always"])
def test_a_stale_or_broken_hint_never_changes_where_code_runs(probe: Any, case: str) -> None:
    """The schema's hint gone, not executable, returning NULL, raising, or saying yes for
    everything: a call still runs where the host decides, with exactly one worker."""
    body = {"null": "SELECT NULL::boolean", "error": "SELECT (1 / 0) = 1",
            "always": "SELECT true"}.get(case)
    with probe.admin() as a:
        if case == "dropped":
            a.execute(f"DROP FUNCTION {HINT_SIG}")
        elif case == "revoked":
            a.execute(f"REVOKE EXECUTE ON FUNCTION {HINT_SIG} FROM wormhole_user")
        else:
            a.execute("CREATE OR REPLACE FUNCTION public._wormhole_worker_hint("
                      f"function_hash text, role_name text) RETURNS boolean LANGUAGE sql "
                      f"AS $$ {body} $$")
    with psycopg.connect(probe.dsn(), autocommit=True) as c:
        assert _call(c, 10) == 20
        state = _state(c)
        assert state == {"executor": True, "adopted": case == "always", "starts": 1,
                         "pending": 0}
        assert len(_children(c.info.backend_pid)) == 1
    # a role the DBA trusts, same broken hint: in-process, and no worker left running
    with probe.admin() as a:
        a.execute("INSERT INTO wormhole_trusted_roles (role_name, note) VALUES ('app', 't')")
    with psycopg.connect(probe.dsn(), autocommit=True) as c:
        assert _call(c, 11) == 22
        assert _children(c.info.backend_pid) == []
        assert _state(c)["pending"] == 0


@needs_worker
@pytest.mark.parametrize("stale", ["one-module-uncached", "other-python"])
def test_a_stale_code_cache_starts_the_worker_late_and_correctly(probe: Any, stale: str) -> None:
    """The compiled runtime in _wormhole_code missing for a module, or from another Python
    (magic): no early start from it; the executor starts its worker late, as before."""
    with probe.admin() as a:
        if stale == "one-module-uncached":
            a.execute("UPDATE public._wormhole_code SET code = NULL WHERE module = 'worker'")
        else:
            a.execute("UPDATE public._wormhole_code SET magic = '\\x00000000'::bytea")
    with psycopg.connect(probe.dsn(), autocommit=True) as c:
        assert _call(c, 8) == 16
        assert _state(c) == {"executor": True, "adopted": False, "starts": 1, "pending": 0}
        (root,) = _children(c.info.backend_pid)
        py = _python_under(root)
        assert _status(py)["Seccomp"] == "2" and sorted(_fd_targets(py)) == [0, 1, 2]


@needs_worker
def test_the_hint_is_a_pinned_definer_that_answers_only_a_boolean(db: Any) -> None:
    with db.admin() as a:
        row = a.execute(
            "SELECT p.prosecdef, p.proconfig, pg_get_userbyid(p.proowner), p.proacl::text[] "
            "FROM pg_proc p WHERE p.oid = %s::regprocedure", (HINT_SIG,)).fetchone()
    secdef, config, owner, acl = row
    assert secdef and owner == "wormhole_owner"
    assert config == ["search_path=pg_catalog, pg_temp"]
    grantees = {entry.split("=", 1)[0] for entry in acl}
    assert "" not in grantees  # PUBLIC has nothing
    assert grantees <= {"wormhole_owner", "wormhole_user"}
    with psycopg.connect(db.dsn(), autocommit=True) as c:
        # shadowing tables a definer reads: temp tables, a search_path of the caller's
        c.execute("CREATE TEMP TABLE wormhole_settings (name text, value text)")
        c.execute("INSERT INTO wormhole_settings VALUES ('untrusted_execution', 'disabled')")
        c.execute("CREATE TEMP TABLE wormhole_approvals (hash text)")
        c.execute("SET search_path = pg_temp, public")
        for args in [("0" * 64, "app"), ("x' OR true --", "app"), ("a" * (1 << 20), None),
                     (None, None), ("0" * 64, "wormhole_owner"), ("0" * 64 + "\n", "app"),
                     ("0" * 63 + "G", "app")]:
            got = c.execute(f"SELECT {HINT_SIG.replace('(text, text)', '')}(%s, %s)",
                            args).fetchone()[0]
            assert got is (args == ("0" * 64, "app") or args == ("0" * 64, "wormhole_owner"))


# -- findings ------------------------------------------------------------------------------------


def _blocked_on_lock(admin: Any, pid: int) -> bool:
    return bool(admin.execute("SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted",
                              (pid,)).fetchone()[0])


@needs_worker
@pytest.mark.parametrize("table", [
    # legitimate side: a cancel that reaches the boot (its read of _wormhole_code) ends the call
    pytest.param("_wormhole_code", id="cancel-in-boot"),
    # found by this red team (fixed): the hint swallowed every SPIError, QueryCanceled included
    pytest.param("wormhole_settings", id="cancel-in-hint"),
])
def test_a_cancel_during_the_first_calls_start_ends_the_call(probe: Any, table: str) -> None:
    """A new backend's first call waits on a lock (a DBA's ALTER/LOCK on a wormhole table); the
    DBA's pg_cancel_backend arrives while it waits. The call must end with QueryCanceled."""
    holder = probe.admin()
    holder.autocommit = False
    holder.execute(f"LOCK TABLE public.{table} IN ACCESS EXCLUSIVE MODE")
    c = psycopg.connect(probe.dsn(), autocommit=True)
    outcome: list[Any] = []

    def first_call() -> None:
        try:
            outcome.append(c.execute("SELECT wormhole_execute(%s, %s)",
                                     (doubled.hash, codec.encode([[1], {}]))).fetchone()[0])
        except BaseException as exc:  # noqa: BLE001 - examined below
            outcome.append(exc)

    pid = c.info.backend_pid
    runner = threading.Thread(target=first_call)
    a = probe.admin()
    try:
        runner.start()
        for _ in range(3000):
            if _blocked_on_lock(a, pid):
                break
            time.sleep(0.01)
        assert _blocked_on_lock(a, pid)
        a.execute("SELECT pg_cancel_backend(%s)", (pid,))
        runner.join(5.0)  # a lost cancel leaves it waiting on the lock again: released below
    finally:
        holder.rollback()
        holder.close()
        if runner.ident is not None:
            runner.join(60.0)
        a.close()
        c.close()
    assert len(outcome) == 1
    assert isinstance(outcome[0], psycopg.errors.QueryCanceled), outcome[0]


@needs_worker
def test_no_early_worker_keeps_an_enlarged_boot_pipe_after_the_first_call(probe: Any) -> None:
    """The kernel counts a pipe's capacity, not its use, against the postgres user's
    pipe-user-pages-soft: a pending early worker (its first call never got to choose the
    worker) must not keep its 512 KiB boot pipe once it has read its boot frame."""
    with _pending(probe) as c:
        backend = c.info.backend_pid
        for pid in _children(backend):
            for _ in range(1000):  # until the worker has read its whole boot frame
                if _pipe_queued(pid, 0) == 0:
                    break
                time.sleep(0.01)
        with pytest.raises(psycopg.Error):  # another call: a chance to give the pipe back
            c.execute("SELECT wormhole_execute(%s, '[[],{}]')", ("cd" * 32,))
        for pid in _children(backend):
            for _ in range(200):
                if _pipe_size(pid, 0) <= spawn.PIPE_SIZE:
                    break
                time.sleep(0.01)
            assert _pipe_size(pid, 0) <= spawn.PIPE_SIZE


@needs_worker
def test_an_adopted_early_worker_gives_its_boot_pipe_back(probe: Any) -> None:
    # the legitimate side of the finding above: adopted on the first call, restored
    with psycopg.connect(probe.dsn(), autocommit=True) as c:
        assert _call(c, 2) == 4
        (root,) = _children(c.info.backend_pid)
        assert _state(c)["adopted"] is True
        assert _pipe_size(root, 0) == spawn.PIPE_SIZE


# -- found by the lead while fixing the above: internal queries and the caller's search_path ----

@remote
def where_am_i(x):
    return x + 1


def _hijack_equality(c: Any, schema: str, target_role: str) -> None:
    """A role that owns a schema defines its own ``=`` for ``oid`` that is true only for the row
    of ``target_role``, and puts that schema before pg_catalog in its search_path."""
    c.execute(
        f"CREATE FUNCTION {schema}.eq(oid, oid) RETURNS boolean LANGUAGE sql IMMUTABLE AS "
        "$$ SELECT $1 OPERATOR(pg_catalog.=) (SELECT r.oid FROM pg_catalog.pg_roles r "
        f"WHERE r.rolname OPERATOR(pg_catalog.=) '{target_role}') $$")
    c.execute(f"CREATE OPERATOR {schema}.= (LEFTARG = oid, RIGHTARG = oid, "
              f"FUNCTION = {schema}.eq)")
    c.execute(f"SET search_path = {schema}, pg_catalog, public")


@needs_worker
def test_a_hijacked_operator_cannot_borrow_a_trusted_roles_trust(db: Any) -> None:
    """The host judges trust by the current role's name, read with an SPI query that runs with
    the caller's search_path. Its ``=`` (and its type names) are pinned to pg_catalog: a role
    with CREATE on a schema cannot make that query answer with a trusted role's name and so run
    its unapproved code inside the backend."""
    with db.admin() as a:
        a.execute("DO $$ BEGIN CREATE ROLE wh_trusted_one NOLOGIN; "
                  "EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        a.execute("INSERT INTO wormhole_trusted_roles (role_name) VALUES ('wh_trusted_one')")
        a.execute("CREATE SCHEMA evil AUTHORIZATION app")
    with psycopg.connect(db.dsn(), autocommit=True) as c:
        _hijack_equality(c, "evil", "wh_trusted_one")
        # the operator works as the attacker meant: their own oid "equals" the trusted role's
        hijacked = c.execute("SELECT rolname::text FROM pg_catalog.pg_roles "
                             "WHERE oid = (SELECT oid FROM pg_catalog.pg_roles "
                             "WHERE rolname OPERATOR(pg_catalog.=) current_user)").fetchall()
        assert hijacked == [("wh_trusted_one",)]
        with wormhole.connection(c):
            assert where_am_i(1) == 2
            assert where_am_i(2) == 3  # warm: the trust check runs on every call
        assert len(_children(c.info.backend_pid)) == 1, "ran in-process: trust was borrowed"


@needs_worker
def test_a_hijacked_operator_in_the_callers_path_changes_nothing_for_a_trusted_role(
        db: Any) -> None:
    # the legitimate side: a trusted role with its own operators in its path still runs
    # in-process, and its queries use its own search_path as always
    with db.admin() as a:
        a.execute("INSERT INTO wormhole_trusted_roles (role_name) VALUES ('app')")
        a.execute("CREATE SCHEMA mine AUTHORIZATION app")
    with psycopg.connect(db.dsn(), autocommit=True) as c:
        _hijack_equality(c, "mine", "postgres")
        with wormhole.connection(c):
            assert where_am_i(5) == 6
        assert _children(c.info.backend_pid) == []


def test_no_backend_crashed_while_these_attacks_ran(server: Any) -> None:
    """Last in the file: none of the attacks above made PostgreSQL restart its backends."""
    log = server.log_text()
    if not log:
        pytest.skip("not our cluster: its log is not readable here")
    assert "was terminated by signal" not in log
    assert "terminating any other active server processes" not in log
    assert "all server processes terminated; reinitializing" not in log
