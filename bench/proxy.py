"""A TCP proxy on loopback that delays every chunk by a fixed time in each direction.

The kernel here has no ``netem`` (``tc qdisc ... netem``: "Specified qdisc kind is unknown"),
so this is how the benchmark gives the client a network. One process per delay; each chunk
read from one side is written to the other ``delay`` seconds later. Reads are never blocked,
so pipelined messages overlap in flight as they would on a real link. ``select()`` is used
because it takes microsecond timeouts (epoll and poll round up to whole milliseconds, which
would turn "+0.5 ms" into "+1 ms"). With ``delay=0`` it shows the proxy's own overhead.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import selectors
import signal
import socket
import time
from typing import Any


class _Side:
    """One socket of a proxied connection and what is waiting to be written to it."""

    __slots__ = ("sock", "peer", "backlog", "eof", "gone", "events")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.peer: _Side | None = None
        self.backlog = bytearray()  # bytes due but not yet accepted by the kernel
        self.eof = False  # the other end stopped sending: read no more
        self.gone = False  # closed
        self.events = 0  # what the selector watches for


def _tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)


def serve(listener: socket.socket, target: tuple[str, int], delay: float) -> None:
    """Forward connections accepted on ``listener`` to ``target``, forever."""
    sel = selectors.SelectSelector()
    listener.setblocking(False)
    sel.register(listener, selectors.EVENT_READ, None)
    # (due time, destination, data); data None closes the connection. With one fixed delay,
    # due times grow in arrival order, so one FIFO is also a priority queue.
    due: collections.deque[tuple[float, _Side, bytes | None]] = collections.deque()

    def watch(side: _Side) -> None:
        events = 0 if side.eof else selectors.EVENT_READ
        if side.backlog:
            events |= selectors.EVENT_WRITE
        if events == side.events:
            return
        if side.events == 0:
            sel.register(side.sock, events, side)
        elif events == 0:
            sel.unregister(side.sock)
        else:
            sel.modify(side.sock, events, side)
        side.events = events

    def close(side: _Side) -> None:
        for s in (side, side.peer):
            if s is not None and not s.gone:
                s.gone = True
                if s.events:
                    sel.unregister(s.sock)
                    s.events = 0
                s.sock.close()

    def write(side: _Side, data: bytes | None) -> None:
        if side.gone:
            return
        if data is None:
            close(side)
            return
        if side.backlog:
            side.backlog += data
            return
        try:
            sent = side.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            close(side)
            return
        if sent < len(data):
            side.backlog += data[sent:]
            watch(side)

    while True:
        now = time.monotonic()
        while due and due[0][0] <= now:
            _, dest, data = due.popleft()
            write(dest, data)
        timeout = max(0.0, due[0][0] - time.monotonic()) if due else None
        for key, events in sel.select(timeout):
            if key.data is None:  # the listener: a new client
                try:
                    client, _ = listener.accept()
                except BlockingIOError:
                    continue
                server = socket.create_connection(target)
                _tune(client)
                _tune(server)
                a, b = _Side(client), _Side(server)
                a.peer, b.peer = b, a
                watch(a)
                watch(b)
                continue
            side: _Side = key.data
            if side.gone:
                continue
            if events & selectors.EVENT_WRITE and side.backlog:
                try:
                    sent = side.sock.send(side.backlog)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    close(side)
                    continue
                del side.backlog[:sent]
                watch(side)
            if events & selectors.EVENT_READ:
                try:
                    data = side.sock.recv(262144)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                assert side.peer is not None
                chunk = data or None  # b"" = end of stream: close, after what came before
                if chunk is None:
                    side.eof = True
                    watch(side)
                if delay <= 0:
                    write(side.peer, chunk)
                else:
                    due.append((time.monotonic() + delay, side.peer, chunk))


class DelayProxy:
    """A delay proxy in its own process: ``with DelayProxy(("127.0.0.1", 5432), 0.0005) as p:``
    then connect to ``p.port``."""

    def __init__(self, target: tuple[str, int], delay_seconds: float) -> None:
        self.target = target
        self.delay = delay_seconds
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(512)
        self.port: int = self.listener.getsockname()[1]
        self.process: Any = None

    def start(self) -> DelayProxy:
        ctx = multiprocessing.get_context("fork")
        self.process = ctx.Process(
            target=_main, args=(self.listener, self.target, self.delay),
            name=f"delay-proxy-{self.delay * 1000:g}ms", daemon=True,
        )
        self.process.start()
        self.listener.close()  # the child has it
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        self.process = None

    def __enter__(self) -> DelayProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _main(listener: socket.socket, target: tuple[str, int], delay: float) -> None:
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    serve(listener, target, delay)
