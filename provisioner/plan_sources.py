"""Metadata sources for the planner: what each kind of hub can tell about a revision's files.

Hubs differ in what they offer: huggingface.co answers `model_info(files_metadata=True)` with sizes and
digests; a mirror may list only names; a bare hub may answer the tree with sizes and git oids only, and
its resolve HEAD with an ETag. The planner asks, in order and each time only for what the previous
source lacked: model_info -> recursive tree -> paths-info -> one HEAD per file. Missing metadata is
not malformed metadata: a field a source leaves out is simply asked of the next source, while a field a
source gives must be well-formed and agree with every other source (else BadRemoteError, exit 9).
Imports errors and plan's path check only (plan imports this module, never the reverse at import time).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .errors import BadRemoteError

MAX_FILE_SIZE = 1 << 50  # 1 PiB: anything larger is a corrupt listing, not a model
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_SHA1_RE = re.compile(r"^[0-9a-f]{40}$")

EVIDENCE_SHA256 = "sha256"
EVIDENCE_GIT_SHA1 = "git-sha1"
EVIDENCE_SIZE_ONLY = "size-only"


@dataclass
class FileMeta:
    """What the sources have said so far about one file (None: not said yet)."""

    path: str
    size: int | None = None
    sha256: str | None = None
    blob_sha1: str | None = None
    # A git oid from a listing that does not say whether the file is LFS: for an LFS file it is the
    # pointer's oid, not the content's, so it is only a digest once a HEAD ETag confirms it.
    oid_hint: str | None = None
    lfs_known: bool = False  # a source said whether this file is LFS (an `lfs` field or its absence in a full listing)

    @property
    def complete(self) -> bool:
        return self.size is not None and (self.sha256 is not None or self.blob_sha1 is not None)

    def set_size(self, size: object, *, source: str) -> None:
        if size is None:
            return
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_FILE_SIZE:
            raise BadRemoteError(f"invalid or absurd size for {self.path!r} from {source}: {size!r}")
        if self.size is not None and self.size != size:
            raise BadRemoteError(f"the hub gave two sizes for {self.path!r}: {self.size} and {size} ({source})")
        self.size = size

    def set_sha256(self, value: object, *, source: str) -> None:
        if value is None:
            return
        if not isinstance(value, str) or not _SHA256_RE.match(value):
            raise BadRemoteError(f"invalid LFS sha256 for {self.path!r} from {source}", detail=repr(value)[:100])
        if self.sha256 is not None and self.sha256 != value:
            raise BadRemoteError(f"the hub gave two sha256 for {self.path!r} ({source})")
        self.sha256 = value

    def set_blob_sha1(self, value: object, *, source: str) -> None:
        if value is None:
            return
        if not isinstance(value, str) or not _SHA1_RE.match(value):
            raise BadRemoteError(f"invalid git blob id for {self.path!r} from {source}", detail=repr(value)[:100])
        if self.blob_sha1 is not None and self.blob_sha1 != value:
            raise BadRemoteError(f"the hub gave two git blob ids for {self.path!r} ({source})")
        self.blob_sha1 = value


def _field(obj: Any, *names: str) -> Any:
    for name in names:
        value = obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
        if value is not None:
            return value
    return None


def merge_sibling(meta: FileMeta, s: Any) -> None:
    """A model_info sibling: `size`, `blob_id` and `lfs` are present only with files_metadata on a full hub."""
    lfs = _field(s, "lfs")
    size = _field(s, "size")
    blob = _field(s, "blob_id", "blobId")
    if lfs is not None:
        meta.lfs_known = True
        meta.set_sha256(_field(lfs, "sha256", "oid"), source="model_info")
        meta.set_size(size if size is not None else _field(lfs, "size"), source="model_info")
        if meta.sha256 is None:
            raise BadRemoteError(f"invalid LFS sha256 for {meta.path!r}", detail="missing")
        return
    meta.set_size(size, source="model_info")
    if blob is not None and size is not None:
        # A sibling with size and blob id but no lfs field: a regular file, so the blob id is its digest.
        meta.lfs_known = True
        meta.set_blob_sha1(blob, source="model_info")
    elif blob is not None:
        meta.oid_hint = _checked_oid(meta.path, blob, source="model_info")


def merge_listing(meta: FileMeta, e: Any, *, source: str, reports_lfs: bool) -> None:
    """A tree / paths-info entry. `reports_lfs`: this hub marks LFS files (some entry had `lfs`), so an
    entry without it is a regular file and its oid is the content's git blob sha1."""
    meta.set_size(_field(e, "size"), source=source)
    lfs = _field(e, "lfs")
    oid = _field(e, "blob_id", "oid")
    if lfs is not None:
        meta.lfs_known = True
        meta.set_sha256(_field(lfs, "sha256", "oid"), source=source)
        meta.set_size(_field(lfs, "size"), source=source)
        if meta.sha256 is None:
            raise BadRemoteError(f"invalid LFS sha256 for {meta.path!r} from {source}", detail="missing")
    elif oid is not None and reports_lfs:
        meta.lfs_known = True
        meta.set_blob_sha1(oid, source=source)
    elif oid is not None:
        meta.oid_hint = _checked_oid(meta.path, oid, source=source)


def listing_reports_lfs(entries: Iterable[Any]) -> bool:
    return any(_field(e, "lfs") is not None for e in entries)


def merge_head(meta: FileMeta, *, size: int | None, etag: str | None) -> None:
    """A resolve HEAD: size from X-Linked-Size / Content-Length; an ETag that is a 64-hex sha256 or a
    40-hex git sha1 counts as a digest (quotes and W/ stripped). A size that contradicts the listing is a lie."""
    meta.set_size(size, source="HEAD")
    tag = normalize_etag(etag)
    if tag is None:
        return
    if _SHA256_RE.match(tag):
        meta.set_sha256(tag, source="HEAD ETag")
    elif _SHA1_RE.match(tag) and meta.sha256 is None:
        # For an LFS file the listing's oid is the pointer's: an ETag equal to it says nothing about content
        # unless the file is known not to be LFS; a different 40-hex ETag is the content's blob sha1.
        if meta.oid_hint is None or meta.oid_hint == tag or meta.lfs_known:
            meta.set_blob_sha1(tag, source="HEAD ETag")


def normalize_etag(etag: str | None) -> str | None:
    if not etag:
        return None
    tag = etag.strip()
    if tag.startswith("W/"):
        tag = tag[2:]
    tag = tag.strip('"').lower()
    return tag or None


def evidence_of(*, sha256: str | None, blob_sha1: str | None) -> str:
    if sha256:
        return EVIDENCE_SHA256
    if blob_sha1:
        return EVIDENCE_GIT_SHA1
    return EVIDENCE_SIZE_ONLY


def _checked_oid(path: str, oid: object, *, source: str) -> str:
    if not isinstance(oid, str) or not _SHA1_RE.match(oid):
        raise BadRemoteError(f"invalid git oid for {path!r} from {source}", detail=repr(oid)[:100])
    return oid
