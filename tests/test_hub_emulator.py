"""The hub emulator over real HTTP: protocol shape, ranges, redirects, errors, counters, faults,
and faithfulness (huggingface_hub itself downloads byte-identical files from it)."""

from __future__ import annotations

import hashlib
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx2
import pytest
from hub_emulator import HubEmulator, blob_sha1_of_bytes, lfs_pointer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPO = "org/small"
SMALL_FILES: dict[str, bytes] = {
    "README.md": b"hello hub\n",
    "config.json": b'{"a": 1}\n',
    "sub/dir/notes.txt": b"0123456789" * 100,
    "weights.safetensors": bytes(range(256)) * 40,  # LFS by pattern, 10240 bytes
}
LFS_PATH = "weights.safetensors"
SMALL_LFS_SIZE = 12 * 1024 * 1024 + 123  # tests/conftest.py small_repo


@pytest.fixture
def client() -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=10) as c:
        yield c


@pytest.fixture
def small_hub(hub: HubEmulator) -> HubEmulator:
    hub.add_repo(REPO, SMALL_FILES)
    return hub


def _resolve(hub: HubEmulator, path: str, rev: str = "main", repo: str = REPO) -> str:
    return f"{hub.url}/{repo}/resolve/{rev}/{path}"


def _cdn_location(client: httpx2.Client, hub: HubEmulator, path: str = LFS_PATH) -> str:
    r = client.head(_resolve(hub, path))
    assert r.status_code == 302
    return r.headers["Location"]


# ------------------------------------------------------------------------------------------ protocol


def test_model_info_shape(small_hub: HubEmulator, client: httpx2.Client) -> None:
    commit = small_hub.commit_of(REPO)
    r = client.get(f"{small_hub.url}/api/models/{REPO}/revision/main")
    assert r.status_code == 200
    body = r.json()
    assert body["id"] == REPO and body["sha"] == commit
    assert sorted(s["rfilename"] for s in body["siblings"]) == sorted(SMALL_FILES)
    assert all(set(s) == {"rfilename"} for s in body["siblings"])

    r = client.get(f"{small_hub.url}/api/models/{REPO}/revision/main", params={"blobs": True})
    sib = {s["rfilename"]: s for s in r.json()["siblings"]}
    data = SMALL_FILES[LFS_PATH]
    pointer = lfs_pointer(hashlib.sha256(data).hexdigest(), len(data))
    assert sib[LFS_PATH]["lfs"] == {
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "pointerSize": len(pointer),
    }
    assert sib[LFS_PATH]["blobId"] == blob_sha1_of_bytes(pointer)  # real hub: oid of the pointer
    assert sib["README.md"]["blobId"] == blob_sha1_of_bytes(SMALL_FILES["README.md"])
    assert "lfs" not in sib["README.md"] and sib["README.md"]["size"] == len(SMALL_FILES["README.md"])

    # /api/models/{repo} means main; one-segment repo ids work too
    assert client.get(f"{small_hub.url}/api/models/{REPO}").json()["sha"] == commit
    small_hub.add_repo("solo", {"x": b"1"})
    assert client.get(f"{small_hub.url}/api/models/solo/revision/main").json()["id"] == "solo"


def test_revisions_tags_and_encoded_refs(hub: HubEmulator, client: httpx2.Client) -> None:
    c1 = hub.add_repo(REPO, {"f.txt": b"one"}, tags=["v1"])
    c2 = hub.add_repo(REPO, {"f.txt": b"two"}, revision="refs/pr/1")
    custom = "ab" * 20
    hub.add_repo(REPO, {"f.txt": b"three"}, revision="dev", commit=custom)
    assert len({c1, c2, custom}) == 3 and all(len(c) == 40 for c in (c1, c2))
    # deterministic: the same content gives the same commit
    assert HubEmulator().add_repo("x/y", {"f.txt": b"one"}) == c1

    def get(rev: str) -> httpx2.Response:
        return client.get(_resolve(hub, "f.txt", rev=rev))

    assert get("v1").content == b"one" and get("v1").headers["X-Repo-Commit"] == c1
    assert get("refs%2Fpr%2F1").content == b"two"
    assert get("dev").content == b"three"
    assert get(c1).content == b"one"  # a commit sha is a revision
    r = client.get(f"{hub.url}/api/models/{REPO}/revision/refs%2Fpr%2F1")
    assert r.json()["sha"] == c2


