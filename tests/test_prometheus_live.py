"""A real Prometheus scraping a live /metrics every second while a download runs for ~15 s.

1. A Tracker driven by hand in a thread behind a HealthServer (exact control, every metric set).
2. A real `model-provisioner run --listen 127.0.0.1:PORT` against the hub emulator, rate-capped.

Both assert through the Prometheus HTTP API that progress_ratio rose monotonically to 1, that the
bytes counter is exact, and that every dashboard panel query parses and returns data. Everything
waits on the API with deadlines; nothing sleeps and hopes.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from obs_helpers import REPO, SECRETS, leaky_retry, make_plan
from prom_helpers import (
    LIVE_VARIABLES,
    ROOT,
    PrometheusServer,
    dashboard_queries,
    find_tool,
    free_port,
    http_get,
    label_values_to_promql,
    stop_process,
    substitute,
    template_queries,
    wait_for,
)
from prometheus_client.parser import text_string_to_metric_families

from provisioner.observe import metrics
from provisioner.observe.progress import Phase, Tracker
from provisioner.serve.server import HealthServer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(find_tool("prometheus") is None, reason="prometheus not installed (apt-get install prometheus)"),
]

LABELS = {"namespace": "test-ns", "pod": "pod-0"}
SIM_SECONDS = 15.0


def progress_series(prom: PrometheusServer, start: float) -> list[float]:
    """progress_ratio from `start` until the first evaluation at which Prometheus saw it at 1."""
    [done] = wait_for(lambda: prom.query('model_provisioner_progress_ratio{pod="pod-0"} == 1'), timeout=30,
                      what="progress_ratio 1 in Prometheus")
    end = float(done["value"][0])
    start = end - math.ceil(end - start)  # the last step of the range lands exactly on `end`
    [series] = prom.query_range('model_provisioner_progress_ratio{pod="pod-0"}', start=start, end=end, step=1)
    return [float(v) for _, v in series["values"]]


def assert_rose_monotonically_to_one(values: list[float]) -> None:
    assert values, "no samples"
    assert values[0] < 0.5, values[:5]
    assert values[-1] == 1.0, values[-5:]
    assert all(b >= a for a, b in zip(values, values[1:], strict=False)), values
    assert len(set(values)) >= 5, f"expected a gradual rise, got {sorted(set(values))}"


def check_dashboard(prom: PrometheusServer, *, repo: str, may_be_empty: frozenset[str] = frozenset()) -> int:
    """Every panel query parses and returns data (except the `(title, refId)` allowed to be empty)."""
    checked = 0
    empty = []
    for title, ref, expr in dashboard_queries():
        result = prom.query(substitute(expr))  # raises PromQueryError on a parse/eval error
        checked += 1
        if not result and f"{title}/{ref}" not in may_be_empty:
            empty.append(f"{title}/{ref}: {substitute(expr)}")
    assert not empty, "panel queries without data:\n" + "\n".join(empty)
    for q in template_queries():
        selector, label = label_values_to_promql(q)
        values = {r["metric"].get(label) for r in prom.query(f"count by ({label}) ({substitute(selector)})")}
        assert values == {LABELS.get(label, repo)}, (q, values)
    return checked


def scalar(prom: PrometheusServer, expr: str) -> float:
    [r] = prom.query(expr)
    return float(r["value"][1])


# ---- 1. a Tracker driven by hand -----------------------------------------------------------------
SIM_FILES = {"config.json": 4_000_000, "model.safetensors": 120_000_000, "tokenizer.json": 16_000_000}


def simulate(tracker: Tracker, stop: threading.Event, *, seconds: float) -> None:
    """A steady download of the plan over `seconds`, with one retry and one stall on the way."""
    plan = make_plan(SIM_FILES)
    tracker.set_phase(Phase.PLANNING)
    tracker.set_plan(plan)
    tracker.set_phase(Phase.DOWNLOADING)
    tick = 0.1
    per_tick = int(plan.total_bytes * tick / seconds)
    for entry in plan.files:
        tracker.file_started(entry.path, offset=0)
        left = entry.size
        while left > 0:
            if stop.wait(tick):
                return
            n = min(per_tick, left)
            tracker.add_bytes(entry.path, n)
            left -= n
            if entry.path == "model.safetensors" and left < entry.size // 2 and not tracker.retries:
                leaky_retry(tracker)
                tracker.stall(path=entry.path)
        tracker.file_done(entry.path)
    tracker.set_phase(Phase.VERIFYING)
    tracker.verification(kind="checksums", seconds=0.4, ok=True)
    tracker.set_phase(Phase.SMOKE_TEST)
    tracker.verification(kind="embedding", seconds=1.1, ok=True, detail="cosine 0.99")
    tracker.mark_ready()


def test_prometheus_scrapes_a_hand_driven_download(tmp_path: Path) -> None:
    tracker = Tracker(repo_id=REPO, revision="main")
    server = HealthServer("127.0.0.1:0", tracker=tracker, registry=metrics.make_registry(tracker),
                          ready_check=lambda: tracker.ready, stall_limit=5).start()
    stop = threading.Event()
    sim = threading.Thread(target=simulate, args=(tracker, stop), kwargs={"seconds": SIM_SECONDS}, daemon=True)
    try:
        with PrometheusServer(tmp_path, [f"127.0.0.1:{server.port}"], labels=LABELS) as prom:
            # Prometheus finds targets on a ~5 s cycle: wait for the first sample before starting.
            wait_for(lambda: prom.query('model_provisioner_progress_ratio{pod="pod-0"}'), timeout=60,
                     what="the first scrape")
            start = time.time() - 2
            sim.start()
            wait_for(lambda: prom.query('model_provisioner_ready{pod="pod-0"} == 1'),
                     timeout=SIM_SECONDS + 60, what="ready=1 in Prometheus")
            assert_rose_monotonically_to_one(progress_series(prom, start))
            # what the simulation fed in, counted independently of the tracker that exports it
            assert scalar(prom, "model_provisioner_downloaded_bytes_total") == sum(SIM_FILES.values())
            assert scalar(prom, 'model_provisioner_retries_total{reason="url_expired"}') == 1
            assert scalar(prom, "model_provisioner_stalls_total") == 1
            assert scalar(prom, 'model_provisioner_phase{phase="ready"}') == 1
            # the speed gauge saw the steady rate (within a generous factor: timings are not asserted)
            peak = scalar(prom, "max_over_time(model_provisioner_download_speed_bytes_per_second[5m])")
            assert peak > 0
            assert check_dashboard(prom, repo=REPO) >= 15
            assert scalar(prom, substitute(
                "max(model_provisioner_last_success_timestamp_seconds) - min(min_over_time("
                "timestamp(model_provisioner_build_info)[$__range:$__interval]))", LIVE_VARIABLES)) > 0
            plot = tmp_path / "progress.png"
            done = subprocess.run([sys.executable, str(ROOT / "scripts/plot_progress.py"), "--prometheus", prom.url,
                                   "--start", str(start), "--step", "1", "--out", str(plot)],
                                  capture_output=True, text=True, timeout=60, check=False)
            assert done.returncode == 0, done.stderr
            drawn = plot if plot.exists() else plot.with_suffix(".svg")
            assert drawn.stat().st_size > 500
            if drawn.suffix == ".svg":
                assert "<polyline" in drawn.read_text() and "pod-0" in drawn.read_text()
            body = http_get(server.url + "/status")[2].decode() + http_get(server.url + "/metrics")[2].decode()
            assert not any(s in body for s in SECRETS)
    finally:
        stop.set()
        sim.join(timeout=10)
        server.stop()


# ---- 2. the real CLI against the hub emulator ----------------------------------------------------
SIZE = 45 * 1024 * 1024
RATE = 3 * 1024 * 1024  # bytes/s: ~15 s


class CliRun:
    """`model-provisioner run` against the hub emulator, started on demand, stopped by PID."""

    def __init__(self, hub, big_file_repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
        hub.add_repo("org/big", big_file_repo(SIZE))
        hub.faults.rate_limit_global = RATE
        self.hub = hub
        self.port = free_port()
        self.log = tmp_path / "cli.log"
        self.target = tmp_path / "models"
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> subprocess.Popen[str]:
        from cli_helpers import run_args, start_cli

        argv = run_args(endpoint=self.hub.url, target=self.target, repo_id="org/big",
                        extra=["--listen", f"127.0.0.1:{self.port}", "--verify", "checksums", "--linger", "120"])
        self.proc = start_cli(argv, log=self.log)
        return self.proc


@pytest.fixture
def cli_run(hub, big_file_repo, tmp_path: Path) -> Iterator[CliRun]:  # type: ignore[no-untyped-def]
    run = CliRun(hub, big_file_repo, tmp_path)
    try:
        yield run
    finally:
        stop_process(run.proc, timeout=20)


def test_prometheus_scrapes_a_real_cli_run(cli_run, hub, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    target = f"127.0.0.1:{cli_run.port}"
    log = cli_run.log
    with PrometheusServer(tmp_path / "prom", [target], labels=LABELS) as prom:
        # Start the run once Prometheus has been through its first target discovery (~5 s), so the
        # first scrapes catch the download at its beginning.
        wait_for(lambda: prom.api("targets")["activeTargets"], timeout=30, what="the target to be discovered")
        start = time.time() - 2
        proc = cli_run.start()
        wait_for(lambda: prom.query('model_provisioner_ready{pod="pod-0"} == 1') or proc.poll() is not None,
                 timeout=180, what="the CLI run to become ready in Prometheus")
        assert proc.poll() is None, f"CLI exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        series = progress_series(prom, start)
        print("progress_ratio as Prometheus recorded it, 1 s steps:", " ".join(f"{v:.3f}" for v in series))
        assert_rose_monotonically_to_one(series)

        hub.wait_idle()
        served = sum(hub.stats.bytes_by_file.values())
        assert served >= SIZE
        assert scalar(prom, 'model_provisioner_downloaded_bytes_total{pod="pod-0"}') == served
        status, _, body = http_get(f"http://{target}/metrics")
        assert status == 200
        [counter] = [s.value for f in text_string_to_metric_families(body.decode()) for s in f.samples
                     if s.name == "model_provisioner_downloaded_bytes_total"]
        assert counter == served
        assert http_get(f"http://{target}/readyz")[0] == 200
        assert http_get(f"http://{target}/healthz")[0] == 200
        # --verify checksums: no embedding test, so that one query has no data
        check_dashboard(prom, repo="org/big", may_be_empty=frozenset({"Verification result/B"}))
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
