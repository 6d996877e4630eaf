"""P10 of benchmarks/run.py: a repo of many small files (N x 8 KiB in 10 folders), model-provisioner vs
`hf download` (and the seed's snapshot_download), same hub, same invocation.

What it measures is the per-file cost (requests, round trips, files and fsyncs), not bandwidth: the
bytes are few, the link is capped at 100 MiB/s as in the issue's measurement. Half the files are
`.json` (served by the hub itself), half `.bin` (LFS: a redirect to the CDN, two requests each).
run.py owns the table row; this module owns the repo, the runs and the cells.
"""

from __future__ import annotations

import hashlib
import shutil
import statistics
from pathlib import Path
from typing import Any

KiB = 1024
MiB = 1024 * KiB
FILE_SIZE = 8 * KiB
FOLDERS = 10
CAP = 100 * MiB  # bytes/s, global (the measurement)
REPO_ID = "bench/many-small-files"


def file_count(*, quick: bool) -> int:
    return 200 if quick else 1000


def repo_files(n: int) -> dict[str, bytes]:
    """n deterministic 8 KiB files in FOLDERS folders, alternating `.json` and `.bin` (LFS)."""
    out: dict[str, bytes] = {}
    for i in range(n):
        block = hashlib.sha256(b"%d" % i).digest()
        ext = "json" if i % 2 == 0 else "bin"
        out[f"part-{i % FOLDERS:02d}/file-{i:05d}.{ext}"] = block * (FILE_SIZE // len(block))
    return out


def complete(target: Path, files: dict[str, bytes]) -> bool:
    """Every file at its path with its size (the harness counts exit 0 without them as a failure)."""
    try:
        return all((target / path).stat().st_size == len(data) for path, data in files.items())
    except OSError:
        return False


def run(bench: Any, *, n: int, runs: int, tools: list[str], log: Any) -> dict[str, list[Any]]:
    """`runs` rounds of every tool (order rotated per round) on a fresh target; {tool: [ProcResult]}."""
    files = repo_files(n)
    hub = bench.hub
    hub.add_repo(REPO_ID, files)
    watch = next(iter(files))
    out: dict[str, list[Any]] = {t: [] for t in tools}
    hub.clear_faults()
    hub.faults.rate_limit_global = CAP
    try:
        for i in range(runs):
            for tool in tools[i % len(tools):] + tools[:i % len(tools)]:
                target = bench.fresh_dir(f"P10-{tool}")
                spec = bench.spec(tool, REPO_ID, target, name=f"P10-{tool}")
                r = bench.run_one(spec, timeout=bench.s.timeout + n * 0.1, watch_file=watch)
                if r.ok and not complete(target, files):
                    r.code = -999  # exit 0 but files are missing: count as a failure
                out[tool].append(r)
                log(f"P10 run {i + 1}/{runs} {tool}: code {r.code} {r.wall:.2f}s, {r.requests} hub requests")
                shutil.rmtree(target, ignore_errors=True)
                shutil.rmtree(target.parent / f"{target.name}.hf-home", ignore_errors=True)
    finally:
        hub.clear_faults()
    return out


def cell(results: list[Any], *, n: int) -> str:
    """`4.20 s [4.10–4.50], 238 files/s, 1.5 requests/file` (median wall; min–max over runs)."""
    if not results:
        return "—"
    walls = [r.wall for r in results if r.ok]
    fails = len(results) - len(walls)
    med = statistics.median(walls) if walls else None
    text = f"{med:.2f} s" if med is not None else "failed"
    if len(walls) > 1:
        text += f" [{min(walls):.2f}–{max(walls):.2f}]"
    if fails:
        text += f" ({fails}/{len(results)} failed)"
    if med:
        reqs = statistics.median([r.requests for r in results if r.ok])
        text += f", {n / med:.0f} files/s, {reqs / n:.1f} requests/file"
    return text
