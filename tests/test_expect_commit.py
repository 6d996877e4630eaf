"""Pin by content (issue 11): `--expect-commit SHA` with a branch revision. When the hub resolves the branch
to another commit the run fails with exit 13 before a single file byte is served (asserted on the emulator's
byte counters, not only the exit code), and nothing is marked ready; a matching commit is provisioned; a
verified copy of another commit is never served as ready, neither warm nor offline."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import json_lines, run_args, run_cli
from hub_emulator import HubEmulator

from provisioner.config import Config
from provisioner.errors import ConfigError, ExitCode
from provisioner.state import marker

REPO = "org/pinned"
FILES = {"config.json": b'{"hidden_size": 8}\n', "model.safetensors": bytes(range(256)) * 4096}
CHECK = ["python", "-m", "provisioner", "check"]


def _run(hub: HubEmulator, target: Path, *extra: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    res = run_cli(run_args(endpoint=hub.url, target=target, repo_id=REPO,
                           extra=["--verify", "checksums", "--retry-budget", "5", *extra]), env=env, timeout=60)
    return res.returncode, res.stderr


def _error_line(stderr: str) -> dict[str, object]:
    errors = [ln for ln in json_lines(stderr) if ln.get("level") == "error" and "exit_code" in ln
              and "event" not in ln]
    assert len(errors) == 1, stderr[-2000:]
    return errors[0]


def test_branch_that_moved_fails_with_exit_13_before_any_file_byte(hub: HubEmulator, tmp_path: Path) -> None:
    expected = hub.add_repo(REPO, FILES)
    moved = hub.replace_file(REPO, "config.json", b'{"hidden_size": 16}\n')  # main moves on
    target = tmp_path / "m"
    code, stderr = _run(hub, target, "--expect-commit", expected)
    assert code == ExitCode.EXPECT_MISMATCH, stderr[-2000:]
    line = _error_line(stderr)
    assert expected in str(line["msg"]) and moved in str(line["msg"]), line
    assert "Traceback" not in stderr
    hub.wait_idle()
    assert hub.stats.bytes_by_file == {}, "a file byte was served although the branch had moved"
    assert hub.stats.requests_for(kind="resolve") == [] and hub.stats.requests_for(kind="cdn") == []
    assert marker.read_marker(target) is None
    assert run_cli([*CHECK, str(target)]).returncode == ExitCode.NOT_READY


def test_matching_commit_is_ready(hub: HubEmulator, tmp_path: Path) -> None:
    expected = hub.add_repo(REPO, FILES)
    target = tmp_path / "m"
    code, stderr = _run(hub, target, "--expect-commit", expected.upper())  # hex case does not matter
    assert code == 0, stderr[-2000:]
    m = marker.read_marker(target)
    assert m is not None and m["commit"] == expected and m["revision"] == "main"
    assert run_cli([*CHECK, str(target)]).returncode == 0


def test_a_verified_copy_of_another_commit_is_not_served(hub: HubEmulator, tmp_path: Path) -> None:
    """Warm start: the volume holds the old commit; the branch moved; the user expects the old one → 13
    (the hub is asked, nothing is fetched). Expecting the new one → re-provisioned, ready on the new one."""
    old = hub.add_repo(REPO, FILES)
    target = tmp_path / "m"
    assert _run(hub, target)[0] == 0
    new = hub.replace_file(REPO, "config.json", b'{"hidden_size": 16}\n')
    hub.wait_idle()
    hub.reset_stats()
    code, stderr = _run(hub, target, "--expect-commit", old)
    assert code == ExitCode.EXPECT_MISMATCH, stderr[-2000:]
    hub.wait_idle()
    assert hub.stats.bytes_by_file == {}
    code, stderr = _run(hub, target, "--expect-commit", new)
    assert code == 0, stderr[-2000:]
    m = marker.read_marker(target)
    assert m is not None and m["commit"] == new


@pytest.mark.parametrize("fast", [True, False], ids=["init-fast-path", "full-path"])
def test_offline_copy_of_another_commit_is_not_ready(hub: HubEmulator, tmp_path: Path, fast: bool) -> None:
    hub.add_repo(REPO, FILES)
    target = tmp_path / "m"
    assert _run(hub, target)[0] == 0
    hub.wait_idle()
    hub.reset_stats()
    other = "b" * 40
    extra = ["--offline", "--expect-commit", other] + ([] if fast else ["--linger", "0.1"])
    code, stderr = _run(hub, target, *extra)
    assert code == ExitCode.OFFLINE, stderr[-2000:]
    assert other in str(_error_line(stderr)["msg"])
    assert hub.stats.connections == 0
    good = hub.commit_of(REPO)
    assert _run(hub, target, "--offline", "--expect-commit", good)[0] == 0


def test_pinned_revision_contradicting_expect_commit_is_a_usage_error() -> None:
    a, b = "a" * 40, "b" * 40
    with pytest.raises(ConfigError, match="expect-commit"):
        Config.from_sources(args={"revision": a, "expect_commit": b}, environ={})
    assert Config.from_sources(args={"revision": a, "expect_commit": a.upper()}, environ={}).expect_commit == a
    assert Config.from_sources(args={}, environ={"PROVISIONER_EXPECT_COMMIT": b}).expect_commit == b


def test_pinned_revision_contradicting_expect_commit_exits_2_through_the_cli(tmp_path: Path) -> None:
    res = run_cli(run_args(endpoint="http://127.0.0.1:9", target=tmp_path / "m", repo_id=REPO,
                           extra=["--revision", "a" * 40, "--expect-commit", "b" * 40]), timeout=30)
    assert res.returncode == ExitCode.USAGE, res.stderr[-2000:]
    assert "expect-commit" in res.stderr and not (tmp_path / "m").exists()
