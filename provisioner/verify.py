"""Checksums: sha256 (the LFS oid) and the git blob sha1, computed in one pass.

The native engine feeds `Hasher` while bytes stream in; `hash_file` re-hashes from disk for
`verify DIR`, `--reverify` and files found complete on disk without a marker.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from .manifest import FileEntry

READ_CHUNK = 4 << 20


@dataclass(frozen=True)
class Digests:
    size: int
    sha256: str  # hex
    blob_sha1: str  # hex of sha1(b"blob %d\0" % size + data)


class Hasher:
    """Both digests over a stream whose total size is known up front (git's blob header needs it)."""

    def __init__(self, size: int) -> None:
        self.expected_size = size
        self.seen = 0
        self._sha256 = hashlib.sha256()
        self._sha1 = hashlib.sha1(b"blob %d\0" % size, usedforsecurity=False)

    def update(self, data: bytes | memoryview) -> None:
        self._sha256.update(data)
        self._sha1.update(data)
        self.seen += len(data)

    def digests(self) -> Digests:
        return Digests(size=self.seen, sha256=self._sha256.hexdigest(), blob_sha1=self._sha1.hexdigest())


def hash_file(path: Path, *, size: int | None = None, limit: int | None = None) -> Digests:
    """Hash a file (or its first `limit` bytes). `size` is the git header size (defaults to the file size)."""
    total = path.stat().st_size if size is None else size
    hasher = Hasher(total)
    remaining = limit
    with path.open("rb", buffering=0) as f:
        while remaining is None or remaining > 0:
            chunk = f.read(READ_CHUNK if remaining is None else min(READ_CHUNK, remaining))
            if not chunk:
                break
            hasher.update(chunk)
            if remaining is not None:
                remaining -= len(chunk)
    return hasher.digests()


def matches(entry: FileEntry, digests: Digests) -> bool:
    if digests.size != entry.size:
        return False
    if entry.sha256:
        return digests.sha256 == entry.sha256
    if entry.blob_sha1:
        return digests.blob_sha1 == entry.blob_sha1
    return False  # nothing to check against: never claim it verified


def mismatch_detail(entry: FileEntry, digests: Digests) -> tuple[str, str]:
    """(expected, actual) for the error message."""
    if digests.size != entry.size:
        return f"size {entry.size}", f"size {digests.size}"
    if entry.sha256:
        return f"sha256 {entry.sha256}", f"sha256 {digests.sha256}"
    return f"git-sha1 {entry.blob_sha1}", f"git-sha1 {digests.blob_sha1}"
