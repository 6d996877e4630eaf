"""The small HTTP server for probes and scrapes: /metrics, /healthz, /readyz, /status.

Stdlib HTTP parsing (`BaseHTTPRequestHandler`) on top of `listener.Listener`, which bounds
connections, threads and time per client. GET and HEAD only, nothing else served; one request per
connection. Every body comes from the `Tracker` (through `metrics.render` or a redacted snapshot),
so no secret can leak through it. Imports metrics, progress, redact and serve.listener.

Liveness (`/healthz`) answers "is the download loop wedged?", not "is the download fast?": it
fails only while the phase is `downloading` and there has been no sign of life for more than
`3 * stall_limit` seconds, where a sign of life is any received byte, a retry, a stall being
detected (the engine noticed and acts), a file starting or finishing, or the phase changing. A
slow download that still moves, or one that keeps retrying inside its budget, stays live.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler
from typing import Any, cast

from prometheus_client import CollectorRegistry

from ..observe.logs import redact_value
from ..observe.metrics import CONTENT_TYPE, render
from ..observe.progress import Event, Phase, Tracker
from ..redact import PATTERNS_ONLY, Redactor, redact
from .listener import Listener

log = logging.getLogger("provisioner.server")  # the name log consumers already filter on

READY_CACHE_SECONDS = 1.0
# Events that prove the loop is alive even though no byte arrived.
_LIVENESS_EVENTS = frozenset({"phase", "plan", "file_started", "file_done", "retry", "stall", "waiting",
                              "verified", "smoke_test", "ready", "failed"})


def parse_listen(listen: str) -> tuple[str, int]:
    """`HOST:PORT`, `:PORT` (all IPv4 interfaces) or `[V6ADDR]:PORT` -> (host, port). Port 0 = any."""
    value = listen.strip()
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"listen: expected HOST:PORT, got {listen!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"listen: put an IPv6 address in brackets, e.g. [::]:9733; got {listen!r}")
    return host or "0.0.0.0", int(port_text)


def bind_error_message(listen: str, exc: OSError) -> str:
    """One line saying why `listen` could not be bound and what to set instead (no traceback)."""
    if isinstance(exc, socket.gaierror):
        return (f"listen: cannot resolve the host of {listen} ({exc.strerror}); "
                "set --listen / PROVISIONER_LISTEN to HOST:PORT with a resolvable host or 'off'")
    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    why = {errno.EADDRINUSE: "is already in use", errno.EACCES: "is not allowed for this user",
           errno.EADDRNOTAVAIL: "is not an address of this host"}.get(exc.errno or 0, "cannot be bound")
    fix = "a free port" if exc.errno == errno.EADDRINUSE else "an address and port this process may bind"
    return f"listen: {listen} {why} ({name}); set --listen / PROVISIONER_LISTEN to {fix} or 'off'"




class _Handler(BaseHTTPRequestHandler):
    """Answers the one request in `head` (already read by the listener) and buffers the response, which
    `finish` sends in one write. Every response closes the connection (see listener.py)."""

    server_version = "model-provisioner"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.0"  # so a malformed request line still gets a status line, not 0.9
    error_message_format = "%(code)d %(message)s\n"
    error_content_type = "text/plain; charset=utf-8"

    def __init__(self, sock: socket.socket, client_address: Any, owner: HealthServer, *, head: bytes) -> None:
        self.owner = owner
        self.head = head
        super().__init__(sock, client_address, cast(Any, owner))  # runs setup, handle, finish

    def setup(self) -> None:
        self.connection = self.request
        self.rfile = io.BytesIO(self.head)
        self.wfile = self.response = io.BytesIO()

    def finish(self) -> None:
        response = self.response.getvalue()
        if response:
            self.connection.sendall(response)

    def handle(self) -> None:
        self.handle_one_request()  # one request per connection: pipelined extras are not answered

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _method_not_allowed(self) -> None:
        self._send(405, b"method not allowed\n", "text/plain; charset=utf-8", head=False,
                   extra={"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _method_not_allowed

    def __getattr__(self, name: str) -> Any:
        # Any other method (BaseHTTPRequestHandler looks up `do_<METHOD>`) is 405, not 501.
        if name.startswith("do_"):
            return self._method_not_allowed
        raise AttributeError(name)

    def _serve(self, *, head: bool) -> None:
        path = self.path.split("?", 1)[0].split("#", 1)[0]
        try:
            status, body, ctype = self.owner.respond(path)
        except Exception:  # noqa: BLE001 - a bug in one response must not kill the server thread
            log.exception("error serving %s", path)
            status, body, ctype = 500, b"internal error\n", "text/plain; charset=utf-8"
        self._send(status, body, ctype, head=head)

    def _send(self, status: int, body: bytes, ctype: str, *, head: bool,
              extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.close_connection = True
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # Probes every few seconds would drown the log, and a client's garbage is not our error:
        # access and request-error lines go to debug, redacted, one line each.
        log.debug("http %s", redact(format % args))


class HealthServer:
    """Serves /metrics, /healthz, /readyz and /status for one run.

    `ready_check` validates the on-disk marker (cheap, stdlib only); its result is cached for
    about a second so a burst of probes costs one check. `stall_limit` is the engine's
    stall timeout in seconds (see the module docstring for the liveness rule). `clock` is a
    monotonic clock; tests pass the Tracker's fake clock. `limits` are passed to `listener.Listener`
    (max_connections, workers, head_timeout, write_timeout, max_head_bytes); the defaults suit a pod.
    """

    def __init__(self, listen: str, *, tracker: Tracker, registry: CollectorRegistry,
                 ready_check: Callable[[], bool], stall_limit: float,
                 clock: Callable[[], float] = time.monotonic, redactor: Redactor = PATTERNS_ONLY,
                 limits: Mapping[str, Any] | None = None) -> None:
        self.host, self._requested_port = parse_listen(listen)
        self.limits = dict(limits or {})
        self.tracker = tracker
        self.redactor = redactor  # the run's secrets: /status and log lines never carry them
        self.registry = registry
        self.ready_check = ready_check
        self.stall_limit = float(stall_limit)
        self._clock = clock
        self._lock = threading.Lock()
        self._last_activity = clock()
        self._ready_cache: tuple[float, bool] | None = None
        self._listener: Listener | None = None
        tracker.subscribe(self._on_event)

    # ---- lifecycle ------------------------------------------------------------------------
    def start(self) -> HealthServer:
        """Bind and serve in daemon threads. Raises OSError when the address is taken."""
        if self._listener is not None:
            return self
        self._listener = Listener(self.host, self._requested_port, serve=self._serve_connection, **self.limits)
        self._listener.start()
        log.debug("serving /metrics /healthz /readyz /status", extra={
            "event": "listen", "host": self.host, "port": self.port})
        return self

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()

    def _serve_connection(self, sock: socket.socket, client_address: Any, head: bytes) -> None:
        _Handler(sock, client_address, self, head=head)

    def __enter__(self) -> HealthServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def listener(self) -> Listener | None:
        return self._listener

    @property
    def port(self) -> int:
        if self._listener is None:
            return self._requested_port
        return int(self._listener.address[1])

    @property
    def address(self) -> str:
        """`HOST:PORT` as requested (IPv6 hosts in brackets), for messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else ("[::1]" if self.host == "::" else self.host)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    # ---- state ----------------------------------------------------------------------------
    def _on_event(self, event: Event) -> None:
        if event.kind in _LIVENESS_EVENTS:
            now = self._clock()
            with self._lock:
                self._last_activity = now

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        """(live, details). Not live only when downloading and silent for > 3 * stall_limit."""
        snap = self.tracker.snapshot()
        phase = str(snap["phase"])
        since_bytes = max(float(snap["seconds_since_progress"]), 0.0)  # on the tracker's clock
        with self._lock:
            since_activity = max(self._clock() - self._last_activity, 0.0)
        idle = min(since_bytes, since_activity)
        limit = 3 * self.stall_limit
        live = not (phase == Phase.DOWNLOADING.value and idle > limit)
        return live, {"status": "ok" if live else "wedged", "phase": phase,
                      "seconds_since_progress": round(since_bytes, 3),
                      "seconds_since_activity": round(idle, 3), "limit_seconds": limit}

    def readiness(self) -> bool:
        now = self._clock()
        with self._lock:
            cached = self._ready_cache
            if cached is not None and now - cached[0] < READY_CACHE_SECONDS:
                return cached[1]
            # Checked under the lock: a burst of probes runs one check, the rest wait for it.
            try:
                ok = bool(self.ready_check())
            except Exception as exc:  # noqa: BLE001 - a broken check means "not ready", never a 500
                log.warning("ready check failed: %s", self.redactor(f"{type(exc).__name__}: {exc}"))
                ok = False
            self._ready_cache = (self._clock(), ok)
            return ok

    def respond(self, path: str) -> tuple[int, bytes, str]:
        """(status, body, content type) for a GET of `path`."""
        if path == "/metrics":
            return 200, render(self.registry), CONTENT_TYPE
        if path == "/healthz":
            live, details = self.liveness()
            return (200 if live else 503), _json(details), "application/json"
        if path == "/readyz":
            ok = self.readiness()
            return (200, b"ready\n", "text/plain; charset=utf-8") if ok else \
                (503, b"not ready\n", "text/plain; charset=utf-8")
        if path == "/status":
            return 200, _json(redact_value(self.tracker.snapshot(), self.redactor)), "application/json"
        return 404, b"not found\n", "text/plain; charset=utf-8"


def _json(value: Any) -> bytes:
    return (json.dumps(value, sort_keys=True, default=str) + "\n").encode()
