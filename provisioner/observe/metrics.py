"""Prometheus metrics, read from the `Tracker` at scrape time.

There are no timers and no second copy of the state: a custom collector turns one
`tracker.snapshot()` into metric families on every scrape, so values are always current and the
counters are exact (`downloaded_bytes_total` == `tracker.bytes_received`).

The registry is a private `CollectorRegistry` (never the global one), so several runs in one
process (tests, the API) do not collide. The metric list is the one in docs/design.md; the
table with meanings is in docs/observability.md.
"""

from __future__ import annotations

import logging
import platform
import socket
from collections import Counter
from collections.abc import Iterator, Mapping
from importlib import metadata
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest, push_to_gateway
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ..observe.progress import PHASES, Tracker
from ..redact import redact

PREFIX = "model_provisioner_"
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # what Prometheus 2.x and promtool parse natively

# Retry reasons from docs/design.md: exported at 0 from the start so that `increase()` sees the
# first retry of each reason (a counter that appears at 1 loses its first increment).
RETRY_REASONS: tuple[str, ...] = (
    "connect", "timeout", "stall", "reset", "http_5xx", "http_429",
    "url_expired", "range_ignored", "changed", "checksum", "api",
)
VERIFICATION_KINDS: tuple[str, ...] = ("checksums", "embedding")

# Every metric name (without the counter `_total` / info `_info` suffix added by the families).
METRIC_NAMES: tuple[str, ...] = (
    "build_info", "phase", "downloaded_bytes_total", "expected_bytes", "on_disk_bytes", "files",
    "files_by_evidence", "files_done", "progress_ratio", "download_speed_bytes_per_second", "eta_seconds",
    "retries_total", "stalls_total", "source_bytes_total", "mirror_failures_total", "verification_duration_seconds",
    "verification_ok", "embedding_test_ok", "ready",
    "last_success_timestamp_seconds", "seconds_since_progress",
)

_LABELS = ["repo", "revision"]

log = logging.getLogger(__name__)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:  # running from a source checkout without an install
        return "unknown"


def build_labels() -> dict[str, str]:
    """The `build_info` labels: our version, Python's, huggingface_hub's."""
    from .. import __version__  # the source of truth when running from a checkout

    return {
        "version": __version__ or _version("model-provisioner"),
        "python": platform.python_version(),
        "huggingface_hub": _version("huggingface_hub"),
    }


