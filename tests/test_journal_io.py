"""The open journal (provisioner/fetch/journal.py): data, offsets and metadata on disk, and every I/O
error mapped to the product's errors with the right path. Companion of tests/test_journal.py (the
checks that decide whether a journal is trusted); fast, no network (the mutation --quick subset)."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from test_journal import ENTRY, SEGMENTS, SIZE, u64s, write_journal

from provisioner.errors import LocalIOError, NoSpaceError
from provisioner.fetch import journal as fj
from provisioner.manifest import FileEntry


# ---- the open journal: data, offsets and metadata on disk ----------------------------------------------------
def fresh(state: Path, entry: FileEntry = ENTRY, *, threshold: int = 1 << 20, connections: int = 1) -> fj.Journal:
    return fj.Journal.open(state, entry, split_threshold=threshold, connections=connections)


def test_fresh_journal_files_on_disk(tmp_path: Path) -> None:
    j = fresh(tmp_path, threshold=100, connections=2)
    try:
        part, meta_path, offsets = fj._paths(tmp_path, ENTRY)
        assert j.part_path == part and j.meta_path == meta_path and j.offsets_path == offsets
        assert part.stat().st_size == SIZE and part.stat().st_blocks == 0, "sparse, nothing written"
        assert offsets.read_bytes() == u64s(0, 0)
        meta = json.loads(meta_path.read_text())
        assert meta == {"version": 1, "path": ENTRY.path, "expected": ENTRY.expected, "size": SIZE, "etag": None,
                        "no_range": False, "segments": [[0, 500], [500, 1000]]}
        assert not meta_path.with_suffix(".json.tmp").exists()
        assert j.bytes_done == 0 and j.remaining(0) == 500 and j.remaining(1) == 500
    finally:
        j.close()


def test_write_then_advance_is_what_a_resume_trusts(tmp_path: Path) -> None:
    j = fresh(tmp_path, threshold=100, connections=2)
    j.write(500, b"x" * 30)
    j.advance(1, 30)
    j.write(0, bytearray(b"y" * 10))
    j.advance(0, 10)
    j.advance(0, 5)
    assert j.done == [15, 30] and j.bytes_done == 45 and j.remaining(0) == 485 and j.remaining(1) == 470
    j.close()
    assert j.part_fd == -1
    assert fj.partial_bytes_on_disk(tmp_path, ENTRY) == 45
    data = fj.part_path(tmp_path, ENTRY).read_bytes()
    assert data[:10] == b"y" * 10 and data[500:530] == b"x" * 30 and data[530:] == b"\0" * 470
    again = fresh(tmp_path, threshold=100, connections=2)
    try:
        assert again.done == [15, 30] and again.segments == [(0, 500), (500, 1000)]
    finally:
        again.close(sync=False)


def test_write_writes_all_of_a_short_pwrite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    j = fresh(tmp_path)
    real = os.pwrite
    monkeypatch.setattr(fj.os, "pwrite", lambda fd, data, pos: real(fd, bytes(data[:3]), pos))
    j.write(10, b"abcdefgh")
    j.close()
    assert fj.part_path(tmp_path, ENTRY).read_bytes()[10:18] == b"abcdefgh"


def test_writeback_starts_every_writeback_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[int] = []
    monkeypatch.setattr(fj, "WRITEBACK_BYTES", 100)
    monkeypatch.setattr(fj, "start_writeback", started.append)
    j = fresh(tmp_path)
    try:
        j.write(0, b"a" * 99)
        assert started == []
        j.write(99, b"a")
        assert started == [j.part_fd]
        j.write(100, b"a" * 99)
        assert started == [j.part_fd]
        j.write(199, b"a" * 150)
        assert len(started) == 2
    finally:
        j.close()


def test_record_etag_keeps_the_first_and_persists_it(tmp_path: Path) -> None:
    j = fresh(tmp_path)
    j.record_etag('"one"')
    j.record_etag('"two"')
    assert j.etag == '"one"'
    j.mark_no_range()
    j.close()
    meta = json.loads(fj._paths(tmp_path, ENTRY)[1].read_text())
    assert meta["etag"] == '"one"' and meta["no_range"] is True
    again = fresh(tmp_path)
    try:
        assert again.etag == '"one"' and again.no_range is True
    finally:
        again.close()


def test_reset_drops_progress_and_lays_out_again(tmp_path: Path) -> None:
    j = fresh(tmp_path, threshold=100, connections=2)
    j.record_etag('"e"')
    j.write(0, b"z" * 20)
    j.advance(0, 20)
    assert j.reset(segments=[(0, SIZE)], no_range=True) == 20
    assert j.done == [0] and j.etag is None and j.no_range
    j.close()
    loaded = fj._load(tmp_path, ENTRY)
    assert not isinstance(loaded, str)
    assert loaded.segments == [(0, SIZE)] and loaded.done == [0]
    assert loaded.meta["no_range"] is True and loaded.meta["etag"] is None


def test_discard_partial_deletes_everything_and_counts_the_bytes(tmp_path: Path) -> None:
    part, meta_path, offsets = write_journal(tmp_path)
    meta_path.with_suffix(".json.tmp").write_text("{}")
    assert fj.discard_partial(tmp_path, ENTRY) == 150
    assert not any(p.exists() for p in (part, meta_path, offsets, meta_path.with_suffix(".json.tmp")))
    assert fj.discard_partial(tmp_path, ENTRY) == 0, "twice is fine"


def test_clear_journal_keeps_the_part_file(tmp_path: Path) -> None:
    part, meta_path, offsets = write_journal(tmp_path)
    fj.clear_journal(tmp_path, ENTRY)
    assert part.exists() and not meta_path.exists() and not offsets.exists()


def test_unlink_failure_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_journal(tmp_path)

    def refuse(self: Path, missing_ok: bool = False) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "unlink", refuse)
    with pytest.raises(LocalIOError, match="Permission denied"):
        fj.discard_partial(tmp_path, ENTRY)


def test_prune_partials_keeps_only_the_planned_files(tmp_path: Path) -> None:
    other = FileEntry("old.bin", 8192, sha256="cd" * 32)
    write_journal(tmp_path)
    o_part, _, _ = write_journal(tmp_path, entry=other, done=(0, 0), size=other.size, path=other.path,
                                 expected=other.expected)
    o_part.write_bytes(b"q" * 8192)
    blocks = o_part.stat().st_blocks * 512  # only the part file's allocated bytes count as freed
    assert blocks >= 8192
    assert fj.prune_partials(tmp_path, [ENTRY]) == blocks
    names = sorted(p.name for p in fj.partial_dir(tmp_path).iterdir())
    key = fj.part_key(ENTRY)
    assert names == [f"{key}.json", f"{key}.offsets", f"{key}.part"]
    assert fj.prune_partials(tmp_path, [ENTRY]) == 0
    assert fj.prune_partials(tmp_path / "nowhere", [ENTRY]) == 0


def test_local_error_maps_no_space_and_other_errors(tmp_path: Path) -> None:
    from provisioner.errors import NoSpaceError

    path = tmp_path / "f.part"
    err = fj.local_error(OSError(28, "No space left on device"), path=path, needed=123)
    assert isinstance(err, NoSpaceError) and err.needed_bytes == 123 and err.free_bytes > 0
    assert "partial data kept" in str(err) and "f.part" in str(err)
    quota = fj.local_error(OSError(122, "Disk quota exceeded"), path=path, needed=1)
    assert isinstance(quota, NoSpaceError)
    other = fj.local_error(OSError(30, "Read-only file system"), path=path, needed=1)
    assert type(other) is LocalIOError and str(other) == f"cannot write {path}: Read-only file system"


def test_layout_equal_shares_and_capped_pieces() -> None:
    assert fj.layout_segments(0, split_threshold=1, connections=4) == []
    assert fj.layout_segments(99, split_threshold=100, connections=4) == [(0, 99)]
    assert fj.layout_segments(100, split_threshold=100, connections=1) == [(0, 100)]
    assert fj.layout_segments(100, split_threshold=100, connections=4) == [(0, 25), (25, 50), (50, 75), (75, 100)]
    assert fj.layout_segments(10, split_threshold=1, connections=3) == [(0, 3), (3, 6), (6, 10)]
    big = 3 * fj.MAX_PIECE + 5
    segs = fj.layout_segments(big, split_threshold=1, connections=2)
    assert segs == [(0, fj.MAX_PIECE), (fj.MAX_PIECE, 2 * fj.MAX_PIECE), (2 * fj.MAX_PIECE, 3 * fj.MAX_PIECE),
                    (3 * fj.MAX_PIECE, big)]


# ---- I/O errors: every failing call maps to the product's error with the right path -------------------------
def nospace(*args: Any, **kwargs: Any) -> Any:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_open_on_a_new_state_dir_creates_the_folders(tmp_path: Path) -> None:
    j = fresh(tmp_path / "new" / "state")
    j.close()
    assert fj.partial_dir(tmp_path / "new" / "state").is_dir()


def test_open_cannot_create_the_partial_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Path, "mkdir", nospace)
    with pytest.raises(NoSpaceError) as caught:
        fresh(tmp_path)
    assert caught.value.path == str(fj.partial_dir(tmp_path) / "x") and caught.value.needed_bytes == SIZE


def test_open_cannot_open_the_part_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fj.os, "open", nospace)
    with pytest.raises(NoSpaceError) as caught:
        fresh(tmp_path)
    assert caught.value.path == str(fj.part_path(tmp_path, ENTRY)) and caught.value.needed_bytes == SIZE


def test_open_cannot_lay_out_the_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fj.os, "ftruncate", nospace)
    with pytest.raises(NoSpaceError) as caught:
        fresh(tmp_path)
    assert caught.value.path == str(fj.part_path(tmp_path, ENTRY))  # the sparse part file comes first
    monkeypatch.undo()
    j = fresh(tmp_path)
    monkeypatch.setattr(fj.os, "ftruncate", nospace)
    with pytest.raises(NoSpaceError) as caught:
        j.reset(segments=[(0, SIZE)], no_range=False)
    assert caught.value.path == str(j.meta_path) and caught.value.needed_bytes == 0
    j.close(sync=False)


def test_write_advance_and_meta_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    j = fresh(tmp_path)
    j.write(0, b"a" * 100)
    j.advance(0, 100)
    monkeypatch.setattr(fj.os, "pwrite", nospace)
    with pytest.raises(NoSpaceError) as caught:
        j.write(100, b"b")
    assert caught.value.path == str(j.part_path) and caught.value.needed_bytes == SIZE - 100
    with pytest.raises(NoSpaceError) as caught:
        j.advance(0, 1)
    assert caught.value.path == str(j.offsets_path) and caught.value.needed_bytes == 0
    assert j.done == [100], "the offset did not move"
    monkeypatch.undo()
    monkeypatch.setattr(fj.os, "open", nospace)
    for call in (lambda: j.record_etag('"e"'), j.mark_no_range):
        with pytest.raises(NoSpaceError) as caught:
            call()
        assert caught.value.path == str(j.meta_path) and caught.value.needed_bytes == 0
    monkeypatch.setattr(fj.os, "fsync", nospace)
    with pytest.raises(NoSpaceError) as caught:
        j.flush()
    assert caught.value.path == str(j.part_path) and caught.value.needed_bytes == 0
    j.close(sync=False)
    assert j.part_fd == -1


def test_close_syncs_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    j = fresh(tmp_path)
    fds = [j.part_fd, j._offsets_fd]
    monkeypatch.setattr(fj.os, "fsync", synced.append)
    j.close()
    assert synced == fds
    j.close()  # twice is harmless, nothing synced or closed again
    assert synced == fds


def test_prune_failures_are_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_journal(tmp_path)
    monkeypatch.setattr(Path, "iterdir", nospace)
    with pytest.raises(NoSpaceError) as caught:
        fj.prune_partials(tmp_path, [])
    assert caught.value.path == str(fj.partial_dir(tmp_path) / "x") and caught.value.needed_bytes == 0
    monkeypatch.undo()
    monkeypatch.setattr(Path, "unlink", nospace)
    with pytest.raises(NoSpaceError) as caught:
        fj.prune_partials(tmp_path, [])
    assert Path(caught.value.path).parent == fj.partial_dir(tmp_path) and caught.value.needed_bytes == 0
    with pytest.raises(NoSpaceError) as caught:
        fj.discard_partial(tmp_path, ENTRY)
    assert caught.value.path == str(fj._paths(tmp_path, ENTRY)[1]) and caught.value.needed_bytes == 0


def test_prune_counts_only_part_files_and_matches_the_whole_key(tmp_path: Path) -> None:
    directory = fj.partial_dir(tmp_path)
    directory.mkdir(parents=True)
    key = fj.part_key(ENTRY)
    (directory / f"{key}.json.tmp").write_text("x" * 5000)  # ours: kept (the key is before the first dot)
    (directory / "other.json").write_text("x" * 5000)  # not a part file: deleted, but frees "nothing"
    assert fj.prune_partials(tmp_path, [ENTRY]) == 0
    assert sorted(p.name for p in directory.iterdir()) == [f"{key}.json.tmp"]


def test_local_error_without_statvfs_reports_zero_free(tmp_path: Path) -> None:
    err = fj.local_error(OSError(errno.ENOSPC, "No space"), path=tmp_path / "gone" / "deeper" / "f", needed=1)
    assert isinstance(err, NoSpaceError) and err.free_bytes == 0 and err.path == str(tmp_path / "gone/deeper/f")


def test_files_are_created_0644_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        j = fresh(tmp_path)
        j.record_etag('"e"')
        j.close()
    finally:
        os.umask(old)
    for p in fj._paths(tmp_path, ENTRY):
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p.name


def test_resumed_journal_is_writable(tmp_path: Path) -> None:
    fresh(tmp_path).close()
    j = fresh(tmp_path)
    j.write(0, b"r" * 10)
    j.advance(0, 10)
    j.close()
    assert fj.part_path(tmp_path, ENTRY).read_bytes()[:10] == b"r" * 10


def test_part_symlink_planted_after_the_check_is_not_followed(tmp_path: Path) -> None:
    """O_NOFOLLOW: a link planted between `_load` and the open is refused, not written through."""
    write_journal(tmp_path)
    part = fj.part_path(tmp_path, ENTRY)
    victim = tmp_path / "victim"
    victim.write_bytes(b"v" * SIZE)
    j = fj.Journal(tmp_path, ENTRY, segments=SEGMENTS, done=[0, 0], etag=None, no_range=False)
    part.unlink()
    part.symlink_to(victim)
    with pytest.raises(LocalIOError) as caught:
        j._open_fds(create=False)
    assert caught.value.path == str(part)
    assert victim.read_bytes() == b"v" * SIZE and j.part_fd == -1


def test_resume_reads_etag_and_no_range_carefully(tmp_path: Path) -> None:
    write_journal(tmp_path, etag=123)
    meta_path = fj._paths(tmp_path, ENTRY)[1]
    meta = json.loads(meta_path.read_text())
    del meta["no_range"]
    meta_path.write_text(json.dumps(meta))
    j = fresh(tmp_path)
    try:
        assert j.done == [100, 50], "resumed"
        assert j.etag is None, "a non-string etag is never sent as If-Range"
        assert j.no_range is False
    finally:
        j.close(sync=False)


def test_layout_with_fewer_bytes_than_connections() -> None:
    assert fj.layout_segments(3, split_threshold=1, connections=4) == [(0, 1), (1, 2), (2, 3)]


def test_fresh_journal_of_an_empty_file_is_resumable(tmp_path: Path) -> None:
    empty = FileEntry("empty.txt", 0, blob_sha1="e6" * 20)
    fresh(tmp_path, empty).close()
    assert fj._paths(tmp_path, empty)[2].read_bytes() == b""
    assert not isinstance(fj._load(tmp_path, empty), str)


def test_flush_syncs_the_offsets_even_without_a_part_fd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    j = fresh(tmp_path)
    os.close(j.part_fd)
    j._part_fd = -1
    synced: list[int] = []
    monkeypatch.setattr(fj.os, "fsync", synced.append)
    j.flush()
    assert synced == [j._offsets_fd]
    j.close(sync=False)


def test_failed_open_closes_without_syncing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open
    synced: list[int] = []

    def offsets_fail(path: Any, flags: int, mode: int = 0o777) -> int:
        if str(path).endswith(".offsets"):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(path, flags, mode)

    monkeypatch.setattr(fj.os, "open", offsets_fail)
    monkeypatch.setattr(fj.os, "fsync", synced.append)
    with pytest.raises(LocalIOError, match="Read-only file system"):
        fresh(tmp_path)
    assert synced == []


def test_a_journal_never_opened_closes_no_descriptor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    touched: list[int] = []
    monkeypatch.setattr(fj.os, "close", touched.append)
    monkeypatch.setattr(fj.os, "fsync", touched.append)
    j = fj.Journal(tmp_path, ENTRY, segments=SEGMENTS, done=[0, 0], etag=None, no_range=False)
    j.close()
    assert touched == [] and j.part_fd == -1


def test_start_writeback_without_sync_file_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fj, "_sync_file_range", False)
    assert fj.start_writeback(1) is False


def test_metadata_tmp_symlink_planted_in_the_window_is_not_followed(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """O_EXCL: a link planted between unlinking the tmp file and creating it is refused, not written through."""
    j = fresh(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    tmp = j.meta_path.with_suffix(".json.tmp")
    real_unlink = Path.unlink

    def unlink_then_plant(self: Path, missing_ok: bool = False) -> None:
        real_unlink(self, missing_ok=missing_ok)
        if self == tmp:
            self.symlink_to(victim)

    monkeypatch.setattr(Path, "unlink", unlink_then_plant)
    with pytest.raises(LocalIOError, match="File exists"):
        j.record_etag('"e"')
    assert victim.read_text() == "precious"
    j.close(sync=False)
