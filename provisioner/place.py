"""Stage: put verified files at their repo paths inside the target, and never anywhere else.

Owns the target's path safety (no symlinked folder may lead a write outside the target, no `.provisioner`
that is not a real folder) and the move of a verified part file into place (rename + directory fsync, or one fsync per
folder for a batch: `sync_dirs`).
Imports only errors, manifest and state helpers: every higher stage may use it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from .errors import LocalIOError
from .manifest import FileEntry
from .state import fsutil, marker


def inside(target: Path, path: Path) -> bool:
    """True if `path`'s folder really is inside `target` (no symlinked folder leading out)."""
    root = os.path.realpath(target)
    parent = os.path.realpath(path.parent)
    return parent == root or parent.startswith(root + os.sep)


def check_state_dir(target: Path) -> None:
    """The state folder must be a real folder inside the target: a planted symlink would send
    partials, the lock and the ready marker somewhere else."""
    state = marker.state_dir(target)
    try:
        st = os.lstat(state)
    except FileNotFoundError:  # a new volume
        return
    except OSError as exc:  # unreadable target
        raise LocalIOError(f"cannot inspect {state}: {exc.strerror}", path=str(state)) from None
    if not stat.S_ISDIR(st.st_mode):
        raise LocalIOError(f"{state} is not a folder (a symlink or file is in the way); remove it", path=str(state))


def prepare_target(target: Path) -> None:
    """Create the state folder; fail before any download when the target cannot be written."""
    state = marker.state_dir(target)
    try:
        fsutil.make_dir(state / "partial")
    except OSError as exc:  # read-only volume, permissions, a file where the dir should be
        raise LocalIOError(f"cannot create the state folder {state}: {exc.strerror}", path=str(state)) from None
    if not os.access(target, os.W_OK):
        raise LocalIOError(f"target {target} is not writable", path=str(target))


def complete_on_disk(target: Path, entry: FileEntry) -> bool:
    """A regular file of the planned size already sits at the entry's final path, inside the target.
    (Its bytes still have to be hashed before they are trusted.)"""
    final = target / entry.path
    try:
        st = os.lstat(final)
    except FileNotFoundError:  # not there yet: the normal case
        return False
    except OSError as exc:  # e.g. a parent is a regular file: cannot be fixed by downloading
        raise LocalIOError(f"cannot inspect {final}: {exc.strerror}", path=str(final)) from None
    return stat.S_ISREG(st.st_mode) and st.st_size == entry.size and inside(target, final)


def safe_final_path(target: Path, entry: FileEntry) -> Path:
    """The final path, its folders created; refuses to write through a symlink leading outside the target."""
    final = target / entry.path
    if not inside(target, final):  # checked before mkdir, which would otherwise create folders outside
        raise LocalIOError(f"refusing to write {entry.path}: {final.parent} leads outside the target "
                           f"(symlink to {os.path.realpath(final.parent)})", path=str(final.parent))
    try:
        fsutil.make_dir(final.parent)
    except OSError as exc:  # a file in the way, or read-only
        raise LocalIOError(f"cannot create {final.parent}: {exc.strerror}", path=str(final.parent)) from None
    if not inside(target, final):  # a symlink planted while we created folders
        raise LocalIOError(f"refusing to write {entry.path}: {final.parent} leads outside the target",
                           path=str(final.parent))
    if final.is_dir() and not final.is_symlink():
        raise LocalIOError(f"cannot place {entry.path}: a directory is in the way", path=str(final))
    return final


def place(target: Path, entry: FileEntry, part: Path, *, sync_dir: bool = True) -> Path:
    """Move a verified part file to its final path (atomic rename, then the folder is fsynced).

    `sync_dir=False` leaves the folder's fsync to the caller, who must call `sync_dirs` on the
    returned final paths before the ready marker (one fsync per folder instead of one per file)."""
    final = safe_final_path(target, entry)
    try:
        os.chmod(part, 0o644)
        os.replace(part, final)  # replaces a planted symlink itself, never its destination
        if sync_dir:
            fsutil.fsync_dir(final.parent)
    except OSError as exc:  # cross-device state dir, read-only remount
        raise LocalIOError(f"cannot move {entry.path} into place: {exc.strerror}", path=str(final)) from None
    return final


def sync_dirs(finals: Iterable[Path]) -> int:
    """fsync each folder holding one of `finals` once (the renames of `place(..., sync_dir=False)`
    become durable). Returns the number of folders synced."""
    folders = {final.parent for final in finals}
    for folder in sorted(folders):
        try:
            fsutil.fsync_dir(folder)
        except OSError as exc:  # the renames may not be durable: the marker must not be written
            raise LocalIOError(f"cannot fsync {folder}: {exc.strerror}", path=str(folder)) from None
    return len(folders)
