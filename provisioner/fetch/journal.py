"""The on-disk journal of one partial download (see docs/design.md, "On-disk layout").

    <state_dir>/partial/<key>.part     the file's bytes at their final offsets (sparse until done)
    <state_dir>/partial/<key>.json     {"version", "path", "expected", "size", "etag", "no_range",
                                        "segments": [[start, end), ...]}  (end exclusive)
    <state_dir>/partial/<key>.offsets  one little-endian u64 per segment: bytes done in that segment
    <state_dir>/partial/<key>.small    a complete small file (fetch/small.py: no journal, never sparse),
                                       written whole to <key>.small.tmp, fsynced, then renamed: it
                                       exists only complete

Invariants that make a SIGKILL at any instant safe:
* an offset only advances after the `pwrite` of its data returned, with one 8-byte `pwrite` (a
  single syscall inside one page: the kernel applies it entirely or not at all);
* the metadata file is replaced atomically (tmp + rename) and is written last when a journal is
  created or re-laid out, so a half-written journal is detected (mismatch) and discarded, never
  trusted;
* the key includes the expected hash: a new plan with new content never splices onto old bytes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import stat
import struct
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import LocalIOError, NoSpaceError
from ..manifest import FileEntry

JOURNAL_VERSION = 1
_U64 = struct.Struct("<Q")
_NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
log = logging.getLogger("provisioner.fetch")

# Start writeback of the part file after every this many bytes written, so the final fsync (durability
# before the marker) finds little dirty page cache left: 1 GiB at once took 275-375 ms, this leaves ~10 ms.
WRITEBACK_BYTES = 32 << 20
_SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h: start writeback of dirty pages, do not wait for it
_sync_file_range: Any = None  # resolved on first use: a ctypes function, or False where there is none


def _resolve_sync_file_range() -> Any:
    global _sync_file_range
    if _sync_file_range is None:
        func: Any = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                func = ctypes.CDLL(None, use_errno=True).sync_file_range
                func.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
                func.restype = ctypes.c_int
            except (OSError, AttributeError):  # no libc symbol (old/odd libc): the final fsync does it all
                func = False
        _sync_file_range = func
    return _sync_file_range


def start_writeback(fd: int) -> bool:
    """Ask the kernel to start writing the file's dirty pages now (asynchronous; Linux only).

    An optimisation only: it never fails and never replaces the fsync. False where unsupported."""
    func = _resolve_sync_file_range()
    if not func:
        return False
    return bool(func(fd, 0, 0, _SYNC_FILE_RANGE_WRITE) == 0)  # 0, 0: the whole file; errors ignored


def part_key(entry: FileEntry) -> str:
    """sha256(path + "\\0" + expected)[:32]: the file name stem of a partial."""
    return hashlib.sha256((entry.path + "\0" + entry.expected).encode("utf-8")).hexdigest()[:32]


def partial_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "partial"


def _paths(state_dir: Path, entry: FileEntry) -> tuple[Path, Path, Path]:
    base = partial_dir(state_dir) / part_key(entry)
    return base.with_suffix(".part"), base.with_suffix(".json"), base.with_suffix(".offsets")


def part_path(state_dir: Path, entry: FileEntry) -> Path:
    return _paths(state_dir, entry)[0]


def small_paths(state_dir: Path, entry: FileEntry) -> tuple[Path, Path]:
    """A small file's complete copy and the temporary file it is written to first."""
    base = partial_dir(state_dir) / part_key(entry)
    return base.with_suffix(".small"), base.with_suffix(".small.tmp")


def complete_small_bytes(state_dir: Path, entry: FileEntry) -> int:
    """The size of a complete small file in the state directory (it is renamed there only complete), or 0."""
    try:
        st = small_paths(state_dir, entry)[0].lstat()
    except OSError:  # none (the normal case) or unreadable: nothing to resume
        return 0
    return st.st_size if stat.S_ISREG(st.st_mode) and st.st_size == entry.size else 0


