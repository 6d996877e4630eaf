"""`model-provisioner serve`: a ready target, read-only, over the hub's download protocol.

Owns the hub-protocol server other provisioners (and huggingface_hub) use as a byte mirror:
`HEAD`/`GET /{repo}/resolve/{rev}/{path}` (Range -> 206, the ETag the hub gives: the quoted sha256
for LFS files, the quoted git blob sha1 otherwise; `X-Repo-Commit`), `GET /api/models/{repo}/revision/{rev}`
and `GET /api/models/{repo}/tree/{rev}[/{sub}]` for the one commit in the ready marker (`rev` = that
commit or the marker's revision name), `/metrics` and `/healthz`. Nothing here is trusted by a client
of ours: it hashes every byte against the plan from the authoritative hub.

Safety rules: every request re-resolves DIR once (it may be a versioned-layout link switched at any
time) and re-checks the marker (`check_ready`, one stat per file): not ready -> 503. Only paths listed
in the marker are served (anything else -> 404), opened with O_NOFOLLOW below a root whose realpath
must not change along the way, so no symlink leads out. Threads are bounded; a client that goes away
mid-body is not an error. Imports marker, manifest and serve.server (listen parsing) only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import stat
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..state.marker import check_ready
from .server import parse_listen

log = logging.getLogger("provisioner.serve")

MAX_THREADS = 32  # concurrent requests; more wait in the listen backlog
CLIENT_TIMEOUT_SECONDS = 60.0  # a client that sends nothing (or reads nothing) this long is dropped
CHUNK = 1 << 20
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)
_EPOCH = "1970-01-01T00:00:00.000Z"


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _lfs(f: dict[str, Any], *, key: str) -> tuple[str, dict[str, Any]]:
    """(git oid of the LFS pointer, the `lfs` object): what the hub reports for an LFS file."""
    pointer = _lfs_pointer(str(f["sha256"]), int(f["size"]))
    oid = hashlib.sha1(b"blob %d\0" % len(pointer) + pointer).hexdigest()
    return oid, {key: f["sha256"], "size": f["size"], "pointerSize": len(pointer)}


@dataclass(frozen=True)
class _View:
    """One request's look at DIR: its resolved root and the ready marker found there."""

    root: Path
    marker: dict[str, Any]

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        return {str(f["path"]): f for f in self.marker["files"]}

    def matches(self, repo_id: str, rev: str) -> bool:
        return repo_id == self.marker["repo_id"] and rev in (self.marker["revision"], self.marker["commit"])


