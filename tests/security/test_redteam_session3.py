"""Red team, session 3: the worker channel's compact headers, pickled rows, CPU steering and
arming, and the in-process warm path (host/engine/spi shortcuts).

Attacks and legitimate uses side by side. Three groups:

* **unit**: the compact frame header parser over every op byte, the C-encoder shortcuts
  (``codec.encode``'s flat shortcut, ``codec.encode_query``) against ``codec.encode``'s walk, fork and the
  cached pid;
* **compromised worker** (real bubblewrap, a worker whose ``main`` is replaced, as in
  ``tests/worker/test_sandbox.py``): forged compact headers, pickle sent *to* the backend,
  spoofed CPU bytes with stalls and dribbled frames (P3, P4, P9), what the backend pickles
  for the worker, and the worker's CPU budget across warm calls (P2);
* **live server**: the warm in-process path against revocations, limit and whitelist changes,
  deleted and edited functions, malformed hashes, ``SET ROLE`` between calls, SECURITY DEFINER
  contexts and role renames (P1, P7, P11), and rows parity between the worker and in-process.
"""

from __future__ import annotations

import datetime as dt
import io
import itertools
import json
import math
import os
import pickle
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

import wormhole
from wormhole import errors, remote
from wormhole.runtime import VERSION, codec, engine, host, sandbox
from wormhole.runtime.channel import _OPS, Channel, ProtocolError
from wormhole.runtime.errors import LimitExceeded
from wormhole.runtime.rows import Rows

_WORKER_TESTS = Path(__file__).resolve().parents[1] / "worker"
if str(_WORKER_TESTS) not in sys.path:
    sys.path.insert(0, str(_WORKER_TESTS))

from worker_support import (
    _REASON,
    BWRAP,
    MemoryPort,
    make_call,
    never,
    python_pid,
    worker_sources,
)

needs_worker = pytest.mark.skipif(_REASON is not None, reason=f"needs the worker: {_REASON}")

query = wormhole.query
DatabaseError = wormhole.DatabaseError

# =================================================================================================
# unit: the compact header parser
# =================================================================================================


def _feed(data: bytes) -> Channel:
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    return Channel(r, os.open(os.devnull, os.O_WRONLY), own_fds=True)


def _compact(op: int, cpu: int, call_id: int, body: bytes = b"", hlen: int = 7) -> bytes:
    head = bytes([1, op, cpu]) + call_id.to_bytes(4, "big")
    head = (head + b"\0" * hlen)[:hlen]
    return hlen.to_bytes(4, "big") + len(body).to_bytes(4, "big") + head + body


@pytest.mark.parametrize("op", range(256))
def test_every_compact_op_byte_is_a_known_op_or_a_protocol_error(op: int) -> None:
    for cpu, call_id in ((0, 0), (7, 1), (254, 2**32 - 1), (255, 12345)):
        chan = _feed(_compact(op, cpu, call_id, b"body"))
        try:
            if op >= len(_OPS):
                with pytest.raises(ProtocolError):
                    chan.recv(1)
                continue
            header, body = chan.recv(1)
            # exactly {"op", "id"}: a compact header can never carry "recycle", "src", ...
            assert header == {"op": _OPS[op], "id": call_id} and body == b"body"
            assert chan.peer_cpu == (-1 if cpu == 255 else cpu)
        finally:
            chan.close()


@pytest.mark.parametrize("hlen", [1, 2, 6, 8, 64])
def test_a_compact_marker_with_the_wrong_length_is_refused(hlen: int) -> None:
    chan = _feed(_compact(4, 0, 1, b"", hlen=hlen))
    try:
        with pytest.raises(ProtocolError):
            chan.recv(1)
    finally:
        chan.close()


def test_a_compact_marker_cannot_smuggle_a_json_header() -> None:
    # first byte 0x01, then JSON: not a compact header (wrong length), never parsed as JSON
    head = b'\x01{"op":"done","id":1,"recycle":true}'
    data = len(head).to_bytes(4, "big") + (0).to_bytes(4, "big") + head
    chan = _feed(data)
    try:
        with pytest.raises(ProtocolError):
            chan.recv(1)
    finally:
        chan.close()


# =================================================================================================
# unit: the C-encoder shortcuts give exactly codec.encode's text (or its error)
# =================================================================================================


class _Str(str):
    pass


class _Int(int):
    pass


class _Float(float):
    pass


_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=2**11990, max_value=2**14500),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.sampled_from([_Int(3), _Float(1.5), _Str("s"), Decimal("1.5"), b"x", (1,), 10**5000,
                     -(10**5000), True, False, -0.0, "\ud800", "$t", "\u2028"]),
)
_keys = st.one_of(st.text(max_size=4), st.sampled_from(["$", "$t", "$rows", "$d", "$n", "$x"]),
                  st.sampled_from([_Str("k"), 1, True, None]))


def _outcome(fn: Any, value: Any) -> Any:
    try:
        return fn(value)
    except codec.CodecError as exc:
        return ("CodecError", str(exc))


