"""Run modes as a real process: sidecar keeps serving and outlives outages; init lingers and pushes
its final metrics to a real Pushgateway (Debian prometheus-pushgateway)."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import run_args, start_cli, wait_until
from hub_emulator import HubEmulator
from prom_helpers import find_tool, free_port, http_get

from provisioner.errors import ExitCode

REPO = "org/small"


def _status(port: int) -> dict:  # type: ignore[type-arg]
    code, _, body = http_get(f"http://127.0.0.1:{port}/status")
    assert code == 200
    return json.loads(body)  # type: ignore[no-any-return]


def _up(port: int, path: str) -> int:
    try:
        return http_get(f"http://127.0.0.1:{port}{path}", timeout=10)[0]
    except OSError:  # not listening yet
        return 0


def _stop(proc: subprocess.Popen[str]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(30)


def test_sidecar_serves_after_ready_and_exits_0_on_sigterm(hub: HubEmulator, small_repo: Path,
                                                         tmp_path: Path) -> None:
    hub.add_repo(REPO, small_repo)
    port = free_port()
    argv = run_args(endpoint=hub.url, target=tmp_path / "m", repo_id=REPO,
                    extra=["--verify", "checksums", "--mode", "sidecar", "--listen", f"127.0.0.1:{port}"])
    proc = start_cli(argv, log=tmp_path / "sidecar.log")
    try:
        wait_until(lambda: _up(port, "/readyz") == 200 or proc.poll() is not None, timeout=60, what="/readyz 200")
        assert proc.poll() is None, (tmp_path / "sidecar.log").read_text()[-2000:]
        assert _status(port)["phase"] == "ready"
        assert _up(port, "/healthz") == 200
    finally:
        code = _stop(proc)
    assert code == 0


def test_sidecar_outlives_an_outage_longer_than_the_budget(hub: HubEmulator, small_repo: Path,
                                                           tmp_path: Path) -> None:
    hub.add_repo(REPO, small_repo)
    hub.down()
    port = free_port()
    argv = run_args(endpoint=hub.url, target=tmp_path / "m", repo_id=REPO,
                    extra=["--verify", "checksums", "--mode", "sidecar", "--listen", f"127.0.0.1:{port}",
                           "--retry-budget", "1", "--backoff-max", "0.5", "--api-timeout", "2"])
    log = tmp_path / "sidecar.log"
    proc = start_cli(argv, log=log)
    try:
        # the first attempt spends its budget; the sidecar says so and starts over instead of exiting
        wait_until(lambda: "starts a new attempt" in log.read_text() or proc.poll() is not None, timeout=60,
                   what="the sidecar to start a new attempt")
        assert proc.poll() is None, log.read_text()[-2000:]
        assert _up(port, "/readyz") == 503 and _up(port, "/healthz") == 200
        hub.up()
        wait_until(lambda: _up(port, "/readyz") == 200 or proc.poll() is not None, timeout=60, what="ready")
        assert proc.poll() is None
    finally:
        code = _stop(proc)
    assert code == 0


def test_sidecar_exits_on_unrecoverable_failure(hub: HubEmulator, tmp_path: Path) -> None:
    proc = start_cli(run_args(endpoint=hub.url, target=tmp_path / "m", repo_id="org/absent",
                              extra=["--mode", "sidecar", "--listen", "127.0.0.1:0"]), log=tmp_path / "s.log")
    assert proc.wait(60) == ExitCode.NOT_FOUND


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[str]:
    binary = find_tool("prometheus-pushgateway")
    if binary is None:
        pytest.skip("prometheus-pushgateway not installed (scripts/install-tools.sh installs it)")
    port = free_port()
    # Debian's build persists to /var/lib/prometheus by default: start empty, keep nothing
    proc = subprocess.Popen([binary, f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="],
                            stdout=subprocess.DEVNULL, stderr=(tmp_path / "pg.log").open("w"))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _up(port, "/-/ready") == 200, timeout=30, what="the pushgateway")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_init_mode_pushes_final_metrics_and_lingers(hub: HubEmulator, small_repo: Path, tmp_path: Path,
                                                    pushgateway: str) -> None:
    hub.add_repo(REPO, small_repo)
    port = free_port()
    argv = run_args(endpoint=hub.url, target=tmp_path / "m", repo_id=REPO,
                    extra=["--verify", "checksums", "--pushgateway", pushgateway, "--linger", "60",
                           "--listen", f"127.0.0.1:{port}"])
    proc = start_cli(argv, env={"POD_NAME": "pod-7"}, log=tmp_path / "init.log")
    try:
        def pushed() -> bool:
            code, _, body = http_get(f"{pushgateway}/metrics")
            return code == 200 and b'model_provisioner_ready{' in body
        wait_until(lambda: pushed() or proc.poll() is not None, timeout=60, what="metrics at the pushgateway")
        # lingering: still serving the final state for the last scrape
        assert proc.poll() is None, (tmp_path / "init.log").read_text()[-2000:]
        assert _up(port, "/readyz") == 200
        body = http_get(f"{pushgateway}/metrics")[2].decode()
        ready = [ln for ln in body.splitlines() if ln.startswith("model_provisioner_ready{")]
        assert ready and all('instance="pod-7"' in ln and ln.endswith(" 1") for ln in ready), ready
    finally:
        code = _stop(proc)
    assert code == 0


def test_readyz_answers_for_the_revision_the_pod_asked_for(hub: HubEmulator, small_repo: Path,
                                                           tmp_path: Path) -> None:
    """A volume verified for commit A; a pod asking for commit B starts while the hub's API hangs (its
    plan cannot run yet): its /readyz must say 503 — A's marker is for another revision — not 200."""
    commit_a = hub.add_repo(REPO, small_repo)
    commit_b = hub.add_repo(REPO, {**{p.relative_to(small_repo).as_posix(): p.read_bytes()
                                     for p in small_repo.rglob("*") if p.is_file()}, "config.json": b"{}\n"})
    target = tmp_path / "m"
    first = start_cli(run_args(endpoint=hub.url, target=target, repo_id=REPO,
                               extra=["--verify", "checksums", "--revision", commit_a]), log=tmp_path / "a.log")
    assert first.wait(60) == 0, (tmp_path / "a.log").read_text()[-2000:]
    hub.faults.stall_api = 60.0  # the B pod cannot plan: only the marker on the volume can answer /readyz
    hub.reset_stats()  # the API request awaited below must be the B pod's, not the A run's
    port = free_port()
    proc = start_cli(run_args(endpoint=hub.url, target=target, repo_id=REPO,
                              extra=["--verify", "checksums", "--mode", "sidecar", "--revision", commit_b,
                                     "--listen", f"127.0.0.1:{port}"]), log=tmp_path / "b.log")
    try:
        wait_until(lambda: _up(port, "/healthz") == 200 or proc.poll() is not None, timeout=60, what="/healthz")
        assert hub.wait_for(lambda s: s.requests_by_kind["api"] >= 1, timeout=30)  # B is stuck planning
        assert _up(port, "/readyz") == 503
        assert _status(port)["phase"] == "planning"
    finally:
        hub.faults.stall_api = 0.0
        hub.release_stalls()
        _stop(proc)
