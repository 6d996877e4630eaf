"""The init-mode warm start on a verified volume loads nothing but the marker code (issue 13): no
request, no HTTP stack, no pipeline. Anything that needs more takes the full path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import cli_env, run_args, run_cli
from hub_emulator import HubEmulator

REPO = "org/warm"
FILES = {"config.json": b'{"hidden_size": 8}\n', "model.safetensors": bytes(range(256)) * 4096}
HEAVY = ("prometheus_client", "http.server", "huggingface_hub", "httpx2", "provisioner.api")

# Runs the CLI in-process and reports which heavy modules the run loaded, on stdout's last line.
PROBE = ("import json, sys\nfrom provisioner.cli import main\ncode = main(sys.argv[1:])\n"
         f"print(json.dumps({{'code': code, 'loaded': [m for m in {HEAVY!r} if m in sys.modules]}}))\n")


def probe(argv: list[str]) -> dict[str, object]:
    res = subprocess.run([sys.executable, "-c", PROBE, *argv[3:]], env=cli_env(), capture_output=True, text=True,
                         timeout=120, check=False)
    assert res.stdout.strip(), res.stderr[-2000:]
    out: dict[str, object] = json.loads(res.stdout.strip().splitlines()[-1])
    out["stderr"] = res.stderr
    return out


@pytest.fixture
def verified(hub: HubEmulator, tmp_path: Path) -> tuple[HubEmulator, Path, str]:
    commit = hub.add_repo(REPO, FILES)
    target = tmp_path / "m"
    res = run_cli(run_args(endpoint=hub.url, target=target, repo_id=REPO,
                           extra=["--verify", "checksums", "--revision", commit]))
    assert res.returncode == 0, res.stderr[-2000:]
    hub.reset_stats()
    return hub, target, commit


def test_pinned_init_restart_loads_no_http_stack_and_asks_nothing(verified: tuple[HubEmulator, Path, str]) -> None:
    hub, target, commit = verified
    out = probe(run_args(endpoint=hub.url, target=target, repo_id=REPO,
                         extra=["--verify", "checksums", "--revision", commit, "--listen", "127.0.0.1:0"]))
    assert out["code"] == 0, out["stderr"]
    assert out["loaded"] == [], out["loaded"]
    assert hub.stats.requests == []
    ready = [json.loads(ln) for ln in str(out["stderr"]).splitlines() if '"msg": "ready"' in ln]
    assert ready and ready[0]["warm"] is True and ready[0]["commit"] == commit


@pytest.mark.parametrize("extra", [["--linger", "0.1"], ["--reverify"]], ids=["linger-serves-metrics", "reverify"])
def test_anything_more_takes_the_full_path(verified: tuple[HubEmulator, Path, str], extra: list[str]) -> None:
    hub, target, commit = verified
    out = probe(run_args(endpoint=hub.url, target=target, repo_id=REPO,
                         extra=["--verify", "checksums", "--revision", commit, "--listen", "127.0.0.1:0", *extra]))
    assert out["code"] == 0, out["stderr"]
    assert "prometheus_client" in out["loaded"], out["loaded"]


@pytest.mark.parametrize(("settings", "environ"), [
    ({"mode": "sidecar"}, {}),  # a sidecar must serve probes for the pod's life
    ({"kube": "on"}, {}),  # Events and the pod condition report the warm start
    ({}, {"KUBECONFIG": "/etc/kube.conf"}),  # kube=auto with a kubeconfig
    ({"pushgateway": "http://127.0.0.1:9091"}, {}),
])
def test_eligibility_needs_nothing_but_the_marker(settings: dict[str, str], environ: dict[str, str]) -> None:
    from provisioner.config import Config
    from provisioner.serve import warm_path

    pinned = {"repo_id": REPO, "revision": "a" * 40}
    assert warm_path.eligible(Config.from_sources(args=pinned, environ={}), environ={})
    assert not warm_path.eligible(Config.from_sources(args={**pinned, **settings}, environ={}), environ=environ)


def test_a_branch_revision_asks_the_hub_once(verified: tuple[HubEmulator, Path, str]) -> None:
    hub, target, _ = verified
    out = probe(run_args(endpoint=hub.url, target=target, repo_id=REPO, extra=["--verify", "checksums"]))
    assert out["code"] == 0, out["stderr"]
    assert hub.stats.requests_by_kind["api"] == 1  # main may have moved: one API call, no download
    assert hub.stats.bytes_by_file == {} or sum(hub.stats.bytes_by_file.values()) == 0