@given(st.one_of(_scalars, st.dictionaries(_keys, _scalars, max_size=18)))
def test_encode_shortcut_is_the_walk_for_any_flat_value(value: Any) -> None:
    assert _outcome(lambda v: codec.encode(v, root="result"), value) == _outcome(
        lambda v: codec._encode_walk(v, type(v), "result", codec.MAX_DEPTH), value)


@given(st.text(max_size=20), st.lists(_scalars, max_size=10))
def test_encode_query_is_codec_encode(sql: str, params: list[Any]) -> None:
    expected = _outcome(lambda p: codec.encode({"sql": sql, "params": p}, root="params"), params)
    got = _outcome(lambda p: codec.encode_query(sql, p), params)
    assert got == expected
    if isinstance(got, str):
        back = codec.decode(got)
        assert back["sql"] == sql and len(back["params"]) == len(params)


def test_a_forked_child_never_reuses_the_parents_backend_state() -> None:
    GD: dict[str, Any] = {}
    state = host.backend(GD, {})
    assert host.backend(GD, {}) is state
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        try:
            ok = host.backend(GD, {}) is not state and GD[host._STATE_KEY].pid == os.getpid()
            os.write(w, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(w)
    got = os.read(r, 1)
    os.close(r)
    os.waitpid(child, 0)
    assert got == b"1"
    assert host.backend(GD, {}) is state  # the parent's own state is untouched


# =================================================================================================
# compromised worker: everything it sends is untrusted
# =================================================================================================

RETURN_ONE = "def f():\n    return 1\n"
MARK = f"/tmp/wormhole_session3_pwned_{os.getpid()}"


def _evil_sources(main_body: str) -> dict[str, str]:
    evil = dict(worker_sources())
    evil["worker"] = (
        "import os, json, time\n"
        "from .channel import Channel\n"
        "def compact(op, cpu, cid, body=b''):\n"
        "    head = bytes([1, op, cpu]) + cid.to_bytes(4, 'big')\n"
        "    return (7).to_bytes(4, 'big') + len(body).to_bytes(4, 'big') + head + body\n"
        "def main(rfd, wfd):\n"
        "    chan = Channel(rfd, wfd, 1 << 29)\n"
        "    chan.recv(None)  # hello\n"
        "    head, body = chan.recv(None)  # call\n"
        "    cid = head['id']\n"
        "    cpu = head.get('cpu', 0)\n"
        + "".join("    " + line + "\n" for line in main_body.splitlines())
        + "    chan.recv(None)\n"
    )
    return evil


class _Boom:
    """Unpickling this anywhere runs code: it writes MARK."""

    def __reduce__(self) -> Any:
        return (exec, (f"open({MARK!r}, 'w').write('pwned')",))


PICKLE5 = pickle.dumps(_Boom(), 5)
PICKLE0 = pickle.dumps(_Boom(), 0)  # protocol 0 is ASCII: valid UTF-8
assert PICKLE0.isascii()


@pytest.fixture
def no_mark() -> Any:
    if os.path.exists(MARK):
        os.unlink(MARK)
    yield
    assert not os.path.exists(MARK), "something unpickled what the worker sent"


def _run_evil(body: str, port: Any = None, check: Any = never, **limits: int) -> Any:
    ex = sandbox.WorkerExecutor(_evil_sources(body), bwrap=BWRAP)
    try:
        return ex.run(make_call(RETURN_ONE, **limits), port or MemoryPort(), check), ex
    finally:
        ex.close()


@needs_worker
@pytest.mark.parametrize(
    "body, expect",
    [
        # op index past the table, and the far end of the byte
        ("os.write(wfd, compact(5, cpu, cid, b'{\"ok\":1,\"out\":[]}'))", "malformed"),
        ("os.write(wfd, compact(255, cpu, cid, b'{\"ok\":1,\"out\":[]}'))", "malformed"),
        # ops only the backend may send
        ("os.write(wfd, compact(0, cpu, cid, b'{}'))", "malformed"),  # call
        ("os.write(wfd, compact(1, cpu, cid, b''))", "malformed"),  # rows
        ("os.write(wfd, compact(2, cpu, cid, b'{}'))", "malformed"),  # qerr
        # ids of other calls: the next one, the largest, one before
        ("os.write(wfd, compact(4, cpu, cid + 1, b'{\"ok\":1,\"out\":[]}'))", "malformed"),
        ("os.write(wfd, compact(4, cpu, 2**32 - 1, b'{\"ok\":1,\"out\":[]}'))", "malformed"),
        ("os.write(wfd, compact(4, cpu, (cid - 1) % 2**32, b'{\"ok\":1,\"out\":[]}'))",
         "malformed"),
        # a compact marker with a wrong header length
        ("os.write(wfd, (8).to_bytes(4,'big') + (0).to_bytes(4,'big') + b'\\x01\\x04' + b'\\0'*6)",
         "malformed"),
        # a query whose body is not JSON (pickle)
        (f"os.write(wfd, compact(3, cpu, cid, {PICKLE5!r}))", "malformed"),
        (f"os.write(wfd, compact(3, cpu, cid, {PICKLE0!r}))", "malformed"),
        # a result that is pickle
        (f"os.write(wfd, compact(4, cpu, cid, {PICKLE5!r}))", "malformed"),
        (f"chan.send({{'op': 'done', 'id': cid}}, {PICKLE0!r})", "malformed"),
        # a JSON header naming a backend-only op
        ("chan.send({'op': 'rows', 'id': cid, 'x': 1}, b'')", "malformed"),
    ],
)
def test_forged_compact_frames_stop_the_worker(no_mark: None, body: str, expect: str) -> None:
    port = MemoryPort()
    ex = sandbox.WorkerExecutor(_evil_sources(body), bwrap=BWRAP)
    try:
        with pytest.raises(sandbox.WorkerCrashed) as info:
            ex.run(make_call(RETURN_ONE), port, never)
        assert expect in info.value.reason
        assert ex.worker_pid is None
        assert port.log == []
    finally:
        ex.close()


@needs_worker
@pytest.mark.parametrize("cpu", ["0", "1", "cpu", "254", "255"])
def test_a_compact_done_from_any_cpu_is_a_normal_result(cpu: str) -> None:
    # legitimate shape, any CPU byte (even the backend's own): the result passes through
    text, _ = _run_evil(f"os.write(wfd, compact(4, {cpu}, cid, b'{{\"ok\":7,\"out\":[]}}'))")
    assert text == '{"ok":7,"out":[]}'


@needs_worker
def test_a_payload_that_is_protocol_0_pickle_text_is_passed_on_never_unpickled(
    no_mark: None,
) -> None:
    # shaped like a payload and valid UTF-8, so the backend hands it on as text without
    # decoding it; the client's JSON decoder then refuses it. Nothing is unpickled.
    body = b'{"ok":' + PICKLE0
    text, _ = _run_evil(f"os.write(wfd, compact(4, cpu, cid, {body!r}))")
    assert text.encode("utf-8") == body
    with pytest.raises(Exception):  # noqa: B017 - the client's codec refuses, whatever the class
        codec.decode(text)


class _Cancel(Exception):
    pass


def _cancel_after(seconds: float, calls: list[float]) -> Any:
    start = time.monotonic()

    def check() -> None:
        now = time.monotonic()
        calls.append(now)
        if now - start > seconds:
            raise _Cancel()

    return check


STALL_AFTER_QUERY_FROM_BACKENDS_CPU = """\
q = json.dumps({'sql': 'SELECT $1', 'params': [1]}).encode()
os.write(wfd, compact(3, cpu, cid, q))   # says: I wrote from the backend's own CPU
chan.recv(None)                          # the rows
while True:
    time.sleep(1)
"""

DRIBBLE_WITH_SPOOFED_CPUS = """\
q = json.dumps({'sql': 'SELECT $1', 'params': [1]}).encode()
os.write(wfd, compact(3, (cpu + 1) % 255, cid, q))   # claims another CPU: the backend spins
chan.recv(None)
# a frame that never completes, written a byte at a time
frame = compact(4, cpu, cid, b'x' * (32 << 20))
for i in range(len(frame)):
    os.write(wfd, frame[i:i + 1])
    time.sleep(0.0002)
"""


@needs_worker
@pytest.mark.parametrize("body", [STALL_AFTER_QUERY_FROM_BACKENDS_CPU, DRIBBLE_WITH_SPOOFED_CPUS],
                         ids=["stall-same-cpu", "dribble"])
def test_spoofed_cpu_bytes_cannot_defeat_the_timeout(
    monkeypatch: pytest.MonkeyPatch, body: str
) -> None:
    """P4: whatever CPU the worker claims, and however it dribbles bytes while the backend
    spins, the DBA's timeout_ms ends the call within about a second."""
    monkeypatch.setattr(sandbox, "_spare_cpu", lambda: True)  # the backend asks to spin
    ex = sandbox.WorkerExecutor(_evil_sources(body), bwrap=BWRAP)
    try:
        assert ex.spin > 0
        begin = time.monotonic()
        with pytest.raises(LimitExceeded) as info:
            ex.run(make_call(RETURN_ONE, timeout_ms=400), MemoryPort(), never)
        assert info.value.limit == "timeout_ms"
        assert time.monotonic() - begin < 1.4
        assert ex.worker_pid is None
    finally:
        ex.close()


@needs_worker
@pytest.mark.parametrize("body", [STALL_AFTER_QUERY_FROM_BACKENDS_CPU, DRIBBLE_WITH_SPOOFED_CPUS],
                         ids=["stall-same-cpu", "dribble"])
def test_spoofed_cpu_bytes_cannot_delay_interrupts(
    monkeypatch: pytest.MonkeyPatch, body: str
) -> None:
    """P4: a cancel (what check_interrupts raises) is noticed promptly: the backend checks
    interrupts at least every POLL_SECONDS or so while the worker plays with the channel."""
    monkeypatch.setattr(sandbox, "_spare_cpu", lambda: True)
    calls: list[float] = []
    ex = sandbox.WorkerExecutor(_evil_sources(body), bwrap=BWRAP)
    try:
        begin = time.monotonic()
        with pytest.raises(_Cancel):
            ex.run(make_call(RETURN_ONE), MemoryPort(), _cancel_after(0.5, calls))
        assert time.monotonic() - begin < 1.5
        gaps = [b - a for a, b in itertools.pairwise(calls)]
        assert gaps and max(gaps) < 0.25, max(gaps)
        assert ex.worker_pid is None
    finally:
        ex.close()


# -- what the backend pickles for the worker ------------------------------------------------------

#: every global a rows pickle may name: the value types the SPI port returns, nothing callable
#: beyond constructors of plain data
_ROW_GLOBALS = {
    ("datetime", "datetime"), ("datetime", "date"), ("datetime", "time"),
    ("datetime", "timedelta"), ("datetime", "timezone"), ("decimal", "Decimal"),
    ("uuid", "UUID"), ("uuid", "SafeUUID"), ("builtins", "bytearray"),
}


class _OnlyRowValues(pickle.Unpickler):
    """Loads a rows pickle only if every global it names is a plain data type (safe to run in
    the test process: anything else is refused before it is called)."""

    seen: set[tuple[str, str]]

    def find_class(self, module: str, name: str) -> Any:
        self.seen.add((module, name))
        if (module, name) not in _ROW_GLOBALS:
            raise pickle.UnpicklingError(f"rows pickle names {module}.{name}")
        return super().find_class(module, name)


def _load_rows_pickle(data: bytes) -> tuple[Any, set[tuple[str, str]]]:
    u = _OnlyRowValues(io.BytesIO(data))
    u.seen = set()
    return u.load(), u.seen


_HOSTILE_TEXT = "cos\nsystem\n(S'touch " + MARK + "'\ntR.\x80\x05\x95"


class _TypesPort(MemoryPort):
    """Answers every query with one row of each type the SPI port returns, plus whatever the
    worker sent as its parameter (the worker chooses the SQL and the parameters: data only)."""

    def query(self, sql: str, params: Any) -> Rows:
        self.log.append((sql, list(params)))
        tz = dt.timezone(dt.timedelta(hours=5, minutes=30))
        row = {
            "echo": params[0] if params else None, "i": 2**80, "f": math.nan,
            "n": Decimal("NaN"), "b": b"\x80\x05", "d": dt.date(2024, 2, 29),
            "t": dt.time(1, 2, 3, tzinfo=tz), "ts": dt.datetime(2024, 1, 1, 1, tzinfo=tz),
            "td": dt.timedelta(days=-3, microseconds=1), "u": uuid.UUID(int=7),
            "j": {"__reduce__": ["os", "system"], "a": [1, None, "x"]}, "z": None,
        }
        return Rows([dict(row) for _ in range(10)], 10)


PEEK_AT_ROWS = """\
q = json.dumps({'sql': 'SELECT $1', 'params': [%r]}).encode()
chan.send({'op': 'query', 'id': cid}, q)
h, rows = chan.recv(None)
chan.send({'op': 'done', 'id': cid}, ('{"ok":"' + rows.hex() + '","out":[]}').encode())
""" % _HOSTILE_TEXT


@needs_worker
def test_rows_pickle_names_only_plain_data_types(no_mark: None) -> None:
    """P9: the worker chooses the SQL and its parameters; what the backend pickles back is the
    query's values, whose pickle names no callable but the constructors of plain data."""
    port = _TypesPort()
    text, _ = _run_evil(PEEK_AT_ROWS, port)
    data = bytes.fromhex(json.loads(text)["ok"])
    value, seen = _load_rows_pickle(data)
    assert seen <= _ROW_GLOBALS
    rows, rowcount = value
    assert rowcount == 10 and len(rows) == 10
    assert rows[0]["echo"] == _HOSTILE_TEXT  # the hostile text is just a string
    assert port.log == [("SELECT $1", [_HOSTILE_TEXT])]


# -- the worker's CPU budget across warm calls ---------------------------------------------------

BURN = """\
def f(n):
    x = 0
    for i in range(n):
        x += i
    return x
"""

FOREVER = """\
def f():
    n = 0
    while True:
        n += 1
"""


@needs_worker
def test_warm_calls_never_extend_the_cpu_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """P2: the CPU limit is armed once per call (after the previous call) and the soft limit is
    cached; after warm calls, including spinning ones and one that used most of its budget, an
    endless call still ends after at most cpu_seconds (+1, the arming rounds up) of CPU."""
    monkeypatch.setattr(sandbox, "_spare_cpu", lambda: True)  # spinning calls, steered
    ex = sandbox.WorkerExecutor(worker_sources(), bwrap=BWRAP)
    try:
        for _ in range(5):
            assert ex.run(make_call(RETURN_ONE, cpu_seconds=1), MemoryPort(), never) \
                == '{"ok":1,"out":[]}'
        # calibrate a call that burns a part of its 1 s budget. Stop doubling past 0.1 s: past
        # namespace.RANGE_FAST items a range is ticked (several times slower per item), so on a
        # fast machine the next doubling could need more than the whole budget and be killed,
        # rightly, before the call that this test is about
        n = 200_000
        while True:
            t0 = time.monotonic()
            ex.run(make_call(BURN, n, cpu_seconds=1), MemoryPort(), never)
            if time.monotonic() - t0 > 0.1 or n > 50_000_000:
                break
            n *= 2
        pid = python_pid(ex)
        with open(f"/proc/{pid}/limits") as f:
            line = next(x for x in f if x.startswith("Max cpu time"))
        soft, hard = line.split()[3:5]
        assert hard == "8" and int(soft) <= 8  # the hard ceiling never moved
        begin = time.monotonic()
        with pytest.raises(sandbox.WorkerCrashed) as info:
            ex.run(make_call(FOREVER, cpu_seconds=1), MemoryPort(), never)
        assert "SIGXCPU" in info.value.reason
        # at most ceil(used) + 1 - used < 2 s of CPU for this call (one process, idle machine)
        assert time.monotonic() - begin < 3.5
    finally:
        ex.close()


@needs_worker
def test_a_spinning_call_steers_only_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """steer() changes the worker's own affinity only: the backend keeps every CPU it had."""
    monkeypatch.setattr(sandbox, "_spare_cpu", lambda: True)
    mine = os.sched_getaffinity(0)
    ex = sandbox.WorkerExecutor(worker_sources(), bwrap=BWRAP)
    try:
        ex.run(make_call(RETURN_ONE), MemoryPort(), never)
        assert os.sched_getaffinity(0) == mine
        assert os.sched_getaffinity(python_pid(ex)) <= mine
    finally:
        ex.close()


# =================================================================================================
# live server: the warm in-process path
# =================================================================================================


@remote
def where():
    # an oracle for where a call ran: the confined worker has an address-space limit
    # (memory_mb, 512 by default), the backend has none; bytes(n) is calloc, never touched
    try:
        b = bytes(3_000_000_000)
        return "in-process" if len(b) else "?"
    except MemoryError:
        return "worker"


@remote
def twice(x):
    return x * 2


@remote
def use_math(x):
    import math

    return math.floor(x)


@remote
def forever():
    n = 0
    while True:
        n += 1


def _approve(db: Any, *fns: Any) -> None:
    with db.admin() as a:
        for fn in fns:
            a.execute("SELECT wormhole_approve(%s)", (fn.hash,))


def _install(db: Any, *fns: Any) -> None:
    with psycopg.connect(db.dsn(), autocommit=True) as c, wormhole.connection(c):
        for fn in fns:
            fn.install()


def _execute(c: Any, h: str, args: str = "[[],{}]") -> str:
    return c.execute("SELECT wormhole_execute(%s, %s)", (h, args)).fetchone()[0]


@pytest.fixture
def app(db: Any) -> Any:
    """An autocommit psycopg 3 session as ``app``, wormhole's connection for the test."""
    c = psycopg.connect(db.dsn(), autocommit=True)
    c.execute("SET statement_timeout = '20s'")
    with wormhole.connection(c):
        yield c
    c.close()


def test_oracle_tells_worker_from_in_process(db: Any, app: Any) -> None:
    assert where() == "worker"
    _approve(db, where)
    assert where() == "in-process"  # an approval reaches this session at its next transaction
    c2 = psycopg.connect(db.dsn(), autocommit=True)
    with wormhole.connection(c2):
        assert where() == "in-process"
    c2.close()


def test_revoke_in_the_same_session_sends_the_next_call_to_the_worker(db: Any) -> None:
    """P1: a superuser session that approved, ran warm in-process, then revoked: its very next
    transaction (local invalidation, not another backend's) runs in the worker."""
    with db.admin() as a, wormhole.connection(a):
        where.install()
        a.execute("SELECT wormhole_approve(%s)", (where.hash,))
        for _ in range(3):
            assert where() == "in-process"
        a.execute("SELECT wormhole_revoke(%s)", (where.hash,))
        assert where() == "worker"
        a.execute("SELECT wormhole_approve(%s)", (where.hash,))
        assert where() == "in-process"


def test_revoke_inside_one_transaction_applies_to_the_next_statement(db: Any) -> None:
    with db.admin() as a, wormhole.connection(a):
        where.install()
        a.execute("SELECT wormhole_approve(%s)", (where.hash,))
        assert where() == "in-process"
        a.autocommit = False
        a.execute("SELECT wormhole_revoke(%s)", (where.hash,))
        assert json.loads(_execute(a, where.hash))["ok"] == "worker"
        a.rollback()
        a.autocommit = True
        assert where() == "in-process"  # the revoke was rolled back


def test_a_lower_timeout_reaches_a_warm_in_process_session(db: Any, app: Any) -> None:
    """P1/P4: the warm path skips the configuration lookup; a limit the DBA lowers still
    applies to the session's next transaction (no stale limits)."""
    _install(db, twice, forever)
    _approve(db, twice, forever)
    for i in range(5):
        assert twice(i) == 2 * i  # warm, configuration marked current
    with db.admin() as a:
        a.execute("UPDATE wormhole_limits SET value = 300 WHERE name = 'timeout_ms'")
    begin = time.monotonic()
    with pytest.raises(errors.LimitExceeded):
        forever()
    assert time.monotonic() - begin < 3
    assert twice(4) == 8


def test_a_forbidden_module_reaches_a_warm_in_process_session(db: Any, app: Any) -> None:
    _install(db, use_math)
    _approve(db, use_math)
    for _ in range(3):
        assert use_math(2.5) == 2
    with db.admin() as a:
        a.execute("UPDATE wormhole_allowed_modules SET allowed = false "
                  "WHERE module_name = 'math'")
    with pytest.raises(errors.WormholeError) as info:
        use_math(2.5)
    assert "math" in str(info.value)


def test_a_deleted_function_is_not_run_from_the_warm_cache(db: Any, app: Any) -> None:
    _install(db, twice)
    _approve(db, twice)
    for i in range(3):
        assert json.loads(_execute(app, twice.hash, f"[[{i}],{{}}]"))["ok"] == 2 * i
    with db.admin() as a:
        a.execute("DELETE FROM wormhole_functions WHERE hash = %s", (twice.hash,))
    with pytest.raises(psycopg.Error) as info:
        _execute(app, twice.hash, "[[1],{}]")
    assert info.value.sqlstate == "WH004"


def test_an_edited_source_is_refused_by_a_warm_session(db: Any, app: Any) -> None:
    """P7: the compiled code is cached per (hash, configuration); a DBA's edit of the stored
    row bumps the configuration, so the edited text is re-hashed and refused."""
    _install(db, twice)
    _approve(db, twice)
    for i in range(3):
        assert json.loads(_execute(app, twice.hash, f"[[{i}],{{}}]"))["ok"] == 2 * i
    with db.admin() as a:
        a.execute("UPDATE wormhole_functions SET source = replace(source, 'x * 2', 'x * 3'), "
                  "code = NULL WHERE hash = %s", (twice.hash,))
    payload = json.loads(_execute(app, twice.hash, "[[5],{}]"))
    assert "ok" not in payload
    assert payload["err"]["sqlstate"] == "WH004"


@pytest.mark.parametrize("mangle", [str.upper, lambda h: h + " ", lambda h: " " + h,
                                    lambda h: h + "\n", lambda h: h[:-1] + "g",
                                    lambda h: h[:-1], lambda h: h + "0"],
                         ids=["upper", "trailing-space", "leading-space", "newline", "non-hex",
                              "short", "long"])
def test_a_malformed_hash_is_refused_even_when_its_twin_is_cached(
    db: Any, app: Any, mangle: Any
) -> None:
    """P11: the hash regex is skipped only for hashes already in the source cache; a look-alike
    of a cached hash is still WH005, in both modes."""
    _install(db, twice)
    for approved in (False, True):
        if approved:
            _approve(db, twice)
        assert json.loads(_execute(app, twice.hash, "[[1],{}]"))["ok"] == 2  # cached
        with pytest.raises(psycopg.Error) as info:
            _execute(app, mangle(twice.hash), "[[1],{}]")
        assert info.value.sqlstate == "WH005"


@pytest.fixture
def trustee_db(db: Any) -> Any:
    db.setup_sql(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'trustee') "
        "THEN CREATE ROLE trustee; END IF; "
        "IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'bystander') "
        "THEN CREATE ROLE bystander; END IF; END $$;"
        "GRANT trustee TO app; GRANT bystander TO app;"
        "GRANT wormhole_user TO trustee; GRANT wormhole_user TO bystander;"
        "INSERT INTO wormhole_trusted_roles (role_name, note) VALUES ('trustee', 'test');",
        grant=False,
    )
    _install(db, where)
    return db


