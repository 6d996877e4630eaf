"""The smoke test's child started early (its imports overlap the download) against real processes:
the real all-MiniLM-L6-v2 served by the hub emulator, `model-provisioner run` as a process.

What must hold: the child is a child of the run and started before the last byte; it is gone when the
run is stopped (SIGTERM) or fails (a 404 after planning); it is never started for a repo that is not a
sentence-transformers model; its result still gates readiness (a reference mismatch -> exit 6, no marker).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import run_args, run_cli, start_cli, wait_until
from hub_emulator import HubEmulator

from provisioner import marker
from provisioner.errors import ExitCode

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
MiB = 1 << 20
_STARTED = re.compile(r"smoke test child pid (\d+) started early")

def _child_pid(log: Path) -> int | None:
    m = _STARTED.search(log.read_text(errors="replace")) if log.exists() else None
    return int(m.group(1)) if m else None


def _parent_of(pid: int) -> int | None:
    """The parent pid of a live (non-zombie) process, None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no such process
        return None
    state, ppid = stat.rsplit(")", 1)[1].split()[:2]
    return None if state in ("Z", "X") else int(ppid)


def _args(hub: HubEmulator, target: Path, *extra: str) -> list[str]:
    return run_args(endpoint=hub.url, target=target, repo_id=MODEL,
                    extra=["--verify", "full", "--log-level", "debug", *extra])


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def test_child_starts_before_the_last_byte_and_its_pass_makes_ready(model_hub: HubEmulator, tmp_path: Path) -> None:
    model_hub.faults.rate_limit_global = 20 * MiB  # the download takes a few seconds: room for the imports
    target = tmp_path / "m"
    res = run_cli(_args(model_hub, target))
    assert res.returncode == 0, res.stderr[-3000:]
    assert _STARTED.search(res.stderr), "the smoke test child was not started early"
    emb = marker.read_marker(target)["verification"]["embedding"]  # type: ignore[index]
    assert emb["ok"] is True and emb["dim"] == 384
    assert emb["head_start_seconds"] > 0  # it was running before `go`


def test_sigterm_during_the_download_kills_the_early_child(model_hub: HubEmulator, tmp_path: Path,
                                                          procs: list[subprocess.Popen[str]]) -> None:
    model_hub.faults.rate_limit_global = 2 * MiB  # ~45 s of download: SIGTERM lands in the middle
    log = tmp_path / "run.log"
    proc = start_cli(_args(model_hub, tmp_path / "m"), log=log)
    procs.append(proc)
    wait_until(lambda: _child_pid(log) is not None, timeout=60, what="the early child's pid in the log")
    pid = _child_pid(log)
    assert pid is not None
    assert _parent_of(pid) == proc.pid  # really the run's child, alive while bytes flow
    assert model_hub.wait_for(lambda s: s.bytes_by_file["model.safetensors"] > MiB, timeout=60)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) != 0, log.read_text()[-3000:]
    assert _parent_of(pid) is None, f"smoke test child {pid} outlived the stopped run"
    assert f"smoke test child pid {pid} ended" in log.read_text()
    assert not marker.read_marker(tmp_path / "m")


def test_a_failed_fetch_kills_the_early_child(model_hub: HubEmulator, tmp_path: Path) -> None:
    model_hub.fail_next(1, status=404, kind="resolve", path="*model.safetensors")  # after planning
    res = run_cli(_args(model_hub, tmp_path / "m"))
    assert res.returncode == ExitCode.NOT_FOUND, res.stderr[-3000:]
    m = _STARTED.search(res.stderr)
    assert m, "the smoke test child was not started early"
    assert _parent_of(int(m.group(1))) is None, "the smoke test child outlived the failed run"
    assert f"smoke test child pid {m.group(1)} ended" in res.stderr
    assert not marker.read_marker(tmp_path / "m")


def test_no_child_for_a_repo_that_is_not_sentence_transformers(hub: HubEmulator, tmp_path: Path) -> None:
    hub.add_repo("org/plain", {"config.json": b'{"hidden_size": 8}', "weights.bin": b"\0" * 4096})
    res = run_cli(run_args(endpoint=hub.url, target=tmp_path / "m", repo_id="org/plain",
                           extra=["--verify", "full", "--log-level", "debug"]))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "smoke test child" not in res.stderr
    emb = marker.read_marker(tmp_path / "m")["verification"]["embedding"]  # type: ignore[index]
    assert emb["ok"] is None and "skipped" in emb["detail"]


def test_reference_mismatch_from_the_early_child_fails_with_6_and_no_marker(model_hub: HubEmulator,
                                                                          tmp_path: Path) -> None:
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps({"sentences": ["A man is eating food."], "embeddings": [[0.5] * 384],
                               "tolerance": 1e-3}))
    res = run_cli(_args(model_hub, tmp_path / "m", "--reference-embeddings", str(ref)))
    assert res.returncode == ExitCode.VERIFY_FAILED, res.stderr[-3000:]
    assert _STARTED.search(res.stderr)
    assert "reference embeddings differ" in res.stderr
    assert not marker.read_marker(tmp_path / "m")
