"""Planner rules that need no hub: path safety, hash/size validation, file selection, disk preflight."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from provisioner.errors import BadRemoteError, NoSpaceError
from provisioner.manifest import FileEntry
from provisioner.plan import (
    check_disk_space,
    check_no_conflicts,
    entry_from_sibling,
    safe_repo_path,
    select_files,
)

SHA256 = "a" * 64
SHA1 = "b" * 40


@pytest.mark.parametrize("path", ["config.json", "1_Pooling/config.json", "a/b/c.bin", ".gitattributes"])
def test_safe_paths_pass(path: str) -> None:
    assert safe_repo_path(path) == path


@pytest.mark.parametrize("path", [
    "../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a/./b", "a/", "", "C:evil", "a\\..\\b",
    "a\0b", ".provisioner/ready.json", "x" * 2000, None, 5,
])
def test_unsafe_paths_are_rejected(path: object) -> None:
    with pytest.raises(BadRemoteError):
        safe_repo_path(path)


def test_entry_lfs_and_regular() -> None:
    lfs = entry_from_sibling(SimpleNamespace(rfilename="m.safetensors", size=10, blob_id=SHA1,
                                             lfs={"sha256": SHA256, "size": 10}))
    assert lfs.sha256 == SHA256 and lfs.is_lfs
    reg = entry_from_sibling(SimpleNamespace(rfilename="c.json", size=3, blob_id=SHA1, lfs=None))
    assert reg.blob_sha1 == SHA1 and not reg.is_lfs


@pytest.mark.parametrize("sibling", [
    SimpleNamespace(rfilename="a", size=-1, blob_id=SHA1, lfs=None),
    SimpleNamespace(rfilename="a", size=1 << 60, blob_id=SHA1, lfs=None),
    SimpleNamespace(rfilename="a", size="12", blob_id=SHA1, lfs=None),
    SimpleNamespace(rfilename="a", size=True, blob_id=SHA1, lfs=None),
    SimpleNamespace(rfilename="a", size=None, blob_id=SHA1, lfs=None),
    SimpleNamespace(rfilename="a", size=1, blob_id="nothex", lfs=None),
    SimpleNamespace(rfilename="a", size=1, blob_id=SHA1, lfs={"sha256": "short", "size": 1}),
])
def test_bad_metadata_is_rejected(sibling: object) -> None:
    with pytest.raises(BadRemoteError):
        entry_from_sibling(sibling)


def _e(path: str) -> FileEntry:
    return FileEntry(path=path, size=1, blob_sha1=SHA1)


def test_select_files_patterns_and_safetensors_preference() -> None:
    files = [_e(p) for p in ("config.json", "model.safetensors", "pytorch_model.bin", "onnx/model.onnx",
                             "sub/pytorch_model.bin")]
    chosen = {e.path for e in select_files(files, include=(), exclude=("onnx/*",))}
    # the .bin beside model.safetensors is skipped; the one in a folder without safetensors is kept
    assert chosen == {"config.json", "model.safetensors", "sub/pytorch_model.bin"}
    # an explicit include is obeyed literally
    assert {e.path for e in select_files(files, include=("*.bin",), exclude=())} == {
        "pytorch_model.bin", "sub/pytorch_model.bin"}


def test_disk_preflight(tmp_path: Path) -> None:
    check_disk_space(tmp_path, needed=100, headroom=10, free_space=lambda p: 110)
    with pytest.raises(NoSpaceError) as info:
        check_disk_space(tmp_path, needed=100, headroom=10, free_space=lambda p: 109)
    assert info.value.needed_bytes == 110 and info.value.free_bytes == 109
    assert "not enough space" in str(info.value)


# ---- each path-safety check with its own message (removing one check changes the answer of its case) -------
@pytest.mark.parametrize(("path", "message"), [
    ("", "the hub listed a file with an empty or invalid path"),
    (None, "the hub listed a file with an empty or invalid path"),
    ("x" * 1025, "the hub listed a file with an empty or invalid path"),
    ("a\0b", "the hub listed a file path with control or backslash characters"),
    ("a\\b", "the hub listed a file path with control or backslash characters"),
    ("a\x1fb", "the hub listed a file path with control or backslash characters"),
    ("a\nb", "the hub listed a file path with control or backslash characters"),
    ("/etc/passwd", "the hub listed an absolute file path: '/etc/passwd'"),
    ("c:evil", "the hub listed an absolute file path: 'c:evil'"),
    ("Z:evil", "the hub listed an absolute file path: 'Z:evil'"),
    ("a//b", "the hub listed a file path that escapes or is not normalized: 'a//b'"),
    ("a/./b", "the hub listed a file path that escapes or is not normalized: 'a/./b'"),
    ("../x", "the hub listed a file path that escapes or is not normalized: '../x'"),
    (".provisioner/ready.json", "the hub listed a file inside the reserved .provisioner/ folder: "
                                "'.provisioner/ready.json'"),
])
def test_each_unsafe_path_is_refused_by_its_check(path: object, message: str) -> None:
    with pytest.raises(BadRemoteError) as caught:
        safe_repo_path(path)
    assert str(caught.value) == message
    if "empty or invalid" in message or "control" in message:
        assert caught.value.detail == repr(path)[:120]


@pytest.mark.parametrize("path", ["x" * 1024, "my model/config file.json", "a/.provisioner", ".provisioner2/x",
                                  "1:a", "ab:c", "..a/b..", "a\x7fb"])
def test_paths_at_the_edges_are_accepted(path: str) -> None:
    assert safe_repo_path(path) == path


def test_detail_is_cut_at_120_characters() -> None:
    with pytest.raises(BadRemoteError) as caught:
        safe_repo_path("\0" * 500)
    assert caught.value.detail == repr("\0" * 500)[:120] and len(caught.value.detail) == 120


def test_check_no_conflicts() -> None:
    def e(*paths: str) -> list[FileEntry]:
        return [FileEntry(p, 1, blob_sha1=SHA1) for p in paths]

    check_no_conflicts(e("a/b", "a/c", "ab", "a.txt", "b/c/d"))
    check_no_conflicts([])
    with pytest.raises(BadRemoteError) as caught:
        check_no_conflicts(e("x", "a/b", "x"))
    assert str(caught.value) == "the hub listed 'x' twice"
    with pytest.raises(BadRemoteError) as caught:
        check_no_conflicts(e("b/c/d", "b/c", "z", "z/q"))
    assert str(caught.value) == "the hub listed 'b/c' as both a file and a folder"
    with pytest.raises(BadRemoteError) as caught:
        check_no_conflicts(e("b/c/d", "b"))
    assert str(caught.value) == "the hub listed 'b' as both a file and a folder"
