"""Stage 4 — the ready marker: `<target>/.provisioner/ready.json`.

Written atomically (temp file, fsync, rename, directory fsync) and only after verification.
`check_ready` is the probe path: stdlib only, no network, one stat per file. With `--verify app` the
marker is written with `verification.embedding.pending` and the app-image check
(`verify/smoke_child.py --record`) fills in its result; probes are ready only once it passed.
"""

from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..manifest import Plan
from .fsutil import atomic_write_json, fsync_dir

MARKER_VERSION = 1
STATE_DIR_NAME = ".provisioner"
MARKER_NAME = "ready.json"


def state_dir(target: Path) -> Path:
    return target / STATE_DIR_NAME


def marker_path(target: Path) -> Path:
    return state_dir(target) / MARKER_NAME


@dataclass(frozen=True)
class MarkerCheck:
    ok: bool
    reason: str  # why not ready, or "ready"
    marker: dict[str, Any] | None = None


def read_marker(target: Path) -> dict[str, Any] | None:
    try:
        with marker_path(target).open("rb") as f:
            data = json.load(f)
    except (OSError, ValueError):  # absent, unreadable or torn: not ready
        return None
    return data if isinstance(data, dict) else None


def app_check_state(marker: dict[str, Any]) -> str | None:
    """`--verify app`: why the app-image embedding check does not allow readiness yet, or None when it
    passed (or is not due: another verify level, or no sentence-transformers model)."""
    if marker.get("verify") != "app":
        return None
    embedding = (marker.get("verification") or {}).get("embedding")
    if not isinstance(embedding, dict):
        return None  # nothing to check: not a sentence-transformers model
    if embedding.get("pending"):
        return "embedding check in the app's image has not run yet"
    if embedding.get("ok") is False:
        return f"embedding check in the app's image failed: {embedding.get('detail', '')}"
    return None


def check_ready(target: Path, *, repo_id: str | None = None, revision: str | None = None,
                app_check_pending_ok: bool = False) -> MarkerCheck:
    """True only if a valid marker exists and every file it lists is on disk with the recorded
    size and mtime. `repo_id`/`revision` (branch, tag or commit), when given, must match too.
    A `--verify app` marker also needs the app-image embedding check to have passed, unless
    `app_check_pending_ok` (the provisioner itself: its part, the files, is done)."""
    marker = read_marker(target)
    if marker is None:
        return MarkerCheck(False, "no ready marker")
    try:
        if marker.get("version") != MARKER_VERSION:
            return MarkerCheck(False, f"marker version {marker.get('version')!r} is not {MARKER_VERSION}", marker)
        if repo_id is not None and marker["repo_id"] != repo_id:
            return MarkerCheck(False, f"marker is for {marker['repo_id']}, not {repo_id}", marker)
        if revision is not None and revision not in (marker["revision"], marker["commit"]):
            commit = str(marker["commit"])[:12] if marker["commit"] else "unknown commit"
            return MarkerCheck(False, f"marker is for revision {marker['revision']} ({commit}), not {revision}", marker)
        for f in marker["files"]:
            path = target / f["path"]
            try:
                st = os.lstat(path)
            except OSError:  # deleted or unreadable since the marker was written
                return MarkerCheck(False, f"{f['path']} is missing", marker)
            if not stat.S_ISREG(st.st_mode):
                return MarkerCheck(False, f"{f['path']} is not a regular file", marker)
            if st.st_size != f["size"]:
                return MarkerCheck(False, f"{f['path']} has size {st.st_size}, expected {f['size']}", marker)
            if st.st_mtime_ns != f["mtime_ns"]:
                return MarkerCheck(False, f"{f['path']} was modified after verification", marker)
        waiting = None if app_check_pending_ok else app_check_state(marker)
        if waiting is not None:
            return MarkerCheck(False, waiting, marker)
    except (KeyError, TypeError, AttributeError):  # a marker we did not write: treat as absent
        return MarkerCheck(False, "marker is malformed", marker)
    return MarkerCheck(True, "ready", marker)


def write_marker(target: Path, *, plan: Plan, verify_level: str, verification: dict[str, Any],
                 engine: str, started_at: float, sources: dict[str, str] | None = None) -> dict[str, Any]:
    """`sources`: where each file fetched in this run came from ("hub" or a mirror URL), recorded per file."""
    files = []
    for entry in plan.files:
        st = os.lstat(target / entry.path)
        source = (sources or {}).get(entry.path)
        files.append({**entry.to_json(), "mtime_ns": st.st_mtime_ns, **({"source": source} if source else {})})
    marker = {
        "version": MARKER_VERSION,
        "repo_id": plan.repo_id,
        "revision": plan.revision,
        "commit": plan.commit,  # null when no source named one (see `commit_known`)
        "commit_known": plan.commit_known,
        "endpoint": plan.endpoint,
        "engine": engine,
        "verify": verify_level,
        "verification": verification,
        "files": files,
        "bytes_total": plan.total_bytes,
        "started_at": started_at,
        "verified_at": time.time(),
    }
    atomic_write_json(marker_path(target), marker)
    return marker


def invalidate(target: Path) -> None:
    """Remove the marker before any file changes, so no crash can leave a stale claim of readiness."""
    path = marker_path(target)
    try:
        os.unlink(path)
    except FileNotFoundError:  # nothing to invalidate
        return
    fsync_dir(path.parent)
