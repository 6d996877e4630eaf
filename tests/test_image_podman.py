"""The slim image, built for real with podman (scripts/podman-image.sh, once per test session) and run.

Podman is part of CI: these tests skip only when podman cannot run on the machine at all
(tests/podman_helpers.skip_reason), never because of a setting.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from podman_helpers import ROOT, image_config, image_or_skip, podman

TMPFS = "/tmp"  # noqa: S108 - inside the container

pytestmark = [pytest.mark.podman, pytest.mark.slow, pytest.mark.timeout(1800)]  # a cold image build is in setup

# Settings the build needs (proxy, CA bundle, package index, pip options) that must not leak into the image.
BUILD_ONLY_ENV = re.compile(r"(?i)^(https?_proxy|no_proxy|all_proxy|ftp_proxy|pip_\w+|\w*ca_bundle|\w*ca_certs?\w*"
                            r"|ssl_cert_\w+|torch_\w+|embed)$")


def exposed_port() -> str:
    """The Dockerfile's EXPOSE (the provisioner's default port)."""
    (port,) = re.findall(r"^EXPOSE\s+(\d+)\s*$", (ROOT / "Dockerfile").read_text(), re.M)
    return port


@pytest.fixture(scope="session")
def image() -> str:
    return image_or_skip()  # built once per test process, shared with the other podman test file


def test_image_metadata(image: str) -> None:
    cfg = image_config(image)
    assert cfg["User"] == "10001:10001"
    assert cfg["Entrypoint"] == ["model-provisioner"] and cfg["Cmd"] == ["run"]
    assert f"{exposed_port()}/tcp" in cfg["ExposedPorts"]
    assert cfg["Labels"]["org.opencontainers.image.title"] == "model-provisioner"
    assert cfg["Labels"]["io.model-provisioner.embed"] == "0"


def test_no_build_time_setting_in_the_image_config(image: str) -> None:
    env = dict(item.split("=", 1) for item in image_config(image)["Env"])
    leaked = sorted(k for k in env if BUILD_ONLY_ENV.match(k))
    assert not leaked, f"build-time settings left in the image's Config.Env: {leaked}"
    assert not any("/run/secrets" in v or "ca-certificates.crt" in v for v in env.values()), env
    assert env["PATH"].startswith("/opt/venv/bin:") and env["PROVISIONER_TARGET"] == "/models"


def test_slim_image_has_no_build_tools_tests_or_emulator(image: str) -> None:
    proc = podman("run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c",
                  "ls /opt/venv/bin; python -c 'import provisioner, torch' 2>&1;"
                  " python -c 'import provisioner.testing' 2>&1; ls -a /src /opt/venv/lib/python3.11/site-packages",
                  timeout=120)
    out = proc.stdout
    assert "model-provisioner" in out
    assert "No module named 'torch'" in out, "EMBED=0 must not install torch"
    assert "No module named 'provisioner.testing'" in out, "the hub emulator is test code, not runtime"
    assert not re.search(r"^pip\S*$", out, re.M), "pip is a build tool: not in the runtime venv"
    assert not re.search(r"^(pip|setuptools|wheel|pytest|hub_emulator|tests)(-|$)", out, re.M), out
    assert "ls: cannot access '/src'" in proc.stderr, "the build stage's sources stay in the build stage"


def test_runs_with_a_read_only_root_and_no_network(image: str, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    os.chmod(models, 0o777)
    proc = podman("run", "--rm", "--read-only", "--tmpfs", TMPFS, "--network", "none", "--cap-drop", "ALL",
                  "--security-opt", "no-new-privileges", "-v", f"{models}:/models", image,
                  "check", "/models", timeout=120)
    assert proc.returncode == 10, proc.stdout + proc.stderr  # not ready: no marker yet
    proc = podman("run", "--rm", "--read-only", "--tmpfs", TMPFS, "--network", "none", image, "--help", timeout=120)
    assert proc.returncode == 0 and "run" in proc.stdout
    # `run` with no reachable hub: starts, writes its state as UID 10001, gives up with exit 7 (transient).
    proc = podman("run", "--rm", "--read-only", "--tmpfs", TMPFS, "--network", "none", "--cap-drop", "ALL",
                  "-v", f"{models}:/models", "-e", "PROVISIONER_ENDPOINT=http://127.0.0.1:9",
                  "-e", "PROVISIONER_RETRY_BUDGET=2", "-e", "PROVISIONER_VERIFY=checksums",
                  "-e", "PROVISIONER_LOG_FORMAT=json", "-e", "PROVISIONER_KUBE=off", image, timeout=120)
    assert proc.returncode == 7, proc.stdout + proc.stderr
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert any(rec.get("exit_code") == 7 for rec in lines), proc.stderr
    assert (models / ".provisioner").stat().st_uid == 10001
