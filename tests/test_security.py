"""Security: the token never leaks, signed URLs are redacted, the health server serves only what is
documented, and files get sane permissions. docs/faults.md is the table."""

from __future__ import annotations

import hashlib
import http.client
import http.server
import json
import os
import shlex
import socket
import stat
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import run_args, run_cli, start_cli, wait_until
from hub_emulator import HubEmulator

from provisioner.api import provision
from provisioner.config import Config
from provisioner.errors import ExitCode, UnauthorizedError
from provisioner.state import marker

CANARY = "hf_canaryTOKENdoNOTleak0123456789"
REPO = "org/gated"
MiB = 1 << 20
FILES = {
    "config.json": b'{"hidden_size": 8}\n',
    "tokenizer/vocab.txt": b"\n".join(b"tok%d" % i for i in range(200)),
    "model.safetensors": os.urandom(3 * MiB + 5),
}
SIGNED = ("Signature=", "Expires=")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, body=b"x" if method in ("POST", "PUT") else None)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def all_state_bytes(target: Path) -> dict[str, bytes]:
    return {p.relative_to(target).as_posix(): p.read_bytes()
            for p in (target / ".provisioner").rglob("*") if p.is_file()}


# ---- the canary run ------------------------------------------------------------------------------
@pytest.mark.parametrize("token", [CANARY, "CanaryTokenNotHfShaped-5e4d3c2b1a"],
                         ids=["hf-shaped", "any-shape"])  # the second is only caught as the run's own secret
def test_token_never_leaks_from_a_run_with_retries(hub: HubEmulator, tmp_path: Path, token: str) -> None:
    """A gated repo, HF_TOKEN=<canary>, debug logs, retries that put hub and CDN URLs into messages, an
    expired signed URL: the canary is in no log line, metric, /status body, file, or process argument,
    and no signed query string is in any of them."""
    hub.add_repo(REPO, FILES, gated=True, token=token)
    hub.faults.path = "*model.safetensors*"
    hub.faults.rate_limit_global = 2 * MiB
    hub.faults.stall_mid_body = (MiB, 60.0)
    hub.fail_next(1, status=500, kind="resolve")
    hub.fail_next(1, status=503, kind="api")
    port = free_port()
    target = tmp_path / "m"
    log = tmp_path / "run.log"
    argv = run_args(endpoint=hub.url, target=target, repo_id=REPO,
                    extra=["--verify", "checksums", "--stall-timeout", "1", "--backoff-max", "0.3",
                           "--retry-budget", "30", "--log-level", "debug", "--linger", "4"])
    argv[argv.index("--listen") + 1] = f"127.0.0.1:{port}"
    proc = start_cli(argv, env={"HF_TOKEN": token}, log=log)
    scraped: list[bytes] = []
    try:
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        wait_until(lambda: _up(port), timeout=20, what="the health server")
        assert hub.wait_for(lambda s: s.faults_fired["stall_mid_body"] >= 1, timeout=30)
        for path in ("/metrics", "/status", "/healthz", "/readyz"):
            scraped.append(http_get(port, path)[1])
        hub.expire_signed_urls_now()  # the stalled response is cut by the watchdog; its URL now gets 403
        hub.release_stalls()
        hub.faults.rate_limit_global = None
        wait_until(lambda: marker.marker_path(target).exists() or proc.poll() is not None, timeout=60,
                   what="the run to finish")
        for path in ("/metrics", "/status", "/healthz", "/readyz"):  # during --linger: the final state
            scraped.append(http_get(port, path)[1])
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "url_expired" in text, "the run should have re-resolved an expired signed URL"
    outputs = {"cmdline": cmdline, "log": text.encode(), **{f"scrape{i}": b for i, b in enumerate(scraped)},
               **all_state_bytes(target)}
    for name, data in outputs.items():
        assert token.encode() not in data, f"the token leaked into {name}"
        assert token[4:16].encode() not in data, f"a piece of the token leaked into {name}"
    for name in ("log", *[k for k in outputs if k.startswith("scrape")]):
        for s in SIGNED:
            assert s.encode() not in outputs[name], f"a signed URL query ({s}) leaked into {name}"


