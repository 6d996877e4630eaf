"""The hub emulator over real HTTP: protocol shape, ranges, redirects, errors, counters, faults,
and faithfulness (huggingface_hub itself downloads byte-identical files from it)."""

from __future__ import annotations

import hashlib
import math
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx2
import pytest

from provisioner.testing.hub import HubEmulator, blob_sha1_of_bytes, lfs_pointer

REPO = "org/small"
SMALL_FILES: dict[str, bytes] = {
    "README.md": b"hello hub\n",
    "config.json": b'{"a": 1}\n',
    "sub/dir/notes.txt": b"0123456789" * 100,
    "weights.safetensors": bytes(range(256)) * 40,  # LFS by pattern, 10240 bytes
}
LFS_PATH = "weights.safetensors"


@pytest.fixture
def client() -> httpx2.Client:
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
    pages: list[list[dict[str, object]]] = []
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
    assert sib[LFS_PATH].lfs is not None
    assert sib[LFS_PATH].lfs.sha256 == hashlib.sha256(SMALL_FILES[LFS_PATH]).hexdigest()
    assert sib["README.md"].size == len(SMALL_FILES["README.md"])
    tree = {e.path: e for e in api.list_repo_tree(REPO, recursive=True)}
    assert set(SMALL_FILES) <= set(tree)


def test_hf_token_not_sent_to_cdn(hub: HubEmulator, tmp_path: Path) -> None:
    from huggingface_hub import hf_hub_download

    hub.add_repo(REPO, SMALL_FILES, token="tok")
    p = hf_hub_download(REPO, LFS_PATH, endpoint=hub.url, cache_dir=tmp_path, token="tok")
    assert Path(p).read_bytes() == SMALL_FILES[LFS_PATH]


# silence "imported but unused" for helpers used only by later sections
_ = (math, socket, threading)
