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

Everything is counted (``hub.stats``) and most network failures can be injected at runtime
(``hub.faults``, ``hub.fail_next``, ``hub.outage`` ...). Run standalone with
``python -m hub_emulator --repo ID=DIR``.

Modules, lowest first (each imports only those before it): ``repo`` (content addressing, ``FileInfo``,
the repo model), ``stats``, ``faults`` (the knobs), ``core`` (shared state, waits), ``transport``
(writing responses, where body faults fire), ``cdn``, ``api``, ``handlers`` (HTTP server and dispatch),
``server`` (``HubEmulator``), ``__main__`` (the command line).
"""

from __future__ import annotations

from .faults import Faults
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
