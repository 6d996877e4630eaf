"""The health server keeps its promises whatever clients do: raw-socket fuzzing, bounded resources,
and (from a real `run` process) nothing but JSON lines on stderr.

Pass/fail only: no latency thresholds here (benchmarks/server_load.py measures those). Socket
timeouts below are hang guards, never the thing asserted.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cli_helpers import cli_env, run_args, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from obs_helpers import downloading_tracker
from prom_helpers import free_port

from provisioner.observe import metrics
from provisioner.serve.listener import head_end
from provisioner.serve.server import HealthServer

if TYPE_CHECKING:  # the `hub` fixture's type only; the fixture itself comes from conftest
    from hub_emulator import HubEmulator

GUARD = 30.0  # seconds: a hang guard for every socket read; never reached when the server behaves
HEAD_TIMEOUT = 0.5  # in-process servers: slow clients are cut after this
REPO = "org/fuzz"
MiB = 1024 * 1024
STATUS_ANY = {200, 400, 404, 405, 408, 414, 431, 503, 505}


def raw(port: int, payload: bytes, *, half_close: bool = True, chunks: int = 1) -> bytes:
    """Send `payload` (in `chunks` pieces), optionally half-close, and read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=GUARD) as s:
        step = max(1, len(payload) // chunks)
        try:
            for i in range(0, len(payload), step):
                s.sendall(payload[i:i + step])
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError, OSError):  # answered and closed before all was sent
            pass
        out = b""
        while True:
            try:
                data = s.recv(65536)
            except ConnectionResetError:  # the server may reset a connection it refused; what came is kept
                break
            if not data:
                return out
            out += data
        return out


def status_of(response: bytes) -> int | None:
    """The status code of an HTTP/1.x response, None for no response. Fails on anything else."""
    if not response:
        return None
    line = response.split(b"\r\n", 1)[0]
    assert line.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), response[:200]
    return int(line.split()[1])


def get(port: int, path: str) -> int | None:
    return status_of(raw(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()))


@pytest.fixture
def server() -> Iterator[HealthServer]:
    tracker = downloading_tracker()
    srv = HealthServer("127.0.0.1:0", tracker=tracker, registry=metrics.make_registry(tracker),
                       ready_check=lambda: False, stall_limit=10.0, limits={"head_timeout": HEAD_TIMEOUT})
    srv.start()
    yield srv
    srv.stop()


