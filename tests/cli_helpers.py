"""Run `python -m provisioner` as a real process (for kills, signals and exit codes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PROVISIONER_", "HF_TOKEN", "HF_ENDPOINT", "KUBECONFIG"))}
    env.update({"HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")})
    env.update(extra or {})
    return env


def run_args(*, endpoint: str, target: Path, repo_id: str, extra: list[str] | None = None) -> list[str]:
    return [sys.executable, "-m", "provisioner", "run", "--endpoint", endpoint, "--target", str(target),
            "--repo-id", repo_id, "--listen", "off", "--log-format", "json", "--kube", "off",
            "--progress-interval", "1", *(extra or [])]


def run_cli(argv: list[str], *, env: Mapping[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=cli_env(env), capture_output=True, text=True, timeout=timeout, check=False)


def start_cli(argv: list[str], *, env: Mapping[str, str] | None = None, log: Path | None = None) -> subprocess.Popen[str]:
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
    return subprocess.Popen(argv, env=cli_env(env), stdout=out, stderr=subprocess.STDOUT, text=True)


def json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:  # a non-JSON line (e.g. a warning from a library) is not ours to parse
                continue
    return out


def wait_until(predicate: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll `predicate` until true; fail the test with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
