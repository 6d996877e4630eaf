"""The bandwidth cap: the shared token bucket (fake clock) and one real run with the cap set."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from cli_helpers import run_args, run_cli
from hub_emulator import HubEmulator

from provisioner.fetch.throttle import TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _drive(bucket: TokenBucket, clock: FakeClock, pieces: list[int]) -> float:
    """Readers that obey every pause: returns the fake time the pieces took."""
    start = clock.now
    for n in pieces:
        clock.now += bucket.reserve(n)
    return clock.now - start


def test_sustained_rate_is_the_cap() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000, burst_seconds=0.25, clock=clock)
    took = _drive(bucket, clock, [100] * 1000)  # 100 kB at 1 kB/s
    assert took == pytest.approx(100 - 0.25)  # only the burst is free


def test_pieces_within_the_burst_do_not_wait() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000, burst_seconds=0.25, clock=clock)
    assert bucket.reserve(200) == 0
    assert bucket.reserve(100) == pytest.approx(0.05)


def test_idle_time_is_not_banked_beyond_the_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000, burst_seconds=0.25, clock=clock)
    clock.now += 3600  # an hour idle
    assert bucket.reserve(250) == 0
    assert bucket.reserve(1000) == pytest.approx(1.0)


def test_the_cap_is_shared_by_all_connections() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000, burst_seconds=0.0, clock=clock)
    waits: list[float] = []
    lock = threading.Lock()

    def conn() -> None:
        for _ in range(50):
            w = bucket.reserve(10)
            with lock:
                waits.append(w)

    threads = [threading.Thread(target=conn) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 8 x 50 x 10 bytes at 1000 B/s, nobody moved the clock: the last reservation ends 4 s out
    assert max(waits) == pytest.approx(4.0)
    assert sorted(waits) == pytest.approx([(i + 1) * 0.01 for i in range(400)])


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0)


def test_a_run_with_the_cap_completes(hub: HubEmulator, small_repo: Path, tmp_path: Path) -> None:
    hub.add_repo("org/capped", small_repo)
    done = run_cli(run_args(endpoint=hub.url, target=tmp_path / "vol", repo_id="org/capped",
                            extra=["--verify", "checksums", "--max-bytes-per-second", "64MiB"]))
    assert done.returncode == 0, done.stderr + done.stdout
    assert (tmp_path / "vol" / "model.safetensors").stat().st_size == (small_repo / "model.safetensors").stat().st_size
