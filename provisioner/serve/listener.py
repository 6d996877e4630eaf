"""Connections for the health server: bounded, and a slow or stuck client costs no thread.

One loop thread owns the listening socket and every connection until its request head (request
line and headers) has fully arrived; only then does one of a few worker threads answer it, and the
connection is closed after that one response. Limits: at most `max_connections` connections at
once (when full, a new connection evicts the one that has waited longest for its head, so a probe
gets through a crowd of stuck clients; heads that have arrived are read before anyone is evicted;
when every slot holds a complete request being answered, the newcomer gets a quick 503); a head must arrive within `head_timeout` seconds (else 408) and fit in
`max_head_bytes` (else 431); writing a response may take at most `write_timeout` seconds. Whatever
a client does is logged at debug level through our logger, never printed as a traceback.

Stdlib only; knows nothing of HTTP beyond where a request head ends. Imports nothing from the package.
"""

from __future__ import annotations

import logging
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("provisioner.server")

MAX_CONNECTIONS = 64
WORKERS = 8  # answers are sub-millisecond; more threads would only fight the download for the GIL
HEAD_TIMEOUT = 5.0  # seconds for the request line + headers: a real client sends them in one packet
WRITE_TIMEOUT = 5.0  # seconds to hand a whole response to a client that does not read
MAX_HEAD_BYTES = 16 * 1024
BACKLOG = 128
LOOP_TICK = 1.0  # seconds: the longest the loop sleeps when no deadline is nearer

ServeFn = Callable[[socket.socket, Any, bytes], None]


def _canned(status: str) -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 0\r\n"
            "Connection: close\r\nCache-Control: no-store\r\n\r\n").encode()


_BUSY = _canned("503 Service Unavailable")
_TIMEOUT = _canned("408 Request Timeout")
_TOO_LARGE = _canned("431 Request Header Fields Too Large")


@dataclass(eq=False)
class _Pending:
    sock: socket.socket
    addr: Any
    deadline: float
    buf: bytearray = field(default_factory=bytearray)


def head_end(buf: bytes | bytearray) -> int:
    """Index just past the blank line that ends a request head, or -1 (bare LF accepted, as the parser does)."""
    ends = [i + len(m) for m in (b"\r\n\r\n", b"\n\n") if (i := buf.find(m)) >= 0]
    return min(ends) if ends else -1