def test_tree_listing(small_hub: HubEmulator, client: httpx2.Client) -> None:
    base = f"{small_hub.url}/api/models/{REPO}/tree/main"
    top = client.get(base).json()
    assert {(e["type"], e["path"]) for e in top} == {
        ("file", "README.md"),
        ("file", "config.json"),
        ("directory", "sub"),
        ("file", LFS_PATH),
    }
    full = client.get(base, params={"recursive": "true"}).json()
    files = {e["path"]: e for e in full if e["type"] == "file"}
    assert set(files) == set(SMALL_FILES)
    assert {e["path"] for e in full if e["type"] == "directory"} == {"sub", "sub/dir"}
    data = SMALL_FILES[LFS_PATH]
    assert files[LFS_PATH]["lfs"]["oid"] == hashlib.sha256(data).hexdigest()
    assert files[LFS_PATH]["size"] == len(data)
    assert files["config.json"]["oid"] == blob_sha1_of_bytes(SMALL_FILES["config.json"])
    assert "lfs" not in files["config.json"]

    # a sub path, quoted like huggingface_hub does (safe="")
    sub = client.get(f"{base}/sub%2Fdir").json()
    assert [e["path"] for e in sub] == ["sub/dir/notes.txt"]
    r = client.get(f"{base}/nope")
    assert r.status_code == 404 and r.headers["X-Error-Code"] == "EntryNotFound"


def test_tree_pagination(small_hub: HubEmulator, client: httpx2.Client) -> None:
    small_hub.page_size = 2
    url: str | None = f"{small_hub.url}/api/models/{REPO}/tree/main?recursive=true"
    pages: list[list[dict[str, str]]] = []
    while url:
        r = client.get(url)
        assert r.status_code == 200
        pages.append(r.json())
        url = r.links.get("next", {}).get("url")
    assert [len(p) for p in pages] == [2, 2, 2]  # 4 files + 2 directories
    paths = [e["path"] for p in pages for e in p]
    assert len(paths) == len(set(paths)) == 6

    from huggingface_hub import HfApi

    listed = list(HfApi(endpoint=small_hub.url).list_repo_tree(REPO, recursive=True))
    assert sorted(str(e.path) for e in listed) == sorted(paths)
    assert small_hub.stats.requests_by_kind["api"] == 6


def test_resolve_regular_file(small_hub: HubEmulator, client: httpx2.Client) -> None:
    data = SMALL_FILES["sub/dir/notes.txt"]
    for method in ("HEAD", "GET"):
        r = client.request(method, _resolve(small_hub, "sub/dir/notes.txt"))
        assert r.status_code == 200
        assert r.headers["ETag"] == f'"{blob_sha1_of_bytes(data)}"'
        assert r.headers["X-Repo-Commit"] == small_hub.commit_of(REPO)
        assert r.headers["Content-Length"] == str(len(data))
        assert r.headers["Accept-Ranges"] == "bytes"
    assert r.content == data


def test_lfs_redirect_and_cdn(small_hub: HubEmulator, client: httpx2.Client) -> None:
    data = SMALL_FILES[LFS_PATH]
    sha = hashlib.sha256(data).hexdigest()
    r = client.head(_resolve(small_hub, LFS_PATH))
    assert r.status_code == 302
    assert r.headers["X-Linked-Etag"] == f'"{sha}"'
    assert r.headers["X-Linked-Size"] == str(len(data))
    assert r.headers["X-Repo-Commit"] == small_hub.commit_of(REPO)
    loc = urlsplit(r.headers["Location"])
    assert loc.path.startswith(f"/cdn/{sha}") and "Signature=" in loc.query and "Expires=" in loc.query
    # a different origin, like a real CDN (so clients do not forward the token)
    assert f"{loc.scheme}://{loc.netloc}" == small_hub.cdn_url != small_hub.url
    got = client.get(r.headers["Location"])
    assert got.status_code == 200 and got.content == data and got.headers["ETag"] == f'"{sha}"'
    assert client.get(_resolve(small_hub, LFS_PATH), follow_redirects=True).content == data