def _up(port: int) -> bool:
    try:
        return http_get(port, "/healthz")[0] in (200, 503)
    except OSError:
        return False


def test_token_not_in_exceptions_events_or_config(hub: HubEmulator, tmp_path: Path) -> None:
    hub.add_repo(REPO, FILES, gated=True, token="hf_therealtoken0123456789")
    events: list[str] = []
    cfg = Config(repo_id=REPO, endpoint=hub.url, target=str(tmp_path / "m"), verify="checksums", listen="",
                 kube="off", token=CANARY, retry_budget=5, backoff_max=0.2)
    assert CANARY not in repr(cfg) and CANARY not in json.dumps(cfg.redacted())
    with pytest.raises(UnauthorizedError) as info:
        provision(cfg, progress=lambda e: events.append(f"{e.kind} {e.data!r}"))
    rendered = "".join(traceback.format_exception(info.value)) + repr(info.value) + str(info.value)
    assert CANARY not in rendered
    assert events and not any(CANARY in e for e in events)


# ---- the token goes to the hub only, never to the CDN ---------------------------------------------------
class _Recorder(http.server.ThreadingHTTPServer):
    daemon_threads = True
    seen: list[dict[str, str]]


def _serve(handler: type[http.server.BaseHTTPRequestHandler]) -> _Recorder:
    srv = _Recorder(("127.0.0.1", 0), handler)
    srv.seen = []
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return srv


