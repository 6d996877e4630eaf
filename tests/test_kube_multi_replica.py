"""N replicas sharing one volume download once (Lease via the strict fake apiserver); a killed holder
is replaced after its Lease expires and the new holder resumes from the partial data.

Real processes (`python -m provisioner run --kube on`), the real `kubernetes` client, the hub emulator.
Prints measured bytes and times (run with `-s` to see them).
"""

from __future__ import annotations

import filecmp
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import run_args, start_cli, wait_until
from fake_apiserver import FakeApiServer
from hub_emulator import HubEmulator

pytestmark = [pytest.mark.slow]

MiB = 1024 * 1024
NS = "models"
REPO = "org/shared-model"
REPLICAS = 4


@pytest.fixture
def fake() -> Iterator[FakeApiServer]:
    server = FakeApiServer().start()
    for i in range(REPLICAS):
        server.add_pod(NS, f"replica-{i}")
    yield server
    server.stop()


def _start_replicas(hub: HubEmulator, fake: FakeApiServer, tmp_path: Path, target: Path,
                    extra: list[str]) -> dict[str, subprocess.Popen[str]]:
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
    procs: dict[str, subprocess.Popen[str]] = {}
    for i in range(REPLICAS):
        pod = f"replica-{i}"
        argv = run_args(endpoint=hub.url, target=target, repo_id=REPO,
                        extra=["--verify", "checksums", "--kube", "on", "--coordination", "lease", *extra])
        procs[pod] = start_cli(argv, env={"KUBECONFIG": str(kubeconfig), "POD_NAME": pod, "POD_NAMESPACE": NS},
                               log=tmp_path / f"{pod}.log")
    return procs


def _wait_all(procs: dict[str, subprocess.Popen[str]], timeout: float) -> dict[str, int | None]:
    deadline = time.monotonic() + timeout
    codes: dict[str, int | None] = {}
    for pod, p in procs.items():
        try:
            codes[pod] = p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            codes[pod] = None
    for p in procs.values():
        if p.poll() is None:
            p.kill()
            p.wait(10)
    return codes


def _logs(tmp_path: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-2500:]}" for p in sorted(tmp_path.glob("replica-*.log")))


def _the_lease(fake: FakeApiServer) -> dict[str, Any] | None:
    with fake.lock:
        leases = list(fake.leases.values())
    assert len(leases) <= 1, leases
    return leases[0] if leases else None


def _holder(fake: FakeApiServer) -> str | None:
    lease = _the_lease(fake)
    return ((lease or {}).get("spec") or {}).get("holderIdentity") or None


def _events_by_pod(fake: FakeApiServer) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    with fake.lock:
        for e in fake.events.values():
            out.setdefault(e["involvedObject"]["name"], []).append(e["reason"])
    return out


def _no_rejected_requests(fake: FakeApiServer) -> None:
    bad = [(r.method, r.path, r.status, r.body[:300]) for r in fake.requests
           if r.status >= 400 and not (r.status == 404 and r.method == "GET")
           and not (r.status == 409 and r.method in ("POST", "PUT"))]
    assert not bad, bad


def test_four_replicas_download_once(hub: HubEmulator, fake: FakeApiServer, big_file_repo: Callable[[int], Path],
                                     tmp_path: Path) -> None:
    size = 64 * MiB
    source = big_file_repo(size)
    hub.add_repo(REPO, source)
    hub.faults.rate_limit_global = 32 * MiB
    target = tmp_path / "volume"
    t0 = time.monotonic()
    procs = _start_replicas(hub, fake, tmp_path, target, ["--lease-duration", "10"])
    codes = _wait_all(procs, timeout=120)
    elapsed = time.monotonic() - t0
    hub.wait_idle()
    served = hub.stats.bytes_by_file["model.safetensors"]
    print(f"\n[multi-replica] {REPLICAS} replicas, repo {size / MiB:.0f} MiB at 32 MiB/s: "
          f"served {served / MiB:.2f} MiB ({served / size:.3f}x), all done in {elapsed:.1f}s, exit codes {codes}")
    assert all(c == 0 for c in codes.values()), f"{codes}\n{_logs(tmp_path)}"
    assert size <= served <= size + 1 * MiB, served  # ~1.0x, not 4x
    assert filecmp.cmp(source / "model.safetensors", target / "model.safetensors", shallow=False)
    lease = _the_lease(fake)
    assert lease is not None and not lease["spec"].get("holderIdentity"), lease  # released at the end
    events = _events_by_pod(fake)
    downloaders = [pod for pod, reasons in events.items() if "DownloadStarted" in reasons]
    waiters = [pod for pod, reasons in events.items() if "Waiting" in reasons]
    assert len(downloaders) == 1, events
    assert len(waiters) >= 1, events  # the others waited for the holder (a late starter may find the marker)
    _no_rejected_requests(fake)


