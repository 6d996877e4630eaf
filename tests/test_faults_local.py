"""Fault matrix, local side: full disk, signals, read-only volumes, concurrent runs, damaged state.

Small real filesystems (tmpfs) are used where the sandbox allows mounting (root); otherwise the case
falls back to an injected error or is skipped with the reason. docs/faults.md is the table.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import json_lines, run_args, run_cli, start_cli, wait_until
from hub_emulator import HubEmulator

from provisioner.api import provision
from provisioner.config import Config
from provisioner.errors import ExitCode, NoSpaceError
from provisioner.state import marker

REPO = "org/local"
MiB = 1 << 20
BIG = "model.safetensors"
BIG_SIZE = 4 * MiB + 321
FILES = {
    "config.json": b'{"hidden_size": 8}\n',
    "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}\n',
    BIG: random.Random(7).randbytes(BIG_SIZE),
}
FAST = ["--verify", "checksums", "--stall-timeout", "1", "--backoff-max", "0.5", "--connect-timeout", "2",
        "--api-timeout", "5", "--retry-budget", "20", "--disk-headroom", "0"]


@pytest.fixture
def repo_hub(hub: HubEmulator) -> HubEmulator:
    hub.add_repo(REPO, FILES)
    return hub


def argv_for(hub: HubEmulator, target: Path, *extra: str) -> list[str]:
    return run_args(endpoint=hub.url, target=target, repo_id=REPO, extra=[*FAST, *extra])


def cfg_for(hub: HubEmulator, target: Path, **over: Any) -> Config:
    base: dict[str, Any] = {"repo_id": REPO, "endpoint": hub.url, "target": str(target), "verify": "checksums",
                            "listen": "", "kube": "off", "stall_timeout": 1.0, "backoff_max": 0.5,
                            "retry_budget": 20.0, "disk_headroom": 0}
    base.update(over)
    return Config(**base)


def assert_ready(target: Path) -> None:
    for path, data in FILES.items():
        assert (target / path).read_bytes() == data, path
    check = marker.check_ready(target, repo_id=REPO)
    assert check.ok, check.reason


def partial_bytes(target: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in (target / ".provisioner" / "partial").glob("*.part"))


def final_error(stderr: str) -> dict[str, Any]:
    final = [ln for ln in json_lines(stderr) if ln.get("level") == "error" and "exit_code" in ln and "event" not in ln]
    plain = [ln for ln in stderr.splitlines() if ln.startswith("model-provisioner:")]
    assert len(final) + len(plain) == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    return final[0] if final else {"msg": plain[0]}


def served(hub: HubEmulator, path: str = BIG) -> int:
    hub.wait_idle()
    return hub.stats.bytes_by_file[path]


# ---- small real filesystems -----------------------------------------------------------------------
@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root (the injected-error variant covers this case)")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def remount(where: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(where)], check=True, capture_output=True)


def fill(fs: Path) -> Path:
    """Write a filler file until the filesystem is full."""
    filler = fs / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


# ---- ENOSPC mid-file ------------------------------------------------------------------------------
def test_enospc_mid_file_on_a_small_tmpfs(repo_hub: HubEmulator, tmp_path: Path,
                                         procs: list[subprocess.Popen[str]]) -> None:
    hub = repo_hub
    with tmpfs(tmp_path / "fs", "12m") as fs:
        target = fs / "m"
        hub.faults.rate_limit_global = 2 * MiB
        log = tmp_path / "run.log"
        proc = start_cli(argv_for(hub, target), log=log)
        procs.append(proc)
        assert hub.wait_for(lambda s: s.bytes_by_file[BIG] >= MiB, timeout=30)
        filler = fill(fs)  # the preflight passed; now the disk fills up under the download
        code = proc.wait(60)
        text = log.read_text()
        assert code == ExitCode.NO_SPACE, text[-3000:]
        err = final_error(text)
        assert err.get("error") == "NoSpaceError", err
        kept = partial_bytes(target)
        assert kept >= MiB // 2, "the bytes on disk before ENOSPC must be kept"
        assert not marker.marker_path(target).exists()
        filler.unlink()
        hub.faults.rate_limit_global = None
        res = run_cli(argv_for(hub, target))
        assert res.returncode == 0, res.stderr[-3000:]
        assert_ready(target)
        assert served(hub) - BIG_SIZE <= 2 * MiB, "the retry after ENOSPC should resume, not start over"


def test_enospc_mid_file_injected(repo_hub: HubEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same case without a small filesystem: os.pwrite fails with ENOSPC once 1 MiB of data is written."""
    hub = repo_hub
    target = tmp_path / "m"
    real_pwrite = os.pwrite
    written = [0]

    def pwrite(fd: int, data: Any, offset: int) -> int:
        if len(data) > 8:  # data chunks, not the 8-byte offset records
            if written[0] >= MiB:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            written[0] += len(data)
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    with pytest.raises(NoSpaceError) as info:
        provision(cfg_for(hub, target, max_workers=1))
    assert "\n" not in str(info.value) and info.value.exit_code == ExitCode.NO_SPACE
    assert partial_bytes(target) >= MiB // 2
    assert not marker.marker_path(target).exists()
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    hub.wait_idle()
    hub.reset_stats()
    result = provision(cfg_for(hub, target))
    assert_ready(target)
    assert result.bytes_downloaded <= BIG_SIZE - MiB // 2 + sum(len(v) for v in FILES.values() if len(v) < MiB)


