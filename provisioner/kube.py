"""Kubernetes API features: Events on the pod, a readiness condition, and a Lease per
(volume, repo, commit) so that N replicas sharing a volume download once.

`setup(config, tracker=, target=)` is the only entry point api.py needs. Everything here is
best effort: an unreachable API, missing RBAC or a bad config logs ONE warning per feature and
turns that feature off; provisioning continues (with the file lock for coordination).

The `kubernetes` package is imported lazily (inside functions), so importing this module is
cheap and the rest of the package never pays for it. Requests go through the real client's
`ApiClient` (its kubeconfig / in-cluster auth, TLS and token refresh) but with bodies we build
ourselves: the generated models re-serialize MicroTime without fractional digits when the
microsecond is 0, which a real apiserver rejects.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import queue
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .config import Config
from .context import interrupted
from .errors import LocalIOError
from .lock import Coordinator, FileLock
from .progress import Event, Tracker
from .redact import redact

log = logging.getLogger("provisioner.kube")

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
COMPONENT = "model-provisioner"
LEASE_PREFIX = "model-provisioner-"
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 10.0
EVENT_QUEUE_SIZE = 256
EVENT_AGGREGATE_SECONDS = 30.0  # one Event write per (reason, key) per this window; repeats raise `count`
EVENT_BURST = 25  # token bucket over all Event writes: burst ...
EVENT_REFILL_SECONDS = 10.0  # ... then one token per this many seconds
MESSAGE_LIMIT = 1024
UNREACHABLE_AT_START_SECONDS = 5.0  # a Lease API that never answered: fall back to the file lock after this


# ---- small helpers ------------------------------------------------------------------------------
def _micro_time(ts: float | None = None) -> str:
    """metav1.MicroTime: RFC 3339 with exactly 6 fractional digits (what Go's parser requires)."""
    dt = datetime.fromtimestamp(time.time() if ts is None else ts, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _time(ts: float | None = None) -> str:
    """metav1.Time: RFC 3339, second precision."""
    dt = datetime.fromtimestamp(time.time() if ts is None else ts, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:  # a malformed time from the server: treat as unknown
        return None


def _clean(message: str) -> str:
    """Every string we send to the API: secrets stripped, bounded length."""
    text = redact(message)
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 3] + "..."


class KubeApiError(Exception):
    """A failed API call. `status` 0 means the API could not be reached (connect, timeout, TLS)."""

    def __init__(self, status: int, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason

    @property
    def transient(self) -> bool:
        return self.status == 0 or self.status == 429 or self.status >= 500

    def __str__(self) -> str:
        prefix = f"HTTP {self.status}" if self.status else "unreachable"
        return f"{prefix}: {redact(self.args[0])}"


class KubeApi:
    """JSON requests through the official client's ApiClient (auth, TLS, token refresh)."""

    def __init__(self, api_client: Any, *, connect_timeout: float = CONNECT_TIMEOUT,
                 read_timeout: float = READ_TIMEOUT) -> None:
        self.client = api_client
        self.timeout = (connect_timeout, read_timeout)
        self.host = str(getattr(api_client.configuration, "host", ""))

    def request(self, method: str, path: str, body: Any = None, *,
                content_type: str = "application/json") -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        try:
            params = self.client.param_serialize(method=method, resource_path=path, header_params=headers,
                                                 body=body, auth_settings=["BearerToken"])
            resp = self.client.call_api(*params, _request_timeout=self.timeout)
            data = resp.read()
        except Exception as exc:  # noqa: BLE001 - urllib3/ssl/socket errors all mean "API not reachable"
            cause = getattr(exc, "reason", None) or exc  # MaxRetryError wraps the useful part
            raise KubeApiError(0, f"{method} {path}: {type(cause).__name__}: {cause}") from None
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data or "")
        if not 200 <= resp.status <= 299:
            message, reason = text[:300], ""
            try:
                status_obj = json.loads(text)
                message = str(status_obj.get("message") or message)
                reason = str(status_obj.get("reason") or "")
            except (ValueError, AttributeError):  # not a Status body: keep the raw text
                pass
            raise KubeApiError(resp.status, message, reason=reason)
        try:
            out = json.loads(text) if text else {}
        except ValueError:  # a 2xx that is not JSON: a proxy in the way
            raise KubeApiError(resp.status, f"non-JSON answer: {text[:200]}") from None
        return out if isinstance(out, dict) else {}

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing pools at shutdown must never raise
            self.client.close()


# ---- identity and connection ---------------------------------------------------------------------
@dataclass
class PodIdentity:
    name: str
    namespace: str
    uid: str | None = None
    node: str | None = None


def in_cluster(environ: Mapping[str, str]) -> bool:
    return bool(environ.get("KUBERNETES_SERVICE_HOST")) and (SA_DIR / "token").is_file()


def wanted(config: Config, environ: Mapping[str, str]) -> bool:
    """kube=on; kube=auto: on in a pod with a service account token, or when KUBECONFIG is set."""
    if config.kube == "off":
        return False
    if config.kube == "on":
        return True
    return in_cluster(environ) or bool(environ.get("KUBECONFIG"))


def connect(environ: Mapping[str, str]) -> tuple[KubeApi, str | None]:
    """Load in-cluster config or the kubeconfig. Returns the API and the kubeconfig's namespace."""
    from kubernetes import client as k8s_client  # lazy: only when the API is wanted
    from kubernetes import config as k8s_config

    cfg = k8s_client.Configuration()
    namespace: str | None = None
    if in_cluster(environ):
        k8s_config.load_incluster_config(client_configuration=cfg)
    else:
        path = environ.get("KUBECONFIG") or None
        k8s_config.load_kube_config(config_file=path, client_configuration=cfg, persist_config=False)
        try:
            _, current = k8s_config.list_kube_config_contexts(config_file=path)
            namespace = (current or {}).get("context", {}).get("namespace") or None
        except Exception:  # noqa: BLE001 - the namespace is optional; the env or "default" will do
            namespace = None
    cfg.retries = 0  # our loops retry; a dead API must fail fast
    return KubeApi(k8s_client.ApiClient(cfg)), namespace


def pod_identity(environ: Mapping[str, str], kubeconfig_namespace: str | None = None) -> PodIdentity:
    name = environ.get("POD_NAME") or environ.get("HOSTNAME") or socket.gethostname()
    namespace = environ.get("POD_NAMESPACE") or ""
    if not namespace:
        with contextlib.suppress(OSError):  # not in a pod: use the kubeconfig's namespace
            namespace = (SA_DIR / "namespace").read_text(encoding="utf-8").strip()
    return PodIdentity(name=name, namespace=namespace or kubeconfig_namespace or "default",
                       node=environ.get("NODE_NAME") or None)


def _pod_path(pod: PodIdentity) -> str:
    return f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}"


# ---- Events and the readiness condition ------------------------------------------------------------
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
                 refill_seconds: float = EVENT_REFILL_SECONDS) -> None:
        self.api = api
        self.pod = pod
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
        if kind == "phase" and d.get("phase") == "downloading" and not self._started_download:
            self._started_download = True
            plan = self._plan
            detail = (f"@{plan.get('commit')}: {plan.get('files')} files, {plan.get('bytes_total')} bytes "
                      f"({plan.get('bytes_on_disk')} already on the volume)") if plan else ""
            self.event("DownloadStarted", f"downloading {self.repo_id}{detail}", key="start")
        elif kind == "plan":
            self._plan = dict(d)
        elif kind == "retry":
            reason = str(d.get("reason") or "unknown")
            path = f" {d['path']}" if d.get("path") else ""
            self.event("Retrying", f"retrying{path} ({reason}) in {d.get('delay', 0)}s: {d.get('message', '')}",
                       type_="Warning", key=reason)
        elif kind == "stall":
            path = f" on {d['path']}" if d.get("path") else ""
            self.event("Stalled", f"no bytes received{path}; reconnecting", type_="Warning", key="stall")
        elif kind == "waiting":
            self.event("Waiting", f"waiting for {d.get('holder')} to download {self.repo_id}",
                       key=str(d.get("holder")))
        elif kind == "verified":
            what = str(d.get("kind"))
            if d.get("ok"):
                self.event("Verified", f"{what} verified in {d.get('seconds')}s", key=what)
            else:
                detail = f": {d['detail']}" if d.get("detail") else ""
                self.event("VerificationFailed", f"{what} verification failed{detail}", type_="Warning", key=what)
        elif kind == "ready":
            msg = f"{self.repo_id}@{d.get('commit') or '?'} is ready"
            self.event("Ready", msg, key="ready", important=True)
            self.condition(True, msg)
        elif kind == "failed":
            msg = f"{d.get('message')} (exit code {d.get('exit_code')})"
            self.event("Failed", msg, type_="Warning", key="failed", important=True)
            self.condition(False, msg)

    def event(self, reason: str, message: str, *, type_: str = "Normal", key: str = "",
              important: bool = False) -> None:
        if self.events_on and not self._closed:
            self._put(_EventJob(reason, type_, _clean(message), key or message, important=important))

    def condition(self, status: bool, message: str) -> None:
        if self.condition_on and not self._closed:
            self._put(_ConditionJob(status, _clean(message)))

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
            "firstTimestamp": _time(job.time), "lastTimestamp": _time(job.time), "count": 1,
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
        patch = {"count": series.count, "lastTimestamp": _time(series.last), "message": series.message}
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
            "lastTransitionTime": _time(), "lastProbeTime": None,
        }]}}
        for attempt in range(4):
            try:
                self.api.request("PATCH", _pod_path(self.pod) + "/status", patch,
                                 content_type="application/strategic-merge-patch+json")
                return
            except KubeApiError as exc:
                if not exc.transient or attempt == 3:
                    self.condition_on = exc.status not in (401, 403, 404, 422)
                    self._warn_once("condition", exc)
                    return
            time.sleep(0.5 * 2**attempt)  # short backoff on this background thread only