def test_set_role_between_calls_moves_code_in_and_out_of_the_backend(
    trustee_db: Any, app: Any
) -> None:
    """P1: trust follows the current role at every call, whatever the warm path cached."""
    assert where() == "worker"
    for _ in range(2):
        app.execute("SET ROLE trustee")
        assert where() == "in-process"
        assert where() == "in-process"
        app.execute("SET ROLE bystander")
        assert where() == "worker"
        app.execute("RESET ROLE")
        assert where() == "worker"
    app.autocommit = False
    app.execute("SET LOCAL ROLE trustee")
    assert json.loads(_execute(app, where.hash))["ok"] == "in-process"
    app.commit()
    app.autocommit = True
    assert where() == "worker"  # SET LOCAL ended with the transaction


def test_security_definer_context_is_judged_by_its_owner(trustee_db: Any) -> None:
    """A SECURITY DEFINER function owned by an untrusted role runs wormhole_execute as that
    role: a trusted caller cannot lend its trust to it (and the warm caches keep no trust)."""
    with trustee_db.admin() as a:
        a.execute("CREATE FUNCTION public.via_bystander(h text) RETURNS text "
                  "LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp "
                  "AS $$ SELECT public.wormhole_execute(h, '[[],{}]') $$")
        a.execute("ALTER FUNCTION public.via_bystander(text) OWNER TO bystander")
        a.execute("GRANT EXECUTE ON FUNCTION public.via_bystander(text) TO trustee")
    with psycopg.connect(trustee_db.dsn(), autocommit=True) as c:
        c.execute("SET ROLE trustee")
        for _ in range(2):
            assert json.loads(_execute(c, where.hash))["ok"] == "in-process"
            got = c.execute("SELECT public.via_bystander(%s)", (where.hash,)).fetchone()[0]
            assert json.loads(got)["ok"] == "worker"


