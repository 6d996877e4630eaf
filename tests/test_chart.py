"""The Helm chart, rendered with the real helm (v4) and validated with kubernetes-validate.

Tools come from `scripts/install-tools.sh` (helm at `.tools/bin/helm`) and the `test` extra
(kubernetes-validate). A missing tool FAILS the tests unless MP_ALLOW_MISSING_TOOLS=1, which skips them.
Every values file in charts/model-provisioner/ci/ is rendered once (module cache) and checked.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_helpers import (
    CASES,
    CHART,
    CRD_KINDS,
    DASHBOARD,
    KUBE_VERSIONS,
    NAMESPACE,
    PENDING_SETTINGS,
    RELEASE,
    ROOT,
    RULES,
    SETTING_ENVS,
    _defaults,
    _render,
    _values_args,
    app_spec,
    container,
    containers,
    docs,
    env_of,
    helm_path,
    kinds,
    kube_settings,
    kubernetes_validate_path,
    one,
    pod_specs,
    port,
    run,
    target,
    template_fails,
    values,
)

from provisioner.config import SETTINGS, Config


@pytest.fixture(scope="module")
def helm() -> str:
    return helm_path()


@pytest.fixture(scope="module")
def kubernetes_validate() -> str:
    return kubernetes_validate_path()


# --------------------------------------------------------------------------------------------- lint + validate

def test_every_mode_and_toggle_has_a_ci_values_file() -> None:
    expected = {"init", "nativeSidecar", "sidecar", "pvc", "existingClaim", "hostPath", "nodeCache", "podMonitor",
                "serviceMonitor", "prometheusRule", "dashboards", "networkPolicy", "kubeEvents", "kubeLease",
                "kubeReadiness", "tokenFile", "tokenEnv", "allSettings", "deprecatedNames",
                "hostPathPrepared", "listenOff", "memoryMedium", "existingServiceAccount", "excludeNothing",
                "initMonitored", "appHardened", "caBundle"}
    assert expected <= set(CASES), f"missing ci values files: {sorted(expected - set(CASES))}"


@pytest.mark.parametrize("case", CASES)
def test_helm_lint_strict(helm: str, case: str) -> None:
    proc = run([helm, "lint", "--strict", str(CHART), *_values_args(case)])
    assert proc.returncode == 0, f"helm lint --strict ({case}) failed:\n{proc.stdout}\n{proc.stderr}"


@pytest.fixture(scope="module")
def rendered_dir(helm: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every case rendered to a file, custom resources (no schema in kubernetes-validate) left out."""
    out = tmp_path_factory.mktemp("rendered")
    for case in CASES:
        objs = [d for d in docs(helm, case) if d["kind"] not in CRD_KINDS]
        (out / f"{case}.yaml").write_text(yaml.safe_dump_all(objs, sort_keys=False))
    return out


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_kubernetes_validate_strict(kubernetes_validate: str, rendered_dir: Path, kube_version: str) -> None:
    files = sorted(str(p) for p in rendered_dir.glob("*.yaml"))
    proc = run([kubernetes_validate, "--strict", "--quiet", "-k", kube_version, *files])
    problems = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 0 and not problems, f"kubernetes-validate -k {kube_version}:\n" + "\n".join(problems)


