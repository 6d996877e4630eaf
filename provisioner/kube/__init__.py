"""Best-effort Kubernetes API features: Events on the pod, a readiness condition, and a Lease per
(volume, repo, commit) so that N replicas sharing a volume download once. `setup(config, tracker=,
target=)` is the only entry point api.py needs; it returns a `KubeFeatures` (or None). Everything
here is best effort: an unreachable API, missing RBAC or a bad config logs ONE warning per feature
and turns that feature off; provisioning continues (with the file lock for coordination). The
package owns `client` (API layer, pod identity, time helpers), `events` (the Reporter) and `lease`
(the LeaseCoordinator); it may import `provisioner.config`, `.context`, `.errors`, `.lock`,
`.progress` and `.redact`, never api.py or the stages. The `kubernetes` package is imported lazily
(in `client.connect`), so importing this package is cheap.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from ..config import Config
from ..observe.progress import Tracker
from ..redact import Redactor, redact
from ..state.lock import Coordinator, FileLock
from .client import KubeApi, KubeApiError, PodIdentity, connect, log, micro_time, pod_identity, wanted
from .events import Reporter
from .lease import LeaseCoordinator, lease_name, volume_id

__all__ = ["KubeApi", "KubeApiError", "KubeFeatures", "LeaseCoordinator", "PodIdentity", "Reporter", "connect",
           "lease_name", "micro_time", "pod_identity", "setup", "volume_id", "wanted"]


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
    With `events` off no Event is ever attempted. The pod is read (for the uid Events carry, and as
    an early reachability check) only when Events are on and `POD_UID` is not set; otherwise each
    feature finds an unusable API on its own first call and warns once.
    """
    environ = os.environ if environ is None else environ
    if not wanted(config, environ):
        return None
    want_lease = config.coordination in ("auto", "lease")
    want_events = config.events != "off"
    state_dir = Path(target) / ".provisioner"
    try:
        api, kubeconfig_ns = connect(environ)
    except Exception as exc:  # noqa: BLE001 - ImportError, ConfigException, bad files: all mean "no API"
        log.warning("kubernetes API features off (%s: %s)%s", type(exc).__name__, redact(str(exc)),
                    "; using the file lock on the volume" if want_lease else "")
        return None
    pod = pod_identity(environ, kubeconfig_ns)
    identity = f"{pod.name}/{secrets.token_hex(3)}"
    if want_events and pod.uid is None:  # the uid is only for Events; POD_UID (downward API) spares this GET
        try:
            pod_obj = api.request("GET", pod.path)
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
    reporter: Reporter | None = None
    if want_events or config.readiness_condition:
        reporter = Reporter(api, pod, repo_id=config.repo_id, events=want_events,
                            condition_type=config.readiness_condition, redactor=Redactor.for_secrets(config.token))
        tracker.subscribe(reporter.on_tracker_event)
    coordinator: Coordinator | None = None
    if want_lease:
        file_lock = FileLock(state_dir, identity=identity)
        lease = LeaseCoordinator(api, namespace=pod.namespace, identity=identity, state_dir=state_dir,
                                 duration=config.lease_duration, fallback=file_lock, reporter=reporter)
        coordinator = lease
        if not lease.probe():
            coordinator = file_lock
    return KubeFeatures(pod=pod, api=api, reporter=reporter, coordinator=coordinator)