# ---- the Lease ------------------------------------------------------------------------------------
def volume_id(state_dir: Path) -> str:
    """The volume's identity: a random uuid written once into `<state_dir>/volume-id`.

    Created atomically (write a temp file, then link(2) it into place, which fails if another
    replica won the race — also atomic on NFS); falls back to O_CREAT|O_EXCL where hard links are
    not supported, with readers waiting briefly for the content."""
    path = state_dir / "volume-id"
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        existing = _read_volume_id(path)
        if existing:
            return existing
        new = str(uuid.uuid4())
        tmp = state_dir / f".volume-id.{new}.tmp"
        tmp.write_text(new + "\n", encoding="utf-8")
        try:
            os.link(tmp, path)
        except FileExistsError:  # another replica created it first: theirs wins
            pass
        except OSError:  # no hard links on this filesystem: exclusive create instead
            with contextlib.suppress(FileExistsError):  # lost the race: read theirs below
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    os.write(fd, (new + "\n").encode())
                    os.fsync(fd)
                finally:
                    os.close(fd)
        finally:
            with contextlib.suppress(OSError):  # best effort cleanup of our temp file
                tmp.unlink()
        deadline = time.monotonic() + 5.0
        while True:
            value = _read_volume_id(path)
            if value or time.monotonic() > deadline:
                break
            time.sleep(0.05)  # the O_EXCL creator is writing its uuid
    except OSError as exc:  # the target is not writable: provisioning cannot work either
        raise LocalIOError(f"cannot create {path}: {exc.strerror or exc}", path=str(path)) from None
    if not value:
        raise LocalIOError(f"{path} is empty or malformed; delete it to let a replica recreate it", path=str(path))
    return value


