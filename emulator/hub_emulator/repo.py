"""Repos and content addressing: the git blob sha1 / sha256 helpers (with a hash cache that callers can
prime), the LFS pointer format, ``FileInfo`` (one file of one commit) and the in-memory repo model.

Owns no HTTP and no threads besides the hash-cache lock. Imports only the standard library; every other
module of the emulator may import it.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

DEFAULT_LFS_PATTERNS: tuple[str, ...] = ("*.safetensors", "*.bin", "*.pt", "*.onnx", "*.h5", "*.msgpack")
DEFAULT_LFS_THRESHOLD = 10 * 1024 * 1024
_HASH_READ = 1024 * 1024
_EPOCH = "2024-01-01T00:00:00.000Z"


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


def _clean_path(path: str) -> str:
    p = path.replace("\\", "/").strip("/")
    if not p or any(part in ("", ".", "..") for part in p.split("/")):
        raise ValueError(f"bad repo path {path!r}")
    return p


def _dir_oid(files: Mapping[str, FileInfo], directory: str) -> str:
    h = hashlib.sha1(directory.encode() + b"\0")
    for p in sorted(files):
        if p.startswith(directory + "/"):
            h.update(f"{p}\0{files[p].oid}\n".encode())
    return h.hexdigest()
