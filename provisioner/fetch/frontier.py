"""The hash frontier: sha256 and/or git blob sha1 of a file computed while its segments stream in.

Only the digests asked for are computed (the caller asks for the one `verify.matches` compares);
asked for none (`--verify none`), the frontier only records offsets: no hasher thread, no re-reads.

The hasher must see the bytes in order, but segments land out of order. `position` is the
frontier: every byte before it has been hashed. Writers `commit()` each chunk right after it is on
disk; a chunk that starts exactly at the frontier is hashed inline (no re-read). Anything else
(later segments, the prefix of a resumed partial) is read back through the journal (`Journal.read`:
the part file, in the page cache; a small file's memory), by a per-file hasher thread (multi-segment files) or synchronously
(`catch_up()`, single-stream files before they resume). Memory stays at one chunk per reader.
"""

from __future__ import annotations

import threading

from ..errors import LocalIOError
from ..verify.checksums import Digests, Hasher
from .journal import Journal

READ_CHUNK = 1 << 20
_WAKE_SECONDS = 1.0  # re-check period of the hasher thread; notify() normally wakes it at once


class HashFrontier:
    def __init__(self, journal: Journal, *, threaded: bool, sha256: bool = True, blob_sha1: bool = True) -> None:
        self._journal = journal
        self._size = journal.entry.size
        self._want = (sha256, blob_sha1)
        self._active = sha256 or blob_sha1  # False: nothing to hash, offsets only
        self._hasher = Hasher(self._size, sha256=sha256, blob_sha1=blob_sha1)
        self.position = 0
        self._seg = 0  # index of the segment holding the frontier
        self._cond = threading.Condition()
        self._busy = False  # someone is hashing bytes at `position` right now
        self._closed = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if threaded and self._active:
            self._thread = threading.Thread(target=self._run, name=f"hash:{journal.entry.path[-40:]}", daemon=True)
            self._thread.start()

    # ---- writers -----------------------------------------------------------------------------
    def commit(self, seg: int, pos: int, data: bytes | bytearray | memoryview) -> None:
        """`data` was just written at `pos` (in segment `seg`): record its offset in the journal and
        hash it now if it is next in file order.

        The offset is advanced under the frontier's lock, so the hasher thread can never see these
        bytes as on-disk before this writer has decided to hash them inline (no needless re-read)."""
        with self._cond:
            self._journal.advance(seg, len(data))
            if not self._active:
                return
            if self._busy or pos != self.position or self._closed:
                self._cond.notify_all()  # later bytes: the hasher thread reads them back when it gets there
                return
            self._busy = True
        try:
            with memoryview(data) as view:  # released at once: the caller reuses its bytearray
                self._hasher.update(view)
        finally:
            with self._cond:
                self.position += len(data)
                self._busy = False
                self._cond.notify_all()

    def reset(self) -> None:
        """Start over from byte 0 (single-stream files only: the data is being rewritten)."""
        if self._thread is not None:
            raise RuntimeError("reset() is only for single-stream files")
        with self._cond:
            self._hasher = Hasher(self._size, sha256=self._want[0], blob_sha1=self._want[1])
            self.position = 0
            self._seg = 0

    def notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # ---- readers ----------------------------------------------------------------------------
    def _available_end(self) -> int:
        """End of the contiguous on-disk bytes starting at the frontier (== position if none).

        `_seg` caches the index of the segment holding the frontier (it only moves forward), so
        this stays O(1) however many pieces a file has. Call with `_cond` held."""
        pos = self.position
        segments, done = self._journal.segments, self._journal.done
        while self._seg < len(segments) and pos >= segments[self._seg][1]:
            self._seg += 1
        if self._seg >= len(segments):
            return pos
        start, end = segments[self._seg]
        return max(pos, start + done[self._seg]) if start <= pos else pos

    def _hash_from_disk(self, start: int, end: int) -> int:
        data = self._journal.read(start, end - start)  # LocalIOError when the part file is unreadable
        if not data:  # the part file is shorter than its journal claims: never hash garbage
            raise LocalIOError(f"part file of {self._journal.entry.path} is truncated at {start}",
                               path=str(self._journal.part_path))
        self._hasher.update(data)
        return len(data)

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._closed and self.position < self._size and (
                            self._busy or self._available_end() <= self.position):
                        self._cond.wait(_WAKE_SECONDS)  # timeout: belt and braces against a lost notify
                    if self._closed or self.position >= self._size:
                        return
                    self._busy = True
                    start = self.position
                    end = min(self._available_end(), start + READ_CHUNK)
                self._hash_claimed(start, end)
        except BaseException as exc:  # noqa: BLE001 - stored and re-raised by finish() in the owning worker
            with self._cond:
                self._error = exc
                self._closed = True

    def catch_up(self) -> None:
        """Synchronously hash everything contiguous on disk from the frontier (single-stream resume)."""
        if not self._active:
            return
        while True:
            with self._cond:
                if self._busy:
                    self._cond.wait(_WAKE_SECONDS)  # timeout: only the hasher thread sets busy, briefly
                    continue
                end = min(self._available_end(), self.position + READ_CHUNK)
                if end <= self.position:
                    return
                self._busy = True
                start = self.position
            self._hash_claimed(start, end)

    def _hash_claimed(self, start: int, end: int) -> None:
        """Hash [start, end) that the caller claimed by setting `_busy`; advance and release the frontier."""
        n = 0
        try:
            n = self._hash_from_disk(start, end)
        finally:
            with self._cond:
                self.position += n
                self._busy = False
                self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()  # no timeout: the thread checks `_closed` at least every _WAKE_SECONDS and per read

    def finish(self) -> Digests:
        """All bytes are on disk: stop the thread, hash any tail and return the digests."""
        self.close()
        if self._error is not None:
            raise self._error
        if not self._active:  # nothing hashed: the size on disk per the journal is all there is to report
            done = self._journal.bytes_done
            if done != self._size:
                raise LocalIOError(f"{done} of {self._size} bytes of {self._journal.entry.path} on disk",
                                   path=str(self._journal.part_path))
            return Digests(size=done, sha256="", blob_sha1="")
        with self._cond:
            self._closed = False  # catch_up() must not be short-circuited; no thread is left
        self.catch_up()
        if self.position != self._size:
            raise LocalIOError(f"hashed {self.position} of {self._size} bytes of {self._journal.entry.path}",
                               path=str(self._journal.part_path))
        return self._hasher.digests()
