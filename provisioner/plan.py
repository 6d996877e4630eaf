"""Stage 1 — plan: resolve the revision to a commit and list every file with its size and hash.

Uses huggingface_hub's `HfApi.model_info(files_metadata=True)` (one call gives the commit,
sizes, LFS sha256 and git blob ids), with timeouts (hubclient) and retries (retry.retry_step,
errors classified by hubapi) that the library does not set for API calls. Every path from the hub
is checked before it can name a file on disk. Takes one `RunContext`; imports context, errors,
hubapi, hubclient, manifest, marker, redact and retry, never a later stage.
"""

from __future__ import annotations

import logging
import posixpath
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .context import RunContext, call_interruptible
from .errors import (
    BadRemoteError,
    ExpectMismatchError,
    Interrupted,
    NoSpaceError,
    NotFoundError,
    TransientError,
)
from .hubapi import classify_api_error
from .hubclient import configure_api
from .manifest import FileEntry, Plan
from .plan_gather import gather_metadata
from .plan_sources import MAX_FILE_SIZE, FileMeta, merge_sibling  # noqa: F401  (MAX_FILE_SIZE: re-exported)
from .redact import redact
from .retry import retry_step
from .state.marker import STATE_DIR_NAME

log = logging.getLogger("provisioner.plan")

MAX_FILES = 100_000
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_SHA1_RE = re.compile(r"^[0-9a-f]{40}$")
# Weight formats sentence-transformers / transformers do not load; skipped unless --include names them.
DEFAULT_SKIPPED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")

def call_with_retries(fn: Callable[[], Any], *, ctx: RunContext, what: str, repo_id: str, revision: str,
                      record_retries: bool = True) -> Any:
    """Call `fn` until it succeeds, retrying transient hub errors within the run's budget.
    `record_retries=False`: the retries are not the run's (a quick side check), so the tracker is not told."""
    attempt = 0
    while True:
        try:
            return call_interruptible(fn, stop=ctx.stop, name="hub-api")
        except Interrupted:
            raise
        except Exception as exc:  # classified below: permanent errors re-raise, transient ones retry
            err = classify_api_error(exc, repo_id=repo_id, revision=revision)
            if not isinstance(err, TransientError):
                raise err from None
        delay = retry_step(ctx, reason=err.reason, message=redact(f"{what}: {err}"), attempt=attempt,
                           retry_after=err.retry_after, record=record_retries)
        log.warning("retrying %s in %.1fs: %s", what, delay, redact(str(err)))
        attempt += 1
        ctx.pause(delay)


def fetch_model_info(ctx: RunContext, *, revision: str, record_retries: bool = True) -> Any:
    from huggingface_hub import HfApi

    config = ctx.config
    configure_api(config)
    from . import __version__

    api = HfApi(endpoint=config.endpoint, token=config.token or False, library_name="model-provisioner",
                library_version=__version__)
    return call_with_retries(
        lambda: api.model_info(config.repo_id, revision=revision, files_metadata=True, timeout=config.api_timeout),
        ctx=ctx, what="model_info", repo_id=config.repo_id, revision=revision, record_retries=record_retries,
    )


def resolve_commit(ctx: RunContext) -> str | None:
    """Just the commit sha of the requested revision (used to see whether a warm marker is current);
    None when model_info names none (a hub that names no commit). Its retries are not recorded in
    `ctx.tracker`: a side check, not the run's download."""
    info = fetch_model_info(ctx, revision=ctx.config.revision, record_retries=False)
    sha = getattr(info, "sha", None)
    return _checked_commit(sha) if sha is not None else None


def build_plan(ctx: RunContext) -> Plan:
    config = ctx.config
    info = fetch_model_info(ctx, revision=config.revision)
    sha = getattr(info, "sha", None)
    commit = _checked_commit(sha) if sha is not None else None
    if commit is not None:
        check_expected_commit(ctx, commit)  # as early as possible: before the listing calls
    metas = gather_metadata(ctx, info=info, commit=commit)
    if commit is None:
        commit = _checked_commit(metas.commit) if metas.commit is not None else None
        check_expected_commit(ctx, commit)
        if commit is None:  # some artifact managers' HF remotes: provision the revision as named
            log.warning("the hub names no commit for %s@%s (no sha, no X-Repo-Commit): provisioning the revision "
                        "as named; the marker records the commit as unknown, so a branch cannot be pinned",
                        config.repo_id, config.revision)
    entries = [entry_from_meta(m) for m in metas.files]
    if config.require_digests:
        bare = [e.path for e in entries if e.evidence == "size-only"]
        if bare:
            raise BadRemoteError(f"--require-digests: the hub gave no sha256 or git blob id for {len(bare)} file(s), "
                                 f"e.g. {bare[0]!r}")
    check_no_conflicts(entries)
    entries = select_files(entries, include=config.include, exclude=config.exclude)
    if not entries:
        raise NotFoundError(
            f"no files of {config.repo_id}@{config.revision} match include={list(config.include)} "
            f"exclude={list(config.exclude)}", repo_id=config.repo_id, revision=config.revision)
    return Plan(repo_id=config.repo_id, revision=config.revision, commit=commit, endpoint=config.endpoint,
                files=tuple(sorted(entries, key=lambda e: e.path)))