# ---- signals ----------------------------------------------------------------------------------------
def test_sigterm_during_stalled_api_call_exits_promptly(repo_hub: HubEmulator, tmp_path: Path,
                                                        procs: list[subprocess.Popen[str]]) -> None:
    """Kubernetes sends SIGKILL after the grace period (30 s by default, the default --api-timeout): a
    SIGTERM must end the run within seconds even while an API call hangs. (test_provision_e2e covers
    SIGTERM mid-file.)"""
    hub = repo_hub
    hub.faults.stall_api = float("inf")
    log = tmp_path / "run.log"
    proc = start_cli(argv_for(hub, tmp_path / "m", "--api-timeout", "25"), log=log)
    procs.append(proc)
    assert hub.wait_for(lambda s: s.faults_fired["stall_api"] >= 1, timeout=20)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(8)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        hub.release_stalls()
    assert code == 128 + signal.SIGTERM, f"exit {code} {time.monotonic() - t0:.1f}s after SIGTERM"
    assert not marker.marker_path(tmp_path / "m").exists()


def test_sigterm_while_waiting_for_another_downloader(repo_hub: HubEmulator, tmp_path: Path,
                                                      procs: list[subprocess.Popen[str]]) -> None:
    hub = repo_hub
    target = tmp_path / "m"
    hub.faults.rate_limit_global = 2 * MiB
    first = start_cli(argv_for(hub, target), log=tmp_path / "a.log")
    procs.append(first)
    assert hub.wait_for(lambda s: s.bytes_by_file[BIG] >= 256 * 1024, timeout=30)
    log = tmp_path / "b.log"
    second = start_cli(argv_for(hub, target), log=log)
    procs.append(second)
    wait_until(lambda: any(ln.get("event") == "waiting" for ln in json_lines(log.read_text())),
               timeout=20, what="the second run to wait for the lock")
    second.send_signal(signal.SIGTERM)
    assert second.wait(10) == 128 + signal.SIGTERM
    hub.faults.rate_limit_global = None
    assert first.wait(60) == 0, (tmp_path / "a.log").read_text()[-3000:]
    assert_ready(target)


# ---- two runs on one directory -------------------------------------------------------------------------
def test_two_runs_on_one_directory_download_once(repo_hub: HubEmulator, tmp_path: Path,
                                                 procs: list[subprocess.Popen[str]]) -> None:
    hub = repo_hub
    target = tmp_path / "m"
    hub.faults.rate_limit_global = 4 * MiB
    a = start_cli(argv_for(hub, target), log=tmp_path / "a.log")
    procs.append(a)
    assert hub.wait_for(lambda s: s.bytes_by_file[BIG] >= 256 * 1024, timeout=30)
    b = start_cli(argv_for(hub, target), log=tmp_path / "b.log")
    procs.append(b)
    assert a.wait(60) == 0, (tmp_path / "a.log").read_text()[-3000:]
    assert b.wait(60) == 0, (tmp_path / "b.log").read_text()[-3000:]
    assert_ready(target)
    assert served(hub) <= BIG_SIZE + 256 * 1024, f"served {served(hub)} bytes for a {BIG_SIZE}-byte file"


# ---- read-only target -------------------------------------------------------------------------------
def test_read_only_target_exits_local_io(repo_hub: HubEmulator, tmp_path: Path) -> None:
    hub = repo_hub
    with tmpfs(tmp_path / "fs", "16m") as fs:
        target = fs / "m"
        target.mkdir()
        remount(fs, "ro")
        res = run_cli(argv_for(hub, target))
        assert res.returncode == ExitCode.LOCAL_IO, res.stderr[-3000:]
        err = final_error(res.stderr)
        assert str(target) in str(err.get("msg")), err
        assert hub.stats.bytes_by_file == {}, "nothing should be downloaded into a volume we cannot write"


