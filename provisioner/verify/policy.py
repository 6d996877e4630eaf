"""Stage: fetch what is missing and verify every file's digest, re-fetching a mismatch a bounded number of times.

Owns the checksum policy: which files are already complete on disk (re-hashed, never trusted by size),
the disk-space preflight for what is still missing, one fetch round per engine, and what a mismatch
costs (its data is thrown away; after MAX_CHECKSUM_REFETCHES re-fetches the run fails with exit 6).
Returns a frozen `ChecksumOutcome`. Imports the fetch engines, place and the hashing primitives.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import place
from ..context import RunContext
from ..errors import VerificationError
from ..manifest import FileEntry, Plan
from ..observe.progress import Phase
from ..state import marker
from .checksums import hash_file, matches, mismatch_detail, wanted_digests

log = logging.getLogger("provisioner")

# A file whose bytes keep failing their checksum is fetched again this many times, then we give up.
MAX_CHECKSUM_REFETCHES = 2

Mismatch = tuple[FileEntry, str, str]  # (entry, expected digest, actual digest)


@dataclass(frozen=True)
class ChecksumOutcome:
    checked: bool  # False under --verify none
    files: int
    seconds: float  # time spent hashing outside the download stream

    def to_json(self) -> dict[str, Any]:
        return {"ok": True, "files": self.files, "seconds": round(self.seconds, 3)}


def _wanted(entry: FileEntry) -> dict[str, bool]:
    """Only the digest the plan can compare: re-hashing a multi-GiB file twice over is wasted CPU."""
    sha256, blob_sha1 = wanted_digests(entry)
    return {"sha256": sha256, "blob_sha1": blob_sha1}


def fetch_and_verify(ctx: RunContext, plan: Plan, *, target: Path,
                     free_space: Callable[[Path], int] | None = None) -> ChecksumOutcome:
    """Every planned file ends at its final path with the plan's digest, or this raises."""
    from ..fetch import prune_partials
    from ..plan import check_disk_space, free_bytes

    cfg, tracker = ctx.config, ctx.tracker
    state_dir = marker.state_dir(target)
    freed = prune_partials(state_dir, plan.files)  # an older plan's partials can never be resumed
    if freed:
        log.info("removed %d bytes of partial data left by an older revision", freed)
    todo, on_disk = _files_to_fetch(ctx, plan, target=target)
    tracker.set_plan(plan, on_disk=on_disk)
    for entry in plan.files:
        if entry not in todo:
            tracker.file_done(entry.path, skipped=True)
    needed = sum(e.size - on_disk.get(e.path, 0) for e in todo)
    check_disk_space(target, needed=needed, headroom=cfg.disk_headroom, free_space=free_space or free_bytes)
    fetch_round = _fetch_hub if cfg.engine == "hub" else _fetch_native
    checksum_seconds = 0.0
    refetches = 0
    while todo:
        ctx.check_stop()
        tracker.set_phase(Phase.DOWNLOADING)
        bad, seconds = fetch_round(ctx, plan, todo, target=target)
        checksum_seconds += seconds
        if not bad:
            break
        # A mismatch pinned on a mirror (now skipped for that file) is not the file's fault: it does not
        # count against the refetch limit. Mirrors are finite, so this still ends.
        blamed = {e.path: ctx.sources.blame(e.path) for e, _, _ in bad}
        if not all(blamed.values()):
            refetches += 1
        if refetches > MAX_CHECKSUM_REFETCHES:
            entry, expected, actual = bad[0]
            tracker.verification(kind="checksums", seconds=checksum_seconds, ok=False,
                                 detail=f"{entry.path}: expected {expected}, got {actual}")
            raise VerificationError(
                f"{entry.path} failed its checksum {refetches} times (expected {expected}, got {actual})",
                kind="checksum", path=entry.path, expected=expected, actual=actual)
        for entry, expected, actual in bad:
            tracker.retry(reason="checksum", path=entry.path, delay=0.0,
                          message=f"{entry.path}: expected {expected}, got {actual}; fetching again")
            for mirror in blamed[entry.path]:
                tracker.mirror_failed(reason="checksum", mirror=mirror)
            log.warning("checksum mismatch for %s (expected %s, got %s): fetching again%s", entry.path, expected,
                        actual, f" without mirror(s) {', '.join(blamed[entry.path])}" if blamed[entry.path] else "")
        todo = [b[0] for b in bad]
    outcome = ChecksumOutcome(checked=cfg.verify != "none", files=len(plan.files), seconds=checksum_seconds)
    if outcome.checked:
        tracker.verification(kind="checksums", seconds=checksum_seconds, ok=True)
    return outcome


