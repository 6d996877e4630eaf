"""metrics.py: exactly the design's metrics, read live from a hand-driven Tracker."""

from __future__ import annotations

import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from obs_helpers import (
    COMMIT,
    REPO,
    REVISION,
    SECRETS,
    FakeClock,
    downloading_tracker,
    leaky_retry,
    make_plan,
)
from prometheus_client.parser import text_string_to_metric_families

from provisioner.observe import metrics
from provisioner.observe.progress import PHASES, Phase, Tracker

ROOT = Path(__file__).resolve().parents[1]


def scrape(tracker: Tracker) -> dict[str, list[Any]]:
    """{sample name: [(labels, value), ...]} of one render."""
    text = metrics.render(metrics.make_registry(tracker)).decode()
    out: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def types(tracker: Tracker) -> dict[str, str]:
    text = metrics.render(metrics.make_registry(tracker)).decode()
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


def value(samples: dict[str, list[Any]], name: str, **labels: str) -> float:
    matches = [v for lbl, v in samples[name] if all(lbl.get(k) == x for k, x in labels.items())]
    assert len(matches) == 1, (name, labels, samples.get(name))
    return float(matches[0])


def design_metric_names() -> set[str]:
    """The names in docs/design.md's Metrics table ("`files` / `files_done`" is two)."""
    text = (ROOT / "docs/design.md").read_text()
    section = text.split("### Metrics", 1)[1].split("###", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            names.update(re.findall(r"`(\w+)`", first_cell))
    return {"model_provisioner_" + n for n in names}


def finished_tracker() -> Tracker:
    t = downloading_tracker(plan=make_plan({"a.bin": 100, "b.bin": 50}))
    t.add_bytes("a.bin", 100)
    t.file_done("a.bin")
    t.add_bytes("b.bin", 50)
    t.file_done("b.bin")
    t.set_phase(Phase.VERIFYING)
    t.verification(kind="checksums", seconds=1.25, ok=True)
    t.set_phase(Phase.SMOKE_TEST)
    t.verification(kind="embedding", seconds=3.5, ok=True, detail="cos=0.75")
    t.mark_ready()
    return t


def test_exactly_the_design_metrics_when_everything_is_set() -> None:
    t = finished_tracker()
    exposed = set(types(t))
    assert exposed == design_metric_names()
    assert design_metric_names() == {"model_provisioner_" + n for n in metrics.METRIC_NAMES}


def test_metric_types() -> None:
    ty = types(finished_tracker())
    counters = {"downloaded_bytes_total", "retries_total", "stalls_total", "source_bytes_total",
                "mirror_failures_total"}
    for name, kind in ty.items():
        short = name.removeprefix("model_provisioner_")
        assert kind == ("counter" if short in counters else "gauge"), name


def test_labels_are_repo_and_revision_plus_the_documented_extras() -> None:
    t = finished_tracker()
    t.retry(reason="timeout", path="a.bin", delay=1, message="x")
    extras = {"model_provisioner_retries_total": {"reason"}, "model_provisioner_phase": {"phase"},
              "model_provisioner_source_bytes_total": {"source"},
              "model_provisioner_mirror_failures_total": {"reason"},
              "model_provisioner_verification_duration_seconds": {"kind"},
              "model_provisioner_verification_ok": {"kind"},
              "model_provisioner_files_by_evidence": {"evidence"},
              "model_provisioner_build_info": {"version", "python", "huggingface_hub"}}
    for name, samples in scrape(t).items():
        for labels, _ in samples:
            assert set(labels) == {"repo", "revision"} | extras.get(name, set()), (name, labels)
            assert labels["repo"] == REPO and labels["revision"] == REVISION


def test_counters_are_exact_and_read_at_scrape_time() -> None:
    t = downloading_tracker()
    registry = metrics.make_registry(t)
    sent = 0
    for i, n in enumerate([1, 4096, 65536, 7, 1 << 20, 3]):
        path = "model.safetensors" if i % 2 else "config.json"
        t.add_bytes(path, n)
        sent += n
        text = metrics.render(registry).decode()  # the same registry: no caching between scrapes
        m = re.search(r'^model_provisioner_downloaded_bytes_total\{[^}]*\} (\S+)$', text, re.M)
        assert m and float(m.group(1)) == sent == t.bytes_received


def test_progress_gauges_follow_the_tracker() -> None:
    t = downloading_tracker(plan=make_plan({"a.bin": 1000, "b.bin": 3000}))
    t.file_started("a.bin", offset=200)  # a resumed partial: on disk but not received
    t.add_bytes("a.bin", 800)
    t.file_done("a.bin")
    s = scrape(t)
    assert value(s, "model_provisioner_expected_bytes") == 4000
    assert value(s, "model_provisioner_on_disk_bytes") == 1000
    assert value(s, "model_provisioner_downloaded_bytes_total") == 800
    assert value(s, "model_provisioner_progress_ratio") == pytest.approx(0.25)
    assert value(s, "model_provisioner_files") == 2
    assert value(s, "model_provisioner_files_by_evidence", evidence="git-sha1") == 2  # make_plan: blob ids for .bin
    assert value(s, "model_provisioner_files_by_evidence", evidence="sha256") == 0
    assert value(s, "model_provisioner_files_done") == 1
    assert value(s, "model_provisioner_ready") == 0


def test_phase_is_a_state_set_with_exactly_one_current_phase() -> None:
    t = Tracker(repo_id=REPO, revision=REVISION)
    for phase in Phase:
        if phase is Phase.READY:
            t.mark_ready()
        elif phase is Phase.FAILED:
            t.mark_failed(message="boom", exit_code=7)
        else:
            t.set_phase(phase)
        s = scrape(t)
        states = {lbl["phase"]: v for lbl, v in s["model_provisioner_phase"]}
        assert set(states) == set(PHASES)
        assert [p for p, v in states.items() if v == 1] == [phase.value]
        assert sum(states.values()) == 1


def test_retries_are_initialised_per_reason_and_counted() -> None:
    t = downloading_tracker()
    s = scrape(t)
    assert {lbl["reason"] for lbl, _ in s["model_provisioner_retries_total"]} == set(metrics.RETRY_REASONS)
    assert all(v == 0 for _, v in s["model_provisioner_retries_total"])
    t.retry(reason="http_5xx", path="config.json", delay=0.1, message="503")
    t.retry(reason="http_5xx", path="config.json", delay=0.1, message="503")
    t.retry(reason="something_new", path=None, delay=0.1, message="?")
    t.stall(path="model.safetensors")
    s = scrape(t)
    assert value(s, "model_provisioner_retries_total", reason="http_5xx") == 2
    assert value(s, "model_provisioner_retries_total", reason="something_new") == 1
    assert value(s, "model_provisioner_retries_total", reason="timeout") == 0
    assert value(s, "model_provisioner_stalls_total") == 1


def test_verification_and_embedding_metrics() -> None:
    t = downloading_tracker()
    s = scrape(t)
    for absent in ("model_provisioner_verification_ok", "model_provisioner_verification_duration_seconds",
                   "model_provisioner_embedding_test_ok", "model_provisioner_last_success_timestamp_seconds"):
        assert absent not in s
    t.verification(kind="checksums", seconds=2.0, ok=True)
    t.verification(kind="embedding", seconds=4.0, ok=False, detail="cosine 0.1 < 0.9")
    s = scrape(t)
    assert value(s, "model_provisioner_verification_ok", kind="checksums") == 1
    assert value(s, "model_provisioner_verification_ok", kind="embedding") == 0
    assert value(s, "model_provisioner_verification_duration_seconds", kind="checksums") == 2.0
    assert value(s, "model_provisioner_embedding_test_ok") == 0


def test_eta_speed_ready_and_timestamps() -> None:
    clock = FakeClock()
    t = downloading_tracker(clock, plan=make_plan({"a.bin": 10_000}))
    assert value(scrape(t), "model_provisioner_eta_seconds") == -1  # nothing received yet: unknown
    for _ in range(5):
        t.add_bytes("a.bin", 1000)
        clock.advance(1.0)
    s = scrape(t)
    assert value(s, "model_provisioner_download_speed_bytes_per_second") > 0
    eta = value(s, "model_provisioner_eta_seconds")
    assert 0 < eta < 60
    assert value(s, "model_provisioner_seconds_since_progress") == pytest.approx(1.0)
    clock.advance(30)
    assert value(scrape(t), "model_provisioner_seconds_since_progress") == pytest.approx(31.0)
    t.add_bytes("a.bin", 5000)
    t.file_done("a.bin")
    t.mark_ready()
    s = scrape(t)
    assert value(s, "model_provisioner_eta_seconds") == 0
    assert value(s, "model_provisioner_ready") == 1
    assert value(s, "model_provisioner_progress_ratio") == 1
    assert value(s, "model_provisioner_last_success_timestamp_seconds") == pytest.approx(t.last_success_time)


def test_build_info() -> None:
    s = scrape(Tracker(repo_id=REPO, revision=REVISION))
    [(labels, v)] = s["model_provisioner_build_info"]
    assert v == 1 and labels["python"].count(".") == 2 and labels["version"] and labels["huggingface_hub"]


def test_no_secret_in_metrics() -> None:
    t = downloading_tracker()
    leaky_retry(t)
    t.mark_failed(message="gave up: " + SECRETS[0], exit_code=7)
    text = metrics.render(metrics.make_registry(t)).decode()
    assert not any(s in text for s in SECRETS)


def test_registry_is_private() -> None:
    from prometheus_client import REGISTRY

    t = Tracker(repo_id=REPO, revision=REVISION)
    metrics.make_registry(t)
    assert REGISTRY.get_sample_value("model_provisioner_ready", {"repo": REPO, "revision": REVISION}) is None
    # two runs in one process do not collide
    a, b = metrics.make_registry(t), metrics.make_registry(Tracker(repo_id="x/y", revision="v1"))
    assert b"x/y" in metrics.render(b) and b"x/y" not in metrics.render(a)


# ---- Pushgateway --------------------------------------------------------------------------------
class _Gateway(BaseHTTPRequestHandler):
    received: list[tuple[str, str, bytes]] = []

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).received.append(("PUT", self.path, body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_push_final_puts_the_registry_to_the_gateway() -> None:
    _Gateway.received = []
    server = HTTPServer(("127.0.0.1", 0), _Gateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        t = finished_tracker()
        ok = metrics.push_final(metrics.make_registry(t), f"http://127.0.0.1:{server.server_address[1]}",
                                job="model-provisioner", grouping_key={"namespace": "ml", "pod": "app-0"})
    finally:
        server.shutdown()
        server.server_close()
    assert ok
    [(method, path, body)] = _Gateway.received
    assert path == "/metrics/job/model-provisioner/namespace/ml/pod/app-0"
    text = body.decode()
    assert 'model_provisioner_ready{repo="org/model",revision="main"} 1.0' in text
    assert COMMIT not in text  # the commit is not a label (cardinality)


def test_push_final_failure_is_logged_redacted_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    port = _closed_port()
    url = f"http://user:{SECRETS[1]}@127.0.0.1:{port}/?token={SECRETS[0]}"
    with caplog.at_level(logging.WARNING, logger="provisioner.observe.metrics"):
        ok = metrics.push_final(metrics.make_registry(finished_tracker()), url, timeout=2)
    assert ok is False
    assert caplog.records and "pushgateway push failed" in caplog.text
    rendered = caplog.text + " ".join(str(vars(r)) for r in caplog.records if hasattr(r, "url"))
    assert not any(s in rendered for s in SECRETS)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