def test_range_and_if_range(small_hub: HubEmulator, client: httpx2.Client) -> None:
    data = SMALL_FILES[LFS_PATH]
    n = len(data)
    for url, etag in (
        (_cdn_location(client, small_hub), hashlib.sha256(data).hexdigest()),
        (_resolve(small_hub, "sub/dir/notes.txt"), blob_sha1_of_bytes(SMALL_FILES["sub/dir/notes.txt"])),
    ):
        body = data if "/cdn/" in url else SMALL_FILES["sub/dir/notes.txt"]
        n = len(body)
        r = client.get(url, headers={"Range": "bytes=100-"})
        assert r.status_code == 206 and r.content == body[100:]
        assert r.headers["Content-Range"] == f"bytes 100-{n - 1}/{n}"
        r = client.get(url, headers={"Range": "bytes=10-19"})
        assert r.status_code == 206 and r.content == body[10:20] and r.headers["Content-Length"] == "10"
        r = client.get(url, headers={"Range": "bytes=-5"})
        assert r.status_code == 206 and r.content == body[-5:]
        r = client.get(url, headers={"Range": f"bytes={n}-"})
        assert r.status_code == 416 and r.headers["Content-Range"] == f"bytes */{n}"
        # If-Range: a matching validator keeps the range, a stale one gets the whole body
        r = client.get(url, headers={"Range": "bytes=10-", "If-Range": f'"{etag}"'})
        assert r.status_code == 206 and r.content == body[10:]
        r = client.get(url, headers={"Range": "bytes=10-", "If-Range": '"stale"'})
        assert r.status_code == 200 and r.content == body


def test_signed_url_expiry(small_hub: HubEmulator, client: httpx2.Client) -> None:
    loc = _cdn_location(client, small_hub)
    assert client.get(loc).status_code == 200
    small_hub.expire_signed_urls_now()
    assert client.get(loc).status_code == 403
    # re-resolving gives a fresh, valid URL
    assert client.get(_cdn_location(client, small_hub)).status_code == 200
    small_hub.signed_url_ttl = 0
    assert client.get(_cdn_location(client, small_hub)).status_code == 403
    small_hub.signed_url_ttl = 3600
    tampered = _cdn_location(client, small_hub).replace("Signature=", "Signature=00")
    assert client.get(tampered).status_code == 403
    unsigned = _cdn_location(client, small_hub).split("?")[0]
    assert client.get(unsigned).status_code == 403


def test_errors_carry_codes(hub: HubEmulator, client: httpx2.Client) -> None:
    hub.add_repo(REPO, SMALL_FILES)
    hub.add_repo("org/private", {"f": b"secret"}, token="tok")
    hub.add_repo("org/gated", {"f": b"gated"}, gated=True, token="gtok")

    def check(url: str, status: int, code: str | None, **kw: object) -> None:
        for method in ("GET", "HEAD"):
            r = client.request(method, url, **kw)  # type: ignore[arg-type]
            assert r.status_code == status, (method, url)
            assert r.headers.get("X-Error-Code") == code
            if method == "GET":
                assert "error" in r.json()

    check(f"{hub.url}/api/models/org/missing", 404, "RepoNotFound")
    check(_resolve(hub, "f", repo="org/missing"), 404, "RepoNotFound")
    check(f"{hub.url}/api/models/{REPO}/revision/nope", 404, "RevisionNotFound")
    check(_resolve(hub, "README.md", rev="nope"), 404, "RevisionNotFound")
    check(_resolve(hub, "missing.txt"), 404, "EntryNotFound")
    check(_resolve(hub, "f", repo="org/private"), 401, "RepoNotFound")
    check(_resolve(hub, "f", repo="org/private"), 403, None, headers={"Authorization": "Bearer bad"})
    check(f"{hub.url}/api/models/org/gated", 401, "GatedRepo")
    check(f"{hub.url}/api/models/org/gated", 403, "GatedRepo", headers={"Authorization": "Bearer bad"})
    ok = client.get(_resolve(hub, "f", repo="org/private"), headers={"Authorization": "Bearer tok"})
    assert ok.status_code == 200 and ok.content == b"secret"
    # an EntryNotFound still names the commit, as the real hub does
    r = client.head(_resolve(hub, "missing.txt"))
    assert r.headers["X-Repo-Commit"] == hub.commit_of(REPO)


