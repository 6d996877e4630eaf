"""The native engine against the hub emulator over real HTTP on 127.0.0.1.

Every claim the product makes about downloads is measured here: byte-exact results, digests
computed while streaming, resume after resets / stalls / SIGKILL / stop with few bytes re-sent,
retries honouring Retry-After, re-resolution of expired signed URLs, restarts instead of splices,
fast failure on 404/401, and exact byte accounting.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from hub_emulator import HubEmulator
from hypothesis import given
from hypothesis import strategies as st

from provisioner import verify
from provisioner.config import Config
from provisioner.context import RunContext
from provisioner.errors import (
    Interrupted,
    LocalIOError,
    NoSpaceError,
    NotFoundError,
    RetryBudgetExhausted,
    TransientError,
    UnauthorizedError,
)
from provisioner.fetch import (
    FetchedFile,
    discard_partial,
    fetch_files,
    make_client,
    part_key,
    partial_bytes_on_disk,
    prune_partials,
)
from provisioner.fetch import journal as fetch_journal
from provisioner.fetch import small as fetch_small
from provisioner.fetch.journal import layout_segments
from provisioner.manifest import FileEntry, Plan
from provisioner.observe.progress import Tracker
from provisioner.retry import RetryBudget

MiB = 1 << 20
REPO = "org/model"
BIG = "model.safetensors"
ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------ helpers


def plan_for(hub: HubEmulator, repo_id: str = REPO, revision: str = "main") -> Plan:
    """The plan the planner would build (sha256 for LFS files, git blob sha1 for the others)."""
    files = hub.files(repo_id, revision)
    entries = tuple(
        FileEntry(p, f.size, sha256=f.sha256 if f.lfs else None, blob_sha1=None if f.lfs else f.blob_sha1)
        for p, f in sorted(files.items())
    )
    return Plan(repo_id, revision, hub.commit_of(repo_id, revision), hub.url, entries)


def make_config(hub: HubEmulator, target: Path, **overrides: Any) -> Config:
    values: dict[str, Any] = dict(endpoint=hub.url, target=str(target), connect_timeout=2.0, stall_timeout=2.0,
                                  retry_budget=20.0, backoff_max=0.2, max_workers=4, connections_per_file=4,
                                  split_threshold=8 * MiB)
    values.update(overrides)
    return Config(**values)


class Run:
    """One fetch_files call with its tracker, budget and stop event."""

    def __init__(self, hub: HubEmulator, plan: Plan, tmp: Path, *, entries: tuple[FileEntry, ...] | None = None,
                 client: httpx2.Client | None = None, **overrides: Any) -> None:
        self.plan = plan
        self.entries = plan.files if entries is None else entries
        self.config = make_config(hub, tmp / "target", **overrides)
        self.state_dir = tmp / "target" / ".provisioner"
        self.tracker = Tracker(repo_id=plan.repo_id, revision=plan.revision)
        self.tracker.set_plan(plan, on_disk={e.path: partial_bytes_on_disk(self.state_dir, e) for e in plan.files})
        self.budget = RetryBudget(self.config.retry_budget)
        self.stop = threading.Event()
        self.client = client
        self.events: list[Any] = []
        self.tracker.subscribe(self.events.append)
        self.result: dict[str, FetchedFile] | None = None
        self.error: BaseException | None = None
        self.elapsed = 0.0
        self._thread: threading.Thread | None = None

    def __call__(self) -> dict[str, FetchedFile]:
        t0 = time.monotonic()
        try:
            ctx = RunContext(config=self.config, tracker=self.tracker, budget=self.budget, stop=self.stop)
            return fetch_files(self.plan, self.entries, ctx=ctx, state_dir=self.state_dir, client=self.client)
        finally:
            self.elapsed = time.monotonic() - t0

    def start(self) -> Run:
        def target() -> None:
            try:
                self.result = self()
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread by join()
                self.error = exc

        self._thread = threading.Thread(target=target, daemon=True)
        self._thread.start()
        return self

    def join(self, timeout: float = 30.0) -> dict[str, FetchedFile]:
        assert self._thread is not None
        self._thread.join(timeout)  # timeout: a hung engine fails the test instead of hanging CI
        assert not self._thread.is_alive(), "fetch_files did not return"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result

    def retry_events(self, reason: str) -> list[dict[str, Any]]:
        return [e.data for e in self.events if e.kind == "retry" and e.data["reason"] == reason]


def assert_correct(hub: HubEmulator, result: dict[str, FetchedFile], repo_id: str = REPO) -> None:
    files = hub.files(repo_id)
    for path, fetched in result.items():
        info = files[path]
        assert fetched.digests.size == info.size, path
        # Only the digest verify.matches compares is computed: sha256 for LFS files, git blob sha1 otherwise.
        if fetched.entry.sha256:
            assert (fetched.digests.sha256, fetched.digests.blob_sha1) == (info.sha256, ""), path
        else:
            assert (fetched.digests.sha256, fetched.digests.blob_sha1) == ("", info.blob_sha1), path
        assert verify.matches(fetched.entry, fetched.digests), path
        assert fetched.part_path.stat().st_size == info.size, path
    for path, fetched in result.items():  # bytes on disk really are the file (not only the digests)
        info = files[path]
        with info.open() as src, fetched.part_path.open("rb") as got:
            while block := src.read(4 * MiB):
                assert got.read(len(block)) == block, path


def file_done(run: Run, path: str) -> int:
    return int(next(f["done"] for f in run.tracker.snapshot()["files"] if f["path"] == path))


def served(hub: HubEmulator, path: str = BIG) -> int:
    hub.wait_idle()
    return hub.stats.bytes_by_file[path]


def wait_served(hub: HubEmulator, n: int, path: str = BIG, timeout: float = 20.0) -> None:
    assert hub.wait_for(lambda s: s.bytes_by_file[path] >= n, timeout=timeout), \
        f"hub never served {n} bytes of {path}"


@pytest.fixture
def big_hub(hub: HubEmulator, big_file_repo: Callable[[int], Path]) -> HubEmulator:
    """24 MiB model + config.json (split into 3 ranges of 8 MiB with the test config)."""
    hub.add_repo(REPO, big_file_repo(24 * MiB))
    return hub


@pytest.fixture
def tmp(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


# ------------------------------------------------------------------------------------------ unit


def test_part_key_is_path_and_expected_hash() -> None:
    a = FileEntry("m.bin", 10, sha256="a" * 64)
    assert part_key(a) == __import__("hashlib").sha256(b"m.bin\0sha256:" + b"a" * 64).hexdigest()[:32]
    assert part_key(a) != part_key(FileEntry("m.bin", 10, sha256="b" * 64))  # new content never splices
    assert len(part_key(a)) == 32


@given(size=st.integers(0, 1 << 40), threshold=st.integers(1, 1 << 30), conns=st.integers(1, 32))
def test_layout_covers_the_file_exactly(size: int, threshold: int, conns: int) -> None:
    segs = layout_segments(size, split_threshold=threshold, connections=conns)
    assert sum(e - s for s, e in segs) == size
    assert all(e > s for s, e in segs)
    assert all(a[1] == b[0] for a, b in zip(segs, segs[1:], strict=False))
    if size == 0:
        assert segs == []
    elif size < threshold or conns == 1:
        assert segs == [(0, size)]
    else:
        assert 2 <= len(segs) or size == 1
        assert max(e - s for s, e in segs) <= max(fetch_journal.MAX_PIECE, -(-size // conns))
        assert len(segs) <= max(conns, -(-size // fetch_journal.MAX_PIECE) + 1)


# ------------------------------------------------------------------------------------------ happy paths


def test_small_repo_round_trip_with_exact_byte_accounting(hub: HubEmulator, small_repo: Path, tmp: Path) -> None:
    hub.add_repo(REPO, small_repo)
    hub.replace_file(REPO, "empty.txt", b"")
    plan = plan_for(hub)
    assert any(f.size == 0 for f in plan.files)
    run = Run(hub, plan, tmp)
    result = run()
    assert sorted(result) == sorted(f.path for f in plan.files)
    assert_correct(hub, result)
    hub.wait_idle()
    # Exact accounting: the tracker counted every body byte the hub put on the wire, and nothing else.
    assert run.tracker.bytes_received == hub.stats.bytes_served == plan.total_bytes
    snap = run.tracker.snapshot()
    assert snap["files_done"] == len(plan.files) and snap["bytes_on_disk"] == plan.total_bytes
    assert snap["retries"] == {} and snap["stalls"] == 0
    # A second call finds complete partials: no network at all, same digests.
    hub.reset_stats()
    again = Run(hub, plan, tmp)()
    assert {p: f.digests for p, f in again.items()} == {p: f.digests for p, f in result.items()}
    assert hub.stats.requests_by_kind["resolve"] + hub.stats.requests_by_kind["cdn"] == 0
    # discard_partial drops the bytes and reports them.
    entry = plan.file("model.safetensors")
    assert partial_bytes_on_disk(run.state_dir, entry) == entry.size
    assert discard_partial(run.state_dir, entry) == entry.size
    assert partial_bytes_on_disk(run.state_dir, entry) == 0
    assert not (run.state_dir / "partial" / f"{part_key(entry)}.part").exists()
    # Leftovers of files no longer in the plan are pruned; the others stay.
    keep = [f for f in plan.files if f.path != "README.md"]
    assert prune_partials(run.state_dir, keep) > 0
    assert partial_bytes_on_disk(run.state_dir, plan.file("README.md")) == 0
    assert all(partial_bytes_on_disk(run.state_dir, f) == f.size for f in keep if f.path != entry.path)


def test_token_goes_to_the_hub_but_never_to_the_cdn(hub: HubEmulator, tmp: Path) -> None:
    token = "hf_secretsecretsecret"
    hub.add_repo(REPO, {"config.json": b"{}", "w.safetensors": os.urandom(300_000)}, token=token)
    seen: list[tuple[str, str | None]] = []

    def record(request: httpx2.Request) -> None:
        seen.append((str(request.url), request.headers.get("authorization")))

    config = make_config(hub, tmp / "t", token=token)
    client = make_client(config)
    client.event_hooks["request"] = [record]
    with client:
        result = Run(hub, plan_for(hub), tmp, client=client, token=token)()
    assert_correct(hub, result)
    hub_requests = [a for u, a in seen if u.startswith(hub.url)]
    cdn_requests = [a for u, a in seen if u.startswith(hub.cdn_url)]
    assert hub_requests and all(a == f"Bearer {token}" for a in hub_requests)
    assert cdn_requests and all(a is None for a in cdn_requests)


def test_large_file_parallel_ranges_flat_memory(hub: HubEmulator, big_file_repo: Callable[[int], Path],
                                                tmp: Path) -> None:
    hub.add_repo(REPO, big_file_repo(48 * MiB))
    plan = plan_for(hub)
    run = Run(hub, plan, tmp, split_threshold=8 * MiB, connections_per_file=4)
    tracemalloc.start()
    try:
        result = run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert_correct(hub, result)
    stats = hub.stats
    cdn = stats.requests_for(kind="cdn")
    assert len(cdn) == 4 and all(r.status == 206 for r in cdn)
    assert sorted(r.range or "" for r in cdn) == sorted(
        f"bytes={s}-{e - 1}" for s, e in layout_segments(48 * MiB, split_threshold=8 * MiB, connections=4))
    # The signed URL was resolved once and reused by the other ranges.
    assert len(stats.requests_for(kind="resolve", path=f"*/{BIG}")) == 1
    assert served(hub) == 48 * MiB
    assert peak < 16 * MiB, f"peak traced memory {peak / MiB:.1f} MiB for a 48 MiB file"


def test_large_files_are_cut_into_ordered_pieces(hub: HubEmulator, big_file_repo: Callable[[int], Path],
                                                             tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch_journal, "MAX_PIECE", 2 * MiB)
    hub.add_repo(REPO, big_file_repo(48 * MiB))
    plan = plan_for(hub)
    run = Run(hub, plan, tmp, entries=(plan.file(BIG),), connections_per_file=4, split_threshold=8 * MiB)
    assert_correct(hub, run())
    cdn = hub.stats.requests_for(kind="cdn")
    assert len(cdn) == 24 and len({r.range for r in cdn}) == 24  # 24 pieces of 2 MiB, each asked once
    assert len(hub.stats.requests_for(kind="resolve")) == 1  # one resolution shared by all pieces
    meta = json.loads((run.state_dir / "partial" / f"{part_key(plan.file(BIG))}.json").read_text())
    assert len(meta["segments"]) == 24
    assert (run.state_dir / "partial" / f"{part_key(plan.file(BIG))}.offsets").stat().st_size == 24 * 8


def test_writeback_starts_while_downloading(big_hub: HubEmulator, tmp: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The part file's dirty pages are pushed out every WRITEBACK_BYTES, not all at the final fsync."""
    monkeypatch.setattr(fetch_journal, "WRITEBACK_BYTES", 4 * MiB)
    calls: list[int] = []
    real = fetch_journal.start_writeback

    def record(fd: int) -> bool:
        calls.append(fd)
        return real(fd)

    monkeypatch.setattr(fetch_journal, "start_writeback", record)
    plan = plan_for(big_hub)
    run = Run(big_hub, plan, tmp, entries=(plan.file(BIG),))
    assert_correct(big_hub, run())
    assert len(calls) >= 5, f"writeback started {len(calls)} times for 24 MiB in steps of 4 MiB"
    assert len(set(calls)) == 1  # always the part file's descriptor


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux only")
def test_start_writeback_uses_sync_file_range_on_linux(tmp: Path) -> None:
    path = tmp / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, b"x" * MiB, 0)
        assert fetch_journal.start_writeback(fd) is True
        assert fetch_journal.start_writeback(-1) is False  # EBADF: ignored, never raised
    finally:
        os.close(fd)


