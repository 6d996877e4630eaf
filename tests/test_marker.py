"""The ready marker and the `check` probe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from provisioner.cli import main
from provisioner.errors import ExitCode
from provisioner.manifest import FileEntry, Plan
from provisioner.state import marker

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
