"""End to end: `model-provisioner run` as a real process against the hub emulator over real HTTP."""

from __future__ import annotations

import filecmp
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_helpers import json_lines, run_args, run_cli, start_cli
from hub_emulator import HubEmulator

from provisioner.api import provision
from provisioner.config import Config
from provisioner.errors import ExitCode, NoSpaceError
from provisioner.state import marker

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
BIG = "org/big"
MiB = 1 << 20


def _run_until(hub: HubEmulator, argv: list[str], *, log: Path, at: int,
               act: Callable[[subprocess.Popen[str]], object], wait: float = 120) -> int:
    """Start `run`, do `act` once the hub has served `at` bytes of model.safetensors, return the exit code."""
    proc = start_cli(argv, log=log)
    try:
        assert hub.wait_for(lambda s: s.bytes_by_file["model.safetensors"] >= at, timeout=60)
        act(proc)
        return proc.wait(wait)
    finally:
        proc.kill()


def _same_tree(src: Path, dst: Path, paths: list[str]) -> None:
    for p in paths:
        assert filecmp.cmp(src / p, dst / p, shallow=False), p


def test_real_model_end_to_end_with_embedding_test(model_hub: HubEmulator, real_model_dir: Path,
                                                   tmp_path: Path) -> None:
    target = tmp_path / "m"
    res = run_cli(run_args(endpoint=model_hub.url, target=target, repo_id=MODEL, extra=["--verify", "full"]))
    assert res.returncode == 0, res.stderr[-3000:]
    files = list(model_hub.files(MODEL))
    _same_tree(real_model_dir, target, files)
    m = marker.read_marker(target)
    assert m is not None and m["commit"] == model_hub.commit_of(MODEL)
    assert m["verification"]["checksums"]["ok"] is True
    emb = m["verification"]["embedding"]
    assert emb["ok"] is True and emb["dim"] == 384
    assert emb["paraphrase_cosine"] > emb["unrelated_cosine"] + 0.2
    assert run_cli(["python", "-m", "provisioner", "check", str(target)]).returncode == 0
    model_hub.wait_idle()
    total = sum(f.size for f in model_hub.files(MODEL).values())
    assert model_hub.stats.bytes_served - total < 64 * 1024  # API JSON only on top of the files
    events = {line.get("event") for line in json_lines(res.stderr)}
    assert {"plan", "ready"} <= events, events


def test_warm_restart_pinned_commit_makes_no_request(hub: HubEmulator, small_repo: Path, tmp_path: Path) -> None:
    commit = hub.add_repo("org/small", small_repo)
    target = tmp_path / "m"
    first = run_cli(run_args(endpoint=hub.url, target=target, repo_id="org/small",
                             extra=["--revision", commit, "--verify", "checksums"]))
    assert first.returncode == 0, first.stderr[-3000:]
    hub.wait_idle()
    hub.reset_stats()
    again = run_cli(run_args(endpoint=hub.url, target=target, repo_id="org/small",
                             extra=["--revision", commit, "--verify", "checksums"]))
    assert again.returncode == 0, again.stderr[-3000:]
    assert hub.stats.requests_by_kind == {} and hub.stats.bytes_served == 0
    # a branch costs exactly one API call (did it move?) and no file bytes
    branch = run_cli(run_args(endpoint=hub.url, target=target, repo_id="org/small", extra=["--verify", "checksums"]))
    assert branch.returncode == 0, branch.stderr[-3000:]
    hub.wait_idle()
    assert dict(hub.stats.requests_by_kind) == {"api": 1}


def test_branch_moved_updates_only_changed_files(hub: HubEmulator, small_repo: Path, tmp_path: Path) -> None:
    hub.add_repo("org/small", small_repo)
    target = tmp_path / "m"
    assert run_cli(run_args(endpoint=hub.url, target=target, repo_id="org/small",
                            extra=["--verify", "checksums"])).returncode == 0
    new_commit = hub.replace_file("org/small", "config.json", b'{"hidden_size": 16}\n')
    hub.wait_idle()
    hub.reset_stats()
    res = run_cli(run_args(endpoint=hub.url, target=target, repo_id="org/small", extra=["--verify", "checksums"]))
    assert res.returncode == 0, res.stderr[-3000:]
    assert (target / "config.json").read_bytes() == b'{"hidden_size": 16}\n'
    assert marker.read_marker(target)["commit"] == new_commit  # type: ignore[index]
    hub.wait_idle()
    assert set(hub.stats.bytes_by_file) == {"config.json"}