def test_read_only_target_as_unprivileged_user(repo_hub: HubEmulator, tmp_path: Path) -> None:
    """The same with permissions instead of a ro mount (root ignores modes: run as nobody via setpriv)."""
    hub = repo_hub
    setpriv = shutil.which("setpriv")
    if os.geteuid() == 0 and setpriv is None:
        pytest.skip("root ignores permissions and setpriv is not available")
    base = tmp_path / "ro"
    base.mkdir()
    target = base / "m"
    target.mkdir()
    os.chmod(target, 0o555)
    os.chmod(tmp_path, 0o755)
    argv = argv_for(hub, target)
    env = {"HOME": str(base), "HF_HOME": str(base / ".hf")}
    if os.geteuid() == 0:
        assert setpriv is not None
        drop = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
        probe = run_cli([*drop, argv[0], "-c", "import prometheus_client, huggingface_hub, provisioner.cli"],
                        env=env, timeout=30)
        if probe.returncode != 0:
            pytest.skip("the Python environment is not usable by an unprivileged user here "
                        f"({probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else probe.returncode}); "
                        "test_read_only_target_exits_local_io covers the case with a read-only mount")
        argv = [*drop, *argv]
    res = run_cli(argv, env=env)
    assert res.returncode == ExitCode.LOCAL_IO, res.stderr[-3000:]
    final_error(res.stderr)
    assert list(target.iterdir()) == []