def test_a_renamed_trusted_role_is_judged_by_its_new_name(trustee_db: Any) -> None:
    with psycopg.connect(trustee_db.dsn(), autocommit=True) as warm:
        warm.execute("SET ROLE trustee")
        assert json.loads(_execute(warm, where.hash))["ok"] == "in-process"
        warm.execute("RESET ROLE")
        with trustee_db.admin() as a:
            a.execute("ALTER ROLE trustee RENAME TO renamed_trustee")
        try:
            with psycopg.connect(trustee_db.dsn(), autocommit=True) as fresh:
                fresh.execute("SET ROLE renamed_trustee")
                fresh_answer = json.loads(_execute(fresh, where.hash))["ok"]
            warm.execute("SET ROLE renamed_trustee")
            warm_answer = json.loads(_execute(warm, where.hash))["ok"]
        finally:
            with trustee_db.admin() as a:
                a.execute("ALTER ROLE renamed_trustee RENAME TO trustee")
    assert fresh_answer == "worker"  # 'renamed_trustee' is not in wormhole_trusted_roles
    assert warm_answer == fresh_answer


# =================================================================================================
# live server: what query() returns in the worker is what it returns in-process
# =================================================================================================

PROBE = '''\
def {name}(sql, args):
    import datetime
    try:
        rows = query(sql, *args)
    except DatabaseError as e:
        return ["error", e.sqlstate, str(e)]
    zones = [[k, str(v.tzinfo)] for r in rows for k, v in r.items()
             if isinstance(v, (datetime.datetime, datetime.time))]
    # "rows" as the Rows itself: a row set with date/time columns crosses back as
    # PostgreSQL's text (the worker kept it), "plain" as a list, value by value
    return {{"rows": rows, "plain": [list(rows), rows.rowcount, [list(r) for r in rows], zones]}}
'''