@pytest.mark.parametrize("level", ["checksums", "none"])
def test_hashes_only_what_is_compared(big_hub: HubEmulator, tmp: Path, monkeypatch: pytest.MonkeyPatch,
                                      level: str) -> None:
    """One digest per file (the one verify.matches compares), none at all under --verify none."""
    hashed: dict[str, int] = {"sha256": 0, "sha1": 0}
    real_init = verify.Hasher.__init__

    def counting_init(self: verify.Hasher, size: int, *, sha256: bool = True, blob_sha1: bool = True) -> None:
        real_init(self, size, sha256=sha256, blob_sha1=blob_sha1)
        real_update = self.update

        def update(data: bytes | memoryview) -> None:
            hashed["sha256"] += len(data) if sha256 else 0
            hashed["sha1"] += len(data) if blob_sha1 else 0
            real_update(data)

        self.update = update  # type: ignore[method-assign]

    monkeypatch.setattr(verify.Hasher, "__init__", counting_init)
    plan = plan_for(big_hub)
    big, small = plan.file(BIG), plan.file("config.json")
    assert big.sha256 and not small.sha256
    run = Run(big_hub, plan, tmp, verify=level)
    result = run()
    if level == "none":
        assert hashed == {"sha256": 0, "sha1": 0}
        assert all(f.digests == verify.Digests(f.entry.size, "", "") for f in result.values())
        assert not any(verify.matches(f.entry, f.digests) for f in result.values())  # never "verified"
        for path, fetched in result.items():  # still the right bytes
            with big_hub.files(REPO)[path].open() as src:
                assert fetched.part_path.read_bytes() == src.read()
    else:
        assert hashed == {"sha256": big.size, "sha1": small.size}
        assert_correct(big_hub, result)