def test_partial_kept_when_volume_turns_read_only_then_resumes(repo_hub: HubEmulator, tmp_path: Path,
                                                              procs: list[subprocess.Popen[str]]) -> None:
    hub = repo_hub
    with tmpfs(tmp_path / "fs", "16m") as fs:
        target = fs / "m"
        hub.faults.rate_limit_global = 2 * MiB
        proc = start_cli(argv_for(hub, target), log=tmp_path / "a.log")
        procs.append(proc)
        assert hub.wait_for(lambda s: s.bytes_by_file[BIG] >= MiB, timeout=30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 128 + signal.SIGTERM
        kept = partial_bytes(target)
        assert kept >= MiB // 2
        remount(fs, "ro")
        res = run_cli(argv_for(hub, target))
        assert res.returncode == ExitCode.LOCAL_IO, res.stderr[-3000:]
        final_error(res.stderr)
        remount(fs, "rw")
        assert partial_bytes(target) == kept, "a failed run on a read-only volume must not lose partial data"
        hub.faults.rate_limit_global = None
        hub.wait_idle()
        hub.reset_stats()
        res = run_cli(argv_for(hub, target))
        assert res.returncode == 0, res.stderr[-3000:]
        assert_ready(target)
        assert served(hub) <= BIG_SIZE - MiB // 2


def test_ready_model_on_read_only_volume_is_served(repo_hub: HubEmulator, tmp_path: Path) -> None:
    """A verified model on a read-only volume (e.g. a ReadOnlyMany PVC filled by a node cache) with a
    pinned commit: `run` is ready from the marker without writing, like `check`."""
    hub = repo_hub
    commit = hub.commit_of(REPO)
    with tmpfs(tmp_path / "fs", "16m") as fs:
        target = fs / "m"
        assert run_cli(argv_for(hub, target, "--revision", commit)).returncode == 0
        remount(fs, "ro")
        assert run_cli(["python", "-m", "provisioner", "check", str(target)]).returncode == 0
        res = run_cli(argv_for(hub, target, "--revision", commit))
        assert res.returncode == 0, res.stderr[-3000:]


# ---- damaged state between runs ------------------------------------------------------------------------
def _provisioned(hub: HubEmulator, target: Path) -> None:
    provision(cfg_for(hub, target))
    assert_ready(target)
    hub.wait_idle()
    hub.reset_stats()


@pytest.mark.parametrize("damage", ["deleted", "truncated", "replaced-by-dir", "marker-torn", "marker-garbage"])
def test_marker_present_but_files_damaged_check_fails_run_repairs(repo_hub: HubEmulator, tmp_path: Path,
                                                                 damage: str) -> None:
    """(test_provision_e2e covers silent corruption that keeps size and mtime, found by `verify`.)"""
    hub = repo_hub
    target = tmp_path / "m"
    _provisioned(hub, target)
    victim = target / "1_Pooling" / "config.json"
    if damage == "deleted":
        victim.unlink()
    elif damage == "truncated":
        with open(target / BIG, "r+b") as f:
            f.truncate(BIG_SIZE // 2)
    elif damage == "replaced-by-dir":
        victim.unlink()
        victim.mkdir()
    elif damage == "marker-torn":
        mp = marker.marker_path(target)
        mp.write_bytes(mp.read_bytes()[:40])
    else:
        marker.marker_path(target).write_text(json.dumps({"version": 1, "files": "nope"}))
    chk = run_cli(["python", "-m", "provisioner", "check", str(target)])
    assert chk.returncode == ExitCode.NOT_READY, chk.stderr
    if damage == "replaced-by-dir":  # not something a download can fix: say so, do not delete user data
        res = run_cli(argv_for(hub, target))
        assert res.returncode == ExitCode.LOCAL_IO, res.stderr[-3000:]
        final_error(res.stderr)
        return
    res = run_cli(argv_for(hub, target))
    assert res.returncode == 0, res.stderr[-3000:]
    assert_ready(target)
    hub.wait_idle()
    if damage.startswith("marker"):
        assert hub.stats.bytes_by_file == {}, "intact files are re-hashed, not downloaded again"
    elif damage == "deleted":
        assert set(hub.stats.bytes_by_file) == {"1_Pooling/config.json"}
    else:
        assert set(hub.stats.bytes_by_file) == {BIG}


def _interrupted(hub: HubEmulator, target: Path, procs: list[subprocess.Popen[str]], log: Path) -> Path:
    hub.faults.rate_limit_global = 2 * MiB
    proc = start_cli(argv_for(hub, target), log=log)
    procs.append(proc)
    assert hub.wait_for(lambda s: s.bytes_by_file[BIG] >= 2 * MiB, timeout=30)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    hub.faults.rate_limit_global = None
    parts = sorted((target / ".provisioner" / "partial").glob("*.part"), key=lambda p: p.stat().st_blocks)
    assert parts, "no partial data after SIGKILL"
    return parts[-1]


def test_corrupted_partial_is_caught_by_checksum_and_refetched(repo_hub: HubEmulator, tmp_path: Path,
                                                               procs: list[subprocess.Popen[str]]) -> None:
    hub = repo_hub
    target = tmp_path / "m"
    part = _interrupted(hub, target, procs, tmp_path / "a.log")
    with open(part, "r+b") as f:  # bit rot in the part of the partial that counts as done
        f.seek(1000)
        b = f.read(1)
        f.seek(1000)
        f.write(bytes([b[0] ^ 0xFF]))
    res = run_cli(argv_for(hub, target))
    assert res.returncode == 0, res.stderr[-3000:]
    assert_ready(target)
    assert any(ln.get("reason") == "checksum" for ln in json_lines(res.stderr) if ln.get("event") == "retry")


@pytest.mark.parametrize("damage", ["garbage-json", "offsets-too-long", "offsets-beyond-size"])
def test_damaged_journal_is_discarded_not_trusted(repo_hub: HubEmulator, tmp_path: Path,
                                                  procs: list[subprocess.Popen[str]], damage: str) -> None:
    hub = repo_hub
    target = tmp_path / "m"
    part = _interrupted(hub, target, procs, tmp_path / "a.log")
    if damage == "garbage-json":
        part.with_suffix(".json").write_text("{garbage")
    elif damage == "offsets-too-long":
        part.with_suffix(".offsets").write_bytes(part.with_suffix(".offsets").read_bytes() + b"\1" * 8)
    else:  # one byte past the end (the unit tests in test_journal.py cover offsets inside the file)
        n = len(part.with_suffix(".offsets").read_bytes()) // 8
        part.with_suffix(".offsets").write_bytes((BIG_SIZE + 1).to_bytes(8, "little") * n)
    reason = {"garbage-json": "metadata file unreadable (JSONDecodeError)",
              "offsets-too-long": "offsets file has ",
              "offsets-beyond-size": f"offset {BIG_SIZE + 1} of segment 0 beyond the segment end"}[damage]
    res = run_cli(argv_for(hub, target))
    assert res.returncode == 0, res.stderr[-3000:]
    assert_ready(target)
    # the mechanism, not only the outcome: the journal was refused up front with the reason, and its
    # bytes were never trusted (a trusted bad journal would only be caught later by the checksum)
    discards = [ln for ln in json_lines(res.stderr) if ln.get("msg", "").startswith("discarding the journal of ")]
    assert len(discards) == 1, res.stderr[-3000:]
    assert discards[0]["msg"].startswith(f"discarding the journal of {BIG}: {reason}"), discards
    assert discards[0]["level"] == "warning"
    assert not any(ln.get("reason") == "checksum" for ln in json_lines(res.stderr) if ln.get("event") == "retry")