def _files_to_fetch(ctx: RunContext, plan: Plan, *, target: Path) -> tuple[list[FileEntry], dict[str, int]]:
    """Files already complete at their final path (a crash after the last byte, an unchanged file
    across commits, or --reverify) are re-hashed and kept; the rest are fetched, resuming partials."""
    from ..fetch import partial_bytes_on_disk

    state_dir = marker.state_dir(target)
    todo: list[FileEntry] = []
    on_disk: dict[str, int] = {}
    for entry in plan.files:
        if place.complete_on_disk(target, entry):
            ctx.tracker.set_phase(Phase.VERIFYING)
            final = target / entry.path
            if ctx.config.verify == "none" or matches(entry, hash_file(final, size=entry.size, **_wanted(entry))):
                on_disk[entry.path] = entry.size
                continue
            log.warning("%s on disk does not match the plan: fetching it again", entry.path)
        todo.append(entry)
        on_disk[entry.path] = partial_bytes_on_disk(state_dir, entry)
    return todo, on_disk


def _fetch_native(ctx: RunContext, plan: Plan, todo: list[FileEntry], *, target: Path) -> tuple[list[Mismatch], float]:
    """One round of the native engine: the digests come from the download stream; a match is placed."""
    from ..fetch import clear_journal, discard_partial, fetch_files

    state_dir = marker.state_dir(target)
    fetched = fetch_files(plan, todo, ctx=ctx, state_dir=state_dir)
    bad: list[Mismatch] = []
    placed: list[Path] = []
    t = time.monotonic()
    for entry in todo:
        item = fetched[entry.path]
        if ctx.config.verify != "none" and not matches(entry, item.digests):
            expected, actual = mismatch_detail(entry, item.digests)
            ctx.tracker.discard_bytes(entry.path, discard_partial(state_dir, entry))
            bad.append((entry, expected, actual))
            continue
        placed.append(place.place(target, entry, item.part_path, sync_dir=False))
        clear_journal(state_dir, entry)  # the journal beside the (now moved) part file
    place.sync_dirs(placed)  # one fsync per folder, before anything (the marker) claims these files
    return bad, time.monotonic() - t


def _fetch_hub(ctx: RunContext, plan: Plan, todo: list[FileEntry], *, target: Path) -> tuple[list[Mismatch], float]:
    """One round of huggingface_hub's snapshot_download: it writes final paths itself, so hash them after."""
    from ..fetch import fetch_with_hub

    for entry in todo:
        place.safe_final_path(target, entry)
    fetch_with_hub(plan, todo, ctx=ctx, state_dir=marker.state_dir(target))
    bad: list[Mismatch] = []
    t = time.monotonic()
    if ctx.config.verify != "none":
        ctx.tracker.set_phase(Phase.VERIFYING)
        for entry in todo:
            final = target / entry.path
            digests = hash_file(final, size=entry.size, **_wanted(entry))
            if not matches(entry, digests):
                expected, actual = mismatch_detail(entry, digests)
                ctx.tracker.discard_bytes(entry.path, entry.size)
                final.unlink(missing_ok=True)
                bad.append((entry, expected, actual))
    return bad, time.monotonic() - t
