"""The public Python API: `provision(...)`. The CLI is a thin layer over it.

    from provisioner import provision
    result = provision(repo_id="sentence-transformers/all-MiniLM-L6-v2", target="/models/minilm",
                       progress=lambda event: print(event.kind, event.data))

Safe to run in a thread (e.g. behind an admin route): pass `stop=threading.Event()` to cancel.

`execute` reads as the pipeline: guard the target -> warm start? -> plan -> hold the lock ->
fetch + verify checksums -> smoke test -> mark ready. The smoke test's child process is started
before the fetch (`_early_smoke_child`) so its imports overlap the download; `execute` owns it and
kills it on any way out. Each step is a stage module; this one only
orders them and builds the result. It is the top of the import graph: no stage imports it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import place, warm
from .config import Config, read_token
from .context import RunContext, Stop
from .errors import ConfigError, OfflineError, ProvisionerError, VerificationError, exit_code_for
from .manifest import FileEntry, Plan
from .observe.progress import Event, Phase, Tracker
from .redact import Redactor
from .retry import RetryBudget
from .state import fsutil, layout, marker
from .state.lock import Coordinator, FileLock, NoCoordination
from .verify import check_smoke_dependencies, needs_smoke_test

log = logging.getLogger("provisioner")


@dataclass(frozen=True)
class ProvisionResult:
    repo_id: str
    revision: str
    commit: str | None  # None: the hub names no commit for this revision (provisioned as named)
    target: Path
    files: int
    bytes_total: int
    bytes_downloaded: int  # received from the network by this call
    warm: bool  # ready from an existing marker, nothing fetched
    waited_for: str | None  # another replica/process that did the download
    seconds: float
    verification: dict[str, Any]


def provision(config: Config | None = None, *, progress: Callable[[Event], None] | None = None,
              stop: threading.Event | None = None, tracker: Tracker | None = None,
              free_space: Callable[[Path], int] | None = None, budget: RetryBudget | None = None,
              shared: Any = None, **overrides: Any) -> ProvisionResult:
    """Make the model ready under `config.target`. Raises a `ProvisionerError` subclass on failure.

    `overrides` are `Config` fields (e.g. `repo_id=`, `target=`, `verify=`); without `config` the
    defaults are used and the token comes from HF_TOKEN. `budget` and `shared` (a `fetch.share.FetchShare`)
    are passed by a several-models run so that every model draws on one retry budget and one fetch pool.
    """
    if config is None:
        config = Config(token=read_token(token_file=str(overrides.get("token_file", "")), environ=os.environ))
    if overrides:
        config = dataclasses.replace(config, **overrides)
    redactor = Redactor.for_secrets(config.token)
    tracker = tracker or Tracker(repo_id=config.repo_id, revision=config.revision)
    if progress is not None:
        tracker.subscribe(progress)
    ctx = RunContext(config=config, tracker=tracker, budget=budget or RetryBudget(config.retry_budget),
                     stop=stop if stop is not None else Stop(), redactor=redactor, shared=shared)
    kube: Any = None
    try:
        try:
            place.check_state_dir(Path(config.target))  # before kube: the Lease's volume id lives there
            kube = _setup_kube(ctx)
            result = execute(ctx, kube=kube, free_space=free_space)
        except ProvisionerError as exc:
            tracker.mark_failed(message=redactor(str(exc)), exit_code=exit_code_for(exc))
            raise
        tracker.mark_ready()
        return result
    finally:
        if kube is not None:  # after ready/failed were reported, so Events and the pod condition see them
            kube.close()


def _setup_kube(ctx: RunContext) -> Any:
    """Events and the pod condition, whatever the coordination (None when Kubernetes features are off)."""
    if ctx.config.kube == "off":
        return None
    from . import kube

    return kube.setup(ctx.config, tracker=ctx.tracker, target=Path(ctx.config.target))


def execute(ctx: RunContext, *, kube: Any = None, free_space: Callable[[Path], int] | None = None) -> ProvisionResult:
    """The pipeline. Raises a `ProvisionerError` subclass on failure; reports nothing terminal itself."""
    from .plan import build_plan
    from .verify.policy import fetch_and_verify

    cfg, tracker = ctx.config, ctx.tracker
    root = Path(cfg.target)
    versioned = cfg.layout == "versioned"
    readers_dir = layout.model_dir(target=root, revision=cfg.revision, layout=cfg.layout)
    clock = _Clock()
    place.check_state_dir(root)
    if cfg.offline:  # never a connection: the volume answers, or nothing does
        return _result_from_marker(ctx, _offline_marker(ctx, folder=readers_dir), target=readers_dir, clock=clock,
                                   waited_for=None)
    if not cfg.reverify:
        served = warm.usable_marker(ctx, target=readers_dir)  # read-only: a read-only volume is served as is
        if served is not None:
            return _result_from_marker(ctx, served, target=readers_dir, clock=clock, waited_for=None)
    place.prepare_target(root)
    tracker.set_phase(Phase.PLANNING)
    plan = build_plan(ctx)
    ctx.check_stop()
    if cfg.verify == "full" and needs_smoke_test(f.path for f in plan.files):
        check_smoke_dependencies()  # a missing `embed` extra is a config error, found before any byte is fetched
    # where this commit's files go (an unknown commit: a synthetic `unknown-...` key, never a fake sha)
    target = layout.commit_dir(root, plan.key) if versioned else root
    if versioned:
        place.prepare_target(target)
    lock = _coordinator(cfg, kube=kube, target=target)
    with lock.hold(key=f"{plan.repo_id}@{plan.key}", tracker=tracker, stop=ctx.stop):
        waited_for = tracker.waiting_for
        check = marker.check_ready(target, repo_id=plan.repo_id, revision=plan.ref, app_check_pending_ok=True)
        if check.ok and not cfg.reverify and (plan.commit_known or _same_files(plan, check.marker)):
            # another replica (or an earlier revision name) finished it
            log.info("ready from the marker written by %s", waited_for or "an earlier run")
            if versioned:
                _switch(cfg, root=root, commit=plan.key)
            return _result_from_marker(ctx, check.marker or {}, target=readers_dir, clock=clock,
                                       waited_for=waited_for)
        marker.invalidate(target)  # versioned: a folder no reader is pointed at yet
        fsutil.atomic_write_json(marker.state_dir(target) / "plan.json", plan.to_json())
        if versioned:
            previous = layout.current_commit(root, cfg.revision)
            linked = layout.seed_unchanged_files(plan, root=root, into=target, previous=previous)
            if linked:
                log.info("%d unchanged file(s) hard-linked from %s", linked, (previous or "")[:12])
        with _early_smoke_child(ctx, plan, target=target) as child:
            checksums = fetch_and_verify(ctx, plan, target=target, free_space=free_space)
            embedding = _smoke_test(ctx, target=target, child=child)
        verification = _verification_json(checksums=checksums.to_json() if checksums.checked else None,
                                          embedding=embedding)
        marker.write_marker(target, plan=plan, verify_level=cfg.verify, verification=verification,
                            engine=cfg.engine, started_at=clock.started, sources=tracker.file_sources())
        if versioned:
            _switch(cfg, root=root, commit=plan.key)
    log.info("model ready: %s@%s in %s", plan.repo_id, plan.short, readers_dir)
    return _result(plan, target=readers_dir, tracker=tracker, clock=clock, warm=False, waited_for=waited_for,
                   verification=verification)


def _same_files(plan: Plan, m: dict[str, Any] | None) -> bool:
    """An unknown commit's marker answers only for the very files planned now (its key is the revision's)."""
    return m is not None and set(plan.files) == {FileEntry.from_json(f) for f in m.get("files", [])}


def _switch(cfg: Config, *, root: Path, commit: str) -> None:
    """versioned layout: point the revision's link at the verified commit (one rename), then prune."""
    previous = layout.current_commit(root, cfg.revision)
    layout.switch_link(root, cfg.revision, commit)
    log.info("%s now points at %s", layout.link_path(root, cfg.revision), commit[:12])
    layout.prune(root, keep_links=cfg.keep_revisions, keep_commits=(previous,) if previous else ())


