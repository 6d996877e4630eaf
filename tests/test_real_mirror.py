"""A real third-party Hugging Face mirror server (olah, from PyPI) run fully offline on loopback from a
local git copy of the bundled real model: `run` provisions it, `check` passes, and every file's evidence
is what olah honestly gives (its local mirror serves git blobs, so every file — the safetensors too, which
is a plain blob in the local git copy — is checked by git blob sha1). Its upstream points at a closed
loopback port, so nothing can leave the machine. olah lives in its own venv (scripts/install-python.sh);
OLAH_CLI overrides the path."""

from __future__ import annotations

import filecmp
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import ROOT, run_args, run_cli, wait_until

from provisioner.state import marker

OLAH = Path(os.environ.get("OLAH_CLI") or ROOT / ".tools/olah-venv/bin/olah-cli")
pytestmark = pytest.mark.skipif(not OLAH.exists(), reason=f"olah not installed at {OLAH} (scripts/install-python.sh)")
REPO = "org/minilm"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _up(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)  # a local connect either succeeds at once or the server is not up yet
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def olah(real_model_dir: Path, tmp_path: Path) -> Iterator[tuple[str, str]]:
    repo = tmp_path / "mirrors/models/org/minilm"
    shutil.copytree(real_model_dir, repo)
    git = ["git", "-c", "user.email=t@example.invalid", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=repo, check=True)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "model"], cwd=repo, check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True,
                            text=True).stdout.strip()
    port = _free_port()
    closed = _free_port()  # nothing listens here: olah's upstream, so offline really is offline
    (tmp_path / "olah.toml").write_text(
        f'[basic]\nhost = "127.0.0.1"\nport = {port}\nhf-scheme = "http"\nhf-netloc = "127.0.0.1:{closed}"\n'
        f'hf-lfs-netloc = "127.0.0.1:{closed}"\nmirror-scheme = "http"\nmirror-netloc = "127.0.0.1:{port}"\n'
        f'mirror-lfs-netloc = "127.0.0.1:{port}"\nmirrors-path = ["{tmp_path / "mirrors"}"]\n'
        f'repos-path = "{tmp_path / "olah-repos"}"\n\n[accessibility]\noffline = true\n')
    log = open(tmp_path / "olah.log", "w")  # noqa: SIM115 - closed after the server stops
    proc = subprocess.Popen([str(OLAH), "-c", str(tmp_path / "olah.toml")], cwd=tmp_path, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _up(port) or proc.poll() is not None, timeout=60, what="olah to listen")
        assert proc.poll() is None, (tmp_path / "olah.log").read_text()[-2000:]
        yield f"http://127.0.0.1:{port}", commit
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_olah_offline_mirror_provisions_the_real_model(olah: tuple[str, str], real_model_dir: Path,
                                                       tmp_path: Path) -> None:
    url, commit = olah
    target = tmp_path / "m"
    res = run_cli(run_args(endpoint=url, target=target, repo_id=REPO))
    assert res.returncode == 0, res.stderr[-3000:]
    m = marker.read_marker(target)
    assert m is not None and m["commit"] == commit
    for f in m["files"]:
        assert filecmp.cmp(real_model_dir / f["path"], target / f["path"], shallow=False), f["path"]
    assert {f["evidence"] for f in m["files"]} == {"git-sha1"}
    assert run_cli(["python", "-m", "provisioner", "check", str(target)]).returncode == 0
