"""Air-gapped runs: HF_HUB_OFFLINE / --offline never open a connection (real processes, a counting hub)."""

from __future__ import annotations

import socket
from pathlib import Path

from cli_helpers import json_lines, run_args, run_cli
from hub_emulator import HubEmulator

from provisioner.errors import ExitCode

REPO = "org/offline"


def _closed_port_url() -> str:
    """A loopback URL nothing listens on: a connection attempt would be refused, not hang."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _provision(hub: HubEmulator, target: Path) -> None:
    done = run_cli(run_args(endpoint=hub.url, target=target, repo_id=REPO, extra=["--verify", "checksums"]))
    assert done.returncode == 0, done.stderr + done.stdout


def test_offline_env_serves_a_verified_branch_without_any_connection(hub: HubEmulator, small_repo: Path,
                                                                      tmp_path: Path) -> None:
    hub.add_repo(REPO, small_repo)
    target = tmp_path / "vol"
    _provision(hub, target)
    before = hub.stats.connections
    # revision main (a branch): online, this costs one API call; offline it must cost none
    done = run_cli(run_args(endpoint=hub.url, target=target, repo_id=REPO, extra=["--verify", "checksums"]),
                   env={"HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr + done.stdout
    assert hub.stats.connections == before
    events = json_lines(done.stderr + done.stdout)
    assert any("offline: serving the verified copy" in str(e.get("msg", e.get("message", ""))) for e in events), events


def test_offline_flag_with_the_hub_stopped(hub: HubEmulator, small_repo: Path, tmp_path: Path) -> None:
    hub.add_repo(REPO, small_repo)
    target = tmp_path / "vol"
    _provision(hub, target)
    commit = hub.commit_of(REPO)
    url = hub.url
    hub.stop()
    for revision in ("main", commit):
        done = run_cli(run_args(endpoint=url, target=target, repo_id=REPO,
                                extra=["--verify", "checksums", "--offline", "--revision", revision,
                                       "--retry-budget", "600", "--connect-timeout", "300"]))
        assert done.returncode == 0, done.stderr + done.stdout


def test_offline_without_a_copy_fails_at_once_with_its_own_code(hub: HubEmulator, small_repo: Path,
                                                                 tmp_path: Path) -> None:
    hub.add_repo(REPO, small_repo)
    # a generous budget: only "never connects" can make this return quickly enough for the subprocess timeout
    args = run_args(endpoint=hub.url, target=tmp_path / "empty", repo_id=REPO,
                    extra=["--retry-budget", "900", "--verify", "checksums"])
    done = run_cli(args, env={"PROVISIONER_OFFLINE": "true"}, timeout=60)
    assert done.returncode == ExitCode.OFFLINE == 11, done.stderr + done.stdout
    assert hub.stats.connections == 0
    assert "offline" in done.stderr + done.stdout and "Traceback" not in done.stderr


def test_offline_with_a_copy_of_another_revision_fails(hub: HubEmulator, small_repo: Path, tmp_path: Path) -> None:
    hub.add_repo(REPO, small_repo)
    target = tmp_path / "vol"
    _provision(hub, target)
    done = run_cli(run_args(endpoint=_closed_port_url(), target=target, repo_id=REPO,
                            extra=["--offline", "--revision", "v2", "--verify", "checksums"]), timeout=60)
    assert done.returncode == ExitCode.OFFLINE, done.stderr + done.stdout


def test_offline_false_values_keep_the_hub(hub: HubEmulator, small_repo: Path, tmp_path: Path) -> None:
    hub.add_repo(REPO, small_repo)
    done = run_cli(run_args(endpoint=hub.url, target=tmp_path / "vol", repo_id=REPO, extra=["--verify", "checksums"]),
                   env={"HF_HUB_OFFLINE": "0"})
    assert done.returncode == 0, done.stderr + done.stdout
    assert hub.stats.connections > 0
