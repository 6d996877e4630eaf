"""`--engine hub`: huggingface_hub's own `snapshot_download` (plain HTTP or Xet), wrapped with our
plan, retry budget, progress tracking and stop handling. Verification and the ready marker stay
with the caller, which hashes the files in place afterwards (`verify.hash_file`).

What the library decides, and what we do about it (see docs/engines.md):

* Files land at their final paths in `config.target` (local_dir mode). huggingface_hub also writes
  `<target>/.cache/huggingface/` (per-file metadata, locks, the tree listing) and its `refs` into
  `cache_dir`, which we point at `<state_dir>/hub-cache` (`<target>/.provisioner/hub-cache`) so nothing is written outside the
  volume (a readOnlyRootFilesystem works).
* No partial data survives a failed call: huggingface_hub deletes its `.incomplete` file. Every retry
  of ours restarts the files that had not completed; completed files are not fetched again.
* Progress: snapshot_download reports aggregated byte counts without file identity. We attribute
  them to the pending files in plan order (a file's share is an estimate while the call runs) and
  settle each file exactly after the call: completed files are marked done, the bytes attributed to
  the others are discarded. `tracker.bytes_received` is exact: every byte the library reports as
  received from the network, re-sent bytes included.
* Timeouts: huggingface_hub reads `HF_HUB_DOWNLOAD_TIMEOUT` into a module constant at import time and
  looks it up at each download, so we set `constants.HF_HUB_DOWNLOAD_TIMEOUT` (an idle timeout per
  socket read, our stall timeout) before the call (`hubclient.configure_downloads`, which also gives
  the shared client used for the tree listing connect/read timeouts). The per-HEAD `etag_timeout` is
  an argument: our header timeout (capped by the stall timeout). Its errors are mapped by `hubapi.classify_download_error`.
* Stop: snapshot_download cannot be cancelled, so it runs in a daemon thread. When `stop` is set we
  raise `Interrupted` at once; the progress hook makes the worker threads abandon their downloads at
  their next chunk (huggingface_hub then deletes their `.incomplete` files).

Same interface as the native engine (`fetch_with_hub(plan, entries, *, ctx, state_dir)`). Imports
context, errors, hubapi, hubclient, manifest, progress, redact, retry, verify and fetch.engine (for
`FetchedFile`); the logger keeps its old name, `provisioner.hubengine`, so log filters keep working.
"""

from __future__ import annotations

import glob
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import errors as hf_errors
from huggingface_hub import get_cached_repo_tree, snapshot_download
from huggingface_hub.utils import tqdm as hf_tqdm

from ..context import RunContext, call_interruptible, interrupted
from ..errors import (
    Interrupted,
    LocalIOError,
    NotFoundError,
    ProvisionerError,
    RetryBudgetExhausted,
    TransientError,
)
from ..hubapi import classify_download_error
from ..hubclient import configure_downloads
from ..manifest import FileEntry, Plan
from ..observe.progress import Tracker
from ..redact import redact
from ..retry import RetryBudget, retry_step
from ..verify.checksums import Digests
from .engine import FetchedFile

log = logging.getLogger("provisioner.hubengine")

HUB_METADATA_DIR = ".cache/huggingface"  # what huggingface_hub writes inside local_dir
HUB_CACHE_NAME = "hub-cache"  # our cache_dir for the library, inside the state folder (it writes refs there)
_TRANSFER_BAR_NAME = "huggingface_hub.snapshot_download.transfer"
_TRANSFER_BAR_DESC = "Downloading bytes"


class _StopRequested(BaseException):  # noqa: N818 - BaseException so no library `except Exception` swallows it
    """Raised inside the library's worker threads (from the progress hook) once `stop` is set."""


# ---- progress ---------------------------------------------------------------------------------------