@pytest.mark.parametrize("case", ["podMonitor", "serviceMonitor"])
def test_custom_resources_only_warn(kubernetes_validate: str, helm: str, case: str, tmp_path: Path) -> None:
    path = tmp_path / "all.yaml"
    path.write_text(_render(helm, case))
    proc = run([kubernetes_validate, "--strict", "--quiet", "-k", "1.37.0", str(path)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = (proc.stdout + proc.stderr).splitlines()
    kind = case[0].upper() + case[1:]  # the one custom resource of this case, and nothing else
    assert len(lines) == 1, lines
    assert lines[0].startswith("WARN") and "Couldn't find schema" in lines[0], lines
    assert f"kind {kind} with api version monitoring.coreos.com/v1" in lines[0], lines


# --------------------------------------------------------------------------------------------- modes

def test_init_mode_is_a_classic_init_container(helm: str) -> None:
    spec = app_spec(helm, "init")
    prov = container(spec, "model-provisioner")
    assert prov in spec["initContainers"]
    assert "restartPolicy" not in prov
    assert not {"startupProbe", "readinessProbe", "livenessProbe"} & prov.keys()
    assert prov["args"][0] == "run"
    assert env_of(prov)["PROVISIONER_MODE"] == "init"
    assert "readinessGates" not in spec


@pytest.mark.parametrize("case", ["nativeSidecar", "kubeReadiness", "serviceMonitor", "allSettings"])
def test_native_sidecar_restarts_always_and_gates_the_app_on_readyz(helm: str, case: str) -> None:
    spec = app_spec(helm, case)
    port_ = port(case)
    prov = container(spec, "model-provisioner")
    assert prov in spec["initContainers"] and prov["restartPolicy"] == "Always"
    assert prov["startupProbe"]["httpGet"] == {"path": "/readyz", "port": port_}
    assert prov["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port_}
    assert prov["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port_}
    assert env_of(prov)["PROVISIONER_MODE"] == "sidecar"
    assert [c["name"] for c in spec["containers"]] == [values(case)["app"]["name"]]


@pytest.mark.parametrize("case", ["sidecar", "networkPolicy", "kubeAll"])
def test_sidecar_mode_points_the_apps_readiness_at_the_provisioner(helm: str, case: str) -> None:
    spec = app_spec(helm, case)
    port_ = port(case)
    prov = container(spec, "model-provisioner")
    assert prov in spec["containers"] and "restartPolicy" not in prov
    assert env_of(prov)["PROVISIONER_MODE"] == "sidecar"
    assert prov["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port_}
    assert prov["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port_}
    app = container(spec, "app")
    assert app["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port_}
    assert not any(c["name"] == "model-provisioner" for c in spec.get("initContainers", []))


def test_user_readiness_probe_wins_in_init_mode(helm: str) -> None:
    app = container(app_spec(helm, "init"), "app")
    assert app["readinessProbe"] == {"httpGet": {"path": "/health", "port": 8000}}


@pytest.mark.parametrize("case", CASES)
def test_model_volume_is_shared_and_read_only_for_the_app(helm: str, case: str) -> None:
    for where, spec in pod_specs(docs(helm, case)):
        vols = {vol["name"]: vol for vol in spec.get("volumes", [])}
        for c in containers(spec):
            mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
            if c["name"] in ("model-provisioner", "app", "wait-for-model"):
                assert mounts["models"]["mountPath"] == target(case), (where, c["name"])
                assert "models" in vols
            if c["name"] == "model-provisioner":
                assert not mounts["models"].get("readOnly"), "the provisioner writes the model"
                assert "emptyDir" in vols[mounts["provisioner-tmp"]["name"]] and mounts["provisioner-tmp"]["mountPath"] == "/tmp"  # noqa: S108
                assert env_of(c)["PROVISIONER_TARGET"] == target(case)
            if c["name"] in ("app", "wait-for-model"):
                assert mounts["models"]["readOnly"] is True, (where, c["name"])


@pytest.mark.parametrize("case,kind,claim", [
    ("default", "emptyDir", None), ("pvc", "persistentVolumeClaim", f"{RELEASE}-model-provisioner-models"),
    ("existingClaim", "persistentVolumeClaim", "shared-models"), ("hostPath", "hostPath", None),
])
def test_storage_types(helm: str, case: str, kind: str, claim: str | None) -> None:
    objs = docs(helm, case)
    vol = next(v for v in app_spec(helm, case)["volumes"] if v["name"] == "models")
    assert kind in vol
    if claim:
        assert vol[kind]["claimName"] == claim
    pvcs = kinds(objs, "PersistentVolumeClaim")
    if case == "pvc":
        (pvc,) = pvcs
        assert pvc["metadata"]["name"] == claim and pvc["spec"]["resources"]["requests"]["storage"] == "20Gi"
        assert pvc["spec"]["storageClassName"] == "standard"
    else:
        assert not pvcs
    if case == "default":
        assert vol["emptyDir"]["sizeLimit"] == values(case)["storage"]["emptyDir"]["sizeLimit"]
    if case == "hostPath":
        assert vol["hostPath"]["path"] == "/mnt/models/minilm"


def test_node_cache_daemonset_fills_the_hostpath_and_apps_wait(helm: str) -> None:
    objs = docs(helm, "nodeCache")
    v = values("nodeCache")
    ds = one(objs, "DaemonSet")["spec"]["template"]["spec"]
    prov = container(ds, "model-provisioner")
    assert prov in ds["containers"] and env_of(prov)["PROVISIONER_MODE"] == "sidecar"
    assert prov["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert ds["nodeSelector"] == v["nodeCache"]["nodeSelector"]
    app = app_spec(helm, "nodeCache")
    assert not any(c["name"] == "model-provisioner" for c in containers(app)), "app pods do not download"
    wait = container(app, "wait-for-model")
    assert wait in app["initContainers"] and "model-provisioner check" in wait["command"][2]
    # a node cache outlives pods: versioned layout, the app waits on (and reads) its revision's link
    model_dir = f"{target('nodeCache')}/revisions/{v['model']['revision']}"
    assert wait["command"][3:] == [model_dir, v["model"]["repoId"], v["model"]["revision"]]
    assert env_of(container(app, "app"))["MODEL_DIR"] == model_dir
    host = {"path": v["storage"]["hostPath"]["path"], "type": "DirectoryOrCreate"}
    assert next(x for x in ds["volumes"] if x["name"] == "models")["hostPath"] == host
    assert next(x for x in app["volumes"] if x["name"] == "models")["hostPath"] == host
    assert app["nodeSelector"] == v["nodeCache"]["nodeSelector"]
    assert app["tolerations"] == v["nodeCache"]["tolerations"]
    assert app["automountServiceAccountToken"] is False


def test_node_cache_serve_exposes_a_mirror_and_lists_ready_peers(helm: str) -> None:
    objs = docs(helm, "nodeCache")
    port = values("nodeCache")["nodeCache"]["serve"].get("port", 9734)
    prov = container(one(objs, "DaemonSet")["spec"]["template"]["spec"], "model-provisioner")
    env = env_of(prov)
    peers = f"{RELEASE}-model-provisioner-node-cache-peers"
    assert env["PROVISIONER_SERVE_LISTEN"] == f"0.0.0.0:{port}"
    assert env["PROVISIONER_MIRRORS"] == f"http://{peers}.{NAMESPACE}.svc:{port}"
    assert {"name": "mirror", "containerPort": port, "protocol": "TCP"} in prov["ports"]
    local = one(objs, "Service", f"{RELEASE}-model-provisioner-node-cache")["spec"]
    assert local["internalTrafficPolicy"] == "Local" and local["ports"][0]["targetPort"] == "mirror"
    headless = one(objs, "Service", peers)["spec"]
    assert headless["clusterIP"] == "None" and not headless.get("publishNotReadyAddresses")
    assert headless["selector"]["app.kubernetes.io/component"] == "node-cache"
    app_env = env_of(container(app_spec(helm, "allSettings"), "model-provisioner"))
    assert app_env["PROVISIONER_MIRRORS"] == "http://model-cache.example.internal:9734,https://hf-mirror2.example.internal"
    assert "PROVISIONER_MIRRORS" not in env_of(container(app_spec(helm, "sidecar"), "model-provisioner"))


# --------------------------------------------------------------------------------------------- security

HARDENED = {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False}


@pytest.mark.parametrize("case", CASES)
def test_every_container_is_hardened(helm: str, case: str) -> None:
    for where, spec in pod_specs(docs(helm, case)):
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True and pod_sc.get("seccompProfile") == {"type": "RuntimeDefault"}, where
        for c in containers(spec):
            sc = c.get("securityContext", {})
            if c["name"] == "fix-permissions":  # root with only CAP_CHOWN, checked below
                continue
            if c["name"] == "app":  # its own defaults (writable root fs): test_chart_cluster.py
                assert sc.get("allowPrivilegeEscalation") is False and sc.get("capabilities") == {"drop": ["ALL"]}
                assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
                continue
            for key, want in HARDENED.items():
                assert sc.get(key) is want, f"{where} {c['name']}: securityContext.{key} should be {want}"
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, (where, c["name"])
            assert sc.get("runAsUser", pod_sc.get("runAsUser")) == 10001, (where, c["name"])
            assert sc.get("capabilities") == {"drop": ["ALL"]}, (where, c["name"])
            assert sc.get("seccompProfile", pod_sc.get("seccompProfile")) == {"type": "RuntimeDefault"}
            assert "resources" in c or c["name"] == "app", f"{where} {c['name']} has no resources"


def test_fix_permissions_only_chowns(helm: str) -> None:
    fix = container(app_spec(helm, "hostPath"), "fix-permissions")
    sc = fix["securityContext"]
    assert sc["runAsUser"] == 0 and sc["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert fix["command"] == ["chown", "10001:10001", "/models"]


# --------------------------------------------------------------------------------------------- RBAC

RULE_EVENTS = {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]}
RULE_LEASES = {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}
RULES_POD = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
             {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["patch"]}]


@pytest.mark.parametrize("case", CASES)
def test_rbac_is_least_privilege(helm: str, case: str) -> None:
    objs = docs(helm, case)
    kube = kube_settings(case)
    expected = ([RULE_EVENTS] if kube["events"] else []) + ([RULE_LEASES] if kube["lease"] else []) \
        + (RULES_POD if kube["condition"] else [])
    roles, bindings = kinds(objs, "Role"), kinds(objs, "RoleBinding")
    assert not kinds(objs, "ClusterRole") and not kinds(objs, "ClusterRoleBinding")
    sa_values = values(case)["serviceAccount"]
    sa_name = sa_values["name"] or f"{RELEASE}-model-provisioner"
    if sa_values["create"]:
        sa = one(objs, "ServiceAccount")
        assert sa["metadata"]["name"] == sa_name
        assert sa["automountServiceAccountToken"] is False, "pods get a projected token in the provisioner only"
    else:
        assert not kinds(objs, "ServiceAccount")
    on = bool(expected)
    if not on:
        assert not roles and not bindings
    else:
        (role,) = roles
        (binding,) = bindings
        assert role["rules"] == expected
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": role["metadata"]["name"]}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa_name, "namespace": NAMESPACE}]
    for where, spec in pod_specs(objs):
        if where.startswith("Pod/"):
            assert spec["automountServiceAccountToken"] is False
            continue
        assert spec["automountServiceAccountToken"] is False, where
        assert spec["serviceAccountName"] == sa_name
        for c in containers(spec):
            if c["name"] == "model-provisioner":
                env = env_of(c)
                assert env["PROVISIONER_KUBE"] == ("on" if on else "off")
                assert env["PROVISIONER_COORDINATION"] == kube["coordination"]
                assert env["PROVISIONER_EVENTS"] == ("on" if kube["events"] else "off")
                assert env.get("PROVISIONER_READINESS_CONDITION") == (kube["condition"] or None)
                assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
                assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
                assert env["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}


@pytest.mark.parametrize("case,gated", [("kubeReadiness", True), ("kubeAll", True), ("allSettings", True),
                                        ("default", False)])
def test_readiness_gate_in_sidecar_modes(helm: str, case: str, gated: bool) -> None:
    spec = app_spec(helm, case)
    if gated:
        assert spec["readinessGates"] == [{"conditionType": kube_settings(case)["condition"]}]
    else:
        assert "readinessGates" not in spec


# --------------------------------------------------------------------------------------------- settings / env

# Settings naming files that exist only inside the pod (the provisioner checks they exist at start).
IN_POD_FILES = {"PROVISIONER_TOKEN_FILE", "PROVISIONER_REFERENCE_EMBEDDINGS", "PROVISIONER_CA_BUNDLE", "SSL_CERT_FILE"}


@pytest.mark.parametrize("case", CASES)
def test_rendered_env_vars_are_real_settings_with_valid_values(helm: str, case: str) -> None:
    for where, spec in pod_specs(docs(helm, case)):
        for c in containers(spec):
            for name, value in env_of(c).items():
                if not name.startswith("PROVISIONER_"):
                    continue
                assert name in SETTING_ENVS or name in PENDING_SETTINGS, \
                    f"{where} {c['name']}: {name} is not a provisioner setting"
                assert isinstance(value, str), f"{name} must be a plain string value"
                if name in PENDING_SETTINGS:
                    assert value in PENDING_SETTINGS[name], f"{name}={value!r} not in {PENDING_SETTINGS[name]}"
                    continue
                if name in IN_POD_FILES:  # a file inside the pod: it cannot exist here, so check its form only
                    assert value.startswith("/"), f"{name} must be an absolute path in the pod, got {value!r}"
                    continue
                SETTING_ENVS[name].parse(value)  # raises ConfigError on a value the provisioner would reject
            if c["name"] == "model-provisioner":  # the whole set, as the provisioner reads it at start
                environ = {k: v for k, v in env_of(c).items() if isinstance(v, str) and k not in IN_POD_FILES}
                config = Config.from_sources(environ=environ)
                assert config.target == target(case)
                assert config.repo_id == values(case)["model"]["repoId"]


def test_all_settings_case_covers_every_run_setting(helm: str) -> None:
    prov = container(app_spec(helm, "allSettings"), "model-provisioner")
    env = env_of(prov)
    missing = sorted(s.env for s in SETTINGS if "run" in s.commands and s.env not in env)
    assert not missing, f"settings the chart cannot express (add them to values.yaml and _helpers.tpl): {missing}"
    assert env["PROVISIONER_INCLUDE"] == "*.json,*.safetensors,1_Pooling/*"
    assert env["PROVISIONER_DISK_HEADROOM"] == "1048576" and env["PROVISIONER_STALL_TIMEOUT"] == "30.5"
    assert env["PROVISIONER_LISTEN"] == "0.0.0.0:9090"
    assert prov["image"].endswith("@sha256:" + "0123456789abcdef" * 4)


# Settings whose chart value is not simply camelCase(flag) under model/provisioner/kube.
DERIVED = {"token-file": "model.token", "mode": "mode (init|nativeSidecar|sidecar)",
           "kube": "on when any of kube.events/coordination=lease/readinessCondition is"}


def test_values_names_mirror_the_cli_flags() -> None:
    vals = _defaults()
    for s in SETTINGS:
        if s.name in DERIVED or "run" not in s.commands:
            continue
        camel = re.sub(r"-([a-z])", lambda m: m.group(1).upper(), s.name)
        homes = [k for k in ("model", "provisioner", "kube") if camel in vals[k]]
        assert homes, f"{s.flag} ({s.env}) has no chart value {camel!r} under model/provisioner/kube"


def test_token_as_file_mounts_the_secret_read_only(helm: str) -> None:
    spec = app_spec(helm, "tokenFile")
    prov = container(spec, "model-provisioner")
    env = env_of(prov)
    assert env["PROVISIONER_TOKEN_FILE"] == "/var/run/secrets/huggingface/token" and "HF_TOKEN" not in env
    mount = next(m for m in prov["volumeMounts"] if m["mountPath"] == "/var/run/secrets/huggingface")
    assert mount["readOnly"] is True
    vol = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert vol["secret"]["secretName"] == "hf-token"
    assert vol["secret"]["items"] == [{"key": "token", "path": "token"}]
    app = container(spec, "app")
    assert all(m["name"] != mount["name"] for m in app["volumeMounts"]), "the app must not see the token"


def test_ca_bundle_is_mounted_into_the_provisioner_only(helm: str) -> None:
    spec = app_spec(helm, "caBundle")
    prov = container(spec, "model-provisioner")
    env = env_of(prov)
    path = "/etc/model-provisioner/ca/ca-bundle.pem"
    assert env["PROVISIONER_CA_BUNDLE"] == path and env["SSL_CERT_FILE"] == path
    mount = next(m for m in prov["volumeMounts"] if m["mountPath"] == "/etc/model-provisioner/ca")
    assert mount["readOnly"] is True
    vol = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert vol["configMap"]["name"] == "corp-ca"
    assert vol["configMap"]["items"] == [{"key": "ca-bundle.pem", "path": "ca-bundle.pem"}]
    assert all(m["name"] != mount["name"] for m in container(spec, "app")["volumeMounts"])
    assert "PROVISIONER_CA_BUNDLE" not in env_of(container(app_spec(helm, "init"), "model-provisioner"))


def test_token_as_env_uses_a_secret_ref(helm: str) -> None:
    prov = container(app_spec(helm, "tokenEnv"), "model-provisioner")
    env = env_of(prov)
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf-token", "key": "HF_TOKEN"}}
    assert "PROVISIONER_TOKEN_FILE" not in env
    assert not any("token" in a.lower() for a in prov["args"]), "never pass the token as an argument"


# --------------------------------------------------------------------------------------------- observability

def test_pod_monitor_scrapes_the_named_port(helm: str) -> None:
    objs = docs(helm, "podMonitor")
    pm = one(objs, "PodMonitor")
    assert pm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (ep,) = pm["spec"]["podMetricsEndpoints"]
    assert ep["port"] == "http-metrics" and ep["path"] == "/metrics" and ep["interval"] == "10s"
    prov = container(app_spec(helm, "podMonitor"), "model-provisioner")
    assert {"name": "http-metrics", "containerPort": 9733, "protocol": "TCP"} in prov["ports"]
    deploy = one(objs, "Deployment")
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert pm["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}


def test_service_monitor_selects_the_metrics_service(helm: str) -> None:
    objs = docs(helm, "serviceMonitor")
    sm = one(objs, "ServiceMonitor")
    svc = one(objs, "Service", f"{RELEASE}-model-provisioner-metrics")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"] == "http-metrics"
    assert svc["spec"]["publishNotReadyAddresses"] is True, "progress must be scraped before the pod is ready"
    pod_labels = one(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert not kinds(docs(helm, "default"), "ServiceMonitor") and not kinds(docs(helm, "default"), "PodMonitor")


def test_dashboard_configmap_is_the_dashboard_file(helm: str) -> None:
    cm = one(docs(helm, "dashboards"), "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Models"}
    assert cm["data"]["model-provisioner.json"] == DASHBOARD.read_text(encoding="utf-8")
    json.loads(cm["data"]["model-provisioner.json"])


def test_prometheus_rule_carries_the_rules_file(helm: str) -> None:
    rule = one(docs(helm, "prometheusRule"), "PrometheusRule")
    groups: list[Any] = []
    for path in sorted(RULES.parent.glob("*.yaml")):
        groups += yaml.safe_load(path.read_text())["groups"]
    assert rule["spec"]["groups"] == groups
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


@pytest.mark.parametrize("toggle,message", [("dashboards.enabled", "dashboards/model-provisioner.json"),
                                            ("prometheusRule.enabled", "files/alerts/model-provisioner.rules.yaml")])
def test_missing_dashboard_or_rules_file_fails_clearly(helm: str, tmp_path: Path, toggle: str, message: str) -> None:
    chart = tmp_path / "model-provisioner"
    shutil.copytree(CHART, chart, ignore=shutil.ignore_patterns("dashboards", "files", "ci"))
    err = template_fails(helm, "--set", f"{toggle}=true", chart=chart)
    assert message in err and toggle in err, err


def test_observability_objects_are_off_by_default(helm: str) -> None:
    objs = docs(helm, "default")
    assert {d["kind"] for d in objs} == {"ServiceAccount", "Deployment"}


def test_network_policy(helm: str) -> None:
    objs = docs(helm, "networkPolicy")
    np = one(objs, "NetworkPolicy")["spec"]
    assert np["policyTypes"] == ["Ingress", "Egress"]
    deploy = one(objs, "Deployment")
    assert np["podSelector"]["matchLabels"].items() <= deploy["spec"]["template"]["metadata"]["labels"].items()
    metrics_rule = next(r for r in np["ingress"] if r["ports"] == [{"port": 9733, "protocol": "TCP"}])
    peers = metrics_rule["from"]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}} in peers
    test_pod = one(objs, "Pod")
    assert any(p.get("podSelector", {}).get("matchLabels", {}).items() <= test_pod["metadata"]["labels"].items()
               for p in peers if "podSelector" in p), "the helm test pod must reach /readyz"
    assert not (np["podSelector"]["matchLabels"].items() <= test_pod["metadata"]["labels"].items())
    app_rule = next(r for r in np["ingress"] if r["ports"] == [{"port": 8000, "protocol": "TCP"}])
    assert app_rule["from"][0] == {"podSelector": {"matchLabels": {"app": "frontend"}}}
    assert app_rule["from"][1]["podSelector"]["matchLabels"].items() <= test_pod["metadata"]["labels"].items(), \
        "with appFrom set, the helm test pod (init mode: it connects to the app port) must be allowed too"
    egress = np["egress"]
    dns = egress[0]
    assert {"port": 53, "protocol": "UDP"} in dns["ports"] and {"port": 53, "protocol": "TCP"} in dns["ports"]
    https = next(r for r in egress if r["ports"] == [{"port": 443, "protocol": "TCP"}])
    assert {"ipBlock": {"cidr": "0.0.0.0/0"}} in https["to"]
    assert any(r.get("to") == [{"ipBlock": {"cidr": "10.20.0.0/16"}}] for r in egress)
    kube_api = next(r for r in egress if {"port": 6443, "protocol": "TCP"} in r["ports"])
    assert kube_api["to"] == [{"ipBlock": {"cidr": "10.96.0.1/32"}}, {"ipBlock": {"cidr": "172.18.0.2/32"}}]


@pytest.mark.parametrize("case,target", [
    ("nativeSidecar", f"http://{RELEASE}-model-provisioner-metrics.{NAMESPACE}.svc:9733/readyz"),
    ("sidecar", f"http://{RELEASE}-model-provisioner-metrics.{NAMESPACE}.svc:9733/readyz"),
    ("nodeCache", f"http://{RELEASE}-model-provisioner-metrics.{NAMESPACE}.svc:9733/readyz"),
    ("init", f"tcp://{RELEASE}-model-provisioner.{NAMESPACE}.svc:8000"),
    ("default", None),
])
def test_helm_test_hook_checks_readyz(helm: str, case: str, target: str | None) -> None:
    objs = docs(helm, case)
    pods = kinds(objs, "Pod")
    if target is None:
        assert not pods
        return
    (pod,) = pods
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (c,) = pod["spec"]["containers"]
    assert c["command"][:2] == ["python", "-c"] and c["command"][3] == target
    assert c["image"] == container(next(s for _, s in pod_specs(objs) if any(
        x["name"] == "model-provisioner" for x in containers(s))), "model-provisioner")["image"]
    compile(c["command"][2], "<helm-test>", "exec")
    if target.startswith("http"):
        svc = one(objs, "Service", f"{RELEASE}-model-provisioner-metrics")
        comp = "node-cache" if case == "nodeCache" else "app"
        assert svc["spec"]["selector"]["app.kubernetes.io/component"] == comp


# --------------------------------------------------------------------------------------------- schema + checks

@pytest.mark.parametrize("args,expect", [
    (["--set", "mode=bogus"], ["/mode", "init", "nativeSidecar", "sidecar"]),
    (["--set", "model.stallTimeout=-1"], ["/model/stallTimeout", "exclusiveMinimum"]),
    (["--set", "model.connectTimeout=0"], ["/model/connectTimeout"]),
    (["--set", "model.maxWorkers=100"], ["/model/maxWorkers"]),
    (["--set", "model.verify=sometimes"], ["/model/verify"]),
    (["--set", "storage.type=nfs"], ["/storage/type"]),
    (["--set", "model.bogusKey=1"], ["additional properties", "bogusKey"]),
    (["--set", "bogusTopLevel=1"], ["additional properties", "bogusTopLevel"]),
    (["--set", "model.token.as=arg"], ["/model/token/as"]),
    (["--set", "model.splitThreshold=lots"], ["/model/splitThreshold"]),
    (["--set", "model.endpoint=ftp://mirror"], ["/model/endpoint"]),
    (["--set", "kube.events=maybe"], ["/kube/events"]),
    (["--set", "kube.coordination=etcd"], ["/kube/coordination", "lease"]),
    (["--set", "kube.readinessCondition=not a condition"], ["/kube/readinessCondition"]),
    (["--set", "provisioner.listen=9733"], ["/provisioner/listen"]),
])
def test_schema_rejects_bad_values(helm: str, args: list[str], expect: list[str]) -> None:
    err = template_fails(helm, *args)
    for text in expect:
        assert text in err, f"{text!r} not in error:\n{err}"


@pytest.mark.parametrize("args,expect", [
    (["--set", "nodeCache.enabled=true"], "nodeCache.enabled needs storage.type=hostPath"),
    (["--set", "kube.coordination=lease"], "kube.coordination=lease coordinates replicas that share one volume"),
    (["--set", "kube.lease=true"], "kube.coordination=lease coordinates replicas that share one volume"),
    (["--set", "storage.type=existingClaim"], "storage.type=existingClaim needs storage.existingClaim.name"),
    (["--set", "app.ports[0].containerPort=9733"], "provisioner.listen (0.0.0.0:9733)"),
    (["--set", "provisioner.listenPort=8000", "--set", "app.ports[0].containerPort=8000"], "provisioner.listen"),
    (["--set", "provisioner.listen=off", "--set", "mode=sidecar"], "provisioner.listen=off"),
    (["--set", "provisioner.listen=0.0.0.0:0"], "the port must be 1-65535"),
])
def test_inconsistent_values_fail_with_a_clear_message(helm: str, args: list[str], expect: str) -> None:
    assert expect in template_fails(helm, *args)


def test_every_value_is_documented() -> None:
    """helm-docs style: every value has a `# --` comment, on itself or on the object it belongs to.
    Pure grouping keys (`model:`) need none; their children do."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    stack: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z_][\w.-]*):(.*)$", line)
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        j, block = i - 1, []
        while j >= 0 and lines[j].strip().startswith("#"):
            block.append(lines[j].strip())
            j -= 1
        documented = any(b.startswith("# --") for b in block) or any(d for _, d in stack)
        is_group = not m.group(3).strip() and i + 1 < len(lines) and \
            len(lines[i + 1]) - len(lines[i + 1].lstrip()) > indent and not lines[i + 1].lstrip().startswith("- ")
        if not documented and not is_group:
            undocumented.append(f"values.yaml:{i + 1}: {line.strip()}")
        stack.append((indent, documented))
    assert not undocumented, "values without a `# --` comment:\n" + "\n".join(undocumented)


def test_schema_is_draft07_and_closed() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(_defaults()), "schema and values.yaml must list the same top-level keys"
    for key in ("model", "provisioner", "storage", "kube", "metrics", "app"):
        assert schema["properties"][key]["additionalProperties"] is False
        props = schema["properties"][key]["properties"]
        deprecated = {k for k, p in props.items() if p.get("description", "").startswith("DEPRECATED")}
        assert set(props) - deprecated == set(_defaults()[key]), key
        assert not deprecated & set(_defaults()[key]), f"{key}: a deprecated name must not have a default"
        assert {f"{key}.{k}" for k in deprecated} <= DEPRECATED_NAMES, f"{key}: undocumented deprecated names"


DEPRECATED_NAMES = {"model.mountPath", "provisioner.listenPort", "kube.lease", "kube.conditionType"}
NEW_NAMES_OF_DEPRECATED_CASE = [  # ci/deprecatedNames-values.yaml spelled with the current names
    "--set", "mode=sidecar", "--set", "model.target=/data/model", "--set", "provisioner.listen=0.0.0.0:9090",
    "--set", "storage.type=pvc", "--set", "storage.pvc.accessModes={ReadWriteMany}", "--set", "kube.events=on",
    "--set", "kube.coordination=lease", "--set", "kube.readinessCondition=example.com/model-ready"]


def test_deprecated_value_names_render_like_the_new_ones(helm: str) -> None:
    proc = run([helm, "template", RELEASE, str(CHART), "-n", NAMESPACE, *NEW_NAMES_OF_DEPRECATED_CASE])
    assert proc.returncode == 0, proc.stderr
    assert [d for d in yaml.safe_load_all(proc.stdout) if d] == docs(helm, "deprecatedNames")


def _notes(helm: str, *args: str) -> str:
    proc = run([helm, "install", RELEASE, str(CHART), "-n", NAMESPACE, "--dry-run=client", *args])
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split("NOTES:", 1)[1]


def test_notes_name_each_deprecated_value_in_use(helm: str) -> None:
    notes = _notes(helm, *_values_args("deprecatedNames"))
    assert "DEPRECATED VALUES" in notes
    for text in ("model.mountPath is deprecated: use model.target", "provisioner.listenPort is deprecated",
                 "kube.events: true is deprecated", "kube.readinessCondition: true is deprecated",
                 "kube.conditionType is deprecated", "kube.lease is deprecated: use kube.coordination: lease"):
        assert text in notes, f"{text!r} not in NOTES:\n{notes}"
    assert "DEPRECATED" not in _notes(helm, *NEW_NAMES_OF_DEPRECATED_CASE)


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "model-provisioner"


# --------------------------------------------------------------------------------------------- library use

PARENT_TEMPLATE = """\
{{- $mp := index .Subcharts "model-provisioner" }}
{{- range $kind := list "init" "sidecar" }}
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: {{ $.Release.Name }}-embedder-{{ $kind }}
spec:
  serviceName: embedder
  selector:
    matchLabels: {app: embedder-{{ $kind }}}
  template:
    metadata:
      labels: {app: embedder-{{ $kind }}}
    spec:
      serviceAccountName: {{ include "model-provisioner.serviceAccountName" $mp }}
      securityContext: {{- toYaml $mp.Values.podSecurityContext | nindent 8 }}
      {{- if eq $kind "init" }}
      initContainers:
        {{- include "model-provisioner.initContainer" $mp | nindent 8 }}
      {{- end }}
      containers:
        - name: embedder
          image: ghcr.io/example/embedder:2.0
          volumeMounts:
            {{- include "model-provisioner.modelVolumeMount" $mp | nindent 12 }}
        {{- if eq $kind "sidecar" }}
        {{- include "model-provisioner.sidecarContainer" $mp | nindent 8 }}
        {{- end }}
      volumes:
        {{- include "model-provisioner.volumes" $mp | nindent 8 }}
{{- end }}
"""


def test_named_templates_attach_the_provisioner_to_another_charts_pods(
        helm: str, kubernetes_validate: str, tmp_path: Path) -> None:
    parent = tmp_path / "embedder"
    shutil.copytree(CHART, parent / "charts" / "model-provisioner", ignore=shutil.ignore_patterns("ci"))
    (parent / "templates").mkdir()
    (parent / "Chart.yaml").write_text("apiVersion: v2\nname: embedder\nversion: 1.0.0\n")
    (parent / "values.yaml").write_text(yaml.safe_dump({"model-provisioner": {
        "app": {"enabled": False}, "tests": {"enabled": False}, "mode": "nativeSidecar",
        "model": {"repoId": "BAAI/bge-small-en-v1.5", "target": "/data"}}}))
    (parent / "templates" / "statefulset.yaml").write_text(PARENT_TEMPLATE)
    proc = run([helm, "template", "emb", str(parent), "-n", NAMESPACE])
    assert proc.returncode == 0, proc.stderr
    objs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert not kinds(objs, "Deployment") and not kinds(objs, "Pod")
    init_spec = one(objs, "StatefulSet", "emb-embedder-init")["spec"]["template"]["spec"]
    init = container(init_spec, "model-provisioner")
    assert init in init_spec["initContainers"] and init["restartPolicy"] == "Always"
    assert env_of(init)["PROVISIONER_REPO_ID"] == "BAAI/bge-small-en-v1.5"
    side_spec = one(objs, "StatefulSet", "emb-embedder-sidecar")["spec"]["template"]["spec"]
    side = container(side_spec, "model-provisioner")
    assert side in side_spec["containers"] and env_of(side)["PROVISIONER_MODE"] == "sidecar"
    for spec in (init_spec, side_spec):
        assert {"name": "models", "mountPath": "/data", "readOnly": True} in container(spec, "embedder")["volumeMounts"]
        assert {v["name"] for v in spec["volumes"]} == {"models", "provisioner-tmp"}
        assert spec["serviceAccountName"] == "emb-model-provisioner"
    path = tmp_path / "parent.yaml"
    path.write_text(proc.stdout)
    check = run([kubernetes_validate, "--strict", "--quiet", "-k", "1.37.0", str(path)])
    assert check.returncode == 0 and not check.stdout.strip(), check.stdout + check.stderr


# --------------------------------------------------------------------------------------------- verify levels, image variant

def test_default_verify_is_one_the_default_slim_image_can_do(helm: str) -> None:
    prov = container(app_spec(helm, "default"), "model-provisioner")
    assert prov["image"].endswith(":0.1.0-slim") or prov["image"].endswith("-slim")
    assert env_of(prov)["PROVISIONER_VERIFY"] == "checksums"
    full = container(app_spec(helm, "nativeSidecar"), "model-provisioner")
    assert not full["image"].endswith("-slim") and env_of(full)["PROVISIONER_VERIFY"] == "full"


def test_verify_app_runs_the_check_with_the_app_image_after_the_provisioner(helm: str) -> None:
    objs = docs(helm, "appCheck")
    spec = app_spec(helm, "appCheck")
    assert [c["name"] for c in spec["initContainers"]] == ["model-provisioner", "embedding-check"]
    prov, check = spec["initContainers"]
    app = container(spec, "app")
    assert env_of(prov)["PROVISIONER_VERIFY"] == "app" and prov["image"].endswith("-slim")
    assert check["image"] == app["image"] == "ghcr.io/example/embedder:2.0"
    assert check["command"] == ["/usr/local/bin/python3", "/opt/model-provisioner/check/smoke_child.py",
                                target("appCheck"), "--record"]
    mounts = {m["name"]: m for m in check["volumeMounts"]}
    assert mounts["models"]["mountPath"] == target("appCheck") and not mounts["models"].get("readOnly")
    assert mounts["embedding-check"]["readOnly"] is True
    assert check["securityContext"] == prov["securityContext"]  # writes the marker as the provisioner's UID
    assert env_of(check)["HF_HUB_OFFLINE"] == "1" and "HF_TOKEN" not in env_of(check)
    assert not any(k.startswith("PROVISIONER_") for k in env_of(check))
    cm_name = next(v for v in spec["volumes"] if v["name"] == "embedding-check")["configMap"]["name"]
    cm = one(objs, "ConfigMap", cm_name)
    for name in ("smoke_child.py", "model_files.py"):  # the shipped script is the package's, byte for byte
        assert cm["data"][name].rstrip("\n") == (ROOT / "provisioner" / "verify" / name).read_text().rstrip("\n")


def test_shipped_check_script_is_the_packages() -> None:
    for name in ("smoke_child.py", "model_files.py"):
        shipped = CHART / "files" / "embedding-check" / name
        assert shipped.read_bytes() == (ROOT / "provisioner" / "verify" / name).read_bytes(), \
            f"copy provisioner/verify/{name} to {shipped.relative_to(ROOT)}"


@pytest.mark.parametrize("args,expect", [
    (["--set", "model.verify=full"], "provisioner.image.variant=full"),
    (["--set", "model.verify=app", "--set", "mode=nativeSidecar"], "model.verify=app"),
    (["--set", "model.verify=app", "--set", "mode=sidecar"], "model.verify=app"),
])
def test_verify_level_must_fit_the_image_and_mode(helm: str, args: list[str], expect: str) -> None:
    err = template_fails(helm, *args)
    assert expect in err, err
