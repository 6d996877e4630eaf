"""The chart's RBAC is exactly what the code calls: replay a run with every Kubernetes feature on
against the strict fake apiserver, map each recorded request to (apiGroup, resource, verb), and compare
with the Role the chart renders for `ci/kubeAll-values.yaml`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from cli_helpers import run_args, start_cli
from fake_apiserver import FakeApiServer
from hub_emulator import HubEmulator

ROOT = Path(__file__).resolve().parents[1]
NS = "models"
VERB = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def _rule_of(method: str, path: str) -> tuple[str, str, str]:
    segs = [s for s in path.split("/") if s]
    if segs[:2] == ["api", "v1"]:
        group, rest = "", segs[4:]  # api/v1/namespaces/<ns>/...
    else:
        group, rest = segs[1], segs[5:]  # apis/<group>/<version>/namespaces/<ns>/...
    resource = rest[0] + ("/" + rest[2] if len(rest) > 2 else "")
    return group, resource, VERB[method]


def _chart_rules() -> set[tuple[str, str, str]]:
    helm = shutil.which("helm") or str(ROOT / ".tools" / "bin" / "helm")
    if not Path(helm).exists():
        pytest.fail("helm is missing: run scripts/install-tools.sh")
    out = subprocess.run([helm, "template", "r", str(ROOT / "charts/model-provisioner"), "-f",
                          str(ROOT / "charts/model-provisioner/ci/kubeAll-values.yaml")],
                         capture_output=True, text=True, check=True).stdout
    rules = set()
    for doc in yaml.safe_load_all(out):
        if doc and doc.get("kind") == "Role":
            for r in doc["rules"]:
                rules |= {(g, res, v) for g in r["apiGroups"] for res in r["resources"] for v in r["verbs"]}
    return rules


def test_code_calls_only_what_the_chart_grants(hub: HubEmulator, small_repo: Path, tmp_path: Path) -> None:
    hub.add_repo("org/small", small_repo)
    hub.fail_next(2, status=503, kind="cdn")  # a retry, so Retrying Events are posted too
    fake = FakeApiServer().start()
    try:
        pods = ["replica-0", "replica-1"]
        for p in pods:
            fake.add_pod(NS, p)
        kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
        procs = [start_cli(run_args(endpoint=hub.url, target=tmp_path / "vol", repo_id="org/small",
                                    extra=["--verify", "checksums", "--kube", "on", "--coordination", "lease",
                                           "--readiness-condition", "model-provisioner/ready",
                                           "--backoff-max", "0.2"]),
                           env={"KUBECONFIG": str(kubeconfig), "POD_NAME": p, "POD_NAMESPACE": NS},
                           log=tmp_path / f"{p}.log") for p in pods]
        assert [p.wait(120) for p in procs] == [0, 0], [(tmp_path / f"{p}.log").read_text()[-1500:] for p in pods]
        used = {_rule_of(r.method, r.path) for r in fake.requests}
        # 404 (a Lease not created yet) and 409 (lost a race) are normal; these would be bugs:
        rejected = [(r.method, r.path, r.status) for r in fake.requests if r.status in (400, 401, 403, 415, 422)]
    finally:
        fake.stop()
    granted = _chart_rules()
    assert used <= granted, f"the code calls what the chart does not grant: {sorted(used - granted)}"
    # least privilege: every verb granted is one the code uses in such a run (events patch aggregates
    # repeated Events, so it may not appear in a short run)
    assert granted - used <= {("", "events", "patch")}, f"granted but never used: {sorted(granted - used)}"
    assert not rejected, rejected