# (name, payload, expected status; None = the server closes without answering)
CORPUS: list[tuple[str, bytes, int | None]] = [
    ("ok", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 200),
    ("http10-no-host", b"GET /metrics HTTP/1.0\r\n\r\n", 200),
    ("bare-lf", b"GET /healthz HTTP/1.1\nHost: x\n\n", 200),
    ("head", b"HEAD /status HTTP/1.1\r\n\r\n", 200),
    ("query-and-fragment", b"GET /healthz?x=1#y HTTP/1.1\r\n\r\n", 200),
    ("unknown-path", b"GET /nope HTTP/1.1\r\n\r\n", 404),
    ("absolute-uri", b"GET http://x/healthz HTTP/1.1\r\n\r\n", 404),
    ("non-utf8-path", b"GET /\xff\xfe\xc3\x28%00%ff HTTP/1.1\r\n\r\n", 404),
    ("nul-in-path", b"GET /a\x00b HTTP/1.1\r\n\r\n", 404),
    ("invalid-method", b"BREW /healthz HTTP/1.1\r\n\r\n", 405),
    ("lowercase-method", b"get /healthz HTTP/1.1\r\n\r\n", 405),
    ("post-with-body", b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 405),
    ("method-only", b"GET\r\n\r\n", 400),
    ("too-many-words", b"GET / HTTP/1.1 extra\r\n\r\n", 400),
    ("bad-version", b"GET / HTTP/x.y\r\n\r\n", 400),
    ("unsupported-version", b"GET / HTTP/9.9\r\n\r\n", 505),
    ("header-flood", b"GET /healthz HTTP/1.1\r\n" + b"X-A: b\r\n" * 200 + b"\r\n", 431),
    ("huge-header", b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n", 431),
    ("huge-request-line", b"GET /" + b"a" * 40_000 + b" HTTP/1.1\r\n\r\n", 431),
    ("header-without-colon", b"GET /healthz HTTP/1.1\r\nnonsense\r\n\r\n", 200),
    ("binary-header", b"GET /healthz HTTP/1.1\r\nX: \x00\x01\xff\r\n\r\n", 200),
    ("pipelined", b"GET /healthz HTTP/1.1\r\n\r\nGET /readyz HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\n\r\n", 200),
    ("blank-lines-only", b"\r\n\r\n", None),
    ("truncated-request-line", b"GET /heal", None),
    ("truncated-headers", b"GET /healthz HTTP/1.1\r\nHost: x\r\n", None),
    ("tls-hello", bytes.fromhex("16030100a5010000a10303") + bytes(range(32)), None),
    ("empty", b"", None),
]


@pytest.mark.parametrize(("payload", "expected"), [(p, e) for _, p, e in CORPUS], ids=[n for n, _, _ in CORPUS])
def test_fixed_corpus_gets_the_right_answer(server: HealthServer, payload: bytes, expected: int | None) -> None:
    assert status_of(raw(server.port, payload)) == expected
    if head_end(payload) in (-1, len(payload)) and len(payload) < 8192:
        # the same, dribbled in pieces (not for bytes after the head: the server may answer and close first)
        assert status_of(raw(server.port, payload, chunks=7)) == expected
    assert get(server.port, "/healthz") == 200 and get(server.port, "/readyz") == 503


def test_pipelined_requests_get_one_answer_then_close(server: HealthServer) -> None:
    response = raw(server.port, b"GET /healthz HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\n\r\n")
    assert response.count(b"HTTP/1.1 ") == 1 and b"Connection: close" in response


@pytest.mark.parametrize("payload", [b"GET /heal", b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"\x16\x03\x01"],
                         ids=["request-line", "headers", "binary"])
def test_a_client_that_stops_sending_gets_408(server: HealthServer, payload: bytes) -> None:
    assert status_of(raw(server.port, payload, half_close=False)) == 408
    assert get(server.port, "/healthz") == 200


def test_disconnects_mid_request_and_mid_response_do_not_hurt(server: HealthServer) -> None:
    for path in ("/metrics", "/status", "/healthz") * 10:
        with socket.create_connection(("127.0.0.1", server.port), timeout=GUARD) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            s.sendall(f"GET {path} HTTP/1.1\r\n\r\n".encode())
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close
    for _ in range(10):
        with socket.create_connection(("127.0.0.1", server.port), timeout=GUARD) as s:
            s.sendall(b"GET /metr")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    assert get(server.port, "/healthz") == 200 and get(server.port, "/metrics") == 200
    listener = server.listener
    assert listener is not None
    wait_until(lambda: listener.busy == 0 and listener.waiting == 0, timeout=GUARD, what="every slot freed")


def test_stuck_clients_cannot_lock_out_probes() -> None:
    """More stuck clients than connection slots: each newcomer evicts the longest-waiting one (which gets
    503), so a probe still gets its answer long before any stuck client would time out."""
    tracker = downloading_tracker()
    srv = HealthServer("127.0.0.1:0", tracker=tracker, registry=metrics.make_registry(tracker),
                       ready_check=lambda: True, stall_limit=10.0,
                       limits={"max_connections": 16, "head_timeout": 3600.0})
    srv.start()
    stuck: list[socket.socket] = []
    try:
        for _ in range(40):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=GUARD)
            s.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
            stuck.append(s)
        assert get(srv.port, "/healthz") == 200
        assert get(srv.port, "/readyz") == 200
        listener = srv.listener
        assert listener is not None
        assert listener.waiting + listener.busy <= 16
        evicted = 0
        for s in stuck[:24]:  # the oldest were evicted, each with a 503
            try:
                evicted += status_of(s.recv(65536)) == 503
            except ConnectionResetError:  # evicted with its 503 lost to the reset: still evicted
                evicted += 1
        assert evicted == 24
    finally:
        for s in stuck:
            s.close()
        srv.stop()


