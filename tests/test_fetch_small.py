"""The small-file path (provisioner/fetch/small.py): files up to SMALL_FILE_BYTES are received into memory,
written once (one write, one fsync, one rename) with no on-disk journal, fetched with more requests in
flight, and placed with one directory fsync per folder; a kill mid-run still ends ready on the rerun."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import run_args, run_cli, start_cli
from hub_emulator import HubEmulator
from test_fetch import Run, assert_correct, plan_for

from provisioner import place as place_mod
from provisioner.api import provision
from provisioner.config import Config
from provisioner.errors import NoSpaceError
from provisioner.fetch import part_key, partial_bytes_on_disk
from provisioner.fetch import small as small_mod
from provisioner.fetch.small import SMALL_FILE_BYTES, SmallJournal, small_in_flight
from provisioner.manifest import FileEntry
from provisioner.state import marker

REPO = "org/model"
MANY = "org/many-small"


def many_files(n: int, *, folders: int = 10, size: int = 8 << 10) -> dict[str, bytes]:
    out = {}
    for i in range(n):
        block = hashlib.sha256(b"%d" % i).digest()
        out[f"part-{i % folders:02d}/file-{i:04d}.{'json' if i % 2 else 'bin'}"] = block * (size // len(block))
    return out


class FdSpy:
    """Records which paths were opened, written (number of calls) and fsynced, via /proc/self/fd."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.opened: list[str] = []
        self.writes: dict[str, int] = {}
        self.fsyncs: dict[str, int] = {}
        self._lock = threading.Lock()
        real_open, real_write, real_pwrite, real_fsync = os.open, os.write, os.pwrite, os.fsync

        def name(fd: int) -> str:
            try:
                return os.readlink(f"/proc/self/fd/{fd}")
            except OSError:  # not a file we can name (already closed): not one of ours
                return ""

        def spy_open(path: Any, *a: Any, **kw: Any) -> int:
            with self._lock:
                self.opened.append(str(path))
            return real_open(path, *a, **kw)

        def count(table: dict[str, int], fd: int) -> None:
            key = name(fd)
            with self._lock:
                table[key] = table.get(key, 0) + 1

        def spy_write(fd: int, data: Any) -> int:
            count(self.writes, fd)
            return real_write(fd, data)

        def spy_pwrite(fd: int, data: Any, pos: int) -> int:
            count(self.writes, fd)
            return real_pwrite(fd, data, pos)

        def spy_fsync(fd: int) -> None:
            count(self.fsyncs, fd)
            real_fsync(fd)

        monkeypatch.setattr(os, "open", spy_open)
        monkeypatch.setattr(os, "write", spy_write)
        monkeypatch.setattr(os, "pwrite", spy_pwrite)
        monkeypatch.setattr(os, "fsync", spy_fsync)