def test_matches_never_accepts_an_empty_digest() -> None:
    lfs = FileEntry("w.bin", 3, sha256="a" * 64)
    regular = FileEntry("c.json", 3, blob_sha1="b" * 40)
    for entry in (lfs, regular):
        assert not verify.matches(entry, verify.Digests(3, "", ""))
    # size-only evidence (no source gave a digest): the size is the whole check, and it is checked
    assert verify.matches(FileEntry("x", 3), verify.Digests(3, "", ""))
    assert not verify.matches(FileEntry("x", 3), verify.Digests(4, "", ""))
    assert verify.matches(lfs, verify.Digests(3, "a" * 64, ""))
    assert verify.matches(regular, verify.Digests(3, "", "b" * 40))
    data = b"abc"
    digests = verify.Hasher(3, sha256=False)
    digests.update(data)
    assert digests.digests().sha256 == "" and len(digests.digests().blob_sha1) == 40


def test_parallel_ranges_beat_a_per_connection_cap(big_hub: HubEmulator, tmp: Path) -> None:
    big_hub.faults.rate_limit_per_connection = 16 * MiB  # bytes/s per response, like a CDN edge
    plan = plan_for(big_hub)
    entry = plan.file(BIG)
    single = Run(big_hub, plan, tmp / "single", entries=(entry,), split_threshold=1 << 40)
    assert_correct(big_hub, single())
    parallel = Run(big_hub, plan, tmp / "parallel", entries=(entry,), connections_per_file=4,
                   split_threshold=8 * MiB)
    assert_correct(big_hub, parallel())
    # 24 MiB at 16 MiB/s: ~1.5 s on one connection; 3 ranges of 8 MiB in parallel: ~0.5 s.
    assert single.elapsed >= 1.3
    assert parallel.elapsed < single.elapsed / 2, (single.elapsed, parallel.elapsed)


