"""The verify stage: is what landed on the volume the model that was planned, and does it work?

Owns the checksum primitives (`checksums`: sha256 / git blob sha1 in one pass, also fed by the
fetch stage while bytes stream in), what a sentence-transformers model declares in its files
(`model_files`), the checksum + refetch policy (`policy`: drives the fetch engines, compares every
digest, throws a mismatch away and fetches it again, places what matches) and the embedding smoke
test: `smoke` is the parent side (runs a child process, turns whatever it does into a
`SmokeResult`), `smoke_child` the child side (the only code that imports numpy / sentence-transformers
/ torch). Its preflight (`needs_smoke_test` on the plan's files, then `check_smoke_dependencies`) turns
a missing `embed` extra into a ConfigError before anything is downloaded.

Layers (docs/design.md): `checksums` and `model_files` are leaves (stdlib, `manifest`, `errors`) that the
fetch stage may import; `policy` sits above fetch, plan and place and imports them inside its functions.
The smoke names are loaded on first use: `python -m provisioner.verify.smoke_child` runs this file
first, and the child must not load the pipeline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .checksums import READ_CHUNK, Digests, Hasher, hash_file, matches, mismatch_detail, wanted_digests
from .model_files import expected_dim_from_disk, is_sentence_transformers_dir, needs_smoke_test

if TYPE_CHECKING:
    from .smoke import SmokeChild, SmokeResult, check_smoke_dependencies, run_smoke_test

__all__ = [
    "READ_CHUNK",
    "Digests",
    "Hasher",
    "SmokeChild",
    "SmokeResult",
    "check_smoke_dependencies",
    "expected_dim_from_disk",
    "hash_file",
    "is_sentence_transformers_dir",
    "matches",
    "mismatch_detail",
    "needs_smoke_test",
    "run_smoke_test",
    "wanted_digests",
]

_SMOKE_NAMES = ("SmokeChild", "SmokeResult", "check_smoke_dependencies", "run_smoke_test")


def __getattr__(name: str) -> Any:
    if name in _SMOKE_NAMES:
        from . import smoke

        return getattr(smoke, name)
    raise AttributeError(name)
