"""server.py: endpoints, liveness/readiness semantics, methods, listen parsing, no secrets."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from obs_helpers import SECRETS, FakeClock, downloading_tracker, leaky_retry, make_plan
from prom_helpers import http_get
from prometheus_client.parser import text_string_to_metric_families

from provisioner import redact
from provisioner.observe import metrics
from provisioner.observe.progress import Phase, Tracker
from provisioner.serve.server import HealthServer, parse_listen

STALL = 10.0  # stall_limit: /healthz fails after 3 * STALL seconds without a sign of life


class Ready:
    """A ready_check that counts its calls."""

    def __init__(self, value: bool = False) -> None:
        self.value = value
        self.calls = 0
        self.error: Exception | None = None

    def __call__(self) -> bool:
        self.calls += 1
        if self.error:
            raise self.error
        return self.value


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tracker(clock: FakeClock) -> Tracker:
    return downloading_tracker(clock)


@pytest.fixture
def ready() -> Ready:
    return Ready()


@pytest.fixture
def server(tracker: Tracker, ready: Ready, clock: FakeClock) -> Iterator[HealthServer]:
    srv = HealthServer("127.0.0.1:0", tracker=tracker, registry=metrics.make_registry(tracker),
                       ready_check=ready, stall_limit=STALL, clock=clock,
                       redactor=redact.Redactor.for_secrets(SECRETS[1]))  # the run's own secret
    srv.start()
    yield srv
    srv.stop()


def get(srv: HealthServer, path: str) -> tuple[int, dict[str, str], bytes]:
    return http_get(srv.url + path)


def request(srv: HealthServer, method: str, path: str) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    conn.request(method, path)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp


# ---- /metrics ------------------------------------------------------------------------------------
def test_metrics_endpoint_serves_prometheus_text(server: HealthServer, tracker: Tracker) -> None:
    assert server.port > 0
    tracker.add_bytes("config.json", 123)
    status, headers, body = get(server, "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain") and "version=0.0.4" in headers["Content-Type"]
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert "model_provisioner_downloaded_bytes" in names  # the parser strips _total from the family
    assert b"model_provisioner_downloaded_bytes_total{" in body and b"} 123.0" in body


# ---- /healthz ------------------------------------------------------------------------------------
def healthz(srv: HealthServer) -> tuple[int, dict[str, Any]]:
    status, headers, body = get(srv, "/healthz")
    assert headers["Content-Type"] == "application/json"
    return status, json.loads(body)


def test_healthz_fails_only_when_downloading_and_silent_too_long(
        server: HealthServer, tracker: Tracker, clock: FakeClock) -> None:
    assert healthz(server)[0] == 200
    clock.advance(3 * STALL - 1)
    assert healthz(server)[0] == 200
    clock.advance(2)
    status, body = healthz(server)
    assert status == 503 and body["status"] == "wedged" and body["phase"] == "downloading"
    tracker.add_bytes("model.safetensors", 1)  # one byte is a sign of life
    assert healthz(server)[0] == 200


def test_healthz_slow_but_moving_download_stays_live(server: HealthServer, tracker: Tracker,
                                                     clock: FakeClock) -> None:
    for _ in range(50):  # a byte every 2.5 stall periods, for a long time
        clock.advance(2.5 * STALL)
        tracker.add_bytes("model.safetensors", 1)
        assert healthz(server)[0] == 200


def test_healthz_recent_retry_or_stall_keeps_it_live(server: HealthServer, tracker: Tracker,
                                                     clock: FakeClock) -> None:
    clock.advance(3 * STALL + 1)
    assert healthz(server)[0] == 503
    tracker.retry(reason="http_5xx", path="model.safetensors", delay=30, message="503")
    assert healthz(server)[0] == 200  # retrying inside the budget is not wedged
    clock.advance(3 * STALL + 1)
    assert healthz(server)[0] == 503
    tracker.stall(path="model.safetensors")
    assert healthz(server)[0] == 200


def test_healthz_other_phases_are_live_however_long(server: HealthServer, tracker: Tracker,
                                                    clock: FakeClock) -> None:
    tracker.waiting(holder="pod-b")
    clock.advance(100 * STALL)
    assert healthz(server)[0] == 200
    tracker.set_phase(Phase.DOWNLOADING)  # entering downloading after a long wait is not a stall
    assert healthz(server)[0] == 200
    tracker.set_phase(Phase.VERIFYING)  # hashing 50 GB receives no bytes
    clock.advance(100 * STALL)
    assert healthz(server)[0] == 200
    tracker.mark_ready()
    clock.advance(100 * STALL)
    assert healthz(server)[0] == 200


# ---- /readyz -------------------------------------------------------------------------------------
def test_readyz_follows_the_check_and_caches_for_a_second(server: HealthServer, ready: Ready,
                                                          clock: FakeClock) -> None:
    assert get(server, "/readyz")[0] == 503
    ready.value = True
    assert get(server, "/readyz")[0] == 503  # cached
    assert ready.calls == 1
    clock.advance(1.1)
    assert get(server, "/readyz")[0] == 200
    assert ready.calls == 2
    for _ in range(5):
        assert get(server, "/readyz")[0] == 200
    assert ready.calls == 2
    ready.value = False
    clock.advance(1.1)
    assert get(server, "/readyz")[0] == 503


def test_readyz_broken_check_is_not_ready(server: HealthServer, ready: Ready) -> None:
    ready.error = OSError(f"cannot read marker {SECRETS[0]}")
    status, _, body = get(server, "/readyz")
    assert status == 503 and body == b"not ready\n"


def test_readyz_does_not_trust_the_tracker(server: HealthServer, tracker: Tracker) -> None:
    tracker.mark_ready()  # no marker on disk: still not ready
    assert get(server, "/readyz")[0] == 503


# ---- /status -------------------------------------------------------------------------------------
def test_status_is_the_snapshot_redacted(server: HealthServer, tracker: Tracker) -> None:
    leaky_retry(tracker)
    tracker.add_bytes("config.json", 10)
    status, headers, body = get(server, "/status")
    assert status == 200 and headers["Content-Type"] == "application/json"
    data = json.loads(body)
    snap = tracker.snapshot()
    assert set(data) == set(snap)
    assert data["bytes_received"] == 10 and data["phase"] == "downloading"
    assert data["retries"] == {"url_expired": 1}
    assert "<redacted>" in data["last_error"]
    assert not any(s in body.decode() for s in SECRETS)


# ---- methods and paths ---------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/", "/metrics/", "/metricsx", "/status.json", "/../etc/passwd",
                                  "/debug/pprof", "/favicon.ico"])
def test_other_paths_are_404(server: HealthServer, path: str) -> None:
    assert get(server, path)[0] == 404


def test_query_strings_are_ignored(server: HealthServer) -> None:
    assert get(server, "/healthz?verbose=1")[0] == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "FOO"])
def test_other_methods_are_405(server: HealthServer, method: str) -> None:
    resp = request(server, method, "/metrics")
    assert resp.status == 405
    assert resp.getheader("Allow") == "GET, HEAD"


def test_head_has_headers_but_no_body(server: HealthServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("HEAD", "/metrics")
    resp = conn.getresponse()
    assert resp.status == 200 and int(resp.getheader("Content-Length") or 0) > 0
    assert resp.read() == b""
    conn.close()


def test_keep_alive_serves_several_requests_on_one_connection(server: HealthServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    for path in ("/healthz", "/metrics", "/nope", "/status"):
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        assert resp.status in (200, 404)
    conn.close()


def test_server_header_reveals_no_versions(server: HealthServer) -> None:
    _, headers, _ = get(server, "/healthz")
    assert "Python" not in headers.get("Server", "")


# ---- lifecycle and listen ------------------------------------------------------------------------
def test_stop_closes_the_port(tracker: Tracker) -> None:
    srv = HealthServer("127.0.0.1:0", tracker=tracker, registry=metrics.make_registry(tracker),
                       ready_check=lambda: True, stall_limit=STALL).start()
    port = srv.port
    assert get(srv, "/readyz")[0] == 200
    srv.stop()
    srv.stop()  # idempotent
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def test_address_in_use_raises(server: HealthServer, tracker: Tracker) -> None:
    other = HealthServer(f"127.0.0.1:{server.port}", tracker=tracker, registry=metrics.make_registry(tracker),
                         ready_check=lambda: True, stall_limit=STALL)
    with pytest.raises(OSError):
        other.start()


@pytest.mark.parametrize(("listen", "expected"), [
    ("0.0.0.0:8080", ("0.0.0.0", 8080)),
    ("127.0.0.1:0", ("127.0.0.1", 0)),
    (":9090", ("0.0.0.0", 9090)),
    ("[::]:8080", ("::", 8080)),
    ("[::1]:0", ("::1", 0)),
    ("localhost:65535", ("localhost", 65535)),
])
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["8080", "host", "host:", "host:http", "host:70000", "::1:8080", "[::1]"])
def test_parse_listen_rejects(listen: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(listen)


def test_ipv6_listen() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this kernel")
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    t = downloading_tracker(plan=make_plan())
    srv = HealthServer("[::1]:0", tracker=t, registry=metrics.make_registry(t), ready_check=lambda: False,
                       stall_limit=STALL).start()
    try:
        assert srv.url.startswith("http://[::1]:")
        assert get(srv, "/healthz")[0] == 200
    finally:
        srv.stop()