def _read_volume_id(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:  # not created yet
        return None
    try:
        return str(uuid.UUID(text))
    except ValueError:  # empty (being written) or garbage
        return None


def lease_name(volume: str, key: str) -> str:
    """`model-provisioner-<sha256(volume-id \\0 repo \\0 commit)[:20]>`; key is "repo@commit"."""
    repo, _, commit = key.rpartition("@")
    digest = hashlib.sha256(f"{volume}\0{repo or key}\0{commit}".encode()).hexdigest()[:20]
    return LEASE_PREFIX + digest


class _LeaseUnavailable(Exception):
    pass


class LeaseCoordinator:
    """`lock.Coordinator` over a coordination.k8s.io/v1 Lease.

    Acquire: create (409: someone else did), or take over a free (released) or expired Lease with a
    resourceVersion-guarded update (409: re-read). Expired means: the Lease record (holder, renewTime,
    resourceVersion) did not change for leaseDurationSeconds as observed on OUR monotonic clock (like
    client-go, immune to clock skew), or its renewTime is older than 2 × duration by the wall clock
    (fast path for a Lease abandoned long ago). While holding, a thread renews every duration/3;
    on exit the holder clears holderIdentity so a waiter acquires at once (and then finds the ready
    marker). If the Lease API is forbidden or unreachable, warns once and uses `fallback` instead.
    """

    def __init__(self, api: KubeApi, *, namespace: str, identity: str, state_dir: Path,
                 duration: float, fallback: Coordinator, reporter: Reporter | None = None,
                 poll_seconds: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 wallclock: Callable[[], float] = time.time) -> None:
        self.api = api
        self.namespace = namespace
        self.identity = identity
        self.state_dir = state_dir
        self.duration_seconds = max(1, math.ceil(duration))
        self.fallback = fallback
        self.reporter = reporter
        self.poll_seconds = poll_seconds
        self._clock = clock
        self._wallclock = wallclock
        self._warned = False
        self._renewers: list[_Renewer] = []
        self.lost = False  # set when a renewal found another holder
        self.acquired: list[str] = []  # lease names this coordinator acquired (for tests)

    def _path(self, name: str | None = None) -> str:
        base = f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases"
        return f"{base}/{name}" if name else base

    def _warn(self, exc: BaseException) -> None:
        if not self._warned:
            self._warned = True
            hint = " (RBAC: get/create/update leases.coordination.k8s.io)" if \
                isinstance(exc, KubeApiError) and exc.status == 403 else ""
            log.warning("kubernetes Lease coordination off, using the file lock on the volume instead: %s%s",
                        exc, hint)

    @contextlib.contextmanager
    def hold(self, *, key: str, tracker: Tracker, stop: threading.Event) -> Iterator[None]:
        name = lease_name(volume_id(self.state_dir), key)
        try:
            lease = self._acquire(name, key, tracker, stop)
        except _LeaseUnavailable as exc:
            self._warn(exc.__cause__ or exc)
            lease = None
        if lease is None:
            with self.fallback.hold(key=key, tracker=tracker, stop=stop):
                yield
            return
        self.acquired.append(name)
        renewer = _Renewer(self, name, lease)
        self._renewers.append(renewer)
        renewer.start()
        try:
            yield
        finally:
            renewer.stop()
            self._renewers.remove(renewer)
            self._release(name, renewer.lease)

    def close(self) -> None:
        for renewer in list(self._renewers):
            renewer.stop()

    # -- acquisition --
    def _acquire(self, name: str, key: str, tracker: Tracker, stop: threading.Event) -> dict[str, Any]:
        reported: str | None = None
        observed: tuple[Any, ...] | None = None
        observed_at = self._clock()
        ever_answered = False
        failing_since: float | None = None
        while True:
            if stop.is_set():
                raise interrupted(stop)
            try:
                try:
                    lease: dict[str, Any] | None = self.api.request("GET", self._path(name))
                except KubeApiError as exc:
                    if exc.status != 404:
                        raise
                    lease = None
                ever_answered = True
                failing_since = None
                if lease is None:
                    created = self._create(name, key)
                    if created is not None:
                        return created
                    continue  # 409: someone created it between our GET and POST: re-read now
                spec = lease.get("spec") or {}
                holder = spec.get("holderIdentity") or ""
                if holder == self.identity:
                    return lease  # ours already (an update whose answer we lost)
                sig = (holder, spec.get("renewTime"), lease.get("metadata", {}).get("resourceVersion"))
                if sig != observed:
                    observed, observed_at = sig, self._clock()
                if not holder or self._expired(spec, observed_at):
                    taken = self._take(lease)
                    if taken is not None:
                        if holder and self.reporter is not None:
                            self.reporter.event("TakingOver", f"the Lease of {holder} expired; taking over the "
                                                f"download (resuming from the partial data on the volume)",
                                                type_="Warning", key=holder)
                        if holder:
                            log.warning("Lease %s of %s expired; taking over", name, holder)
                        return taken
                    continue  # 409: another waiter won; re-read
                if holder != reported:
                    tracker.waiting(holder=holder)
                    reported = holder
            except KubeApiError as exc:
                if not exc.transient:
                    raise _LeaseUnavailable(str(exc)) from exc
                now = self._clock()
                failing_since = now if failing_since is None else failing_since
                limit = max(60.0, 3.0 * self.duration_seconds) if ever_answered else UNREACHABLE_AT_START_SECONDS
                if now - failing_since > limit:
                    raise _LeaseUnavailable(f"{exc} for {now - failing_since:.0f}s") from exc
                log.debug("Lease %s: %s; retrying", name, exc)
            if stop.wait(self.poll_seconds):
                raise interrupted(stop)

    def _expired(self, spec: dict[str, Any], observed_at: float) -> bool:
        duration = spec.get("leaseDurationSeconds") or self.duration_seconds
        if self._clock() - observed_at > duration:
            return True
        renewed = _parse_time(spec.get("renewTime")) or _parse_time(spec.get("acquireTime"))
        return renewed is not None and self._wallclock() - renewed > 2 * duration

    def _spec(self, transitions: int) -> dict[str, Any]:
        now = _micro_time(self._wallclock())
        return {"holderIdentity": self.identity, "leaseDurationSeconds": self.duration_seconds,
                "acquireTime": now, "renewTime": now, "leaseTransitions": transitions}

    def _create(self, name: str, key: str) -> dict[str, Any] | None:
        body = {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": self.namespace,
                         "labels": {"app.kubernetes.io/managed-by": COMPONENT},
                         "annotations": {"model-provisioner/key": _clean(key)}},
            "spec": self._spec(0),
        }
        try:
            return self.api.request("POST", self._path(), body)
        except KubeApiError as exc:
            if exc.status == 409:
                return None
            raise

    def _take(self, lease: dict[str, Any]) -> dict[str, Any] | None:
        spec = lease.get("spec") or {}
        old_transitions = int(spec.get("leaseTransitions") or 0)
        body = dict(lease)
        body["spec"] = self._spec(old_transitions + 1)
        try:
            return self.api.request("PUT", self._path(lease["metadata"]["name"]), _for_update(body))
        except KubeApiError as exc:
            if exc.status == 409:
                return None
            raise

    def _release(self, name: str, lease: dict[str, Any]) -> None:
        for _ in range(3):
            spec = dict(lease.get("spec") or {})
            if spec.get("holderIdentity") != self.identity:
                return  # lost it meanwhile: nothing to release
            spec.pop("holderIdentity", None)
            spec["renewTime"] = _micro_time(self._wallclock())
            try:
                self.api.request("PUT", self._path(name), _for_update({**lease, "spec": spec}))
                return
            except KubeApiError as exc:
                if exc.status != 409:
                    log.info("could not release Lease %s (%s); others take over after it expires", name, exc)
                    return
            try:
                lease = self.api.request("GET", self._path(name))
            except KubeApiError as exc:  # give up: the Lease expires on its own
                log.info("could not release Lease %s (%s); others take over after it expires", name, exc)
                return


