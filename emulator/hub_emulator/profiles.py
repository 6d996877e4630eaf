"""Hub profiles: which metadata the emulated server hands out, so a client can be tested against the
kinds of hub it meets in the field. Owns the profile names and the JSON shapes of one file or directory
(model_info siblings, tree and paths-info entries) per profile; the routes that use them live in
``api``, ``handlers`` and ``cdn``. Imports ``repo`` only.

* ``hf``: huggingface.co as today (full metadata, LFS via a CDN redirect with ``X-Linked-*``).
* ``mirror``: an open-source mirror server run offline: siblings carry only ``rfilename``, the tree
  endpoint answers ``[]``; paths-info and resolve are as ``hf``.
* ``bare``: a minimal hub: model_info is ``{id, sha}``, tree/paths-info entries are
  ``{type, path, size, oid}`` (no ``lfs``), resolve serves every file directly (no redirect, no
  ``X-Linked-*``, no ``Accept-Ranges``; Range still works) with ETag = the git blob oid, or the sha256
  for LFS files.
* ``xet``: huggingface.co for a Xet-backed repo: ``hf`` plus ``xetHash`` on LFS files and, on their
  resolve, ``X-Xet-Hash`` and ``Link: <.../xet-read-token/{commit}>; rel="xet-auth"``; that token
  endpoint fails by design (a configurable status, or a port that refuses connections).
"""

from __future__ import annotations

import hashlib
from typing import Any

from .repo import _EPOCH, FileInfo

PROFILES: tuple[str, ...] = ("hf", "mirror", "bare", "xet")
DEFAULT_PROFILE = "hf"


def check_profile(name: str) -> str:
    """``name`` if it is a known profile, else ValueError."""
    if name not in PROFILES:
        raise ValueError(f"unknown hub profile {name!r}: expected one of {', '.join(PROFILES)}")
    return name


def xet_hash(info: FileInfo) -> str:
    """A stable 64-hex stand-in for the file's Xet hash (there is no CAS here, so it needs only the shape
    and to differ between contents)."""
    return hashlib.sha256(b"xet-file-hash\0" + info.sha256.encode()).hexdigest()


def sibling(profile: str, info: FileInfo, *, blobs: bool) -> dict[str, Any]:
    """One entry of model_info ``siblings`` (``blobs``: the client asked for ``?blobs=true``)."""
    s: dict[str, Any] = {"rfilename": info.path}
    if blobs and profile in ("hf", "xet"):
        s["size"] = info.size
        s["blobId"] = info.oid
        if info.lfs:
            s["lfs"] = {"sha256": info.sha256, "size": info.size, "pointerSize": len(info.pointer)}
            if profile == "xet":
                s["xetHash"] = xet_hash(info)
    return s


def file_entry(profile: str, info: FileInfo, *, commit: str, expand: bool) -> dict[str, Any]:
    """A file as the tree and paths-info endpoints list it."""
    e: dict[str, Any] = {"type": "file", "oid": info.oid, "size": info.size, "path": info.path}
    if profile == "bare":
        return e
    if info.lfs:
        e["lfs"] = {"oid": info.sha256, "size": info.size, "pointerSize": len(info.pointer)}
        if profile == "xet":
            e["xetHash"] = xet_hash(info)
    if expand:
        e["lastCommit"] = {"id": commit, "title": "emulated commit", "date": _EPOCH}
    return e
