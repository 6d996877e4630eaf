"""Measured throughput vs `--max-bytes-per-second` (the native engine's shared token bucket).

Serves one random file from an in-process HubEmulator on 127.0.0.1 and runs `python -m provisioner run`
with several caps (and 16 connections, so the cap is shared by many readers). Throughput = bytes the
emulator served / wall time of the run (process start included, so it slightly under-reads the cap).
Prints a markdown table. Timings are for this file only; no test checks them.

    python benchmarks/bandwidth_cap.py [--size 64MiB] [--caps 8MiB,16MiB,32MiB]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "emulator")]

from hub_emulator import HubEmulator  # noqa: E402

from provisioner.config import setting  # noqa: E402

RUN_TIMEOUT = 600  # a capped run of the default size takes seconds; this only bounds a hang


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="64MiB")
    ap.add_argument("--caps", default="8MiB,16MiB,32MiB")
    args = ap.parse_args()
    size = setting("split_threshold").parse(args.size)
    caps = [c.strip() for c in args.caps.split(",") if c.strip()]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROVISIONER_", "HF_"))}
    env["PYTHONPATH"] = str(ROOT)
    print("| cap | bytes | seconds | measured | measured / cap |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp, HubEmulator() as hub:
        src = Path(tmp) / "src"
        src.mkdir()
        (src / "model.safetensors").write_bytes(os.urandom(size))
        hub.add_repo("bench/cap", src)
        for i, cap in enumerate(caps):
            rate = setting("max_bytes_per_second").parse(cap)
            before = hub.stats.bytes_served
            t0 = time.monotonic()
            proc = subprocess.run(
                [sys.executable, "-m", "provisioner", "run", "--endpoint", hub.url, "--repo-id", "bench/cap",
                 "--target", f"{tmp}/t{i}", "--listen", "off", "--kube", "off", "--verify", "checksums",
                 "--connections-per-file", "16", "--split-threshold", "1MiB", "--max-bytes-per-second", cap],
                env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
            seconds = time.monotonic() - t0
            served = hub.stats.bytes_served - before
            if proc.returncode != 0:
                print(f"| {cap} | run failed (exit {proc.returncode}) | | | |")
                continue
            measured = served / seconds
            print(f"| {cap} | {served} | {seconds:.2f} | {measured / (1 << 20):.1f} MiB/s | {measured / rate:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
