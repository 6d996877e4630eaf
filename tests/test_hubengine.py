"""`--engine hub` (provisioner/fetch/hub.py) against the hub emulator over real HTTP on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from hub_emulator import HubEmulator

from provisioner import verify
from provisioner.config import Config
from provisioner.context import RunContext
from provisioner.errors import (
    Interrupted,
    NotFoundError,
    RetryBudgetExhausted,
    TransientError,
    UnauthorizedError,
)
from provisioner.fetch import fetch_with_hub as _fetch
from provisioner.fetch.hub import HUB_METADATA_DIR
from provisioner.hubapi import classify_download_error
from provisioner.manifest import FileEntry, Plan
from provisioner.observe.progress import Tracker
from provisioner.retry import RetryBudget
from provisioner.state import marker

REPO = "acme/small"


def _plan(hub: HubEmulator, repo_id: str, revision: str = "main") -> Plan:
    commit = hub.commit_of(repo_id, revision)
    files = tuple(
        FileEntry(path=f.path, size=f.size, sha256=f.sha256 if f.lfs else None,
                  blob_sha1=None if f.lfs else f.blob_sha1)
        for f in sorted(hub.files(repo_id, commit).values(), key=lambda f: f.path)
    )
    return Plan(repo_id=repo_id, revision=revision, commit=commit, endpoint=hub.url, files=files)


def _config(hub: HubEmulator, target: Path, **overrides: object) -> Config:
    values: dict[str, object] = dict(repo_id=REPO, target=str(target), endpoint=hub.url, engine="hub",
                                     stall_timeout=5.0, api_timeout=5.0, connect_timeout=2.0, retry_budget=30.0,
                                     backoff_max=0.2, max_workers=4)
    values.update(overrides)
    return Config(**values)  # type: ignore[arg-type]


def fetch_with_hub(plan: Plan, entries: Sequence[FileEntry], *, config: Config, tracker: Tracker,
                   budget: RetryBudget, stop: threading.Event) -> None:
    """The engine's call with one RunContext, its state folder inside the target (as the run has it)."""
    _fetch(plan, entries, ctx=RunContext(config=config, tracker=tracker, budget=budget, stop=stop),
           state_dir=marker.state_dir(Path(config.target)))


def _run(plan: Plan, config: Config, *, entries: tuple[FileEntry, ...] | None = None,
         budget: float | None = None, stop: threading.Event | None = None) -> Tracker:
    tracker = Tracker(repo_id=plan.repo_id, revision=plan.revision)
    tracker.set_plan(plan)
    fetch_with_hub(plan, plan.files if entries is None else entries, config=config, tracker=tracker,
                   budget=RetryBudget(budget if budget is not None else config.retry_budget),
                   stop=stop or threading.Event())
    return tracker


def _content_bytes_served(hub: HubEmulator) -> int:
    """Body bytes of successful file responses (resolve + CDN): what a client received as file data."""
    assert hub.wait_idle(10)
    return sum(r.bytes_sent for r in hub.stats.requests if r.kind in ("resolve", "cdn") and r.status in (200, 206))


def _assert_files_match(plan: Plan, target: Path) -> None:
    for entry in plan.files:
        digests = verify.hash_file(target / entry.path)
        assert verify.matches(entry, digests), entry.path


@pytest.fixture
def small_hub(hub: HubEmulator, small_repo: Path) -> HubEmulator:
    hub.add_repo(REPO, small_repo)
    return hub


def test_downloads_the_pinned_commit(small_hub: HubEmulator, tmp_path: Path) -> None:
    hub = small_hub
    plan = _plan(hub, REPO)
    # A newer commit on main must not leak in: we ask for plan.commit.
    hub.replace_file(REPO, "config.json", b'{"hidden_size": 16}\n')
    assert hub.commit_of(REPO) != plan.commit
    hub.reset_stats()

    tracker = _run(plan, _config(hub, tmp_path))

    _assert_files_match(plan, tmp_path)
    assert (tmp_path / "config.json").read_bytes() == b'{"hidden_size": 8}\n'
    assert (tmp_path / HUB_METADATA_DIR).is_dir()  # documented side effect of local_dir mode
    snap = tracker.snapshot()
    assert snap["files_done"] == len(plan.files)
    assert snap["bytes_on_disk"] == plan.total_bytes
    assert snap["retries"] == {}
    # Every resolve went to the pinned commit.
    resolves = hub.stats.requests_for(kind="resolve")
    assert resolves and all(f"/resolve/{plan.commit}/" in r.path for r in resolves)