class ServeMetrics:
    """The served-bytes and requests-by-status counters, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.bytes = Counter("model_provisioner_served_bytes", "File bytes sent to mirror clients.",
                             registry=self.registry)
        self.requests = Counter("model_provisioner_served_requests", "Requests answered by the mirror server.",
                                ["status"], registry=self.registry)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr: tuple[str, int], hub: HubServer) -> None:
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        self.hub = hub
        self.slots = threading.BoundedSemaphore(MAX_THREADS)
        self.closing = threading.Event()
        super().__init__(addr, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Bounded threads: the accept loop waits for a free one (timeout: notice a stop while all are busy).
        while not self.slots.acquire(timeout=0.5):
            if self.closing.is_set():
                self.shutdown_request(request)
                return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("mirror request from %s ended with an error", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "model-provisioner-serve"
    timeout = CLIENT_TIMEOUT_SECONDS
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request would drown the provisioner's own logs

    def handle(self) -> None:
        try:
            super().handle()
        except (OSError, ValueError):  # a client that went away or timed out: nothing to report
            self.close_connection = True

    def do_GET(self) -> None:
        self.server.hub.dispatch(self)

    def do_HEAD(self) -> None:
        self.server.hub.dispatch(self)


class HubServer:
    """Serve one ready directory read-only over the hub protocol on `listen` (HOST:PORT, port 0 = any)."""

    def __init__(self, directory: Path, *, listen: str, metrics: ServeMetrics | None = None) -> None:
        self.directory = Path(directory)
        self.listen = listen
        self.metrics = metrics or ServeMetrics()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self) -> HubServer:
        self._httpd = _Server(parse_listen(self.listen), self)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-serve", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.closing.set()
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    @property
    def port(self) -> int:
        assert self._httpd is not None  # start() first
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = parse_listen(self.listen)[0]
        host = "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    # ---- requests -----------------------------------------------------------------------------
    def dispatch(self, h: _Handler) -> None:
        split = urlsplit(h.path)
        raw = split.path
        if raw == "/metrics":
            self._send(h, 200, generate_latest(self.metrics.registry), content_type=CONTENT_TYPE_LATEST)
            return
        if raw == "/healthz":
            self._send(h, 200, b"ok\n", content_type="text/plain")
            return
        view = self._view()
        if view is None:
            self._error(h, 503, None, f"{self.directory} is not ready")
            return
        if raw.startswith("/api/models/"):
            self._api(h, view, raw[len("/api/models/"):], parse_qs(split.query))
        elif "/resolve/" in raw:
            self._resolve(h, view, raw)
        else:
            self._error(h, 404, None, "not found")

    def _view(self) -> _View | None:
        """DIR resolved once for this request (a versioned link may switch between requests)."""
        try:
            root = Path(os.path.realpath(self.directory))
        except OSError:  # a dangling or looping link: not ready
            return None
        result = check_ready(root)
        if not result.ok or result.marker is None:
            return None
        return _View(root=root, marker=result.marker)

    def _api(self, h: _Handler, view: _View, rest: str, query: dict[str, list[str]]) -> None:
        repo_id = str(view.marker["repo_id"])
        segs = [unquote(s) for s in rest.split("/")]
        n = len(repo_id.split("/"))
        if "/".join(segs[:n]) != repo_id or len(segs) < n + 2:
            self._error(h, 404, "RepoNotFound", "repository not served here")
            return
        kind, rev, sub = segs[n], segs[n + 1], "/".join(segs[n + 2:]).strip("/")
        if kind not in ("revision", "tree") or not view.matches(repo_id, rev):
            self._error(h, 404, "RevisionNotFound", f"revision {rev} not served here")
            return
        commit = view.marker.get("commit")  # None: the origin named none; neither do we
        files = sorted(view.files.values(), key=lambda f: str(f["path"]))
        if kind == "revision":
            body: Any = {"id": repo_id, "modelId": repo_id, "sha": commit, "lastModified": _EPOCH,
                         "private": False, "gated": False, "disabled": False, "tags": [],
                         "siblings": [_sibling(f) for f in files]}
        else:
            recursive = (query.get("recursive") or ["false"])[-1].lower() in ("1", "true")
            body = _tree(files, sub=sub, recursive=recursive)
            if body is None:
                self._error(h, 404, "EntryNotFound", f"{sub} does not exist on {rev}")
                return
        self._send(h, 200, json.dumps(body).encode(), content_type="application/json",
                   headers={"X-Repo-Commit": commit} if commit else {})

    def _resolve(self, h: _Handler, view: _View, raw: str) -> None:
        head, _, tail = raw.partition("/resolve/")
        repo_id = unquote(head.strip("/"))
        rev_raw, _, path_raw = tail.partition("/")
        rev, path = unquote(rev_raw), unquote(path_raw)
        if not view.matches(repo_id, rev):
            self._error(h, 404, "RevisionNotFound", f"{repo_id}@{rev} not served here")
            return
        entry = view.files.get(path)
        parts = path.split("/")
        if entry is None or any(p in ("", ".", "..") for p in parts):
            self._error(h, 404, "EntryNotFound", f"{path} is not served here")
            return
        fd = _open_inside(view.root, parts)
        if fd is None:
            self._error(h, 404, "EntryNotFound", f"{path} is not served here")
            return
        with os.fdopen(fd, "rb") as f:
            self._send_file(h, f, entry=entry, commit=view.marker.get("commit"))

    def _send_file(self, h: _Handler, f: Any, *, entry: dict[str, Any], commit: str | None) -> None:
        size = int(entry["size"])
        etag = f'"{entry.get("sha256") or entry.get("blob_sha1")}"'
        headers = {"ETag": etag, "Accept-Ranges": "bytes", **({"X-Repo-Commit": commit} if commit else {})}
        start, end, status = 0, size - 1, 200
        rng = h.headers.get("Range")
        if_range = h.headers.get("If-Range")
        if rng and if_range is not None and if_range.strip().removeprefix("W/") != etag:
            rng = None  # a validator for other content: the whole, current file
        if rng:
            parsed = _parse_range(rng, size)
            if parsed is None:
                headers["Content-Range"] = f"bytes */{size}"
                self._send(h, 416, b"", content_type="text/plain", headers=headers)
                return
            start, end, status = parsed[0], parsed[1], 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = max(0, end - start + 1)
        self._head(h, status, length, content_type="application/octet-stream", headers=headers)
        if h.command == "HEAD" or length == 0:
            return
        f.seek(start)
        left = length
        try:
            while left > 0:
                chunk = f.read(min(CHUNK, left))
                if not chunk:  # the file shrank under us: cut the body so the client sees a short read
                    h.close_connection = True
                    return
                h.wfile.write(chunk)
                left -= len(chunk)
                self.metrics.bytes.inc(len(chunk))
        except OSError:  # the client went away mid-body: expected (aborts, stall watchdogs)
            h.close_connection = True

    # ---- responses ----------------------------------------------------------------------------
    def _head(self, h: _Handler, status: int, length: int, *, content_type: str,
              headers: dict[str, str] | None = None) -> None:
        self.metrics.requests.labels(status=str(status)).inc()
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(length))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()

    def _send(self, h: _Handler, status: int, body: bytes, *, content_type: str,
              headers: dict[str, str] | None = None) -> None:
        self._head(h, status, len(body), content_type=content_type, headers=headers)
        if h.command != "HEAD" and body:
            h.wfile.write(body)

    def _error(self, h: _Handler, status: int, code: str | None, message: str) -> None:
        headers = {"X-Error-Code": code, "X-Error-Message": quote(message)} if code else {}
        if status == 503:
            headers["Retry-After"] = "5"
        self._send(h, status, json.dumps({"error": message}).encode(), content_type="application/json",
                   headers=headers)


def _open_inside(root: Path, parts: list[str]) -> int | None:
    """Open root/parts... read-only without following any symlink below root; None if not a regular file."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        dfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # the root vanished between the marker check and now: treat as absent
        return None
    try:
        for part in parts[:-1]:
            nxt = os.open(part, flags | os.O_DIRECTORY, dir_fd=dfd)
            os.close(dfd)
            dfd = nxt
        fd = os.open(parts[-1], flags, dir_fd=dfd)
    except OSError:  # a symlink (ELOOP), a missing file or a non-directory on the way: not served
        return None
    finally:
        os.close(dfd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """One `bytes=a-b` / `a-` / `-n` range -> (first, last); None if unsatisfiable or malformed."""
    m = _RANGE.match(header)
    if not m or (not m.group(1) and not m.group(2)):
        return None
    if m.group(1):
        first = int(m.group(1))
        last = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
    else:
        first, last = max(0, size - int(m.group(2))), size - 1
    if first >= size or last < first:
        return None
    return first, last


def _sibling(f: dict[str, Any]) -> dict[str, Any]:
    s: dict[str, Any] = {"rfilename": f["path"], "size": f["size"]}
    if f.get("sha256"):
        s["blobId"], s["lfs"] = _lfs(f, key="sha256")
    else:
        s["blobId"] = f.get("blob_sha1")
    return s


def _file_entry(f: dict[str, Any]) -> dict[str, Any]:
    e: dict[str, Any] = {"type": "file", "path": f["path"], "size": f["size"]}
    if f.get("sha256"):
        e["oid"], e["lfs"] = _lfs(f, key="oid")
    else:
        e["oid"] = f.get("blob_sha1")
    return e


def _tree(files: list[dict[str, Any]], *, sub: str, recursive: bool) -> list[dict[str, Any]] | None:
    """The tree listing under `sub` (one page: a single model's file list is small); None if absent."""
    paths = [str(f["path"]) for f in files]
    dirs = sorted({"/".join(p.split("/")[:i]) for p in paths for i in range(1, p.count("/") + 1)})
    if sub and sub not in dirs and sub not in paths:
        return None
    if sub in paths:
        return [_file_entry(f) for f in files if f["path"] == sub]
    prefix = f"{sub}/" if sub else ""

    def wanted(p: str) -> bool:
        return p.startswith(prefix) and (recursive or "/" not in p[len(prefix):])

    out: list[dict[str, Any]] = [{"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest()}
                                 for d in dirs if wanted(d)]
    out += [_file_entry(f) for f in files if wanted(str(f["path"]))]
    return sorted(out, key=lambda e: str(e["path"]))
