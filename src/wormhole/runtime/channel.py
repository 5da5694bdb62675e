"""Framed messages over a pair of pipe file descriptors (backend <-> confined worker).

A frame is::

    4-byte big-endian header length | 4-byte big-endian body length | header | body

The header is a UTF-8 JSON object with a string ``"op"``, or, when it is exactly ``{"op": op,
"id": n}`` for the messages of a call, 7 bytes (``0x01``, the op's index in ``_OPS``, the
sender's CPU, ``n`` as 4 big-endian bytes; a JSON header starts with ``{``); the body is raw
bytes. Big payloads (a
call's result text, rows, a call's source and arguments) travel in the body, so they are never
escaped twice, and the backend can hand a result to the client without decoding it.

Both ends validate what they read: sizes are bounded before anything is allocated, the header
must be a JSON object with a string ``op`` (or a well-formed compact header), and anything else
raises ``ProtocolError``. The backend treats every frame from the worker as untrusted input: it
only ever decodes JSON from the worker, never ``pickle`` or ``marshal``.

``recv`` takes a timeout and keeps a partial frame buffered across calls, so the backend can
wake every few milliseconds to check PostgreSQL's interrupts while a worker is still writing.
With ``spin`` set it first polls without sleeping for that long: an answer that comes within
microseconds is then read without a sleep and a cross-CPU wake-up on each side.
``send`` can do the same (``tick``) when the peer does not read: a worker that stops reading
cannot block the backend in ``write`` forever.

Messages (see docs/architecture.md). Each carries ``"id"``, the call it belongs to, where it
belongs to a call; a call may exchange any number of messages before its ``done``, which is what
streaming will use.

backend -> worker
    ``boot``  body: ``marshal.dumps({module: source text | marshalled code})`` (read by the
    bootstrap, before this module exists; see ``sandbox.boot_frame``)
    ``hello`` body: JSON ``{"modules": {name: [attr, ...] | null}, "modules_key": str,
    "limits": {...}}``
    ``call``  header: ``hash``, ``id``, and ``src`` (the byte length of the source at the start
    of the body) when the worker has not received this source yet, with ``name`` and ``code``
    (the byte length of the marshalled code ``wormhole_install`` checked, after the source)
    when the backend has it, ``reset`` when the worker should forget the sources it kept,
    ``spin`` (seconds it may poll for answers without sleeping); body: the source (if
    ``src``), the code (if ``code``), then the arguments' JSON text (UTF-8)
    ``rows``  answer to ``query``; body: ``pickle`` of ``(rows, rowcount)``, rows a list of
    dicts, or of ``(names, kinds, columns, rowcount)`` for a row set whose date and time
    columns travel as PostgreSQL's text (``sandbox._rows_value``); pickle is the fastest
    stdlib form that keeps ``Decimal``, dates and ``UUID``, and only the worker, which trusts
    its backend, unpickles
    ``qerr``  answer to ``query``; body: JSON ``{"message", "sqlstate", "detail", "hint",
    "type"}``
    ``derr``  a ``nowait`` statement of this call failed (body: like ``qerr``'s, with its
    ``line``): the answer to the next ``query``, which did not run, or to ``done``, whose
    payload the worker then replaces with that error (a second ``done``)
worker -> backend
    ``query`` body: codec text of ``{"sql": str, "params": [...]}``
    ``nowait`` body: codec text of ``{"sql": str, "params": [...], "line": int}``; a statement
    whose result the function discards (``policy._defer_discarded_queries``): no answer
    unless it fails. The backend runs every statement in order; after a failed one it runs
    none of the call's statements
    ``done``  body: the payload text (UTF-8); header may carry ``"recycle": true``
"""

from __future__ import annotations

import errno
import os
import select
import struct
import time

from .jsonlite import Decoder as _Decoder
from .jsonlite import Encoder as _Encoder

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs a new worker a few ms to import; annotations only
    from collections.abc import Callable
    from typing import Any

