"""Podman for the tests: the settings scripts/podman-env.sh writes, a `podman` runner, and the slim image
built ONCE per test process by scripts/podman-image.sh (shared by test_image_podman.py and
test_podman_chart.py). Imports only the standard library and pytest.

Podman is part of CI (scripts/install-tools.sh installs it): `skip_reason()` says why it truly cannot
run here (not installed, `podman info` fails); anything else, e.g. a failed build, fails the test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


@cache
def podman_env() -> dict[str, str]:
    """os.environ plus the CONTAINERS_CONF (runc, bounded ulimits) and image names the scripts use."""
    proc = subprocess.run(
        ["bash", "-c", '. "$1" && printf "%s\\n%s\\n%s" "$CONTAINERS_CONF" "$MP_PODMAN_BASE_IMAGE" "$MP_PODMAN_IMAGE"',
         "podman-env", str(SCRIPTS / "podman-env.sh")],
        capture_output=True, text=True, timeout=30, check=False,  # timeout: it only writes one small file
    )
    assert proc.returncode == 0, proc.stderr
    conf, base, image = proc.stdout.splitlines()
    return {**os.environ, "CONTAINERS_CONF": conf, "MP_PODMAN_BASE_IMAGE": base, "MP_PODMAN_IMAGE": image}


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `podman ARGS` with our settings; never raises on a non-zero exit (callers assert)."""
    return subprocess.run(["podman", *args], capture_output=True, text=True, env=podman_env(),
                          timeout=timeout, check=False)  # timeout: a hung podman must fail the test, not CI


@cache
def skip_reason() -> str | None:
    """Why podman cannot run on this machine at all, or None when it can."""
    if shutil.which("podman") is None:
        return "podman is not installed (scripts/install-tools.sh installs it)"
    try:
        proc = podman("info", "--format", "json", timeout=60)
    except subprocess.TimeoutExpired:  # a podman that cannot even answer `info` cannot run pods either
        return "`podman info` hung for 60 s"
    if proc.returncode != 0:
        return f"`podman info` fails: {proc.stderr.strip()[-500:]}"
    return None


@cache
def build_image() -> tuple[str, str]:
    """Build the slim image (and its debootstrap base when missing); returns (image, the script's size line)."""
    proc = subprocess.run(
        ["bash", str(SCRIPTS / "podman-image.sh")], capture_output=True, text=True, env=podman_env(),
        timeout=1500, check=False,  # timeout: a cold base (debootstrap) + pip build takes ~5 min on 2 shared cores
    )
    assert proc.returncode == 0, f"scripts/podman-image.sh failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    sizes = next((ln for ln in proc.stdout.splitlines() if ln.startswith("image ")), "")
    return podman_env()["MP_PODMAN_IMAGE"], sizes


def image_config(image: str) -> dict[str, Any]:
    proc = podman("image", "inspect", image)
    assert proc.returncode == 0, proc.stderr
    (info,) = json.loads(proc.stdout)
    config: dict[str, Any] = info["Config"]
    return config


def image_or_skip() -> str:
    """For the test files' session fixtures: the built slim image, or a skip saying why podman cannot run."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    name, sizes = build_image()
    print(sizes)
    return name
