"""Events on the provisioner's own Pod and its readiness condition: `Reporter` turns tracker events
into core/v1 Events (aggregated, rate limited) and a strategic-merge patch of `pods/status`, from one
background thread so a slow or dead API never slows the download.

Imports `client` (this package's API layer) and `provisioner.observe.progress`; never `lease` or the
package's `__init__`.
"""

from __future__ import annotations

import contextlib
import math
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..observe.progress import Event, EventKind
from ..redact import PATTERNS_ONLY, Redactor
from .client import COMPONENT, KubeApi, KubeApiError, PodIdentity, clean, log, second_time

EVENT_QUEUE_SIZE = 256
EVENT_AGGREGATE_SECONDS = 30.0  # one Event write per (reason, key) per this window; repeats raise `count`
EVENT_BURST = 25  # token bucket over all Event writes: burst ...
EVENT_REFILL_SECONDS = 10.0  # ... then one token per this many seconds


@dataclass
class _Series:
    """One Event object and its repeats (core/v1 aggregation by `count`)."""

    name: str
    count: int
    first: float
    last: float
    message: str
    sent_count: int
    sent_at: float  # monotonic time of the last write


@dataclass
class _EventJob:
    reason: str
    type: str
    message: str
    key: str
    time: float = field(default_factory=time.time)
    important: bool = False


@dataclass
class _ConditionJob:
    status: bool
    message: str