@pytest.fixture
def hub_and_cdn() -> Iterator[tuple[_Recorder, _Recorder]]:
    data = FILES["model.safetensors"]
    sha = hashlib.sha256(data).hexdigest()
    commit = "ab" * 20

    class Cdn(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.server.seen.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})  # type: ignore[attr-defined]
            start, end = 0, len(data) - 1
            rng = self.headers.get("Range")
            if rng:
                a, _, b = rng.split("=", 1)[1].partition("-")
                start, end = int(a), int(b) if b else len(data) - 1
            self.send_response(206 if rng else 200)
            self.send_header("Content-Length", str(end - start + 1))
            self.send_header("ETag", f'"{sha}"')
            if rng:
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            self.end_headers()
            self.wfile.write(data[start:end + 1])

    cdn = _serve(Cdn)
    cdn_url = f"http://127.0.0.1:{cdn.server_address[1]}"

    class Hub(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.server.seen.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})  # type: ignore[attr-defined]
            if self.headers.get("Authorization") != f"Bearer {CANARY}":
                self.send_response(401)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if self.path.startswith("/api/"):
                body = json.dumps({"id": REPO, "sha": commit, "siblings": [{
                    "rfilename": "model.safetensors", "size": len(data), "blobId": "cd" * 20,
                    "lfs": {"sha256": sha, "size": len(data), "pointerSize": 134}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self.send_response(302)
            self.send_header("Location", f"{cdn_url}/blob/{sha}?Expires=9999999999&Signature=s3cr3tsig")
            self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("X-Linked-Etag", f'"{sha}"')
            self.send_header("Content-Length", "0")
            self.end_headers()

    hub = _serve(Hub)
    yield hub, cdn
    for srv in (hub, cdn):
        srv.shutdown()
        srv.server_close()


def test_token_is_never_sent_to_the_cdn(hub_and_cdn: tuple[_Recorder, _Recorder], tmp_path: Path) -> None:
    hub, cdn = hub_and_cdn
    target = tmp_path / "m"
    cfg = Config(repo_id=REPO, endpoint=f"http://127.0.0.1:{hub.server_address[1]}", target=str(target),
                 verify="checksums", listen="", kube="off", token=CANARY, retry_budget=10, backoff_max=0.2,
                 split_threshold=MiB, connections_per_file=3)
    provision(cfg)
    assert (target / "model.safetensors").read_bytes() == FILES["model.safetensors"]
    assert any(h.get("authorization") == f"Bearer {CANARY}" for h in hub.seen), "the hub should get the token"
    assert cdn.seen, "the file should come from the CDN"
    for h in cdn.seen:
        assert "authorization" not in h, h
        assert CANARY not in json.dumps(h), h


# ---- the health server serves only what is documented ----------------------------------------------------
def test_health_server_exposes_only_documented_endpoints(hub: HubEmulator, tmp_path: Path) -> None:
    hub.add_repo("org/open", {"config.json": b"{}"})
    port = free_port()
    argv = run_args(endpoint=hub.url, target=tmp_path / "m", repo_id="org/open",
                    extra=["--verify", "checksums", "--linger", "30"])
    argv[argv.index("--listen") + 1] = f"127.0.0.1:{port}"
    proc = start_cli(argv, log=tmp_path / "run.log")
    try:
        wait_until(lambda: _up(port) and marker.marker_path(tmp_path / "m").exists(), timeout=30,
                   what="ready and serving")
        for path in ("/metrics", "/healthz", "/readyz", "/status"):
            assert http_get(port, path)[0] == 200, path
            assert http_get(port, path, "HEAD")[0] == 200, path
        for path in ("/", "/debug", "/metrics/x", "/status/", "/.provisioner/ready.json", "/../etc/passwd",
                     "/ready.json", "/config", "/env", "/healthz/../status", "/metrics%00"):
            assert http_get(port, path)[0] == 404, path
        for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
            status, _ = http_get(port, "/metrics", method)
            assert status == 405, (method, status)
        status, body = http_get(port, "/status")
        snapshot = json.loads(body)
        assert "token" not in json.dumps(snapshot).lower(), snapshot
    finally:
        proc.terminate()
        proc.wait(20)


# ---- file permissions ------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o000], ids=["umask-022", "umask-000"])
def test_files_get_sane_permissions(hub: HubEmulator, tmp_path: Path, umask: int) -> None:
    """No world-writable file or directory in the target (a world-writable marker or state dir lets any
    local user forge readiness or swap partial data), model files not executable, whatever the umask."""
    hub.add_repo("org/open", FILES)
    target = tmp_path / "m"
    argv = run_args(endpoint=hub.url, target=target, repo_id="org/open", extra=["--verify", "checksums"])
    shell = f"umask {umask:03o} && exec {' '.join(shlex.quote(a) for a in argv)}"
    res = run_cli(["sh", "-c", shell])
    assert res.returncode == 0, res.stderr[-3000:]
    bad: list[str] = []
    for p in [target, *target.rglob("*")]:
        mode = os.lstat(p).st_mode
        rel = p.relative_to(tmp_path).as_posix()
        if mode & stat.S_IWOTH:
            bad.append(f"{rel} is world-writable ({stat.filemode(mode)})")
        if stat.S_ISREG(mode) and ".provisioner" not in p.parts and mode & 0o111:
            bad.append(f"{rel} is executable ({stat.filemode(mode)})")
    assert not bad, bad
    for rel in FILES:
        assert stat.S_IMODE(os.stat(target / rel).st_mode) & 0o644 == 0o644, rel  # readable by the app user


def test_check_is_stdlib_only_and_needs_no_token(tmp_path: Path) -> None:
    """The probe never needs the token: it runs with none and reads no secret."""
    res = subprocess.run([sys.executable, "-m", "provisioner", "check", str(tmp_path)], capture_output=True,
                         text=True, timeout=30, env={"PATH": os.environ.get("PATH", ""),
                                                     "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert res.returncode == ExitCode.NOT_READY
    assert "Traceback" not in res.stderr
