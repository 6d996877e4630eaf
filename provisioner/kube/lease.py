"""Lease coordination: `LeaseCoordinator` (a `lock.Coordinator` over a coordination.k8s.io/v1 Lease,
so N replicas sharing a volume download once), its renew thread, the volume's identity and the
Lease naming.

Imports `client` (this package's API layer), `events.Reporter` (for the TakingOver Event),
`provisioner.state.lock`, `.context`, `.errors` and `.progress`; never the package's `__init__`.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..context import interrupted
from ..errors import LocalIOError
from ..observe.progress import Tracker
from ..state.lock import Coordinator
from .client import (
    COMPONENT,
    CONNECT_TIMEOUT,
    READ_TIMEOUT,
    KubeApi,
    KubeApiError,
    clean,
    log,
    micro_time,
    parse_time,
)
from .events import Reporter

LEASE_PREFIX = "model-provisioner-"
UNREACHABLE_AT_START_SECONDS = 5.0  # a Lease API that never answered: fall back to the file lock after this


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


@dataclass
class _Watch:
    """What one waiter has seen of a Lease held by someone else (mutable: it is the waiter's own)."""

    observed_at: float
    observed: tuple[Any, ...] | None = None
    holder: str = ""
    reported: str | None = None
    ever_answered: bool = False
    failing_since: float | None = None
    again_now: bool = False  # lost a create/take race: look again without waiting


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

    def lease_path(self, name: str | None = None) -> str:
        """The Leases collection in our namespace, or one Lease in it."""
        base = f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases"
        return f"{base}/{name}" if name else base

    def micro_now(self) -> str:
        """Now by this coordinator's wall clock, as a MicroTime (acquire/renew/release times)."""
        return micro_time(self._wallclock())

    def _warn(self, exc: BaseException) -> None:
        if not self._warned:
            self._warned = True
            hint = " (RBAC: get/create/update leases.coordination.k8s.io)" if \
                isinstance(exc, KubeApiError) and exc.status == 403 else ""
            log.warning("kubernetes Lease coordination off, using the file lock on the volume instead: %s%s",
                        exc, hint)

    def probe(self) -> bool:
        """RBAC probe at setup: a name nobody uses answers 404 when we may read Leases. False (after
        the one warning) when the Lease API is forbidden or unusable."""
        try:
            self.api.request("GET", self.lease_path(LEASE_PREFIX + "rbac-probe"))
        except KubeApiError as exc:
            if exc.status != 404:
                self._warn(exc)
                return False
        return True

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
        watch = _Watch(observed_at=self._clock())
        while True:
            if stop.is_set():
                raise interrupted(stop)
            try:
                won = self._try_once(name, key, watch)
                if won is not None:
                    return won
                if watch.holder and watch.holder != watch.reported:
                    tracker.waiting(holder=watch.holder)
                    watch.reported = watch.holder
            except KubeApiError as exc:
                self._tolerate(name, exc, watch)
            if not watch.again_now and stop.wait(self.poll_seconds):
                raise interrupted(stop)

    def _try_once(self, name: str, key: str, watch: _Watch) -> dict[str, Any] | None:
        """One look at the Lease: the Lease once we hold it, else None (watch says who holds it)."""
        watch.again_now = False
        try:
            lease: dict[str, Any] | None = self.api.request("GET", self.lease_path(name))
        except KubeApiError as exc:
            if exc.status != 404:
                raise
            lease = None
        watch.ever_answered, watch.failing_since = True, None
        if lease is None:
            created = self._create(name, key)
            watch.again_now = created is None  # 409: created between our GET and POST: re-read now
            return created
        spec = lease.get("spec") or {}
        holder = watch.holder = spec.get("holderIdentity") or ""
        if holder == self.identity:
            return lease  # ours already (an update whose answer we lost)
        sig = (holder, spec.get("renewTime"), lease.get("metadata", {}).get("resourceVersion"))
        if sig != watch.observed:
            watch.observed, watch.observed_at = sig, self._clock()
        if holder and not self._expired(spec, watch.observed_at):
            return None
        taken = self._take(lease)
        if taken is None:
            watch.again_now = True  # 409: another waiter won; re-read
            watch.holder = ""
            return None
        if holder:
            if self.reporter is not None:
                self.reporter.event("TakingOver", f"the Lease of {holder} expired; taking over the "
                                    f"download (resuming from the partial data on the volume)",
                                    type_="Warning", key=holder)
            log.warning("Lease %s of %s expired; taking over", name, holder)
        return taken

    def _tolerate(self, name: str, exc: KubeApiError, watch: _Watch) -> None:
        """A failed look: transient errors are waited out for a while, anything else gives the Lease up."""
        watch.again_now = False
        if not exc.transient:
            raise _LeaseUnavailable(str(exc)) from exc
        now = self._clock()
        watch.failing_since = now if watch.failing_since is None else watch.failing_since
        limit = max(60.0, 3.0 * self.duration_seconds) if watch.ever_answered else UNREACHABLE_AT_START_SECONDS
        if now - watch.failing_since > limit:
            raise _LeaseUnavailable(f"{exc} for {now - watch.failing_since:.0f}s") from exc
        log.debug("Lease %s: %s; retrying", name, exc)

    def _expired(self, spec: dict[str, Any], observed_at: float) -> bool:
        duration = spec.get("leaseDurationSeconds") or self.duration_seconds
        if self._clock() - observed_at > duration:
            return True
        renewed = parse_time(spec.get("renewTime")) or parse_time(spec.get("acquireTime"))
        return renewed is not None and self._wallclock() - renewed > 2 * duration

    def _spec(self, transitions: int) -> dict[str, Any]:
        now = self.micro_now()
        return {"holderIdentity": self.identity, "leaseDurationSeconds": self.duration_seconds,
                "acquireTime": now, "renewTime": now, "leaseTransitions": transitions}

    def _create(self, name: str, key: str) -> dict[str, Any] | None:
        body = {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": self.namespace,
                         "labels": {"app.kubernetes.io/managed-by": COMPONENT},
                         "annotations": {"model-provisioner/key": clean(key)}},
            "spec": self._spec(0),
        }
        try:
            return self.api.request("POST", self.lease_path(), body)
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
            return self.api.request("PUT", self.lease_path(lease["metadata"]["name"]), _for_update(body))
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
            spec["renewTime"] = self.micro_now()
            try:
                self.api.request("PUT", self.lease_path(name), _for_update({**lease, "spec": spec}))
                return
            except KubeApiError as exc:
                if exc.status != 409:
                    log.info("could not release Lease %s (%s); others take over after it expires", name, exc)
                    return
            try:
                lease = self.api.request("GET", self.lease_path(name))
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
            spec["renewTime"] = o.micro_now()
            try:
                self.lease = o.api.request("PUT", o.lease_path(self.name), _for_update({**self.lease, "spec": spec}))
                self.renewals += 1
                last_ok = time.monotonic()
                warned_late = False
                continue
            except KubeApiError as exc:
                if exc.status == 409:
                    try:
                        current = o.api.request("GET", o.lease_path(self.name))
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

