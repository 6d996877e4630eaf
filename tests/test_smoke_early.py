"""The smoke test's child started early (its imports overlap the download) against real processes:
the real all-MiniLM-L6-v2 served by the hub emulator, `model-provisioner run` as a process.

What must hold: the child is a child of the run and started before the last byte; it is gone when the
run is stopped (SIGTERM) or fails (a 404 after planning); it is never started for a repo that is not a
sentence-transformers model; its result still gates readiness (a reference mismatch -> exit 6, no marker).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from cli_helpers import run_args, run_cli, start_cli, wait_until
from hub_emulator import HubEmulator

from provisioner.errors import ExitCode
from provisioner.state import marker

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


# ---- --verify app: the embedding check runs in the app's own image, as a plain script ------------------

_BLOCKER = """
import importlib.abc, runpy, sys
class _NoProvisioner(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "provisioner" or name.startswith("provisioner."):
            raise ImportError("the app-image check must not need the provisioner package: " + name)
        return None
sys.meta_path.insert(0, _NoProvisioner())
script = sys.argv[1]
sys.path.insert(0, script.rsplit("/", 1)[0])
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""


def _app_check(script_dir: Path, model_dir: Path) -> subprocess.CompletedProcess[str]:
    """Run the shipped check script the way the chart's init container does, with the provisioner
    package made unimportable (the app image does not have it)."""
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HOME": str(script_dir), "HF_HOME": str(script_dir / "hf"), "EMBEDDING_CHECK_IMAGE": "app:test"}
    return subprocess.run([sys.executable, "-c", _BLOCKER, str(script_dir / "smoke_child.py"), str(model_dir),
                           "--record"], capture_output=True, text=True, env=env, timeout=300, check=False)


def _ship_script(tmp_path: Path) -> Path:
    d = tmp_path / "check"
    d.mkdir()
    src = Path(marker.__file__).parents[1] / "verify"  # provisioner/verify, beside provisioner/state
    for name in ("smoke_child.py", "model_files.py"):
        shutil.copy(src / name, d / name)
    return d


def test_verify_app_marker_waits_for_the_app_image_check(model_hub: HubEmulator, tmp_path: Path) -> None:
    target = tmp_path / "m"
    res = run_cli(run_args(endpoint=model_hub.url, target=target, repo_id=MODEL,
                           extra=["--verify", "app", "--log-level", "debug"]))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "smoke test child" not in res.stderr  # no torch in the provisioner for --verify app
    m = marker.read_marker(target)
    assert m is not None and m["verify"] == "app"
    assert m["verification"]["checksums"]["ok"] is True
    assert m["verification"]["embedding"]["pending"] == "app"
    check = run_cli([sys.executable, "-m", "provisioner", "check", str(target)])
    assert check.returncode == ExitCode.NOT_READY and "has not run yet" in check.stderr + check.stdout
    # a restart of the provisioner serves the files as they are: the pending check is not its job
    again = run_cli(run_args(endpoint=model_hub.url, target=target, repo_id=MODEL, extra=["--verify", "app"]))
    assert again.returncode == 0, again.stderr[-3000:]
    assert marker.read_marker(target)["verification"]["embedding"]["pending"] == "app"  # type: ignore[index]

    script_dir = _ship_script(tmp_path)
    rec = _app_check(script_dir, target)
    assert rec.returncode == 0, rec.stderr[-3000:]
    assert json.loads(rec.stdout.strip().splitlines()[-1])["ok"] is True
    emb = marker.read_marker(target)["verification"]["embedding"]  # type: ignore[index]
    assert emb["ok"] is True and emb["dim"] == 384 and emb["ran_in"] == "app:test" and "pending" not in emb
    assert run_cli([sys.executable, "-m", "provisioner", "check", str(target)]).returncode == 0


def test_app_image_check_without_a_marker_fails(real_model_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(real_model_dir, model)
    rec = _app_check(_ship_script(tmp_path), model)
    assert rec.returncode == 1
    assert "cannot record the result" in json.loads(rec.stdout.strip().splitlines()[-1])["detail"]


def test_check_refuses_a_failed_app_image_check(tmp_path: Path) -> None:
    m = {"verify": "app", "verification": {"embedding": {"ok": False, "detail": "dim 3 != 384"}}}
    assert marker.app_check_state(m) == "embedding check in the app's image failed: dim 3 != 384"
    assert marker.app_check_state({**m, "verify": "full"}) is None
    assert marker.app_check_state({"verify": "app", "verification": {"embedding": {"ok": None, "detail": "skipped"}}}) \
        is None
