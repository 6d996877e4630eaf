"""The journal's safety checks, one test each (provisioner/fetch/journal.py).

A resumed download trusts bytes already on disk, so every check in `_load` that can refuse a journal
has its own test here asserting the specific reason `_load` gives: removing any one check makes
exactly its test fail (the journal would then be trusted, or refused by a later check with another
reason). `Journal.open` logs that reason when it discards the journal; the e2e side of this is
tests/test_faults_local.py::test_damaged_journal_is_discarded_not_trusted.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from provisioner.errors import LocalIOError, NoSpaceError
from provisioner.fetch import journal as fj
from provisioner.manifest import FileEntry

SIZE = 1000
ENTRY = FileEntry("dir/model.safetensors", SIZE, sha256="ab" * 32)
SEGMENTS = [(0, 400), (400, 1000)]


def u64s(*values: int) -> bytes:
    return b"".join(struct.pack("<Q", v) for v in values)


def write_journal(state: Path, *, entry: FileEntry = ENTRY, done: tuple[int, ...] = (100, 50),
                  **meta_over: Any) -> tuple[Path, Path, Path]:
    """A consistent journal on disk, as `Journal` writes it; `meta_over` replaces metadata fields."""
    part, meta_path, offsets = fj._paths(state, entry)
    part.parent.mkdir(parents=True, exist_ok=True)
    with open(part, "wb") as f:
        f.truncate(entry.size)
    meta: dict[str, Any] = {"version": fj.JOURNAL_VERSION, "path": entry.path, "expected": entry.expected,
                            "size": entry.size, "etag": '"e1"', "no_range": False,
                            "segments": [list(s) for s in SEGMENTS]}
    meta.update(meta_over)
    meta_path.write_text(json.dumps(meta))
    offsets.write_bytes(u64s(*done))
    return part, meta_path, offsets


def reason(state: Path, entry: FileEntry = ENTRY) -> str:
    loaded = fj._load(state, entry)
    assert isinstance(loaded, str), f"the journal was trusted: {loaded}"
    return loaded


# ---- the baseline: a consistent journal is trusted (so each refusal below is caused by its damage) ----
def test_consistent_journal_is_trusted(tmp_path: Path) -> None:
    write_journal(tmp_path)
    loaded = fj._load(tmp_path, ENTRY)
    assert not isinstance(loaded, str), loaded
    assert loaded.segments == SEGMENTS
    assert loaded.done == [100, 50]
    assert fj.partial_bytes_on_disk(tmp_path, ENTRY) == 150


def test_offset_exactly_at_segment_end_is_trusted(tmp_path: Path) -> None:
    """The bounds check is `>`, not `>=`: a finished segment is valid."""
    write_journal(tmp_path, done=(400, 600))
    assert fj.partial_bytes_on_disk(tmp_path, ENTRY) == SIZE


def test_no_journal_is_absent(tmp_path: Path) -> None:
    assert fj._load(tmp_path, ENTRY) == fj.ABSENT
    assert fj.partial_bytes_on_disk(tmp_path, ENTRY) == 0


# ---- stale: written for other content -------------------------------------------------------------------
@pytest.mark.parametrize(("field", "value", "expect"), [
    ("version", fj.JOURNAL_VERSION + 1, f"journal version {fj.JOURNAL_VERSION + 1}, not {fj.JOURNAL_VERSION}"),
    ("path", "other.safetensors", "written for another path"),
    ("expected", "sha256:" + "cd" * 32, "written for other content (expected hash differs)"),
    ("size", SIZE + 1, f"written for size {SIZE + 1}, not {SIZE}"),
])
def test_stale_journal_is_refused(tmp_path: Path, field: str, value: Any, expect: str) -> None:
    write_journal(tmp_path, **{field: value})
    assert reason(tmp_path) == expect
    assert fj.partial_bytes_on_disk(tmp_path, ENTRY) == 0


def test_metadata_not_an_object_is_refused(tmp_path: Path) -> None:
    _, meta_path, _ = write_journal(tmp_path)
    meta_path.write_text("[1, 2]")
    assert reason(tmp_path) == "metadata is not an object"


def test_garbled_metadata_is_refused(tmp_path: Path) -> None:
    _, meta_path, _ = write_journal(tmp_path)
    meta_path.write_text('{"version": 1, "pa')  # a torn write
    assert reason(tmp_path) == "metadata file unreadable (JSONDecodeError)"


def test_missing_metadata_is_refused(tmp_path: Path) -> None:
    _, meta_path, _ = write_journal(tmp_path)
    meta_path.unlink()  # the crash window of `_write_layout`: offsets rewritten, metadata not yet
    assert reason(tmp_path) == "metadata file missing"


# ---- bad segments ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("segments", "expect"), [
    ({"0": 1000}, "segments are not a list"),
    ([[0, 400], [500, 1000]], "segment 1 starts at 500, not at 400 (gap or overlap)"),
    ([[0, 400], [300, 1000]], "segment 1 starts at 300, not at 400 (gap or overlap)"),
    ([[100, 400], [400, 1000]], "segment 0 starts at 100, not at 0 (gap or overlap)"),
    ([[0, 400], [400, 900]], f"segments cover 900 bytes, not the file size {SIZE}"),
    ([[0, 400], [400, 1000], [1000, 1100]], f"segments cover 1100 bytes, not the file size {SIZE}"),
    ([[0, 400.0], [400, 1000]], "segment 0 is not a pair of integers"),
    ([[0, "400"], [400, 1000]], "segment 0 is not a pair of integers"),
    ([[0, 400], [400, 1000, 5]], "segment 1 is not a pair of integers"),
    ([[0, 400], 400], "segment 1 is not a pair of integers"),
    ([[0, 400], [400, 400], [400, 1000]], "segment 1 is empty or reversed"),
    ([[0, 400], [400, 300], [300, 1000]], "segment 1 is empty or reversed"),
])
def test_bad_segments_are_refused(tmp_path: Path, segments: Any, expect: str) -> None:
    n = len(segments) if isinstance(segments, list) else 2
    write_journal(tmp_path, segments=segments, done=(0,) * n)
    assert reason(tmp_path) == expect


def test_empty_file_has_no_segments_and_is_trusted(tmp_path: Path) -> None:
    """The other side of "segments cover the size": zero segments are right for a zero-byte file."""
    empty = FileEntry("empty.txt", 0, blob_sha1="e6" * 20)
    part, meta_path, offsets = fj._paths(tmp_path, empty)
    part.parent.mkdir(parents=True)
    part.write_bytes(b"")
    offsets.write_bytes(b"")
    meta_path.write_text(json.dumps({"version": 1, "path": empty.path, "expected": empty.expected, "size": 0,
                                     "segments": []}))
    assert not isinstance(fj._load(tmp_path, empty), str)


# ---- offsets and part file -------------------------------------------------------------------------------
@pytest.mark.parametrize("done", [(100,), (100, 50, 0), ()])
def test_offsets_file_of_the_wrong_length_is_refused(tmp_path: Path, done: tuple[int, ...]) -> None:
    write_journal(tmp_path, done=done)
    assert reason(tmp_path) == f"offsets file has {8 * len(done)} bytes, not 16 (2 segments)"


def test_offsets_file_with_a_torn_entry_is_refused(tmp_path: Path) -> None:
    _, _, offsets = write_journal(tmp_path)
    offsets.write_bytes(u64s(100) + b"\1\2\3")
    assert reason(tmp_path) == "offsets file has 11 bytes, not 16 (2 segments)"


@pytest.mark.parametrize(("done", "expect"), [
    ((401, 0), "offset 401 of segment 0 beyond the segment end (400 bytes)"),
    ((0, 601), "offset 601 of segment 1 beyond the segment end (600 bytes)"),
    ((2**64 - 1, 0), f"offset {2**64 - 1} of segment 0 beyond the segment end (400 bytes)"),
])
def test_offset_beyond_its_segment_is_refused(tmp_path: Path, done: tuple[int, int], expect: str) -> None:
    """The offset is within the file (< size) in the first case: only the per-segment bound catches it."""
    write_journal(tmp_path, done=done)
    assert reason(tmp_path) == expect
    assert fj.partial_bytes_on_disk(tmp_path, ENTRY) == 0


@pytest.mark.parametrize("size", [SIZE - 1, SIZE + 1, 0])
def test_part_file_of_the_wrong_size_is_refused(tmp_path: Path, size: int) -> None:
    part, _, _ = write_journal(tmp_path)
    with open(part, "r+b") as f:
        f.truncate(size)
    assert reason(tmp_path) == f"part file has {size} bytes, not {SIZE}"


def test_missing_part_file_is_refused(tmp_path: Path) -> None:
    part, _, _ = write_journal(tmp_path)
    part.unlink()
    assert reason(tmp_path) == "part file unreadable (No such file or directory)"


def test_missing_offsets_file_is_refused(tmp_path: Path) -> None:
    _, _, offsets = write_journal(tmp_path)
    offsets.unlink()
    assert reason(tmp_path) == "offsets file unreadable (No such file or directory)"


# ---- planted links: never followed -----------------------------------------------------------------------
def test_part_file_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    """The link points at a file that would otherwise pass every check (right size)."""
    part, _, _ = write_journal(tmp_path)
    elsewhere = tmp_path / "victim"
    os.replace(part, elsewhere)
    part.symlink_to(elsewhere)
    assert reason(tmp_path) == "part file is not a regular file"


def test_part_path_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    part, _, _ = write_journal(tmp_path)
    part.unlink()
    part.mkdir()
    assert reason(tmp_path) == "part file is not a regular file"


def test_offsets_file_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    """The link target holds valid offsets: only the symlink check refuses it."""
    _, _, offsets = write_journal(tmp_path)
    elsewhere = tmp_path / "victim.offsets"
    os.replace(offsets, elsewhere)
    offsets.symlink_to(elsewhere)
    assert reason(tmp_path) == "offsets file is a symlink"


def test_partial_dir_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    fj.partial_dir(state).symlink_to(elsewhere)
    with pytest.raises(LocalIOError, match="refusing to write partial data through the symlink") as caught:
        fj.Journal.open(state, ENTRY, split_threshold=1 << 20, connections=1)
    assert caught.value.path == str(fj.partial_dir(state))
    assert list(elsewhere.iterdir()) == [], "nothing may be written through the link"


# ---- Journal.open: resume, or discard with one line saying why ---------------------------------------------
def open_journal(state: Path) -> fj.Journal:
    return fj.Journal.open(state, ENTRY, split_threshold=1 << 20, connections=1)


def test_open_resumes_a_consistent_journal_silently(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    part, _, _ = write_journal(tmp_path)
    with caplog.at_level(logging.DEBUG, logger="provisioner.fetch"):
        j = open_journal(tmp_path)
    try:
        assert j.segments == SEGMENTS and j.done == [100, 50] and j.etag == '"e1"'
    finally:
        j.close(sync=False)
    assert caplog.records == []


def test_open_without_a_journal_starts_fresh_silently(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="provisioner.fetch"):
        j = open_journal(tmp_path)
    try:
        assert j.done == [0] and j.segments == [(0, SIZE)]
    finally:
        j.close(sync=False)
    assert caplog.records == []


@pytest.mark.parametrize(("damage", "expect"), [
    (lambda p, m, o: o.write_bytes(u64s(401, 0)), "offset 401 of segment 0 beyond the segment end (400 bytes)"),
    (lambda p, m, o: m.write_text("{garbage"), "metadata file unreadable (JSONDecodeError)"),
    (lambda p, m, o: o.write_bytes(u64s(1, 2, 3)), "offsets file has 24 bytes, not 16 (2 segments)"),
], ids=["offset-beyond-segment", "garbled-metadata", "offsets-too-long"])
def test_open_discards_a_damaged_journal_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                           damage: Callable[[Path, Path, Path], Any],
                                                           expect: str) -> None:
    part, meta_path, offsets = write_journal(tmp_path)
    damage(part, meta_path, offsets)
    with caplog.at_level(logging.DEBUG, logger="provisioner.fetch"):
        j = open_journal(tmp_path)
    try:
        assert j.done == [0] and j.segments == [(0, SIZE)] and j.etag is None, "laid out afresh"
    finally:
        j.close(sync=False)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, f"discarding the journal of {ENTRY.path}: {expect}")]
    assert not isinstance(fj._load(tmp_path, ENTRY), str), "the fresh journal is consistent"


# ---- the part key ------------------------------------------------------------------------------------------
def test_part_key_changes_with_the_expected_hash() -> None:
    """A new plan with new content for the same path never splices onto the old bytes."""
    base = fj.part_key(ENTRY)
    assert fj.part_key(FileEntry(ENTRY.path, SIZE, sha256="cd" * 32)) != base
    assert fj.part_key(FileEntry(ENTRY.path, SIZE, blob_sha1="ab" * 20)) != base  # LFS -> regular
    blob = FileEntry(ENTRY.path, SIZE, blob_sha1="ab" * 20)
    assert fj.part_key(FileEntry(ENTRY.path, SIZE, blob_sha1="ac" * 20)) != fj.part_key(blob)


def test_part_key_changes_with_the_path() -> None:
    assert fj.part_key(FileEntry("other.safetensors", SIZE, sha256="ab" * 32)) != fj.part_key(ENTRY)


def test_part_key_depends_on_nothing_else() -> None:
    """Same path and content, other size: same key (the size is checked by `_load`, not by the name)."""
    key = fj.part_key(ENTRY)
    assert fj.part_key(FileEntry(ENTRY.path, SIZE + 5, sha256="ab" * 32)) == key
    assert fj.part_key(FileEntry(ENTRY.path, SIZE, sha256="ab" * 32, blob_sha1="ff" * 20)) == key
    assert key == fj.part_key(ENTRY)  # deterministic
    assert len(key) == 32 and all(c in "0123456789abcdef" for c in key)


def test_part_key_is_the_documented_digest() -> None:
    import hashlib

    digest = hashlib.sha256(f"{ENTRY.path}\0{ENTRY.expected}".encode()).hexdigest()[:32]
    assert fj.part_key(ENTRY) == digest
    assert fj.part_path(tmp := Path("/s"), ENTRY) == tmp / "partial" / f"{digest}.part"


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
