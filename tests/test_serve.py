"""`model-provisioner serve`: a ready target over the hub protocol, checked with huggingface_hub and raw HTTP."""

from __future__ import annotations

import http.client
import os
import re
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import start_cli, wait_until
from conftest import SMALL_LFS_SIZE
from hub_emulator import HubEmulator

from provisioner.api import provision
from provisioner.serve.hub_server import HubServer
from provisioner.state import marker

REPO = "org/small"


@pytest.fixture
def ready_dir(hub: HubEmulator, small_repo: Path, tmp_path: Path) -> Path:
    hub.add_repo(REPO, small_repo)
    target = tmp_path / "ready"
    provision(repo_id=REPO, endpoint=hub.url, target=str(target), verify="checksums", exclude=(),
              listen="", kube="off", token=None)
    assert marker.check_ready(target).ok
    return target


@pytest.fixture
def served(ready_dir: Path) -> Iterator[HubServer]:
    server = HubServer(ready_dir, listen="127.0.0.1:0").start()
    try:
        yield server
    finally:
        server.stop()


def _get(server: HubServer | int, path: str, *, method: str = "GET",
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    port = server if isinstance(server, int) else server.port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_hf_hub_download_and_snapshot_download_get_identical_bytes(
        served: HubServer, ready_dir: Path, small_repo: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    from huggingface_hub import hf_hub_download, snapshot_download

    commit = marker.read_marker(ready_dir)["commit"]  # type: ignore[index]
    one = hf_hub_download(REPO, "model.safetensors", endpoint=served.url, cache_dir=tmp_path / "c1")
    assert Path(one).read_bytes() == (small_repo / "model.safetensors").read_bytes()
    snap = Path(snapshot_download(REPO, revision=commit, endpoint=served.url, cache_dir=tmp_path / "c2"))
    want = sorted(p.relative_to(small_repo).as_posix() for p in small_repo.rglob("*") if p.is_file())
    got = sorted(p.relative_to(snap).as_posix() for p in snap.rglob("*") if p.is_file())
    assert got == want
    for rel in want:
        assert (snap / rel).read_bytes() == (small_repo / rel).read_bytes(), rel


def test_resolve_headers_and_ranges(served: HubServer, ready_dir: Path, small_repo: Path) -> None:
    m = marker.read_marker(ready_dir)
    assert m is not None
    entry = next(f for f in m["files"] if f["path"] == "model.safetensors")
    status, headers, body = _get(served, f"/{REPO}/resolve/main/model.safetensors", method="HEAD")
    assert status == 200 and body == b""
    assert headers["etag"] == f'"{entry["sha256"]}"'
    assert headers["x-repo-commit"] == m["commit"]
    assert int(headers["content-length"]) == SMALL_LFS_SIZE
    data = (small_repo / "model.safetensors").read_bytes()
    status, headers, body = _get(served, f"/{REPO}/resolve/{m['commit']}/model.safetensors",
                                 headers={"Range": "bytes=100-1099"})
    assert status == 206 and body == data[100:1100]
    assert headers["content-range"] == f"bytes 100-1099/{SMALL_LFS_SIZE}"
    status, _, body = _get(served, f"/{REPO}/resolve/main/model.safetensors", headers={"Range": "bytes=-10"})
    assert status == 206 and body == data[-10:]
    status, _, body = _get(served, f"/{REPO}/resolve/main/model.safetensors",
                           headers={"Range": "bytes=0-9", "If-Range": '"other"'})
    assert status == 200 and body == data  # a validator for other content: the whole file
    status, headers, _ = _get(served, f"/{REPO}/resolve/main/model.safetensors",
                              headers={"Range": f"bytes={SMALL_LFS_SIZE}-"})
    assert status == 416 and headers["content-range"] == f"bytes */{SMALL_LFS_SIZE}"
    cfg = next(f for f in m["files"] if f["path"] == "config.json")
    status, headers, body = _get(served, f"/{REPO}/resolve/main/config.json")
    assert status == 200 and headers["etag"] == f'"{cfg["blob_sha1"]}"' and body == (small_repo / "config.json").read_bytes()


def test_metrics_count_served_bytes_and_statuses(served: HubServer) -> None:
    _get(served, f"/{REPO}/resolve/main/config.json")
    _get(served, f"/{REPO}/resolve/main/nope.txt")
    status, _, body = _get(served, "/metrics")
    text = body.decode()
    assert status == 200
    served_bytes = re.search(r"^model_provisioner_served_bytes_total (\S+)$", text, re.M)
    assert served_bytes and float(served_bytes.group(1)) > 0
    assert 'model_provisioner_served_requests_total{status="200"}' in text
    assert 'model_provisioner_served_requests_total{status="404"}' in text


@pytest.mark.parametrize("path", [
    "/org/small/resolve/main/../../../etc/passwd",
    "/org/small/resolve/main/%2e%2e/%2e%2e/etc/passwd",
    "/org/small/resolve/main/.provisioner/ready.json",
    "/org/small/resolve/main//etc/passwd",
    "/org/small/resolve/main/tokenizer/../config.json",
    "/org/small/resolve/other-rev/config.json",
    "/org/other/resolve/main/config.json",
    "/api/models/org/small/revision/other-rev",
    "/anything",
])
def test_traversal_and_unlisted_paths_are_404(served: HubServer, path: str) -> None:
    status, _, body = _get(served, path)
    assert status == 404, (path, body)


def test_symlink_swapped_in_is_not_followed(ready_dir: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    m = marker.read_marker(ready_dir)
    assert m is not None
    # A listed directory replaced by a symlink out of DIR: the marker still matches (files are lstat-ed
    # through the link), but serving must refuse to walk through it.
    (tmp_path / "outside").mkdir()
    os.rename(ready_dir / "tokenizer", tmp_path / "outside" / "tokenizer")
    os.symlink(tmp_path / "outside" / "tokenizer", ready_dir / "tokenizer")
    server = HubServer(ready_dir, listen="127.0.0.1:0").start()
    try:
        status, _, _ = _get(server, f"/{REPO}/resolve/main/tokenizer/vocab.txt")
        assert status == 404
    finally:
        server.stop()


def test_not_ready_dir_answers_503_on_every_request(ready_dir: Path) -> None:
    server = HubServer(ready_dir, listen="127.0.0.1:0").start()
    try:
        assert _get(server, f"/{REPO}/resolve/main/config.json")[0] == 200
        marker.invalidate(ready_dir)
        for path in (f"/{REPO}/resolve/main/config.json", f"/api/models/{REPO}/revision/main"):
            assert _get(server, path)[0] == 503
        (ready_dir / "config.json").write_text("changed after the marker")  # re-checked per request too
    finally:
        server.stop()


def test_modified_file_after_marker_is_refused(ready_dir: Path) -> None:
    server = HubServer(ready_dir, listen="127.0.0.1:0").start()
    try:
        with open(ready_dir / "config.json", "r+b") as f:
            f.write(b"X")  # same size, new mtime: check_ready fails
        assert _get(server, f"/{REPO}/resolve/main/config.json")[0] == 503
    finally:
        server.stop()


def test_api_revision_and_tree(served: HubServer, ready_dir: Path) -> None:
    import json

    m = marker.read_marker(ready_dir)
    assert m is not None
    status, headers, body = _get(served, f"/api/models/{REPO}/revision/main")
    info = json.loads(body)
    assert status == 200 and info["sha"] == m["commit"] and headers["x-repo-commit"] == m["commit"]
    assert sorted(s["rfilename"] for s in info["siblings"]) == sorted(f["path"] for f in m["files"])
    status, _, body = _get(served, f"/api/models/{REPO}/tree/{m['commit']}?recursive=true")
    tree = json.loads(body)
    files = {e["path"]: e for e in tree if e["type"] == "file"}
    assert status == 200 and set(files) == {f["path"] for f in m["files"]}
    assert files["model.safetensors"]["lfs"]["oid"] == next(
        f["sha256"] for f in m["files"] if f["path"] == "model.safetensors")
    status, _, body = _get(served, f"/api/models/{REPO}/tree/main")
    top = {e["path"] for e in json.loads(body)}
    assert "tokenizer" in top and "tokenizer/vocab.txt" not in top


def test_client_disconnect_mid_body_is_quiet(served: HubServer) -> None:
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=5)
    sock.sendall(f"GET /{REPO}/resolve/main/model.safetensors HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    sock.recv(1024)
    sock.close()
    assert _get(served, f"/{REPO}/resolve/main/config.json")[0] == 200  # still serving


def test_serve_command_refuses_until_ready_then_serves_a_versioned_link(
        hub: HubEmulator, small_repo: Path, tmp_path: Path) -> None:
    hub.add_repo(REPO, small_repo)
    root = tmp_path / "root"
    link = root / "revisions" / "main"
    log = tmp_path / "serve.log"
    proc = start_cli([sys.executable, "-m", "provisioner", "serve", str(link), "--listen", "127.0.0.1:0"], log=log)
    try:
        wait_until(lambda: "on port" in log.read_text(), timeout=30, what="serve to start")
        port = int(re.findall(r"on port (\d+)", log.read_text())[0])
        assert _get(port, f"/{REPO}/resolve/main/config.json")[0] == 503
        provision(repo_id=REPO, endpoint=hub.url, target=str(root), layout="versioned", verify="checksums",
                  exclude=(), listen="", kube="off", token=None)
        status, _, body = _get(port, f"/{REPO}/resolve/main/config.json")
        assert status == 200 and body == (small_repo / "config.json").read_bytes()
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    assert "Traceback" not in log.read_text()


def test_threads_are_bounded_and_stop_still_returns(ready_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from provisioner.serve import hub_server

    monkeypatch.setattr(hub_server, "MAX_THREADS", 2)
    server = HubServer(ready_dir, listen="127.0.0.1:0").start()
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(3)]
    try:
        answered: list[int] = []
        t = threading.Thread(target=lambda: answered.append(_get(server, f"/{REPO}/resolve/main/config.json")[0]),
                             daemon=True)
        t.start()
        t.join(1.0)  # timeout: the request must wait while both threads hold idle clients
        assert not answered
        idle.pop(0).close()
        idle.pop(0).close()  # frees the slots; the queued idle connection takes one, the request the other
        t.join(10)
        assert answered == [200]
        idle += [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(3)]
    finally:
        stopper = threading.Thread(target=server.stop, daemon=True)  # every thread busy, one more queued
        stopper.start()
        stopper.join(10)
        assert not stopper.is_alive(), "stop() hung with every thread busy"
        for s in idle:
            s.close()