def _offline_marker(ctx: RunContext, *, folder: Path) -> dict[str, Any]:
    """The verified copy that answers an offline run (a branch is taken as verified, not re-checked)."""
    cfg = ctx.config
    if cfg.reverify:
        raise ConfigError("--reverify re-plans from the hub and cannot run offline; "
                          "`model-provisioner verify DIR` re-hashes a volume without the network", setting="reverify")
    check = marker.check_ready(folder, repo_id=cfg.repo_id, revision=cfg.revision)
    if not check.ok or check.marker is None:
        raise OfflineError(f"offline (--offline / HF_HUB_OFFLINE=1): {folder} holds no verified copy of "
                           f"{cfg.repo_id}@{cfg.revision} ({check.reason}); nothing may be downloaded",
                           reason=check.reason)
    if cfg.expect_commit and check.marker.get("commit") != cfg.expect_commit:
        raise OfflineError(f"offline (--offline / HF_HUB_OFFLINE=1): {folder} holds commit "
                           f"{check.marker.get('commit')} of {cfg.repo_id}@{cfg.revision}, not --expect-commit "
                           f"{cfg.expect_commit}; nothing may be downloaded", reason="commit is not --expect-commit")
    log.info("offline: serving the verified copy %s", str(check.marker["commit"] or "(commit unknown)")[:12])
    return check.marker