def check_expected_commit(ctx: RunContext, commit: str | None) -> None:
    """--expect-commit: the revision must resolve to that commit (raised before any file byte is fetched)."""
    config = ctx.config
    expected = config.expect_commit
    if not expected or commit == expected:
        return
    if commit is None:
        raise ExpectMismatchError(f"--expect-commit {expected[:12]}: the hub names no commit for "
                                  f"{config.repo_id}@{config.revision}, so it cannot be checked", expected=expected,
                                  actual=None)
    raise ExpectMismatchError(f"{config.repo_id}@{config.revision} resolved to {commit}, not --expect-commit "
                              f"{expected} (the {config.revision!r} revision moved); nothing was fetched",
                              expected=expected, actual=commit)


def entry_from_meta(m: FileMeta) -> FileEntry:
    if m.size is None:
        raise BadRemoteError(f"invalid or absurd size for {m.path!r}: no source gave one")
    return FileEntry(path=m.path, size=m.size, sha256=m.sha256,
                     blob_sha1=m.blob_sha1 if m.sha256 is None or m.blob_sha1 else None)


def _checked_commit(sha: object) -> str:
    if not isinstance(sha, str) or not _SHA1_RE.match(sha):
        raise BadRemoteError("the hub answered without a valid commit sha", detail=repr(sha)[:80])
    return sha


def safe_repo_path(path: object) -> str:
    """A repo path that stays inside the target, or BadRemoteError. Also keeps our state folder ours."""
    if not isinstance(path, str) or not path or len(path) > 1024:
        raise BadRemoteError("the hub listed a file with an empty or invalid path", detail=repr(path)[:120])
    if "\0" in path or "\\" in path or any(ord(c) < 32 for c in path):
        raise BadRemoteError("the hub listed a file path with control or backslash characters", detail=repr(path)[:120])
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise BadRemoteError(f"the hub listed an absolute file path: {path!r}")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts) or posixpath.normpath(path) != path:
        raise BadRemoteError(f"the hub listed a file path that escapes or is not normalized: {path!r}")
    if parts[0] == STATE_DIR_NAME:
        raise BadRemoteError(f"the hub listed a file inside the reserved {STATE_DIR_NAME}/ folder: {path!r}")
    return path


def check_no_conflicts(entries: Iterable[FileEntry]) -> None:
    """Two entries for one path, or a path that is both a file and a folder, cannot both land on disk."""
    seen: set[str] = set()
    folders: set[str] = set()
    for e in entries:
        if e.path in seen:
            raise BadRemoteError(f"the hub listed {e.path!r} twice")
        seen.add(e.path)
        parts = e.path.split("/")
        folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
    both = sorted(seen & folders)
    if both:
        raise BadRemoteError(f"the hub listed {both[0]!r} as both a file and a folder")


def entry_from_sibling(s: Any) -> FileEntry:
    """One complete model_info sibling as a plan entry (incomplete ones are BadRemoteError here)."""
    meta = FileMeta(path=safe_repo_path(getattr(s, "rfilename", None)))
    merge_sibling(meta, s)
    if not meta.complete:
        raise BadRemoteError(f"invalid or absurd size for {meta.path!r}: {meta.size!r}"
                             if meta.size is None else f"no usable hash for {meta.path!r}")
    return entry_from_meta(meta)


def select_files(entries: Iterable[FileEntry], *, include: tuple[str, ...],
                 exclude: tuple[str, ...]) -> list[FileEntry]:
    """Apply include/exclude globs (huggingface_hub's own matcher, so patterns mean what they mean
    for snapshot_download). Without --include, skip `pytorch_model.bin` where the same folder has
    `model.safetensors`: sentence-transformers loads the latter, and the .bin doubles the download."""
    from huggingface_hub.utils import filter_repo_objects

    chosen = list(filter_repo_objects(list(entries), allow_patterns=list(include) or None,
                                      ignore_patterns=list(exclude) or None, key=lambda e: e.path))
    if include:
        return chosen
    safetensor_dirs = {posixpath.dirname(e.path) for e in chosen if posixpath.basename(e.path) == "model.safetensors"}
    return [e for e in chosen
            if not (posixpath.basename(e.path) in DEFAULT_SKIPPED_WEIGHTS
                    and posixpath.dirname(e.path) in safetensor_dirs)]


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def check_disk_space(target: Path, *, needed: int, headroom: int,
                     free_space: Callable[[Path], int] = free_bytes) -> None:
    free = free_space(target)
    if needed + headroom > free:
        raise NoSpaceError(
            f"not enough space on {target}: need {_human(needed)} more (+{_human(headroom)} headroom), "
            f"only {_human(free)} free", path=str(target), needed_bytes=needed + headroom, free_bytes=free)


def _human(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{n} B"