class Reporter:
    """Turns tracker events into core/v1 Events and the pod condition, from one background thread.

    The tracker callback only enqueues (bounded queue; drops when full) so a slow or dead API never
    slows the download. Repeats of the same (reason, key) within EVENT_AGGREGATE_SECONDS update the
    existing Event's `count`/`lastTimestamp`/`message` instead of creating new ones, and a token bucket
    bounds all writes. Ready/Failed are never dropped by the bucket.
    """

    def __init__(self, api: KubeApi, pod: PodIdentity, *, repo_id: str, events: bool,
                 condition_type: str, clock: Callable[[], float] = time.monotonic,
                 aggregate_seconds: float = EVENT_AGGREGATE_SECONDS, burst: int = EVENT_BURST,
                 refill_seconds: float = EVENT_REFILL_SECONDS, redactor: Redactor = PATTERNS_ONLY) -> None:
        self.api = api
        self.pod = pod
        self.redactor = redactor
        self.repo_id = repo_id
        self.events_on = events
        self.condition_type = condition_type
        self.condition_on = bool(condition_type)
        self._clock = clock
        self._aggregate = aggregate_seconds
        self._burst = burst
        self._refill = refill_seconds
        self._tokens = float(burst)
        self._tokens_at = clock()
        self._queue: queue.Queue[_EventJob | _ConditionJob | None] = queue.Queue(maxsize=EVENT_QUEUE_SIZE)
        self._series: dict[tuple[str, str], _Series] = {}
        self._closed = False
        self._started_download = False
        self._plan: dict[str, Any] = {}
        self._close_deadline = math.inf
        self._warned: set[str] = set()
        self.dropped = 0
        self.posted = 0
        self._thread = threading.Thread(target=self._run, name="kube-events", daemon=True)
        self._thread.start()

    # -- producer side (tracker thread(s)) --
    def on_tracker_event(self, event: Event) -> None:
        if self._closed:
            return  # Tracker has no unsubscribe: ignore everything after close()
        d = event.data
        kind = event.kind
        if kind == EventKind.PHASE and d.get("phase") == "downloading" and not self._started_download:
            self._started_download = True
            plan = self._plan
            detail = (f"@{plan.get('commit')}: {plan.get('files')} files, {plan.get('bytes_total')} bytes "
                      f"({plan.get('bytes_on_disk')} already on the volume)") if plan else ""
            self.event("DownloadStarted", f"downloading {self.repo_id}{detail}", key="start")
        elif kind == EventKind.PLAN:
            self._plan = dict(d)
        elif kind == EventKind.RETRY:
            reason = str(d.get("reason") or "unknown")
            path = f" {d['path']}" if d.get("path") else ""
            self.event("Retrying", f"retrying{path} ({reason}) in {d.get('delay', 0)}s: {d.get('message', '')}",
                       type_="Warning", key=reason)
        elif kind == EventKind.STALL:
            path = f" on {d['path']}" if d.get("path") else ""
            self.event("Stalled", f"no bytes received{path}; reconnecting", type_="Warning", key="stall")
        elif kind == EventKind.WAITING:
            self.event("Waiting", f"waiting for {d.get('holder')} to download {self.repo_id}",
                       key=str(d.get("holder")))
        elif kind == EventKind.VERIFIED:
            what = str(d.get("kind"))
            if d.get("ok"):
                self.event("Verified", f"{what} verified in {d.get('seconds')}s", key=what)
            else:
                detail = f": {d['detail']}" if d.get("detail") else ""
                self.event("VerificationFailed", f"{what} verification failed{detail}", type_="Warning", key=what)
        elif kind == EventKind.READY:
            msg = f"{self.repo_id}@{d.get('commit') or '?'} is ready"
            self.event("Ready", msg, key="ready", important=True)
            self.condition(True, msg)
        elif kind == EventKind.FAILED:
            msg = f"{d.get('message')} (exit code {d.get('exit_code')})"
            self.event("Failed", msg, type_="Warning", key="failed", important=True)
            self.condition(False, msg)

    def event(self, reason: str, message: str, *, type_: str = "Normal", key: str = "",
              important: bool = False) -> None:
        if self.events_on and not self._closed:
            self._put(_EventJob(reason, type_, clean(message, self.redactor), key or message, important=important))

    def condition(self, status: bool, message: str) -> None:
        if self.condition_on and not self._closed:
            self._put(_ConditionJob(status, clean(message, self.redactor)))

    def _put(self, job: _EventJob | _ConditionJob) -> None:
        try:
            self._queue.put_nowait(job)
        except queue.Full:  # the API is slower than our events: drop rather than block the download
            self.dropped += 1

    def close(self, timeout: float = 5.0) -> None:
        """Flush what is queued (and pending aggregates) within `timeout`, then stop."""
        if self._closed:
            return
        self._closed = True
        self._close_deadline = time.monotonic() + timeout
        with contextlib.suppress(queue.Full):  # full: the thread ends at its deadline anyway
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)

    # -- consumer side (background thread) --
    def _run(self) -> None:
        while True:
            try:
                job = self._queue.get(timeout=self._next_flush_in())
            except queue.Empty:
                job = None
                self._flush(force=False)
                continue
            if job is None:
                self._flush(force=True)
                return
            try:
                if isinstance(job, _EventJob):
                    self._post(job)
                else:
                    self._patch_condition(job)
            except Exception as exc:  # noqa: BLE001 - a reporter bug must never break provisioning
                log.debug("kube reporter error: %s", exc)

    def _next_flush_in(self) -> float:
        now = self._clock()
        waits = [s.sent_at + self._aggregate - now for s in self._series.values() if s.count > s.sent_count]
        return max(0.05, min(waits)) if waits else 1.0

    def _take_token(self, important: bool) -> bool:
        now = self._clock()
        self._tokens = min(float(self._burst), self._tokens + (now - self._tokens_at) / self._refill)
        self._tokens_at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return important

    def _warn_once(self, what: str, exc: KubeApiError) -> None:
        if what in self._warned:
            return
        self._warned.add(what)
        hint = ""
        if exc.status == 403:
            hint = {"events": " (RBAC: create/patch events)",
                    "condition": " (RBAC: patch pods/status)"}.get(what, "")
        log.warning("kubernetes %s off: %s%s", what, exc, hint)

    def _post(self, job: _EventJob) -> None:
        if not self.events_on:
            return
        key = (job.reason, job.key)
        series = self._series.get(key)
        now = self._clock()
        if series is not None:
            series.count += 1
            series.last = job.time
            series.message = job.message
            if now - series.sent_at >= self._aggregate or job.important:
                self._write_series(series, important=job.important)
            return
        if not self._take_token(job.important):
            self.dropped += 1
            return
        name = f"{self.pod.name[:200]}.{time.time_ns():x}{secrets.token_hex(2)}"
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": self.pod.namespace},
            "involvedObject": self._involved(),
            "reason": job.reason, "message": job.message, "type": job.type,
            "source": {"component": COMPONENT, **({"host": self.pod.node} if self.pod.node else {})},
            "firstTimestamp": second_time(job.time), "lastTimestamp": second_time(job.time), "count": 1,
            "reportingComponent": COMPONENT, "reportingInstance": self.pod.name[:128],
        }
        try:
            self.api.request("POST", f"/api/v1/namespaces/{self.pod.namespace}/events", body)
        except KubeApiError as exc:
            self._event_failed(exc)
            return
        self.posted += 1
        self._series[key] = _Series(name, 1, job.time, job.time, job.message, 1, now)

    def _involved(self) -> dict[str, Any]:
        ref: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "name": self.pod.name,
                               "namespace": self.pod.namespace}
        if self.pod.uid:
            ref["uid"] = self.pod.uid
        return ref

    def _write_series(self, series: _Series, *, important: bool = False) -> None:
        if not self._take_token(important):
            return  # stays pending; flushed when a token is back
        patch = {"count": series.count, "lastTimestamp": second_time(series.last), "message": series.message}
        try:
            self.api.request("PATCH", f"/api/v1/namespaces/{self.pod.namespace}/events/{series.name}", patch,
                             content_type="application/strategic-merge-patch+json")
        except KubeApiError as exc:
            if exc.status == 404:  # the Event expired (1 h TTL): start a new series next time
                self._series = {k: v for k, v in self._series.items() if v is not series}
                return
            self._event_failed(exc)
            return
        self.posted += 1
        series.sent_count = series.count
        series.sent_at = self._clock()

    def _flush(self, *, force: bool) -> None:
        now = self._clock()
        for series in list(self._series.values()):
            if not self.events_on:
                return
            if series.count > series.sent_count and (force or now - series.sent_at >= self._aggregate):
                if force and time.monotonic() > self._close_deadline:
                    return
                self._write_series(series, important=force)

    def _event_failed(self, exc: KubeApiError) -> None:
        self.dropped += 1
        if exc.status in (401, 403, 404, 405, 415, 422):  # not going to get better: stop trying
            self.events_on = False
            self._warn_once("events", exc)
        elif not exc.transient:
            self._warn_once("events", exc)

    def _patch_condition(self, job: _ConditionJob) -> None:
        if not self.condition_on:
            return
        patch = {"status": {"conditions": [{
            "type": self.condition_type, "status": "True" if job.status else "False",
            "reason": "ModelReady" if job.status else "ModelFailed", "message": job.message,
            "lastTransitionTime": second_time(), "lastProbeTime": None,
        }]}}
        for attempt in range(4):
            try:
                self.api.request("PATCH", self.pod.path + "/status", patch,
                                 content_type="application/strategic-merge-patch+json")
                return
            except KubeApiError as exc:
                if not exc.transient or attempt == 3:
                    self.condition_on = exc.status not in (401, 403, 404, 422)
                    self._warn_once("condition", exc)
                    return
            time.sleep(0.5 * 2**attempt)  # short backoff on this background thread only