# Large files are cut into pieces of at most this size (see layout_segments). Trade-off: after the
# last byte at most ~(connections - 1) pieces remain to hash (32 MiB: ~100 ms), while each piece
# costs one request round trip on a kept-alive connection (~5% at 100 MB/s and 20 ms RTT).
MAX_PIECE = 32 << 20


def layout_segments(size: int, *, split_threshold: int, connections: int) -> list[tuple[int, int]]:
    """Byte ranges [start, end) of a file.

    Small files (< split_threshold) are one range. Large ones are cut into at least `connections`
    pieces, and into pieces of at most MAX_PIECE: `connections` workers take them in file order,
    so the bytes land roughly in order and the hash frontier trails the download by a few pieces
    (not by (n-1)/n of the file, as with one static range per connection); a slow connection
    also just ends up doing fewer pieces instead of holding up the whole file.
    """
    if size <= 0:
        return []
    if size < split_threshold or connections <= 1:
        return [(0, size)]
    piece = max(1, min(MAX_PIECE, -(-size // connections)))
    n = -(-size // piece)
    if n <= connections:
        bounds = [size * i // n for i in range(n + 1)]  # equal shares
    else:
        bounds = [min(i * piece, size) for i in range(n + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(n)]


def local_error(exc: OSError, *, path: Path, needed: int) -> Exception:
    """Map an OSError from the state directory to the product's error types."""
    if exc.errno in _NO_SPACE_ERRNOS:
        try:
            free = shutil.disk_usage(path.parent).free
        except OSError:  # statvfs itself failing must not hide the ENOSPC we are reporting
            free = 0
        return NoSpaceError(f"no space left on the target filesystem while writing {path.name}; partial data kept",
                            path=str(path), needed_bytes=needed, free_bytes=free)
    return LocalIOError(f"cannot write {path}: {exc.strerror or exc}", path=str(path))


def _segments_problem(raw: Any, size: int) -> tuple[list[tuple[int, int]], str | None]:
    """The segment layout in `raw`, and why it is not a gap-free cover of [0, size) (None if it is)."""
    if not isinstance(raw, list):
        return [], "segments are not a list"
    segs: list[tuple[int, int]] = []
    cursor = 0
    for i, item in enumerate(raw):
        if not (isinstance(item, list) and len(item) == 2 and all(isinstance(v, int) for v in item)):
            return [], f"segment {i} is not a pair of integers"
        start, end = item
        if start != cursor:
            return [], f"segment {i} starts at {start}, not at {cursor} (gap or overlap)"
        if end <= start:
            return [], f"segment {i} is empty or reversed"
        segs.append((start, end))
        cursor = end
    if cursor != size:
        return [], f"segments cover {cursor} bytes, not the file size {size}"
    return segs, None


class _Loaded(NamedTuple):
    meta: dict[str, Any]
    segments: list[tuple[int, int]]
    done: list[int]


ABSENT = "absent"  # the `_load` answer when there is no journal at all (the normal case, not a problem)


def _meta_problem(meta: Any, entry: FileEntry) -> str | None:
    """Why the metadata does not describe `entry` (stale or damaged), or None."""
    if not isinstance(meta, dict):
        return "metadata is not an object"
    if meta.get("version") != JOURNAL_VERSION:
        return f"journal version {meta.get('version')!r}, not {JOURNAL_VERSION}"
    if meta.get("path") != entry.path:
        return "written for another path"
    if meta.get("expected") != entry.expected:
        return "written for other content (expected hash differs)"
    if meta.get("size") != entry.size:
        return f"written for size {meta.get('size')!r}, not {entry.size}"
    return None


def _load(state_dir: Path, entry: FileEntry) -> _Loaded | str:
    """A consistent journal for `entry`, or why there is none: ABSENT, or which check failed
    (stale: written for other content; damaged: torn, truncated, planted links, impossible offsets)."""
    part, meta_path, offsets_path = _paths(state_dir, entry)
    if not any(os.path.lexists(p) for p in (part, meta_path, offsets_path)):
        return ABSENT
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:  # a crash between unlinking and rewriting the metadata
        return "metadata file missing"
    except (OSError, ValueError) as exc:  # unreadable or garbled (torn write, bit rot): never trusted
        return f"metadata file unreadable ({type(exc).__name__})"
    try:
        part_stat = part.lstat()
    except OSError as exc:  # missing or unreadable part file: nothing to resume
        return f"part file unreadable ({exc.strerror or type(exc).__name__})"
    if not stat.S_ISREG(part_stat.st_mode):  # planted symlink (or a dir): never followed
        return "part file is not a regular file"
    if offsets_path.is_symlink():  # planted symlink: never followed
        return "offsets file is a symlink"
    try:
        raw_offsets = offsets_path.read_bytes()
    except OSError as exc:  # missing or unreadable offsets file: progress unknown
        return f"offsets file unreadable ({exc.strerror or type(exc).__name__})"
    problem = _meta_problem(meta, entry)
    if problem is not None:
        return problem
    segs, problem = _segments_problem(meta.get("segments"), entry.size)
    if problem is not None:
        return problem
    if len(raw_offsets) != _U64.size * len(segs):
        return f"offsets file has {len(raw_offsets)} bytes, not {_U64.size * len(segs)} ({len(segs)} segments)"
    if part_stat.st_size != entry.size:
        return f"part file has {part_stat.st_size} bytes, not {entry.size}"
    done = [_U64.unpack_from(raw_offsets, i * _U64.size)[0] for i in range(len(segs))]
    for i, (d, (start, end)) in enumerate(zip(done, segs, strict=True)):
        if d > end - start:
            return f"offset {d} of segment {i} beyond the segment end ({end - start} bytes)"
    return _Loaded(meta, segs, done)


def partial_bytes_on_disk(state_dir: Path, entry: FileEntry) -> int:
    """Resumable bytes of `entry` present in the state directory (0 if none or not trustworthy)."""
    loaded = _load(state_dir, entry)
    return sum(loaded.done) if isinstance(loaded, _Loaded) else complete_small_bytes(state_dir, entry)


def _unlink_all(state_dir: Path, entry: FileEntry, *, keep_part: bool = False) -> None:
    part, meta, offsets = _paths(state_dir, entry)
    victims = [meta, meta.with_suffix(".json.tmp"), offsets]
    if not keep_part:
        victims += [part, *small_paths(state_dir, entry)]
    for p in victims:
        try:
            p.unlink()
        except FileNotFoundError:  # already gone: that is the goal
            pass
        except OSError as exc:  # read-only volume etc.: the caller must know the partial is still there
            raise local_error(exc, path=p, needed=0) from exc


def discard_partial(state_dir: Path, entry: FileEntry) -> int:
    """Delete a file's partial data (e.g. after a checksum mismatch). Returns the bytes dropped."""
    dropped = partial_bytes_on_disk(state_dir, entry)
    _unlink_all(state_dir, entry)
    return dropped


def clear_journal(state_dir: Path, entry: FileEntry) -> None:
    """Forget the journal of a file whose `.part` the caller has moved into place."""
    _unlink_all(state_dir, entry, keep_part=True)


def prune_partials(state_dir: Path, keep: Iterable[FileEntry]) -> int:
    """Delete partials of files not in `keep` (an older plan's leftovers). Returns bytes freed."""
    directory = partial_dir(state_dir)
    wanted = {part_key(e) for e in keep}
    freed = 0
    try:
        victims = [p for p in directory.iterdir() if p.name.split(".", 1)[0] not in wanted]
    except FileNotFoundError:  # no partial directory yet: nothing to prune
        return 0
    except OSError as exc:  # unreadable state directory: a local problem worth reporting
        raise local_error(exc, path=directory / "x", needed=0) from exc
    for p in victims:
        try:
            size = p.stat().st_blocks * 512 if p.suffix in (".part", ".small") else 0
            p.unlink()
            freed += size
        except FileNotFoundError:  # raced with another cleanup: already gone
            pass
        except OSError as exc:  # read-only volume: the leftovers stay, the caller must know
            raise local_error(exc, path=p, needed=0) from exc
    return freed


def ensure_partial_dir(state_dir: Path, *, needed: int) -> Path:
    """Create the partial folder; refuse one that is a symlink (it would send our writes elsewhere)."""
    directory = partial_dir(state_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # read-only or full volume: a local problem, not a network one
        raise local_error(exc, path=directory / "x", needed=needed) from exc
    if directory.is_symlink():
        raise LocalIOError(f"refusing to write partial data through the symlink {directory}", path=str(directory))
    return directory


class Journal:
    """An open partial: the part file and offsets file descriptors plus the segment layout.

    Thread-safety: each segment's offset is written only by the one worker fetching that segment;
    metadata changes (etag, layout) take `_lock`.
    """

    def __init__(self, state_dir: Path, entry: FileEntry, *, segments: list[tuple[int, int]], done: list[int],
                 etag: str | None, no_range: bool) -> None:
        self.state_dir = Path(state_dir)
        self.entry = entry
        self.part_path, self.meta_path, self.offsets_path = _paths(self.state_dir, entry)
        self.segments = segments
        self.done = done
        self.etag = etag
        self.no_range = no_range
        self._lock = threading.Lock()
        self._part_fd = -1
        self._offsets_fd = -1
        self._unsynced = 0  # bytes written since writeback was last started
        self._unsynced_lock = threading.Lock()

    # ---- lifecycle -----------------------------------------------------------------------
    @classmethod
    def open(cls, state_dir: Path, entry: FileEntry, *, split_threshold: int, connections: int) -> Journal:
        """Load a consistent journal for `entry` (resume) or create a fresh one."""
        ensure_partial_dir(state_dir, needed=entry.size)
        loaded = _load(state_dir, entry)
        if isinstance(loaded, _Loaded):
            meta, segs, done = loaded
            etag = meta.get("etag") if isinstance(meta.get("etag"), str) else None
            journal = cls(state_dir, entry, segments=segs, done=done, etag=etag,
                          no_range=bool(meta.get("no_range", False)))
            journal._open_fds(create=False)
            return journal
        if loaded != ABSENT:  # the one line that says why bytes on disk are being fetched again
            log.warning("discarding the journal of %s: %s", entry.path, loaded)
        _unlink_all(state_dir, entry)
        journal = cls(state_dir, entry, done=[],
                      segments=layout_segments(entry.size, split_threshold=split_threshold,
                                               connections=connections),
                      etag=None, no_range=False)
        journal._open_fds(create=True)
        journal._write_layout()
        return journal

    def _open_fds(self, *, create: bool) -> None:
        # O_NOFOLLOW: a symlink planted at <key>.part must never be written through.
        flags = os.O_RDWR | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
        try:
            self._part_fd = os.open(self.part_path, flags | (os.O_CREAT | os.O_EXCL if create else 0), 0o644)
            if create:
                os.ftruncate(self._part_fd, self.entry.size)  # sparse: no space reserved, no zeros written
            self._offsets_fd = os.open(self.offsets_path, flags | os.O_CREAT, 0o644)
        except OSError as exc:  # EROFS/EACCES/ENOSPC on the state directory
            self.close(sync=False)
            raise local_error(exc, path=self.part_path, needed=self.entry.size) from exc

    def _write_layout(self) -> None:
        """(Re)write offsets then metadata; a crash in between leaves a mismatch that `_load` rejects."""
        self.done = [0] * len(self.segments)
        try:
            self.meta_path.unlink(missing_ok=True)
            os.ftruncate(self._offsets_fd, 0)
            if self.segments:
                os.pwrite(self._offsets_fd, b"\0" * (_U64.size * len(self.segments)), 0)
            self._write_meta()
        except OSError as exc:  # the journal could not be laid out: nothing trustworthy on disk
            raise local_error(exc, path=self.meta_path, needed=0) from exc

    def _write_meta(self) -> None:
        meta = {"version": JOURNAL_VERSION, "path": self.entry.path, "expected": self.entry.expected,
                "size": self.entry.size, "etag": self.etag, "no_range": self.no_range,
                "segments": [[s, e] for s, e in self.segments]}
        tmp = self.meta_path.with_suffix(".json.tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(meta, separators=(",", ":")))
        os.replace(tmp, self.meta_path)

    def flush(self) -> None:
        """fsync the data and the offsets (at stop, failure and completion)."""
        for fd, path in ((self._part_fd, self.part_path), (self._offsets_fd, self.offsets_path)):
            if fd < 0:
                continue
            try:
                os.fsync(fd)
            except OSError as exc:  # a failed fsync means the bytes may not be durable: report it
                raise local_error(exc, path=path, needed=0) from exc

    def close(self, *, sync: bool = True) -> None:
        try:
            if sync:
                self.flush()
        finally:
            for attr in ("_part_fd", "_offsets_fd"):
                fd = getattr(self, attr)
                if fd >= 0:
                    setattr(self, attr, -1)
                    try:
                        os.close(fd)
                    except OSError:  # close errors after fsync carry no extra information
                        pass

    # ---- data ----------------------------------------------------------------------------
    @property
    def part_fd(self) -> int:
        return self._part_fd

    @property
    def bytes_done(self) -> int:
        return sum(self.done)

    def remaining(self, seg: int) -> int:
        start, end = self.segments[seg]
        return end - start - self.done[seg]

    def write(self, pos: int, data: bytes | bytearray | memoryview) -> None:
        """pwrite `data` at `pos` (all of it) into the part file."""
        view = memoryview(data)
        total = view.nbytes
        try:
            while view:
                n = os.pwrite(self._part_fd, view, pos)
                view = view[n:]
                pos += n
        except OSError as exc:  # ENOSPC -> NoSpaceError, EROFS/EACCES/... -> LocalIOError
            raise local_error(exc, path=self.part_path, needed=self.entry.size - self.bytes_done) from exc
        with self._unsynced_lock:
            self._unsynced += total
            due = self._unsynced >= WRITEBACK_BYTES
            if due:
                self._unsynced = 0
        if due:  # by the one writer that crossed the threshold, outside the lock
            start_writeback(self._part_fd)

    def read(self, pos: int, n: int) -> bytes:
        """Up to `n` bytes from `pos` (the hash frontier reads back what it did not hash inline)."""
        try:
            return os.pread(self._part_fd, n, pos)
        except OSError as exc:  # an unreadable part file is a local I/O failure, not a network one
            raise LocalIOError(f"cannot read back {self.part_path}: {exc.strerror or exc}",
                               path=str(self.part_path)) from exc

    def advance(self, seg: int, n: int) -> None:
        """Record that `n` more bytes of segment `seg` are on disk (call only after `write` returned)."""
        value = self.done[seg] + n
        try:
            os.pwrite(self._offsets_fd, _U64.pack(value), seg * _U64.size)
        except OSError as exc:  # the offset did not move: the data will simply be fetched again
            raise local_error(exc, path=self.offsets_path, needed=0) from exc
        self.done[seg] = value

    def record_etag(self, etag: str) -> None:
        with self._lock:
            if self.etag is None:
                self.etag = etag
                try:
                    self._write_meta()
                except OSError as exc:  # could not persist: a later resume just cannot send If-Range
                    raise local_error(exc, path=self.meta_path, needed=0) from exc

    def mark_no_range(self) -> None:
        """The server ignores Range: from now on this file is fetched in one stream from 0."""
        with self._lock:
            self.no_range = True
            try:
                self._write_meta()
            except OSError as exc:  # could not persist: a resume would just discover it again
                raise local_error(exc, path=self.meta_path, needed=0) from exc

    def reset(self, *, segments: list[tuple[int, int]], no_range: bool) -> int:
        """Drop all progress and lay the file out again. Returns the bytes dropped."""
        with self._lock:
            dropped = self.bytes_done
            self.segments = segments
            self.no_range = no_range
            self.etag = None
            self._write_layout()
            return dropped
