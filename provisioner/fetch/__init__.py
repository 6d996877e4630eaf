"""Stage 2 — fetch: bring the plan's files onto the volume, with one of two engines.

Owns the download and nothing after it: the engines never judge checksums and never write the ready
marker (the caller verifies, places and marks). Read it top-down:

* `engine.py` — the native engine (`fetch_files`): files in parallel, each split into ranged pieces,
  resumable across processes, hashed while streaming;
* `http.py` — its HTTP side: the client, the request/redirect/re-resolve dance, HTTP status -> error;
* `journal.py` — the on-disk journal of one partial file (bytes at final offsets + u64 offsets);
* `frontier.py` — the hash frontier: digests in file order while pieces land out of order;
* `hub.py` — `--engine hub` (`fetch_with_hub`): huggingface_hub's `snapshot_download`, wrapped.

Both engines have the same interface (`Engine`): `(plan, entries, *, ctx, state_dir) ->
{path: FetchedFile}`. May import config, context, errors, manifest, progress, redact, retry, verify,
hubapi and hubclient; never plan (a higher stage), api or cli.
"""

from __future__ import annotations

from .engine import FetchedFile, fetch_files, make_client
from .journal import clear_journal, discard_partial, part_key, partial_bytes_on_disk, prune_partials

__all__ = [
    "FetchedFile",
    "clear_journal",
    "discard_partial",
    "fetch_files",
    "make_client",
    "part_key",
    "partial_bytes_on_disk",
    "prune_partials",
]