def test_tracker_bytes_equal_bytes_served(small_hub: HubEmulator, tmp_path: Path) -> None:
    plan = _plan(small_hub, REPO)
    small_hub.reset_stats()
    tracker = _run(plan, _config(small_hub, tmp_path))
    served = _content_bytes_served(small_hub)
    assert served == plan.total_bytes  # no fault: every file exactly once
    assert tracker.bytes_received == served


def test_only_the_given_entries_are_fetched(small_hub: HubEmulator, tmp_path: Path) -> None:
    plan = _plan(small_hub, REPO)
    wanted = tuple(e for e in plan.files if e.path.startswith("tokenizer/"))
    assert len(wanted) == 2
    small_hub.reset_stats()
    tracker = _run(plan, _config(small_hub, tmp_path), entries=wanted)
    got = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")
                 if p.is_file() and not p.relative_to(tmp_path).as_posix().startswith((".cache/", ".provisioner/")))
    assert got == sorted(e.path for e in wanted)
    assert tracker.bytes_received == sum(e.size for e in wanted) == _content_bytes_served(small_hub)


def test_5xx_burst_is_retried(small_hub: HubEmulator, tmp_path: Path) -> None:
    hub = small_hub
    plan = _plan(hub, REPO)
    hub.reset_stats()
    # More 503s than huggingface_hub's own retries absorb, on the big LFS file only.
    hub.fail_next(12, status=503, kind="any", path="model.safetensors")
    tracker = _run(plan, _config(hub, tmp_path))
    _assert_files_match(plan, tmp_path)
    assert hub.stats.faults_fired["fail_503"] == 12
    assert tracker.retries.get("http_5xx", 0) >= 1
    assert tracker.snapshot()["files_done"] == len(plan.files)
    assert tracker.bytes_received == _content_bytes_served(hub)


def test_cut_connection_is_retried_and_counted(small_hub: HubEmulator, tmp_path: Path) -> None:
    hub = small_hub
    plan = _plan(hub, REPO)
    hub.reset_stats()
    hub.faults.path = "model.safetensors"
    hub.faults.reset_after_bytes = 3 * 1024 * 1024  # once: RST mid-body
    tracker = _run(plan, _config(hub, tmp_path))
    _assert_files_match(plan, tmp_path)
    assert hub.stats.faults_fired["reset"] == 1
    assert tracker.retries.get("reset", 0) >= 1
    served = _content_bytes_served(hub) + sum(r.bytes_sent for r in hub.stats.requests if r.fault == "reset")
    # Bytes of the cut response may be lost in flight; what the tracker counts never exceeds what was sent,
    # and includes everything that made it into the final files.
    assert plan.total_bytes <= tracker.bytes_received <= served
    assert tracker.snapshot()["bytes_on_disk"] == plan.total_bytes


def test_404_on_resolve_fails_fast(small_hub: HubEmulator, tmp_path: Path) -> None:
    plan = _plan(small_hub, REPO)
    small_hub.fail_next(1, status=404, kind="resolve", path="config.json")
    tracker = Tracker(repo_id=REPO, revision="main")
    with pytest.raises(NotFoundError) as info:
        fetch_with_hub(plan, plan.files, config=_config(small_hub, tmp_path), tracker=tracker,
                       budget=RetryBudget(30), stop=threading.Event())
    assert info.value.path == "config.json"
    assert tracker.retries == {}


def test_file_missing_from_the_commit_fails_fast(small_hub: HubEmulator, tmp_path: Path) -> None:
    plan = _plan(small_hub, REPO)
    ghost = FileEntry(path="does/not/exist.json", size=10, blob_sha1="0" * 40)
    bad = Plan(repo_id=plan.repo_id, revision=plan.revision, commit=plan.commit, endpoint=plan.endpoint,
               files=(*plan.files, ghost))
    tracker = Tracker(repo_id=REPO, revision="main")
    with pytest.raises(NotFoundError) as info:
        fetch_with_hub(bad, (ghost,), config=_config(small_hub, tmp_path), tracker=tracker,
                       budget=RetryBudget(30), stop=threading.Event())
    assert info.value.path == "does/not/exist.json"
    assert tracker.retries == {}


def test_404_repo_fails_fast(hub: HubEmulator, tmp_path: Path) -> None:
    plan = Plan(repo_id="acme/missing", revision="main", commit="a" * 40, endpoint=hub.url,
                files=(FileEntry(path="config.json", size=3, blob_sha1="0" * 40),))
    tracker = Tracker(repo_id="acme/missing", revision="main")
    with pytest.raises(NotFoundError):
        fetch_with_hub(plan, plan.files, config=_config(hub, tmp_path, repo_id="acme/missing"), tracker=tracker,
                       budget=RetryBudget(30), stop=threading.Event())
    assert tracker.retries == {}


