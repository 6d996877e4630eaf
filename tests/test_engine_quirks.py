"""The native engine against servers that bend HTTP, outside the bare profile (issue 11), as real `run`
processes: a server that answers a resumed Range request with 200 and the whole body (the file restarts
from byte 0 and its sha256 matches), and one that sends no Content-Type on file content. The mechanism is
asserted on the emulator's request log and byte counters, not only on the outcome."""

from __future__ import annotations

import hashlib
import signal
from pathlib import Path

import pytest
from cli_helpers import json_lines, run_args, run_cli, start_cli
from hub_emulator import HubEmulator

from provisioner.fetch import partial_bytes_on_disk
from provisioner.manifest import FileEntry
from provisioner.state import marker

REPO = "org/quirks"
MiB = 1 << 20
BIG = "model.safetensors"
FILES = {"config.json": b'{"hidden_size": 8}\n', BIG: bytes(range(256)) * (32 * 1024)}  # 8 MiB
SIZE = len(FILES[BIG])
FAST = ["--verify", "checksums", "--retry-budget", "20", "--backoff-max", "0.2", "--split-threshold", "1GiB"]


def _partial_bytes(target: Path) -> int:
    """Resumable bytes of the big file (the journal's, not the preallocated .part file's size)."""
    entry = FileEntry(path=BIG, size=SIZE, sha256=hashlib.sha256(FILES[BIG]).hexdigest())
    return partial_bytes_on_disk(target / ".provisioner", entry)


@pytest.mark.parametrize("profile", ["hf", "xet", "mirror"])
def test_resumed_range_answered_with_200_restarts_from_zero(tmp_path: Path, profile: str) -> None:
    with HubEmulator(profile=profile) as hub:
        hub.add_repo(REPO, FILES)
        target = tmp_path / "m"
        argv = run_args(endpoint=hub.url, target=target, repo_id=REPO, extra=FAST)
        hub.faults.rate_limit_global = 4 * MiB
        proc = start_cli(argv, log=tmp_path / "first.log")
        try:
            assert hub.wait_for(lambda s: s.bytes_by_file[BIG] >= 2 * MiB, timeout=60)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 128 + signal.SIGTERM
        finally:
            proc.kill()
        kept = _partial_bytes(target)
        assert 0 < kept < SIZE, "the first run must leave a partial to resume"
        hub.wait_idle()
        hub.clear_faults()
        hub.reset_stats()
        hub.faults.ignore_range = True  # every Range request now gets 200 and the whole body
        res = run_cli(argv, timeout=120)
        assert res.returncode == 0, res.stderr[-3000:]
        assert hashlib.sha256((target / BIG).read_bytes()).hexdigest() == hashlib.sha256(FILES[BIG]).hexdigest()
        m = marker.read_marker(target)
        assert m is not None and {f["path"]: f["evidence"] for f in m["files"]}[BIG] == "sha256"
        hub.wait_idle()
        content = [r for r in hub.stats.requests if r.path.endswith(BIG) and r.method == "GET"
                   and r.status in (200, 206)]
        resumed = [r for r in content if r.range is not None]
        assert resumed and resumed[0].range.startswith(f"bytes={kept}-"), [r.range for r in content]
        assert resumed[0].status == 200 and hub.stats.faults_fired["ignore_range"] >= 1
        last = content[-1]
        assert last.status == 200 and last.range is None and last.bytes_sent == SIZE  # the whole file from 0
        retries = [ln for ln in json_lines(res.stderr) if ln.get("reason") == "range_ignored"]
        assert retries, res.stderr[-3000:]


@pytest.mark.parametrize("profile", ["hf", "xet", "mirror"])
def test_no_content_type_on_file_content_is_fine(tmp_path: Path, profile: str) -> None:
    with HubEmulator(profile=profile) as hub:
        hub.add_repo(REPO, FILES)
        hub.faults.no_content_type = True
        target = tmp_path / "m"
        res = run_cli(run_args(endpoint=hub.url, target=target, repo_id=REPO, extra=FAST), timeout=120)
        assert res.returncode == 0, res.stderr[-3000:]
        for p, data in FILES.items():
            assert (target / p).read_bytes() == data, p
        hub.wait_idle()
        content = [r for r in hub.stats.requests if r.method == "GET" and r.status in (200, 206)
                   and r.kind in ("resolve", "cdn")]
        assert content and all(r.fault == "no_content_type" for r in content), content
        assert hub.stats.bytes_by_file[BIG] == SIZE  # fetched once, no retry
