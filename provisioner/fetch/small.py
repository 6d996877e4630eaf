"""The small-file path: files up to SMALL_FILE_BYTES are received into memory and written once.

For a repo of many small files the on-disk journal (journal.py) cost more than the bytes: per file a
sparse part file, an offsets file, a metadata file written twice, three unlinks and two fsyncs. A
`SmallJournal` has the same interface as `Journal` but keeps the bytes and offsets in memory; the
engine's request, retry, resume-within-the-call and hashing code runs unchanged on it. Once the
file is complete, `close()` writes it to `<key>.small.tmp` with one `write`, fsyncs it (the
durability the ready marker relies on) and renames it to `<key>.small`, so that name only ever
holds a complete file: a later call takes it as is (re-hashed, not fetched). Crash safety is
simple: a small file killed before that rename leaves nothing trusted on disk and is fetched again
on the next run (it is small).

Also owns how many small-file requests may be in flight (`small_in_flight`): small files are
latency-bound (one round trip each), so they get their own workers next to the large files'.
Imports config, errors, manifest and fetch.journal; engine.py and http.py import it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..config import Config
from ..errors import LocalIOError
from ..manifest import FileEntry
from .journal import Journal, ensure_partial_dir, local_error, small_paths

__all__ = ["SMALL_FILE_BYTES", "SMALL_IN_FLIGHT_MAX", "SmallJournal", "is_small", "small_in_flight"]

# Files up to this size take the in-memory path. Peak memory is SMALL_IN_FLIGHT_MAX of them (16 MiB);
# above it a crash would re-fetch enough bytes that resuming from the on-disk journal pays off.
SMALL_FILE_BYTES = 1 << 20
# At most this many small-file requests in flight (hf download uses 8 workers): more than that only
# adds GIL contention on a small machine without hiding more round trips.
SMALL_IN_FLIGHT_MAX = 16


def is_small(entry: FileEntry) -> bool:
    return entry.size <= SMALL_FILE_BYTES


def small_in_flight(config: Config) -> int:
    """Small-file requests in flight: as many connections as the large files may use together
    (--max-workers x --connections-per-file), at most SMALL_IN_FLIGHT_MAX (16 with the defaults)."""
    return max(1, min(SMALL_IN_FLIGHT_MAX, config.max_workers * config.connections_per_file))


class SmallJournal(Journal):
    """A `Journal` held in memory until the file is complete, then written to `<key>.small` at once.

    Thread-safety as `Journal`: each segment's bytes and offset are written by one worker only
    (a small file normally has one segment); the buffer never changes size."""

    def __init__(self, state_dir: Path, entry: FileEntry) -> None:
        segments = [(0, entry.size)] if entry.size > 0 else []
        super().__init__(state_dir, entry, segments=segments, done=[0] * len(segments), etag=None, no_range=False)
        self.part_path, self._tmp_path = small_paths(self.state_dir, entry)
        self._buf = bytearray(entry.size)
        self._written = False  # `part_path` holds these bytes, complete

    @classmethod
    def start(cls, state_dir: Path, entry: FileEntry) -> SmallJournal:
        """A journal for `entry`: complete already if an earlier call left its `.small` file."""
        journal = cls(state_dir, entry)
        journal._take_complete()
        return journal

    def _take_complete(self) -> None:
        flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(self.part_path, flags)
        except OSError:  # none (the normal case), or a planted symlink (ELOOP): fetch; the rename replaces it
            return
        try:
            st = os.fstat(fd)
            data = os.pread(fd, self.entry.size + 1, 0) if stat.S_ISREG(st.st_mode) else b""
        except OSError:  # unreadable: fetch it again
            return
        finally:
            os.close(fd)
        if len(data) != self.entry.size:  # not ours (a file only gets this name complete): fetch again
            return
        self._buf[:] = data
        self.done = [self.entry.size] if self.segments else []
        self._written = True

    # ---- data (memory only) -----------------------------------------------------------------
    def write(self, pos: int, data: bytes | bytearray | memoryview) -> None:
        end = pos + len(data)
        if end > len(self._buf):  # the engine never writes past the planned size; refuse to grow the buffer
            raise LocalIOError(f"{self.entry.path}: write past the planned size ({end} > {len(self._buf)})",
                               path=str(self.part_path))
        self._buf[pos:end] = data

    def read(self, pos: int, n: int) -> bytes:
        return bytes(self._buf[pos:pos + n])

    def advance(self, seg: int, n: int) -> None:
        self.done[seg] += n

    def record_etag(self, etag: str) -> None:
        with self._lock:
            if self.etag is None:
                self.etag = etag

    def mark_no_range(self) -> None:
        with self._lock:
            self.no_range = True

    def reset(self, *, segments: list[tuple[int, int]], no_range: bool) -> int:
        with self._lock:
            dropped = self.bytes_done
            self.segments = segments
            self.no_range = no_range
            self.etag = None
            self.done = [0] * len(segments)
            return dropped

    # ---- lifecycle -----------------------------------------------------------------------------
    def flush(self) -> None:
        """Nothing to flush: the bytes reach the disk only complete, in `close`."""

    def close(self, *, sync: bool = True) -> None:
        """Complete: write the file once (fsynced when `sync`) and rename it to `part_path`.
        Incomplete: drop the bytes; nothing of a small file is resumed across calls but a complete one."""
        try:
            if not self._written and self.bytes_done == self.entry.size:
                self._write_complete(sync=sync)
                self._written = True
        finally:
            self._buf = bytearray()

    def _write_complete(self, *, sync: bool) -> None:
        # O_EXCL + O_NOFOLLOW: a leftover temporary file (a killed run) or a planted symlink is
        # unlinked, never written through.
        flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
                 | getattr(os, "O_NOFOLLOW", 0))
        tmp = self._tmp_path
        try:
            try:
                fd = os.open(tmp, flags, 0o644)
            except FileExistsError:  # a leftover from a killed run: replace it
                tmp.unlink()
                fd = os.open(tmp, flags, 0o644)
            except FileNotFoundError:  # the partial folder is gone (a direct caller): create it once
                ensure_partial_dir(self.state_dir, needed=self.entry.size)
                fd = os.open(tmp, flags, 0o644)
        except OSError as exc:  # EROFS/EACCES/ENOSPC on the state directory
            raise local_error(exc, path=tmp, needed=self.entry.size) from exc
        try:
            try:
                view = memoryview(self._buf)
                while view:
                    view = view[os.write(fd, view):]
                if sync:
                    os.fsync(fd)  # the data is durable before the name says "complete"
            finally:
                os.close(fd)
            os.replace(tmp, self.part_path)  # replaces a planted symlink itself, never its destination
        except OSError as exc:  # ENOSPC -> NoSpaceError, EIO on fsync -> LocalIOError
            raise local_error(exc, path=tmp, needed=self.entry.size) from exc
