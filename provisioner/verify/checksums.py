"""Checksums: sha256 (the LFS oid) and/or the git blob sha1, computed in one pass.

The native engine feeds `Hasher` while bytes stream in; `hash_file` re-hashes from disk for
`verify DIR`, `--reverify` and files found complete on disk without a marker.
Imports only the standard library and `manifest` (the fetch stage uses these primitives too).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..manifest import FileEntry

READ_CHUNK = 4 << 20


@dataclass(frozen=True)
class Digests:
    size: int
    sha256: str  # hex
    blob_sha1: str  # hex of sha1(b"blob %d\0" % size + data)


class Hasher:
    """The digests over a stream whose total size is known up front (git's blob header needs it).

    `sha256` / `blob_sha1` select what is computed (each costs ~0.6 s of CPU per GiB); a digest not
    computed is "" in `Digests`, which `matches` never accepts in place of an expected digest."""

    def __init__(self, size: int, *, sha256: bool = True, blob_sha1: bool = True) -> None:
        self.seen = 0
        self._sha256 = hashlib.sha256() if sha256 else None
        self._sha1 = hashlib.sha1(b"blob %d\0" % size, usedforsecurity=False) if blob_sha1 else None

    def update(self, data: bytes | memoryview) -> None:
        if self._sha256 is not None:
            self._sha256.update(data)
        if self._sha1 is not None:
            self._sha1.update(data)
        self.seen += len(data)

    def digests(self) -> Digests:
        return Digests(size=self.seen, sha256=self._sha256.hexdigest() if self._sha256 is not None else "",
                       blob_sha1=self._sha1.hexdigest() if self._sha1 is not None else "")


def wanted_digests(entry: FileEntry) -> tuple[bool, bool]:
    """(sha256, blob_sha1): the one digest `matches` compares for this entry."""
    return bool(entry.sha256), bool(entry.blob_sha1) and not entry.sha256


def hash_file(path: Path, *, size: int | None = None, limit: int | None = None, sha256: bool = True,
              blob_sha1: bool = True) -> Digests:
    """Hash a file (or its first `limit` bytes). `size` is the git header size (defaults to the file size)."""
    total = path.stat().st_size if size is None else size
    hasher = Hasher(total, sha256=sha256, blob_sha1=blob_sha1)
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
        return bool(digests.sha256) and digests.sha256 == entry.sha256
    if entry.blob_sha1:
        return bool(digests.blob_sha1) and digests.blob_sha1 == entry.blob_sha1
    return True  # size-only evidence (the hub gave no digest): the size, checked above, is all there is


def mismatch_detail(entry: FileEntry, digests: Digests) -> tuple[str, str]:
    """(expected, actual) for the error message."""
    if digests.size != entry.size:
        return f"size {entry.size}", f"size {digests.size}"
    if entry.sha256:
        return f"sha256 {entry.sha256}", f"sha256 {digests.sha256}"
    if entry.blob_sha1:
        return f"git-sha1 {entry.blob_sha1}", f"git-sha1 {digests.blob_sha1}"
    return f"size {entry.size}", f"size {digests.size}"