def bind(host: str, port: int) -> socket.socket:
    """A listening, non-blocking socket; `[::]` also takes IPv4 where the kernel allows. Raises OSError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            try:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            except OSError:  # a v6-only kernel setting: serve IPv6 only
                pass
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _close(sock: socket.socket) -> None:
    """Send FIN after what was written, and read away what the client still sent (a closed socket with
    unread input sends RST, which can make the client lose the response it has not read yet)."""
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.setblocking(False)
        for _ in range(16):
            if not sock.recv(65536):
                break
    except OSError:  # nothing more to read (EAGAIN), or already reset or closed by the client
        pass
    sock.close()


class Listener:
    """Accepts on `host:port` and calls `serve(sock, client_address, head)` in a worker thread for each
    complete request head. `serve` writes the response on the blocking socket (with `write_timeout`);
    the listener closes it afterwards."""

    def __init__(self, host: str, port: int, *, serve: ServeFn, max_connections: int = MAX_CONNECTIONS,
                 workers: int = WORKERS, head_timeout: float = HEAD_TIMEOUT,
                 write_timeout: float = WRITE_TIMEOUT, max_head_bytes: int = MAX_HEAD_BYTES) -> None:
        self.serve = serve
        self.max_connections = max_connections
        self.head_timeout = head_timeout
        self.write_timeout = write_timeout
        self.max_head_bytes = max_head_bytes
        self._sock = bind(host, port)
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._pending: dict[socket.socket, _Pending] = {}  # insertion order = oldest first
        self._busy = 0  # connections handed to a worker and not yet closed
        self._busy_lock = threading.Lock()
        self._jobs: queue.SimpleQueue[tuple[socket.socket, Any, bytes] | None] = queue.SimpleQueue()
        self._closing = threading.Event()
        self._threads = [threading.Thread(target=self._loop, name="health-server", daemon=True)]
        self._threads += [threading.Thread(target=self._work, name=f"health-http-{i}", daemon=True)
                          for i in range(workers)]

    @property
    def address(self) -> tuple[Any, ...]:
        return tuple(self._sock.getsockname())

    @property
    def waiting(self) -> int:
        """Connections whose request head has not fully arrived."""
        return len(self._pending)

    @property
    def busy(self) -> int:
        """Connections handed to a worker (queued or being answered) and not yet closed."""
        with self._busy_lock:
            return self._busy

    def start(self) -> None:
        self._sel.register(self._sock, selectors.EVENT_READ)
        self._wake_r.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop accepting, drop waiting connections, let workers finish their current answer (bounded)."""
        if self._closing.is_set():
            return
        self._closing.set()
        try:
            self._wake_w.send(b"x")
        except OSError:  # the pair is already closed: the loop is gone anyway
            pass
        for _ in self._threads[1:]:
            self._jobs.put(None)
        deadline = time.monotonic() + self.write_timeout + 1
        for thread in self._threads:
            if thread.ident is not None:
                thread.join(timeout=max(deadline - time.monotonic(), 0.1))
        for pending in list(self._pending.values()):
            _close(pending.sock)
        self._pending.clear()
        self._sel.close()
        for sock in (self._sock, self._wake_r, self._wake_w):
            sock.close()

    # ---- the loop thread: accept, read heads, enforce limits -------------------------------------
    def _loop(self) -> None:
        while not self._closing.is_set():
            try:
                self._turn()
            except Exception:  # noqa: BLE001 - a bug here must not end serving: log it (one line in JSON), go on
                log.error("health server loop error; continuing", exc_info=True)
                self._closing.wait(0.1)  # pause: a bug that repeats must not spin a core

    def _turn(self) -> None:
        events = self._sel.select(self._next_timeout())
        accept = False
        for key, _ in events:  # heads that arrived first: a newcomer must not evict them unread
            if key.fileobj is self._sock:
                accept = True
            elif key.fileobj is not self._wake_r:
                pending = self._pending.get(key.data.sock)
                if pending is not None and pending is key.data:  # not dropped earlier in this batch
                    self._read(pending)
        if accept:
            self._accept()
        self._expire()

    def _next_timeout(self) -> float:
        if not self._pending:
            return LOOP_TICK
        oldest = next(iter(self._pending.values()))
        return min(max(oldest.deadline - time.monotonic(), 0.0), LOOP_TICK)

    def _accept(self) -> None:
        for _ in range(self.max_connections):  # bounded, so reading heads is not starved by a flood
            try:
                sock, addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):  # no more waiting connections
                return
            except OSError as exc:  # e.g. EMFILE or a connection reset while queued: skip it
                log.debug("http: accept failed: %s", exc)
                return
            sock.setblocking(False)
            self._admit(sock, addr)

    def _admit(self, sock: socket.socket, addr: Any) -> None:
        with self._busy_lock:
            busy = self._busy
        if len(self._pending) + busy >= self.max_connections:
            if not self._pending:  # every slot is being answered: say so at once
                self._reply_and_close(sock, addr, _BUSY, f"all {busy} connection slots busy being answered")
                return
            self._drop(next(iter(self._pending.values())), _BUSY, "evicted: waited longest for its request")
        pending = _Pending(sock, addr, time.monotonic() + self.head_timeout)
        self._pending[sock] = pending
        self._sel.register(sock, selectors.EVENT_READ, pending)
        self._read(pending)  # a client usually sends its request with the handshake: answer it now

    def _read(self, pending: _Pending) -> None:
        try:
            data = pending.sock.recv(65536)
        except (BlockingIOError, InterruptedError):  # spurious wake-up: nothing to read yet
            return
        except OSError as exc:  # reset by the client
            self._drop(pending, None, f"read failed: {exc}")
            return
        if not data:
            self._drop(pending, None, "closed before its request was complete")
            return
        pending.buf += data
        end = head_end(pending.buf)
        if end < 0 and len(pending.buf) <= self.max_head_bytes:
            return
        if end < 0 or end > self.max_head_bytes:
            self._drop(pending, _TOO_LARGE, f"request head over {self.max_head_bytes} bytes")
            return
        self._forget(pending)
        with self._busy_lock:
            self._busy += 1
        self._jobs.put((pending.sock, pending.addr, bytes(pending.buf)))

    def _expire(self) -> None:
        now = time.monotonic()
        for pending in list(self._pending.values()):
            if pending.deadline > now:
                break  # oldest first: the rest are younger
            self._drop(pending, _TIMEOUT, f"no complete request within {self.head_timeout:g}s")

    def _forget(self, pending: _Pending) -> None:
        del self._pending[pending.sock]
        self._sel.unregister(pending.sock)

    def _drop(self, pending: _Pending, reply: bytes | None, why: str) -> None:
        self._forget(pending)
        if reply is None:
            log.debug("http: %s: %s", pending.addr, why)
            _close(pending.sock)
        else:
            self._reply_and_close(pending.sock, pending.addr, reply, why)

    @staticmethod
    def _reply_and_close(sock: socket.socket, addr: Any, reply: bytes, why: str) -> None:
        log.debug("http: %s: %s", addr, why)
        try:
            sock.send(reply)  # non-blocking and tiny: fits any socket buffer, or the client is gone
        except OSError:  # the client is gone; nothing to tell it
            pass
        _close(sock)

    # ---- worker threads: answer one complete request each --------------------------------------
    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            sock, addr, head = job
            try:
                sock.settimeout(self.write_timeout)  # a client that does not read cannot hold a worker
                self.serve(sock, addr, head)
            except Exception as exc:  # noqa: BLE001 - a client's reset/broken pipe/timeout is its problem
                log.debug("http: %s: %s: %s", addr, type(exc).__name__, exc)
            finally:
                with self._busy_lock:  # before the FIN: a client reconnecting at once finds its slot free
                    self._busy -= 1
                _close(sock)
