"""A fleet of nodes pulling one model: hub egress and time to all ready, with and without mirrors.

    python benchmarks/fleet.py [--nodes 3] [--pods 3] [--size 32MiB] [--hub-rate 16MiB] [--output table.md]

One in-process hub emulator serves a repo (config.json, tokenizer.json, a random model.safetensors of
`--size`), its egress shared at `--hub-rate` per second (the uplink every pull competes for). Two setups,
each from cold (fresh directories), every participant a real `model-provisioner run` process:

* **no mirrors**: `--nodes` x `--pods` pods each pull the model from the hub, all started at once;
* **node caches**: one cache per node (`--mode sidecar --layout versioned --serve-listen`, each with
  `--mirrors` = the other caches), started in a wave: the first cache at once, the others when it is
  ready (a DaemonSet rollout); each node's `--pods` pods start when their node's cache is ready and
  pull with `--mirrors` = that cache. The hub still gives every client the plan and the digests.

Printed (markdown, stdout): pulls, bytes the hub sent for the model files, that as a multiple of the
model's size, and the time from the first start to the last pod ready. Progress goes to stderr. Every
process has a timeout; scratch directories are removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "emulator"))  # the hub emulator is its own distribution
sys.path.insert(0, str(ROOT))

from hub_emulator import HubEmulator  # noqa: E402

from provisioner.config import _size  # noqa: E402
from provisioner.state import marker  # noqa: E402
from provisioner.state.layout import link_path  # noqa: E402

REPO = "bench/fleet"
TIMEOUT = 300.0  # any one process; the whole benchmark is bounded by a few of these


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_DISABLE_XET": "1", "PYTHONPATH": str(ROOT)}


def _run_args(hub: HubEmulator, target: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "provisioner", "run", "--repo-id", REPO, "--endpoint", hub.url,
            "--target", str(target), "--verify", "checksums", "--listen", "off", "--kube", "off",
            "--log-level", "error", "--stall-timeout", "10", *extra]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(procs: list[subprocess.Popen[bytes]], what: str) -> None:
    for p in procs:
        code = p.wait(timeout=TIMEOUT)
        if code != 0:
            raise SystemExit(f"fleet: a {what} exited with {code}")


def _wait_ready(folder: Path, proc: subprocess.Popen[bytes], *, deadline: float) -> None:
    while not marker.check_ready(folder).ok:
        if proc.poll() is not None:
            raise SystemExit(f"fleet: a node cache exited with {proc.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise SystemExit("fleet: a node cache was not ready in time")
        time.sleep(0.05)


def _model_bytes(hub: HubEmulator) -> int:
    return sum(hub.stats.bytes_by_file.values())


def no_mirrors(hub: HubEmulator, work: Path, *, nodes: int, pods: int) -> tuple[int, int, float]:
    hub.reset_stats()
    t0 = time.monotonic()
    procs = [subprocess.Popen(_run_args(hub, work / f"direct-{n}-{p}"), env=_env())
             for n in range(nodes) for p in range(pods)]
    _wait(procs, "pod")
    return nodes * pods, _model_bytes(hub), time.monotonic() - t0


def with_caches(hub: HubEmulator, work: Path, *, nodes: int, pods: int) -> tuple[int, int, float]:
    hub.reset_stats()
    ports = [_free_port() for _ in range(nodes)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    caches: list[subprocess.Popen[bytes]] = []
    pod_procs: list[subprocess.Popen[bytes]] = []
    t0 = time.monotonic()
    deadline = t0 + TIMEOUT
    try:
        for n in range(nodes):
            peers = ",".join(u for i, u in enumerate(urls) if i != n)
            args = _run_args(hub, work / f"cache-{n}", "--mode", "sidecar", "--layout", "versioned",
                             "--serve-listen", f"127.0.0.1:{ports[n]}", *(["--mirrors", peers] if peers else []))
            caches.append(subprocess.Popen(args, env=_env()))
            folder = link_path(work / f"cache-{n}", "main")
            if n == 0:  # the wave: the first cache alone, the rest once it serves
                _wait_ready(folder, caches[0], deadline=deadline)
                print(f"fleet: first cache ready after {time.monotonic() - t0:.1f}s", file=sys.stderr)
        for n in range(nodes):
            _wait_ready(link_path(work / f"cache-{n}", "main"), caches[n], deadline=deadline)
            pod_procs += [subprocess.Popen(_run_args(hub, work / f"pod-{n}-{p}", "--mirrors", urls[n]), env=_env())
                          for p in range(pods)]
        print(f"fleet: all caches ready after {time.monotonic() - t0:.1f}s", file=sys.stderr)
        _wait(pod_procs, "pod")
        elapsed = time.monotonic() - t0
    finally:
        for c in caches:
            c.terminate()
        for c in caches:
            c.wait(timeout=30)
    return nodes * pods + nodes, _model_bytes(hub), elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--pods", type=int, default=3, help="pods per node")
    ap.add_argument("--size", default="32MiB", help="size of the model's weights file")
    ap.add_argument("--hub-rate", default="16MiB", help="hub egress per second, shared by all pulls (0: unlimited)")
    ap.add_argument("--output", help="also write the table to this file")
    args = ap.parse_args(argv)
    size, rate = _size("size")(args.size), _size("hub-rate")(args.hub_rate)
    work = Path(tempfile.mkdtemp(prefix="model-provisioner-fleet-"))
    try:
        src = work / "repo"
        src.mkdir()
        (src / "config.json").write_text('{"model_type": "bench"}\n')
        (src / "tokenizer.json").write_bytes(b'{"v": 1}\n' * 1000)
        with open(src / "model.safetensors", "wb") as f:
            f.write(os.urandom(size))
        model = sum(p.stat().st_size for p in src.iterdir())
        with HubEmulator() as hub:
            hub.add_repo(REPO, src)
            hub.faults.rate_limit_global = rate or None
            print(f"fleet: {args.nodes} nodes x {args.pods} pods, model {model / 2**20:.1f} MiB, "
                  f"hub egress {args.hub_rate}/s", file=sys.stderr)
            rows = [("no mirrors (every pod from the hub)", *no_mirrors(hub, work, nodes=args.nodes, pods=args.pods)),
                    ("node caches + `--mirrors`", *with_caches(hub, work, nodes=args.nodes, pods=args.pods))]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [f"{args.nodes} nodes x {args.pods} pods, model {model / 2**20:.1f} MiB, hub egress capped at "
             f"{args.hub_rate}/s", "",
             "| setup | pulls | hub egress (model files) | x model size | time to all ready |",
             "|---|---|---|---|---|"]
    for name, pulls, egress, seconds in rows:
        lines.append(f"| {name} | {pulls} | {egress / 2**20:.1f} MiB | {egress / model:.2f} | {seconds:.1f} s |")
    table = "\n".join(lines)
    print(table)
    if args.output:
        Path(args.output).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