# ------------------------------------------------------------------------------------------ resume


def test_resume_after_connection_reset_resends_little(big_hub: HubEmulator, tmp: Path) -> None:
    big_hub.faults.reset_after_bytes = 5 * MiB + 17
    big_hub.faults.path = BIG
    plan = plan_for(big_hub)
    run = Run(big_hub, plan, tmp, entries=(plan.file(BIG),), split_threshold=1 << 40)
    assert_correct(big_hub, run())
    assert big_hub.stats.faults_fired["reset"] == 1
    assert run.tracker.retries.get("reset", 0) >= 1
    resent = served(big_hub) - 24 * MiB
    assert 0 <= resent <= 4 * MiB, f"{resent} bytes re-sent"
    # the retry asked for exactly the bytes the journal did not have
    ranges = [r.range for r in big_hub.stats.requests_for(kind="cdn")]
    assert len(ranges) == 2 and ranges[1] != ranges[0] and ranges[1].startswith("bytes=")


def test_resume_after_truncated_body(big_hub: HubEmulator, tmp: Path) -> None:
    big_hub.faults.truncate_after_bytes = 3 * MiB
    big_hub.faults.path = BIG
    plan = plan_for(big_hub)
    run = Run(big_hub, plan, tmp, entries=(plan.file(BIG),))
    assert_correct(big_hub, run())
    assert big_hub.stats.faults_fired["truncate"] == 1
    assert run.tracker.retries.get("reset", 0) >= 1
    assert served(big_hub) - 24 * MiB <= 4 * MiB


_CHILD = r"""
import json, sys, threading
from pathlib import Path
from provisioner.config import Config
from provisioner.context import RunContext
from provisioner.fetch import fetch_files
from provisioner.manifest import Plan
from provisioner.observe.progress import Tracker
from provisioner.retry import RetryBudget
args = json.loads(sys.argv[1])
plan = Plan.from_json(args["plan"])
config = Config(**args["config"])
tracker = Tracker(repo_id=plan.repo_id, revision=plan.revision)
tracker.set_plan(plan)
ctx = RunContext(config=config, tracker=tracker, budget=RetryBudget(30), stop=threading.Event())
fetch_files(plan, plan.files, ctx=ctx, state_dir=Path(args["state_dir"]))
print("DONE")
"""