class TrackerCollector(Collector):
    """Turns one `Tracker.snapshot()` into the model_provisioner_* families on each scrape."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self._build = build_labels()

    def describe(self) -> Iterator[Metric]:
        # Describing without sampling keeps registration cheap and side-effect free.
        return iter(())

    def collect(self) -> Iterator[Metric]:
        snap = self.tracker.snapshot()
        yield from families(snap, build=self._build)


def _gauge(name: str, doc: str, labels: list[str] | None = None, unit: str = "") -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, labels=labels if labels is not None else _LABELS, unit=unit)


def families(snap: Mapping[str, Any], *, build: Mapping[str, str]) -> list[Metric]:
    """The metric families of one snapshot (a pure function, handy for tests)."""
    lv = [str(snap["repo_id"]), str(snap["revision"])]
    out: list[Metric] = []

    info = InfoMetricFamily(PREFIX + "build", "Version of model-provisioner and its main dependencies.",
                            labels=_LABELS)
    info.add_metric(lv, dict(build))
    out.append(info)

    # A state set: one series per phase, 1 for the current one. Exposed as a gauge with a `phase`
    # label (what the text format does with state sets anyway) so the label is named `phase`.
    phase = _gauge("phase", "Current phase of the run (1 for the current phase, 0 for the others).",
                   labels=[*_LABELS, "phase"])
    for p in PHASES:
        phase.add_metric([*lv, p], 1.0 if snap["phase"] == p else 0.0)
    out.append(phase)

    downloaded = CounterMetricFamily(PREFIX + "downloaded_bytes",
                                     "Bytes received from the network by this process.", labels=_LABELS)
    downloaded.add_metric(lv, float(snap["bytes_received"]))
    out.append(downloaded)

    total = int(snap["bytes_total"])
    on_disk = int(snap["bytes_on_disk"])
    simple: list[tuple[str, str, float]] = [
        ("expected_bytes", "Total size of the planned files (0 until planned).", float(total)),
        ("on_disk_bytes", "Bytes of the planned files present on the volume (resumed + received).",
         float(on_disk)),
        ("files", "Number of planned files.", float(snap["files_total"])),
        ("files_done", "Number of planned files complete on disk (downloaded or already present).",
         float(snap["files_done"])),
        ("progress_ratio", "on_disk_bytes / expected_bytes, 0..1.", float(snap["progress_ratio"])),
        ("download_speed_bytes_per_second", "Bytes per second received over the last 10 s.",
         float(snap["speed_bytes_per_second"])),
        ("eta_seconds", "Estimated seconds until the download completes (-1 unknown).", _eta(snap)),
    ]
    for name, doc, value in simple:
        g = _gauge(name, doc)
        g.add_metric(lv, value)
        out.append(g)

    retries = CounterMetricFamily(PREFIX + "retries", "Retries scheduled, by reason.",
                                  labels=[*_LABELS, "reason"])
    counts: dict[str, int] = {r: 0 for r in RETRY_REASONS}
    counts.update({str(k): int(v) for k, v in dict(snap["retries"]).items()})
    for reason, n in counts.items():
        retries.add_metric([*lv, reason], float(n))
    out.append(retries)

    by_source = CounterMetricFamily(PREFIX + "source_bytes", "Bytes received, by byte source (hub or mirror).",
                                    labels=[*_LABELS, "source"])
    source_counts = {"hub": 0, "mirror": 0, **dict(snap.get("source_bytes") or {})}
    for source, n in source_counts.items():
        by_source.add_metric([*lv, str(source)], float(n))
    out.append(by_source)

    mirror_failures = CounterMetricFamily(PREFIX + "mirror_failures",
                                          "Times a mirror was given up for a file, by reason.",
                                          labels=[*_LABELS, "reason"])
    for reason, n in dict(snap.get("mirror_failures") or {}).items():
        mirror_failures.add_metric([*lv, str(reason)], float(n))
    out.append(mirror_failures)

    stalls = CounterMetricFamily(PREFIX + "stalls", "Transfers that stalled (no bytes for stall-timeout).",
                                 labels=_LABELS)
    stalls.add_metric(lv, float(snap["stalls"]))
    out.append(stalls)

    verification: Mapping[str, Mapping[str, Any]] = snap["verification"]
    duration = _gauge("verification_duration_seconds", "Seconds spent verifying, by kind.",
                      labels=[*_LABELS, "kind"])
    ok = _gauge("verification_ok", "Outcome of the last verification of each kind (1 ok, 0 failed).",
                labels=[*_LABELS, "kind"])
    for kind, v in verification.items():
        duration.add_metric([*lv, kind], float(v["seconds"]))
        if v.get("ok") is not None:
            ok.add_metric([*lv, kind], 1.0 if v["ok"] else 0.0)
    out.extend([duration, ok])

    smoke = snap.get("smoke_test")
    embedding = _gauge("embedding_test_ok", "Embedding smoke test (1 passed, 0 failed, absent = not run).")
    if smoke is not None:
        embedding.add_metric(lv, 1.0 if smoke.get("ok") else 0.0)
    out.append(embedding)

    evidence = _gauge("files_by_evidence", "Planned files by what verification checks (sha256, git-sha1, or size-only "
                      "where the hub gave no digest).", labels=[*_LABELS, "evidence"])
    counts = Counter(f.get("evidence", "size-only") for f in snap["files"])
    for level in ("sha256", "git-sha1", "size-only"):
        evidence.add_metric([*lv, level], float(counts.get(level, 0)))
    out.append(evidence)

    ready = _gauge("ready", "1 when the model is verified and the ready marker written.")
    ready.add_metric(lv, 1.0 if snap["ready"] else 0.0)
    out.append(ready)

    success = _gauge("last_success_timestamp_seconds",
                     "Unix time the model became ready in this process (absent until then).")
    if snap.get("last_success_time") is not None:
        success.add_metric(lv, float(snap["last_success_time"]))
    out.append(success)

    since = _gauge("seconds_since_progress", "Seconds since bytes last arrived from the network "
                   "(or since start when none have).")
    since.add_metric(lv, float(snap["seconds_since_progress"]))
    out.append(since)
    return out


def _eta(snap: Mapping[str, Any]) -> float:
    if snap["phase"] in ("verifying", "smoke_test", "ready"):
        return 0.0
    total = int(snap["bytes_total"])
    if total and int(snap["bytes_on_disk"]) >= total:
        return 0.0
    eta = snap.get("eta_seconds")
    return float(eta) if eta is not None else -1.0


def make_registry(tracker: Tracker) -> CollectorRegistry:
    """A private registry holding only the model_provisioner_* metrics of `tracker`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TrackerCollector(tracker))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition (format 0.0.4; see CONTENT_TYPE) of `registry`."""
    return generate_latest(registry)


def _safe_url(url: str) -> str:
    """The URL without query, fragment or user:password, for log lines."""
    scheme, sep, rest = url.partition("://")
    if sep:
        host, slash, path = rest.partition("/")
        url = f"{scheme}://{host.rpartition('@')[2]}{slash}{path}"
    return redact(url).split("?", 1)[0].split("#", 1)[0]


def _userinfo(url: str) -> tuple[str, ...]:
    """The user and password of `url` (to remove from error messages that quote the URL)."""
    netloc = url.partition("://")[2].split("/", 1)[0]
    if "@" not in netloc:
        return ()
    info = netloc.rpartition("@")[0]
    return tuple(p for p in (info, *info.split(":", 1)) if p)


def push_final(registry: CollectorRegistry, url: str, *, job: str = "model-provisioner",
               grouping_key: Mapping[str, str] | None = None, timeout: float = 10.0) -> bool:
    """Push the final state to a Pushgateway (PUT: replaces the group). Never raises.

    `grouping_key` identifies this instance (default: `instance=<hostname>`, the pod name in
    Kubernetes); a re-run of the same pod replaces its own group. Returns True when pushed.
    """
    key = dict(grouping_key) if grouping_key is not None else {"instance": socket.gethostname()}
    try:
        push_to_gateway(url, job=job, registry=registry, grouping_key=key, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - a Pushgateway outage must never change the run's outcome
        log.warning("pushgateway push failed: %s",
                    redact(f"{type(exc).__name__}: {exc}", secrets=_userinfo(url)),
                    extra={"event": "pushgateway", "ok": False, "url": _safe_url(url)})
        return False
    log.info("pushed final metrics to pushgateway", extra={"event": "pushgateway", "ok": True,
                                                             "url": _safe_url(url)})
    return True
