"""The chart's "works in a real cluster" guarantees (issue 12, docs/chart.md), each as assertions on rendered YAML.

Every test names the numbered item it guards. Renders of the ci values files come from the shared cache in
chart_helpers; the few `--set` variants are rendered once per module through `variant`.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from chart_helpers import (
    CASES,
    CHART,
    NAMESPACE,
    RELEASE,
    _values_args,
    app_spec,
    container,
    containers,
    docs,
    env_of,
    helm_path,
    kinds,
    kube_settings,
    one,
    pod_specs,
    render,
    run,
    target,
    template_fails,
    values,
)

from provisioner.config import DEFAULT_EXCLUDE, Config

SA_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"


@pytest.fixture(scope="module")
def helm() -> str:
    return helm_path()


@cache
def variant(helm: str, *args: str) -> list[dict[str, Any]]:
    """A render with extra args, once per module."""
    return render(helm, *args)


def deployment_spec(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objs, "Deployment")["spec"]["template"]["spec"]


# ---- 1. hostPath ownership -----------------------------------------------------------------------------

@pytest.mark.parametrize("case,kind", [("hostPath", "Deployment"), ("nodeCache", "DaemonSet")])
def test_1_hostpath_writer_gets_a_root_chown_step_and_nothing_else(helm: str, case: str, kind: str) -> None:
    spec = one(docs(helm, case), kind)["spec"]["template"]["spec"]
    fix = spec["initContainers"][0]
    assert fix["name"] == "fix-permissions", "it must run before the provisioner"
    assert fix["command"] == ["chown", "10001:10001", target(case)]
    assert fix["image"] == container(spec, "model-provisioner")["image"]
    sc = fix["securityContext"]
    assert sc["runAsUser"] == 0 and sc["runAsNonRoot"] is False
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert [m["name"] for m in fix["volumeMounts"]] == ["models"], "no token, no other volume"
    assert spec["automountServiceAccountToken"] is False


def test_1_chown_uses_the_provisioner_uid_and_gid_and_can_be_turned_off(helm: str) -> None:
    spec = deployment_spec(variant(helm, *_values_args("hostPath"), "--set", "provisioner.securityContext.runAsUser=20001",
                                   "--set", "provisioner.securityContext.runAsGroup=20002"))
    assert container(spec, "fix-permissions")["command"][1] == "20001:20002"
    off = deployment_spec(variant(helm, *_values_args("hostPath"), "--set", "storage.hostPath.fixPermissions=false"))
    assert all(c["name"] != "fix-permissions" for c in containers(off))


def test_1_read_only_node_cache_readers_do_not_chown(helm: str) -> None:
    assert all(c["name"] != "fix-permissions" for c in containers(app_spec(helm, "nodeCache")))
    prepared = app_spec(helm, "hostPathPrepared")
    assert all(c["name"] != "fix-permissions" for c in containers(prepared))
    assert next(v for v in prepared["volumes"] if v["name"] == "models")["hostPath"]["type"] == "Directory"


def test_listen_off_renders_no_port_in_init_mode(helm: str) -> None:
    objs = docs(helm, "listenOff")
    prov = container(deployment_spec(objs), "model-provisioner")
    assert env_of(prov)["PROVISIONER_LISTEN"] == "off" and "ports" not in prov
    assert "off" in template_fails(helm, *_values_args("listenOff"), "--set", "mode=sidecar")


# ---- 2. native sidecars need 1.29 ----------------------------------------------------------------------

def test_2_native_sidecar_refuses_kubernetes_below_1_29(helm: str) -> None:
    err = template_fails(helm, "--set", "mode=nativeSidecar", "--kube-version", "1.28.0")
    assert "mode=nativeSidecar needs Kubernetes >= 1.29" in err and "v1.28.0" in err and "mode=sidecar" in err, err
    spec = deployment_spec(variant(helm, "--set", "mode=nativeSidecar", "--kube-version", "1.29.0"))
    assert container(spec, "model-provisioner")["restartPolicy"] == "Always"
    deployment_spec(variant(helm, "--set", "mode=sidecar", "--kube-version", "1.28.0"))  # the alternative renders


# ---- 3. the app's own security context, /tmp and HOME ---------------------------------------------------

def test_3_app_does_not_inherit_the_provisioners_locked_down_context(helm: str) -> None:
    spec = app_spec(helm, "default")
    app = container(spec, "app")
    sc = app["securityContext"]
    assert "readOnlyRootFilesystem" not in sc and "runAsUser" not in sc
    assert sc["runAsNonRoot"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert {"name": "app-tmp", "mountPath": "/tmp"} in app["volumeMounts"]  # noqa: S108
    assert next(v for v in spec["volumes"] if v["name"] == "app-tmp") == {"name": "app-tmp", "emptyDir": {"sizeLimit": "1Gi"}}
    assert env_of(app)["HOME"] == "/tmp"  # noqa: S108
    assert all(m["name"] != "provisioner-tmp" for m in app["volumeMounts"]), "the app does not share the provisioner's /tmp"


def test_3_app_read_only_root_keeps_a_writable_tmp_and_home(helm: str) -> None:
    spec = app_spec(helm, "appHardened")
    app = container(spec, "app")
    assert app["securityContext"]["readOnlyRootFilesystem"] is True
    assert env_of(app)["HOME"] == "/tmp/home"  # noqa: S108
    assert next(v for v in spec["volumes"] if v["name"] == "app-tmp")["emptyDir"] == {"sizeLimit": "256Mi"}


def test_3_users_home_is_not_duplicated(helm: str) -> None:
    app = container(deployment_spec(variant(helm, "--set", "app.env[0].name=HOME", "--set", "app.env[0].value=/data")),
                    "app")
    assert [e["value"] for e in app["env"] if e["name"] == "HOME"] == ["/data"]


# ---- 4. ReadWriteOnce claims ---------------------------------------------------------------------------

def test_4_rwo_claim_recreates_and_refuses_several_replicas(helm: str) -> None:
    assert one(docs(helm, "pvc"), "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    assert "strategy" not in one(docs(helm, "kubeAll"), "Deployment")["spec"], "RWX: default RollingUpdate"
    err = template_fails(helm, *_values_args("pvc"), "--set", "app.replicas=2")
    assert "storage.type=pvc with accessModes [ReadWriteOnce] cannot be shared by app.replicas=2 pods" in err, err
    err = template_fails(helm, "--set", "storage.type=pvc", "--set", "storage.pvc.accessModes={ReadWriteOncePod}",
                         "--set", "app.replicas=3")
    assert "app.replicas=3" in err, err


# ---- 5. never the namespace's default ServiceAccount -----------------------------------------------------

def test_5_existing_service_account_is_bound_by_name(helm: str) -> None:
    objs = docs(helm, "existingServiceAccount")
    assert not kinds(objs, "ServiceAccount")
    binding = one(objs, "RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "model-reader", "namespace": NAMESPACE}]
    assert deployment_spec(objs)["serviceAccountName"] == "model-reader"


def test_5_no_role_for_the_default_service_account(helm: str) -> None:
    err = template_fails(helm, "--set", "serviceAccount.create=false", "--set", "kube.events=on")
    assert "serviceAccount.create=false with a kube feature on" in err and "serviceAccount.name" in err, err
    objs = variant(helm, "--set", "serviceAccount.create=false")
    assert not kinds(objs, "Role") and not kinds(objs, "RoleBinding") and not kinds(objs, "ServiceAccount")
    for case in CASES:
        for binding in kinds(docs(helm, case), "RoleBinding"):
            assert all(s["name"] != "default" for s in binding["subjects"]), case


# ---- 7. Events: POD_UID and per-feature RBAC -------------------------------------------------------------

@pytest.mark.parametrize("case", CASES)
def test_7_events_get_the_pod_uid(helm: str, case: str) -> None:
    events_on = kube_settings(case)["events"]
    for where, spec in pod_specs(docs(helm, case)):
        for c in containers(spec):
            if c["name"] != "model-provisioner":
                assert "POD_UID" not in env_of(c), (where, c["name"])
                continue
            env = env_of(c)
            assert env["PROVISIONER_EVENTS"] == ("on" if events_on else "off"), where
            assert env.get("POD_UID") == ({"fieldRef": {"fieldPath": "metadata.uid"}} if events_on else None), where


@pytest.mark.parametrize("sets,resources", [
    (["kube.events=on"], [["events"]]),
    (["kube.coordination=lease", "kube.events=off", "storage.type=existingClaim", "storage.existingClaim.name=x"],
     [["leases"]]),
    # events=auto follows the API use: a Lease turns Events on
    (["kube.coordination=lease", "storage.type=existingClaim", "storage.existingClaim.name=x"], [["events"], ["leases"]]),
    (["kube.readinessCondition=example.com/ready", "kube.events=off"], [["pods"], ["pods/status"]]),
])
def test_7_rbac_rules_only_for_enabled_features(helm: str, sets: list[str], resources: list[list[str]]) -> None:
    args = [a for s in sets for a in ("--set", s)]
    (role,) = kinds(variant(helm, *args), "Role")
    assert [r["resources"] for r in role["rules"]] == resources


# ---- 8. API credentials in the provisioner container only ----------------------------------------------

@pytest.mark.parametrize("case", CASES)
def test_8_only_the_provisioner_container_gets_a_token(helm: str, case: str) -> None:
    k = kube_settings(case)
    on = k["events"] or k["lease"] or bool(k["condition"])
    for where, spec in pod_specs(docs(helm, case)):
        assert spec["automountServiceAccountToken"] is False, where
        vols = {v["name"]: v for v in spec.get("volumes", [])}
        has_prov = any(c["name"] == "model-provisioner" for c in containers(spec))
        assert ("provisioner-kube-api" in vols) is (on and has_prov), where
        for c in containers(spec):
            token_mounts = [m for m in c.get("volumeMounts", []) if m["name"] == "provisioner-kube-api"]
            if c["name"] == "model-provisioner" and on:
                assert token_mounts == [{"name": "provisioner-kube-api", "mountPath": SA_PATH, "readOnly": True}]
            else:
                assert not token_mounts, (where, c["name"])
                assert all(m["mountPath"] != SA_PATH for m in c.get("volumeMounts", [])), (where, c["name"])
        if "provisioner-kube-api" in vols:
            sources = vols["provisioner-kube-api"]["projected"]["sources"]
            assert sources[0] == {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}
            assert sources[1] == {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}
            assert sources[2]["downwardAPI"]["items"] == [
                {"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]


# ---- 9. emptyDir sizeLimit vs the disk preflight; memory medium -----------------------------------------

def test_9_empty_dir_size_limit_becomes_an_ephemeral_storage_request(helm: str) -> None:
    res = container(app_spec(helm, "default"), "model-provisioner")["resources"]
    assert res["requests"]["ephemeral-storage"] == "5Gi", "sizeLimit: the scheduler reserves room for the model"
    assert res["limits"]["ephemeral-storage"] == "7Gi", "model + provisioner /tmp + app /tmp: never evicts earlier"
    for case in ("pvc", "hostPath", "memoryMedium"):
        res = container(app_spec(helm, case), "model-provisioner")["resources"]
        assert "ephemeral-storage" not in res.get("requests", {}), case
    own = {"requests": {"ephemeral-storage": "2Gi"}}
    res = container(deployment_spec(variant(helm, "--set-json", f"provisioner.resources={own}".replace("'", '"'))),
                    "model-provisioner")["resources"]
    assert res == own, "the user's own ephemeral-storage wins"


def test_9_memory_medium_needs_a_size_limit_and_a_memory_limit_that_holds_it(helm: str) -> None:
    vol = next(v for v in app_spec(helm, "memoryMedium")["volumes"] if v["name"] == "models")
    assert vol["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Gi"}
    err = template_fails(helm, "--set", "storage.emptyDir.medium=Memory", "--set", "storage.emptyDir.sizeLimit=null")
    assert "storage.emptyDir.medium=Memory needs storage.emptyDir.sizeLimit" in err, err
    err = template_fails(helm, "--set", "storage.emptyDir.medium=Memory")  # 5Gi of files, 512Mi limit (checksums)
    assert "count against the provisioner's memory limit 512Mi" in err, err


# ---- 10. init mode failures reach Prometheus -------------------------------------------------------------

@pytest.mark.parametrize("case,args,linger", [
    ("initMonitored", [], "30"),  # 2 x 15s
    ("podMonitor", [], "20"),  # 2 x 10s
    ("initMonitored", ["--set", "provisioner.pushgateway=http://pgw:9091"], None),  # the push carries the outcome
    ("initMonitored", ["--set", "provisioner.linger=0"], "0"),  # explicit wins
    ("initMonitored", ["--set", "mode=nativeSidecar"], None),  # keeps serving anyway
    ("default", [], None),  # nothing scrapes
])
def test_10_init_mode_lingers_two_scrape_intervals_when_scraped(
        helm: str, case: str, args: list[str], linger: str | None) -> None:
    objs = variant(helm, *_values_args(case), *args) if args else docs(helm, case)
    prov = container(deployment_spec(objs), "model-provisioner")
    assert env_of(prov).get("PROVISIONER_LINGER") == linger


# ---- 11. NetworkPolicy admits the chart's own helm test --------------------------------------------------

def test_11_network_policy_admits_the_helm_test_pod_in_init_mode(helm: str) -> None:
    objs = variant(helm, *_values_args("networkPolicy"), "--set", "mode=init")
    test_pod = one(objs, "Pod")
    target_url = test_pod["spec"]["containers"][0]["command"][3]
    assert target_url == f"tcp://{RELEASE}-model-provisioner.{NAMESPACE}.svc:8000"
    np = one(objs, "NetworkPolicy")["spec"]
    app_rule = next(r for r in np["ingress"] if r["ports"] == [{"port": 8000, "protocol": "TCP"}])
    assert any(p.get("podSelector", {}).get("matchLabels", {}).items() <= test_pod["metadata"]["labels"].items()
               for p in app_rule["from"] if "podSelector" in p)


# ---- 12. model.exclude can be emptied ---------------------------------------------------------------------

def test_12_empty_exclude_renders_an_empty_setting_and_null_keeps_the_default(helm: str) -> None:
    env = env_of(container(app_spec(helm, "excludeNothing"), "model-provisioner"))
    assert env["PROVISIONER_EXCLUDE"] == ""
    assert Config.from_sources(environ={"PROVISIONER_EXCLUDE": env["PROVISIONER_EXCLUDE"]}).exclude == ()
    env = env_of(container(app_spec(helm, "default"), "model-provisioner"))
    assert "PROVISIONER_EXCLUDE" not in env
    assert Config.from_sources(environ={}).exclude == tuple(DEFAULT_EXCLUDE.split(","))
    assert env_of(container(app_spec(helm, "allSettings"), "model-provisioner"))["PROVISIONER_EXCLUDE"] == "onnx/*"
    assert "/model/exclude" in template_fails(helm, "--set-json", 'model.exclude=[""]')


# ---- 13. resources by verify level ------------------------------------------------------------------------

@pytest.mark.parametrize("case,request_mem,limit_mem", [
    ("default", "128Mi", "512Mi"),  # verify=checksums: the slim image's default
    ("init", "128Mi", "512Mi"),
    ("appCheck", "128Mi", "512Mi"),  # verify=app: the model is loaded by the embedding-check container, not here
    ("nativeSidecar", "768Mi", "1536Mi"),  # verify=full
])
def test_13_provisioner_resources_follow_the_verify_level(
        helm: str, case: str, request_mem: str, limit_mem: str) -> None:
    res = container(app_spec(helm, case), "model-provisioner")["resources"]
    assert res["requests"]["memory"] == request_mem and res["limits"]["memory"] == limit_mem
    assert res["requests"]["cpu"] == "100m"


def test_13_explicit_resources_win(helm: str) -> None:
    res = container(app_spec(helm, "memoryMedium"), "model-provisioner")["resources"]
    assert res == values("memoryMedium")["provisioner"]["resources"]


# ---- style: monitoring kinds, pod labels, scrapeTimeout --------------------------------------------------

def test_monitoring_kinds_only_when_the_api_is_served_or_forced(helm: str) -> None:
    bare = run([helm, "template", RELEASE, str(CHART), "-n", NAMESPACE, *_values_args("podMonitor")])
    assert bare.returncode == 0, bare.stderr
    assert "monitoring.coreos.com" not in bare.stdout
    assert one(docs(helm, "podMonitor"), "PodMonitor")  # rendered with --api-versions monitoring.coreos.com/v1
    forced = run([helm, "template", RELEASE, str(CHART), "-n", NAMESPACE, *_values_args("initMonitored")])
    assert "kind: PodMonitor" in forced.stdout and "kind: PrometheusRule" in forced.stdout
    notes = run([helm, "install", RELEASE, str(CHART), "-n", NAMESPACE, "--dry-run=client", *_values_args("podMonitor")])
    assert "NOT RENDERED" in notes.stdout and "metrics.forceMonitoringApi" in notes.stdout


@pytest.mark.parametrize("case", CASES)
def test_pod_templates_carry_no_chart_version_labels(helm: str, case: str) -> None:
    for d in docs(helm, case):
        assert "helm.sh/chart" in d["metadata"].get("labels", {}), f"{d['kind']} keeps the chart label"
        if d["kind"] in ("Deployment", "DaemonSet"):
            labels = d["spec"]["template"]["metadata"]["labels"]
            assert "helm.sh/chart" not in labels and "app.kubernetes.io/version" not in labels, d["kind"]
            assert d["spec"]["selector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("interval,timeout", [("10s", "10s"), ("5s", "5s"), ("1m", "10s"), ("500ms", "500ms")])
def test_scrape_timeout_is_derived_from_the_interval(helm: str, interval: str, timeout: str) -> None:
    objs = variant(helm, "--set", "metrics.podMonitor.enabled=true", "--set", f"metrics.podMonitor.interval={interval}")
    (ep,) = one(objs, "PodMonitor")["spec"]["podMetricsEndpoints"]
    assert (ep["interval"], ep["scrapeTimeout"]) == (interval, timeout)


def test_scrape_timeout_longer_than_the_interval_fails(helm: str) -> None:
    err = template_fails(helm, "--set", "metrics.serviceMonitor.enabled=true",
                         "--set", "metrics.serviceMonitor.interval=5s", "--set", "metrics.serviceMonitor.scrapeTimeout=10s")
    assert "scrapeTimeout 10s is longer than the scrape interval 5s" in err, err


def test_docs_name_only_tests_that_exist() -> None:
    """docs/chart.md "Works in a real cluster" cites tests by name: each must exist, each item must cite one."""
    section = (CHART.parents[1] / "docs" / "chart.md").read_text().split("## Works in a real cluster", 1)[1]
    section = section.split("\n## ", 1)[0]
    cited = set(re.findall(r"`(?:tests/test_chart\.py::)?(test_\w+)`", section))
    sources = (Path(__file__).read_text(), (Path(__file__).parent / "test_chart.py").read_text())
    here = {n for text in sources for n in re.findall(r"^def (test_\w+)\(", text, re.M)}
    assert cited and not cited - here, f"docs cite missing tests: {sorted(cited - here)}"
    for item in ("1", "2", "3", "4", "5", "7", "8", "9", "10", "11", "12", "13"):
        assert re.search(rf"^\| {item} \|.*`test_{item}_", section, re.M), f"item {item} cites no test_{item}_* test"


# ---- 6. revision-safe upgrades on shared volumes ---------------------------------------------------------

@pytest.mark.parametrize("revision", ["main", "refs/pr/1", "v1.0+cu121", "a" * 40])
def test_6_versioned_layout_app_reads_the_revision_link(helm: str, revision: str) -> None:
    """On a volume that outlives the pod the app reads <target>/revisions/<link>, named exactly as the
    provisioner names it, and the provisioner runs with --layout versioned."""
    from provisioner.state import layout

    objs = variant(helm, "--set", "storage.type=pvc", "--set-string", f"model.revision={revision}")
    spec = deployment_spec(objs)
    prov = next(c for c in containers(spec) if env_of(c).get("PROVISIONER_TARGET"))
    assert env_of(prov)["PROVISIONER_LAYOUT"] == "versioned"
    app = container(spec, "app")
    assert env_of(app)["MODEL_DIR"] == f"/models/revisions/{layout.link_name(revision)}"


def test_6_emptydir_keeps_the_flat_layout(helm: str) -> None:
    spec = deployment_spec(variant(helm))
    prov = next(c for c in containers(spec) if env_of(c).get("PROVISIONER_TARGET"))
    assert env_of(prov)["PROVISIONER_LAYOUT"] == "flat"
    assert env_of(container(spec, "app"))["MODEL_DIR"] == env_of(prov)["PROVISIONER_TARGET"]