def _for_update(lease: dict[str, Any]) -> dict[str, Any]:
    """The object to PUT: what we read, minus server-managed noise; keeps resourceVersion (the guard)."""
    meta = {k: v for k, v in (lease.get("metadata") or {}).items() if k != "managedFields"}
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": lease.get("spec") or {}}


class _Renewer:
    """Renews the held Lease every duration/3 on a daemon thread."""

    def __init__(self, owner: LeaseCoordinator, name: str, lease: dict[str, Any]) -> None:
        self.owner = owner
        self.name = name
        self.lease = lease
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-renew-{name}", daemon=True)
        self.renewals = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(READ_TIMEOUT + CONNECT_TIMEOUT)

    def _run(self) -> None:
        o = self.owner
        interval = o.duration_seconds / 3.0
        last_ok = time.monotonic()
        warned_late = False
        while not self._stop.wait(interval):
            spec = dict(self.lease.get("spec") or {})
            spec["renewTime"] = _micro_time(o._wallclock())
            try:
                self.lease = o.api.request("PUT", o._path(self.name), _for_update({**self.lease, "spec": spec}))
                self.renewals += 1
                last_ok = time.monotonic()
                warned_late = False
                continue
            except KubeApiError as exc:
                if exc.status == 409:
                    try:
                        current = o.api.request("GET", o._path(self.name))
                    except KubeApiError:  # cannot tell yet; try again next tick
                        continue
                    holder = (current.get("spec") or {}).get("holderIdentity")
                    if holder == o.identity:
                        self.lease = current  # our own write raced: renew from the fresh copy
                        continue
                    o.lost = True
                    log.warning("lost Lease %s to %s; another replica may download the same files", self.name,
                                holder or "nobody")
                    return
                if time.monotonic() - last_ok > o.duration_seconds and not warned_late:
                    warned_late = True
                    log.warning("could not renew Lease %s for %.0fs (%s); another replica may take over",
                                self.name, time.monotonic() - last_ok, exc)


