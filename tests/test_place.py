"""Placing verified files (provisioner/place.py): inside the target and nowhere else, whatever symlinks
are planted. Unit tests on a real filesystem: fast, no network (the mutation --quick subset runs them).
tests/test_security.py covers the same rules end to end."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from provisioner import place
from provisioner.errors import LocalIOError
from provisioner.manifest import FileEntry
from provisioner.state import fsutil, marker

ENTRY = FileEntry("sub/dir/model.safetensors", 5, sha256="a" * 64)


@pytest.fixture
def target(tmp_path: Path) -> Path:
    t = tmp_path / "target"
    t.mkdir()
    return t


def part_file(tmp_path: Path, data: bytes = b"hello") -> Path:
    part = tmp_path / "target" / ".provisioner" / "partial" / "x.part"
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(data)
    os.chmod(part, 0o600)
    return part


# ---- inside ------------------------------------------------------------------------------------------------
def test_inside_accepts_the_target_itself_and_its_folders(target: Path) -> None:
    (target / "a").mkdir()
    assert place.inside(target, target / "f")
    assert place.inside(target, target / "a" / "f")


def test_inside_refuses_a_sibling_with_the_same_prefix(tmp_path: Path, target: Path) -> None:
    """`/x/target-evil` starts with `/x/target` as a string but is not inside it."""
    evil = tmp_path / "target-evil"
    evil.mkdir()
    assert not place.inside(target, evil / "f")
    assert not place.inside(target, tmp_path / "f")


def test_inside_refuses_a_symlinked_folder_leading_out(tmp_path: Path, target: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (target / "link").symlink_to(outside)
    assert not place.inside(target, target / "link" / "f")
    (target / "inner").mkdir()
    (target / "link2").symlink_to(target / "inner")
    assert place.inside(target, target / "link2" / "f"), "a link that stays inside is fine"


def test_inside_follows_a_symlinked_target(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "alias").symlink_to(real)
    assert place.inside(tmp_path / "alias", tmp_path / "alias" / "f")


# ---- check_state_dir / prepare_target ------------------------------------------------------------------------
def test_state_dir_absent_or_a_folder_is_fine(target: Path) -> None:
    place.check_state_dir(target)
    marker.state_dir(target).mkdir()
    place.check_state_dir(target)


@pytest.mark.parametrize("kind", ["symlink", "file"])
def test_state_dir_that_is_not_a_folder_is_refused(tmp_path: Path, target: Path, kind: str) -> None:
    state = marker.state_dir(target)
    if kind == "symlink":
        (tmp_path / "elsewhere").mkdir()
        state.symlink_to(tmp_path / "elsewhere")  # a link to a real folder: still refused
    else:
        state.write_text("x")
    with pytest.raises(LocalIOError, match="is not a folder") as caught:
        place.check_state_dir(target)
    assert caught.value.path == str(state)


def test_uninspectable_state_dir_is_reported(target: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(path: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(place.os, "lstat", denied)
    with pytest.raises(LocalIOError) as caught:
        place.check_state_dir(target)
    assert str(caught.value) == f"cannot inspect {marker.state_dir(target)}: Permission denied"
    assert caught.value.path == str(marker.state_dir(target))


def test_prepare_target_creates_the_partial_folder(target: Path) -> None:
    place.prepare_target(target)
    assert (marker.state_dir(target) / "partial").is_dir()


def test_prepare_target_fails_when_the_state_folder_cannot_be_created(target: Path) -> None:
    marker.state_dir(target).write_text("a file in the way")
    with pytest.raises(LocalIOError, match="cannot create the state folder") as caught:
        place.prepare_target(target)
    assert caught.value.path == str(marker.state_dir(target))


def test_prepare_target_checks_write_access(target: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The access check (emulated: root may write anywhere, so a chmod would not show it)."""
    monkeypatch.setattr(place.os, "access", lambda path, mode: not (Path(path) == target and mode == os.W_OK))
    with pytest.raises(LocalIOError, match=f"target {target} is not writable") as caught:
        place.prepare_target(target)
    assert caught.value.path == str(target)


# ---- complete_on_disk ----------------------------------------------------------------------------------------
def test_complete_on_disk_needs_a_regular_file_of_the_planned_size(tmp_path: Path, target: Path) -> None:
    final = target / ENTRY.path
    assert not place.complete_on_disk(target, ENTRY)  # absent
    final.parent.mkdir(parents=True)
    final.write_bytes(b"1234")
    assert not place.complete_on_disk(target, ENTRY)  # too short
    final.write_bytes(b"123456")
    assert not place.complete_on_disk(target, ENTRY)  # too long
    final.write_bytes(b"12345")
    assert place.complete_on_disk(target, ENTRY)
    final.unlink()
    (tmp_path / "five").write_bytes(b"12345")
    final.symlink_to(tmp_path / "five")
    assert not place.complete_on_disk(target, ENTRY), "a symlink of the right size is not our file"
    final.unlink()
    final.mkdir()
    assert not place.complete_on_disk(target, FileEntry(ENTRY.path, final.stat().st_size, sha256="a" * 64))


