"""Writing responses: headers with the request log, JSON and error bodies, file content with
Range/If-Range, and the byte-exact body sender where the body faults (reset, truncate, stall, flip,
rate limits) fire; also the ``fail_next`` and stall-before-headers checks run before a response.

Imports ``core`` (which it subclasses), ``repo`` and ``faults``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import time
from collections.abc import Mapping
from typing import Any

from .core import _Abort, _Ctx, _HubCore
from .faults import _fmt_num, _glob
from .repo import FileInfo
from .stats import RequestRecord

CHUNK = 1024 * 1024  # large writes: ~1 GB/s on loopback; fault cut points stay byte-exact


class _HubTransport(_HubCore):
    """Response writers and the pre-response fault checks."""

    def _maybe_fail(self, ctx: _Ctx) -> bool:
        with self._lock:
            rule = next(
                (
                    r
                    for r in self._fail_rules
                    if r.remaining > 0
                    and r.kind in ("any", ctx.kind)
                    and (_glob(r.path, ctx.path) or (ctx.file is not None and _glob(r.path, ctx.file)))
                ),
                None,
            )
            if rule is None:
                return False
            rule.remaining -= 1
            self._fail_rules = [r for r in self._fail_rules if r.remaining > 0]
        headers = {}
        if rule.retry_after is not None:
            headers["Retry-After"] = _fmt_num(rule.retry_after)
        self._error(ctx, rule.status, None, f"Injected failure {rule.status}", headers=headers)
        self._fault_fired(ctx, f"fail_{rule.status}")
        return True

    def _pre_body_faults(self, ctx: _Ctx) -> None:
        f = self.faults
        if f.stall_before_headers and self._in_scope(ctx):
            if not self._stall(ctx, "stall_before_headers", f.stall_before_headers):
                raise _Abort

    def _serve_content(
        self, ctx: _Ctx, info: FileInfo, extra: dict[str, str], *, advertise_ranges: bool = True
    ) -> None:
        h = ctx.handler
        etag = f'"{info.etag}"'
        size = info.size
        start, end = 0, size - 1
        status = 200
        range_header = h.headers.get("Range")
        headers = {
            "ETag": etag,
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            **extra,
        }
        if not advertise_ranges:  # a bare hub still honours Range but does not say so
            del headers["Accept-Ranges"]
        untyped = self.faults.no_content_type and self._in_scope(ctx)
        if untyped:
            del headers["Content-Type"]
        if range_header and self.faults.ignore_range and self._in_scope(ctx):
            self._fault_fired(ctx, "ignore_range")
            range_header = None
        if range_header:
            if_range = h.headers.get("If-Range")
            if if_range is not None and if_range.strip().removeprefix("W/").strip('"') != info.etag:
                range_header = None  # validator mismatch: whole, current representation
        if range_header:
            parsed = _parse_range(range_header, size)
            if parsed == "unsatisfiable":
                headers["Content-Range"] = f"bytes */{size}"
                self._error(ctx, 416, None, "Range Not Satisfiable", headers=headers)
                return
            if isinstance(parsed, tuple):
                start, end = parsed
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = max(0, end - start + 1)
        headers["Content-Length"] = str(length)
        self._send_headers(ctx, status, headers)
        if untyped:  # after the headers: the fault is recorded on this response's record
            self._fault_fired(ctx, "no_content_type")
        if ctx.method == "HEAD" or length == 0:
            return
        self._send_body(ctx, info, start, length)

    # ------------------------------------------------------------------ sending

    def _send_headers(self, ctx: _Ctx, status: int, headers: Mapping[str, str]) -> None:
        h = ctx.handler
        rng = h.headers.get("Range")
        record = RequestRecord(
            ctx.method, ctx.path, rng, status, ctx.kind, authorization="Authorization" in h.headers
        )
        with self._lock:
            self._stats.requests.append(record)
            self._cond.notify_all()
        ctx.record = record
        h.send_response(status)
        for k, v in headers.items():
            if k == "X-Repo-Commit" and (self.faults.hide_commit or self.faults.commit_as is not None):
                if self.faults.hide_commit:
                    continue
                v = self.faults.commit_as or ""
            h.send_header(k, v)
        h.end_headers()

    def _count(self, ctx: _Ctx, n: int) -> None:
        with self._lock:
            self._stats.bytes_served += n
            self._stats.bytes_by_path[ctx.path] += n
            if ctx.file is not None:
                self._stats.bytes_by_file[ctx.file] += n
            if ctx.record is not None:
                ctx.record.bytes_sent += n
            self._cond.notify_all()

    def _write_all(self, ctx: _Ctx, data: bytes | memoryview) -> None:
        """Write counting exactly what the kernel accepted, so an aborting client is counted right."""
        conn: socket.socket = ctx.handler.connection
        view = memoryview(data)
        while view:
            n = conn.send(view)
            self._count(ctx, n)
            view = view[n:]

    def _send_body(self, ctx: _Ctx, info: FileInfo, start: int, length: int) -> None:
        conn: socket.socket = ctx.handler.connection
        reset_at = self._take_once(ctx, "reset_after_bytes", "reset_every", lambda v: v < length)
        truncate_at = self._take_once(ctx, "truncate_after_bytes", "truncate_every", lambda v: v < length)
        stall = self._take_once(ctx, "stall_mid_body", "stall_every", lambda v: v[0] < length)
        flip = self._take_once(ctx, "flip_byte_at", "flip_every", lambda v: start <= v < start + length)
        per_conn_tat = time.monotonic()
        sent = 0
        with info.open() as src:
            src.seek(start)
            while sent < length:
                limit = length - sent
                for cut in (reset_at, truncate_at, stall[0] if stall else None):
                    if cut is not None and cut > sent:
                        limit = min(limit, cut - sent)
                # fault points are checked between writes
                if reset_at is not None and sent >= reset_at:
                    self._fault_fired(ctx, "reset")
                    _abort_socket(conn, close=True)
                    raise _Abort
                if truncate_at is not None and sent >= truncate_at:
                    self._fault_fired(ctx, "truncate")
                    with contextlib.suppress(OSError):
                        conn.shutdown(socket.SHUT_RDWR)
                    raise _Abort
                if stall is not None and sent >= stall[0]:
                    seconds = stall[1]
                    stall = None
                    if not self._stall(ctx, "stall_mid_body", seconds):
                        raise _Abort
                    continue
                n = min(CHUNK, limit)
                per_rate = self.faults.rate_limit_per_connection if self._in_scope(ctx) else None
                if per_rate:
                    n = max(1, min(n, int(per_rate / 20)))
                glob_rate = self.faults.rate_limit_global
                if glob_rate:
                    n = max(1, min(n, int(glob_rate / 20)))
                block = src.read(n)
                if not block:
                    raise _Abort  # file shrank under us
                if flip is not None and start + sent <= flip < start + sent + len(block):
                    b = bytearray(block)
                    b[flip - start - sent] ^= 0xFF
                    block = bytes(b)
                    flip = None
                    self._fault_fired(ctx, "flip")
                # token bucket without burst, charged before sending: n bytes take >= n / rate seconds
                delay = 0.0
                now = time.monotonic()
                if per_rate:
                    per_conn_tat = max(per_conn_tat, now) + len(block) / per_rate
                    delay = per_conn_tat - now
                if glob_rate:
                    with self._lock:
                        self._global_tat = max(self._global_tat, now) + len(block) / glob_rate
                        delay = max(delay, self._global_tat - now)
                if delay > 0 and not self._wait(delay, conn):
                    raise _Abort
                self._write_all(ctx, block)
                sent += len(block)

    def _send_json(
        self, ctx: _Ctx, payload: Any, *, commit: str | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        body = json.dumps(payload).encode()
        hdrs = {"Content-Type": "application/json; charset=utf-8", "Content-Length": str(len(body))}
        if commit is not None:
            hdrs["X-Repo-Commit"] = commit
        hdrs.update(headers or {})
        self._send_headers(ctx, 200, hdrs)
        if ctx.method != "HEAD":
            self._write_all(ctx, body)

    def _error(
        self,
        ctx: _Ctx,
        status: int,
        code: str | None,
        message: str,
        *,
        commit: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        body = json.dumps({"error": message}).encode()
        hdrs = {
            "Content-Type": "application/json; charset=utf-8",
            "Content-Length": str(len(body)),
            "X-Error-Message": message,
        }
        if code is not None:
            hdrs["X-Error-Code"] = code
        if commit is not None:
            hdrs["X-Repo-Commit"] = commit
        hdrs.update(headers or {})
        hdrs["Content-Length"] = str(len(body))
        self._send_headers(ctx, status, hdrs)
        if ctx.method != "HEAD":
            self._write_all(ctx, body)

    def _plain(self, ctx: _Ctx, status: int, message: str) -> None:
        body = message.encode()
        self._send_headers(ctx, status, {"Content-Type": "text/plain", "Content-Length": str(len(body))})
        if ctx.method != "HEAD":
            self._write_all(ctx, body)


def _abort_socket(conn: socket.socket, *, close: bool) -> None:
    """End the connection with a TCP RST (SO_LINGER 0 + close), a real 'connection reset'.

    close=False is for sockets owned by another thread: closing them here could race with fd reuse,
    so shutdown() wakes the owner, which then closes (sending the RST if data is pending)."""
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    if close:
        with contextlib.suppress(OSError):
            conn.close()
    else:
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)


def _parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """(start, end) inclusive, "unsatisfiable", or None to ignore (malformed or multi-range)."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, sep, last = spec.strip().partition("-")
    if not sep:
        return None
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                return "unsatisfiable"
            return (max(0, size - n), size - 1) if size > 0 else "unsatisfiable"
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start < 0 or (last and end < start):
        return None  # syntactically invalid: ignored, per RFC 9110
    if start >= size:
        return "unsatisfiable"
    return start, min(end, size - 1)
