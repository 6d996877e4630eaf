"""Checksums (provisioner/verify/checksums.py): the digests are git's and LFS's own, and `matches` never
says yes without a digest to compare. Unit tests: fast, no network (the mutation --quick subset runs them)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from provisioner.manifest import FileEntry
from provisioner.verify import checksums
from provisioner.verify.checksums import Digests, Hasher, hash_file, matches, mismatch_detail, wanted_digests

DATA = b"hello, model\n" * 1000


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def test_hasher_computes_sha256_and_git_blob_sha1_over_chunks() -> None:
    h = Hasher(len(DATA))
    for i in range(0, len(DATA), 777):
        h.update(memoryview(DATA)[i:i + 777])
    d = h.digests()
    assert d == Digests(size=len(DATA), sha256=hashlib.sha256(DATA).hexdigest(), blob_sha1=git_blob_sha1(DATA))


def test_hasher_computes_only_what_is_asked() -> None:
    only_sha = Hasher(len(DATA), blob_sha1=False)
    only_sha.update(DATA)
    assert only_sha.digests() == Digests(len(DATA), hashlib.sha256(DATA).hexdigest(), "")
    only_blob = Hasher(len(DATA), sha256=False)
    only_blob.update(DATA)
    assert only_blob.digests() == Digests(len(DATA), "", git_blob_sha1(DATA))


def test_blob_header_uses_the_declared_size() -> None:
    """git hashes `blob <size>\\0`: a stream shorter than declared must not hash like a complete blob."""
    h = Hasher(len(DATA) + 1)
    h.update(DATA)
    d = h.digests()
    assert d.size == len(DATA)
    assert d.blob_sha1 == hashlib.sha1(b"blob %d\0" % (len(DATA) + 1) + DATA).hexdigest() != git_blob_sha1(DATA)


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
def test_hash_file_reads_all_of_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(checksums, "READ_CHUNK", chunk)
    path = tmp_path / "f"
    path.write_bytes(DATA)
    assert hash_file(path) == Digests(len(DATA), hashlib.sha256(DATA).hexdigest(), git_blob_sha1(DATA))


@pytest.mark.parametrize("chunk", [7, 1 << 20])
def test_hash_file_limit_and_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(checksums, "READ_CHUNK", chunk)
    path = tmp_path / "f"
    path.write_bytes(DATA)
    d = hash_file(path, limit=100, size=len(DATA) + 5)  # the git header says the declared size
    assert d.size == 100
    assert d.sha256 == hashlib.sha256(DATA[:100]).hexdigest()
    assert d.blob_sha1 == hashlib.sha1(b"blob %d\0" % (len(DATA) + 5) + DATA[:100]).hexdigest()
    for limit in (1, 8, 15):  # 1 byte left after whole chunks: still read
        assert hash_file(path, limit=limit).sha256 == hashlib.sha256(DATA[:limit]).hexdigest()
    assert hash_file(path, limit=0).size == 0
    assert hash_file(path, sha256=False).sha256 == ""
    assert hash_file(path, blob_sha1=False).blob_sha1 == ""


def test_hash_of_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert hash_file(path) == Digests(0, hashlib.sha256(b"").hexdigest(), git_blob_sha1(b""))


LFS = FileEntry("w.safetensors", len(DATA), sha256=hashlib.sha256(DATA).hexdigest())
REGULAR = FileEntry("config.json", len(DATA), blob_sha1=git_blob_sha1(DATA))


def digests_of(data: bytes) -> Digests:
    h = Hasher(len(data))
    h.update(data)
    return h.digests()


def test_matches_the_right_digest_for_each_kind() -> None:
    good = digests_of(DATA)
    assert matches(LFS, good) and matches(REGULAR, good)
    bad = digests_of(DATA[:-1] + b"?")
    assert not matches(LFS, bad) and not matches(REGULAR, bad)


def test_matches_checks_the_size_first() -> None:
    good = digests_of(DATA)
    assert not matches(FileEntry(LFS.path, LFS.size + 1, sha256=LFS.sha256), good)
    assert not matches(FileEntry(REGULAR.path, REGULAR.size - 1, blob_sha1=REGULAR.blob_sha1), good)


def test_lfs_entry_is_judged_by_sha256_only() -> None:
    """An LFS file also carrying a (pointer) blob id: only the sha256 of the content counts."""
    entry = FileEntry(LFS.path, LFS.size, sha256=LFS.sha256, blob_sha1="0" * 40)
    assert matches(entry, digests_of(DATA))
    wrong_sha = Digests(len(DATA), "f" * 64, git_blob_sha1(DATA))
    assert not matches(FileEntry(LFS.path, LFS.size, sha256=LFS.sha256, blob_sha1=git_blob_sha1(DATA)), wrong_sha)


def test_a_digest_not_computed_never_matches() -> None:
    assert not matches(FileEntry("x", 0, sha256="a" * 64), Digests(0, "", ""))
    assert not matches(FileEntry("x", 0, blob_sha1="b" * 40), Digests(0, "", ""))


def test_without_an_expected_digest_only_the_size_is_checked_and_said() -> None:
    """No source gave a digest (issue 11): the file is checked by size and recorded as `size-only`,
    never passed off as hashed. An empty string is no digest."""
    for entry in (FileEntry("x", 3), FileEntry("x", 3, sha256=""), FileEntry("x", 3, blob_sha1="")):
        assert entry.evidence == "size-only"
        assert matches(entry, Digests(3, "", ""))
        assert not matches(entry, Digests(4, hashlib.sha256(b"abcd").hexdigest(), git_blob_sha1(b"abcd")))


def test_wanted_digests_is_the_one_matches_compares() -> None:
    assert wanted_digests(LFS) == (True, False)
    assert wanted_digests(REGULAR) == (False, True)
    assert wanted_digests(FileEntry("x", 1, sha256="a" * 64, blob_sha1="b" * 40)) == (True, False)


def test_mismatch_detail_names_what_differs() -> None:
    good = digests_of(DATA)
    assert mismatch_detail(LFS, Digests(5, good.sha256, good.blob_sha1)) == (f"size {LFS.size}", "size 5")
    assert mismatch_detail(LFS, Digests(LFS.size, "ab", "cd")) == (f"sha256 {LFS.sha256}", "sha256 ab")
    assert mismatch_detail(REGULAR, Digests(REGULAR.size, "ab", "cd")) == (f"git-sha1 {REGULAR.blob_sha1}",
                                                                           "git-sha1 cd")