def test_replace_file_makes_new_commit(small_hub: HubEmulator, client: httpx2.Client) -> None:
    old = small_hub.commit_of(REPO)
    new = small_hub.replace_file(REPO, "config.json", b'{"a": 2}\n')
    assert new != old and small_hub.commit_of(REPO) == new
    assert client.get(_resolve(small_hub, "config.json")).content == b'{"a": 2}\n'
    assert client.get(_resolve(small_hub, "config.json", rev=old)).content == SMALL_FILES["config.json"]
    big = small_hub.replace_file(REPO, LFS_PATH, b"new weights")
    r = client.head(_resolve(small_hub, LFS_PATH))
    assert r.headers["X-Linked-Etag"] == f'"{hashlib.sha256(b"new weights").hexdigest()}"'
    assert r.headers["X-Repo-Commit"] == big


def test_directory_repo_streams_from_disk(hub: HubEmulator, small_repo: Path, client: httpx2.Client) -> None:
    hub.add_repo("org/dir", small_repo)
    info = hub.files("org/dir")
    assert info["model.safetensors"].lfs and info["model.safetensors"].source is not None
    assert info["weights/adapter.bin"].lfs  # by pattern, though small
    assert not info["tokenizer/vocab.txt"].lfs
    want = (small_repo / "model.safetensors").read_bytes()
    got = client.get(_resolve(hub, "model.safetensors", repo="org/dir"), follow_redirects=True)
    assert got.content == want
    assert info["model.safetensors"].sha256 == hashlib.sha256(want).hexdigest()


# ------------------------------------------------------------------------------------------ counters


def test_counters_exact(small_hub: HubEmulator, client: httpx2.Client) -> None:
    small_hub.reset_stats()
    received = 0
    loc = _cdn_location(client, small_hub)
    received += len(client.get(loc).content)
    received += len(client.get(loc, headers={"Range": "bytes=100-199"}).content)
    received += len(client.get(_resolve(small_hub, "README.md")).content)
    assert small_hub.wait_idle()
    s = small_hub.stats
    assert s.bytes_served == received == len(SMALL_FILES[LFS_PATH]) + 100 + len(SMALL_FILES["README.md"])
    cdn_path = urlsplit(loc).path
    assert s.bytes_by_path[cdn_path] == len(SMALL_FILES[LFS_PATH]) + 100
    assert s.bytes_by_file[LFS_PATH] == len(SMALL_FILES[LFS_PATH]) + 100
    assert s.requests_by_kind == {"resolve": 2, "cdn": 2}
    assert s.requests_by_path[cdn_path] == 2
    assert [(r.method, r.kind, r.status, r.range) for r in s.requests] == [
        ("HEAD", "resolve", 302, None),
        ("GET", "cdn", 200, None),
        ("GET", "cdn", 206, "bytes=100-199"),
        ("GET", "resolve", 200, None),
    ]
    assert all("?" not in r.path for r in s.requests)
    small_hub.reset_stats()
    assert small_hub.stats.bytes_served == 0 and not small_hub.stats.requests


def test_counters_client_abort_mid_body(hub: HubEmulator, big_file_repo: Callable[[int], Path]) -> None:
    size = 64 * 1024 * 1024
    hub.add_repo("org/big", big_file_repo(size))
    received = 0
    with httpx2.Client(timeout=10, follow_redirects=True) as c:
        with c.stream("GET", _resolve(hub, "model.safetensors", repo="org/big")) as r:
            for chunk in r.iter_bytes(64 * 1024):
                received += len(chunk)
                if received >= 1024 * 1024:
                    break
    # the server notices the closed socket and stops; wait for that response to finish
    assert hub.wait_for(lambda s: any(r.kind == "cdn" and r.done for r in s.requests), timeout=10)
    served = hub.stats.bytes_served
    # counted = accepted by the kernel: at least what we read, at most that plus socket buffers,
    # and nowhere near the Content-Length
    assert received <= served < received + 16 * 1024 * 1024 < size


# ------------------------------------------------------------------------------------------ faithfulness


