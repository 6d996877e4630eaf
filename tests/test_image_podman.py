"""Build the image with podman and run it (slow, optional: MP_TEST_PODMAN=1).

No registry is reachable on our machines, so the base image must already be in podman's store:
set MP_PODMAN_BASE_IMAGE to a local image with Python 3.11 (default python:3.11-slim-bookworm, e.g.
made with debootstrap + `podman import`). Building with EMBED=1 also needs PyPI / download.pytorch.org;
MP_PODMAN_EMBED=0 (the default here) builds the small checksums-only image. MP_PODMAN_BUILD_ARGS adds
`podman build` arguments, e.g. behind a TLS-intercepting proxy:
  MP_PODMAN_BUILD_ARGS="-v /etc/ssl/certs/ca-certificates.crt:/run/host-ca.crt:ro --env PIP_CERT=/run/host-ca.crt"
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TMPFS = "/tmp"  # noqa: S108 - inside the container

pytestmark = [
    pytest.mark.podman,
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("MP_TEST_PODMAN") != "1", reason="set MP_TEST_PODMAN=1 to build the image"),
]


# What works on our machines (no Docker engine; runc; bounded ulimits). MP_PODMAN_CONTAINERS_CONF overrides.
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1000:1000"]

[engine]
runtime = "runc"
"""


@pytest.fixture(scope="module", autouse=True)
def containers_conf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    path = os.environ.get("MP_PODMAN_CONTAINERS_CONF")
    if not path:
        conf = tmp_path_factory.mktemp("podman") / "containers.conf"
        conf.write_text(CONTAINERS_CONF)
        path = str(conf)
    old = os.environ.get("CONTAINERS_CONF")
    os.environ["CONTAINERS_CONF"] = path
    yield
    if old is None:
        os.environ.pop("CONTAINERS_CONF", None)
    else:
        os.environ["CONTAINERS_CONF"] = old


def podman(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    if shutil.which("podman") is None:
        pytest.fail("MP_TEST_PODMAN=1 but podman is not installed (apt-get install podman buildah)")
    base = os.environ.get("MP_PODMAN_BASE_IMAGE", "python:3.11-slim-bookworm")
    if podman("image", "exists", base).returncode != 0:
        pytest.fail(f"base image {base} is not in podman's store; set MP_PODMAN_BASE_IMAGE")
    tag = f"localhost/model-provisioner-test:{uuid.uuid4().hex[:8]}"
    proc = podman("build", "--pull=never", "-t", tag, "--build-arg", f"PYTHON_IMAGE={base}",
                  "--build-arg", f"EMBED={os.environ.get('MP_PODMAN_EMBED', '0')}",
                  *shlex.split(os.environ.get("MP_PODMAN_BUILD_ARGS", "")), str(ROOT))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    yield tag
    podman("rmi", "-f", tag)


def test_image_metadata(image: str) -> None:
    (info,) = json.loads(podman("image", "inspect", image).stdout)
    cfg = info["Config"]
    assert cfg["User"] == "10001:10001"
    assert cfg["Entrypoint"] == ["model-provisioner"] and cfg["Cmd"] == ["run"]
    assert "9733/tcp" in cfg["ExposedPorts"]
    assert cfg["Labels"]["org.opencontainers.image.title"] == "model-provisioner"


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
