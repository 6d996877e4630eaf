"""Air-gapped nodes (issue 11): offline never opens a connection to the hub; a verified volume answers,
anything else fails at once with exit 11. And the HF_* environment users already set maps to our settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import json_lines, run_args, run_cli
from hub_emulator import HubEmulator

from provisioner.config import Config, read_token
from provisioner.errors import ExitCode
from provisioner.state import marker

REPO = "org/offline"
FILES = {"config.json": b'{"hidden_size": 8}\n', "model.safetensors": bytes(range(256)) * 4096}


@pytest.fixture
def verified(hub: HubEmulator, tmp_path: Path) -> tuple[HubEmulator, Path]:
    hub.add_repo(REPO, FILES)
    target = tmp_path / "m"
    res = run_cli(run_args(endpoint=hub.url, target=target, repo_id=REPO, extra=["--verify", "checksums"]))
    assert res.returncode == 0, res.stderr[-2000:]
    hub.reset_stats()
    return hub, target


@pytest.mark.parametrize(("how", "extra"), [
    ({"HF_HUB_OFFLINE": "1"}, []),  # the variable users already set for huggingface_hub
    ({}, ["--offline"]),
    ({}, ["--offline", "--linger", "0.1", "--listen", "127.0.0.1:0"]),  # the full path (metrics, listener)
], ids=["HF_HUB_OFFLINE", "flag", "flag-full-path"])
def test_offline_branch_on_a_verified_volume_is_ready_without_a_connection(
        verified: tuple[HubEmulator, Path], how: dict[str, str], extra: list[str]) -> None:
    hub, target = verified
    res = run_cli(run_args(endpoint=hub.url, target=target, repo_id=REPO, extra=["--verify", "checksums", *extra]),
                  env=how)
    assert res.returncode == 0, res.stderr[-2000:]
    assert hub.stats.connections == 0, "offline opened a connection to the hub"
    assert any(ln.get("msg") == "ready" and ln.get("warm") is True for ln in json_lines(res.stderr)), res.stderr


def test_offline_on_an_empty_volume_fails_at_once_with_exit_11(hub: HubEmulator, tmp_path: Path) -> None:
    hub.add_repo(REPO, FILES)
    target = tmp_path / "m"
    res = run_cli(run_args(endpoint=hub.url, target=target, repo_id=REPO, extra=["--verify", "checksums"]),
                  env={"HF_HUB_OFFLINE": "1"}, timeout=30)
    assert res.returncode == ExitCode.OFFLINE, res.stderr[-2000:]
    assert hub.stats.connections == 0
    assert "Traceback" not in res.stderr
    errors = [ln for ln in json_lines(res.stderr) if ln.get("level") == "error" and "exit_code" in ln
              and "event" not in ln]  # the final outcome line (the tracker's `failed` event repeats it)
    assert len(errors) == 1 and "no verified copy" in errors[0]["msg"], errors
    assert not target.exists(), "an offline failure must not create anything"


def test_offline_with_another_revision_on_the_volume_fails(verified: tuple[HubEmulator, Path]) -> None:
    hub, target = verified
    res = run_cli(run_args(endpoint=hub.url, target=target, repo_id=REPO,
                           extra=["--verify", "checksums", "--offline", "--revision", "v2"]), timeout=30)
    assert res.returncode == ExitCode.OFFLINE, res.stderr[-2000:]
    assert hub.stats.connections == 0
    assert marker.check_ready(target, repo_id=REPO).ok, "the verified copy must stay as it was"


def test_offline_reverify_is_a_usage_error(verified: tuple[HubEmulator, Path]) -> None:
    hub, target = verified
    res = run_cli(run_args(endpoint=hub.url, target=target, repo_id=REPO,
                           extra=["--verify", "checksums", "--offline", "--reverify"]), timeout=30)
    assert res.returncode == ExitCode.USAGE, res.stderr[-2000:]
    assert hub.stats.connections == 0


# ---- the HF environment ---------------------------------------------------------------------------

def test_hf_variables_map_to_settings_with_provisioner_ones_and_flags_winning() -> None:
    hf = {"HF_HUB_OFFLINE": "1", "HF_HUB_DOWNLOAD_TIMEOUT": "25", "HF_HUB_ETAG_TIMEOUT": "7",
          "HF_ENDPOINT": "https://mirror.example"}
    cfg = Config.from_sources(environ=hf)
    assert (cfg.offline, cfg.stall_timeout, cfg.api_timeout, cfg.endpoint) == (True, 25.0, 7.0, "https://mirror.example")
    ours = Config.from_sources(environ={**hf, "PROVISIONER_STALL_TIMEOUT": "90", "PROVISIONER_OFFLINE": "false"})
    assert (ours.stall_timeout, ours.offline) == (90.0, False)
    flag = Config.from_sources(args={"api_timeout": "3"}, environ=hf)
    assert flag.api_timeout == 3.0


def test_token_order_is_token_file_then_hf_token_then_hf_token_path(tmp_path: Path) -> None:
    hf_file = tmp_path / "hf-token"
    hf_file.write_text("from-hf-token-path\n")
    ours = tmp_path / "secret"
    ours.write_text("from-token-file\n")
    assert read_token(token_file="", environ={"HF_TOKEN_PATH": str(hf_file)}) == "from-hf-token-path"
    assert read_token(token_file="", environ={"HF_TOKEN_PATH": str(hf_file), "HF_TOKEN": "env"}) == "env"
    assert read_token(token_file=str(ours), environ={"HF_TOKEN": "env"}) == "from-token-file"
    assert read_token(token_file="", environ={"HF_TOKEN_PATH": str(tmp_path / "absent")}) is None
