"""Where a model's files live on the volume: `flat` (the default) or `versioned` (shared volumes).

flat        <target>/<repo paths>, state in <target>/.provisioner/. One model version at a time:
            a new revision invalidates the marker, then rewrites files in place (emptyDir: no one
            else ever sees the volume, so this is all that is needed).

versioned   <target>/.provisioner/commits/<commit>/   a complete flat target per commit (its own
                                                      files, partials and ready marker)
            <target>/revisions/<name> -> ../.provisioner/commits/<commit>   one symlink per
                                                      requested revision name (`main`, a tag, a sha)
            The app reads <target>/revisions/<name>. A new commit is provisioned into its own folder
            while every reader keeps the old one; once it is verified and marked ready the link is
            switched with one rename(2): readers see the old commit or the new one, never a mix.
            Files whose digest did not change are hard-linked from the commit the link pointed to,
            not downloaded again. After a switch, commits no kept link points to are pruned: the
            `--keep-revisions` most recently switched links are kept (a rolling update has two live
            revisions), so is the commit a link pointed to just before its switch (readers that
            resolved it earlier), and a commit folder whose lock another process holds is never removed.

Imports only marker (paths, atomic helpers) and manifest: the api stage drives it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import shutil
from pathlib import Path

from ..manifest import Plan
from ..state import marker
from . import fsutil

log = logging.getLogger("provisioner")

LINKS_DIR = "revisions"
COMMITS_DIR = "commits"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def link_name(revision: str) -> str:
    """The link's file name for a revision: `refs/pr/1` -> `refs--pr--1`; never hidden, never `..`."""
    name = _UNSAFE.sub("-", revision.replace("/", "--"))
    return name if name.strip(".") else f"rev-{name}"


def link_path(root: Path, revision: str) -> Path:
    """What the app reads (and the probes check) for `revision` in a versioned root."""
    return root / LINKS_DIR / link_name(revision)


def model_dir(*, target: Path, revision: str, layout: str) -> Path:
    """The folder the app reads and the probes check: the target itself, or the revision's link."""
    return link_path(target, revision) if layout == "versioned" else target


def commit_dir(root: Path, commit: str) -> Path:
    return marker.state_dir(root) / COMMITS_DIR / commit


def current_commit(root: Path, revision: str) -> str | None:
    """The commit the revision's link points to (None: no link yet, or not one of ours)."""
    try:
        dest = os.readlink(link_path(root, revision))
    except OSError:  # no link yet (first run), or a non-link in the way
        return None
    name = Path(dest).name
    return name if Path(dest).parent.name == COMMITS_DIR else None


def seed_unchanged_files(plan: Plan, *, root: Path, into: Path, previous: str | None) -> int:
    """Hard-link files whose digest is unchanged from the previous commit's verified folder into the new
    one (they are re-hashed like any file found on disk). Returns how many were linked."""
    if previous is None or previous == plan.key:
        return 0
    prev_dir = commit_dir(root, previous)
    old = marker.read_marker(prev_dir)
    if old is None:
        return 0
    old_files = {f.get("path"): f for f in old.get("files", []) if isinstance(f, dict)}
    linked = 0
    for entry in plan.files:
        f = old_files.get(entry.path)
        same = f is not None and f.get("size") == entry.size and (
            (entry.sha256 is not None and f.get("sha256") == entry.sha256)
            or (entry.sha256 is None and entry.blob_sha1 is not None and f.get("blob_sha1") == entry.blob_sha1))
        dest = into / entry.path
        if not same or dest.exists():
            continue
        fsutil.make_dir(dest.parent)
        try:
            os.link(prev_dir / entry.path, dest)
        except OSError as exc:  # cross-device, or the old file vanished: it is simply downloaded
            log.debug("cannot hard-link %s from %s: %s", entry.path, previous[:12], exc.strerror)
            continue
        linked += 1
    return linked


def switch_link(root: Path, revision: str, commit: str) -> None:
    """Point the revision's link at the commit folder, atomically (a new link renamed over the old)."""
    link = link_path(root, revision)
    fsutil.make_dir(link.parent)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):  # a leftover from a crash between symlink and rename
        os.unlink(tmp)
    os.symlink(os.path.join("..", marker.STATE_DIR_NAME, COMMITS_DIR, commit), tmp)
    os.replace(tmp, link)
    fsutil.fsync_dir(link.parent)


def prune(root: Path, *, keep_links: int, keep_commits: tuple[str, ...] = ()) -> list[str]:
    """Remove the commit folders that none of the `keep_links` most recently switched links points to,
    except `keep_commits` (the commit a link pointed to just before its switch: readers that resolved
    the link earlier may still open files there). Older links go first (they name revisions no
    rollout is using any more). Returns the commits removed."""
    links_dir = root / LINKS_DIR
    try:
        links = sorted((p for p in links_dir.iterdir() if p.is_symlink() and not p.name.startswith(".")),
                       key=lambda p: p.lstat().st_mtime_ns, reverse=True)
    except FileNotFoundError:  # nothing switched yet
        return []
    for stale in links[keep_links:]:
        with contextlib.suppress(FileNotFoundError):  # another process pruned it first
            os.unlink(stale)
    kept = {Path(os.readlink(p)).name for p in links[:keep_links]} | set(keep_commits)
    removed = []
    commits = marker.state_dir(root) / COMMITS_DIR
    for d in commits.iterdir() if commits.is_dir() else ():
        if d.name in kept or not d.is_dir() or d.is_symlink():
            continue
        if _remove_unless_locked(d):
            removed.append(d.name)
    if removed:
        fsutil.fsync_dir(commits)
        log.info("pruned %d old revision folder(s): %s", len(removed), ", ".join(c[:12] for c in removed))
    return removed


def _remove_unless_locked(folder: Path) -> bool:
    """Delete a commit folder unless another process holds its download lock (it is being provisioned)."""
    lock_file = marker.state_dir(folder) / "lock"
    try:
        fd = os.open(lock_file, os.O_RDWR | os.O_NOFOLLOW)
    except FileNotFoundError:  # never locked: no one is provisioning it
        fd = -1
    except OSError:  # unreadable lock: leave the folder alone
        return False
    try:
        if fd >= 0:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):  # in use right now
                    return False
                raise
        marker.invalidate(folder)  # no reader may take a half-deleted folder for a ready one
        shutil.rmtree(folder)
        return True
    finally:
        if fd >= 0:
            os.close(fd)