def test_snapshot_download_faithful(model_hub: HubEmulator, real_model_dir: Path, tmp_path: Path) -> None:
    from huggingface_hub import snapshot_download

    out = Path(
        snapshot_download(
            "sentence-transformers/all-MiniLM-L6-v2",
            local_dir=tmp_path / "snap",
            endpoint=model_hub.url,
            revision="main",
        )
    )
    src = sorted(p.relative_to(real_model_dir) for p in real_model_dir.rglob("*") if p.is_file())
    got = sorted(
        p.relative_to(out) for p in out.rglob("*") if p.is_file() and ".cache" not in p.relative_to(out).parts
    )
    assert got == src
    for rel in src:
        assert (out / rel).read_bytes() == (real_model_dir / rel).read_bytes(), rel
    size = (real_model_dir / "model.safetensors").stat().st_size
    assert model_hub.wait_idle()
    assert model_hub.stats.bytes_by_file["model.safetensors"] == size


def test_hf_hub_download_and_api_faithful(small_hub: HubEmulator, tmp_path: Path) -> None:
    from huggingface_hub import HfApi, hf_hub_download

    for path, data in SMALL_FILES.items():
        p = hf_hub_download(REPO, path, endpoint=small_hub.url, cache_dir=tmp_path / "cache")
        assert Path(p).read_bytes() == data
    api = HfApi(endpoint=small_hub.url)
    info = api.model_info(REPO, files_metadata=True)
    assert info.sha == small_hub.commit_of(REPO)
    sib = {s.rfilename: s for s in info.siblings or []}
    lfs = sib[LFS_PATH].lfs
    assert lfs is not None
    assert lfs.sha256 == hashlib.sha256(SMALL_FILES[LFS_PATH]).hexdigest()
    assert sib["README.md"].size == len(SMALL_FILES["README.md"])
    tree = {e.path: e for e in api.list_repo_tree(REPO, recursive=True)}
    assert set(SMALL_FILES) <= set(tree)


def test_hf_token_not_sent_to_cdn(hub: HubEmulator, tmp_path: Path) -> None:
    from huggingface_hub import hf_hub_download

    hub.add_repo(REPO, SMALL_FILES, token="tok")
    p = hf_hub_download(REPO, LFS_PATH, endpoint=hub.url, cache_dir=tmp_path, token="tok")
    assert Path(p).read_bytes() == SMALL_FILES[LFS_PATH]
    assert hub.wait_idle()
    reqs = hub.stats.requests
    assert {r.kind for r in reqs} == {"resolve", "cdn"}
    assert all(r.authorization for r in reqs if r.kind == "resolve")
    assert not any(r.authorization for r in reqs if r.kind == "cdn")


def test_hf_errors_map_to_hub_exceptions(hub: HubEmulator, tmp_path: Path) -> None:
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    hub.add_repo(REPO, SMALL_FILES)
    hub.add_repo("org/gated", {"f": b"x"}, gated=True, token="gtok")
    api = HfApi(endpoint=hub.url)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/missing")
    with pytest.raises(RevisionNotFoundError):
        api.model_info(REPO, revision="nope")
    with pytest.raises(GatedRepoError):
        api.model_info("org/gated")
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(REPO, "missing.txt", endpoint=hub.url, cache_dir=tmp_path)
    assert api.model_info("org/gated", token="gtok").sha == hub.commit_of("org/gated")


# ------------------------------------------------------------------------------------------ ranges (property)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(start=st.integers(0, 10_300), length=st.integers(0, 10_300), open_end=st.booleans())
def test_range_property(
    small_hub: HubEmulator, client: httpx2.Client, start: int, length: int, open_end: bool
) -> None:
    data = SMALL_FILES[LFS_PATH]
    url = _cdn_location(client, small_hub)
    header = f"bytes={start}-" if open_end else f"bytes={start}-{start + length}"
    r = client.get(url, headers={"Range": header})
    if start >= len(data):
        assert r.status_code == 416
        return
    want = data[start:] if open_end else data[start : start + length + 1]
    assert r.status_code == 206 and r.content == want
    assert r.headers["Content-Range"] == f"bytes {start}-{start + len(want) - 1}/{len(data)}"


# ------------------------------------------------------------------------------------------ faults


