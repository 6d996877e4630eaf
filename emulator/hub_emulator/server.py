"""``HubEmulator``: the public face of the emulator. Lifecycle (start/stop, outages on the same ports),
publishing repos and revisions, the fault controls (``fail_next``, expiring signed URLs, releasing
stalls) and the counters (``stats``, ``wait_for``, ``wait_idle``).

Imports ``handlers`` (which it subclasses) and the data modules; nothing imports it but ``__init__``
and ``__main__``.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from .faults import _FailRule
from .handlers import _HubHandlers, _Server
from .repo import (
    DEFAULT_LFS_PATTERNS,
    DEFAULT_LFS_THRESHOLD,
    FileInfo,
    _clean_path,
    _commit_sha,
    _Repo,
    blob_sha1_of_bytes,
    hash_file,
)
from .stats import HubStats
from .transport import _abort_socket


class HubEmulator(_HubHandlers):
    """In-process hub + CDN on 127.0.0.1. Use as a context manager or call start()/stop().

    Keyword arguments: ``host``, ``port``, ``cdn_port`` (0: any free port), ``page_size`` (tree pages),
    ``signed_url_ttl`` (CDN URLs), ``profile`` (``hf`` | ``mirror`` | ``bare`` | ``xet``, see profiles.py;
    also assignable later as ``hub.profile``) and ``xet_auth_status`` (what the xet profile's token
    endpoint answers, 503 by default; None points the ``xet-auth`` link at a port that refuses connections)
    and ``tls`` (``(certfile, keyfile)``: hub and CDN serve HTTPS; the URLs say https).
    """

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
            if self._refusing is not None:
                self._refusing.close()
                self._refusing = None

    def __enter__(self) -> HubEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

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
        """The next ``n`` requests of ``kind`` (api|resolve|cdn|xet|any) whose path matches get ``status``."""
        if kind not in ("api", "resolve", "cdn", "xet", "any"):
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
