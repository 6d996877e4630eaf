"""`--engine native` vs `--engine hub` on the same emulated hub, in one run (numbers for docs/engines.md).

    python benchmarks/engines.py [--size 256MiB] [--runs 3]

Scenarios: uncapped; a per-connection cap (CDN-like); SIGKILL at 50% then rerun (bytes re-sent).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "emulator"))  # the hub emulator is its own distribution
sys.path.insert(0, str(ROOT))

from hub_emulator import HubEmulator, prime_hash_cache  # noqa: E402

from provisioner.config import _size  # noqa: E402
from provisioner.verify import hash_file  # noqa: E402

REPO = "bench/engines"
MiB = 1 << 20


def make_repo(size: int, base: Path) -> Path:
    d = base / f"repo-{size}"
    d.mkdir(parents=True, exist_ok=True)
    f = d / "model.safetensors"
    if not f.exists() or f.stat().st_size != size:
        with f.open("wb") as out:
            left = size
            while left:
                out.write(os.urandom(min(8 * MiB, left)))
                left -= min(8 * MiB, left)
    dg = hash_file(f)
    prime_hash_cache(f, sha256=dg.sha256, blob_sha1=dg.blob_sha1)
    (d / "config.json").write_text("{}\n")
    return d


def argv(engine: str, hub: HubEmulator, target: Path) -> list[str]:
    return [sys.executable, "-m", "provisioner", "run", "--engine", engine, "--repo-id", REPO, "--endpoint", hub.url,
            "--target", str(target), "--verify", "checksums", "--listen", "off", "--kube", "off",
            "--log-level", "warning"]


def env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_DISABLE_XET": "1", "PYTHONPATH": str(ROOT)}


def timed_run(engine: str, hub: HubEmulator, work: Path) -> float:
    target = work / f"t-{engine}"
    shutil.rmtree(target, ignore_errors=True)
    t = time.monotonic()
    subprocess.run(argv(engine, hub, target), env=env(), check=True, capture_output=True)
    return time.monotonic() - t


def resent_after_kill(engine: str, hub: HubEmulator, work: Path, size: int) -> float:
    target = work / f"k-{engine}"
    shutil.rmtree(target, ignore_errors=True)
    hub.faults.rate_limit_global = 64 * MiB
    hub.wait_idle()
    hub.reset_stats()
    proc = subprocess.Popen(argv(engine, hub, target), env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    hub.wait_for(lambda s: s.bytes_by_file["model.safetensors"] >= size // 2, timeout=120)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    hub.faults.rate_limit_global = None
    subprocess.run(argv(engine, hub, target), env=env(), check=True, capture_output=True)
    hub.wait_idle()
    return (hub.stats.bytes_by_file["model.safetensors"] - size) / MiB


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="256MiB")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--per-conn-cap", default="50MiB")
    args = ap.parse_args()
    size = _size("size")(args.size)
    cache = Path(tempfile.gettempdir()) / "model-provisioner-bench-engines"
    work = Path(tempfile.mkdtemp(prefix="engines-"))
    rows = []
    try:
        with HubEmulator() as hub:
            hub.add_repo(REPO, make_repo(size, cache))
            for label, per_conn in (("uncapped", None), (f"per-connection cap {args.per_conn_cap}/s",
                                                          _size("cap")(args.per_conn_cap))):
                hub.faults.rate_limit_per_connection = per_conn
                times = {e: statistics.median(timed_run(e, hub, work) for _ in range(args.runs))
                         for e in ("native", "hub")}
                rows.append((f"wall time, {args.size}, {label}", f"{times['native']:.2f} s", f"{times['hub']:.2f} s",
                             f"{times['native'] / times['hub']:.2f}×"))
            hub.faults.rate_limit_per_connection = None
            kill = {e: resent_after_kill(e, hub, work, size) for e in ("native", "hub")}
            rows.append((f"re-sent after SIGKILL at 50% of {args.size}", f"{kill['native']:.1f} MiB",
                         f"{kill['hub']:.1f} MiB", "—"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"Machine: {os.cpu_count()} CPUs; medians of {args.runs} runs; 127.0.0.1 hub emulator\n")
    print("| scenario | native | hub (snapshot_download) | native / hub |\n|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