def _raw_get(hub: HubEmulator, url: str, *, timeout: float = 5.0) -> tuple[bytes, BaseException | None]:
    """GET over a raw socket; returns everything received and the error that ended it (None on EOF)."""
    u = urlsplit(url)
    target = u.path + (f"?{u.query}" if u.query else "")
    sock = socket.create_connection((u.hostname, u.port or 80), timeout=timeout)
    got = b""
    try:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {u.netloc}\r\nConnection: close\r\n\r\n".encode())
        while True:
            try:
                block = sock.recv(65536)
            except OSError as e:
                return got, e
            if not block:
                return got, None
            got += block
    finally:
        sock.close()


@pytest.fixture
def lfs_hub(hub: HubEmulator, small_repo: Path) -> HubEmulator:
    """The small_repo dir (with a ~12 MiB LFS file) as org/dir."""
    hub.add_repo("org/dir", small_repo)
    return hub


def _lfs_url(client: httpx2.Client, hub: HubEmulator) -> str:
    r = client.head(_resolve(hub, "model.safetensors", repo="org/dir"))
    assert r.status_code == 302
    return r.headers["Location"]


def test_reset_after_bytes_is_a_real_reset(lfs_hub: HubEmulator, client: httpx2.Client) -> None:
    url = _lfs_url(client, lfs_hub)
    lfs_hub.faults.reset_after_bytes = 100_000
    with pytest.raises((httpx2.ReadError, httpx2.RemoteProtocolError)):
        client.get(url)
    assert lfs_hub.wait_idle()
    rec = lfs_hub.stats.requests_for(kind="cdn")[-1]
    assert rec.fault == "reset" and rec.bytes_sent == 100_000
    assert lfs_hub.faults.reset_after_bytes is None  # one-shot
    assert len(client.get(url).content) == SMALL_LFS_SIZE

    # every response, seen at the socket level as ECONNRESET (not a clean EOF)
    lfs_hub.faults.reset_after_bytes = 0
    lfs_hub.faults.reset_every = True
    for _ in range(2):
        got, err = _raw_get(lfs_hub, url)
        assert isinstance(err, ConnectionResetError), (len(got), err)
    assert lfs_hub.stats.faults_fired["reset"] == 3


def test_truncate_body_closes_cleanly_short(lfs_hub: HubEmulator, client: httpx2.Client) -> None:
    url = _lfs_url(client, lfs_hub)
    lfs_hub.faults.truncate_after_bytes = 5000
    got, err = _raw_get(lfs_hub, url)
    assert err is None  # a FIN, not a reset
    head, _, body = got.partition(b"\r\n\r\n")
    assert f"Content-Length: {SMALL_LFS_SIZE}".encode() in head and len(body) == 5000
    lfs_hub.faults.truncate_after_bytes = 5000
    with pytest.raises(httpx2.RemoteProtocolError):
        client.get(url)


def test_stall_mid_body_times_out_client_and_ends_when_it_leaves(
    lfs_hub: HubEmulator, client: httpx2.Client
) -> None:
    url = _lfs_url(client, lfs_hub)
    lfs_hub.faults.stall_mid_body = (200_000, math.inf)
    received = 0
    with httpx2.Client(timeout=httpx2.Timeout(5, read=0.5)) as c:
        with pytest.raises(httpx2.ReadTimeout):
            with c.stream("GET", url) as r:
                for chunk in r.iter_bytes():
                    received += len(chunk)
    assert received == 200_000
    # the infinite stall ends because the client went away
    assert lfs_hub.wait_for(lambda s: all(r.done for r in s.requests), timeout=5)
    assert lfs_hub.stats.faults_fired["stall_mid_body"] == 1


def test_stall_before_headers_and_api(lfs_hub: HubEmulator) -> None:
    lfs_hub.faults.stall_before_headers = 30
    with httpx2.Client(timeout=httpx2.Timeout(5, read=0.3)) as c:
        with pytest.raises(httpx2.ReadTimeout):
            c.head(_resolve(lfs_hub, "config.json", repo="org/dir"))
        lfs_hub.faults.stall_before_headers = 0
        lfs_hub.faults.stall_api = 30
        with pytest.raises(httpx2.ReadTimeout):
            c.get(f"{lfs_hub.url}/api/models/org/dir")
        lfs_hub.faults.stall_api = 0
        assert c.get(f"{lfs_hub.url}/api/models/org/dir").status_code == 200
    assert lfs_hub.stats.faults_fired["stall_before_headers"] == 1
    assert lfs_hub.stats.faults_fired["stall_api"] == 1


