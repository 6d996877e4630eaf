"""Stage 2 — fetch: bring the plan's files onto the volume, with one of two engines.

Owns the download and nothing after it: the engines never judge checksums and never write the ready
marker (the caller verifies, places and marks). Read it top-down:

* `engine.py` — the native engine (`fetch_files`): files in parallel, each split into ranged pieces,
  resumable across processes, hashed while streaming;
* `http.py` — its HTTP side: the client, the request/redirect/re-resolve dance, HTTP status -> error;
* `journal.py` — the on-disk journal of one partial file (bytes at final offsets + u64 offsets);
* `small.py` — the small-file path: a journal in memory, the file written once when complete;
* `frontier.py` — the hash frontier: digests in file order while pieces land out of order;
* `hub.py` — `--engine hub` (`fetch_with_hub`): huggingface_hub's `snapshot_download`, wrapped.

Both engines have the same interface (`Engine`): `(plan, entries, *, ctx, state_dir) ->
{path: FetchedFile}`. May import config, context, errors, manifest, progress, redact, retry, verify,
hubapi and hubclient; never plan (a higher stage), api or cli.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .engine import FetchedFile, fetch_files, make_client
from .journal import clear_journal, discard_partial, part_key, partial_bytes_on_disk, prune_partials
from .small import is_small

if TYPE_CHECKING:
    from ..context import RunContext
    from ..manifest import FileEntry, Plan


class Engine(Protocol):
    """What `api` calls for `--engine native` and `--engine hub`."""

    def __call__(self, plan: Plan, entries: Sequence[FileEntry], *, ctx: RunContext,
                 state_dir: Path) -> dict[str, FetchedFile]: ...


def fetch_with_hub(plan: Plan, entries: Sequence[FileEntry], *, ctx: RunContext,
                   state_dir: Path) -> dict[str, FetchedFile]:
    """`--engine hub` (see hub.py). Imported on first use: huggingface_hub's download stack is large."""
    from .hub import fetch_with_hub as run

    if ctx.config.mirrors:
        logging.getLogger("provisioner.fetch").warning("--mirrors is ignored by --engine hub: every byte comes "
                                                       "from the endpoint")
    return run(plan, entries, ctx=ctx, state_dir=state_dir)


__all__ = [
    "Engine",
    "FetchedFile",
    "clear_journal",
    "discard_partial",
    "fetch_files",
    "fetch_with_hub",
    "is_small",
    "make_client",
    "part_key",
    "partial_bytes_on_disk",
    "prune_partials",
]

if TYPE_CHECKING:  # mypy checks that both engines fit the one interface
    _ENGINES: tuple[Engine, Engine] = (fetch_files, fetch_with_hub)
