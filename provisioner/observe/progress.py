"""The one live record of a run: what every stage reports into, and what metrics, logs,
/status, Kubernetes Events and the public API's callback read from.

Thread-safe. Stages call the `Tracker` methods; readers call `snapshot()` or subscribe to
`Event`s. Messages stored here must already be free of secrets (see `redact.py`).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ..manifest import Plan


class Phase(StrEnum):
    PENDING = "pending"
    PLANNING = "planning"
    WAITING = "waiting"  # for another replica / process holding the download lock or Lease
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    SMOKE_TEST = "smoke_test"
    READY = "ready"
    FAILED = "failed"


PHASES: tuple[str, ...] = tuple(p.value for p in Phase)


class EventKind(StrEnum):
    """What a Tracker event reports. A StrEnum: logs and Events print the plain string."""

    PHASE = "phase"
    PLAN = "plan"
    FILE_STARTED = "file_started"
    FILE_DONE = "file_done"
    RETRY = "retry"
    STALL = "stall"
    WAITING = "waiting"
    VERIFIED = "verified"  # kind=checksums|embedding (the smoke test reports here)
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True)
class Event:
    """A discrete happening; `data` holds plain JSON-able values."""

    kind: EventKind
    time: float
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class FileProgress:
    path: str
    size: int
    done: int = 0  # bytes of this file on disk (resumed + received)
    state: str = "pending"  # pending, downloading, done, skipped
    source: str | None = None  # where the bytes came from: "hub" or a mirror URL (None: already on disk)
    evidence: str = "size-only"  # what verification checks: sha256, git-sha1 or size-only (FileEntry.evidence)


SPEED_WINDOW_SECONDS = 10.0


class Tracker:
    def __init__(self, *, repo_id: str, revision: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.repo_id = repo_id
        self.revision = revision
        self._clock = clock
        self._lock = threading.Lock()
        self._listeners: list[Callable[[Event], None]] = []
        self.phase = Phase.PENDING
        self.commit: str | None = None
        self.commit_known: bool | None = None  # False: planned, but the hub names no commit for the revision
        self.started_at = time.time()
        self.phase_since = time.time()
        self.files: dict[str, FileProgress] = {}
        self.bytes_total = 0
        self.bytes_on_disk = 0  # resumed partials + completed files + received bytes
        self.bytes_received = 0  # from the network in this process (the counter)
        self.retries: dict[str, int] = {}
        self.source_bytes: dict[str, int] = {}  # "hub" / "mirror" -> bytes received from it
        self.mirror_failures: dict[str, int] = {}  # reason -> a mirror was given up for a file
        self.last_mirror_failure: str | None = None
        self.stalls = 0
        self.verify_seconds: dict[str, float] = {}
        self.verify_ok: dict[str, bool] = {}
        self.smoke: dict[str, Any] | None = None
        self.waiting_for: str | None = None
        self.last_error: str | None = None
        self.ready = False
        self.last_success_time: float | None = None
        self.last_progress = self._clock()  # monotonic time bytes last arrived (for /healthz)
        self._samples: deque[tuple[float, int]] = deque()  # (monotonic time, bytes_received)

    # ---- subscription -------------------------------------------------------------------
    def subscribe(self, listener: Callable[[Event], None]) -> None:
        with self._lock:
            self._listeners.append(listener)

    def _emit(self, kind: EventKind, /, **data: Any) -> None:
        event = Event(kind=kind, time=time.time(), data=data)
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(event)
            except Exception:  # noqa: BLE001 - a broken reporter must never break a download
                pass

    # ---- writers (called by stages) -----------------------------------------------------
    def set_phase(self, phase: Phase) -> None:
        with self._lock:
            if self.phase == phase:
                return
            self.phase = phase
            self.phase_since = time.time()
            if phase not in (Phase.WAITING,):
                self.waiting_for = None
        self._emit(EventKind.PHASE, phase=phase.value)

    def set_plan(self, plan: Plan, *, on_disk: dict[str, int] | None = None) -> None:
        """`on_disk`: bytes already present per path (complete files or resumable partials)."""
        on_disk = on_disk or {}
        with self._lock:
            self.commit = plan.commit
            self.commit_known = plan.commit_known
            self.files = {f.path: FileProgress(f.path, f.size, min(on_disk.get(f.path, 0), f.size),
                                               evidence=f.evidence) for f in plan.files}
            self.bytes_total = plan.total_bytes
            self.bytes_on_disk = sum(fp.done for fp in self.files.values())
        evidence = Counter(f.evidence for f in plan.files)
        self._emit(EventKind.PLAN, commit=plan.commit, files=len(plan.files), bytes_total=plan.total_bytes,
                   bytes_on_disk=self.bytes_on_disk, evidence=dict(sorted(evidence.items())))

    def file_started(self, path: str, *, offset: int) -> None:
        """A transfer of `path` begins (or resumes) with `offset` bytes already on disk."""
        with self._lock:
            fp = self.files.get(path)
            if fp is not None:
                self.bytes_on_disk += offset - fp.done
                fp.done = offset
                fp.state = "downloading"
        self._emit(EventKind.FILE_STARTED, path=path, offset=offset)

    def add_bytes(self, path: str, n: int, *, source: str = "hub") -> None:
        """`n` bytes of `path` arrived from the network (`source`: hub or mirror) and were written."""
        now = self._clock()
        with self._lock:
            self.bytes_received += n
            self.source_bytes[source] = self.source_bytes.get(source, 0) + n
            self.bytes_on_disk += n
            fp = self.files.get(path)
            if fp is not None:
                fp.done += n
            self.last_progress = now
            if not self._samples or now - self._samples[-1][0] >= 0.25:
                self._samples.append((now, self.bytes_received))
                while self._samples and now - self._samples[0][0] > SPEED_WINDOW_SECONDS:
                    self._samples.popleft()
            else:
                self._samples[-1] = (self._samples[-1][0], self.bytes_received)

    def discard_bytes(self, path: str, n: int) -> None:
        """`n` bytes of `path` on disk were thrown away (corrupt, or the file changed on the hub)."""
        with self._lock:
            fp = self.files.get(path)
            if fp is not None:
                n = min(n, fp.done)
                fp.done -= n
                self.bytes_on_disk -= n

    def file_done(self, path: str, *, skipped: bool = False) -> None:
        with self._lock:
            fp = self.files.get(path)
            if fp is not None:
                self.bytes_on_disk += fp.size - fp.done
                fp.done = fp.size
                fp.state = "skipped" if skipped else "done"
        self._emit(EventKind.FILE_DONE, path=path, skipped=skipped)

    def retry(self, *, reason: str, path: str | None, delay: float, message: str) -> None:
        """A retry is scheduled. `reason` is a low-cardinality label; `message` must be redacted."""
        with self._lock:
            self.retries[reason] = self.retries.get(reason, 0) + 1
            self.last_error = message
        self._emit(EventKind.RETRY, reason=reason, path=path, delay=round(delay, 3), message=message)

    def file_source(self, path: str, source: str) -> None:
        """`path` was completed from `source` ("hub" or a mirror's URL)."""
        with self._lock:
            fp = self.files.get(path)
            if fp is not None:
                fp.source = source

    def file_sources(self) -> dict[str, str]:
        with self._lock:
            return {f.path: f.source for f in self.files.values() if f.source is not None}

    def mirror_failed(self, *, reason: str, mirror: str) -> None:
        """A mirror was given up for one file (`reason` is low-cardinality; the next source takes over)."""
        with self._lock:
            self.mirror_failures[reason] = self.mirror_failures.get(reason, 0) + 1
            self.last_mirror_failure = f"{mirror}: {reason}"

    def stall(self, *, path: str | None) -> None:
        with self._lock:
            self.stalls += 1
        self._emit(EventKind.STALL, path=path)

    def waiting(self, *, holder: str) -> None:
        with self._lock:
            self.waiting_for = holder
        self.set_phase(Phase.WAITING)
        self._emit(EventKind.WAITING, holder=holder)

    def verification(self, *, kind: str, seconds: float, ok: bool, detail: str | None = None) -> None:
        """kind: `checksums` or `embedding`."""
        with self._lock:
            self.verify_seconds[kind] = self.verify_seconds.get(kind, 0.0) + seconds
            self.verify_ok[kind] = ok
            if kind == "embedding":
                self.smoke = {"ok": ok, "detail": detail}
        self._emit(EventKind.VERIFIED, kind=kind, seconds=round(seconds, 3), ok=ok, detail=detail)

    def mark_ready(self) -> None:
        with self._lock:
            self.ready = True
            self.last_success_time = time.time()
        self.set_phase(Phase.READY)
        self._emit(EventKind.READY, repo_id=self.repo_id, commit=self.commit)

    def mark_failed(self, *, message: str, exit_code: int) -> None:
        with self._lock:
            self.ready = False
            self.last_error = message
        self.set_phase(Phase.FAILED)
        self._emit(EventKind.FAILED, message=message, exit_code=exit_code)

    # ---- readers --------------------------------------------------------------------------
    def speed(self) -> float:
        """Bytes per second received over the last SPEED_WINDOW_SECONDS (0 when idle)."""
        now = self._clock()
        with self._lock:
            samples = [s for s in self._samples if now - s[0] <= SPEED_WINDOW_SECONDS]
            if not samples:
                return 0.0
            t0, b0 = samples[0]
            b1 = self.bytes_received
        span = max(now - t0, 1.0)
        return (b1 - b0) / span if b1 > b0 else 0.0

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able view: the body of /status and of progress log lines."""
        speed = self.speed()
        with self._lock:
            remaining = max(self.bytes_total - self.bytes_on_disk, 0)
            eta = (remaining / speed) if speed > 0 else None
            ratio = (self.bytes_on_disk / self.bytes_total) if self.bytes_total else (1.0 if self.ready else 0.0)
            return {
                "repo_id": self.repo_id,
                "revision": self.revision,
                "commit": self.commit,
                "commit_known": self.commit_known,
                "phase": self.phase.value,
                "ready": self.ready,
                "bytes_total": self.bytes_total,
                "bytes_on_disk": self.bytes_on_disk,
                "bytes_received": self.bytes_received,
                "progress_ratio": round(min(ratio, 1.0), 6),
                "speed_bytes_per_second": round(speed, 1),
                "eta_seconds": round(eta, 1) if eta is not None else None,
                "files_total": len(self.files),
                "files_done": sum(1 for f in self.files.values() if f.state in ("done", "skipped")),
                "files": [
                    {"path": f.path, "size": f.size, "done": f.done, "state": f.state, "evidence": f.evidence,
                     **({"source": f.source} if f.source else {})}
                    for f in self.files.values()
                ],
                "retries": dict(self.retries),
                "stalls": self.stalls,
                "source_bytes": dict(self.source_bytes),
                "mirror_failures": dict(self.mirror_failures),
                "last_mirror_failure": self.last_mirror_failure,
                "verification": {k: {"ok": self.verify_ok.get(k), "seconds": round(v, 3)}
                                 for k, v in self.verify_seconds.items()},
                "smoke_test": self.smoke,
                "waiting_for": self.waiting_for,
                "last_error": self.last_error,
                "started_at": self.started_at,
                "last_success_time": self.last_success_time,
                "seconds_since_progress": round(self._clock() - self.last_progress, 3),
            }
