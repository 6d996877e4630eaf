"""The HTTP front: the threaded server and request handler classes, and dispatch of each request to
the API, resolve or CDN route (with the per-request counters and fault checks); resolve answers per the
hub profile (CDN redirect, plus Xet headers in ``xet``; direct and unadvertised ranges in ``bare``).

Imports ``api`` (which it subclasses) and ``core``.
"""

from __future__ import annotations

import contextlib
import http.server
import ssl
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .api import _HubApi
from .core import _Abort, _Ctx

_MAX_BODY = 1024 * 1024  # request bodies (paths-info) are small; anything bigger is refused


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr: tuple[str, int], hub: _HubHandlers, role: str) -> None:
        self.hub = hub
        self.role = role  # "hub" or "cdn"
        self.tls_context: ssl.SSLContext | None = None
        if hub.tls is not None:
            self.tls_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls_context.load_cert_chain(*hub.tls)
        super().__init__(addr, _Handler)

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = super().get_request()
        if self.tls_context is not None:  # the handshake runs on first read, in the handler's thread
            sock = self.tls_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def process_request(self, request: Any, client_address: Any) -> None:
        self.hub._conn_opened(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.hub._conn_closed(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # broken connections are expected here (faults, aborting clients)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    server_version = "hub-emulator"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def handle(self) -> None:
        with contextlib.suppress(_Abort, OSError, ValueError):
            super().handle()

    def do_GET(self) -> None:
        self.server.hub._dispatch(self)

    def do_HEAD(self) -> None:
        self.server.hub._dispatch(self)

    def do_POST(self) -> None:
        self.server.hub._dispatch(self)


class _HubHandlers(_HubApi):
    """Dispatch and the resolve route."""

    def _dispatch(self, h: _Handler) -> None:
        split = urlsplit(h.path)
        raw_path = split.path
        if raw_path.startswith("/api/"):
            kind = "xet" if "/xet-read-token/" in raw_path else "api"
        elif raw_path.startswith("/cdn/"):
            kind = "cdn"
        elif "/resolve/" in raw_path:
            kind = "resolve"
        else:
            kind = "other"
        ctx = _Ctx(h, h.command, unquote(raw_path), parse_qs(split.query), kind)
        with self._lock:
            self._stats.requests_by_kind[kind] += 1
            self._stats.requests_by_path[ctx.path] += 1
            self._in_flight += 1
        try:
            self._dispatch_inner(ctx, raw_path)
        finally:
            with self._lock:
                if ctx.record is not None:
                    ctx.record.done = True
                self._in_flight -= 1
                self._cond.notify_all()

    def _dispatch_inner(self, ctx: _Ctx, raw_path: str) -> None:
        h, kind = ctx.handler, ctx.kind
        try:
            if ctx.method == "POST" and not self._read_body(ctx):
                return
            if ctx.method == "POST" and kind != "api":
                self._error(ctx, 405, None, "Method Not Allowed")
            elif kind in ("api", "xet"):
                if self.faults.stall_api and not self._stall(ctx, "stall_api", self.faults.stall_api):
                    raise _Abort
                if self._maybe_fail(ctx):
                    return
                self._handle_api(ctx, raw_path)
            elif kind in ("resolve", "cdn"):
                # resolve the file first so path-scoped faults can match the repo path
                self._route_file(ctx, raw_path)
            else:
                self._error(ctx, 404, None, "Not found")
        except _Abort:
            h.close_connection = True
            raise
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True
            raise _Abort from None

    def _route_file(self, ctx: _Ctx, raw_path: str) -> None:
        if ctx.kind == "cdn":
            segs = raw_path.split("/")[2:]
            sha = segs[0] if segs else ""
            ctx.file = unquote("/".join(segs[1:])) or None
            self._pre_body_faults(ctx)
            if self._maybe_fail(ctx):
                return
            self._handle_cdn(ctx, sha)
            return
        head, _, tail = raw_path.partition("/resolve/")
        repo_id = unquote(head.strip("/"))
        rev_raw, _, file_raw = tail.partition("/")
        rev, ctx.file = unquote(rev_raw), unquote(file_raw)
        self._pre_body_faults(ctx)
        if self._maybe_fail(ctx):
            return
        repo = self._authorize(ctx, repo_id)
        if repo is None:
            return
        commit = self._commit_for(ctx, repo, rev)
        if commit is None:
            return
        with self._lock:
            info = repo.commits[commit].get(ctx.file)
        if info is None:
            self._error(ctx, 404, "EntryNotFound", f"{ctx.file} does not exist on {rev}", commit=commit)
            return
        profile = self.profile
        if profile == "bare":  # no CDN, no X-Linked-*: the hub itself serves the (LFS) content
            self._serve_content(ctx, info, {"X-Repo-Commit": commit}, advertise_ranges=False)
        elif info.lfs:
            xet = self._xet_headers(repo_id, commit, info) if profile == "xet" else None
            self._redirect_to_cdn(ctx, info, commit, xet)
        else:
            self._serve_content(ctx, info, {"X-Repo-Commit": commit})

    def _read_body(self, ctx: _Ctx) -> bool:
        """Read a POST body into ctx.body (so keep-alive stays in sync); False once refused (answered)."""
        h = ctx.handler
        try:
            length = int(h.headers.get("Content-Length") or 0)
        except ValueError:  # garbage length: treated like a missing one, refused below
            length = -1
        if "chunked" in h.headers.get("Transfer-Encoding", "").lower() or not 0 <= length <= _MAX_BODY:
            h.close_connection = True  # the unread body would be parsed as the next request
            self._error(ctx, 413 if length > _MAX_BODY else 411, None, "Send a Content-Length body <= 1 MiB")
            return False
        ctx.body = h.rfile.read(length)
        if len(ctx.body) < length:
            raise _Abort  # client left mid-body
        return True