PARITY_SQL = [
    # duplicate column names, date/time columns in the text (pgtz/pgts/pgdate) form
    ("SELECT timestamptz '2020-01-01 00:00+00' + i * interval '61 min' AS a, i AS a, "
     "date '2000-02-28' + i AS b, timestamp '2001-02-03 04:05:06.5' + i * interval '1 s' AS b, "
     "i::text AS c, timestamptz '1999-12-31 23:59:59.999999+03' AS c "
     "FROM generate_series(1, 12) i", []),
    # NULLs inside a date/time row set, and a column that is NULL throughout
    ("SELECT CASE WHEN i % 4 = 0 THEN NULL ELSE timestamptz '2024-02-29 12:00+02' END AS tz, "
     "CASE WHEN i % 3 = 0 THEN NULL ELSE date '2024-01-01' + i END AS d, "
     "NULL::timestamp AS nothing FROM generate_series(1, 9) i", []),
    # offsets with seconds (LMT), infinities, BC and five-digit years
    ("SELECT timestamptz '1890-01-01 12:00 Europe/Paris' + i * interval '1 day' AS lmt "
     "FROM generate_series(1, 10) i", []),
    ("SELECT (ARRAY[timestamp 'infinity', timestamp '-infinity', timestamp '2000-01-01', "
     "timestamp '0044-03-15 BC', timestamp '12000-01-01'])[1 + i % 5] AS odd "
     "FROM generate_series(1, 10) i", []),
    ("SELECT (ARRAY[date 'infinity', date '0001-01-01', date '0044-03-15 BC'])[1 + i % 3] "
     "AS odd FROM generate_series(1, 10) i", []),
    # every other type, both as a row set and as a few rows
    ("SELECT i, 'NaN'::numeric AS nn, 'NaN'::float8 AS fn, '-Infinity'::float8 AS fi, "
     "1.50::numeric(5,2) AS n2, ('00000000-0000-0000-0000-00000000000' || i % 10)::uuid AS u, "
     "'\\x00ff'::bytea AS b, '{\"k\": [1, 2.5, null, \"$t\"]}'::jsonb AS j, "
     "ARRAY[1, NULL, 3] AS arr, ARRAY['a', NULL] AS tarr, interval '-1 day 00:00:01.5' AS iv, "
     "time '23:59:59.5' AS t, timetz '12:00:00+05:30' AS ttz, true AS flag, "
     "ROW(1, 'x') AS rec, 9223372036854775807::int8 AS big, 12345678901234567890::numeric AS h "
     "FROM generate_series(1, $1::int) i", [10]),
    ("SELECT i, 'NaN'::numeric AS nn, '\\x00ff'::bytea AS b, timetz '12:00:00+05:30' AS ttz "
     "FROM generate_series(1, $1::int) i", [3]),
    # zero rows, with and without date/time columns; commands with a count
    ("SELECT 1 AS x, now() AS t WHERE false", []),
    ("UPDATE parity_t SET x = x WHERE x > $1", [2]),
    ("INSERT INTO parity_t SELECT g FROM generate_series(1, 3) g RETURNING x, now() - now() AS z",
     []),
    ("DELETE FROM parity_t WHERE x > 100", []),
    ("SELECT $1::text AS same, $1::text AS same", ["dup"]),
    ("SELECT 1/0 AS boom", []),
]