def test_when_every_slot_is_being_answered_a_newcomer_gets_503_at_once() -> None:
    release = threading.Event()
    entered = threading.Event()

    def slow_ready() -> bool:
        entered.set()
        return release.wait(GUARD)  # holds a worker (and the readiness lock) until released

    tracker = downloading_tracker()
    srv = HealthServer("127.0.0.1:0", tracker=tracker, registry=metrics.make_registry(tracker),
                       ready_check=slow_ready, stall_limit=10.0, limits={"max_connections": 3, "workers": 4})
    srv.start()
    listener = srv.listener
    assert listener is not None
    results: list[int | None] = []
    threads = [threading.Thread(target=lambda: results.append(get(srv.port, "/readyz"))) for _ in range(3)]
    try:
        for t in threads:
            t.start()
        wait_until(lambda: entered.is_set() and listener.busy == 3, timeout=GUARD, what="three busy slots")
        assert get(srv.port, "/healthz") == 503
    finally:
        release.set()
        for t in threads:
            t.join(GUARD)
        srv.stop()
    assert results == [200, 200, 200]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from([b"GET", b"HEAD", b"POST", b"", b"G\x00T", b"OPTIONS", b"X" * 300]),
       target=st.binary(max_size=300), version=st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b"", b"x"]),
       headers=st.lists(st.binary(max_size=200), max_size=30), tail=st.binary(max_size=200),
       chunks=st.integers(min_value=1, max_value=5))
def test_property_any_bytes_get_a_well_formed_answer_or_none(server: HealthServer, method: bytes, target: bytes,
                                                             version: bytes, headers: list[bytes], tail: bytes,
                                                             chunks: int) -> None:
    payload = b" ".join(x for x in (method, target, version) if x) + b"\r\n"
    payload += b"".join(h + b"\r\n" for h in headers) + b"\r\n" + tail
    assert status_of(raw(server.port, payload, chunks=chunks)) in STATUS_ANY | {None}
    assert get(server.port, "/healthz") == 200


# ---- a real process: stderr stays JSON lines whatever clients do ---------------------------------
def _abuse(port: int) -> None:
    """The corpus, concurrent scrapers, disconnects mid-response and stuck clients, all at once."""
    stuck = []
    for _ in range(80):  # more than the connection cap, never finished
        s = socket.create_connection(("127.0.0.1", port), timeout=GUARD)
        s.sendall(b"GET /metrics HTTP/1.1\r\n")
        stuck.append(s)

    def scraper() -> None:
        for _ in range(10):
            raw(port, b"GET /metrics HTTP/1.1\r\n\r\n")

    def rude() -> None:
        for _ in range(10):
            with socket.create_connection(("127.0.0.1", port), timeout=GUARD) as s:
                s.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    workers = [threading.Thread(target=scraper) for _ in range(20)] + [threading.Thread(target=rude) for _ in range(5)]
    for t in workers:
        t.start()
    for _, payload, _ in CORPUS:
        raw(port, payload)
    for t in workers:
        t.join(GUARD * 4)
    for s in stuck:
        s.close()


@pytest.mark.parametrize("level", ["debug", "info"])
def test_run_stderr_is_json_lines_whatever_clients_do(hub: HubEmulator, tmp_path: Path, level: str) -> None:
    hub.add_repo(REPO, {"config.json": b"{}", "model.safetensors": bytes(8 * MiB)})
    hub.faults.rate_limit_global = MiB // 8  # ~64 s: the download is still running while clients misbehave
    port = free_port()
    argv = run_args(endpoint=hub.url, target=tmp_path / "m", repo_id=REPO,
                    extra=["--verify", "checksums", "--log-level", level])
    argv[argv.index("--listen") + 1] = f"127.0.0.1:{port}"
    stderr_path = tmp_path / "stderr.log"
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(argv, env=cli_env(), stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        wait_until(lambda: _probe(port) == 200 or proc.poll() is not None, timeout=GUARD, what="the server")
        assert proc.poll() is None, stderr_path.read_text()[-3000:]
        _abuse(port)
        assert _probe(port) == 200 and get(port, "/readyz") in (200, 503)
        assert proc.poll() is None, "the download ran while clients misbehaved"
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(GUARD)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(GUARD)
    assert code == 128 + signal.SIGTERM
    stdout = proc.stdout.read() if proc.stdout else ""
    assert stdout == ""
    lines = stderr_path.read_text().splitlines()
    assert lines, "the run logged nothing"
    not_json = []
    for line in lines:
        try:
            parsed = json.loads(line)
        except ValueError:  # collected, so the failure shows every offending line
            not_json.append(line)
            continue
        if not isinstance(parsed, dict):
            not_json.append(line)
    assert not_json == [], "\n".join(not_json[:20])


def _probe(port: int) -> int | None:
    try:
        return get(port, "/healthz")
    except OSError:  # not listening yet
        return None
