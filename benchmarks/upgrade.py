"""A model upgrade on a shared volume: how long do readers of the old revision lose the model?

    python benchmarks/upgrade.py [--size 64MiB] [--rate 32MiB]

Revision A is provisioned; the hub's `main` then moves to B and B is provisioned into the same volume
while a reader (the "running app" of A pods) keeps checking readiness the way /readyz does and reading
every file through the folder the app was given. Both layouts run in the same invocation:

* flat (the baseline): the marker is invalidated and files are replaced in place;
* versioned: B goes into its own commit folder and the revision link is switched once it is verified.

Printed: time the A readers were not ready, views that mixed A and B files, and the cost of the switch
itself (median of 1000 link renames on the same filesystem).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "emulator"))  # the hub emulator is its own distribution
sys.path.insert(0, str(ROOT))

from hub_emulator import HubEmulator  # noqa: E402

from provisioner.config import _size  # noqa: E402
from provisioner.state import fsutil, layout, marker  # noqa: E402

REPO = "bench/upgrade"


def files(version: str, size: int) -> dict[str, bytes]:
    return {"config.json": f'{{"version": "{version}"}}\n'.encode(), "tokenizer.json": b'{"v": 1}\n' * 100,
            "model.safetensors": os.urandom(size)}


def provision(hub: HubEmulator, root: Path, layout_name: str) -> None:
    argv = [sys.executable, "-m", "provisioner", "run", "--repo-id", REPO, "--endpoint", hub.url,
            "--target", str(root), "--layout", layout_name, "--verify", "checksums", "--listen", "off",
            "--kube", "off", "--log-level", "warning"]
    env = {**os.environ, "HF_HUB_DISABLE_XET": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run(argv, env=env, check=True, timeout=600)


class Reader(threading.Thread):
    def __init__(self, folder: Path, a: dict[str, str], b: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.folder, self.a, self.b = folder, a, b
        self.unready_seconds = 0.0
        self.mixed = 0
        self.views = 0
        self.done = threading.Event()

    def run(self) -> None:
        last = time.monotonic()
        while not self.done.is_set():
            ok = marker.check_ready(self.folder, repo_id=REPO, revision="main").ok
            now = time.monotonic()
            if not ok:
                self.unready_seconds += now - last
            last = now
            try:
                real = Path(os.path.realpath(self.folder))
                view = {p: hashlib.sha256((real / p).read_bytes()).hexdigest() for p in self.a}
            except OSError:  # a file missing mid-replacement counts as a broken view
                view = {}
            self.views += 1
            if view not in (self.a, self.b):
                self.mixed += 1
            time.sleep(0.005)


def upgrade(layout_name: str, *, size: int, rate: int, work: Path) -> Reader:
    a, b = files("A", size), files("B", size)
    digest = {k: {p: hashlib.sha256(d).hexdigest() for p, d in v.items()} for k, v in (("a", a), ("b", b))}
    root = work / layout_name
    with HubEmulator() as hub:
        hub.add_repo(REPO, a)
        provision(hub, root, layout_name)
        hub.add_repo(REPO, b)
        hub.faults.rate_limit_global = rate
        reader = Reader(layout.model_dir(target=root, revision="main", layout=layout_name), digest["a"], digest["b"])
        reader.start()
        provision(hub, root, layout_name)
        reader.done.set()
        reader.join(10)
    return reader


def switch_cost(work: Path) -> float:
    root = work / "switch"
    for c in ("a" * 40, "b" * 40):
        fsutil.make_dir(layout.commit_dir(root, c))
    samples = []
    for i in range(1000):
        t = time.perf_counter()
        layout.switch_link(root, "main", ("a", "b")[i % 2] * 40)
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="64MiB")
    parser.add_argument("--rate", default="32MiB", help="emulated link speed for B's download")
    ns = parser.parse_args()
    size, rate = _size("size")(ns.size), _size("rate")(ns.rate)
    with tempfile.TemporaryDirectory(prefix="mp-upgrade-") as tmp:
        work = Path(tmp)
        flat = upgrade("flat", size=size, rate=rate, work=work)
        versioned = upgrade("versioned", size=size, rate=rate, work=work)
        cost = switch_cost(work)
    print(f"upgrade of a {ns.size} model at {ns.rate}/s on a shared volume, readers of the old revision:")
    print("| layout | old readers not ready | views mixing A and B (of all views) |")
    print("|---|---|---|")
    print(f"| flat (baseline) | {flat.unready_seconds:.2f} s | {flat.mixed} of {flat.views} |")
    print(f"| versioned | {versioned.unready_seconds:.2f} s | {versioned.mixed} of {versioned.views} |")
    print(f"switch: one link rename + directory fsync, median {cost * 1e6:.0f} µs (1000 renames)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