def test_stop_interrupts_stalls_promptly(small_repo: Path) -> None:
    hub = HubEmulator().start()
    hub.add_repo("org/dir", small_repo)
    hub.faults.stall_before_headers = math.inf
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            httpx2.get(_resolve(hub, "config.json", repo="org/dir"), timeout=30)
        except httpx2.HTTPError as e:
            errors.append(e)

    t = threading.Thread(target=fetch)
    t.start()
    assert hub.wait_for(lambda s: s.faults_fired["stall_before_headers"] == 1, timeout=5)
    began = time.monotonic()
    hub.stop()
    t.join(timeout=5)
    assert not t.is_alive() and len(errors) == 1
    assert time.monotonic() - began < 3


def test_fail_next_burst(lfs_hub: HubEmulator, client: httpx2.Client) -> None:
    url = _lfs_url(client, lfs_hub)
    lfs_hub.fail_next(2, status=429, retry_after=7, kind="cdn")
    assert client.head(_resolve(lfs_hub, "config.json", repo="org/dir")).status_code == 200  # other kind
    for _ in range(2):
        r = client.get(url)
        assert r.status_code == 429 and r.headers["Retry-After"] == "7"
    assert client.get(url).status_code == 200
    lfs_hub.fail_next(1, status=503, kind="api")
    r = client.get(f"{lfs_hub.url}/api/models/org/dir")
    assert r.status_code == 503 and "Retry-After" not in r.headers and "error" in r.json()
    lfs_hub.fail_next(1, status=500, kind="any", path="tokenizer/*")
    assert client.get(_resolve(lfs_hub, "config.json", repo="org/dir")).status_code == 200
    assert client.get(_resolve(lfs_hub, "tokenizer/vocab.txt", repo="org/dir")).status_code == 500
    assert lfs_hub.stats.faults_fired == {"fail_429": 2, "fail_503": 1, "fail_500": 1}


def test_flip_byte(lfs_hub: HubEmulator, small_repo: Path, client: httpx2.Client) -> None:
    want = (small_repo / "model.safetensors").read_bytes()
    url = _lfs_url(client, lfs_hub)
    offset = 5_000_003
    lfs_hub.faults.flip_byte_at = offset
    got = client.get(url).content
    # exactly one byte differs, and it is the inverted one
    assert len(got) == len(want) and got[offset] == want[offset] ^ 0xFF
    assert got[:offset] == want[:offset] and got[offset + 1 :] == want[offset + 1 :]
    assert client.get(url).content == want  # once
    # always, and with absolute offsets inside a Range
    lfs_hub.faults.flip_byte_at = offset
    lfs_hub.faults.flip_every = True
    part = client.get(url, headers={"Range": f"bytes={offset - 10}-{offset + 10}"}).content
    assert (
        part[10] == want[offset] ^ 0xFF
        and part[:10] + part[11:] == want[offset - 10 : offset] + want[offset + 1 : offset + 11]
    )
    assert client.get(url).content != want
    assert lfs_hub.stats.faults_fired["flip"] == 3


def test_ignore_range(lfs_hub: HubEmulator, client: httpx2.Client) -> None:
    url = _resolve(lfs_hub, "tokenizer/vocab.txt", repo="org/dir")
    lfs_hub.faults.ignore_range = True
    r = client.get(url, headers={"Range": "bytes=10-"})
    assert r.status_code == 200 and "Content-Range" not in r.headers
    assert r.content == (Path(lfs_hub.files("org/dir")["tokenizer/vocab.txt"].source or "")).read_bytes()


def test_faults_scoped_by_path(lfs_hub: HubEmulator, client: httpx2.Client) -> None:
    lfs_hub.faults.path = "tokenizer/*"
    lfs_hub.faults.reset_after_bytes = 10
    lfs_hub.faults.reset_every = True
    assert len(client.get(_lfs_url(client, lfs_hub)).content) == SMALL_LFS_SIZE
    with pytest.raises((httpx2.ReadError, httpx2.RemoteProtocolError)):
        client.get(_resolve(lfs_hub, "tokenizer/vocab.txt", repo="org/dir"))
    lfs_hub.clear_faults()
    assert lfs_hub.faults.path == "*" and lfs_hub.faults.reset_after_bytes is None


