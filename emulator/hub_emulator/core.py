"""The hub's shared state and the low layer every request handler stands on: ``_HubCore`` holds the
locks, repos, blob store, counters, fault knobs and listeners (created once in ``__init__``), the
addresses, connection tracking and the interruptible waits that stalls and rate limits use. ``_Ctx`` is
the per-request state, ``_Abort`` ends a connection.

Imports ``repo``, ``stats``, ``faults`` and ``profiles`` only (plus ``handlers._Server`` for type checking); the
layers above (``transport`` -> ``cdn`` -> ``api`` -> ``handlers`` -> ``server``) each subclass the one
below.
"""

from __future__ import annotations

import contextlib
import http.server
import math
import secrets
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .faults import Faults, _FailRule, _glob
from .profiles import DEFAULT_PROFILE, check_profile
from .repo import FileInfo, _Repo
from .stats import HubStats, RequestRecord

if TYPE_CHECKING:
    from .handlers import _Server


class _Abort(Exception):
    """Stop handling this connection (client gone, fault fired, or hub stopping)."""


@dataclass
class _Ctx:
    """Per-request state."""

    handler: http.server.BaseHTTPRequestHandler
    method: str
    path: str
    query: dict[str, list[str]]
    kind: str
    record: RequestRecord | None = None
    file: str | None = None
    body: bytes = b""  # request body (POST)


class _HubCore:
    """State shared by every layer of the hub, and the waits and fault bookkeeping they use."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        cdn_port: int = 0,
        page_size: int = 1000,
        signed_url_ttl: float = 3600.0,
        profile: str = DEFAULT_PROFILE,
        xet_auth_status: int | None = 503,
        tls: tuple[str, str] | None = None,
    ) -> None:
        self.host = host
        self.tls = tls  # (certfile, keyfile): serve hub and CDN over HTTPS; None: plain HTTP
        self._scheme = "https" if tls else "http"
        self.profile = profile  # see profiles.py; switchable at runtime
        # xet profile: the status the xet-auth (token) endpoint answers; None: its URL refuses connections
        self.xet_auth_status = xet_auth_status
        self._refusing: socket.socket | None = None  # bound, never listening: connects are refused
        self.page_size = page_size
        self.signed_url_ttl = signed_url_ttl
        self.faults = Faults()
        self._port = port
        self._cdn_port = cdn_port
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._repos: dict[str, _Repo] = {}
        self._blobs: dict[str, FileInfo] = {}  # sha256 -> a FileInfo with that content (CDN store)
        self._stats = HubStats()
        self._fail_rules: list[_FailRule] = []
        self._sign_key = secrets.token_bytes(32)
        self._servers: list[tuple[_Server, threading.Thread]] = []
        self._conns: set[socket.socket] = set()
        self._stopping = False
        self._up = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._old_wakes: list[socket.socket] = []
        self._global_tat = 0.0  # rate_limit_global: when the shared budget is next free
        self._in_flight = 0
        self._outage_timer: threading.Thread | None = None
        self._outage_cancel = threading.Event()

    @property
    def url(self) -> str:
        """Hub endpoint, e.g. ``http://127.0.0.1:PORT`` (pass as ``endpoint=``)."""
        return f"{self._scheme}://{self.host}:{self._port}"

    @property
    def cdn_url(self) -> str:
        """Origin of the CDN the LFS redirects point to."""
        return f"{self._scheme}://{self.host}:{self._cdn_port}"

    @property
    def port(self) -> int:
        return self._port

    @property
    def profile(self) -> str:
        """The hub profile (``hf``, ``mirror``, ``bare``, ``xet``: see profiles.py); assignable at runtime,
        it applies from the next request on."""
        return self._profile

    @profile.setter
    def profile(self, name: str) -> None:
        self._profile = check_profile(name)

    def _refusing_origin(self) -> str:
        """An origin on this host whose port refuses connections (bound, never listening) while the hub
        lives: the unreachable xet-auth endpoint."""
        with self._lock:
            if self._refusing is None:
                self._refusing = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                self._refusing.bind((self.host, 0))
            return f"http://{self.host}:{self._refusing.getsockname()[1]}"

    # ------------------------------------------------------------------ connections and faults

    def _conn_opened(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.add(conn)
            self._stats.connections += 1
            self._cond.notify_all()

    def _conn_closed(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.discard(conn)

    def _fault_fired(self, ctx: _Ctx, name: str) -> None:
        with self._lock:
            self._stats.faults_fired[name] += 1
            if ctx.record is not None:
                ctx.record.fault = name
            self._cond.notify_all()

    def _in_scope(self, ctx: _Ctx) -> bool:
        pattern = self.faults.path
        return _glob(pattern, ctx.path) or (ctx.file is not None and _glob(pattern, ctx.file))

    def _stall(self, ctx: _Ctx, name: str, seconds: float) -> bool:
        self._fault_fired(ctx, name)
        return self._wait(seconds, ctx.handler.connection)

    def _take_once(self, ctx: _Ctx, attr: str, every_attr: str, fires: Callable[[Any], bool]) -> Any:
        """Claim a fault for this response if it will fire within it; one-shot faults (no *_every flag)
        are consumed right here so that of several parallel responses exactly one gets it."""
        with self._lock:
            value = getattr(self.faults, attr)
            if value is None or not self._in_scope(ctx) or not fires(value):
                return None
            if not getattr(self.faults, every_attr):
                setattr(self.faults, attr, None)
            return value

    # ------------------------------------------------------------------ waits

    def _interrupt_waits(self) -> None:
        with self._lock:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")
            # keep the old pair open: threads may still be selecting on it
            self._old_wakes += [self._wake_r, self._wake_w]
            if not self._stopping:
                self._wake_r, self._wake_w = socket.socketpair()

    def _wait(self, seconds: float, conn: socket.socket | None) -> bool:
        """Sleep up to ``seconds``; False if interrupted (hub stopping/outage/release, or client gone)."""
        if self._stopping:
            return False
        wake = self._wake_r
        deadline = time.monotonic() + seconds if math.isfinite(seconds) else math.inf
        watch: list[socket.socket] = [wake] + ([conn] if conn is not None else [])
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            try:
                ready, _, _ = select.select(watch, [], [], None if math.isinf(remaining) else remaining)
            except (OSError, ValueError):
                return False
            if wake in ready or self._stopping:
                return False
            if conn is not None and conn in ready:
                try:
                    peek = conn.recv(1, socket.MSG_PEEK)
                except OSError:
                    return False
                if not peek:
                    return False  # client closed
                watch = [wake]  # client sent more (pipelining): just keep sleeping
