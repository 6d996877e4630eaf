"""Fault matrix, hub side: every network/hub failure the emulator can inject, end to end.

Each case ends either (a) ready: the right bytes, verified, a ready marker; or (b) a one-line error,
a distinct documented exit code, partial data kept, no marker. docs/faults.md is the table.
`model-provisioner run` runs as a real process (tests/cli_helpers.py) against the hub emulator.
"""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cli_helpers import json_lines, run_args, run_cli, start_cli, wait_until
from hub_emulator import HubEmulator, HubStats

from provisioner.errors import ExitCode
from provisioner.state import marker

REPO = "org/faults"
MiB = 1 << 20
BIG = "model.safetensors"  # LFS by pattern: served through the signed CDN redirect
BIG_SIZE = 4 * MiB + 123
# Short timeouts so every fault resolves in seconds (see the suite budget in the brief).
FAST = ["--verify", "checksums", "--stall-timeout", "1", "--backoff-max", "0.5", "--connect-timeout", "2",
        "--api-timeout", "5", "--retry-budget", "20"]


def make_files(seed: int = 1234) -> dict[str, bytes]:
    rnd = random.Random(seed)
    return {
        "config.json": b'{"hidden_size": 8}\n',
        "tokenizer/vocab.txt": b"\n".join(b"tok%d" % i for i in range(300)),
        BIG: rnd.randbytes(BIG_SIZE),
    }


FILES = make_files()


@pytest.fixture
def repo_hub(hub: HubEmulator) -> HubEmulator:
    hub.add_repo(REPO, FILES)
    return hub