class _ByteSink:
    """Turns snapshot_download's aggregated byte counts into Tracker updates (see module docstring)."""

    def __init__(self, entries: Sequence[FileEntry], *, tracker: Tracker, budget: RetryBudget,
                 stop: threading.Event) -> None:
        self._tracker = tracker
        self._budget = budget
        self._stop = stop
        self._abandoned = threading.Event()
        self._lock = threading.Lock()
        self._sizes = {e.path: e.size for e in entries}
        self._order = [e.path for e in entries]
        self._attributed = {e.path: 0 for e in entries}
        self._started: set[str] = set()
        self._settled: set[str] = set()
        self._history: list[tuple[str, int]] = []  # (path, n) attributions of this attempt, newest last
        self.received = 0  # bytes from the network, all attempts
        self.received_this_attempt = 0

    def new_attempt(self) -> None:
        with self._lock:
            self.received_this_attempt = 0
            self._history.clear()

    def abandon(self) -> None:
        """Make the library's worker threads give up at their next chunk (we stopped waiting for them)."""
        self._abandoned.set()

    def add(self, n: int) -> None:
        """Called from the library's worker threads for every chunk (n < 0: bytes thrown away)."""
        if self._stop.is_set() or self._abandoned.is_set():
            raise _StopRequested()
        if n == 0:
            return
        with self._lock:
            if n < 0:
                self._take_back(-n)
                return
            self.received += n
            self.received_this_attempt += n
            self._budget.progress()
            left = n
            for path in self._order:
                if left == 0:
                    break
                if path in self._settled:
                    continue
                room = self._sizes[path] - self._attributed[path]
                if room <= 0:
                    continue
                k = min(room, left)
                self._credit(path, k)
                left -= k
            if left:
                # More than the pending files hold (bytes re-sent after an in-call resume): count them as
                # received but not as on disk.
                path = self._order[-1]
                self._tracker.add_bytes(path, left)
                self._tracker.discard_bytes(path, left)

    def _credit(self, path: str, k: int) -> None:
        if path not in self._started:
            self._started.add(path)
            self._tracker.file_started(path, offset=0)
        self._attributed[path] += k
        self._history.append((path, k))
        self._tracker.add_bytes(path, k)

    def _take_back(self, n: int) -> None:
        """The library rewound a file (a server ignored Range): those bytes are no longer on disk."""
        while n > 0 and self._history:
            path, k = self._history.pop()
            if path in self._settled:
                continue
            take = min(k, n, self._attributed[path])
            if take <= 0:
                continue
            self._attributed[path] -= take
            self._tracker.discard_bytes(path, take)
            n -= take
            if k > take:
                self._history.append((path, k - take))

    def settle(self, *, completed: Sequence[str]) -> None:
        """After a call: completed files are done; bytes attributed to the others are gone."""
        with self._lock:
            done = set(completed)
            for path in self._order:
                if path in self._settled:
                    continue
                if path in done:
                    self._settled.add(path)
                    self._tracker.file_done(path)
                elif self._attributed[path]:
                    self._tracker.discard_bytes(path, self._attributed[path])
                    self._attributed[path] = 0
            self._history.clear()

    def tqdm_class(self) -> type[hf_tqdm]:
        return type("_TrackerTqdm", (_TrackerTqdm,), {"_sink": self})


class _TrackerTqdm(hf_tqdm):
    """A silent progress bar; the transfer bar forwards its byte updates to a `_ByteSink`."""

    _sink: _ByteSink | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        name = kwargs.pop("name", None)
        self._is_transfer = name == _TRANSFER_BAR_NAME or kwargs.get("desc") == _TRANSFER_BAR_DESC
        kwargs["disable"] = True  # our logs and /status report progress; never draw on stderr
        super().__init__(*args, **kwargs)

    def update(self, n: float | None = 1) -> bool | None:
        if self._is_transfer and self._sink is not None and n:
            self._sink.add(int(n))
        return super().update(n)


# ---- the engine -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Sig:
    ino: int
    mtime_ns: int
    size: int


def _stat(path: Path) -> _Sig | None:
    try:
        st = path.stat()
    except OSError:  # missing (or unreadable): not there yet
        return None
    return _Sig(st.st_ino, st.st_mtime_ns, st.st_size)


def _snapshot_in_thread(plan: Plan, paths: Sequence[str], *, ctx: RunContext, cache_dir: Path,
                        sink: _ByteSink) -> None:
    """Run one snapshot_download call and re-raise what it raised. Stops waiting early when `stop` is set
    (Interrupted) or when the retry budget runs out without a byte arriving (RetryBudgetExhausted): the
    library retries HEAD requests and 5xx answers on its own, for minutes, inside one call."""
    config, budget = ctx.config, ctx.budget
    target = Path(config.target)

    def work() -> None:
        snapshot_download(
            plan.repo_id,
            revision=plan.ref,
            local_dir=target,
            cache_dir=cache_dir,
            allow_patterns=[glob.escape(p) for p in paths],
            endpoint=plan.endpoint,
            token=config.token or False,  # False: never a token from ~/.cache/huggingface
            max_workers=config.max_workers,
            etag_timeout=min(config.header_timeout, config.stall_timeout),  # the HEAD's headers
            force_download=True,  # the caller asks only for files it could not verify on disk
            tqdm_class=sink.tqdm_class(),
            library_name="model-provisioner",
        )

    def give_up() -> None:
        if budget.remaining() <= 0:
            sink.abandon()
            budget.check(reason="stall", message="huggingface_hub made no progress (it retries internally)"
                         + _xet_hint())

    try:
        call_interruptible(work, stop=ctx.stop, name="hubengine-snapshot", give_up=give_up)
    except Interrupted:
        sink.abandon()
        raise


