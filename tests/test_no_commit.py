"""A hub that names no commit anywhere (issue 11: some artifact managers' HF remotes send no X-Repo-Commit and
no sha): the revision is provisioned as named, every file still checked with the evidence the sources give,
the marker and /status say the commit is unknown, the versioned layout uses a synthetic `unknown-...` folder
(never a fake sha), and a warm start proves the copy current by re-planning (or takes it as is offline).
A commit that IS given but malformed stays exit 9."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cli_helpers import json_lines, run_args, run_cli
from hub_emulator import HubEmulator

from provisioner.api import provision
from provisioner.config import Config
from provisioner.errors import ExitCode
from provisioner.manifest import unknown_commit_key
from provisioner.observe.progress import Tracker
from provisioner.state import layout, marker

REPO = "org/no-commit"
FILES = {"config.json": b'{"hidden_size": 8}\n', "model.safetensors": bytes(range(256)) * 4096,
         "tokenizer.json": b'{"v": 1}\n'}
CHECK = ["python", "-m", "provisioner", "check"]
# What each profile's sources give once the commit is hidden (the digests do not depend on the commit).
EVIDENCE = {"hf": "sha256", "mirror": "sha256", "bare": "sha256", "xet": "sha256"}


def _run(hub: HubEmulator, target: Path, *extra: str) -> tuple[int, str]:
    res = run_cli(run_args(endpoint=hub.url, target=target, repo_id=REPO,
                           extra=["--verify", "checksums", "--retry-budget", "5", *extra]), timeout=60)
    return res.returncode, res.stderr


@pytest.mark.parametrize("profile", ["hf", "mirror", "bare", "xet"])
def test_no_commit_anywhere_is_ready_with_the_commit_unknown(tmp_path: Path, profile: str) -> None:
    with HubEmulator(profile=profile) as hub:
        hub.add_repo(REPO, FILES)
        hub.faults.hide_commit = True
        target = tmp_path / "m"
        code, stderr = _run(hub, target)
        assert code == 0, stderr[-2000:]
        for p, data in FILES.items():
            assert (target / p).read_bytes() == data, p
        m = marker.read_marker(target)
        assert m is not None and m["commit"] is None and m["commit_known"] is False and m["revision"] == "main"
        evidence = {f["path"]: f["evidence"] for f in m["files"]}
        assert evidence == {"config.json": "git-sha1", "model.safetensors": EVIDENCE[profile],
                            "tokenizer.json": "git-sha1"}
        assert any("names no commit" in str(ln.get("msg")) for ln in json_lines(stderr)), stderr[-2000:]
        assert run_cli([*CHECK, str(target)]).returncode == 0
        assert run_cli([*CHECK, str(target), "--revision", "main"]).returncode == 0
        assert run_cli([*CHECK, str(target), "--revision", "other"]).returncode == ExitCode.NOT_READY


def test_status_says_the_commit_is_unknown(hub: HubEmulator, tmp_path: Path) -> None:
    hub.add_repo(REPO, FILES)
    hub.faults.hide_commit = True
    tracker = Tracker(repo_id=REPO, revision="main")
    result = provision(Config(repo_id=REPO, endpoint=hub.url, target=str(tmp_path / "m"), verify="checksums",
                              kube="off", listen="", retry_budget=5), tracker=tracker)
    assert result.commit is None
    snap = tracker.snapshot()
    assert snap["ready"] is True and snap["commit"] is None and snap["commit_known"] is False


def test_warm_restart_replans_and_serves_the_copy_when_the_files_are_the_same(hub: HubEmulator,
                                                                              tmp_path: Path) -> None:
    hub.add_repo(REPO, FILES)
    hub.faults.hide_commit = True
    target = tmp_path / "m"
    assert _run(hub, target)[0] == 0
    hub.wait_idle()
    hub.reset_stats()
    code, stderr = _run(hub, target)  # the same files: proven current by the plan, no file byte fetched
    assert code == 0, stderr[-2000:]
    hub.wait_idle()
    assert hub.stats.bytes_by_file == {}
    assert hub.stats.requests_for(kind="cdn") == []
    assert all(r.method == "HEAD" for r in hub.stats.requests_for(kind="resolve"))
    assert any(ln.get("msg") == "ready" and ln.get("warm") is True for ln in json_lines(stderr)), stderr[-2000:]
    # The branch changed (a file's content): the plan differs, so the copy is updated.
    hub.replace_file(REPO, "config.json", b'{"hidden_size": 16}\n')
    hub.wait_idle()
    hub.reset_stats()
    code, stderr = _run(hub, target)
    assert code == 0, stderr[-2000:]
    assert (target / "config.json").read_bytes() == b'{"hidden_size": 16}\n'
    hub.wait_idle()
    assert set(hub.stats.bytes_by_file) == {"config.json"}  # the unchanged files were kept
    # Offline: the copy is taken as it is, without a connection.
    hub.reset_stats()
    code, stderr = _run(hub, target, "--offline")
    assert code == 0, stderr[-2000:]
    assert hub.stats.connections == 0


def test_versioned_layout_uses_a_synthetic_folder_key(hub: HubEmulator, tmp_path: Path) -> None:
    hub.add_repo(REPO, FILES)
    hub.faults.hide_commit = True
    target = tmp_path / "m"
    code, stderr = _run(hub, target, "--layout", "versioned")
    assert code == 0, stderr[-2000:]
    key = unknown_commit_key(REPO, "main")
    assert key.startswith("unknown-") and len(key) == len("unknown-") + 16
    assert layout.current_commit(target, "main") == key
    link = layout.link_path(target, "main")
    assert os.readlink(link).endswith(f"/{key}")
    assert (link / "model.safetensors").read_bytes() == FILES["model.safetensors"]
    assert run_cli([*CHECK, str(link), "--revision", "main"]).returncode == 0


def test_expect_commit_cannot_be_checked_without_a_commit(hub: HubEmulator, tmp_path: Path) -> None:
    hub.add_repo(REPO, FILES)
    hub.faults.hide_commit = True
    code, stderr = _run(hub, tmp_path / "m", "--expect-commit", "a" * 40)
    assert code == ExitCode.EXPECT_MISMATCH, stderr[-2000:]
    assert hub.stats.bytes_by_file == {}


@pytest.mark.parametrize("shown", ["not-a-commit", "abc123", "A" * 40, "a" * 41])
@pytest.mark.parametrize("profile", ["hf", "bare"])
def test_a_malformed_commit_stays_exit_9(tmp_path: Path, shown: str, profile: str) -> None:
    with HubEmulator(profile=profile) as hub:
        hub.add_repo(REPO, FILES)
        hub.faults.commit_as = shown
        target = tmp_path / "m"
        code, stderr = _run(hub, target)
        assert code == ExitCode.BAD_REMOTE, stderr[-2000:]
        assert "valid commit sha" in stderr
        assert marker.read_marker(target) is None
        hub.wait_idle()
        assert hub.stats.bytes_by_file == {}

