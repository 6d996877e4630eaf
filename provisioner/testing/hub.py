"""A local Hugging Face Hub emulator for tests, the demo and benchmarks.

Pure stdlib. It speaks the subset of the hub HTTP protocol that ``huggingface_hub`` 2.4 and the
native engine use (see docs/design.md and shared/context/huggingface_hub-2.4.md):

* ``GET /api/models/{repo}[/revision/{rev}]`` (``?blobs=true`` adds sizes and LFS info),
* ``GET /api/models/{repo}/tree/{rev}[/{path}]`` with ``Link: <...>; rel="next"`` pagination,
* ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: regular files are served directly, LFS files get a
  302 to a signed, expiring CDN URL,
* ``HEAD``/``GET /cdn/{sha256}/{path}?Expires=..&Signature=..`` on a *second* port, so the CDN is
  a different origin: ``huggingface_hub`` then stops following at the 302 (reading ``X-Linked-*``
  from it) and does not forward the Authorization header, exactly as with the real CDN.

Everything is counted (``hub.stats``) and most network failures can be injected at runtime
(``hub.faults``, ``hub.fail_next``, ``hub.outage`` ...). Run standalone with
``python -m provisioner.testing.hub --repo ID=DIR``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import fnmatch
import hashlib
import hmac
import http.server
import json
import math
import os
import secrets
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

__all__ = [
    "DEFAULT_LFS_PATTERNS",
    "Faults",
    "FileInfo",
    "HubEmulator",
    "HubStats",
    "RequestRecord",
    "blob_sha1_of_bytes",
    "hash_file",
    "lfs_pointer",
    "prime_hash_cache",
]

DEFAULT_LFS_PATTERNS: tuple[str, ...] = ("*.safetensors", "*.bin", "*.pt", "*.onnx", "*.h5", "*.msgpack")
DEFAULT_LFS_THRESHOLD = 10 * 1024 * 1024
CHUNK = 1024 * 1024  # large writes: ~1 GB/s on loopback; fault cut points stay byte-exact
_HASH_READ = 1024 * 1024
_EPOCH = "2024-01-01T00:00:00.000Z"


# --------------------------------------------------------------------------------------------- hashes


def blob_sha1_of_bytes(data: bytes) -> str:
    """Git blob sha1 of ``data`` (what the hub reports as ``oid`` for regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file the hub stores in git for an LFS file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


_hash_cache: dict[tuple[str, int, int, int], tuple[str, str]] = {}
_hash_cache_lock = threading.Lock()


def _cache_key(path: Path) -> tuple[str, int, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)


def prime_hash_cache(path: str | os.PathLike[str], *, sha256: str, blob_sha1: str) -> None:
    """Record known hashes of a file (e.g. computed while generating it) so add_repo skips hashing."""
    with _hash_cache_lock:
        _hash_cache[_cache_key(Path(path))] = (sha256, blob_sha1)


def hash_file(path: str | os.PathLike[str]) -> tuple[str, str]:
    """Streaming (sha256, git blob sha1) of a file; cached by (path, size, mtime, inode)."""
    p = Path(path)
    key = _cache_key(p)
    with _hash_cache_lock:
        hit = _hash_cache.get(key)
    if hit is not None:
        return hit
    sha256 = hashlib.sha256()
    sha1 = hashlib.sha1(b"blob %d\0" % key[1])
    with open(p, "rb") as f:
        while block := f.read(_HASH_READ):
            sha256.update(block)
            sha1.update(block)
    result = (sha256.hexdigest(), sha1.hexdigest())
    with _hash_cache_lock:
        _hash_cache[key] = result
    return result


# --------------------------------------------------------------------------------------------- repos


@dataclass(frozen=True)
class FileInfo:
    """One file of one commit. Content lives either on disk (``source``) or in memory (``data``)."""

    path: str
    size: int
    sha256: str
    blob_sha1: str  # git blob sha1 of the content itself
    lfs: bool
    source: Path | None = None
    data: bytes | None = field(default=None, repr=False)

    @property
    def pointer(self) -> bytes:
        return lfs_pointer(self.sha256, self.size)

    @property
    def oid(self) -> str:
        """The git oid the hub reports: for LFS files that of the pointer file, like the real hub."""
        return blob_sha1_of_bytes(self.pointer) if self.lfs else self.blob_sha1

    @property
    def etag(self) -> str:
        """Unquoted ETag of the content: sha256 for LFS, git blob sha1 otherwise."""
        return self.sha256 if self.lfs else self.blob_sha1

    def open(self) -> BinaryIO:
        if self.source is not None:
            return open(self.source, "rb")
        import io

        return io.BytesIO(self.data or b"")


@dataclass
class _Repo:
    repo_id: str
    token: str | None
    gated: bool
    refs: dict[str, str] = field(default_factory=dict)  # branch/tag -> commit
    commits: dict[str, dict[str, FileInfo]] = field(default_factory=dict)
    lfs_threshold: int = DEFAULT_LFS_THRESHOLD
    lfs_patterns: tuple[str, ...] = DEFAULT_LFS_PATTERNS


def _commit_sha(files: Mapping[str, FileInfo]) -> str:
    h = hashlib.sha1()
    for path in sorted(files):
        h.update(f"{path}\0{files[path].blob_sha1}\n".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------- faults


@dataclass
class Faults:
    """Runtime-settable faults. Plain attribute assignment from the test thread is safe (GIL-atomic);
    one-shot faults are consumed under the hub lock.

    Body faults (reset, truncate, stall_mid_body, flip, ignore_range, per-connection rate,
    stall_before_headers) apply to resolve and CDN responses whose repo file path (or URL path)
    matches the glob ``path``.
    """

    path: str = "*"
    rate_limit_global: float | None = None  # bytes/s shared by all responses
    rate_limit_per_connection: float | None = None  # bytes/s per response stream
    reset_after_bytes: int | None = None  # RST the connection after N body bytes
    reset_every: bool = False  # False: fires once, then clears itself
    truncate_after_bytes: int | None = None  # clean close (FIN) after N body bytes < Content-Length
    truncate_every: bool = False
    stall_before_headers: float = 0.0  # seconds; inf = until the client leaves or the hub stops
    stall_mid_body: tuple[int, float] | None = None  # (after N body bytes of the response, seconds)
    stall_every: bool = False  # applies to stall_mid_body
    stall_api: float = 0.0  # seconds before answering /api/ calls
    flip_byte_at: int | None = None  # absolute file offset (also inside a Range) inverted in transit
    flip_every: bool = False
    ignore_range: bool = False  # answer 200 + full body to Range requests

    def clear(self) -> None:
        """Reset every fault to its default."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, f.default)


@dataclass
class _FailRule:
    remaining: int
    status: int
    retry_after: float | None
    kind: str
    path: str


# --------------------------------------------------------------------------------------------- stats


@dataclass
class RequestRecord:
    method: str
    path: str  # URL path without the query
    range: str | None
    status: int
    kind: str  # api | resolve | cdn | other
    bytes_sent: int = 0
    fault: str | None = None  # the fault that hit this response, if any
    done: bool = False  # the handler has finished with this response (sent, failed or aborted)
    authorization: bool = False  # the request carried an Authorization header (must not reach the CDN)


@dataclass
class HubStats:
    """A snapshot of the hub counters (``hub.stats`` returns a fresh copy each time)."""

    bytes_served: int = 0  # body bytes accepted by the kernel, over all responses
    bytes_by_path: Counter[str] = field(default_factory=Counter)  # by URL path
    bytes_by_file: Counter[str] = field(default_factory=Counter)  # by repo file path (resolve + cdn)
    requests_by_kind: Counter[str] = field(default_factory=Counter)
    requests_by_path: Counter[str] = field(default_factory=Counter)
    requests: list[RequestRecord] = field(default_factory=list)
    faults_fired: Counter[str] = field(default_factory=Counter)
    connections: int = 0  # TCP connections accepted

    def requests_for(self, *, kind: str | None = None, path: str | None = None) -> list[RequestRecord]:
        """Records filtered by kind and/or URL path glob."""
        return [
            r
            for r in self.requests
            if (kind is None or r.kind == kind) and (path is None or fnmatch.fnmatchcase(r.path, path))
        ]


# --------------------------------------------------------------------------------------------- HTTP


class _Abort(Exception):
    """Stop handling this connection (client gone, fault fired, or hub stopping)."""


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr: tuple[str, int], hub: HubEmulator, role: str) -> None:
        self.hub = hub
        self.role = role  # "hub" or "cdn"
        super().__init__(addr, _Handler)

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


@dataclass
class _Ctx:
    """Per-request state."""

    handler: _Handler
    method: str
    path: str
    query: dict[str, list[str]]
    kind: str
    record: RequestRecord | None = None
    file: str | None = None


# --------------------------------------------------------------------------------------------- the hub


class HubEmulator:
    """In-process hub + CDN on 127.0.0.1. Use as a context manager or call start()/stop()."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        cdn_port: int = 0,
        page_size: int = 1000,
        signed_url_ttl: float = 3600.0,
    ) -> None:
        self.host = host
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

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> HubEmulator:
        """Bind both listeners (hub and CDN) and serve in daemon threads."""
        with self._lock:
            self._stopping = False
            self._old_wakes += [self._wake_r, self._wake_w]
            self._wake_r, self._wake_w = socket.socketpair()
        self._bind()
        return self

    def stop(self) -> None:
        """Stop serving, abort open connections and wake every stall; idempotent."""
        self._stopping = True
        self._outage_cancel.set()
        self._unbind()
        self._interrupt_waits()
        if self._outage_timer is not None and self._outage_timer is not threading.current_thread():
            self._outage_timer.join(timeout=5)
        with self._lock:
            for s in self._old_wakes:
                s.close()
            self._old_wakes.clear()

    def __enter__(self) -> HubEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Hub endpoint, e.g. ``http://127.0.0.1:PORT`` (pass as ``endpoint=``)."""
        return f"http://{self.host}:{self._port}"

    @property
    def cdn_url(self) -> str:
        """Origin of the CDN the LFS redirects point to."""
        return f"http://{self.host}:{self._cdn_port}"

    @property
    def port(self) -> int:
        return self._port

    @property
    def is_up(self) -> bool:
        return self._up.is_set()

    def wait_up(self, timeout: float = 10.0) -> bool:
        """Block until the hub is serving again (after an outage)."""
        return self._up.wait(timeout)

    def _bind(self) -> None:
        with self._lock:
            if self._servers:
                return
            hub_srv = _Server((self.host, self._port), self, "hub")
            cdn_srv = _Server((self.host, self._cdn_port), self, "cdn")
            self._port = hub_srv.server_address[1]
            self._cdn_port = cdn_srv.server_address[1]
            for srv in (hub_srv, cdn_srv):
                t = threading.Thread(
                    target=srv.serve_forever,
                    kwargs={"poll_interval": 0.05},
                    daemon=True,
                    name=f"hub-{srv.role}",
                )
                t.start()
                self._servers.append((srv, t))
            self._up.set()

    def _unbind(self) -> None:
        with self._lock:
            servers, self._servers = self._servers, []
            self._up.clear()
            conns = list(self._conns)
        for srv, t in servers:
            srv.shutdown()
            srv.server_close()
            t.join(timeout=5)
        for conn in conns:
            _abort_socket(conn, close=False)

    def down(self) -> None:
        """Start an outage: close the listening sockets (connects are refused) and reset open connections."""
        self._outage_cancel.set()
        self._unbind()
        self._interrupt_waits()

    def up(self) -> None:
        """End an outage: listen again on the same ports."""
        self._outage_cancel.set()
        if not self._stopping:
            self._bind()

    def outage(self, seconds: float) -> None:
        """down() now and up() again after ``seconds`` (in a background thread; see wait_up())."""
        self.down()
        cancel = threading.Event()
        self._outage_cancel = cancel

        def later() -> None:
            if not cancel.wait(seconds) and not self._stopping:
                self._bind()

        self._outage_timer = threading.Thread(target=later, daemon=True, name="hub-outage")
        self._outage_timer.start()

    # ------------------------------------------------------------------ repos

    def add_repo(
        self,
        repo_id: str,
        source: str | os.PathLike[str] | Mapping[str, bytes],
        *,
        revision: str = "main",
        commit: str | None = None,
        tags: Iterable[str] = (),
        lfs_threshold: int = DEFAULT_LFS_THRESHOLD,
        lfs_patterns: Iterable[str] = DEFAULT_LFS_PATTERNS,
        gated: bool = False,
        token: str | None = None,
        hashes: Mapping[str, tuple[str, str]] | None = None,
    ) -> str:
        """Publish a directory (served from disk, streamed) or a {path: bytes} dict as ``revision``.

        Adding the same repo_id again adds another revision. ``hashes`` maps path -> (sha256, blob_sha1)
        to skip hashing. Files >= lfs_threshold or matching lfs_patterns are LFS. Returns the commit sha.
        """
        patterns = tuple(lfs_patterns)
        files: dict[str, FileInfo] = {}
        hashes = hashes or {}

        def is_lfs(path: str, size: int) -> bool:
            return size >= lfs_threshold or any(fnmatch.fnmatch(Path(path).name, p) for p in patterns)

        if isinstance(source, Mapping):
            for path, data in source.items():
                path = _clean_path(path)
                files[path] = FileInfo(
                    path, len(data), hashlib.sha256(data).hexdigest(), blob_sha1_of_bytes(data),
                    is_lfs(path, len(data)), data=bytes(data),
                )  # fmt: skip
        else:
            root = Path(source)
            if not root.is_dir():
                raise NotADirectoryError(root)
            for p in sorted(root.rglob("*")):
                rel = p.relative_to(root).as_posix()
                if not p.is_file() or rel.split("/")[0] == ".git":
                    continue
                size = p.stat().st_size
                sha256, sha1 = hashes[rel] if rel in hashes else hash_file(p)
                files[rel] = FileInfo(rel, size, sha256, sha1, is_lfs(rel, size), source=p.resolve())
        with self._lock:
            repo = self._repos.get(repo_id)
            if repo is None:
                repo = _Repo(repo_id, token, gated, lfs_threshold=lfs_threshold, lfs_patterns=patterns)
                self._repos[repo_id] = repo
            else:
                repo.token, repo.gated = token, gated
            return self._publish(repo, files, revision, commit, tags)

    def _publish(
        self, repo: _Repo, files: dict[str, FileInfo], revision: str, commit: str | None, tags: Iterable[str]
    ) -> str:
        sha = commit or _commit_sha(files)
        if len(sha) != 40 or any(c not in "0123456789abcdef" for c in sha):
            raise ValueError(f"commit must be 40 lowercase hex chars: {sha!r}")
        repo.commits[sha] = files
        for ref in (revision, *tags):
            repo.refs[ref] = sha
        for f in files.values():
            self._blobs.setdefault(f.sha256, f)
        return sha

    def set_ref(self, repo_id: str, ref: str, commit: str) -> None:
        """Point a branch/tag at an existing commit."""
        with self._lock:
            repo = self._repos[repo_id]
            if commit not in repo.commits:
                raise KeyError(commit)
            repo.refs[ref] = commit

    def replace_file(
        self,
        repo_id: str,
        path: str,
        content: bytes | str | os.PathLike[str],
        *,
        revision: str = "main",
    ) -> str:
        """Change (or add) one file on ``revision`` as a new commit; old commits stay resolvable."""
        path = _clean_path(path)
        if isinstance(content, bytes):
            size = len(content)
            sha256, sha1 = hashlib.sha256(content).hexdigest(), blob_sha1_of_bytes(content)
            src, data = None, content
        else:
            src, data = Path(content).resolve(), None
            size = src.stat().st_size
            sha256, sha1 = hash_file(src)
        with self._lock:
            repo = self._repos[repo_id]
            files = dict(repo.commits[repo.refs[revision]])
            lfs = size >= repo.lfs_threshold or any(
                fnmatch.fnmatch(Path(path).name, p) for p in repo.lfs_patterns
            )
            files[path] = FileInfo(path, size, sha256, sha1, lfs, source=src, data=data)
            return self._publish(repo, files, revision, None, ())

    def delete_file(self, repo_id: str, path: str, *, revision: str = "main") -> str:
        """Remove a file on ``revision`` as a new commit."""
        with self._lock:
            repo = self._repos[repo_id]
            files = dict(repo.commits[repo.refs[revision]])
            del files[_clean_path(path)]
            return self._publish(repo, files, revision, None, ())

    def commit_of(self, repo_id: str, revision: str = "main") -> str:
        with self._lock:
            repo = self._repos[repo_id]
            return revision if revision in repo.commits else repo.refs[revision]

    def files(self, repo_id: str, revision: str = "main") -> dict[str, FileInfo]:
        """The files of a revision (path -> FileInfo), e.g. to compare against downloads."""
        with self._lock:
            return dict(self._repos[repo_id].commits[self.commit_of(repo_id, revision)])

    # ------------------------------------------------------------------ fault helpers

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int = 500,
        retry_after: float | None = None,
        kind: str = "any",
        path: str = "*",
    ) -> None:
        """The next ``n`` requests of ``kind`` (api|resolve|cdn|any) whose path matches get ``status``."""
        if kind not in ("api", "resolve", "cdn", "any"):
            raise ValueError(kind)
        with self._lock:
            self._fail_rules.append(_FailRule(n, status, retry_after, kind, path))

    def expire_signed_urls_now(self) -> None:
        """Invalidate every CDN URL handed out so far (the next CDN request gets 403)."""
        with self._lock:
            self._sign_key = secrets.token_bytes(32)

    def release_stalls(self) -> None:
        """Wake every stall currently in progress (later stalls still happen)."""
        self._interrupt_waits()

    def clear_faults(self) -> None:
        """Remove all faults and pending fail_next bursts."""
        with self._lock:
            self.faults.clear()
            self._fail_rules.clear()
            self._global_tat = 0.0
        self._interrupt_waits()

    # ------------------------------------------------------------------ stats

    @property
    def stats(self) -> HubStats:
        """A consistent snapshot of the counters."""
        with self._lock:
            return copy.deepcopy(self._stats)

    def reset_stats(self) -> None:
        with self._lock:
            self._stats = HubStats()
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[HubStats], bool], timeout: float = 10.0) -> bool:
        """Wait until ``predicate(stats)`` is true (re-checked on every counter change)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self._stats):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no request is being handled, so counters are final (a client can have read the
        last byte before the server thread counted it)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

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

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, h: _Handler) -> None:
        split = urlsplit(h.path)
        raw_path = split.path
        if raw_path.startswith("/api/"):
            kind = "api"
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
            if kind == "api":
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

    def _stall(self, ctx: _Ctx, name: str, seconds: float) -> bool:
        self._fault_fired(ctx, name)
        return self._wait(seconds, ctx.handler.connection)

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

    # ------------------------------------------------------------------ auth / lookup

    def _find_repo(self, segs: list[str], markers: tuple[str, ...]) -> tuple[str, list[str]]:
        """Split path segments into (repo_id, rest), preferring known two-segment ids."""
        with self._lock:
            if len(segs) >= 2 and f"{segs[0]}/{segs[1]}" in self._repos:
                return f"{segs[0]}/{segs[1]}", segs[2:]
            if segs and segs[0] in self._repos:
                return segs[0], segs[1:]
        if len(segs) >= 2 and segs[1] in markers:
            return segs[0], segs[1:]
        return "/".join(segs[:2]), segs[2:]

    def _authorize(self, ctx: _Ctx, repo_id: str) -> _Repo | None:
        with self._lock:
            repo = self._repos.get(repo_id)
        if repo is None:
            self._error(ctx, 404, "RepoNotFound", f"Repository {repo_id} not found")
            return None
        if repo.token is None and not repo.gated:
            return repo
        auth = ctx.handler.headers.get("Authorization", "")
        given = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        code = "GatedRepo" if repo.gated else "RepoNotFound"
        if not given:
            self._error(ctx, 401, code, f"Access to {repo_id} requires authentication")
            return None
        if repo.token is not None and not hmac.compare_digest(given, repo.token):
            self._error(ctx, 403, code if repo.gated else None, f"Invalid credentials for {repo_id}")
            return None
        return repo

    def _commit_for(self, ctx: _Ctx, repo: _Repo, rev: str) -> str | None:
        with self._lock:
            if rev in repo.refs:
                return repo.refs[rev]
            if rev in repo.commits:
                return rev
        self._error(ctx, 404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return None

    # ------------------------------------------------------------------ API

    def _handle_api(self, ctx: _Ctx, raw_path: str) -> None:
        segs = raw_path.split("/")[2:]  # after "", "api"
        if not segs or segs[0] != "models":
            self._error(ctx, 404, None, "Only model repos are emulated")
            return
        repo_id, rest = self._find_repo([unquote(s) for s in segs[1:] if s != ""], ("revision", "tree"))
        repo = self._authorize(ctx, repo_id)
        if repo is None:
            return
        if not rest:
            rest = ["revision", "main"]
        if rest[0] == "revision" and len(rest) >= 2:
            rev = "/".join(rest[1:])
            commit = self._commit_for(ctx, repo, rev)
            if commit is not None:
                self._send_json(ctx, self._model_info(repo, commit, ctx.query), commit=commit)
        elif rest[0] == "tree" and len(rest) >= 2:
            # the revision is quoted with safe="" by the client, so it is exactly one raw segment
            rev, sub = rest[1], "/".join(rest[2:])
            commit = self._commit_for(ctx, repo, rev)
            if commit is not None:
                self._tree(ctx, repo, rev, commit, sub.strip("/"))
        else:
            self._error(ctx, 404, None, "Unknown API route")

    def _model_info(self, repo: _Repo, commit: str, query: dict[str, list[str]]) -> dict[str, Any]:
        with self._lock:
            files = repo.commits[commit]
        blobs = _truthy(query.get("blobs"))
        siblings: list[dict[str, Any]] = []
        for f in sorted(files.values(), key=lambda f: f.path):
            s: dict[str, Any] = {"rfilename": f.path}
            if blobs:
                s["size"] = f.size
                s["blobId"] = f.oid
                if f.lfs:
                    s["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": len(f.pointer)}
            siblings.append(s)
        author = repo.repo_id.split("/")[0] if "/" in repo.repo_id else None
        return {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": author,
            "sha": commit,
            "lastModified": _EPOCH,
            "createdAt": _EPOCH,
            "private": repo.token is not None and not repo.gated,
            "gated": "auto" if repo.gated else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "library_name": None,
            "siblings": siblings,
        }

    def _tree(self, ctx: _Ctx, repo: _Repo, rev: str, commit: str, sub: str) -> None:
        with self._lock:
            files = repo.commits[commit]
        recursive = _truthy(ctx.query.get("recursive"))
        expand = _truthy(ctx.query.get("expand"))
        prefix = f"{sub}/" if sub else ""
        dirs: set[str] = set()
        for p in files:
            parts = p.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add("/".join(parts[:i]))
        if sub and sub not in dirs and sub not in files:
            self._error(ctx, 404, "EntryNotFound", f"{sub} does not exist on {rev}", commit=commit)
            return
        entries: list[dict[str, Any]] = []
        candidates: list[tuple[str, FileInfo | None]] = sorted(
            [(d, None) for d in dirs] + list(files.items()), key=lambda x: x[0]
        )
        for path, info in candidates:
            if sub in files:
                if path != sub:  # a file path lists as that single entry
                    continue
            elif not path.startswith(prefix) or (not recursive and "/" in path[len(prefix) :]):
                continue
            if info is None:
                entries.append({"type": "directory", "oid": _dir_oid(files, path), "path": path})
            else:
                e: dict[str, Any] = {"type": "file", "oid": info.oid, "size": info.size, "path": path}
                if info.lfs:
                    e["lfs"] = {"oid": info.sha256, "size": info.size, "pointerSize": len(info.pointer)}
                if expand:
                    e["lastCommit"] = {"id": commit, "title": "emulated commit", "date": _EPOCH}
                entries.append(e)
        try:
            cursor = int(ctx.query.get("cursor", ["0"])[0])
        except ValueError:
            cursor = 0
        page = entries[cursor : cursor + self.page_size]
        headers: dict[str, str] = {}
        if cursor + self.page_size < len(entries):
            q = {k: v[0] for k, v in ctx.query.items() if k != "cursor"}
            q["cursor"] = str(cursor + self.page_size)
            base = ctx.handler.path.split("?", 1)[0]
            headers["Link"] = f'<{self.url}{base}?{urlencode(q)}>; rel="next"'
        self._send_json(ctx, page, commit=commit, headers=headers)

    # ------------------------------------------------------------------ files

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
        if info.lfs:
            self._redirect_to_cdn(ctx, info, commit)
        else:
            self._serve_content(ctx, info, {"X-Repo-Commit": commit})

    def _pre_body_faults(self, ctx: _Ctx) -> None:
        f = self.faults
        if f.stall_before_headers and self._in_scope(ctx):
            if not self._stall(ctx, "stall_before_headers", f.stall_before_headers):
                raise _Abort

    def _in_scope(self, ctx: _Ctx) -> bool:
        pattern = self.faults.path
        return _glob(pattern, ctx.path) or (ctx.file is not None and _glob(pattern, ctx.file))

    def _sign(self, sha: str, expires: int) -> str:
        with self._lock:
            key = self._sign_key
        return hmac.new(key, f"{sha}:{expires}".encode(), hashlib.sha256).hexdigest()

    def _redirect_to_cdn(self, ctx: _Ctx, info: FileInfo, commit: str) -> None:
        expires = int(time.time() + self.signed_url_ttl)
        query = urlencode({"Expires": expires, "Signature": self._sign(info.sha256, expires)})
        location = f"{self.cdn_url}/cdn/{info.sha256}/{quote(info.path)}?{query}"
        self._send_headers(
            ctx,
            302,
            {
                "Location": location,
                "X-Repo-Commit": commit,
                "X-Linked-Etag": f'"{info.sha256}"',
                "X-Linked-Size": str(info.size),
                "ETag": f'"{info.sha256}"',
                "Content-Length": "0",
            },
        )

    def _handle_cdn(self, ctx: _Ctx, sha: str) -> None:
        try:
            expires = int(ctx.query["Expires"][0])
            signature = ctx.query["Signature"][0]
        except (KeyError, ValueError, IndexError):
            self._plain(ctx, 403, "Missing signature")
            return
        if not hmac.compare_digest(signature, self._sign(sha, expires)):
            self._plain(ctx, 403, "Signature does not match")
            return
        if time.time() >= expires:
            self._plain(ctx, 403, "Request has expired")
            return
        with self._lock:
            info = self._blobs.get(sha)
        if info is None:
            self._plain(ctx, 404, "NoSuchKey")
            return
        self._serve_content(ctx, info, {})

    def _serve_content(self, ctx: _Ctx, info: FileInfo, extra: dict[str, str]) -> None:
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


# --------------------------------------------------------------------------------------------- helpers


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


def _clean_path(path: str) -> str:
    p = path.replace("\\", "/").strip("/")
    if not p or any(part in ("", ".", "..") for part in p.split("/")):
        raise ValueError(f"bad repo path {path!r}")
    return p


def _glob(pattern: str, value: str) -> bool:
    return pattern == "*" or fnmatch.fnmatchcase(value, pattern)


def _truthy(values: list[str] | None) -> bool:
    return bool(values) and values[-1].lower() in ("1", "true", "yes")  # type: ignore[index]


def _fmt_num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _dir_oid(files: Mapping[str, FileInfo], directory: str) -> str:
    h = hashlib.sha1(directory.encode() + b"\0")
    for p in sorted(files):
        if p.startswith(directory + "/"):
            h.update(f"{p}\0{files[p].oid}\n".encode())
    return h.hexdigest()


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


# --------------------------------------------------------------------------------------------- CLI


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m provisioner.testing.hub", description=__doc__.split("\n")[0])
    ap.add_argument(
        "--repo", action="append", default=[], metavar="ID=DIR", help="repo to serve (repeatable)"
    )
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--cdn-port", type=int, default=0)
    ap.add_argument("--token", default=None, help="require this bearer token for every repo")
    ap.add_argument("--rate-limit", type=float, default=None, help="global bytes/s")
    ap.add_argument("--page-size", type=int, default=1000)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    hub = HubEmulator(port=args.port, cdn_port=args.cdn_port, page_size=args.page_size)
    for spec in args.repo:
        repo_id, sep, directory = spec.partition("=")
        if not sep:
            print(f"--repo expects ID=DIR, got {spec!r}", file=sys.stderr)
            return 2
        hub.add_repo(repo_id, directory, token=args.token)
    hub.faults.rate_limit_global = args.rate_limit
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    with hub:
        print(hub.url, flush=True)
        done.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