def test_private_repo_without_token_is_unauthorized(hub: HubEmulator, small_repo: Path, tmp_path: Path) -> None:
    hub.add_repo("acme/private", small_repo, token="hf_abcdefghijklmnop")
    plan = Plan(repo_id="acme/private", revision="main", commit=hub.commit_of("acme/private"),
                endpoint=hub.url, files=(FileEntry(path="config.json", size=19, blob_sha1="0" * 40),))
    tracker = Tracker(repo_id="acme/private", revision="main")
    with pytest.raises((UnauthorizedError, NotFoundError)):  # the hub hides private repos as 401/404
        fetch_with_hub(plan, plan.files, config=_config(hub, tmp_path, repo_id="acme/private"),
                       tracker=tracker, budget=RetryBudget(30), stop=threading.Event())
    assert tracker.retries == {}


def test_private_repo_with_token_downloads(hub: HubEmulator, small_repo: Path, tmp_path: Path) -> None:
    hub.add_repo("acme/private", small_repo, token="hf_abcdefghijklmnop")
    plan = _plan(hub, "acme/private")
    _run(plan, _config(hub, tmp_path, repo_id="acme/private", token="hf_abcdefghijklmnop"))
    _assert_files_match(plan, tmp_path)


def _join_worker_threads(timeout: float = 30.0) -> None:
    """The library's threads we stopped waiting for must end by themselves (the progress hook stops them)."""
    for t in threading.enumerate():
        if t.name == "hubengine-snapshot":
            t.join(timeout)
            assert not t.is_alive(), "huggingface_hub worker did not stop"


def test_outage_longer_than_budget_gives_up_in_time(small_hub: HubEmulator, tmp_path: Path) -> None:
    plan = _plan(small_hub, REPO)
    small_hub.fail_next(10_000, status=503, kind="any")
    started = time.monotonic()
    with pytest.raises(RetryBudgetExhausted) as info:
        _run(plan, _config(small_hub, tmp_path), budget=2.0)
    # huggingface_hub alone keeps retrying 5xx for ~20 s inside one call; the budget cuts it short.
    assert time.monotonic() - started < 6.0
    assert isinstance(info.value, TransientError)
    small_hub.clear_faults()
    _join_worker_threads()


def test_stop_interrupts(small_hub: HubEmulator, tmp_path: Path) -> None:
    plan = _plan(small_hub, REPO)
    small_hub.faults.path = "model.safetensors"
    small_hub.faults.stall_mid_body = (1024 * 1024, 60.0)
    stop = threading.Event()
    tracker = Tracker(repo_id=REPO, revision="main")
    tracker.set_plan(plan)
    # Stop once the stalled file has started arriving (no sleeping: wait on the hub's counters).
    threading.Thread(target=lambda: (small_hub.wait_for(
        lambda s: s.bytes_by_file["model.safetensors"] >= 1024 * 1024, timeout=30), stop.set()),
        daemon=True).start()
    with pytest.raises(Interrupted):
        fetch_with_hub(plan, plan.files, config=_config(small_hub, tmp_path, stall_timeout=30.0),
                       tracker=tracker, budget=RetryBudget(60), stop=stop)
    assert stop.is_set()
    small_hub.release_stalls()
    _join_worker_threads()
    assert not (tmp_path / "model.safetensors").exists()


def test_classify_unknown_errors_as_transient() -> None:
    plan = Plan(repo_id="a/b", revision="main", commit="a" * 40, endpoint="http://127.0.0.1:1", files=())
    err = classify_download_error(RuntimeError("weird"), plan=plan)
    assert isinstance(err, TransientError) and err.reason == "api"
    enospc = OSError(28, "No space left on device", "/models/x")
    assert type(classify_download_error(enospc, plan=plan)).__name__ == "NoSpaceError"


def test_expired_cdn_url_is_a_retry_not_unauthorized(small_repo: Path, tmp_path: Path) -> None:
    with HubEmulator(signed_url_ttl=0.0) as hub:  # every signed CDN URL is already expired: 403 from the CDN
        hub.add_repo(REPO, small_repo)
        plan = _plan(hub, REPO)
        lfs = tuple(e for e in plan.files if e.path == "model.safetensors")
        tracker = Tracker(repo_id=REPO, revision="main")
        with pytest.raises(RetryBudgetExhausted):
            fetch_with_hub(plan, lfs, config=_config(hub, tmp_path), tracker=tracker, budget=RetryBudget(1.5),
                           stop=threading.Event())
        assert tracker.retries.get("url_expired", 0) >= 1
        assert hub.stats.requests_for(kind="cdn")
        _join_worker_threads()