def test_complete_on_disk_refuses_a_file_reached_through_a_link_out(tmp_path: Path, target: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "dir" / "model.safetensors").write_bytes(b"12345")
    (target / "sub").symlink_to(outside)
    assert not place.complete_on_disk(target, ENTRY)


def test_complete_on_disk_reports_an_uninspectable_path(target: Path) -> None:
    (target / "sub").write_text("a file where a folder should be")
    with pytest.raises(LocalIOError, match="cannot inspect") as caught:
        place.complete_on_disk(target, ENTRY)
    assert caught.value.path == str(target / ENTRY.path)


# ---- safe_final_path / place ---------------------------------------------------------------------------------
def test_place_moves_the_part_into_place_readable(tmp_path: Path, target: Path) -> None:
    part = part_file(tmp_path)
    place.place(target, ENTRY, part)
    final = target / ENTRY.path
    assert final.read_bytes() == b"hello" and not part.exists()
    assert stat.S_IMODE(final.stat().st_mode) == 0o644
    assert stat.S_IMODE((target / "sub").stat().st_mode) == 0o755


def test_place_refuses_a_folder_symlinked_out_of_the_target(tmp_path: Path, target: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (target / "sub").symlink_to(outside)
    part = part_file(tmp_path)
    with pytest.raises(LocalIOError, match="leads outside the target") as caught:
        place.place(target, ENTRY, part)
    assert caught.value.path == str(target / "sub" / "dir")
    assert list(outside.iterdir()) == [], "no folder or file was created outside"
    assert part.exists()


def test_place_replaces_a_planted_file_symlink_not_its_destination(tmp_path: Path, target: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    final = target / ENTRY.path
    final.parent.mkdir(parents=True)
    final.symlink_to(victim)
    place.place(target, ENTRY, part_file(tmp_path))
    assert victim.read_bytes() == b"precious"
    assert not final.is_symlink() and final.read_bytes() == b"hello"


def test_place_refuses_a_directory_in_the_way(tmp_path: Path, target: Path) -> None:
    (target / ENTRY.path).mkdir(parents=True)
    with pytest.raises(LocalIOError, match="a directory is in the way") as caught:
        place.place(target, ENTRY, part_file(tmp_path))
    assert caught.value.path == str(target / ENTRY.path)


def test_safe_final_path_reports_a_file_in_the_way(tmp_path: Path, target: Path) -> None:
    (target / "sub").write_text("x")
    with pytest.raises(LocalIOError, match="cannot create") as caught:
        place.safe_final_path(target, ENTRY)
    assert caught.value.path == str(target / "sub" / "dir")


def test_safe_final_path_rechecks_after_creating_folders(tmp_path: Path, target: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A symlink planted while the folders are created (between the two checks) is still refused."""
    outside = tmp_path / "outside"
    outside.mkdir()
    real_make_dir = fsutil.make_dir

    def racing_make_dir(path: Path) -> None:
        real_make_dir(path)
        os.rmdir(path)
        path.symlink_to(outside)

    monkeypatch.setattr(place.fsutil, "make_dir", racing_make_dir)
    with pytest.raises(LocalIOError, match="leads outside the target") as caught:
        place.safe_final_path(target, ENTRY)
    assert caught.value.path == str(target / "sub" / "dir")


def test_place_reports_a_failed_move(tmp_path: Path, target: Path) -> None:
    with pytest.raises(LocalIOError, match="cannot move sub/dir/model.safetensors into place") as caught:
        place.place(target, ENTRY, tmp_path / "no-such.part")
    assert caught.value.path == str(target / ENTRY.path)
    assert not (target / ENTRY.path).exists()


def test_place_fsyncs_the_folder_unless_told_the_caller_will(tmp_path: Path, target: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[Path] = []
    monkeypatch.setattr(place.fsutil, "fsync_dir", lambda path: synced.append(Path(path)))
    final = place.place(target, FileEntry("a/x.bin", 4), part_file(tmp_path, b"abcd"))
    assert final == target / "a" / "x.bin" and synced == [target / "a"]  # durable rename by default
    synced.clear()
    assert place.place(target, FileEntry("a/y.bin", 4), part_file(tmp_path, b"efgh"), sync_dir=False) == target / "a" / "y.bin"
    assert synced == []  # left to sync_dirs


def test_sync_dirs_fsyncs_each_folder_once(target: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[Path] = []
    monkeypatch.setattr(place.fsutil, "fsync_dir", lambda path: synced.append(Path(path)))
    finals = [target / "a" / "1", target / "a" / "2", target / "b" / "c" / "3", target / "4"]
    assert place.sync_dirs(finals) == 3
    assert synced == sorted([target / "a", target / "b" / "c", target])
    assert place.sync_dirs([]) == 0


def test_sync_dirs_reports_a_folder_that_cannot_be_synced(target: Path) -> None:
    with pytest.raises(LocalIOError) as info:
        place.sync_dirs([target / "missing" / "file"])
    assert info.value.path == str(target / "missing") and "cannot fsync" in str(info.value)