__all__ = [
    "BOOT",
    "CALL",
    "DERR",
    "DONE",
    "HELLO",
    "MAX_HEADER",
    "NOWAIT",
    "QERR",
    "QUERY",
    "ROWS",
    "Channel",
    "ChannelClosed",
    "ChannelError",
    "ProtocolError",
    "current_cpu",
]

BOOT = "boot"
HELLO = "hello"
CALL = "call"
ROWS = "rows"
QERR = "qerr"
QUERY = "query"
DONE = "done"
NOWAIT = "nowait"
DERR = "derr"

#: largest header accepted (headers are small: an op, an id, a hash).
MAX_HEADER = 64 * 1024
#: default largest body accepted.
DEFAULT_MAX_FRAME = 64 * 1024 * 1024
#: hard ceiling for any body (PostgreSQL's text values stop at 1 GB anyway).
ABSOLUTE_MAX_FRAME = 1024 * 1024 * 1024 - 1

_PREFIX = 8
#: a spinning end gives its CPU to any other runnable task between polls: when the scheduler
#: has put both ends of the channel on one CPU (it often does, waking one with the other), a
#: plain spin would keep the peer it waits for off that CPU for the whole spin
_yield = getattr(os, "sched_yield", lambda: None)
_READ_CHUNK = 1024 * 1024
_POLL_MS = 20


class ChannelError(Exception):
    """Base class of the channel's errors."""


class ChannelClosed(ChannelError):
    """The peer closed its end (end of file on read, broken pipe on write)."""


class ProtocolError(ChannelError):
    """The peer sent something that is not a well-formed frame within the limits."""


def _check_fd(fd: object, what: str) -> int:
    if type(fd) is not int or fd < 0:
        raise ValueError(f"{what} must be a file descriptor (a non-negative int)")
    return fd