def test_resume_across_processes_after_sigkill(big_hub: HubEmulator, tmp: Path) -> None:
    plan = plan_for(big_hub)
    plan = Plan(plan.repo_id, plan.revision, plan.commit, plan.endpoint, (plan.file(BIG),))
    size = 24 * MiB
    config = make_config(big_hub, tmp / "target")
    state_dir = tmp / "target" / ".provisioner"
    big_hub.faults.rate_limit_global = 12 * MiB  # ~2 s for the file: room to kill it half-way
    arg = json.dumps({"plan": plan.to_json(), "state_dir": str(state_dir),
                      "config": {k: getattr(config, k) for k in ("endpoint", "target", "connect_timeout",
                                                                  "stall_timeout", "max_workers",
                                                                  "connections_per_file", "split_threshold")}})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, arg], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    try:
        wait_served(big_hub, size // 2, timeout=30)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)  # timeout: SIGKILL cannot be ignored; this only bounds a broken machine
    assert child.returncode == -signal.SIGKILL
    first = served(big_hub)
    assert first < size
    on_disk = partial_bytes_on_disk(state_dir, plan.files[0])
    assert on_disk > size // 4, on_disk
    big_hub.clear_faults()
    run = Run(big_hub, plan, tmp)
    assert run.tracker.bytes_on_disk == on_disk
    assert_correct(big_hub, run())
    total = served(big_hub)
    resent = total - size
    second = total - first
    assert second == run.tracker.bytes_received  # exact accounting in the second process
    assert run.events[0].kind == "file_started" and run.events[0].data["offset"] == on_disk
    assert resent <= 2 * MiB, f"{resent} bytes re-sent after SIGKILL at {first / size:.0%}"
    print(f"\nSIGKILL at {first / size:.0%}: {on_disk} bytes resumable, {resent} bytes re-sent")


def test_stop_event_interrupts_promptly_and_keeps_partial(big_hub: HubEmulator, tmp: Path) -> None:
    big_hub.faults.rate_limit_global = 8 * MiB
    plan = plan_for(big_hub)
    run = Run(big_hub, plan, tmp).start()
    wait_served(big_hub, 6 * MiB)
    t0 = time.monotonic()
    run.stop.set()
    with pytest.raises(Interrupted) as info:
        run.join()
    assert time.monotonic() - t0 < 1.5
    assert info.value.signum == signal.SIGTERM
    entry = plan.file(BIG)
    kept = partial_bytes_on_disk(run.state_dir, entry)
    assert kept >= 2 * MiB and kept == file_done(run, BIG)  # every received byte was kept
    first = served(big_hub)
    total_first = big_hub.stats.bytes_served
    big_hub.clear_faults()
    again = Run(big_hub, plan, tmp)
    assert_correct(big_hub, again())
    assert served(big_hub) - entry.size <= first - kept + 1 * MiB
    assert again.tracker.bytes_received == big_hub.stats.bytes_served - total_first


def test_stop_wakes_a_worker_blocked_in_a_stall(big_hub: HubEmulator, tmp: Path) -> None:
    big_hub.faults.stall_mid_body = (2 * MiB, 60.0)
    big_hub.faults.path = BIG
    plan = plan_for(big_hub)
    run = Run(big_hub, plan, tmp, entries=(plan.file(BIG),), stall_timeout=30.0, split_threshold=1 << 40).start()
    assert big_hub.wait_for(lambda s: s.faults_fired["stall_mid_body"] >= 1, timeout=10)
    t0 = time.monotonic()
    run.stop.set()
    with pytest.raises(Interrupted):
        run.join()
    assert time.monotonic() - t0 < 1.5  # not the 30 s stall timeout: the socket was shut down
    # Every byte that was received is on disk and recorded in the journal, none more.
    kept = partial_bytes_on_disk(run.state_dir, plan.file(BIG))
    assert kept > 0 and kept == run.tracker.bytes_received


def test_stop_wakes_a_worker_waiting_for_headers(big_hub: HubEmulator, tmp: Path) -> None:
    big_hub.faults.stall_before_headers = 60.0
    big_hub.faults.path = f"/cdn/*/{BIG}"
    plan = plan_for(big_hub)
    run = Run(big_hub, plan, tmp, entries=(plan.file(BIG),), stall_timeout=30.0).start()
    assert big_hub.wait_for(lambda s: s.faults_fired["stall_before_headers"] >= 1, timeout=10)
    t0 = time.monotonic()
    run.stop.set()
    with pytest.raises(Interrupted):
        run.join()
    assert time.monotonic() - t0 < 1.5  # not the 30 s stall timeout
    assert run.tracker.retries == {}  # our own abort is not reported as a network failure


# ------------------------------------------------------------------------------------------ faults


def test_stall_mid_body_is_detected_and_resumed(big_hub: HubEmulator, tmp: Path) -> None:
    big_hub.faults.stall_mid_body = (3 * MiB, 60.0)
    big_hub.faults.path = BIG
    plan = plan_for(big_hub)
    run = Run(big_hub, plan, tmp, stall_timeout=0.5)
    result = run()
    assert_correct(big_hub, result)
    assert run.tracker.stalls >= 1 and run.tracker.retries.get("stall", 0) >= 1
    assert run.elapsed < 10
    assert served(big_hub) - 24 * MiB <= 4 * MiB


def test_stall_before_headers_is_a_stall_too(big_hub: HubEmulator, tmp: Path) -> None:
    big_hub.faults.stall_before_headers = 60.0
    big_hub.faults.path = f"/cdn/*/{BIG}"
    plan = plan_for(big_hub)
    run = Run(big_hub, plan, tmp, stall_timeout=0.5, entries=(plan.file(BIG),)).start()
    assert big_hub.wait_for(lambda s: s.faults_fired["stall_before_headers"] >= 1, timeout=10)
    big_hub.faults.stall_before_headers = 0.0  # the next attempts get through
    assert_correct(big_hub, run.join())
    assert run.tracker.stalls >= 1 and run.tracker.retries.get("stall", 0) >= 1


def test_5xx_burst_is_retried(big_hub: HubEmulator, tmp: Path) -> None:
    big_hub.fail_next(3, status=503, kind="cdn")
    big_hub.fail_next(2, status=500, kind="resolve", path=f"*/{BIG}")
    plan = plan_for(big_hub)
    run = Run(big_hub, plan, tmp)
    assert_correct(big_hub, run())
    assert run.tracker.retries.get("http_5xx") == 5


def test_429_retry_after_is_honoured(big_hub: HubEmulator, tmp: Path) -> None:
    big_hub.fail_next(1, status=429, retry_after=1, kind="resolve", path="*config.json")
    plan = plan_for(big_hub)
    run = Run(big_hub, plan, tmp, entries=(plan.file("config.json"),), backoff_max=0.1)
    assert_correct(big_hub, run())
    (event,) = run.retry_events("http_429")
    assert event["delay"] >= 1.0
    assert run.elapsed >= 1.0  # the wait really happened, not just the number
    records = big_hub.stats.requests_for(kind="resolve")
    assert [r.status for r in records] == [429, 206]


def test_expired_signed_url_is_resolved_again(big_hub: HubEmulator, tmp: Path) -> None:
    big_hub.faults.stall_mid_body = (2 * MiB, 60.0)  # forces a retry of the first range after 2 MiB
    big_hub.faults.path = BIG
    plan = plan_for(big_hub)
    run = Run(big_hub, plan, tmp, entries=(plan.file(BIG),), stall_timeout=0.5, split_threshold=1 << 40).start()
    assert big_hub.wait_for(lambda s: s.faults_fired["stall_mid_body"] >= 1, timeout=10)
    big_hub.expire_signed_urls_now()  # the cached CDN URL is now refused with 403
    assert_correct(big_hub, run.join())
    assert run.tracker.retries.get("url_expired") == 1
    statuses = [r.status for r in big_hub.stats.requests_for(kind="cdn")]
    assert statuses == [206, 403, 206]
    assert len(big_hub.stats.requests_for(kind="resolve")) == 2
    assert served(big_hub) - 24 * MiB <= 1 * MiB


def test_range_ignored_falls_back_to_one_stream(big_hub: HubEmulator, tmp: Path) -> None:
    big_hub.faults.ignore_range = True
    plan = plan_for(big_hub)
    run = Run(big_hub, plan, tmp)
    result = run()
    assert_correct(big_hub, result)
    assert run.tracker.retries.get("range_ignored", 0) >= 1
    # the final transfer is one whole-file 200 without a Range header
    last = [r for r in big_hub.stats.requests_for(kind="cdn") if r.status == 200][-1]
    assert last.range is None and last.bytes_sent == 24 * MiB
    meta = json.loads((run.state_dir / "partial" / f"{part_key(plan.file(BIG))}.json").read_text())
    assert meta["no_range"] is True and meta["segments"] == [[0, 24 * MiB]]
    # A small file asked for from byte 0 simply takes the 200: one request, no restart, and (small-file
    # path) no journal on disk, only the complete file.
    small = big_hub.stats.requests_for(kind="resolve", path="*/config.json")
    assert [r.status for r in small] == [200]
    key = part_key(plan.file("config.json"))
    assert not (run.state_dir / "partial" / f"{key}.json").exists()
    assert (run.state_dir / "partial" / f"{key}.small").stat().st_size == plan.file("config.json").size


def test_range_ignored_on_resume_rewrites_from_zero(big_hub: HubEmulator, tmp: Path) -> None:
    big_hub.faults.rate_limit_global = 8 * MiB
    plan = plan_for(big_hub)
    first = Run(big_hub, plan, tmp, entries=(plan.file(BIG),), split_threshold=1 << 40).start()
    wait_served(big_hub, 4 * MiB)
    first.stop.set()
    with pytest.raises(Interrupted):
        first.join()
    assert partial_bytes_on_disk(first.state_dir, plan.file(BIG)) > 0
    big_hub.clear_faults()
    big_hub.faults.ignore_range = True
    run = Run(big_hub, plan, tmp, entries=(plan.file(BIG),), split_threshold=1 << 40)
    assert_correct(big_hub, run())
    assert run.tracker.retries.get("range_ignored", 0) >= 1
    assert file_done(run, BIG) == 24 * MiB  # the tracker did not double-count the rewritten bytes


def test_file_changed_on_the_hub_restarts_instead_of_splicing(big_hub: HubEmulator, tmp: Path) -> None:
    big_hub.faults.rate_limit_global = 8 * MiB
    plan = plan_for(big_hub)
    entry = plan.file(BIG)
    first = Run(big_hub, plan, tmp, entries=(entry,), split_threshold=1 << 40).start()
    wait_served(big_hub, 4 * MiB)
    first.stop.set()
    with pytest.raises(Interrupted):
        first.join()
    # Pretend the partial came from an older version of the file: other ETag, other bytes.
    meta_path = first.state_dir / "partial" / f"{part_key(entry)}.json"
    meta = json.loads(meta_path.read_text())
    meta["etag"] = '"0000000000000000000000000000000000000000000000000000000000000000"'
    meta_path.write_text(json.dumps(meta))
    kept = partial_bytes_on_disk(first.state_dir, entry)
    with (first.state_dir / "partial" / f"{part_key(entry)}.part").open("r+b") as f:
        f.write(b"\xff" * kept)
    big_hub.clear_faults()
    big_hub.reset_stats()
    run = Run(big_hub, plan, tmp, entries=(entry,), split_threshold=1 << 40)
    assert_correct(big_hub, run())  # not spliced: every byte is the hub's
    assert run.tracker.retries.get("changed") == 1
    first_request = big_hub.stats.requests_for(kind="cdn")[0]
    assert first_request.status == 200  # If-Range did not match: the server sent the whole new file
    assert file_done(run, BIG) == 24 * MiB


def test_size_different_from_plan_gives_up_as_changed(big_hub: HubEmulator, tmp: Path) -> None:
    plan = plan_for(big_hub)
    real = plan.file(BIG)
    wrong = FileEntry(real.path, real.size + 1, sha256=real.sha256)
    plan = Plan(plan.repo_id, plan.revision, plan.commit, plan.endpoint, (wrong,))
    run = Run(big_hub, plan, tmp)
    with pytest.raises(TransientError) as info:
        run()
    assert info.value.reason == "changed"
    assert run.tracker.retries.get("changed", 0) >= 1
    assert run.elapsed < 5


def test_corruption_in_transit_shows_in_the_digests_and_discard_refetches(big_hub: HubEmulator, tmp: Path) -> None:
    big_hub.faults.flip_byte_at = 17 * MiB + 3  # inside the third 8 MiB range
    plan = plan_for(big_hub)
    entry = plan.file(BIG)
    run = Run(big_hub, plan, tmp, entries=(entry,))
    bad = run()[BIG]
    assert big_hub.stats.faults_fired["flip"] == 1
    # The engine does not judge: it reports what it received, and the caller compares with the plan.
    assert bad.digests.size == entry.size and bad.digests.sha256 != entry.sha256
    assert discard_partial(run.state_dir, entry) == entry.size
    good = Run(big_hub, plan, tmp, entries=(entry,))()[BIG]
    assert good.digests.sha256 == entry.sha256
    assert_correct(big_hub, {BIG: good})


@pytest.mark.parametrize("status, error_code", [(404, "EntryNotFound")])
def test_missing_file_fails_fast(big_hub: HubEmulator, tmp: Path, status: int, error_code: str) -> None:
    plan = plan_for(big_hub)
    ghost = FileEntry("nope/ghost.bin", 10, sha256="0" * 64)
    plan = Plan(plan.repo_id, plan.revision, plan.commit, plan.endpoint, (*plan.files, ghost))
    run = Run(big_hub, plan, tmp)
    with pytest.raises(NotFoundError) as info:
        run()
    assert run.elapsed < 2.0
    assert error_code in str(info.value) and info.value.path == "nope/ghost.bin"
    assert run.tracker.retries == {}


def test_unauthorized_fails_fast_and_never_leaks_the_token(hub: HubEmulator, tmp: Path) -> None:
    hub.add_repo(REPO, {"config.json": b"{}", "w.safetensors": os.urandom(1000)}, token="hf_rightrightright")
    plan = plan_for(hub)
    run = Run(hub, plan, tmp, token="hf_wrongwrongwrong")
    with pytest.raises(UnauthorizedError) as info:
        run()
    assert run.elapsed < 2.0 and info.value.status in (401, 403)
    assert "hf_wrong" not in str(info.value)
    run = Run(hub, plan, tmp)  # no token at all
    with pytest.raises(UnauthorizedError) as info:
        run()
    assert "token" in str(info.value)


def test_retry_budget_runs_out_during_an_outage(big_hub: HubEmulator, tmp: Path) -> None:
    big_hub.faults.rate_limit_global = 8 * MiB
    plan = plan_for(big_hub)
    entry = plan.file(BIG)
    run = Run(big_hub, plan, tmp, retry_budget=1.5, backoff_max=0.3).start()
    wait_served(big_hub, 4 * MiB)
    big_hub.down()
    try:
        with pytest.raises(RetryBudgetExhausted) as info:
            run.join(timeout=20)
        assert info.value.reason in ("connect", "reset")
        kept = partial_bytes_on_disk(run.state_dir, entry)
        assert kept >= 2 * MiB
    finally:
        big_hub.up()
    first = served(big_hub)
    big_hub.clear_faults()
    again = Run(big_hub, plan, tmp)
    assert_correct(big_hub, again())
    assert served(big_hub) - plan.total_bytes <= first - kept + 1 * MiB


class _ScriptedBudget(RetryBudget):
    """Deterministic backoffs: the first worker thread to back off gets `quick` seconds, every other
    one the full cap (--backoff-max), whatever its attempt count."""

    def __init__(self, seconds: float, *, quick: float | None) -> None:
        super().__init__(seconds)
        self.quick = quick
        self.asked: dict[int, int] = {}  # thread id -> delays asked
        self._asked_lock = threading.Lock()

    def delay(self, *, attempt: int, cap: float, retry_after: float | None = None) -> float:
        me = threading.get_ident()
        with self._asked_lock:
            first = not self.asked
            self.asked[me] = self.asked.get(me, 0) + 1
            if first:
                self.quick_thread = me
        if self.quick is not None and me == self.quick_thread:
            return self.quick
        return max(0.0, min(cap, self.remaining()))


def _outage_run(big_hub: HubEmulator, tmp: Path, *, quick: float | None) -> tuple[Run, _ScriptedBudget]:
    big_hub.faults.rate_limit_global = 16 * MiB
    plan = plan_for(big_hub)
    run = Run(big_hub, plan, tmp, entries=(plan.file(BIG),), retry_budget=120.0, backoff_max=20.0)
    budget = _ScriptedBudget(120.0, quick=quick)
    run.budget = budget
    run.start()
    wait_served(big_hub, 6 * MiB)  # all 4 pieces are streaming
    big_hub.down()
    # Every worker has failed and is backing off (the slow ones for 20 s).
    deadline = time.monotonic() + 10
    while len(budget.asked) < 4 or min(budget.asked.values()) < 1:
        assert time.monotonic() < deadline, f"workers backing off: {budget.asked}"
        time.sleep(0.02)
    return run, budget


def test_workers_wake_when_the_hub_is_back(big_hub: HubEmulator, tmp: Path) -> None:
    """After an outage every piece worker resumes as soon as any connection gets bytes again, not
    when its own escalated backoff (here 20 s) ends."""
    run, budget = _outage_run(big_hub, tmp, quick=0.1)
    try:
        # The quick worker keeps finding the hub down: no stray progress is left to wake anyone.
        seen = budget.asked[budget.quick_thread]
        deadline = time.monotonic() + 10
        while budget.asked[budget.quick_thread] < seen + 3:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        before = len(big_hub.stats.requests)
    finally:
        big_hub.up()

    def resumed(stats: Any) -> int:
        return len({r.range for r in stats.requests[before:] if r.kind == "cdn" and r.status == 206})

    # All 4 pieces asked for again within a few seconds of up() (each slow worker slept 20 s otherwise).
    assert big_hub.wait_for(lambda s: resumed(s) >= 4, timeout=5.0), \
        f"only {resumed(big_hub.stats)} of 4 pieces resumed within 5 s after the hub came back"
    assert_correct(big_hub, run.join(timeout=15))
    assert served(big_hub) <= 24 * MiB + 2 * MiB  # resumed, not re-sent


def test_stop_interrupts_a_long_backoff(big_hub: HubEmulator, tmp: Path) -> None:
    run, _ = _outage_run(big_hub, tmp, quick=None)  # every worker sleeps 20 s
    try:
        t0 = time.monotonic()
        run.stop.set()
        with pytest.raises(Interrupted):
            run.join(timeout=10)
        assert time.monotonic() - t0 < 2.0
    finally:
        big_hub.up()


def test_planted_symlink_part_file_is_never_written_through(big_hub: HubEmulator, tmp: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch_small, "SMALL_FILE_BYTES", 0)  # config.json through the on-disk journal
    plan = plan_for(big_hub)
    entry = plan.file("config.json")
    victim = tmp / "victim.txt"
    victim.write_bytes(b"precious" * 100)
    state_dir = tmp / "target" / ".provisioner"
    # a journal claiming a resumable partial whose .part is a symlink to someone else's file
    Run(big_hub, plan, tmp, entries=(entry,))()
    part = state_dir / "partial" / f"{part_key(entry)}.part"
    part.unlink()
    part.symlink_to(victim)
    os.truncate(victim, entry.size)
    result = Run(big_hub, plan, tmp, entries=(entry,))()  # the link is dropped, the file fetched afresh
    assert_correct(big_hub, result)
    assert not part.is_symlink()
    assert victim.read_bytes() == (b"precious" * 100)[:entry.size]


@pytest.mark.parametrize("err, exc_type", [(errno.ENOSPC, NoSpaceError), (errno.EROFS, LocalIOError)])
def test_local_write_errors(big_hub: HubEmulator, tmp: Path, monkeypatch: pytest.MonkeyPatch,
                            err: int, exc_type: type[Exception]) -> None:
    real_pwrite = os.pwrite
    writes = {"n": 0}

    def failing_pwrite(fd: int, data: Any, offset: int) -> int:
        if len(data) > 8:  # data writes only; offsets (8 bytes) keep working
            writes["n"] += 1
            if writes["n"] > 3:
                raise OSError(err, os.strerror(err))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(fetch_journal.os, "pwrite", failing_pwrite)
    plan = plan_for(big_hub)
    entry = plan.file(BIG)
    run = Run(big_hub, plan, tmp, entries=(entry,), split_threshold=1 << 40)
    with pytest.raises(exc_type):
        run()
    monkeypatch.undo()
    kept = partial_bytes_on_disk(run.state_dir, entry)
    assert 0 < kept < entry.size  # offsets never ran ahead of the data: the partial is consistent
    assert_correct(big_hub, Run(big_hub, plan, tmp, entries=(entry,), split_threshold=1 << 40)())