def test_holder_killed_waiter_takes_over_and_resumes(hub: HubEmulator, fake: FakeApiServer,
                                                     big_file_repo: Callable[[int], Path], tmp_path: Path) -> None:
    size = 64 * MiB
    source = big_file_repo(size)
    hub.add_repo(REPO, source)
    hub.faults.rate_limit_global = 8 * MiB  # ~8 s for the whole file: time to kill the holder mid-way
    target = tmp_path / "volume"
    t0 = time.monotonic()
    procs = _start_replicas(hub, fake, tmp_path, target, ["--lease-duration", "3"])
    try:
        wait_until(lambda: _holder(fake) is not None, timeout=60, what="a Lease holder")
        assert hub.wait_for(lambda s: s.bytes_by_file["model.safetensors"] >= size // 3, timeout=60), \
            _logs(tmp_path)
        holder = _holder(fake)
        assert holder is not None
        victim = holder.split("/", 1)[0]
        procs[victim].send_signal(signal.SIGKILL)
        procs[victim].wait(10)
        killed_at = time.monotonic()
        sent_at_kill = hub.stats.bytes_by_file["model.safetensors"]
        wait_until(lambda: (_holder(fake) or holder) != holder, timeout=30, what="another holder")
        takeover = time.monotonic() - killed_at
        new_holder = _holder(fake)
        survivors = {pod: p for pod, p in procs.items() if pod != victim}
        codes = _wait_all(survivors, timeout=120)
        done = time.monotonic() - t0
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    hub.wait_idle()
    served = hub.stats.bytes_by_file["model.safetensors"]
    resent = served - size
    print(f"\n[takeover] killed {victim} (holder {holder}) after {sent_at_kill / MiB:.1f} MiB; "
          f"{new_holder} took over {takeover:.1f}s later (lease-duration 3); served {served / MiB:.2f} MiB "
          f"total ({served / size:.3f}x, re-sent {resent / MiB:.2f} MiB); all done {done:.1f}s after start; "
          f"exit codes {codes}")
    assert all(c == 0 for c in codes.values()), f"{codes}\n{_logs(tmp_path)}"
    assert takeover < 15, takeover  # ~3 s lease + 1 s poll, with slack for a loaded machine
    assert served <= size + 4 * MiB, f"re-sent {resent} bytes"
    assert filecmp.cmp(source / "model.safetensors", target / "model.safetensors", shallow=False)
    lease = _the_lease(fake)
    assert lease is not None and lease["spec"]["leaseTransitions"] >= 1
    assert "TakingOver" in _events_by_pod(fake).get((new_holder or "").split("/", 1)[0], []), _events_by_pod(fake)
    _no_rejected_requests(fake)


def test_ready_event_and_condition_posted_by_every_replica(hub: HubEmulator, fake: FakeApiServer,
                                                           small_repo: Path, tmp_path: Path) -> None:
    hub.add_repo(REPO, small_repo)
    target = tmp_path / "volume"
    procs = _start_replicas(hub, fake, tmp_path, target,
                            ["--readiness-condition", "model-provisioner.example.com/ready"])
    codes = _wait_all(procs, timeout=120)
    assert all(c == 0 for c in codes.values()), f"{codes}\n{_logs(tmp_path)}"
    events = _events_by_pod(fake)
    assert all("Ready" in events.get(f"replica-{i}", []) for i in range(REPLICAS)), events
    with fake.lock:
        for i in range(REPLICAS):
            conds = {c["type"]: c for c in fake.pods[(NS, f"replica-{i}")]["status"]["conditions"]}
            assert conds["model-provisioner.example.com/ready"]["status"] == "True"
    _no_rejected_requests(fake)