def test_resume_after_sigkill_resends_little(hub: HubEmulator, big_file_repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    size = 64 * MiB
    hub.add_repo(BIG, big_file_repo(size))
    hub.faults.rate_limit_global = 24 * MiB
    target = tmp_path / "m"
    argv = run_args(endpoint=hub.url, target=target, repo_id=BIG,
                    extra=["--verify", "checksums", "--split-threshold", "16MiB"])
    _run_until(hub, argv, log=tmp_path / "first.log", at=size // 2, act=lambda p: p.send_signal(signal.SIGKILL))
    hub.wait_idle()
    sent_before = hub.stats.bytes_by_file["model.safetensors"]
    assert not marker.read_marker(target)
    hub.faults.rate_limit_global = None
    hub.reset_stats()
    res = run_cli(argv)
    assert res.returncode == 0, res.stderr[-3000:]
    hub.wait_idle()
    resent = sent_before + hub.stats.bytes_by_file["model.safetensors"] - size
    assert resent <= 4 * MiB, f"re-sent {resent} bytes after SIGKILL"
    assert filecmp.cmp(big_file_repo(size) / "model.safetensors", target / "model.safetensors", shallow=False)


def test_sigterm_stops_gracefully_and_resumes(hub: HubEmulator, big_file_repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    size = 32 * MiB
    hub.add_repo(BIG, big_file_repo(size))
    hub.faults.rate_limit_global = 8 * MiB
    target = tmp_path / "m"
    argv = run_args(endpoint=hub.url, target=target, repo_id=BIG, extra=["--verify", "checksums"])
    code = _run_until(hub, argv, log=tmp_path / "term.log", at=size // 4,
                      act=lambda p: p.send_signal(signal.SIGTERM), wait=20)
    assert code == 128 + signal.SIGTERM
    assert not marker.read_marker(target)
    parts = list((target / ".provisioner" / "partial").glob("*.part"))
    assert parts and parts[0].stat().st_size > 0, "partial data must be kept"
    hub.faults.rate_limit_global = None
    res = run_cli(argv)
    assert res.returncode == 0, res.stderr[-3000:]
    hub.wait_idle()
    # counted over both runs: what was sent twice
    assert hub.stats.bytes_by_file["model.safetensors"] - size <= 2 * MiB


def test_outage_longer_than_inner_retries_recovers(hub: HubEmulator, big_file_repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    size = 32 * MiB
    hub.add_repo(BIG, big_file_repo(size))
    hub.faults.rate_limit_global = 8 * MiB
    target = tmp_path / "m"
    argv = run_args(endpoint=hub.url, target=target, repo_id=BIG,
                    extra=["--verify", "checksums", "--backoff-max", "1", "--retry-budget", "60"])
    def outage(_proc: subprocess.Popen[str]) -> None:
        hub.outage(8.0)  # longer than huggingface_hub's own 5 x 1 s inner retries
        hub.faults.rate_limit_global = None

    code = _run_until(hub, argv, log=tmp_path / "outage.log", at=size // 3, act=outage)
    assert code == 0, (tmp_path / "outage.log").read_text()[-3000:]
    hub.wait_idle()
    assert hub.stats.bytes_by_file["model.safetensors"] - size <= 4 * MiB
    assert "retry" in {line.get("event") for line in json_lines((tmp_path / "outage.log").read_text())}


def test_outage_longer_than_budget_exits_transient_and_keeps_partial(hub: HubEmulator, big_file_repo,  # type: ignore[no-untyped-def]
                                                                     tmp_path: Path) -> None:
    size = 32 * MiB
    hub.add_repo(BIG, big_file_repo(size))
    hub.faults.rate_limit_global = 8 * MiB
    target = tmp_path / "m"
    argv = run_args(endpoint=hub.url, target=target, repo_id=BIG,
                    extra=["--verify", "checksums", "--backoff-max", "0.5", "--retry-budget", "3"])
    try:
        code = _run_until(hub, argv, log=tmp_path / "budget.log", at=size // 4, act=lambda _p: hub.down(), wait=60)
    finally:
        hub.up()
    assert code == ExitCode.TRANSIENT
    assert not marker.read_marker(target)
    assert sum(p.stat().st_size for p in (target / ".provisioner" / "partial").glob("*.part")) > 0


def test_flipped_byte_is_detected_and_repaired(hub: HubEmulator, small_repo: Path, tmp_path: Path) -> None:
    hub.add_repo("org/small", small_repo)
    hub.faults.path = "*model.safetensors*"
    hub.faults.flip_byte_at = 1234567
    target = tmp_path / "m"
    res = run_cli(run_args(endpoint=hub.url, target=target, repo_id="org/small", extra=["--verify", "checksums"]))
    assert res.returncode == 0, res.stderr[-3000:]
    assert filecmp.cmp(small_repo / "model.safetensors", target / "model.safetensors", shallow=False)
    retries = [ln for ln in json_lines(res.stderr) if ln.get("event") == "retry"]
    assert any(r.get("reason") == "checksum" for r in retries), retries


def test_flipped_byte_every_time_fails_verification(hub: HubEmulator, small_repo: Path, tmp_path: Path) -> None:
    hub.add_repo("org/small", small_repo)
    hub.faults.path = "*model.safetensors*"
    hub.faults.flip_byte_at = 99
    hub.faults.flip_every = True
    target = tmp_path / "m"
    res = run_cli(run_args(endpoint=hub.url, target=target, repo_id="org/small", extra=["--verify", "checksums"]))
    assert res.returncode == ExitCode.VERIFY_FAILED, res.stderr[-3000:]
    assert "model.safetensors" in res.stderr and not marker.read_marker(target)
    assert not (target / "model.safetensors").exists(), "corrupt bytes must never reach the final path"


@pytest.mark.parametrize(("repo", "revision", "code"), [
    ("org/absent", "main", ExitCode.NOT_FOUND),
    ("org/small", "no-such-branch", ExitCode.NOT_FOUND),
    ("org/gated", "main", ExitCode.UNAUTHORIZED),
])
def test_permanent_errors_fail_fast(hub: HubEmulator, small_repo: Path, tmp_path: Path,
                                    repo: str, revision: str, code: int) -> None:
    hub.add_repo("org/small", small_repo)
    hub.add_repo("org/gated", {"config.json": b"{}"}, gated=True, token="hf_realtoken12345")
    res = run_cli(run_args(endpoint=hub.url, target=tmp_path / "m", repo_id=repo,
                           extra=["--revision", revision, "--retry-budget", "600"]), timeout=60)
    assert res.returncode == code, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    assert not marker.read_marker(tmp_path / "m")


def test_disk_space_preflight_writes_nothing(hub: HubEmulator, small_repo: Path, tmp_path: Path) -> None:
    hub.add_repo("org/small", small_repo)
    target = tmp_path / "m"
    cfg = Config(repo_id="org/small", endpoint=hub.url, target=str(target), verify="checksums", listen="",
                 kube="off")
    with pytest.raises(NoSpaceError) as info:
        provision(cfg, free_space=lambda p: 1 * MiB)
    assert info.value.exit_code == ExitCode.NO_SPACE
    assert hub.stats.bytes_by_file == {}
    assert not list((target / ".provisioner" / "partial").glob("*.part"))


def test_crash_between_last_byte_and_marker(hub: HubEmulator, small_repo: Path, tmp_path: Path) -> None:
    hub.add_repo("org/small", small_repo)
    target = tmp_path / "m"
    cfg = Config(repo_id="org/small", endpoint=hub.url, target=str(target), verify="checksums", listen="",
                 kube="off")
    provision(cfg)
    os.unlink(marker.marker_path(target))  # as if killed right before the marker rename
    hub.wait_idle()
    hub.reset_stats()
    res = provision(cfg)
    assert res.bytes_downloaded == 0 and not res.warm
    assert marker.check_ready(target).ok
    hub.wait_idle()
    assert hub.stats.bytes_by_file == {}


def test_verify_detects_corruption_and_run_repairs(hub: HubEmulator, small_repo: Path, tmp_path: Path) -> None:
    hub.add_repo("org/small", small_repo)
    target = tmp_path / "m"
    cfg = Config(repo_id="org/small", endpoint=hub.url, target=str(target), verify="checksums", listen="",
                 kube="off")
    provision(cfg)
    assert run_cli(["python", "-m", "provisioner", "verify", str(target), "--verify", "checksums"]).returncode == 0
    w = target / "model.safetensors"
    st = w.stat()
    with open(w, "r+b") as f:  # silent corruption that keeps size and mtime: only a re-hash sees it
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert marker.check_ready(target).ok  # the fast probe cannot see it ...
    res = run_cli(["python", "-m", "provisioner", "verify", str(target), "--verify", "checksums"])
    assert res.returncode == ExitCode.VERIFY_FAILED  # ... the full re-hash does
    assert not marker.check_ready(target).ok
    provision(cfg)
    assert filecmp.cmp(small_repo / "model.safetensors", w, shallow=False)


def test_api_progress_callback_and_stop(hub: HubEmulator, big_file_repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    size = 16 * MiB
    hub.add_repo(BIG, big_file_repo(size))
    hub.faults.rate_limit_global = 4 * MiB
    kinds: list[str] = []
    stop = threading.Event()

    def on_event(event) -> None:  # type: ignore[no-untyped-def]
        kinds.append(event.kind)
        if event.kind == "file_started":
            stop.set()

    cfg = Config(repo_id=BIG, endpoint=hub.url, target=str(tmp_path / "m"), verify="checksums", listen="",
                 kube="off")
    from provisioner.errors import Interrupted

    with pytest.raises(Interrupted):
        provision(cfg, progress=on_event, stop=stop)
    assert "plan" in kinds and kinds[-1] == "failed"
    hub.faults.rate_limit_global = None
    result = provision(cfg)
    assert result.bytes_total == size + len('{"model_type": "emulated"}\n')