@pytest.fixture
def parity_db(db: Any) -> Any:
    db.setup_sql("CREATE TABLE parity_t (x int); INSERT INTO parity_t SELECT generate_series(1, 9)")
    return db


def _install_probe(c: Any, name: str) -> str:
    return c.execute("SELECT wormhole_install(%s)", (PROBE.format(name=name),)).fetchone()[0]


@pytest.mark.parametrize("zone", ["UTC", "Europe/Paris", "America/St_Johns"])
def test_query_rows_are_the_same_in_the_worker_and_in_process(parity_db: Any, zone: str) -> None:
    """The rows the worker unpickles (plain or column by column with date/time columns as
    PostgreSQL's text) equal what query() returns in-process: values, types, time zones,
    NULLs, duplicate names, zero rows and command counts."""
    with psycopg.connect(parity_db.dsn(), autocommit=True) as c:
        in_worker = _install_probe(c, "probe_worker")
        in_process = _install_probe(c, "probe_process")
    _approve(parity_db, type("F", (), {"hash": in_process}))
    results: dict[str, list[Any]] = {}
    for h in (in_worker, in_process):
        with psycopg.connect(parity_db.dsn()) as c:  # one transaction: the writes roll back
            c.execute(f"SET TIME ZONE '{zone}'")
            out = results.setdefault(h, [])
            for sql, args in PARITY_SQL:
                text = _execute(c, h, codec.encode([[sql, args], {}]))
                out.append((text, codec.decode(text)))
            c.rollback()
    for (sql, _), (wt, w), (pt, p) in zip(PARITY_SQL, results[in_worker], results[in_process]):
        # repr: types too (Decimal vs float, tz offsets, nan), and nan != nan for ==
        assert repr(w) == repr(p), sql
        assert wt == pt, sql  # even the text: the same row-set form on both sides
    ok = [r["ok"] for _, r in results[in_worker] if "ok" in r]
    assert len(ok[0]["rows"]) == 12 and ok[-1][0] == "error"  # sanity: the probes really ran
    assert '"pgtz"' in results[in_worker][0][0]  # the text form was exercised both ways


