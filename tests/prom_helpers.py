"""Test helpers: a real Prometheus server on 127.0.0.1, promtool, and the dashboard's queries.

`PrometheusServer` starts /usr/bin/prometheus with its own config and temp TSDB, waits (with
a deadline, polling the API) until it is ready, and stops it by PID. `wait_for` polls any
condition with a deadline; nothing here sleeps and hopes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "charts/model-provisioner/dashboards/model-provisioner.json"
RULES = ROOT / "charts/model-provisioner/files/alerts/model-provisioner.rules.yaml"
PROMTOOL_TESTS = ROOT / "tests/promtool/alerts_test.yaml"

T = TypeVar("T")


def find_tool(name: str) -> str | None:
    return shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], T | None], *, timeout: float, interval: float = 0.2,
             what: str = "condition") -> T:
    """Poll `condition` until it returns something truthy (returned) or `timeout` passes (error)."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - keep polling; reported if the deadline passes
            last_exc = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}"
                               + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


def http_get(url: str, *, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) without raising on 4xx/5xx."""
    req = urllib.request.Request(url, method="GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:  # 4xx/5xx carry a body we want to look at
        return err.code, dict(err.headers), err.read()


def stop_process(proc: subprocess.Popen[Any] | None, *, timeout: float) -> None:
    """SIGTERM a process this test started (by PID), then SIGKILL it if it outlives `timeout`."""
    if proc is None or proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


class PrometheusServer:
    """A real Prometheus scraping `targets` every second. Use as a context manager."""

    def __init__(self, tmp: Path, targets: list[str], *, labels: Mapping[str, str] | None = None,
                 binary: str | None = None, scrape_interval: str = "1s") -> None:
        self.tmp = Path(tmp)
        self.targets = targets
        self.labels = dict(labels or {})
        self.binary = binary or find_tool("prometheus") or "prometheus"
        self.scrape_interval = scrape_interval
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.tmp / "prometheus.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _config(self) -> str:
        # JSON is YAML: no YAML library needed to write the config.
        return json.dumps({
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval,
                       "scrape_timeout": self.scrape_interval},
            "scrape_configs": [{
                "job_name": "model-provisioner",
                "static_configs": [{"targets": self.targets, "labels": self.labels}],
            }],
        }, indent=2)

    def start(self, *, timeout: float = 30.0) -> PrometheusServer:
        self.tmp.mkdir(parents=True, exist_ok=True)
        cfg = self.tmp / "prometheus.yml"
        cfg.write_text(self._config())
        (self.tmp / "tsdb").mkdir(exist_ok=True)
        for _attempt in range(3):  # a free port can be taken between probing and binding
            self.port = free_port()
            log = self.log_path.open("ab")
            self.proc = subprocess.Popen(
                [self.binary, f"--config.file={cfg}", f"--storage.tsdb.path={self.tmp / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.tmp, start_new_session=True)
            log.close()
            try:
                wait_for(self._ready, timeout=timeout, what="prometheus /-/ready")
                return self
            except TimeoutError:
                self.stop()
        raise RuntimeError(f"prometheus did not start; log:\n{self.log()}")

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with {self.proc.returncode}:\n{self.log()}")
        status, _, _ = http_get(self.url + "/-/ready", timeout=2)
        return status == 200

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:  # no log yet: nothing to show
            return ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc, timeout=15)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- HTTP API ---------------------------------------------------------------------------
    def api(self, path: str, **params: Any) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        status, _, body = http_get(url, timeout=10)
        payload = json.loads(body)
        if status != 200 or payload.get("status") != "success":
            raise PromQueryError(f"{path} {params}: HTTP {status}: {payload.get('errorType')}: {payload.get('error')}")
        return payload["data"]

    def query(self, expr: str, *, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", **params)
        result = data["result"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": result}]
        return list(result)

    def query_range(self, expr: str, *, start: float, end: float, step: float = 1.0) -> list[dict[str, Any]]:
        data = self.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step}")
        return list(data["result"])

    def targets_up(self) -> bool:
        data = self.api("targets")
        active = data.get("activeTargets", [])
        return bool(active) and all(t.get("health") == "up" for t in active)


class PromQueryError(RuntimeError):
    pass


# ---- the dashboard's queries -----------------------------------------------------------------
_VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")

# What the live test substitutes for Grafana's variables.
LIVE_VARIABLES = {
    "namespace": ".*", "pod": ".*", "repo": ".*", "datasource": "prometheus",
    "__rate_interval": "5s", "__interval": "1s", "__range": "5m",
}


def dashboard_queries(path: Path = DASHBOARD) -> Iterator[tuple[str, str, str]]:
    """(panel title, refId, expr) for every target of every panel, rows' nested panels included."""
    dash = json.loads(path.read_text())

    def walk(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str, str]]:
        for p in panels:
            for target in p.get("targets", []):
                if target.get("expr"):
                    yield p.get("title", "?"), target.get("refId", "?"), target["expr"]
            yield from walk(p.get("panels", []))

    yield from walk(dash.get("panels", []))


def template_queries(path: Path = DASHBOARD) -> list[str]:
    """The `label_values(...)` queries of the template variables."""
    dash = json.loads(path.read_text())
    out = []
    for var in dash["templating"]["list"]:
        if var.get("type") == "query":
            q = var["query"]
            out.append(q["query"] if isinstance(q, dict) else q)
    return out


def substitute(expr: str, variables: Mapping[str, str] = LIVE_VARIABLES) -> str:
    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in variables:
            raise KeyError(f"unknown dashboard variable ${name} in {expr!r}")
        return variables[name]

    return _VAR.sub(repl, expr)


def label_values_to_promql(query: str) -> tuple[str, str]:
    """`label_values(METRIC{...}, label)` -> (series selector, label)."""
    m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", query)
    if not m:
        raise ValueError(f"not a label_values query: {query!r}")
    return m.group(1), m.group(2)
