"""The journal's safety checks, one test each (provisioner/fetch/journal.py).

A resumed download trusts bytes already on disk, so every check in `_load` that can refuse a journal
has its own test here asserting the specific reason `_load` gives: removing any one check makes
exactly its test fail (the journal would then be trusted, or refused by a later check with another
reason). `Journal.open` logs that reason when it discards the journal; the e2e side of this is
tests/test_faults_local.py::test_damaged_journal_is_discarded_not_trusted.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from provisioner.errors import LocalIOError
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
