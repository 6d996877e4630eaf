"""A local Hugging Face Hub emulator for tests, the demo and benchmarks.

Pure stdlib, and a separate distribution (``model-provisioner-hub-emulator``) so that it never ships in
the runtime package or the image. It speaks the subset of the hub HTTP protocol that ``huggingface_hub``
2.4 and the native engine use (see docs/design.md and shared/context/huggingface_hub-2.4.md):

* ``GET /api/models/{repo}[/revision/{rev}]`` (``?blobs=true`` adds sizes and LFS info),
* ``GET /api/models/{repo}/tree/{rev}[/{path}]`` with ``Link: <...>; rel="next"`` pagination,
* ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: regular files are served directly, LFS files get a
  302 to a signed, expiring CDN URL,
* ``HEAD``/``GET /cdn/{sha256}/{path}?Expires=..&Signature=..`` on a *second* port, so the CDN is
  a different origin: ``huggingface_hub`` then stops following at the 302 (reading ``X-Linked-*``
  from it) and does not forward the Authorization header, exactly as with the real CDN.

Everything is counted (``hub.stats``; each response is logged in ``hub.stats.requests`` with its kind:
``api``, ``resolve``, ``cdn``, ``xet`` for the xet-auth token endpoint, ``other``) and most network
failures can be injected at runtime (``hub.faults``, ``hub.fail_next``, ``hub.outage`` ...). Run
standalone with ``python -m hub_emulator --repo ID=DIR [--profile P]``.

Profiles (``HubEmulator(profile=...)``, ``hub.profile = ...`` at runtime, ``--profile``) choose which
kind of hub is emulated; each also answers ``POST /api/models/{repo}/paths-info/{rev}`` (form or JSON
``paths``) with ``[{type, path, size, oid, lfs?}]`` for the paths that exist:

* ``hf`` (default): huggingface.co as above, full metadata.
* ``mirror``: an open-source mirror server run offline: model_info ``siblings`` carry only
  ``rfilename`` (even with ``?blobs=true``), the tree endpoint answers ``[]``; paths-info and resolve
  (``X-Repo-Commit``, ``ETag``, ``X-Linked-Etag``/``X-Linked-Size``, the CDN redirect) are as ``hf``.
* ``bare``: a minimal hub: model_info is ``{id, sha}``, tree and paths-info entries are
  ``{type, path, size, oid}`` (no ``lfs``); resolve serves every file itself (no redirect, no
  ``X-Linked-*``, no ``Accept-Ranges`` though Range is honoured) with ``X-Repo-Commit`` and ETag = the
  git blob oid, or the quoted sha256 for LFS files.
* ``xet``: huggingface.co for a Xet-backed repo: ``hf`` plus ``xetHash`` on LFS files in tree,
  paths-info and ``?blobs=true`` siblings, and on their resolve (the 302 to the CDN, which still serves
  the whole file with Range) ``X-Xet-Hash`` and ``Link: <{hub}/api/models/{repo}/xet-read-token/{commit}>;
  rel="xet-auth"``. That token endpoint fails by design so a Xet client falls back or fails fast:
  it answers ``xet_auth_status`` (503 by default; note huggingface_hub retries 5xx with backoff, a 4xx
  fails at once), or with ``xet_auth_status=None`` the link points at a 127.0.0.1 port that refuses
  connections (then nothing reaches the request log). The ``xetHash`` is a stable stand-in (there is no
  CAS), not the real Xet merkle hash.

Modules, lowest first (each imports only those before it): ``repo`` (content addressing, ``FileInfo``,
the repo model), ``stats``, ``faults`` (the knobs), ``profiles`` (per-profile JSON shapes), ``core``
(shared state, waits), ``transport`` (writing responses, where body faults fire), ``cdn``, ``api``,
``handlers`` (HTTP server and dispatch), ``server`` (``HubEmulator``), ``__main__`` (the command line).
"""

from __future__ import annotations

from .faults import Faults
from .profiles import DEFAULT_PROFILE, PROFILES
from .repo import (
    DEFAULT_LFS_PATTERNS,
    DEFAULT_LFS_THRESHOLD,
    FileInfo,
    blob_sha1_of_bytes,
    hash_file,
    lfs_pointer,
    prime_hash_cache,
)
from .server import HubEmulator
from .stats import HubStats, RequestRecord

__all__ = [
    "DEFAULT_LFS_PATTERNS",
    "DEFAULT_LFS_THRESHOLD",
    "DEFAULT_PROFILE",
    "PROFILES",
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
