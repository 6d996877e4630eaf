"""The ready marker and the `check` probe."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from provisioner.cli import main
from provisioner.errors import ExitCode
from provisioner.manifest import FileEntry, Plan
from provisioner.state import fsutil, marker

COMMIT = "c" * 40


def _provisioned(tmp_path: Path) -> Plan:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.json").write_bytes(b"{}")
    (tmp_path / "sub" / "w.bin").write_bytes(b"x" * 100)
    plan = Plan(repo_id="org/m", revision="main", commit=COMMIT, endpoint="http://127.0.0.1:1",
                files=(FileEntry("a.json", 2, blob_sha1="1" * 40), FileEntry("sub/w.bin", 100, sha256="2" * 64)))
    marker.write_marker(tmp_path, plan=plan, verify_level="checksums", verification={}, engine="native",
                        started_at=0.0)
    return plan


def test_marker_round_trip_and_check(tmp_path: Path) -> None:
    _provisioned(tmp_path)
    assert marker.check_ready(tmp_path).ok
    assert marker.check_ready(tmp_path, repo_id="org/m", revision="main").ok
    assert marker.check_ready(tmp_path, revision=COMMIT).ok
    assert not marker.check_ready(tmp_path, revision="v2").ok
    assert not marker.check_ready(tmp_path, repo_id="org/other").ok
    assert not list((tmp_path / ".provisioner").glob("*.tmp")), "temp file left behind"


def test_check_fails_after_delete_truncate_or_touch(tmp_path: Path) -> None:
    _provisioned(tmp_path)
    w = tmp_path / "sub" / "w.bin"
    st = w.stat()
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert marker.check_ready(tmp_path).reason.endswith("modified after verification")
    w.write_bytes(b"x" * 99)
    assert "size 99" in marker.check_ready(tmp_path).reason
    w.unlink()
    assert "missing" in marker.check_ready(tmp_path).reason


def test_check_rejects_symlink_swapped_file(tmp_path: Path) -> None:
    _provisioned(tmp_path)
    outside = tmp_path.parent / "outside.json"
    outside.write_bytes(b"{}")
    (tmp_path / "a.json").unlink()
    (tmp_path / "a.json").symlink_to(outside)
    assert not marker.check_ready(tmp_path).ok


def test_malformed_or_torn_marker_is_not_ready(tmp_path: Path) -> None:
    _provisioned(tmp_path)
    path = marker.marker_path(tmp_path)
    path.write_text('{"version": 1, "files": [')
    assert not marker.check_ready(tmp_path).ok
    path.write_text(json.dumps({"version": 1}))
    assert marker.check_ready(tmp_path).reason == "marker is malformed"


def test_invalidate(tmp_path: Path) -> None:
    _provisioned(tmp_path)
    marker.invalidate(tmp_path)
    assert not marker.marker_path(tmp_path).exists()
    marker.invalidate(tmp_path)  # idempotent


def test_cli_check_exit_codes(tmp_path: Path) -> None:
    assert main(["check", str(tmp_path)]) == ExitCode.NOT_READY
    _provisioned(tmp_path)
    assert main(["check", str(tmp_path)]) == ExitCode.OK
    assert main(["check", str(tmp_path), "--revision", "other"]) == ExitCode.NOT_READY


def test_check_imports_nothing_heavy(tmp_path: Path) -> None:
    """The probe must not pay for torch, sentence-transformers, kubernetes or huggingface_hub."""
    _provisioned(tmp_path)
    code = (
        "import sys; from provisioner.cli import main; rc = main(['check', sys.argv[1]]);"
        "heavy = [m for m in ('torch', 'sentence_transformers', 'kubernetes', 'huggingface_hub', 'httpx2',"
        " 'prometheus_client') if m in sys.modules]; print(rc, heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0 []"


# ---- each not-ready reason, exactly (what `check` prints and /readyz reports) ------------------------------
def _edit_marker(tmp_path: Path, **fields: object) -> None:
    path = marker.marker_path(tmp_path)
    data = json.loads(path.read_text())
    data.update(fields)
    path.write_text(json.dumps(data))


def not_ready(check: marker.MarkerCheck) -> str:
    """The reason of a refusal (and that it is one, with the marker it read)."""
    assert check.ok is False and check.marker is not None and check.marker.get("repo_id") == "org/m", check
    return check.reason


def test_each_not_ready_reason(tmp_path: Path) -> None:
    none = marker.check_ready(tmp_path)
    assert (none.ok, none.reason, none.marker) == (False, "no ready marker", None)
    plan = _provisioned(tmp_path)
    ok = marker.check_ready(tmp_path, repo_id="org/m", revision="main")
    assert (ok.ok, ok.reason, ok.marker is not None) == (True, "ready", True)
    assert not_ready(marker.check_ready(tmp_path, repo_id="org/x")) == "marker is for org/m, not org/x"
    assert not_ready(marker.check_ready(tmp_path, revision="v2")) == \
        f"marker is for revision main ({COMMIT[:12]}), not v2"
    assert marker.check_ready(tmp_path, repo_id=None, revision=None).ok
    w = tmp_path / "sub" / "w.bin"
    st = w.stat()
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))
    assert not_ready(marker.check_ready(tmp_path)) == "sub/w.bin was modified after verification"
    w.write_bytes(b"x" * 99)
    assert not_ready(marker.check_ready(tmp_path)) == "sub/w.bin has size 99, expected 100"
    w.unlink()
    w.mkdir()
    assert not_ready(marker.check_ready(tmp_path)) == "sub/w.bin is not a regular file"
    w.rmdir()
    assert not_ready(marker.check_ready(tmp_path)) == "sub/w.bin is missing"
    w.write_bytes(b"x" * 100)
    for fields, reason in [({"version": 2}, "marker version 2 is not 1"),
                           ({"files": [{"path": "a.json"}]}, "marker is malformed"),
                           ({"files": 3}, "marker is malformed")]:
        marker.write_marker(tmp_path, plan=plan, verify_level="checksums", verification={}, engine="native",
                            started_at=0.0)
        _edit_marker(tmp_path, **fields)
        assert not_ready(marker.check_ready(tmp_path)) == reason


def test_a_marker_that_is_not_an_object_is_no_marker(tmp_path: Path) -> None:
    marker.state_dir(tmp_path).mkdir()
    marker.marker_path(tmp_path).write_text("[1, 2]")
    assert marker.read_marker(tmp_path) is None
    assert marker.check_ready(tmp_path).reason == "no ready marker"


def test_make_dir_creates_every_missing_folder_0755(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        fsutil.make_dir(tmp_path / "a" / "b" / "c")
    finally:
        os.umask(old)
    for p in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o755, p


def test_fsync_dir_wants_a_directory(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError):
        fsutil.fsync_dir(tmp_path / "f")
    fsutil.fsync_dir(tmp_path)


def test_marker_records_what_was_verified(tmp_path: Path) -> None:
    plan = _provisioned(tmp_path)
    data = marker.read_marker(tmp_path)
    assert data is not None
    assert {k: data[k] for k in ("version", "repo_id", "revision", "commit", "endpoint", "engine", "verify",
                                 "verification", "bytes_total", "started_at")} == {
        "version": 1, "repo_id": "org/m", "revision": "main", "commit": COMMIT, "endpoint": "http://127.0.0.1:1",
        "engine": "native", "verify": "checksums", "verification": {}, "bytes_total": plan.total_bytes,
        "started_at": 0.0}
    assert data["files"] == [{**e.to_json(), "mtime_ns": os.lstat(tmp_path / e.path).st_mtime_ns}
                             for e in plan.files]
    assert data["verified_at"] > 1e9


def test_marker_file_is_0644_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        _provisioned(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(marker.marker_path(tmp_path).stat().st_mode) == 0o644
    assert stat.S_IMODE(marker.state_dir(tmp_path).stat().st_mode) == 0o755
    assert sorted(p.name for p in marker.state_dir(tmp_path).iterdir()) == ["ready.json"]