def test_rate_limits(lfs_hub: HubEmulator, client: httpx2.Client) -> None:
    url = _lfs_url(client, lfs_hub)
    n = 400_000
    lfs_hub.faults.rate_limit_per_connection = 2_000_000
    began = time.monotonic()
    assert len(client.get(url, headers={"Range": f"bytes=0-{n - 1}"}).content) == n
    assert time.monotonic() - began >= 0.9 * n / 2_000_000
    lfs_hub.clear_faults()

    # global: two parallel streams share one budget, so together they take twice as long
    lfs_hub.faults.rate_limit_global = 2_000_000
    done: list[int] = []

    def fetch() -> None:
        with httpx2.Client(timeout=10) as c:
            done.append(len(c.get(url, headers={"Range": f"bytes=0-{n - 1}"}).content))

    began = time.monotonic()
    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert done == [n, n]
    assert time.monotonic() - began >= 0.9 * 2 * n / 2_000_000


def test_outage_refuses_then_recovers_on_same_port(lfs_hub: HubEmulator, client: httpx2.Client) -> None:
    port = lfs_hub.port
    api = f"{lfs_hub.url}/api/models/org/dir"
    assert client.get(api).status_code == 200
    lfs_hub.down()
    assert not lfs_hub.is_up
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(api, timeout=2)
    lfs_hub.up()
    assert lfs_hub.port == port and client.get(api).status_code == 200

    lfs_hub.outage(0.5)
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(api, timeout=2)
    assert lfs_hub.wait_up(timeout=5)
    assert httpx2.get(api, timeout=2).status_code == 200


def test_outage_breaks_in_flight_transfers(lfs_hub: HubEmulator, client: httpx2.Client) -> None:
    url = _lfs_url(client, lfs_hub)
    lfs_hub.faults.stall_mid_body = (100_000, math.inf)
    outcome: list[BaseException | int] = []

    def fetch() -> None:
        try:
            outcome.append(len(httpx2.get(url, timeout=10).content))
        except httpx2.HTTPError as e:
            outcome.append(e)

    t = threading.Thread(target=fetch)
    t.start()
    assert lfs_hub.wait_for(lambda s: s.faults_fired["stall_mid_body"] == 1, timeout=5)
    lfs_hub.down()
    t.join(timeout=5)
    assert len(outcome) == 1 and isinstance(outcome[0], httpx2.TransportError)
    lfs_hub.up()
    assert len(client.get(_lfs_url(client, lfs_hub)).content) == SMALL_LFS_SIZE


def test_hf_hub_download_resumes_after_truncation(
    lfs_hub: HubEmulator, small_repo: Path, tmp_path: Path
) -> None:
    """huggingface_hub retries a short body with `Range: bytes=N-`, N a multiple of its 10 MiB chunk
    (shared/context/huggingface_hub-2.4.md); the result is still exact."""
    from huggingface_hub import hf_hub_download

    lfs_hub.faults.truncate_after_bytes = 11 * 1024 * 1024
    p = hf_hub_download("org/dir", "model.safetensors", endpoint=lfs_hub.url, cache_dir=tmp_path)
    assert Path(p).read_bytes() == (small_repo / "model.safetensors").read_bytes()
    assert lfs_hub.wait_idle()
    cdn = lfs_hub.stats.requests_for(kind="cdn")
    assert [(r.range, r.status, r.fault) for r in cdn] == [
        (None, 200, "truncate"),
        (f"bytes={10 * 1024 * 1024}-", 206, None),
    ]
    assert lfs_hub.stats.bytes_served == 11 * 1024 * 1024 + SMALL_LFS_SIZE - 10 * 1024 * 1024


def test_standalone_cli(small_repo: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": f"{root / 'emulator'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hub_emulator", "--repo", f"org/cli={small_repo}"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        r = httpx2.get(f"{url}/api/models/org/cli/revision/main", timeout=10)
        assert r.status_code == 200 and r.json()["id"] == "org/cli"
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
