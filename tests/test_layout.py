"""The versioned on-disk layout: a new revision on a shared volume never changes what readers of the
old one see until it is verified, the switch is one atomic link rename, and old commits are pruned.

`run --layout versioned` runs as a real process against the hub emulator; a "running app" thread
reads the model through the revision link the whole time.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from pathlib import Path

import pytest
from cli_helpers import json_lines, run_args, run_cli, start_cli
from hub_emulator import HubEmulator

from provisioner.state import fsutil, layout, marker

REPO = "org/layout"
MiB = 1 << 20
FILES_A = {
    "config.json": b'{"hidden_size": 8, "version": "A"}\n',
    "tokenizer.json": b'{"vocab": ["a", "b", "c"]}\n' * 50,
    "model.safetensors": os.urandom(3 * MiB),
}
FILES_B = {**FILES_A, "config.json": b'{"hidden_size": 8, "version": "B"}\n', "model.safetensors": os.urandom(3 * MiB)}
VERSIONED = ["--layout", "versioned", "--verify", "checksums", "--stall-timeout", "5", "--retry-budget", "30"]


def _digest_view(folder: Path) -> dict[str, str]:
    """What an app sees when it resolves the model folder once and reads every file from it."""
    real = Path(os.path.realpath(folder))
    return {p: hashlib.sha256((real / p).read_bytes()).hexdigest() for p in FILES_A}


def _digests(files: dict[str, bytes]) -> dict[str, str]:
    return {p: hashlib.sha256(d).hexdigest() for p, d in files.items()}


class Reader:
    """A running app: resolves the revision link, reads all files, classifies the view as A, B or mixed;
    and a readiness probe (`check_ready` on the link, as /readyz does) sampled at the same time."""

    def __init__(self, link: Path, *, revision: str) -> None:
        self.link, self.revision = link, revision
        self.views: list[str] = []
        self.not_ready: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        a, b = _digests(FILES_A), _digests(FILES_B)
        while not self._stop.is_set():
            view = _digest_view(self.link)
            self.views.append("A" if view == a else "B" if view == b else f"MIXED {view}")
            check = marker.check_ready(self.link, repo_id=REPO, revision=self.revision)
            if not check.ok:
                self.not_ready.append(check.reason)

    def __enter__(self) -> Reader:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def run(hub: HubEmulator, root: Path, revision: str, *extra: str) -> list[dict[str, object]]:
    res = run_cli(run_args(endpoint=hub.url, target=root, repo_id=REPO,
                           extra=[*VERSIONED, "--revision", revision, *extra]), timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    return json_lines(res.stderr)


@pytest.mark.parametrize(("revision", "expected"), [
    ("main", "main"), ("refs/pr/1", "refs--pr--1"), ("v1.0+cu", "v1.0-cu"), ("..", "rev-.."), ("a" * 40, "a" * 40)])
def test_link_name_is_one_safe_path_component(revision: str, expected: str) -> None:
    assert layout.link_name(revision) == expected
    assert "/" not in layout.link_name(revision)


def test_branch_moves_readers_never_see_a_mix_and_stay_ready(hub: HubEmulator, tmp_path: Path) -> None:
    commit_a = hub.add_repo(REPO, FILES_A)
    root = tmp_path / "vol"
    run(hub, root, "main")
    link = layout.link_path(root, "main")
    assert _digest_view(link) == _digests(FILES_A)
    assert layout.current_commit(root, "main") == commit_a
    commit_b = hub.add_repo(REPO, FILES_B)  # main moves
    hub.reset_stats()
    hub.faults.rate_limit_global = 2 * MiB  # ~1.5 s of download while the app keeps reading
    log = tmp_path / "b.log"
    with Reader(link, revision="main") as reader:
        proc = start_cli(run_args(endpoint=hub.url, target=root, repo_id=REPO,
                                  extra=[*VERSIONED, "--revision", "main"]), log=log)
        assert proc.wait(120) == 0, log.read_text()[-3000:]
    assert layout.current_commit(root, "main") == commit_b
    assert _digest_view(link) == _digests(FILES_B)
    views = reader.views
    assert views and not [v for v in views if v.startswith("MIXED")], [v for v in views if v.startswith("MIXED")][:3]
    assert views[0] == "A" and views[-1] == "B", (views[0], views[-1])
    first_b = views.index("B")
    assert set(views[first_b:]) == {"B"}, "the link went back to the old commit"
    assert reader.not_ready == [], reader.not_ready[:3]
    # the unchanged file was hard-linked from the old commit, not downloaded again
    assert hub.stats.bytes_by_file["tokenizer.json"] == 0
    assert hub.stats.bytes_by_file["model.safetensors"] == len(FILES_B["model.safetensors"])
    # the previous commit is kept for readers that still have it resolved; nothing else is
    assert (layout.commit_dir(root, commit_a) / "config.json").is_file()


def test_revision_bump_old_pods_stay_ready_and_old_commits_are_pruned(hub: HubEmulator, tmp_path: Path) -> None:
    commit_a = hub.add_repo(REPO, FILES_A)
    commit_b = hub.add_repo(REPO, FILES_B)
    commit_c = hub.add_repo(REPO, {**FILES_B, "config.json": b'{"version": "C"}\n'})
    root = tmp_path / "vol"
    run(hub, root, commit_a)
    hub.faults.rate_limit_global = 2 * MiB
    with Reader(layout.link_path(root, commit_a), revision=commit_a) as reader_a:
        run(hub, root, commit_b)  # the chart's model.revision bump: pods of A and B share the volume
    assert set(reader_a.views) == {"A"} and reader_a.not_ready == []
    assert marker.check_ready(layout.link_path(root, commit_b), repo_id=REPO, revision=commit_b).ok
    hub.faults.rate_limit_global = None
    lines = run(hub, root, commit_c)  # a third revision: the oldest link and its commit folder go
    assert any("pruned" in str(ln.get("msg")) for ln in lines), lines[-5:]
    assert not layout.link_path(root, commit_a).exists()
    assert not layout.commit_dir(root, commit_a).exists()
    for commit in (commit_b, commit_c):
        assert marker.check_ready(layout.link_path(root, commit), repo_id=REPO, revision=commit).ok


def test_warm_restart_through_the_link_makes_no_request(hub: HubEmulator, tmp_path: Path) -> None:
    commit = hub.add_repo(REPO, FILES_A)
    root = tmp_path / "vol"
    run(hub, root, commit)
    hub.reset_stats()
    lines = run(hub, root, commit)
    assert hub.stats.requests == [], [r.path for r in hub.stats.requests]
    ready = [ln for ln in lines if ln.get("msg") == "ready"]
    assert ready and ready[0].get("warm") is True, lines[-3:]


def test_prune_never_removes_a_folder_whose_lock_is_held(tmp_path: Path) -> None:
    root = tmp_path / "vol"
    for n, commit in enumerate(["a" * 40, "b" * 40, "c" * 40]):
        folder = layout.commit_dir(root, commit)
        fsutil.make_dir(marker.state_dir(folder))
        (folder / "f").write_text(commit)
        layout.switch_link(root, f"r{n}", commit)
        os.utime(layout.link_path(root, f"r{n}"), ns=(n, n), follow_symlinks=False)  # r2 newest
    lock = marker.state_dir(layout.commit_dir(root, "a" * 40)) / "lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another process is (re)provisioning commit a
        removed = layout.prune(root, keep_links=1)
    finally:
        os.close(fd)
    assert removed == ["b" * 40]
    assert layout.commit_dir(root, "a" * 40).is_dir()
    assert sorted(p.name for p in (root / layout.LINKS_DIR).iterdir()) == ["r2"]
