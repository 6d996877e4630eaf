"""The public Python API: `provision(...)`. The CLI is a thin layer over it.

    from provisioner import provision
    result = provision(repo_id="sentence-transformers/all-MiniLM-L6-v2", target="/models/minilm",
                       progress=lambda event: print(event.kind, event.data))

Safe to run in a thread (e.g. behind an admin route): pass `stop=threading.Event()` to cancel.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import marker
from .config import Config, read_token
from .context import RunContext, Stop, check_stop
from .errors import (
    Interrupted,
    LocalIOError,
    NotFoundError,
    ProvisionerError,
    UnauthorizedError,
    VerificationError,
    exit_code_for,
)
from .lock import Coordinator, FileLock, NoCoordination
from .manifest import FileEntry, Plan
from .progress import Event, Phase, Tracker
from .redact import redact, register_secret
from .retry import RetryBudget
from .verify import hash_file, matches, mismatch_detail, wanted_digests

log = logging.getLogger("provisioner")

# A file whose bytes keep failing their checksum is fetched again this many times, then we give up.
MAX_CHECKSUM_REFETCHES = 2


def _wanted(entry: FileEntry) -> dict[str, bool]:
    """Only the digest the plan can compare: re-hashing a multi-GiB file twice over is wasted CPU."""
    sha256, blob_sha1 = wanted_digests(entry)
    return {"sha256": sha256, "blob_sha1": blob_sha1}


@dataclass(frozen=True)
class ProvisionResult:
    repo_id: str
    revision: str
    commit: str
    target: Path
    files: int
    bytes_total: int
    bytes_downloaded: int  # received from the network by this call
    warm: bool  # ready from an existing marker, nothing fetched
    waited_for: str | None  # another replica/process that did the download
    seconds: float
    verification: dict[str, Any]


def provision(config: Config | None = None, *, progress: Callable[[Event], None] | None = None,
              stop: threading.Event | None = None, tracker: Tracker | None = None,
              free_space: Callable[[Path], int] | None = None, **overrides: Any) -> ProvisionResult:
    """Make the model ready under `config.target`. Raises a `ProvisionerError` subclass on failure.

    `overrides` are `Config` fields (e.g. `repo_id=`, `target=`, `verify=`); without `config` the
    defaults are used and the token comes from HF_TOKEN.
    """
    if config is None:
        config = Config(token=read_token(token_file=str(overrides.get("token_file", "")), environ=os.environ))
    if overrides:
        config = dataclasses.replace(config, **overrides)
    register_secret(config.token)
    tracker = tracker or Tracker(repo_id=config.repo_id, revision=config.revision)
    if progress is not None:
        tracker.subscribe(progress)
    stop = stop if stop is not None else Stop()
    run = _Run(config, tracker=tracker, stop=stop, free_space=free_space)
    try:
        try:
            result = run.execute()
        except ProvisionerError as exc:
            tracker.mark_failed(message=redact(str(exc)), exit_code=exit_code_for(exc))
            raise
        tracker.mark_ready()
        return result
    finally:
        run.close()  # after ready/failed were reported, so Events and the pod condition see them


class _Run:
    def __init__(self, config: Config, *, tracker: Tracker, stop: threading.Event,
                 free_space: Callable[[Path], int] | None) -> None:
        self.config = config
        self.tracker = tracker
        self.stop = stop
        self.free_space = free_space
        self.target = Path(config.target)
        self.state_dir = marker.state_dir(self.target)
        self.budget = RetryBudget(config.retry_budget)
        self.ctx = RunContext(config=config, tracker=tracker, budget=self.budget, stop=stop)
        self.started = time.time()
        self.t0 = time.monotonic()
        self.kube: Any = None
        self.verification: dict[str, Any] = {}

    def close(self) -> None:
        if self.kube is not None:
            self.kube.close()

    # ---- the stages ------------------------------------------------------------------------
    def execute(self) -> ProvisionResult:
        cfg = self.config
        self._check_state_dir()
        if cfg.kube != "off":  # Events and the pod condition, whatever the coordination
            from . import kube

            self.kube = kube.setup(cfg, tracker=self.tracker, target=self.target)
        if not cfg.reverify:
            warm = self._warm_start()  # read-only: a verified model on a read-only volume is served as is
            if warm is not None:
                return warm
        self._prepare_target()
        self.tracker.set_phase(Phase.PLANNING)
        from .plan import build_plan

        plan = build_plan(self.ctx)
        self._check_stop()
        coordinator = self._coordinator()
        with coordinator.hold(key=f"{plan.repo_id}@{plan.commit}", tracker=self.tracker, stop=self.stop):
            waited_for = self.tracker.waiting_for
            if not cfg.reverify:
                check = marker.check_ready(self.target, repo_id=plan.repo_id, revision=plan.commit)
                if check.ok:  # another replica finished while we waited
                    log.info("ready from the marker written by %s", waited_for or "an earlier run")
                    return self._result_from_marker(check.marker or {}, waited_for=waited_for)
            marker.invalidate(self.target)
            marker.atomic_write_json(self.state_dir / "plan.json", plan.to_json())
            self._fetch_and_verify(plan)
            self._smoke_test()
            marker.write_marker(self.target, plan=plan, verify_level=cfg.verify, verification=self.verification,
                                engine=cfg.engine, started_at=self.started)
        log.info("model ready: %s@%s in %s", plan.repo_id, plan.commit[:12], self.target)
        return ProvisionResult(
            repo_id=plan.repo_id, revision=plan.revision, commit=plan.commit, target=self.target,
            files=len(plan.files), bytes_total=plan.total_bytes, bytes_downloaded=self.tracker.bytes_received,
            warm=False, waited_for=waited_for, seconds=time.monotonic() - self.t0, verification=self.verification)

    def _check_state_dir(self) -> None:
        """The state folder must be a real folder inside the target: a planted symlink would send
        partials, the lock and the ready marker somewhere else."""
        try:
            st = os.lstat(self.state_dir)
        except FileNotFoundError:  # a new volume
            return
        except OSError as exc:  # unreadable target
            raise LocalIOError(f"cannot inspect {self.state_dir}: {exc.strerror}", path=str(self.state_dir)) from None
        if not stat.S_ISDIR(st.st_mode):
            raise LocalIOError(f"{self.state_dir} is not a folder (a symlink or file is in the way); remove it",
                               path=str(self.state_dir))

    def _prepare_target(self) -> None:
        try:
            marker.make_dir(self.state_dir / "partial")
        except OSError as exc:  # read-only volume, permissions, a file where the dir should be
            raise LocalIOError(f"cannot create the state folder {self.state_dir}: {exc.strerror}",
                               path=str(self.state_dir)) from None
        if not os.access(self.target, os.W_OK):
            raise LocalIOError(f"target {self.target} is not writable", path=str(self.target))

    def _warm_start(self) -> ProvisionResult | None:
        """Ready from a valid marker. A pinned commit needs no network; a branch costs one API call to
        see whether it moved (if the hub cannot be asked, the verified copy is served with a warning)."""
        cfg = self.config
        check = marker.check_ready(self.target, repo_id=cfg.repo_id, revision=cfg.revision)
        if not check.ok or check.marker is None:
            if check.marker is not None:
                log.info("existing marker not usable: %s", check.reason)
            return None
        if cfg.commit_pinned or check.marker["commit"] == cfg.revision:
            return self._result_from_marker(check.marker, waited_for=None)
        from .plan import resolve_commit

        quick = RetryBudget(min(cfg.api_timeout, 10.0))  # don't hold a restart hostage to a flaky hub
        try:
            commit = resolve_commit(RunContext(config=dataclasses.replace(cfg, retry_budget=quick.seconds),
                                               tracker=self.tracker, budget=quick, stop=self.stop))
        except (NotFoundError, UnauthorizedError) as exc:
            log.warning("hub refused the revision check (%s); serving the verified copy", redact(str(exc)))
            return self._result_from_marker(check.marker, waited_for=None)
        except Interrupted:
            raise
        except ProvisionerError as exc:  # hub unreachable: a verified copy beats no copy
            log.warning("cannot reach the hub to check %s (%s); serving the verified copy %s",
                        cfg.revision, redact(str(exc)), check.marker["commit"][:12])
            return self._result_from_marker(check.marker, waited_for=None)
        if commit == check.marker["commit"]:
            return self._result_from_marker(check.marker, waited_for=None)
        log.info("%s moved from %s to %s: updating", cfg.revision, check.marker["commit"][:12], commit[:12])
        return None

    def _result_from_marker(self, m: dict[str, Any], *, waited_for: str | None) -> ProvisionResult:
        plan = Plan(repo_id=m["repo_id"], revision=m["revision"], commit=m["commit"], endpoint=m.get("endpoint", ""),
                    files=tuple(FileEntry.from_json(f) for f in m["files"]))
        self.tracker.set_plan(plan, on_disk={f.path: f.size for f in plan.files})
        for f in plan.files:
            self.tracker.file_done(f.path, skipped=True)
        self.verification = dict(m.get("verification") or {})
        return ProvisionResult(
            repo_id=plan.repo_id, revision=plan.revision, commit=plan.commit, target=self.target,
            files=len(plan.files), bytes_total=plan.total_bytes, bytes_downloaded=self.tracker.bytes_received,
            warm=waited_for is None, waited_for=waited_for, seconds=time.monotonic() - self.t0,
            verification=self.verification)

    def _coordinator(self) -> Coordinator:
        cfg = self.config
        if cfg.coordination == "none":
            return NoCoordination()
        if self.kube is not None and self.kube.coordinator is not None:
            return self.kube.coordinator
        return FileLock(self.state_dir, identity=f"{socket.gethostname()}/{os.getpid()}")

    def _fetch_and_verify(self, plan: Plan) -> None:
        cfg = self.config
        from .fetch import prune_partials

        freed = prune_partials(self.state_dir, plan.files)  # an older plan's partials can never be resumed
        if freed:
            log.info("removed %d bytes of partial data left by an older revision", freed)
        todo, on_disk = self._files_to_fetch(plan)
        self.tracker.set_plan(plan, on_disk=on_disk)
        for entry in plan.files:
            if entry not in todo:
                self.tracker.file_done(entry.path, skipped=True)
        from .plan import check_disk_space, free_bytes

        needed = sum(e.size - on_disk.get(e.path, 0) for e in todo)
        check_disk_space(self.target, needed=needed, headroom=cfg.disk_headroom,
                         free_space=self.free_space or free_bytes)
        checksum_seconds = 0.0
        refetches = 0
        while todo:
            self._check_stop()
            self.tracker.set_phase(Phase.DOWNLOADING)
            if cfg.engine == "hub":
                bad, seconds = self._fetch_hub(plan, todo)
            else:
                bad, seconds = self._fetch_native(plan, todo)
            checksum_seconds += seconds
            if not bad:
                break
            refetches += 1
            if refetches > MAX_CHECKSUM_REFETCHES:
                entry, expected, actual = bad[0]
                self.tracker.verification(kind="checksums", seconds=checksum_seconds, ok=False,
                                          detail=f"{entry.path}: expected {expected}, got {actual}")
                raise VerificationError(
                    f"{entry.path} failed its checksum {refetches} times (expected {expected}, got {actual})",
                    kind="checksum", path=entry.path, expected=expected, actual=actual)
            for entry, expected, actual in bad:
                self.tracker.retry(reason="checksum", path=entry.path, delay=0.0,
                                   message=f"{entry.path}: expected {expected}, got {actual}; fetching again")
                log.warning("checksum mismatch for %s (expected %s, got %s): fetching again",
                            entry.path, expected, actual)
            todo = [b[0] for b in bad]
        if cfg.verify != "none":
            self.verification["checksums"] = {"ok": True, "files": len(plan.files),
                                              "seconds": round(checksum_seconds, 3)}
            self.tracker.verification(kind="checksums", seconds=checksum_seconds, ok=True)

    def _files_to_fetch(self, plan: Plan) -> tuple[list[FileEntry], dict[str, int]]:
        """Files already complete at their final path (a crash after the last byte, an unchanged file
        across commits, or --reverify) are re-hashed and kept; the rest are fetched, resuming partials."""
        from .fetch import partial_bytes_on_disk

        todo: list[FileEntry] = []
        on_disk: dict[str, int] = {}
        for entry in plan.files:
            final = self.target / entry.path
            try:
                st = os.lstat(final)
            except FileNotFoundError:  # not there yet: the normal case
                st = None
            except OSError as exc:  # e.g. a parent is a regular file: cannot be fixed by downloading
                raise LocalIOError(f"cannot inspect {final}: {exc.strerror}", path=str(final)) from None
            if st is not None and stat.S_ISREG(st.st_mode) and st.st_size == entry.size and self._inside(final):
                self.tracker.set_phase(Phase.VERIFYING)
                if self.config.verify == "none" or matches(entry, hash_file(final, size=entry.size, **_wanted(entry))):
                    on_disk[entry.path] = entry.size
                    continue
                log.warning("%s on disk does not match the plan: fetching it again", entry.path)
            todo.append(entry)
            on_disk[entry.path] = partial_bytes_on_disk(self.state_dir, entry)
        return todo, on_disk

    def _fetch_native(self, plan: Plan, todo: list[FileEntry]) -> tuple[list[tuple[FileEntry, str, str]], float]:
        from .fetch import clear_journal, discard_partial, fetch_files

        fetched = fetch_files(plan, todo, ctx=self.ctx, state_dir=self.state_dir)
        bad: list[tuple[FileEntry, str, str]] = []
        t = time.monotonic()
        for entry in todo:
            item = fetched[entry.path]
            if self.config.verify != "none" and not matches(entry, item.digests):
                expected, actual = mismatch_detail(entry, item.digests)
                self.tracker.discard_bytes(entry.path, discard_partial(self.state_dir, entry))
                bad.append((entry, expected, actual))
                continue
            self._place(entry, item.part_path)
            clear_journal(self.state_dir, entry)  # the journal beside the (now moved) part file
        return bad, time.monotonic() - t

    def _fetch_hub(self, plan: Plan, todo: list[FileEntry]) -> tuple[list[tuple[FileEntry, str, str]], float]:
        from .fetch import fetch_with_hub

        for entry in todo:
            self._safe_final_path(entry)
        fetch_with_hub(plan, todo, ctx=self.ctx, state_dir=self.state_dir)
        bad: list[tuple[FileEntry, str, str]] = []
        t = time.monotonic()
        if self.config.verify != "none":
            self.tracker.set_phase(Phase.VERIFYING)
            for entry in todo:
                final = self.target / entry.path
                digests = hash_file(final, size=entry.size, **_wanted(entry))
                if not matches(entry, digests):
                    expected, actual = mismatch_detail(entry, digests)
                    self.tracker.discard_bytes(entry.path, entry.size)
                    final.unlink(missing_ok=True)
                    bad.append((entry, expected, actual))
        return bad, time.monotonic() - t

    def _inside(self, path: Path) -> bool:
        """True if `path`'s folder really is inside the target (no symlinked folder leading out)."""
        root = os.path.realpath(self.target)
        parent = os.path.realpath(path.parent)
        return parent == root or parent.startswith(root + os.sep)

    def _safe_final_path(self, entry: FileEntry) -> Path:
        """The final path, refusing to write through a symlink that leads outside the target."""
        final = self.target / entry.path
        if not self._inside(final):  # checked before mkdir, which would otherwise create folders outside
            raise LocalIOError(f"refusing to write {entry.path}: {final.parent} leads outside the target "
                               f"(symlink to {os.path.realpath(final.parent)})", path=str(final.parent))
        try:
            marker.make_dir(final.parent)
        except OSError as exc:  # a file in the way, or read-only
            raise LocalIOError(f"cannot create {final.parent}: {exc.strerror}", path=str(final.parent)) from None
        if not self._inside(final):  # a symlink planted while we created folders
            raise LocalIOError(f"refusing to write {entry.path}: {final.parent} leads outside the target",
                               path=str(final.parent))
        if final.is_dir() and not final.is_symlink():
            raise LocalIOError(f"cannot place {entry.path}: a directory is in the way", path=str(final))
        return final

    def _place(self, entry: FileEntry, part: Path) -> None:
        final = self._safe_final_path(entry)
        try:
            os.chmod(part, 0o644)
            os.replace(part, final)  # replaces a planted symlink itself, never its destination
            marker.fsync_dir(final.parent)
        except OSError as exc:  # cross-device state dir, read-only remount
            raise LocalIOError(f"cannot move {entry.path} into place: {exc.strerror}", path=str(final)) from None

    def _smoke_test(self) -> None:
        if self.config.verify != "full":
            return
        from .smoke import is_sentence_transformers_dir, run_smoke_test

        if not is_sentence_transformers_dir(self.target):
            self.verification["embedding"] = {"ok": None, "detail": "not a sentence-transformers model: skipped"}
            return
        self._check_stop()
        self.tracker.set_phase(Phase.SMOKE_TEST)
        ref = Path(self.config.reference_embeddings) if self.config.reference_embeddings else None
        result = run_smoke_test(self.target, reference=ref, stop=self.stop)
        detail = redact(result.detail)
        self.verification["embedding"] = result.to_json()
        self.tracker.verification(kind="embedding", seconds=result.seconds, ok=result.ok, detail=detail)
        if not result.ok:
            raise VerificationError(f"embedding smoke test failed: {detail}", kind="embedding")

    def _check_stop(self) -> None:
        check_stop(self.stop)