def test_small_files_are_written_once_without_a_journal(hub: HubEmulator, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    hub.add_repo(REPO, many_files(40, folders=4))
    plan = plan_for(hub)
    assert all(e.size <= SMALL_FILE_BYTES for e in plan.files)
    spy = FdSpy(monkeypatch)
    run = Run(hub, plan, tmp_path)
    result = run()
    monkeypatch.undo()
    assert_correct(hub, result)
    for entry in plan.files:
        key = part_key(entry)
        tmp = f"{key}.small.tmp"
        # one write, one fsync, to the temporary name; then renamed: only `.small` is left
        assert spy.writes.get(str(run.state_dir / "partial" / tmp)) == 1, entry.path
        assert spy.fsyncs.get(str(run.state_dir / "partial" / tmp)) == 1, entry.path
        assert result[entry.path].part_path == run.state_dir / "partial" / f"{key}.small"
        # never a sparse part file, an offsets file or a metadata file
        journal = [p for p in spy.opened if Path(p).name in (f"{key}.part", f"{key}.offsets", f"{key}.json.tmp")]
        assert not journal, entry.path
    assert sorted(p.name for p in (run.state_dir / "partial").iterdir()) == sorted(
        f"{part_key(e)}.small" for e in plan.files)


def test_complete_small_file_is_reused_and_incomplete_one_leaves_nothing(tmp_path: Path) -> None:
    data = b"x" * 1000
    entry = FileEntry("a/b.json", len(data), blob_sha1="0" * 40)
    state = tmp_path / ".provisioner"
    half = SmallJournal.start(state, entry)
    half.write(0, data[:500])
    half.advance(0, 500)
    half.close()
    assert not (state / "partial").exists() or not any((state / "partial").iterdir())  # nothing trusted on disk
    assert partial_bytes_on_disk(state, entry) == 0
    full = SmallJournal.start(state, entry)
    full.write(0, data)
    full.advance(0, len(data))
    full.close()
    assert full.part_path.read_bytes() == data and full.part_path.suffix == ".small"
    assert partial_bytes_on_disk(state, entry) == len(data)
    again = SmallJournal.start(state, entry)  # a later call takes the complete file: nothing left to fetch
    assert again.bytes_done == len(data) and again.remaining(0) == 0 and again.read(0, 10) == data[:10]


def test_planted_symlinks_are_never_followed(hub: HubEmulator, tmp_path: Path) -> None:
    hub.add_repo(REPO, {"config.json": b'{"a": 1}\n' * 10})
    plan = plan_for(hub)
    entry = plan.file("config.json")
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious" * 100)
    partial = tmp_path / "target" / ".provisioner" / "partial"
    partial.mkdir(parents=True)
    done, tmp = small_mod.small_paths(tmp_path / "target" / ".provisioner", entry)
    os.truncate(victim, entry.size)  # the right size: still never taken as complete through a link
    done.symlink_to(victim)
    tmp.symlink_to(victim)
    result = Run(hub, plan, tmp_path)()
    assert_correct(hub, result)
    assert not done.is_symlink() and not tmp.exists()
    assert victim.read_bytes() == (b"precious" * 100)[:entry.size]


def test_small_files_get_their_own_requests_in_flight() -> None:
    assert small_in_flight(Config()) == 16  # defaults: 4 workers x 4 connections
    assert small_in_flight(Config(max_workers=1, connections_per_file=1)) == 1  # a gentle setting stays gentle
    assert small_in_flight(Config(max_workers=2, connections_per_file=4)) == 8
    assert small_in_flight(Config(max_workers=64, connections_per_file=32)) == 16


def test_placing_fsyncs_each_folder_once(hub: HubEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = many_files(60, folders=3)
    hub.add_repo(MANY, files)
    synced: list[Path] = []
    real = place_mod.fsutil.fsync_dir

    def spy(path: Path) -> None:
        synced.append(Path(path))
        real(path)

    monkeypatch.setattr(place_mod.fsutil, "fsync_dir", spy)
    target = tmp_path / "m"
    provision(repo_id=MANY, target=str(target), endpoint=hub.url, verify="checksums", kube="off")
    folders = [p for p in synced if target in p.parents and ".provisioner" not in p.parts]
    assert sorted(folders) == sorted({target / f"part-{i:02d}" for i in range(3)})  # once each, not once per file
    for path, data in files.items():
        assert (target / path).read_bytes() == data


def test_kill_mid_run_of_many_small_files_ends_ready_on_rerun(hub: HubEmulator, tmp_path: Path) -> None:
    files = many_files(300)
    hub.add_repo(MANY, files)
    total = sum(len(d) for d in files.values())
    hub.faults.rate_limit_global = total // 3  # ~3 s: the kill lands mid-run
    target = tmp_path / "m"
    argv = run_args(endpoint=hub.url, target=target, repo_id=MANY, extra=["--verify", "checksums"])
    proc = start_cli(argv, log=tmp_path / "first.log")
    try:
        assert hub.wait_for(lambda s: s.bytes_served >= total // 3, timeout=60)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        proc.kill()
    assert marker.read_marker(target) is None
    placed = [p for p in files if (target / p).exists()]
    assert len(placed) < len(files)  # killed mid-run, not after it
    for p in placed:  # whatever reached its final path is complete
        assert (target / p).read_bytes() == files[p], p
    hub.faults.rate_limit_global = None
    res = run_cli(argv)
    assert res.returncode == 0, res.stderr[-3000:]
    assert marker.read_marker(target) is not None
    for path, data in files.items():
        assert (target / path).read_bytes() == data, path
    assert not list((target / ".provisioner" / "partial").iterdir())  # nothing left behind


def test_no_space_while_writing_a_small_file_is_reported_and_leaves_nothing_trusted(
        hub: HubEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub.add_repo(REPO, many_files(8, folders=2))
    plan = plan_for(hub)
    real_write = os.write

    def full(fd: int, data: Any) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".small.tmp"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full)
    run = Run(hub, plan, tmp_path)
    with pytest.raises(NoSpaceError):
        run()
    monkeypatch.undo()
    assert not list((run.state_dir / "partial").glob("*.small"))  # only complete files ever get that name
    assert all(partial_bytes_on_disk(run.state_dir, e) == 0 for e in plan.files)
    assert_correct(hub, Run(hub, plan, tmp_path)())  # space back: the next call fetches them
