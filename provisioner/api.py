"""The public Python API: `provision(...)`. The CLI is a thin layer over it.

    from provisioner import provision
    result = provision(repo_id="sentence-transformers/all-MiniLM-L6-v2", target="/models/minilm",
                       progress=lambda event: print(event.kind, event.data))

Safe to run in a thread (e.g. behind an admin route): pass `stop=threading.Event()` to cancel.

`execute` reads as the pipeline: guard the target -> warm start? -> plan -> hold the lock ->
fetch + verify checksums -> smoke test -> mark ready. Each step is a stage module; this one only
orders them and builds the result. It is the top of the import graph: no stage imports it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import layout, marker, place, warm
from .config import Config, read_token
from .context import RunContext, Stop
from .errors import ProvisionerError, VerificationError, exit_code_for
from .lock import Coordinator, FileLock, NoCoordination
from .manifest import Plan
from .progress import Event, Phase, Tracker
from .redact import redact, register_secret
from .retry import RetryBudget
from .verify import check_smoke_dependencies, needs_smoke_test

log = logging.getLogger("provisioner")


@dataclass(frozen=True)
class ProvisionResult:
    repo_id: str
    revision: str
    commit: str
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
              free_space: Callable[[Path], int] | None = None, **overrides: Any) -> ProvisionResult:
    """Make the model ready under `config.target`. Raises a `ProvisionerError` subclass on failure.

    `overrides` are `Config` fields (e.g. `repo_id=`, `target=`, `verify=`); without `config` the
    defaults are used and the token comes from HF_TOKEN.
    """
    if config is None:
        config = Config(token=read_token(token_file=str(overrides.get("token_file", "")), environ=os.environ))
    if overrides:
        config = dataclasses.replace(config, **overrides)
    register_secret(config.token)
    tracker = tracker or Tracker(repo_id=config.repo_id, revision=config.revision)
    if progress is not None:
        tracker.subscribe(progress)
    ctx = RunContext(config=config, tracker=tracker, budget=RetryBudget(config.retry_budget),
                     stop=stop if stop is not None else Stop())
    kube: Any = None
    try:
        try:
            place.check_state_dir(Path(config.target))  # before kube: the Lease's volume id lives there
            kube = _setup_kube(ctx)
            result = execute(ctx, kube=kube, free_space=free_space)
        except ProvisionerError as exc:
            tracker.mark_failed(message=redact(str(exc)), exit_code=exit_code_for(exc))
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
    if cfg.offline:  # air-gapped: the planner (and so the network) is never reached
        return _result_from_marker(ctx, warm.offline_marker(ctx, target=readers_dir), target=readers_dir, clock=clock, waited_for=None)
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
    target = layout.commit_dir(root, plan.commit) if versioned else root  # where this commit's files go
    if versioned:
        place.prepare_target(target)
    lock = _coordinator(cfg, kube=kube, target=target)
    with lock.hold(key=f"{plan.repo_id}@{plan.commit}", tracker=tracker, stop=ctx.stop):
        waited_for = tracker.waiting_for
        check = marker.check_ready(target, repo_id=plan.repo_id, revision=plan.commit)
        if check.ok and not cfg.reverify:  # another replica (or an earlier revision name) finished it
            log.info("ready from the marker written by %s", waited_for or "an earlier run")
            if versioned:
                _switch(cfg, root=root, commit=plan.commit)
            return _result_from_marker(ctx, check.marker or {}, target=readers_dir, clock=clock,
                                       waited_for=waited_for)
        marker.invalidate(target)  # versioned: a folder no reader is pointed at yet
        marker.atomic_write_json(marker.state_dir(target) / "plan.json", plan.to_json())
        if versioned:
            previous = layout.current_commit(root, cfg.revision)
            linked = layout.seed_unchanged_files(plan, root=root, into=target, previous=previous)
            if linked:
                log.info("%d unchanged file(s) hard-linked from %s", linked, (previous or "")[:12])
        checksums = fetch_and_verify(ctx, plan, target=target, free_space=free_space)
        embedding = _smoke_test(ctx, target=target)
        verification = _verification_json(checksums=checksums.to_json() if checksums.checked else None,
                                          embedding=embedding)
        marker.write_marker(target, plan=plan, verify_level=cfg.verify, verification=verification,
                            engine=cfg.engine, started_at=clock.started)
        if versioned:
            _switch(cfg, root=root, commit=plan.commit)
    log.info("model ready: %s@%s in %s", plan.repo_id, plan.commit[:12], readers_dir)
    return _result(plan, target=readers_dir, tracker=tracker, clock=clock, warm=False, waited_for=waited_for,
                   verification=verification)


def _switch(cfg: Config, *, root: Path, commit: str) -> None:
    """versioned layout: point the revision's link at the verified commit (one rename), then prune."""
    previous = layout.current_commit(root, cfg.revision)
    layout.switch_link(root, cfg.revision, commit)
    log.info("%s now points at %s", layout.link_path(root, cfg.revision), commit[:12])
    layout.prune(root, keep_links=cfg.keep_revisions, keep_commits=(previous,) if previous else ())


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


def _smoke_test(ctx: RunContext, *, target: Path) -> dict[str, Any] | None:
    """The embedding smoke test's JSON for the marker (None when --verify is not `full`)."""
    if ctx.config.verify != "full":
        return None
    from .verify import is_sentence_transformers_dir, run_smoke_test

    if not is_sentence_transformers_dir(target):
        return {"ok": None, "detail": "not a sentence-transformers model: skipped"}
    ctx.check_stop()
    ctx.tracker.set_phase(Phase.SMOKE_TEST)
    ref = Path(ctx.config.reference_embeddings) if ctx.config.reference_embeddings else None
    result = run_smoke_test(target, reference=ref, stop=ctx.stop)
    detail = redact(result.detail)
    ctx.tracker.verification(kind="embedding", seconds=result.seconds, ok=result.ok, detail=detail)
    if not result.ok:
        raise VerificationError(f"embedding smoke test failed: {detail}", kind="embedding")
    return result.to_json()