def _xet_hint() -> str:
    """With Xet enabled, a stuck download is often the Xet service (unreachable from an air-gapped or
    proxied node): say how to avoid it."""
    from huggingface_hub import constants as hf_constants

    if hf_constants.HF_HUB_DISABLE_XET:
        return ""
    return ("; if the repo is Xet-backed, the Xet service may be unavailable: set HF_HUB_DISABLE_XET=1 "
            "(plain HTTP downloads) or use --engine native, which never uses Xet")


def _explain_missing(plan: Plan, missing: Sequence[str], *, target: Path, cache_dir: Path) -> ProvisionerError:
    """snapshot_download returned, yet files are missing. Either the commit's listing lacks them (it
    skips unknown paths silently: a permanent NotFoundError), or the listing call failed and the library
    fell back to the non-empty local_dir (it returns "successfully" then: transient)."""
    try:
        listed = {f.path for f in get_cached_repo_tree(plan.repo_id, revision=plan.ref, local_dir=target,
                                                        cache_dir=cache_dir)}
    except (hf_errors.CachedRepoTreeNotFoundError, OSError, ValueError):  # no usable listing: the hub was not reached
        listed = None
    if listed is not None:
        absent = [p for p in missing if p not in listed]
        if absent:
            return NotFoundError(f"{absent[0]!r} is not in {plan.repo_id} at {plan.ref}"
                                 + (f" (and {len(absent) - 1} more)" if len(absent) > 1 else ""),
                                 repo_id=plan.repo_id, revision=plan.ref, path=absent[0])
    return TransientError(f"snapshot_download returned without {len(missing)} file(s), e.g. {missing[0]}",
                          reason="api")


def fetch_with_hub(plan: Plan, entries: Sequence[FileEntry], *, ctx: RunContext,
                   state_dir: Path) -> dict[str, FetchedFile]:
    """Download `entries` of `plan` at `plan.ref` into `ctx.config.target` with huggingface_hub.

    Returns {path: FetchedFile} where `part_path` is the file's final path and the digests are not
    computed (all ""): the caller hashes the files in place. The library's cache_dir is
    `<state_dir>/hub-cache`. Retries transient failures within the budget (each retry re-requests only
    the files not yet complete); raises NotFoundError / UnauthorizedError / NoSpaceError / LocalIOError /
    BadRemoteError at once, RetryBudgetExhausted once the budget is spent, Interrupted when `ctx.stop`
    is set.
    """
    config, tracker, budget, stop = ctx.config, ctx.tracker, ctx.budget, ctx.stop
    if not entries:
        return {}
    target = Path(config.target)
    cache_dir = Path(state_dir) / HUB_CACHE_NAME
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a read-only or missing volume: nothing can be downloaded
        raise LocalIOError(f"cannot create the target directory {target}: {exc.strerror}", path=str(target)) from None
    configure_downloads(config)
    pending = {e.path: e for e in entries}
    before = {e.path: _stat(target / e.path) for e in entries}
    sink = _ByteSink(entries, tracker=tracker, budget=budget, stop=stop)
    attempt = 0
    while True:
        if stop.is_set():
            raise interrupted(stop)
        sink.new_attempt()
        error: ProvisionerError | None = None
        try:
            _snapshot_in_thread(plan, list(pending), ctx=ctx, cache_dir=cache_dir, sink=sink)
        except (Interrupted, RetryBudgetExhausted):
            raise
        except _StopRequested:  # the hook saw `stop` before the waiting loop did
            raise interrupted(stop) from None
        except Exception as exc:  # classified: permanent errors re-raise below, transient ones retry
            error = classify_download_error(exc, plan=plan)
            log.debug("snapshot_download failed", exc_info=exc)

        completed = []
        for path, entry in pending.items():
            sig = _stat(target / path)
            if sig is not None and sig.size == entry.size and sig != before[path]:
                completed.append(path)
        sink.settle(completed=completed)
        for path in completed:
            del pending[path]

        if error is None and pending:
            error = _explain_missing(plan, list(pending), target=target, cache_dir=cache_dir)
        if error is None:
            return {e.path: FetchedFile(entry=e, part_path=target / e.path,
                                        digests=Digests(size=e.size, sha256="", blob_sha1=""))
                    for e in entries}
        if not isinstance(error, TransientError):
            raise error
        if sink.received_this_attempt or completed:
            attempt = 0  # progress was made: start the backoff over
        message = redact(str(error))
        delay = retry_step(ctx, reason=error.reason, message=message, attempt=attempt, retry_after=error.retry_after)
        log.warning("hub engine: retrying in %.1fs (%d file(s) left): %s", delay, len(pending), message)
        attempt += 1
        ctx.pause(delay)


__all__ = ["HUB_CACHE_NAME", "HUB_METADATA_DIR", "fetch_with_hub"]
