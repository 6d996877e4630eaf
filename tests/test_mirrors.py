"""`--mirrors`: bytes from untrusted mirrors (another provisioner's `serve`, or a broken one), plan and hashes
from the hub. Real processes against the hub emulator; the bad mirrors are tiny servers written here."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from cli_helpers import run_args, start_cli, wait_until
from hub_emulator import HubEmulator

from provisioner.api import provision
from provisioner.observe import metrics
from provisioner.observe.progress import Tracker
from provisioner.state import marker

REPO = "org/small"
BIG = "model.safetensors"
FAST = ["--verify", "checksums", "--stall-timeout", "1", "--backoff-max", "0.5", "--connect-timeout", "2",
        "--retry-budget", "30"]


# ---- fixtures -------------------------------------------------------------------------------------
@pytest.fixture
def repo_hub(hub: HubEmulator, small_repo: Path) -> HubEmulator:
    hub.add_repo(REPO, small_repo)
    return hub


@pytest.fixture
def ready_dir(repo_hub: HubEmulator, tmp_path: Path) -> Path:
    target = tmp_path / "seed"
    provision(repo_id=REPO, endpoint=repo_hub.url, target=str(target), verify="checksums", listen="",
              kube="off", token=None)
    assert marker.check_ready(target).ok
    return target


@pytest.fixture
def serve_url(ready_dir: Path, tmp_path: Path) -> Iterator[str]:
    """`model-provisioner serve` over the seeded volume, as a real process."""
    log = tmp_path / "serve.log"
    proc = start_cli([sys.executable, "-m", "provisioner", "serve", str(ready_dir), "--listen", "127.0.0.1:0"],
                     log=log)
    try:
        wait_until(lambda: "on port" in log.read_text(), timeout=30, what="serve to start")
        port = re.findall(r"on port (\d+)", log.read_text())[0]
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class BadMirror:
    """A mirror serving `root` (a ready dir) in the hub layout, misbehaving on BIG per `mode`:
    flip (one byte flipped), truncate (half the body, then close), stall (a few bytes, then silence),
    404, or down (nothing listening at all)."""

    def __init__(self, root: Path, mode: str) -> None:
        self.root, self.mode = root, mode
        self.authorization_seen = False
        self.release = threading.Event()
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                try:
                    mirror.answer(self)
                except OSError:  # the client gave up on us: that is the point
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        if mode == "down":
            self.httpd.server_close()  # the port is closed: connections are refused
        else:
            threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.release.set()
        if self.mode != "down":
            self.httpd.shutdown()
            self.httpd.server_close()

    def answer(self, h: BaseHTTPRequestHandler) -> None:
        if h.headers.get("Authorization"):
            self.authorization_seen = True
        path = unquote(h.path.split("/resolve/", 1)[1].split("/", 1)[1])
        data = (self.root / path).read_bytes()
        bad = path == BIG
        if bad and self.mode == "404":
            h.send_response(404)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        start, end = 0, len(data) - 1
        m = re.match(r"bytes=(\d+)-(\d*)", h.headers.get("Range", ""))
        if m:
            start, end = int(m.group(1)), int(m.group(2) or end)
        body = bytearray(data[start:end + 1])
        if bad and self.mode == "flip" and len(body) > 1000:
            body[1000] ^= 0xFF
        h.send_response(206 if m else 200)
        h.send_header("Content-Length", str(len(body)))
        if m:
            h.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        h.end_headers()
        if bad and self.mode == "truncate":
            h.wfile.write(body[: len(body) // 2])
            h.close_connection = True
            return
        if bad and self.mode == "stall":
            h.wfile.write(body[:4096])
            h.wfile.flush()
            self.release.wait(30)  # timeout: a test bound, released at teardown
            h.close_connection = True
            return
        h.wfile.write(body)


def _client(hub: HubEmulator, target: Path, mirrors: list[str], *, env: dict[str, str] | None = None,
            log: Path) -> subprocess.Popen[str]:
    args = run_args(endpoint=hub.url, target=target, repo_id=REPO,
                    extra=[*FAST, "--mirrors", ",".join(mirrors)])
    return start_cli(args, env=env, log=log)


def _same_files(target: Path, small_repo: Path) -> None:
    for p in small_repo.rglob("*"):
        if p.is_file():
            rel = p.relative_to(small_repo)
            assert (target / rel).read_bytes() == p.read_bytes(), rel


def _file_sources(target: Path) -> dict[str, str | None]:
    m = marker.read_marker(target)
    assert m is not None
    return {f["path"]: f.get("source") for f in m["files"]}


# ---- tests ----------------------------------------------------------------------------------------
def test_three_clients_get_every_byte_from_a_served_volume(repo_hub: HubEmulator, serve_url: str,
                                                           small_repo: Path, tmp_path: Path) -> None:
    repo_hub.reset_stats()
    procs = [_client(repo_hub, tmp_path / f"c{i}", [serve_url], log=tmp_path / f"c{i}.log") for i in range(3)]
    for i, p in enumerate(procs):
        assert p.wait(timeout=120) == 0, (tmp_path / f"c{i}.log").read_text()[-3000:]
    stats = repo_hub.stats
    model_files = [p.relative_to(small_repo).as_posix() for p in small_repo.rglob("*") if p.is_file()]
    assert {f: stats.bytes_by_file[f] for f in model_files} == dict.fromkeys(model_files, 0)
    for i in range(3):
        target = tmp_path / f"c{i}"
        assert marker.check_ready(target).ok
        _same_files(target, small_repo)
        assert set(_file_sources(target).values()) == {serve_url}


@pytest.mark.parametrize("mode", ["flip", "truncate", "stall", "404", "down"])
def test_a_bad_mirror_is_skipped_for_the_next_source(mode: str, repo_hub: HubEmulator, ready_dir: Path,
                                                     serve_url: str, small_repo: Path, tmp_path: Path) -> None:
    bad = BadMirror(ready_dir, mode)
    try:
        repo_hub.reset_stats()
        log = tmp_path / "client.log"
        proc = _client(repo_hub, tmp_path / "c", [bad.url, serve_url], log=log,
                       env={"HF_TOKEN": "hf_mirrorsmustnotseethis"})
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        bad.close()
    target = tmp_path / "c"
    _same_files(target, small_repo)
    assert repo_hub.stats.bytes_by_file[BIG] == 0  # the good mirror, not the hub, stood in
    sources = _file_sources(target)
    assert sources[BIG] == serve_url
    reason = {"flip": "checksum", "truncate": "reset", "stall": "stall", "404": "not_found", "down": "connect"}[mode]
    text = log.read_text()
    assert f"mirror {bad.url} failed ({reason})" in text or (
        reason == "checksum" and f"without mirror(s) {bad.url}" in text), text[-3000:]
    assert not bad.authorization_seen  # the token never goes to a mirror
    assert "Traceback" not in text


def test_all_mirrors_bad_falls_back_to_the_hub(repo_hub: HubEmulator, ready_dir: Path, small_repo: Path,
                                               tmp_path: Path) -> None:
    flip, down = BadMirror(ready_dir, "flip"), BadMirror(ready_dir, "down")
    try:
        log = tmp_path / "client.log"
        proc = _client(repo_hub, tmp_path / "c", [flip.url, down.url], log=log)
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        flip.close()
        down.close()
    _same_files(tmp_path / "c", small_repo)
    assert _file_sources(tmp_path / "c")[BIG] == "hub"
    assert repo_hub.stats.bytes_by_file[BIG] > 0


def test_resume_across_sources_keeps_the_mirrors_bytes(repo_hub: HubEmulator, ready_dir: Path,
                                                       small_repo: Path, tmp_path: Path) -> None:
    """A mirror that stalls after some bytes: the hub continues from there (the partial is not thrown away)."""
    stall = BadMirror(ready_dir, "stall")
    try:
        repo_hub.reset_stats()
        log = tmp_path / "client.log"
        proc = _client(repo_hub, tmp_path / "c", [stall.url], log=log)
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        stall.close()
    _same_files(tmp_path / "c", small_repo)
    size = (small_repo / BIG).stat().st_size
    assert repo_hub.stats.bytes_by_file[BIG] == size - 4096


def test_serve_refuses_a_volume_that_is_not_ready(ready_dir: Path, tmp_path: Path) -> None:
    import http.client

    marker.invalidate(ready_dir)
    log = tmp_path / "serve.log"
    proc = start_cli([sys.executable, "-m", "provisioner", "serve", str(ready_dir), "--listen", "127.0.0.1:0"],
                     log=log)
    try:
        wait_until(lambda: "on port" in log.read_text(), timeout=30, what="serve to start")
        port = int(re.findall(r"on port (\d+)", log.read_text())[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", f"/{REPO}/resolve/main/config.json")
        assert conn.getresponse().status == 503
        conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_metrics_and_status_show_sources_and_mirror_failures() -> None:
    tracker = Tracker(repo_id=REPO, revision="main")
    tracker.add_bytes("a", 10, source="mirror")
    tracker.add_bytes("a", 5)
    tracker.mirror_failed(reason="stall", mirror="http://m")
    text = metrics.render(metrics.make_registry(tracker)).decode()
    assert re.search(r'model_provisioner_source_bytes_total\{.*source="mirror"\} 10\.0', text)
    assert re.search(r'model_provisioner_source_bytes_total\{.*source="hub"\} 5\.0', text)
    assert re.search(r'model_provisioner_mirror_failures_total\{reason="stall".*\} 1\.0', text)
    assert re.search(r"model_provisioner_downloaded_bytes_total\{.*\} 15\.0", text)
    snap = json.loads(json.dumps(tracker.snapshot()))
    assert snap["source_bytes"] == {"mirror": 10, "hub": 5} and snap["last_mirror_failure"] == "http://m: stall"


def test_mirrors_setting_parses_and_rejects_garbage() -> None:
    from provisioner.config import Config
    from provisioner.errors import ConfigError

    cfg = Config.from_sources(args={"mirrors": "http://a:1/, https://b ,http://a:1"}, environ={})
    assert cfg.mirrors == ("http://a:1", "https://b")
    assert Config.from_sources(environ={"PROVISIONER_MIRRORS": "http://c"}).mirrors == ("http://c",)
    with pytest.raises(ConfigError):
        Config.from_sources(args={"mirrors": "ftp://x"}, environ={})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_sidecar_serves_what_it_provisioned(repo_hub: HubEmulator, small_repo: Path, tmp_path: Path) -> None:
    """`--mode sidecar --serve-listen`: a node cache other pods use as their mirror (versioned layout)."""
    port = _free_port()
    cache_log = tmp_path / "cache.log"
    cache = start_cli(run_args(endpoint=repo_hub.url, target=tmp_path / "cache", repo_id=REPO,
                               extra=[*FAST, "--mode", "sidecar", "--layout", "versioned",
                                      "--serve-listen", f"127.0.0.1:{port}"]), log=cache_log)
    try:
        wait_until(lambda: "serving the model over the hub protocol" in cache_log.read_text(), timeout=120,
                   what="the cache to be ready and serving")
        repo_hub.reset_stats()
        log = tmp_path / "pod.log"
        proc = _client(repo_hub, tmp_path / "pod", [f"http://127.0.0.1:{port}"], log=log)
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        cache.terminate()
        assert cache.wait(timeout=20) in (0, 143), cache_log.read_text()[-3000:]
    _same_files(tmp_path / "pod", small_repo)
    assert sum(repo_hub.stats.bytes_by_file.values()) == 0
