"""One downloader per volume. `Coordinator` is what api.provision asks before touching files.

The default is an flock on `<target>/.provisioner/lock`. flock is reliable on local disks and on
NFSv4 with lock support; some NFS/SMB mounts accept flock calls without enforcing them across
nodes — use the Kubernetes Lease (provisioner/kube/lease.py) for volumes shared between nodes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from ..context import interrupted
from ..errors import LocalIOError
from ..observe.progress import Tracker

POLL_SECONDS = 0.2


class Coordinator(Protocol):
    def hold(self, *, key: str, tracker: Tracker, stop: threading.Event) -> contextlib.AbstractContextManager[None]:
        """Block until this process may download `key` (reporting `tracker.waiting(holder=...)` while it
        waits); release on exit. Raises errors.Interrupted if `stop` is set while waiting."""
        ...


class NoCoordination:
    def hold(self, *, key: str, tracker: Tracker, stop: threading.Event) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


class FileLock:
    """flock(2) on a file in the state folder; the holder's pid/host is written in it for `waiting for`."""

    def __init__(self, state_dir: Path, *, identity: str) -> None:
        self.path = state_dir / "lock"
        self.identity = identity

    @contextlib.contextmanager
    def hold(self, *, key: str, tracker: Tracker, stop: threading.Event) -> Iterator[None]:

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # read-only or missing volume: say which path
            raise LocalIOError(f"cannot open lock file {self.path}: {exc.strerror}", path=str(self.path)) from None
        try:
            reported = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):  # not contention: a real error
                        raise LocalIOError(f"cannot lock {self.path}: {exc.strerror}", path=str(self.path)) from None
                if not reported:
                    holder = _read_holder(fd) or "another process"
                    tracker.waiting(holder=holder)
                    reported = True
                if stop.wait(POLL_SECONDS):  # poll: flock has no timeout and must stay interruptible
                    raise interrupted(stop)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{self.identity} {key}\n".encode(), 0)
            yield
        finally:
            os.close(fd)  # closing releases the flock


def _read_holder(fd: int) -> str | None:
    try:
        data = os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
    except OSError:  # informational only
        return None
    return data.split(" ", 1)[0] if data else None
