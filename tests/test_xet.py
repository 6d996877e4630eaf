"""Xet-backed repos (the emulator's `xet` profile advertises Xet like huggingface.co): the native engine
ignores Xet and uses the resolve redirect with Range; `--engine hub` with Xet enabled either works or
fails with one clear line within bounds (never hangs) when the Xet service is refused or unreachable."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import run_args, run_cli
from hub_emulator import HubEmulator

from provisioner.errors import ExitCode

REPO = "org/xet"


def test_native_engine_provisions_a_xet_repo(small_repo: Path, tmp_path: Path) -> None:
    with HubEmulator(profile="xet", xet_auth_status=403) as hub:
        hub.add_repo(REPO, small_repo)
        done = run_cli(run_args(endpoint=hub.url, target=tmp_path / "vol", repo_id=REPO,
                                extra=["--verify", "checksums"]), env={"HF_HUB_DISABLE_XET": ""})
        assert done.returncode == 0, done.stderr + done.stdout
        assert hub.stats.requests_for(kind="xet") == []  # Xet is never asked
        assert any(r.range for r in hub.stats.requests_for(kind="cdn"))  # LFS bytes over ranged HTTP
    assert (tmp_path / "vol" / "model.safetensors").read_bytes() == (small_repo / "model.safetensors").read_bytes()


@pytest.mark.parametrize("xet_auth,code,message", [
    (403, ExitCode.UNAUTHORIZED, "the Xet service refused access"),
    (503, ExitCode.TRANSIENT, "the Xet service may be unavailable"),
    (None, ExitCode.TRANSIENT, "the Xet service may be unavailable"),
], ids=["refused", "unavailable", "unreachable"])
def test_hub_engine_with_xet_enabled_fails_clearly(small_repo: Path, tmp_path: Path, xet_auth: int | None,
                                                   code: int, message: str) -> None:
    with HubEmulator(profile="xet", xet_auth_status=xet_auth) as hub:
        hub.add_repo(REPO, small_repo)
        # the budget bounds a retried Xet failure (plus one of huggingface_hub's own retry rounds, ~23 s,
        # which it does not let us cut short); the subprocess timeout is the "never hangs" check
        done = run_cli(run_args(endpoint=hub.url, target=tmp_path / "vol", repo_id=REPO,
                                extra=["--verify", "checksums", "--engine", "hub", "--retry-budget", "1"]),
                       env={"HF_HUB_DISABLE_XET": ""}, timeout=120)
        assert hub.stats.requests_for(kind="xet") or xet_auth is None  # it really tried Xet
    out = done.stderr + done.stdout
    assert done.returncode == code, out
    assert message in out and "HF_HUB_DISABLE_XET=1" in out and "Traceback" not in out
