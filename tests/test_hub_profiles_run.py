"""`run` against every kind of hub the emulator imitates (hf, mirror, bare, xet), as real processes:
the planner's fallback chain (model_info -> tree -> paths-info -> HEAD) finds sizes and digests wherever
the hub offers them, the model lands byte-exact, `check` passes, a warm start on a pinned commit sends no
request, and every file's evidence level in the marker is exactly what the sources honestly give."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest
from cli_helpers import run_args, run_cli
from hub_emulator import HubEmulator

from provisioner.state import marker

REPO = "org/profiled-model"
# What each profile honestly gives: hf/xet list the LFS sha256 and git blob ids; mirror has them through
# paths-info; bare only through the resolve ETag (its tree oid of an LFS file is the pointer's).
EXPECTED = {"model.safetensors": "sha256"}


@pytest.mark.parametrize("profile", ["hf", "mirror", "bare", "xet"])
def test_run_check_and_warm_start_on_every_profile(real_model_dir: Path, tmp_path: Path, profile: str) -> None:
    with HubEmulator(profile=profile) as hub:
        hub.add_repo(REPO, real_model_dir)
        commit = hub.commit_of(REPO)
        target = tmp_path / "m"
        res = run_cli(run_args(endpoint=hub.url, target=target, repo_id=REPO, extra=["--revision", commit]))
        assert res.returncode == 0, res.stderr[-3000:]
        files = hub.files(REPO)
        for p in files:
            assert filecmp.cmp(real_model_dir / p, target / p, shallow=False), p
        m = marker.read_marker(target)
        assert m is not None and m["commit"] == commit
        evidence = {f["path"]: f["evidence"] for f in m["files"]}
        want = {p: EXPECTED.get(p, "git-sha1") for p in files if p != "pytorch_model.bin"}
        assert {p: e for p, e in evidence.items()} == {p: want[p] for p in evidence}
        assert run_cli(["python", "-m", "provisioner", "check", str(target)]).returncode == 0
        hub.wait_idle()
        before = len(hub.stats.requests)
        res = run_cli(run_args(endpoint=hub.url, target=target, repo_id=REPO, extra=["--revision", commit]))
        assert res.returncode == 0, res.stderr[-3000:]
        hub.wait_idle()
        assert len(hub.stats.requests) == before  # pinned commit + ready marker: no request at all
