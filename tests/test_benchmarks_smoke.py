"""Smoke test of the benchmark harness: `benchmarks/run.py --quick` runs and prints the table with a row
for every scenario. Timings are NOT checked here (the machine is shared and noisy): see docs/benchmarks.md."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("P1", "P1b", "P2", "P3", "P4", "P5", "P6", "P7", "P8", "P9", "P10", "P11")


@pytest.mark.timeout(240)
def test_quick_benchmark_prints_every_scenario_row(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--cache-dir", str(tmp_path / "cache"),
         "--output", str(tmp_path / "table.md")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=220,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert out.startswith("Machine: "), out[:500]
    assert re.search(r"\d+ CPUs \(.+\), [\d.]+ GiB RAM", out), out[:500]
    header = "| # | scenario | model-provisioner | hf download (baseline) |"
    assert header in out
    rows = [line for line in out.splitlines() if line.startswith("| P")]
    ids = {line.split("|")[1].strip() for line in rows}
    assert ids == set(SCENARIOS), (ids, out)
    for line in rows:
        assert line.count("|") == 9, line  # 8 columns
        assert "scenario failed to run" not in line, line  # every scenario ran end to end
    assert (tmp_path / "table.md").read_text().strip() in out  # --output writes the same table
    assert not any((tmp_path / "cache" / "work").iterdir())  # scratch space cleaned up