# ---- shared assertions -------------------------------------------------------------------------
def run(hub: HubEmulator, target: Path, *extra: str, timeout: float = 90,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli(run_args(endpoint=hub.url, target=target, repo_id=REPO, extra=[*FAST, *extra]),
                   env=env, timeout=timeout)


def assert_ready(target: Path, files: dict[str, bytes], res: subprocess.CompletedProcess[str] | None = None) -> None:
    if res is not None:
        assert res.returncode == 0, res.stderr[-4000:]
    for path, data in files.items():
        got = (target / path).read_bytes()
        assert got == data, f"{path}: {len(got)} bytes on disk differ from the hub's {len(data)}"
    check = marker.check_ready(target, repo_id=REPO)
    assert check.ok, check.reason
    assert {f["path"] for f in check.marker["files"]} == set(files)  # type: ignore[index]


def error_lines(stderr: str) -> list[str]:
    """The outcome lines: `model-provisioner: <Type>: <message>` (errors before logging starts) or the
    final JSON log line `{"level": "error", "exit_code": N, "error": "<Type>", "msg": ...}`."""
    plain = [ln for ln in stderr.splitlines() if ln.startswith("model-provisioner:")]
    final = [f"{ln['error']}: {ln['msg']}" for ln in json_lines(stderr)
             if ln.get("level") == "error" and "exit_code" in ln and "event" not in ln]
    return plain + final


def assert_failed(res: subprocess.CompletedProcess[str], code: int, target: Path, *,
                  partial: bool | None = None, mentions: str | None = None) -> str:
    """Case (b): exit code, exactly one one-line error, no traceback, no marker, partials as expected."""
    assert res.returncode == code, f"exit {res.returncode}, expected {code}: {res.stderr[-4000:]}"
    lines = error_lines(res.stderr)
    assert len(lines) == 1, f"expected one error line, got {lines}"
    assert "Traceback" not in res.stderr, res.stderr[-4000:]
    assert not marker.marker_path(target).exists(), "a failed run left a ready marker"
    if partial is not None:
        assert (partial_bytes(target) > 0) is partial, f"partial bytes on disk: {partial_bytes(target)}"
    if mentions is not None:
        assert mentions in lines[0], lines[0]
    return lines[0]


def partial_bytes(target: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in (target / ".provisioner" / "partial").glob("*.part"))


def retry_reasons(stderr: str) -> list[str]:
    return [str(ln.get("reason")) for ln in json_lines(stderr) if ln.get("event") == "retry"]


def range_starts(hub: HubEmulator, path: str) -> list[int]:
    """The first byte each request for `path`'s bytes asked for, in arrival order (no Range = 0)."""
    hub.wait_idle()
    records = [r for r in hub.stats.requests if r.path.endswith("/" + path) and r.method == "GET"
               and r.status in (200, 206)]
    return [int(r.range.split("=")[1].split("-")[0]) if r.range else 0 for r in records]


def served(hub: HubEmulator, path: str) -> int:
    hub.wait_idle()
    return hub.stats.bytes_by_file[path]


class RequestTimes:
    """Wall-clock arrival of every request record (the emulator's records carry no timestamps):
    the predicate of hub.wait_for runs on every counter change, so new records are seen at once."""

    def __init__(self, hub: HubEmulator) -> None:
        self.hub = hub
        self.seen: list[tuple[float, str, str, int]] = []  # (monotonic, kind, path, status)
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _see(self, stats: HubStats) -> bool:
        now = time.monotonic()
        while len(self.seen) < len(stats.requests):
            r = stats.requests[len(self.seen)]
            self.seen.append((now, r.kind, r.path, r.status))
        return self._stop

    def _run(self) -> None:
        while not self._stop:
            self.hub.wait_for(self._see, timeout=0.2)

    def __enter__(self) -> RequestTimes:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._thread.join(5)


# ---- (a) cases: the fault passes, the model ends up ready ----------------------------------------
def test_connection_reset_every_mib_resumes(repo_hub: HubEmulator, tmp_path: Path) -> None:
    hub = repo_hub
    hub.faults.path = f"*{BIG}*"
    hub.faults.reset_after_bytes = MiB
    hub.faults.reset_every = True
    res = run(hub, tmp_path / "m")
    assert_ready(tmp_path / "m", FILES, res)
    assert hub.stats.faults_fired["reset"] >= 3
    assert "reset" in retry_reasons(res.stderr)
    # every reset resumes at the byte it reached: range starts only move forward, never back to 0
    # (bytes_served over-counts here: an RST discards what sat in the kernel buffers)
    hub.wait_idle()
    starts = [int(r.range.split("=")[1].split("-")[0]) for r in hub.stats.requests_for(kind="cdn")
              if r.range is not None]
    assert starts == sorted(set(starts)) and starts[0] == 0 and len(starts) >= 3, starts


def test_stall_before_headers_watchdog_then_recovers(repo_hub: HubEmulator, tmp_path: Path,
                                                     procs: list[subprocess.Popen[str]]) -> None:
    hub = repo_hub
    hub.faults.path = f"*{BIG}*"
    hub.faults.stall_before_headers = 60.0  # every request for the file hangs before its headers
    log = tmp_path / "run.log"
    t0 = time.monotonic()
    proc = start_cli(run_args(endpoint=hub.url, target=tmp_path / "m", repo_id=REPO, extra=FAST), log=log)
    procs.append(proc)
    # the 1 s watchdog drops the hung request and asks again: two stalls long before 60 s
    assert hub.wait_for(lambda s: s.faults_fired["stall_before_headers"] >= 2, timeout=20)
    assert time.monotonic() - t0 < 20
    hub.faults.stall_before_headers = 0.0
    hub.release_stalls()
    assert proc.wait(60) == 0, log.read_text()[-4000:]
    assert_ready(tmp_path / "m", FILES)
    assert "stall" in retry_reasons(log.read_text())


def test_stall_before_headers_mid_file_resumes_at_the_byte(repo_hub: HubEmulator, tmp_path: Path,
                                                           procs: list[subprocess.Popen[str]]) -> None:
    """The first response stalls after 1.5 MiB, and from then on every new request hangs before its
    headers: the watchdog cuts each silent request, and once the hub answers again the file resumes
    where it stopped (the Range of every later request starts past the bytes already received)."""
    hub = repo_hub
    hub.faults.path = f"*{BIG}*"
    hub.faults.rate_limit_global = 2 * MiB  # 0.75 s to the stall + the 1 s watchdog: time to arm the next fault
    hub.faults.stall_mid_body = (3 * MiB // 2, 60.0)
    log = tmp_path / "run.log"
    proc = start_cli(run_args(endpoint=hub.url, target=tmp_path / "m", repo_id=REPO, extra=FAST), log=log)
    procs.append(proc)
    # the first response has sent its headers: from now on, only new requests hang before theirs
    assert hub.wait_for(lambda s: s.bytes_by_file[BIG] > 0, timeout=30)
    hub.faults.stall_before_headers = 60.0
    assert hub.wait_for(lambda s: s.faults_fired["stall_before_headers"] >= 2, timeout=20), log.read_text()[-4000:]
    hub.faults.stall_before_headers = 0.0
    hub.faults.rate_limit_global = None
    hub.release_stalls()
    assert proc.wait(60) == 0, log.read_text()[-4000:]
    assert_ready(tmp_path / "m", FILES)
    assert "stall" in retry_reasons(log.read_text())
    starts = range_starts(hub, BIG)
    assert starts[0] == 0 and len(starts) >= 2, starts
    assert all(s >= MiB for s in starts[1:]), f"a request after the watchdog restarted the file: {starts}"


def test_header_timeout_is_separate_from_the_body_stall_watchdog(repo_hub: HubEmulator, tmp_path: Path,
                                                                  procs: list[subprocess.Popen[str]]) -> None:
    """--header-timeout bounds the wait for headers even when the body's stall watchdog is long:
    with a 60 s stall timeout and a 1 s header timeout, two silent requests are cut within 20 s."""
    hub = repo_hub
    hub.faults.path = f"*{BIG}*"
    hub.faults.stall_before_headers = 60.0
    log = tmp_path / "run.log"
    proc = start_cli(run_args(endpoint=hub.url, target=tmp_path / "m", repo_id=REPO,
                              extra=[*FAST, "--stall-timeout", "60", "--header-timeout", "1"]), log=log)
    procs.append(proc)
    assert hub.wait_for(lambda s: s.faults_fired["stall_before_headers"] >= 2, timeout=20), log.read_text()[-4000:]
    hub.faults.stall_before_headers = 0.0
    hub.release_stalls()
    assert proc.wait(60) == 0, log.read_text()[-4000:]
    assert_ready(tmp_path / "m", FILES)
    assert "header timeout" in log.read_text()


def test_body_pause_shorter_than_the_stall_timeout_is_not_cut_by_the_header_timeout(repo_hub: HubEmulator,
                                                                                    tmp_path: Path) -> None:
    """Once the headers are in, a body pause longer than --header-timeout but shorter than --stall-timeout
    is waited out: one request for the big file, no stall retry."""
    hub = repo_hub
    hub.faults.path = f"*{BIG}*"
    hub.faults.stall_mid_body = (MiB, 3.0)  # 3 s of silence mid-body, once
    res = run(hub, tmp_path / "m", "--stall-timeout", "30", "--header-timeout", "1", "--connections-per-file", "1")
    assert_ready(tmp_path / "m", FILES, res)
    assert hub.stats.faults_fired["stall_mid_body"] == 1
    assert "stall" not in retry_reasons(res.stderr)
    assert len(range_starts(hub, BIG)) <= 1, range_starts(hub, BIG)


def test_stall_mid_body_resumes_at_the_byte(repo_hub: HubEmulator, tmp_path: Path) -> None:
    hub = repo_hub
    hub.faults.path = f"*{BIG}*"
    hub.faults.stall_mid_body = (MiB + 7, 60.0)  # once: 60 s of silence after ~1 MiB
    t0 = time.monotonic()
    res = run(hub, tmp_path / "m")
    assert time.monotonic() - t0 < 30, "the stall watchdog did not cut the silent connection"
    assert_ready(tmp_path / "m", FILES, res)
    assert "stall" in retry_reasons(res.stderr)
    # the mechanism: the request after the stalled one asks for the bytes it lacks, not from byte 0
    starts = range_starts(hub, BIG)
    assert len(starts) >= 2 and starts[0] == 0, starts
    assert all(s >= MiB for s in starts[1:]), f"a request after the stall restarted the file: {starts}"
    assert served(hub, BIG) <= BIG_SIZE + 2 * MiB


def test_stall_on_api_calls_completes_after_release(repo_hub: HubEmulator, tmp_path: Path,
                                                   procs: list[subprocess.Popen[str]]) -> None:
    hub = repo_hub
    hub.faults.stall_api = 60.0
    log = tmp_path / "run.log"
    argv = run_args(endpoint=hub.url, target=tmp_path / "m", repo_id=REPO,
                    extra=[*FAST, "--api-timeout", "1", "--retry-budget", "30"])
    proc = start_cli(argv, log=log)
    procs.append(proc)
    # --api-timeout 1: each stalled model_info call is abandoned after ~1 s and retried
    assert hub.wait_for(lambda s: s.faults_fired["stall_api"] >= 2, timeout=20)
    hub.faults.stall_api = 0.0
    hub.release_stalls()
    assert proc.wait(60) == 0, log.read_text()[-4000:]
    assert_ready(tmp_path / "m", FILES)
    assert "timeout" in retry_reasons(log.read_text())


def test_stall_on_api_longer_than_budget_exits_transient(repo_hub: HubEmulator, tmp_path: Path) -> None:
    hub = repo_hub
    hub.faults.stall_api = float("inf")
    t0 = time.monotonic()
    res = run(hub, tmp_path / "m", "--api-timeout", "1", "--retry-budget", "3", timeout=60)
    elapsed = time.monotonic() - t0
    hub.release_stalls()
    assert_failed(res, ExitCode.TRANSIENT, tmp_path / "m", partial=False)
    assert elapsed < 20, f"a 3 s budget with a 1 s API timeout took {elapsed:.1f}s"
    assert not (tmp_path / "m" / "config.json").exists()


@pytest.mark.parametrize("kind", ["api", "resolve", "cdn"])
def test_5xx_burst_is_retried(repo_hub: HubEmulator, tmp_path: Path, kind: str) -> None:
    hub = repo_hub
    hub.fail_next(2, status=500, kind=kind)  # type: ignore[arg-type]
    hub.fail_next(2, status=502, kind=kind)  # type: ignore[arg-type]
    hub.fail_next(2, status=503, kind=kind)  # type: ignore[arg-type]
    res = run(hub, tmp_path / "m")
    assert_ready(tmp_path / "m", FILES, res)
    assert sum(hub.stats.faults_fired[f"fail_{s}"] for s in (500, 502, 503)) == 6
    assert retry_reasons(res.stderr).count("http_5xx") >= 6


@pytest.mark.parametrize("kind", ["api", "cdn"])
def test_429_retry_after_is_honoured(repo_hub: HubEmulator, tmp_path: Path, kind: str) -> None:
    hub = repo_hub
    wait = 2.0
    hub.fail_next(1, status=429, retry_after=wait, kind=kind)  # type: ignore[arg-type]
    with RequestTimes(hub) as times:
        # --backoff-max 0.1: without Retry-After the next attempt would come within 0.1 s
        res = run(hub, tmp_path / "m", "--backoff-max", "0.1")
    assert_ready(tmp_path / "m", FILES, res)
    i = next(i for i, r in enumerate(times.seen) if r[3] == 429)
    t429, _, path429, _ = times.seen[i]
    nxt = [r for r in times.seen[i + 1:] if r[1] == kind and r[2] == path429]
    assert nxt, f"no request for {path429} after the 429: {times.seen}"
    gap = nxt[0][0] - t429
    assert wait - 0.15 <= gap <= wait + 3, f"next request {gap:.2f}s after a 429 with Retry-After {wait}"
    assert "http_429" in retry_reasons(res.stderr)


@pytest.mark.parametrize("split", [False, True], ids=["resumed-single", "parallel-ranges"])
def test_range_ignored_falls_back_to_one_stream(repo_hub: HubEmulator, tmp_path: Path, split: bool) -> None:
    hub = repo_hub
    hub.faults.path = f"*{BIG}*"
    hub.faults.ignore_range = True
    extra = ["--split-threshold", "1MiB", "--connections-per-file", "4"] if split else []
    if not split:
        hub.faults.reset_after_bytes = MiB  # once: the resume asks for a Range and gets a 200
    res = run(hub, tmp_path / "m", *extra)
    assert_ready(tmp_path / "m", FILES, res)
    assert hub.stats.faults_fired["ignore_range"] >= 1
    hub.wait_idle()
    # the fallback: one stream from byte 0 without a Range header, its bytes all accepted and verified
    assert any(r.range is None and r.status == 200 for r in hub.stats.requests_for(kind="cdn"))


def test_truncated_body_with_right_content_length(repo_hub: HubEmulator, tmp_path: Path) -> None:
    hub = repo_hub
    hub.faults.path = f"*{BIG}*"
    hub.faults.truncate_after_bytes = 2 * MiB + 5  # clean FIN before Content-Length bytes
    hub.faults.truncate_every = True
    res = run(hub, tmp_path / "m")
    assert_ready(tmp_path / "m", FILES, res)
    assert hub.stats.faults_fired["truncate"] >= 2
    assert "reset" in retry_reasons(res.stderr)
    assert served(hub, BIG) <= BIG_SIZE + 2 * MiB


def test_flipped_byte_in_a_resumed_range_is_caught(repo_hub: HubEmulator, tmp_path: Path) -> None:
    """test_provision_e2e covers a flip in one stream; here the flip lands in a parallel range."""
    hub = repo_hub
    hub.faults.path = f"*{BIG}*"
    hub.faults.flip_byte_at = 3 * MiB + 17
    res = run(hub, tmp_path / "m", "--split-threshold", "1MiB", "--connections-per-file", "4")
    assert_ready(tmp_path / "m", FILES, res)
    assert hub.stats.faults_fired["flip"] == 1
    assert "checksum" in retry_reasons(res.stderr)


def test_expired_signed_url_is_resolved_again(repo_hub: HubEmulator, tmp_path: Path,
                                              procs: list[subprocess.Popen[str]]) -> None:
    hub = repo_hub
    hub.faults.path = f"*{BIG}*"
    hub.faults.stall_mid_body = (MiB, 60.0)  # hold the first CDN response so the URL can expire under it
    log = tmp_path / "run.log"
    proc = start_cli(run_args(endpoint=hub.url, target=tmp_path / "m", repo_id=REPO, extra=FAST), log=log)
    procs.append(proc)
    assert hub.wait_for(lambda s: s.faults_fired["stall_mid_body"] >= 1, timeout=30)
    hub.expire_signed_urls_now()  # the cached signed URL is now refused by the CDN (403)
    hub.release_stalls()
    assert proc.wait(60) == 0, log.read_text()[-4000:]
    assert_ready(tmp_path / "m", FILES)
    hub.wait_idle()
    kinds = [(r.kind, r.status) for r in hub.stats.requests_for(path=f"*{BIG}")]
    i403 = kinds.index(("cdn", 403))
    assert ("resolve", 302) in kinds[i403 + 1:], kinds  # went back to the hub for a fresh URL
    assert "url_expired" in retry_reasons(log.read_text())
    assert "Signature=" not in log.read_text()


def test_file_changed_on_hub_between_attempts_no_splice(repo_hub: HubEmulator, tmp_path: Path,
                                                        procs: list[subprocess.Popen[str]]) -> None:
    hub = repo_hub
    target = tmp_path / "m"
    hub.faults.rate_limit_global = 2 * MiB
    argv = run_args(endpoint=hub.url, target=target, repo_id=REPO, extra=FAST)
    proc = start_cli(argv, log=tmp_path / "first.log")
    procs.append(proc)
    assert hub.wait_for(lambda s: s.bytes_by_file[BIG] >= 3 * MiB // 2, timeout=30)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert partial_bytes(target) >= MiB // 2, "the killed run left no partial data"
    new = random.Random(99).randbytes(BIG_SIZE)  # same size, new bytes: only the hash tells them apart
    new_commit = hub.replace_file(REPO, BIG, new)
    hub.faults.rate_limit_global = None
    hub.wait_idle()
    hub.reset_stats()
    res = run(hub, target)
    want = {**FILES, BIG: new}
    assert_ready(target, want, res)
    assert marker.read_marker(target)["commit"] == new_commit  # type: ignore[index]
    # no splice: the new content was fetched whole from byte 0, none of the old partial was reused for
    # it, and no checksum mismatch was needed to find that out (a splice would be caught and refetched)
    assert range_starts(hub, BIG)[0] == 0, range_starts(hub, BIG)
    assert served(hub, BIG) == BIG_SIZE
    assert "checksum" not in retry_reasons(res.stderr), res.stderr[-4000:]
    # the mechanism: new content has a new part key, so the old partial is never even loaded (pruned as a
    # leftover); were the key blind to the hash, the journal check would have to refuse it instead
    assert "discarding the journal" not in res.stderr, res.stderr[-4000:]


# ---- (b) cases: permanent errors and spent budgets ------------------------------------------------
def test_file_404_after_plan_exits_not_found(repo_hub: HubEmulator, tmp_path: Path) -> None:
    hub = repo_hub
    hub.fail_next(1000, status=404, kind="resolve", path="config.json")
    res = run(hub, tmp_path / "m", "--max-workers", "1")
    line = assert_failed(res, ExitCode.NOT_FOUND, tmp_path / "m", mentions="config.json")
    assert "404" in line
    assert not (tmp_path / "m" / "config.json").exists()


def test_resolve_403_exits_unauthorized(repo_hub: HubEmulator, tmp_path: Path) -> None:
    hub = repo_hub
    hub.fail_next(1000, status=403, kind="resolve", path="config.json")
    res = run(hub, tmp_path / "m")
    assert_failed(res, ExitCode.UNAUTHORIZED, tmp_path / "m", mentions="403")


@pytest.mark.parametrize(("token", "status"), [(None, 401), ("hf_wrongtokenABCDEF123456", 403)],
                         ids=["no-token", "bad-token"])
def test_gated_repo_without_access_exits_unauthorized(hub: HubEmulator, tmp_path: Path,
                                                      token: str | None, status: int) -> None:
    hub.add_repo("org/gated", {"config.json": b"{}"}, gated=True, token="hf_righttokenABCDEF123456")
    env = {"HF_TOKEN": token} if token else {}
    res = run_cli(run_args(endpoint=hub.url, target=tmp_path / "m", repo_id="org/gated", extra=FAST), env=env,
                  timeout=60)
    line = assert_failed(res, ExitCode.UNAUTHORIZED, tmp_path / "m", partial=False)
    assert str(status) in line
    assert [r.status for r in hub.stats.requests] == [status], "auth failures must not be retried"
    if token:
        assert token not in res.stderr + res.stdout


def test_cdn_403_forever_exits_transient_with_partial(repo_hub: HubEmulator, tmp_path: Path,
                                                      procs: list[subprocess.Popen[str]]) -> None:
    """A CDN 403 means an expired URL (resolve again), so a CDN that refuses forever is retried until the
    budget is spent: exit 7, the bytes already received kept."""
    hub = repo_hub
    hub.faults.path = f"*{BIG}*"
    hub.faults.stall_mid_body = (2 * MiB, 60.0)  # part of the file lands on disk, then the CDN refuses
    log = tmp_path / "run.log"
    argv = run_args(endpoint=hub.url, target=tmp_path / "m", repo_id=REPO,
                    extra=[*FAST, "--retry-budget", "3"])
    proc = start_cli(argv, log=log)
    procs.append(proc)
    assert hub.wait_for(lambda s: s.faults_fired["stall_mid_body"] >= 1, timeout=30)
    hub.fail_next(100000, status=403, kind="cdn", path=f"*{BIG}")
    hub.release_stalls()
    code = proc.wait(60)
    text = log.read_text()
    res = subprocess.CompletedProcess(argv, code, "", text)
    assert_failed(res, ExitCode.TRANSIENT, tmp_path / "m", partial=True)
    assert "url_expired" in retry_reasons(text)


def test_hub_down_from_the_start_exits_transient(repo_hub: HubEmulator, tmp_path: Path) -> None:
    """test_provision_e2e covers an outage mid-download (exit 7, partial kept); this one never connects."""
    hub = repo_hub
    hub.down()
    try:
        t0 = time.monotonic()
        res = run(hub, tmp_path / "m", "--retry-budget", "2", timeout=60)
        elapsed = time.monotonic() - t0
    finally:
        hub.up()
    assert_failed(res, ExitCode.TRANSIENT, tmp_path / "m", partial=False, mentions="retry budget")
    assert elapsed < 20
    assert "connect" in retry_reasons(res.stderr)


def test_5xx_forever_exits_transient(repo_hub: HubEmulator, tmp_path: Path) -> None:
    hub = repo_hub
    hub.fail_next(100000, status=503, kind="api")
    res = run(hub, tmp_path / "m", "--retry-budget", "2", timeout=60)
    assert_failed(res, ExitCode.TRANSIENT, tmp_path / "m", partial=False, mentions="503")


def test_check_cli_agrees_after_fault_run(repo_hub: HubEmulator, tmp_path: Path) -> None:
    """The probe (`check`, a separate process) says ready only after a successful run."""
    hub = repo_hub
    hub.fail_next(100000, status=503, kind="cdn")
    target = tmp_path / "m"
    res = run(hub, target, "--retry-budget", "2", timeout=60)
    assert res.returncode == ExitCode.TRANSIENT
    chk = run_cli(["python", "-m", "provisioner", "check", str(target)])
    assert chk.returncode == ExitCode.NOT_READY
    hub.clear_faults()
    assert_ready(target, FILES, run(hub, target))
    wait_until(lambda: run_cli(["python", "-m", "provisioner", "check", str(target)]).returncode == 0,
               timeout=10, what="check to pass")