class _Clock:
    def __init__(self) -> None:
        self.started = time.time()  # wall clock, for the marker
        self.t0 = time.monotonic()  # for the result's duration

    def seconds(self) -> float:
        return time.monotonic() - self.t0


def _verification_json(*, checksums: dict[str, Any] | None, embedding: dict[str, Any] | None) -> dict[str, Any]:
    """The marker's `verification` object: only the checks that ran."""
    out: dict[str, Any] = {}
    if checksums is not None:
        out["checksums"] = checksums
    if embedding is not None:
        out["embedding"] = embedding
    return out


def _result(plan: Plan, *, target: Path, tracker: Tracker, clock: _Clock, warm: bool, waited_for: str | None,
            verification: dict[str, Any]) -> ProvisionResult:
    return ProvisionResult(
        repo_id=plan.repo_id, revision=plan.revision, commit=plan.commit, target=target,
        files=len(plan.files), bytes_total=plan.total_bytes, bytes_downloaded=tracker.bytes_received,
        warm=warm, waited_for=waited_for, seconds=clock.seconds(), verification=verification)


def _result_from_marker(ctx: RunContext, m: dict[str, Any], *, target: Path, clock: _Clock,
                        waited_for: str | None) -> ProvisionResult:
    plan = Plan.from_json(m)
    ctx.tracker.set_plan(plan, on_disk={f.path: f.size for f in plan.files})
    for f in plan.files:
        ctx.tracker.file_done(f.path, skipped=True)
    return _result(plan, target=target, tracker=ctx.tracker, clock=clock, warm=waited_for is None,
                   waited_for=waited_for, verification=dict(m.get("verification") or {}))


def _coordinator(cfg: Config, *, kube: Any, target: Path) -> Coordinator:
    if cfg.coordination == "none":
        return NoCoordination()
    if kube is not None and kube.coordinator is not None:
        return kube.coordinator
    return FileLock(marker.state_dir(target), identity=f"{socket.gethostname()}/{os.getpid()}")


def _reference(cfg: Config) -> Path | None:
    return Path(cfg.reference_embeddings) if cfg.reference_embeddings else None


@contextmanager
def _early_smoke_child(ctx: RunContext, plan: Plan, *, target: Path) -> Iterator[Any]:
    """The smoke test's child, started now so its 5-8 s of imports overlap the download (None when no
    test is due: --verify is not `full`, or the plan's files are no sentence-transformers model).
    Killed on the way out, whatever happened (a stop, a failed fetch or verification)."""
    if ctx.config.verify != "full" or not needs_smoke_test(f.path for f in plan.files):
        yield None
        return
    from .verify import SmokeChild

    child = SmokeChild(target, reference=_reference(ctx.config))
    log.debug("smoke test child pid %s started early: its imports overlap the download", child.pid)
    try:
        yield child
    finally:
        child.close()
        log.debug("smoke test child pid %s ended", child.pid)


def _smoke_test(ctx: RunContext, *, target: Path, child: Any = None) -> dict[str, Any] | None:
    """The embedding smoke test's JSON for the marker (None when --verify is `none` or `checksums`).

    `child`: a `SmokeChild` started early (its imports done during the download); None runs one now.
    --verify app: no test here; the marker says it is pending until the app-image check records its result.
    """
    if ctx.config.verify not in ("full", "app"):
        return None
    from .verify import is_sentence_transformers_dir, run_smoke_test

    if not is_sentence_transformers_dir(target):
        return {"ok": None, "detail": "not a sentence-transformers model: skipped"}
    if ctx.config.verify == "app":
        return {"ok": None, "pending": "app", "detail": "runs in the app's image (smoke_child.py --record)"}
    ctx.check_stop()
    ctx.tracker.set_phase(Phase.SMOKE_TEST)
    if child is not None:
        result = child.run(stop=ctx.stop)
    else:
        result = run_smoke_test(target, reference=_reference(ctx.config), stop=ctx.stop)
    detail = ctx.redactor(result.detail)
    ctx.tracker.verification(kind="embedding", seconds=result.seconds, ok=result.ok, detail=detail)
    if not result.ok:
        raise VerificationError(f"embedding smoke test failed: {detail}", kind="embedding")
    return result.to_json()