# ---- entry point -----------------------------------------------------------------------------------
class KubeFeatures:
    """What `setup` returns. `coordinator`: the Lease coordinator, a FileLock (Lease wanted but the API
    is unusable), or None (coordination is `file`/`none`: api.py decides). `close()` flushes Events,
    stops renew threads and detaches from the tracker."""

    def __init__(self, *, pod: PodIdentity, api: KubeApi | None, reporter: Reporter | None,
                 coordinator: Coordinator | None) -> None:
        self.pod = pod
        self.api = api
        self.reporter = reporter
        self.coordinator = coordinator

    @property
    def events(self) -> bool:
        return self.reporter is not None and self.reporter.events_on

    @property
    def condition(self) -> bool:
        return self.reporter is not None and self.reporter.condition_on

    def close(self, timeout: float = 5.0) -> None:
        if isinstance(self.coordinator, LeaseCoordinator):
            self.coordinator.close()
        if self.reporter is not None:
            self.reporter.close(timeout)
        if self.api is not None:
            self.api.close()


def setup(config: Config, *, tracker: Tracker, target: Path,
          environ: Mapping[str, str] | None = None) -> KubeFeatures | None:
    """Decide whether the Kubernetes API is used and start its features. Never raises.

    Returns None when kube is off (or auto and not in a pod / no KUBECONFIG), or when the client
    cannot be configured at all (one warning). Otherwise a `KubeFeatures`; failing parts are off.
    """
    environ = os.environ if environ is None else environ
    if not wanted(config, environ):
        return None
    want_lease = config.coordination in ("auto", "lease")
    state_dir = Path(target) / ".provisioner"
    try:
        api, kubeconfig_ns = connect(environ)
    except Exception as exc:  # noqa: BLE001 - ImportError, ConfigException, bad files: all mean "no API"
        log.warning("kubernetes API features off (%s: %s)%s", type(exc).__name__, redact(str(exc)),
                    "; using the file lock on the volume" if want_lease else "")
        return None
    pod = pod_identity(environ, kubeconfig_ns)
    identity = f"{pod.name}/{secrets.token_hex(3)}"
    try:
        pod_obj = api.request("GET", _pod_path(pod))
        pod.uid = (pod_obj.get("metadata") or {}).get("uid") or None
    except KubeApiError as exc:
        if exc.status == 0 or exc.status == 401:
            log.warning("kubernetes API features off: %s at %s%s", exc, api.host,
                        "; using the file lock on the volume" if want_lease else "")
            api.close()
            fallback = FileLock(state_dir, identity=identity) if want_lease else None
            return KubeFeatures(pod=pod, api=None, reporter=None, coordinator=fallback)
        # 403/404: Events still work without the pod's uid (RBAC `get pods` is optional)
        log.info("cannot read pod %s/%s (%s); Events will not carry its uid", pod.namespace, pod.name, exc)
    reporter = Reporter(api, pod, repo_id=config.repo_id, events=True,
                        condition_type=config.readiness_condition)
    tracker.subscribe(reporter.on_tracker_event)
    coordinator: Coordinator | None = None
    if want_lease:
        file_lock = FileLock(state_dir, identity=identity)
        lease = LeaseCoordinator(api, namespace=pod.namespace, identity=identity, state_dir=state_dir,
                                 duration=config.lease_duration, fallback=file_lock, reporter=reporter)
        coordinator = lease
        try:  # RBAC probe: a name nobody uses answers 404 when we may read Leases
            api.request("GET", lease._path(LEASE_PREFIX + "rbac-probe"))
        except KubeApiError as exc:
            if exc.status != 404:
                lease._warn(exc)
                coordinator = file_lock
    return KubeFeatures(pod=pod, api=api, reporter=reporter, coordinator=coordinator)
