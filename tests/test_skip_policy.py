"""The skip policy itself: an unexpected skip fails a strict run, an allow-listed one does not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from skip_policy import Allowed, load_allowlist, unexpected

TESTS = Path(__file__).resolve().parent


def test_allowlist_lines_all_have_a_reason_and_name_real_tests() -> None:
    entries = load_allowlist()
    assert entries, "the allow-list is empty: then it is not needed at all"
    for e in entries:
        assert len(e.why) > 20, e
        file = e.pattern.split("::")[0]
        assert (TESTS.parent / file).is_file(), f"allow-list names a missing file: {e.pattern}"
        name = e.pattern.split("::")[1].split("[")[0]
        assert f"def {name}(" in (TESTS.parent / file).read_text(), f"allow-list names a missing test: {e.pattern}"


def test_unexpected_keeps_only_uncovered_skips() -> None:
    allowed = [Allowed("tests/a.py::test_x*", "reason")]
    skipped = {"tests/a.py::test_x[1]": "no ipv6", "tests/b.py::test_y": "no tool"}
    assert unexpected(skipped, allowed) == {"tests/b.py::test_y": "no tool"}


def _run_pytest(tmp_path: Path, *, strict: bool) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n\ndef test_ok():\n    assert True\n\n"
        "def test_skipped():\n    pytest.skip('tool missing')\n")
    env = {**os.environ, "PYTHONPATH": str(TESTS), "MP_STRICT_SKIPS": "1" if strict else "0"}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "skip_policy",
                           "test_sample.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_strict_run_fails_on_a_skip_not_in_the_allowlist(tmp_path: Path) -> None:
    res = _run_pytest(tmp_path, strict=True)
    assert res.returncode == 1, res.stdout[-2000:]
    assert "NOT ALLOWED: test_sample.py::test_skipped: tool missing" in res.stdout, res.stdout[-2000:]


def test_lenient_run_reports_but_passes(tmp_path: Path) -> None:
    res = _run_pytest(tmp_path, strict=False)
    assert res.returncode == 0, res.stdout[-2000:]
    assert "NOT ALLOWED: test_sample.py::test_skipped" in res.stdout, res.stdout[-2000:]