# =================================================================================================
# live server: what the backend pickles from real SPI results
# =================================================================================================

RT_KEY = f"wormhole.runtime/{VERSION}"

ROWS_PICKLE_FN = f"""
CREATE FUNCTION public.rows_pickle(sql text) RETURNS bytea LANGUAGE plpython3u AS $fn$
import importlib
rt = GD.get({RT_KEY!r})
if rt is None:
    plpy.execute('SELECT public._wormhole_boot()')
    rt = GD[{RT_KEY!r}]
spi = importlib.import_module(rt.__name__ + '.spi')
sandbox = importlib.import_module(rt.__name__ + '.sandbox')
rows = spi.SpiPort(plpy, {{}}).query(sql, [])
return sandbox._pickle(sandbox._rows_value(rows))
$fn$
"""


def test_real_spi_rows_pickle_names_only_plain_data_types(parity_db: Any) -> None:
    """P9: whatever SQL the worker sends, the rows the backend pickles for it are plain values
    (no composite, array, json, range or enum value pickles as anything callable)."""
    with parity_db.admin() as a:
        a.execute("CREATE TYPE mood AS ENUM ('ok', 'meh')")
        a.execute("CREATE TYPE pair AS (a int, b text)")
        a.execute(ROWS_PICKLE_FN)
        for sql, _ in PARITY_SQL[:7]:
            sql = sql.replace("$1::int", "10").replace("$1", "'2'")
            try:
                data = a.execute("SELECT public.rows_pickle(%s)", (sql,)).fetchone()[0]
            except psycopg.Error:
                continue  # refused by the SPI port (e.g. infinity): nothing is pickled
            value, seen = _load_rows_pickle(bytes(data))
            assert seen <= _ROW_GLOBALS, sql
            assert value[-1] >= 1
        extra = ("SELECT 'ok'::mood AS m, ROW(1, 'x')::pair AS p, ARRAY[ROW(2, 'y')::pair] AS ps, "
                 "int4range(1, 5) AS r, '1.2.3.4'::inet AS ip, 'a=>1'::text AS h, "
                 "'(1,2)'::point AS pt, '{\"__reduce__\": 1}'::json AS j, "
                 "xmlparse(content '<a/>') AS x, 12.5::money AS cash, "
                 "pg_catalog.txid_current_snapshot() AS snap FROM generate_series(1, 9)")
        data = a.execute("SELECT public.rows_pickle(%s)", (extra,)).fetchone()[0]
        value, seen = _load_rows_pickle(bytes(data))
        assert seen <= _ROW_GLOBALS
        assert value[-1] == 9  # the rowcount, in the plain and the column-by-column form


def test_a_deep_json_value_fails_the_query_not_the_callers_transaction(db: Any) -> None:
    sql = "SELECT (repeat('[', 3000) || repeat(']', 3000))::jsonb AS j"
    with psycopg.connect(db.dsn()) as c:  # inside a transaction
        h = _install_probe(c, "probe_worker")
        text = _execute(c, h, codec.encode([[sql, []], {}]))
        payload = codec.decode(text)
        assert "err" in payload or payload["ok"][0] == "error"
        assert c.execute("SELECT 1").fetchone()[0] == 1  # the transaction is still usable
