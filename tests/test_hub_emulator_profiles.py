"""The hub emulator's profiles (hf, mirror, bare, xet) over real HTTP: each profile's metadata and resolve
shapes, paths-info, the xet-auth endpoint and its request log, runtime switching, and huggingface_hub
itself downloading from the mirror and bare profiles (HF_HUB_DISABLE_XET=1, set in conftest)."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from hub_emulator import PROFILES, HubEmulator, blob_sha1_of_bytes, lfs_pointer

REPO = "org/profiled"
FILES: dict[str, bytes] = {
    "README.md": b"profiled repo\n",
    "config.json": b'{"a": 1}\n',
    "sub/dir/notes.txt": b"0123456789" * 100,
    "weights.safetensors": bytes(range(256)) * 40,  # LFS by pattern, 10240 bytes
}
LFS = "weights.safetensors"
LFS_SHA = hashlib.sha256(FILES[LFS]).hexdigest()
HEX64 = re.compile(r"^[0-9a-f]{64}$")


@pytest.fixture
def client() -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=10) as c:
        yield c


def _hub(hub: HubEmulator, profile: str) -> HubEmulator:
    hub.profile = profile
    hub.add_repo(REPO, FILES)
    return hub


def _paths_info(client: httpx2.Client, hub: HubEmulator, paths: list[str], **kw: object) -> httpx2.Response:
    return client.post(f"{hub.url}/api/models/{REPO}/paths-info/main", data={"paths": paths, **kw})


def _resolve(hub: HubEmulator, path: str) -> str:
    return f"{hub.url}/{REPO}/resolve/main/{path}"


def _urlpath(url: str) -> str:
    return httpx2.URL(url).path


# ------------------------------------------------------------------------------------------ selection


def test_profile_is_validated_and_switchable_at_runtime(hub: HubEmulator, client: httpx2.Client) -> None:
    assert PROFILES == ("hf", "mirror", "bare", "xet")
    assert HubEmulator().profile == "hf"
    with pytest.raises(ValueError, match="unknown hub profile"):
        HubEmulator(profile="gitea")
    hub.add_repo(REPO, FILES)
    with pytest.raises(ValueError):
        hub.profile = "nope"
    assert hub.profile == "hf"
    info_url = f"{hub.url}/api/models/{REPO}"
    assert "siblings" in client.get(info_url).json()
    hub.profile = "bare"
    assert client.get(info_url).json() == {"id": REPO, "sha": hub.commit_of(REPO)}
    hub.profile = "hf"
    assert "siblings" in client.get(info_url).json()


def test_paths_info_shape_form_and_json(hub: HubEmulator, client: httpx2.Client) -> None:
    _hub(hub, "hf")
    commit = hub.commit_of(REPO)
    r = _paths_info(client, hub, [LFS, "sub", "README.md", "missing.txt", LFS])
    assert r.status_code == 200 and r.headers["X-Repo-Commit"] == commit
    pointer = lfs_pointer(LFS_SHA, len(FILES[LFS]))
    assert r.json() == [
        {
            "type": "file",
            "oid": blob_sha1_of_bytes(pointer),
            "size": len(FILES[LFS]),
            "path": LFS,
            "lfs": {"oid": LFS_SHA, "size": len(FILES[LFS]), "pointerSize": len(pointer)},
        },
        {"type": "directory", "oid": r.json()[1]["oid"], "path": "sub"},
        {"type": "file", "oid": blob_sha1_of_bytes(FILES["README.md"]), "size": 14, "path": "README.md"},
    ]
    assert re.fullmatch(r"[0-9a-f]{40}", r.json()[1]["oid"])
    expanded = _paths_info(client, hub, ["config.json"], expand=True).json()
    assert expanded[0]["lastCommit"]["id"] == commit
    as_json = client.post(f"{hub.url}/api/models/{REPO}/paths-info/main", json={"paths": ["config.json"]})
    assert as_json.json() == [
        {"type": "file", "oid": blob_sha1_of_bytes(FILES["config.json"]), "size": 9, "path": "config.json"}
    ]
    # errors: bad body, unknown revision, wrong method on either side
    bad = client.post(
        f"{hub.url}/api/models/{REPO}/paths-info/main",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert bad.status_code == 400
    nope = client.post(f"{hub.url}/api/models/{REPO}/paths-info/nope", data={"paths": ["x"]})
    assert nope.status_code == 404 and nope.headers["X-Error-Code"] == "RevisionNotFound"
    assert client.get(f"{hub.url}/api/models/{REPO}/paths-info/main").status_code == 404
    assert client.post(_resolve(hub, "README.md"), data={"a": "b"}).status_code == 405
    # the connection stays usable after POSTs (bodies were consumed)
    assert client.get(_resolve(hub, "README.md")).content == FILES["README.md"]


# ------------------------------------------------------------------------------------------ shapes


def test_mirror_profile_shapes(hub: HubEmulator, client: httpx2.Client) -> None:
    _hub(hub, "mirror")
    commit = hub.commit_of(REPO)
    for params in ({}, {"blobs": True}):
        info = client.get(f"{hub.url}/api/models/{REPO}/revision/main", params=params).json()
        assert info["sha"] == commit and info["id"] == REPO
        assert sorted(info["siblings"], key=lambda s: s["rfilename"]) == [
            {"rfilename": p} for p in sorted(FILES)
        ]
    for params in ({}, {"recursive": True}):
        tree = client.get(f"{hub.url}/api/models/{REPO}/tree/main", params=params)
        assert tree.status_code == 200 and tree.json() == []
    entries = _paths_info(client, hub, [LFS, "README.md"]).json()
    assert entries[0]["lfs"]["oid"] == LFS_SHA and entries[0]["size"] == len(FILES[LFS])
    assert entries[1] == {
        "type": "file",
        "oid": blob_sha1_of_bytes(FILES["README.md"]),
        "size": len(FILES["README.md"]),
        "path": "README.md",
    }
    head = client.head(_resolve(hub, LFS))
    assert head.status_code == 302 and head.headers["Location"].startswith(hub.cdn_url)
    assert head.headers["X-Repo-Commit"] == commit
    assert head.headers["X-Linked-Etag"] == f'"{LFS_SHA}"' and head.headers["ETag"] == f'"{LFS_SHA}"'
    assert head.headers["X-Linked-Size"] == str(len(FILES[LFS]))
    small = client.head(_resolve(hub, "README.md"))
    assert small.status_code == 200 and small.headers["ETag"] == f'"{blob_sha1_of_bytes(FILES["README.md"])}"'
    assert client.get(head.headers["Location"]).content == FILES[LFS]


def test_bare_profile_shapes(hub: HubEmulator, client: httpx2.Client) -> None:
    _hub(hub, "bare")
    commit = hub.commit_of(REPO)
    assert client.get(f"{hub.url}/api/models/{REPO}", params={"blobs": True}).json() == {
        "id": REPO,
        "sha": commit,
    }
    tree = client.get(
        f"{hub.url}/api/models/{REPO}/tree/main", params={"recursive": True, "expand": True}
    ).json()
    files = {e["path"]: e for e in tree if e["type"] == "file"}
    assert set(files) == set(FILES)
    assert all(set(e) == {"type", "path", "size", "oid"} for e in files.values())
    assert files[LFS]["size"] == len(FILES[LFS])
    assert {e["path"] for e in tree if e["type"] == "directory"} == {"sub", "sub/dir"}
    assert _paths_info(client, hub, [LFS]).json() == [
        {"type": "file", "oid": files[LFS]["oid"], "size": len(FILES[LFS]), "path": LFS}
    ]
    for path, etag in ((LFS, LFS_SHA), ("README.md", blob_sha1_of_bytes(FILES["README.md"]))):
        for method in ("HEAD", "GET"):
            r = client.request(method, _resolve(hub, path))
            assert r.status_code == 200, (method, path)
            assert r.headers["ETag"] == f'"{etag}"' and r.headers["X-Repo-Commit"] == commit
            assert r.headers["Content-Length"] == str(len(FILES[path]))
            assert "Location" not in r.headers and "Accept-Ranges" not in r.headers
            assert not [h for h in r.headers if h.lower().startswith("x-linked-")]
            assert method == "HEAD" or r.content == FILES[path]
    ranged = client.get(_resolve(hub, LFS), headers={"Range": "bytes=100-199"})
    assert ranged.status_code == 206 and ranged.content == FILES[LFS][100:200]
    assert "Accept-Ranges" not in ranged.headers
    assert hub.wait_idle()
    assert hub.stats.requests_for(kind="cdn") == []


def test_xet_profile_shapes(hub: HubEmulator, client: httpx2.Client) -> None:
    _hub(hub, "xet")
    commit = hub.commit_of(REPO)
    tree = client.get(f"{hub.url}/api/models/{REPO}/tree/main", params={"recursive": True}).json()
    files = {e["path"]: e for e in tree if e["type"] == "file"}
    xet_hash = files[LFS]["xetHash"]
    assert HEX64.fullmatch(xet_hash) and xet_hash != LFS_SHA
    assert files[LFS]["lfs"]["oid"] == LFS_SHA
    assert all("xetHash" not in e for p, e in files.items() if p != LFS)
    siblings = {
        s["rfilename"]: s for s in client.get(f"{hub.url}/api/models/{REPO}?blobs=true").json()["siblings"]
    }
    assert siblings[LFS]["xetHash"] == xet_hash and "xetHash" not in siblings["README.md"]
    assert _paths_info(client, hub, [LFS]).json()[0]["xetHash"] == xet_hash

    head = client.head(_resolve(hub, LFS))
    assert head.status_code == 302 and head.headers["X-Xet-Hash"] == xet_hash
    assert head.headers["X-Linked-Size"] == str(len(FILES[LFS])) and head.headers["X-Repo-Commit"] == commit
    auth_url = head.links["xet-auth"]["url"]
    assert auth_url == f"{hub.url}/api/models/{REPO}/xet-read-token/{commit}"
    assert "X-Xet-Hash" not in client.head(_resolve(hub, "README.md")).headers
    # the CDN still serves the whole file, with Range
    cdn = head.headers["Location"]
    assert client.get(cdn).content == FILES[LFS]
    part = client.get(cdn, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == FILES[LFS][10:20]
    # the token endpoint fails by design and is logged as its own kind
    assert client.get(auth_url).status_code == 503
    hub.xet_auth_status = 403
    assert client.get(auth_url).status_code == 403
    assert hub.wait_idle()
    assert [(r.path, r.status) for r in hub.stats.requests_for(kind="xet")] == [
        (_urlpath(auth_url), 503),
        (_urlpath(auth_url), 403),
    ]


def test_xet_auth_unreachable(client: httpx2.Client) -> None:
    with HubEmulator(profile="xet", xet_auth_status=None) as hub:
        hub.add_repo(REPO, FILES)
        link = client.head(_resolve(hub, LFS)).links["xet-auth"]["url"]
        target = httpx2.URL(link)
        assert target.host == "127.0.0.1" and target.port not in (hub.port, httpx2.URL(hub.cdn_url).port)
        with pytest.raises(httpx2.ConnectError):
            client.get(link)


def test_other_profiles_have_no_xet_route(hub: HubEmulator, client: httpx2.Client) -> None:
    _hub(hub, "hf")
    commit = hub.commit_of(REPO)
    r = client.get(f"{hub.url}/api/models/{REPO}/xet-read-token/{commit}")
    assert r.status_code == 404
    assert not [h for h in client.head(_resolve(hub, LFS)).headers if h.lower().startswith("x-xet")]


# ------------------------------------------------------------------------------------------ huggingface_hub


def test_snapshot_download_from_mirror(hub: HubEmulator, tmp_path: Path) -> None:
    """huggingface_hub 2.4 lists a snapshot with the tree endpoint: on a mirror it succeeds and gets no
    files; its per-file path (model_info siblings + resolve) and get_paths_info do work there."""
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download
    from huggingface_hub.hf_api import RepoFile, RepoFolder

    _hub(hub, "mirror")
    out = Path(snapshot_download(REPO, endpoint=hub.url, local_dir=tmp_path / "snap"))
    assert not [p for p in out.rglob("*") if p.is_file() and ".cache" not in p.relative_to(out).parts]
    api = HfApi(endpoint=hub.url)
    names = [s.rfilename for s in api.model_info(REPO, files_metadata=True).siblings or []]
    assert sorted(names) == sorted(FILES)
    for name in names:
        p = hf_hub_download(REPO, name, endpoint=hub.url, cache_dir=tmp_path / "cache")
        assert Path(p).read_bytes() == FILES[name], name
    infos = {i.path: i for i in api.get_paths_info(REPO, [LFS, "sub"])}
    lfs_file, folder = infos[LFS], infos["sub"]
    assert isinstance(lfs_file, RepoFile) and isinstance(folder, RepoFolder)
    assert lfs_file.lfs is not None and lfs_file.lfs.sha256 == LFS_SHA and lfs_file.size == len(FILES[LFS])


def test_snapshot_download_from_bare(hub: HubEmulator, tmp_path: Path) -> None:
    from huggingface_hub import snapshot_download

    _hub(hub, "bare")
    out = Path(snapshot_download(REPO, endpoint=hub.url, local_dir=tmp_path / "snap"))
    got = {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in out.rglob("*")
        if p.is_file() and ".cache" not in p.relative_to(out).parts
    }
    assert got == FILES
    assert hub.wait_idle()
    assert hub.stats.requests_for(kind="cdn") == [] and hub.stats.bytes_by_file[LFS] == len(FILES[LFS])


def test_hf_hub_download_from_xet_without_xet(hub: HubEmulator, tmp_path: Path) -> None:
    """With Xet disabled huggingface_hub ignores the Xet headers and takes the CDN redirect."""
    from huggingface_hub import hf_hub_download

    _hub(hub, "xet")
    p = hf_hub_download(REPO, LFS, endpoint=hub.url, cache_dir=tmp_path)
    assert Path(p).read_bytes() == FILES[LFS]
    assert hub.wait_idle()
    assert {r.kind for r in hub.stats.requests} == {"resolve", "cdn"}


def test_standalone_cli_profile(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_bytes(b"x")
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        [sys.executable, "-m", "hub_emulator", "--profile", "bare", "--repo", f"org/cli={tmp_path}"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root / "emulator")},
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert set(httpx2.get(f"{url}/api/models/org/cli", timeout=10).json()) == {"id", "sha"}
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