class Channel:
    """One end of a framed, bidirectional pipe connection.

    ``rfd`` is read from, ``wfd`` written to. ``max_frame`` bounds the body of a received frame
    (headers are always bounded by ``MAX_HEADER``). The channel does not own the descriptors:
    ``close()`` closes them only if ``own_fds`` is true.
    """

    def __init__(
        self,
        rfd: int,
        wfd: int,
        max_frame: int = DEFAULT_MAX_FRAME,
        *,
        own_fds: bool = False,
    ) -> None:
        self.rfd = _check_fd(rfd, "rfd")
        self.wfd = _check_fd(wfd, "wfd")
        if type(max_frame) is not int or not 0 <= max_frame <= ABSOLUTE_MAX_FRAME:
            raise ValueError(f"max_frame must be an int between 0 and {ABSOLUTE_MAX_FRAME}")
        self.max_frame = max_frame
        self.own_fds = own_fds
        self.closed = False
        self._buf = bytearray()
        self._need: tuple[int, int] | None = None  # (header length, body length) once known
        #: a whole compact frame read in one piece (``_fill``'s fast path), not yet returned
        self._ready: tuple[dict[str, Any], bytes] | None = None
        self._eof = False
        self._wnonblock = False
        #: whether ``rfd`` blocks (read once; a read that would block says otherwise)
        self._rblocking = os.get_blocking(self.rfd)
        #: seconds ``recv`` polls without sleeping before it blocks (0: never spins)
        self.spin = 0.0
        #: the CPU the peer said it wrote its last message from (-1: unknown)
        self.peer_cpu = -1
        self._poll = select.poll()
        self._poll.register(self.rfd, select.POLLIN | select.POLLPRI)

    # -- sending ---------------------------------------------------------------------------

    @staticmethod
    def frame(header: dict[str, Any], body: bytes = b"") -> bytes:
        """Encode one frame (exposed for tests and for the bootstrap frame)."""
        if type(header) is not dict or type(header.get("op")) is not str:
            raise TypeError("a header must be a dict with a str 'op'")
        if not isinstance(body, (bytes, bytearray, memoryview)):
            raise TypeError("a body must be bytes")
        compact = _compact_frame(header, body) if len(header) == 2 else None
        if compact is not None:
            return compact
        head = _header_text(header).encode("utf-8")
        if len(head) > MAX_HEADER:
            raise ValueError(f"header is {len(head)} bytes; the limit is {MAX_HEADER}")
        if len(body) > ABSOLUTE_MAX_FRAME:
            raise ValueError(f"body is {len(body)} bytes; the limit is {ABSOLUTE_MAX_FRAME}")
        return b"".join((_PACK_PREFIX(len(head), len(body)), head, body))

    def send(
        self,
        header: dict[str, Any],
        body: bytes = b"",
        *,
        tick: Callable[[], None] | None = None,
    ) -> None:
        """Send one frame.

        Without ``tick`` the write blocks until the peer has taken it all. With ``tick`` the
        descriptor is made non-blocking and ``tick()`` is called every 20 ms while the peer
        does not read; whatever ``tick`` raises aborts the send (the frame is then partly
        written: the caller must discard the channel).
        """
        frame = self._framed(header, body)
        if tick is not None and not self._wnonblock:
            os.set_blocking(self.wfd, False)
            self._wnonblock = True
        n = self._write(frame)  # the frame usually fits the pipe whole: one write, nothing else
        if n == len(frame):
            return
        data = memoryview(frame)[n:]
        wpoll: select.poll | None = None
        last_tick = time.monotonic()
        while data:
            if n == 0:  # the pipe is full: wait until the peer reads (or the next tick)
                if wpoll is None:
                    wpoll = select.poll()
                    wpoll.register(self.wfd, select.POLLOUT)
                events = wpoll.poll(_POLL_MS if tick is not None else -1)
                if any(ev & (select.POLLERR | select.POLLHUP) for _, ev in events):
                    raise ChannelClosed("the peer closed the channel")
            if tick is not None:
                now = time.monotonic()
                if now - last_tick >= _POLL_MS / 1000:
                    last_tick = now
                    tick()
            n = self._write(data)
            data = data[n:]

    def offer(self, header: dict[str, Any], body: bytes = b"") -> bool | None:
        """Send one frame only if the pipe takes all of it at once; never waits.

        True: sent. False: nothing was written (the channel is as it was). None: part of the
        frame was written, so the stream is broken: the caller must discard the channel.
        """
        frame = self._framed(header, body)
        if not self._wnonblock:
            os.set_blocking(self.wfd, False)
            self._wnonblock = True
        n = self._write(frame)
        if n == len(frame):
            return True
        return False if n == 0 else None

    def _framed(self, header: dict[str, Any], body: bytes) -> bytes:
        """The frame to send (compact when it can be), on a channel that is still open."""
        if self.closed:
            raise ChannelClosed("the channel is closed")
        frame = _compact_frame(header, body) if type(header) is dict and len(header) == 2 \
            else None
        return frame if frame is not None else self.frame(header, body)

    def _write(self, data: bytes | memoryview) -> int:
        """One ``write``: the bytes it took (0 when a non-blocking pipe is full)."""
        try:
            return os.write(self.wfd, data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            if isinstance(exc, BrokenPipeError) or exc.errno == errno.EPIPE:
                raise ChannelClosed("the peer closed the channel") from None
            raise

    # -- receiving -------------------------------------------------------------------------

    def recv(self, timeout: float | None = None) -> tuple[dict[str, Any], bytes] | None:
        """Return the next ``(header, body)``, or ``None`` if ``timeout`` seconds pass first.

        ``timeout=None`` blocks. A frame that arrives in pieces is kept across calls.
        Raises ``ChannelClosed`` at end of file (also in the middle of a frame) and
        ``ProtocolError`` for a malformed or oversized frame.
        """
        if self.closed:
            raise ChannelClosed("the channel is closed")
        frame = self._parse()
        if frame is not None:
            return frame
        if self.spin > 0 and not self._eof and (self.peer_cpu < 0 or self.peer_cpu != _cpu()):
            # (a peer that last wrote from this very CPU is best handed the CPU by blocking:
            # a yield does not reliably switch to it, and the wake-up is cheap on one CPU)
            frame = self._spin()
            if frame is not None:
                return frame
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            frame = self._parse()
            if frame is not None:
                return frame
            if self._eof:
                if self._buf:
                    raise ChannelClosed(
                        f"the peer closed the channel in the middle of a frame "
                        f"({len(self._buf)} bytes buffered)"
                    )
                raise ChannelClosed("the peer closed the channel")
            if deadline is None:
                if self._rblocking:
                    self._fill()  # a blocking read: one syscall instead of poll + read
                    continue
                wait_ms = -1
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                wait_ms = max(1, int(left * 1000 + 0.999))
            events = self._poll.poll(wait_ms)
            if not events:
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                continue
            self._fill()

    def _spin(self) -> tuple[dict[str, Any], bytes] | None:
        """Poll (without sleeping) for up to ``spin`` seconds; the frame, or None.

        A spin that runs out switches spinning off (``spin = 0``) until the owner sets it
        again: the peer is slow or not running, and a second spin would likely be wasted too.
        """
        poll = self._poll.poll
        end = time.perf_counter() + self.spin
        while True:
            if poll(0):
                self._fill()
                frame = self._parse()
                if frame is not None or self._eof:
                    return frame
            _yield()
            if time.perf_counter() >= end:
                self.spin = 0.0
                return None

    def _wanted(self) -> int:
        if self._need is None:
            return _PREFIX - len(self._buf)
        hlen, blen = self._need
        return _PREFIX + hlen + blen - len(self._buf)

    def _fill(self) -> None:
        # read at least 64 KiB when we can: a whole small frame (and whatever follows it) in
        # one syscall; the surplus stays buffered for the next frame.
        want = min(max(self._wanted(), 65536), _READ_CHUNK)
        try:
            chunk = os.read(self.rfd, want)
        except BlockingIOError:
            self._rblocking = False  # someone made it non-blocking: poll first
            return
        except OSError as exc:
            if exc.errno in (errno.ECONNRESET, errno.EPIPE):
                self._eof = True
                return
            raise
        if not chunk:
            self._eof = True
            return
        if (not self._buf and len(chunk) >= _FAST_PREFIX and chunk[_PREFIX] == _COMPACT
                and self._ready is None):
            # the common case of a call's ping-pong: the read is exactly one compact frame
            hlen, blen, _, code, cpu, call_id = _UNPACK_FAST(chunk)
            if (hlen == _COMPACT_SIZE and len(chunk) - _FAST_PREFIX == blen
                    and blen <= self.max_frame and code < len(_OPS)):
                self.peer_cpu = -1 if cpu == 255 else cpu
                self._ready = ({"op": _OPS[code], "id": call_id}, chunk[_FAST_PREFIX:])
                return
        self._buf += chunk

    def _parse(self) -> tuple[dict[str, Any], bytes] | None:
        ready = self._ready
        if ready is not None:
            self._ready = None
            return ready
        if self._need is None:
            if len(self._buf) < _PREFIX:
                return None
            hlen = int.from_bytes(self._buf[0:4], "big")
            blen = int.from_bytes(self._buf[4:8], "big")
            if hlen == 0 or hlen > MAX_HEADER:
                raise ProtocolError(f"frame header of {hlen} bytes (limit {MAX_HEADER})")
            if blen > self.max_frame:
                raise ProtocolError(f"frame body of {blen} bytes (limit {self.max_frame})")
            self._need = (hlen, blen)
        hlen, blen = self._need
        total = _PREFIX + hlen + blen
        if len(self._buf) < total:
            return None
        # one copy each (slicing the bytearray first would copy a big body twice); the view
        # is released before the buffer is resized
        with memoryview(self._buf) as view:
            raw_head = view[_PREFIX:_PREFIX + hlen].tobytes()
            body = view[_PREFIX + hlen:total].tobytes()
        del self._buf[:total]
        self._need = None
        if raw_head[0] == _COMPACT:
            if hlen != _COMPACT_SIZE or raw_head[1] >= len(_OPS):
                raise ProtocolError("malformed compact frame header")
            self.peer_cpu = -1 if raw_head[2] == 255 else raw_head[2]
            return {"op": _OPS[raw_head[1]], "id": int.from_bytes(raw_head[3:], "big")}, body
        return decode_header(raw_head), body

    def close(self) -> None:
        """Mark the channel closed; close the descriptors if the channel owns them."""
        if self.closed:
            return
        self.closed = True
        if self.own_fds:
            for fd in {self.rfd, self.wfd}:
                try:
                    os.close(fd)
                except OSError:
                    pass


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


# built once: ``json.dumps``/``json.loads`` with options build an encoder/decoder per message,
# and ``JSONEncoder.encode`` builds a C encoder per call; the C encoder is built here once.
_HEADER_ENCODER = _Encoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_PACK_PREFIX = struct.Struct(">II").pack
# A header that is exactly {"op": <one of _OPS>, "id": <0..2**32-1>} (every query, rows, qerr
# and done message) travels as 7 bytes: _COMPACT, the op's index in _OPS, the CPU the sender
# ran on as it sent (255: unknown), the id (big-endian).
# A JSON header starts with "{", so the first byte tells the two apart.
_OPS = (CALL, ROWS, QERR, QUERY, DONE, NOWAIT, DERR)
_OP_CODES = {op: code for code, op in enumerate(_OPS)}
_COMPACT = 1
_COMPACT_SIZE = 7
#: a compact frame's prefix and header together (15 bytes), packed and read in one go
_FAST = struct.Struct(">IIBBBI")
_PACK_FAST = _FAST.pack
_UNPACK_FAST = _FAST.unpack_from
_FAST_PREFIX = _FAST.size


def _compact_frame(header: dict[str, Any], body: bytes) -> bytes | None:
    """The whole frame for a header that is exactly ``{"op": <one of _OPS>, "id": n}`` (the
    messages of a call), or None for any other header."""
    code = _OP_CODES.get(header.get("op"))  # type: ignore[arg-type]
    call_id = header.get("id")
    if code is None or type(call_id) is not int or not 0 <= call_id <= 0xFFFFFFFF:
        return None
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise TypeError("a body must be bytes")
    if len(body) > ABSOLUTE_MAX_FRAME:
        raise ValueError(f"body is {len(body)} bytes; the limit is {ABSOLUTE_MAX_FRAME}")
    cpu = _cpu()
    return _PACK_FAST(_COMPACT_SIZE, len(body), _COMPACT, code,
                      cpu if 0 <= cpu < 255 else 255, call_id) + body


def current_cpu() -> int:
    """The CPU this process runs on right now (``sched_getcpu``), or -1 where unknown."""
    return _cpu()


def _cpu() -> int:
    """:func:`current_cpu` (replaced by the C function on first use)."""
    global _cpu
    try:
        import ctypes

        getcpu = ctypes.CDLL(None).sched_getcpu
        getcpu.restype = ctypes.c_int
        getcpu.argtypes = []
        if getcpu() < 0:
            raise OSError("sched_getcpu failed")
        found: Callable[[], int] = getcpu
    except (ImportError, OSError, AttributeError):
        def found() -> int:
            return -1
    _cpu = found
    return found()


def _no_default(o: object) -> Any:
    raise TypeError(f"a frame header cannot hold a {type(o).__name__}")


try:
    from _json import encode_basestring as _c_str
    from _json import make_encoder as _c_make_encoder

    _C_HEADER = _c_make_encoder(None, _no_default, _c_str, None, ":", ",", False, False, False)

    def _header_text(header: dict[str, Any]) -> str:
        return "".join(_C_HEADER(header, 0))
except ImportError:  # pragma: no cover - a Python without the C accelerator
    def _header_text(header: dict[str, Any]) -> str:
        return _HEADER_ENCODER.encode(header)
_HEADER_DECODER = _Decoder(parse_constant=_reject_constant)


def decode_header(raw: bytes) -> dict[str, Any]:
    """Decode and validate a frame header: a JSON object with a str ``op``."""
    try:
        header = _HEADER_DECODER.decode(raw.decode("utf-8"))
    except (ValueError, RecursionError, MemoryError) as exc:
        raise ProtocolError(f"frame header is not UTF-8 JSON: {exc}") from None
    if type(header) is not dict:
        raise ProtocolError("frame header is not a JSON object")
    if type(header.get("op")) is not str:
        raise ProtocolError("frame header has no string 'op'")
    return header
