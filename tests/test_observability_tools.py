"""The observability artifacts checked with the real tools: promtool on a live scrape, on the rules
and their unit tests; the dashboard's structure and every panel query; no secret in any output."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from obs_helpers import SECRETS, downloading_tracker, leaky_retry, make_plan
from prom_helpers import (
    DASHBOARD,
    PROMTOOL_TESTS,
    ROOT,
    RULES,
    dashboard_queries,
    find_tool,
    http_get,
    label_values_to_promql,
    substitute,
    template_queries,
)

from provisioner import redact
from provisioner.observe import logs, metrics
from provisioner.observe.progress import Phase, Tracker
from provisioner.serve.server import HealthServer

PROMTOOL = find_tool("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")


def promtool(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], input=stdin, capture_output=True, text=True, timeout=120,
                          cwd=cwd, check=False)


def busy_tracker() -> Tracker:
    """A tracker with every metric populated, and a leaky retry message."""
    t = downloading_tracker(plan=make_plan({"a.bin": 1000, "b.bin": 2000}))
    t.add_bytes("a.bin", 1000)
    t.file_done("a.bin")
    leaky_retry(t)
    t.stall(path="b.bin")
    t.add_bytes("b.bin", 2000)
    t.file_done("b.bin")
    t.set_phase(Phase.VERIFYING)
    t.verification(kind="checksums", seconds=0.2, ok=True)
    t.verification(kind="embedding", seconds=1.5, ok=True, detail="ok")
    t.mark_ready()
    return t


@pytest.fixture
def live() -> Iterator[HealthServer]:
    t = busy_tracker()
    srv = HealthServer("127.0.0.1:0", tracker=t, registry=metrics.make_registry(t), ready_check=lambda: True,
                       stall_limit=5, redactor=redact.Redactor.for_secrets(SECRETS[1])).start()
    yield srv
    srv.stop()


# ---- promtool ------------------------------------------------------------------------------------
@needs_promtool
def test_promtool_check_metrics_on_a_live_scrape(live: HealthServer) -> None:
    status, _, body = http_get(live.url + "/metrics")
    assert status == 200
    result = promtool("check", "metrics", stdin=body.decode())
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout + result.stderr


@needs_promtool
def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 4 rules found" in result.stdout


@needs_promtool
def test_promtool_unit_tests_of_the_alerts() -> None:
    result = promtool("test", "rules", PROMTOOL_TESTS.name, cwd=PROMTOOL_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rules_file_shape_is_valid_for_a_prometheusrule_too() -> None:
    doc = yaml.safe_load(RULES.read_text())
    assert list(doc) == ["groups"]  # becomes spec.groups of a PrometheusRule unchanged
    alerts = {r["alert"]: r for g in doc["groups"] for r in g["rules"]}
    assert set(alerts) == {"ModelProvisionerDownloadStalled", "ModelProvisionerFailed",
                           "ModelProvisionerVerificationFailed", "ModelProvisionerSlow"}
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), name
        anchor = rule["annotations"]["runbook_url"].rsplit("#", 1)[1]
        assert anchor == name.lower()
        assert f"### {name}" in (ROOT / "docs/observability.md").read_text()
    tested = set(re.findall(r"alertname: (\w+)", PROMTOOL_TESTS.read_text()))
    assert tested == set(alerts)


def _exprs_by_alert() -> dict[str, str]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"]}


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    tests = yaml.safe_load(PROMTOOL_TESTS.read_text())["tests"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    assert firing == quiet == set(_exprs_by_alert())


# ---- dashboard -----------------------------------------------------------------------------------
def test_dashboard_structure() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "model-provisioner" and 36 <= dash["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "pod", "repo"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"]["uid"] == "${datasource}"
        assert variables[name]["query"]["query"].startswith("label_values(model_provisioner_build_info")
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
    titles = " | ".join(p["title"] for p in dash["panels"]).lower()
    for wanted in ("progress", "phase", "throughput", "eta", "bytes on disk vs expected", "retries", "stalls",
                   "verification", "time to ready"):
        assert wanted in titles, wanted


def test_every_panel_query_uses_the_variables_and_known_metrics() -> None:
    known = {"model_provisioner_" + n for n in metrics.METRIC_NAMES}
    queries = list(dashboard_queries())
    assert len(queries) >= 15
    for title, ref, expr in queries:
        for selector in re.findall(r"model_provisioner_\w+\{([^}]*)\}", expr):
            for var in ("namespace", "pod", "repo"):
                assert f'{var}=~"${var}"' in selector, (title, ref, expr)
        for name in re.findall(r"model_provisioner_\w+", expr):
            assert name in known, (title, name)


@needs_promtool
def test_every_panel_query_parses(tmp_path: Path) -> None:
    """Every query, variables substituted, as a recording rule: promtool parses each expression."""
    rules = [{"record": f"dashboard:q{i}", "expr": substitute(expr)}
             for i, (_, _, expr) in enumerate(dashboard_queries())]
    for i, q in enumerate(template_queries()):
        selector, _label = label_values_to_promql(q)
        rules.append({"record": f"dashboard:v{i}", "expr": substitute(selector)})
    path = tmp_path / "dashboard.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    # and a broken query would have failed: the check can fail
    path.write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": [{"record": "x:y", "expr": "sum(("}]}]}))
    assert promtool("check", "rules", str(path)).returncode != 0


# ---- no secrets anywhere -----------------------------------------------------------------------
def test_no_secret_in_any_output(live: HealthServer) -> None:
    outputs: dict[str, str] = {}
    for path in ("/metrics", "/status", "/healthz", "/readyz", "/nope"):
        outputs[path] = http_get(live.url + path)[2].decode()
    for fmt in ("json", "text"):
        stream = io.StringIO()
        with logs.setup_logging(redactor=redact.Redactor.for_secrets(SECRETS[1]), fmt=fmt, level="debug", stream=stream):
            t = Tracker(repo_id="org/model", revision="main")
            reporter = logs.ProgressReporter(t, interval=3600).start()
            t.set_plan(make_plan())
            t.set_phase(Phase.DOWNLOADING)
            leaky_retry(t)
            t.mark_failed(message=f"gave up on {SECRETS[0]}", exit_code=7)
            reporter.tick()
            reporter.stop()
            logging.getLogger("httpx").debug("GET https://x/y?token=%s", SECRETS[1])
            outputs[f"log-{fmt}"] = stream.getvalue()
    assert "<redacted>" in outputs["/status"] and "<redacted>" in outputs["log-json"]
    for name, text in outputs.items():
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} leaked in {name}"
