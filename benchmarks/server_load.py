#!/usr/bin/env python3
"""P9: the health server under load, during a download (called by run.py; also runnable alone).

A `python -m provisioner run --listen 127.0.0.1:PORT --log-format json` downloads from the hub
emulator while a separate load process (this file, `load` subcommand, so its threads do not share a
GIL with the emulator or the provisioner) runs `clients` concurrent scrapers doing `scrapes` GET
/metrics each, one prober hitting /healthz and /readyz every 50 ms, `stuck` clients that send half a
request head and never finish, and one client disconnecting mid-response every 20 ms. Reported: /metrics p50/p99,
probe p50/p99/max, failed requests, and how many stderr lines of the run are not JSON.

    python benchmarks/server_load.py [--size 256MiB] [--cap 50MiB]   # standalone, prints JSON
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GUARD = 30.0  # seconds: a hang guard on every client socket
RST_LINGER = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # SO_LINGER on, 0 s: close() sends RST
PROBE_EVERY = 0.05
RUDE_EVERY = 0.02
TARGET_P99 = 0.250  # seconds, /metrics with 40 concurrent scrapers


# ---- the load process ------------------------------------------------------------------------
def _request(port: int, path: str) -> tuple[float, int]:
    """(seconds, status) of one GET on a fresh connection (the server closes after each answer)."""
    t = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=GUARD) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.") else 0
    return time.perf_counter() - t, status


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def load(port: int, *, clients: int, scrapes: int, stuck: int, rude: int) -> dict[str, Any]:
    held = []
    for _ in range(stuck):
        s = socket.create_connection(("127.0.0.1", port), timeout=GUARD)
        s.sendall(b"GET /metrics HTTP/1.1\r\nX-Never-Finished: ")
        held.append(s)
    metrics: list[float] = []
    probes: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    done = threading.Event()
    start = threading.Barrier(clients + 1)

    def scraper() -> None:
        start.wait()
        for _ in range(scrapes):
            try:
                seconds, status = _request(port, "/metrics")
            except OSError as exc:  # counted, not raised: the report says how many failed
                with lock:
                    failures.append(f"/metrics: {type(exc).__name__}")
                continue
            with lock:
                metrics.append(seconds)
                if status != 200:
                    failures.append(f"/metrics: {status}")

    def prober() -> None:
        while not done.wait(PROBE_EVERY):
            for path in ("/healthz", "/readyz"):
                try:
                    seconds, status = _request(port, path)
                except OSError as exc:  # counted, not raised
                    with lock:
                        failures.append(f"{path}: {type(exc).__name__}")
                    continue
                with lock:
                    probes.append(seconds)
                    if status not in (200, 503) or (path == "/healthz" and status != 200):
                        failures.append(f"{path}: {status}")

    def rude_client() -> None:
        for _ in range(rude):
            if done.wait(RUDE_EVERY):  # paced: a flood of complete requests is overload, answered with 503
                return
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=GUARD) as s:
                    s.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST_LINGER)
            except OSError:  # refused or reset: rudeness accomplished either way
                pass

    threads = [threading.Thread(target=scraper) for _ in range(clients)]
    side = [threading.Thread(target=prober), threading.Thread(target=rude_client)]
    for t in threads + side:
        t.start()
    t0 = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    done.set()
    for t in side:
        t.join()
    for s in held:
        s.close()
    return {"metrics": metrics, "probes": probes, "failures": failures, "seconds": seconds}


# ---- the scenario (driven by run.py or standalone) ------------------------------------------------
def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if _request(port, "/healthz")[1] == 200:
                return
        except OSError:  # not listening yet
            time.sleep(0.05)
    raise RuntimeError(f"the provisioner did not serve /healthz within {timeout:g}s (exit {proc.poll()})")


def _phase(port: int) -> str:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=GUARD) as s:
            s.sendall(b"GET /status HTTP/1.1\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return str(json.loads(data.split(b"\r\n\r\n", 1)[1])["phase"])
    except (OSError, ValueError, KeyError, IndexError):  # reported as unknown, not raised
        return "unknown"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(*, hub_url: str, repo_id: str, target: Path, env: dict[str, str], log_path: Path,
            clients: int = 40, scrapes: int = 25, stuck: int = 100, rude: int = 50,
            timeout: float = 120.0) -> dict[str, Any]:
    """Run the provisioner against `hub_url` (rate-limited by the caller so the download outlasts the
    load), put the load on its server, SIGTERM it, and summarize."""
    port = _free_port()
    argv = [sys.executable, "-m", "provisioner", "run", "--listen", f"127.0.0.1:{port}", "--kube", "off",
            "--verify", "checksums", "--repo-id", repo_id, "--target", str(target), "--endpoint", hub_url,
            "--log-format", "json", "--progress-interval", "1"]
    with log_path.open("wb") as stderr:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        _wait_listening(port, proc, timeout=30)
        deadline = time.monotonic() + 60
        while (phase_before := _phase(port)) in ("unknown", "pending", "waiting", "planning") and time.monotonic() < deadline:
            time.sleep(0.05)  # the load belongs in the download, not in the plan
        loader = subprocess.run(
            [sys.executable, __file__, "load", "--port", str(port), "--clients", str(clients),
             "--scrapes", str(scrapes), "--stuck", str(stuck), "--rude", str(rude)],
            env=env, capture_output=True, text=True, timeout=timeout, check=False)
        phase_after = _phase(port)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:  # it ignored SIGTERM: kill it, and the report shows -9
            proc.kill()
            code = proc.wait(10)
    if loader.returncode != 0:
        raise RuntimeError(f"load generator failed: {loader.stderr[-2000:]}")
    raw = json.loads(loader.stdout)
    lines = log_path.read_text(errors="replace").splitlines()
    non_json = [line for line in lines if not _is_json_object(line)]
    m, p = raw["metrics"], raw["probes"]
    return {
        "metrics_p50": _percentile(m, 0.50), "metrics_p99": _percentile(m, 0.99), "metrics_n": len(m),
        "probe_p50": _percentile(p, 0.50), "probe_p99": _percentile(p, 0.99), "probe_max": max(p, default=None),
        "probe_n": len(p), "failures": len(raw["failures"]), "failure_kinds": sorted(set(raw["failures"]))[:10],
        "non_json_lines": len(non_json), "non_json_sample": non_json[:5], "stderr_lines": len(lines),
        "load_seconds": round(raw["seconds"], 3), "phase_before": phase_before, "phase_after": phase_after,
        "exit_code": code, "clients": clients, "scrapes": scrapes, "stuck": stuck, "rude": rude,
        "mean_metrics": statistics.fmean(m) if m else None,
    }


def ok(result: dict[str, Any]) -> bool:
    p99 = result["metrics_p99"]
    return (p99 is not None and p99 <= TARGET_P99 and result["non_json_lines"] == 0
            and result["failures"] == 0)


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:  # a non-JSON line: exactly what is being counted
        return False


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:.0f} ms"


def summary(result: dict[str, Any]) -> str:
    during = "during" if result["phase_after"] == "downloading" else f"ended in phase {result['phase_after']}"
    return (f"/metrics p50 {_ms(result['metrics_p50'])}, p99 {_ms(result['metrics_p99'])} "
            f"(n={result['metrics_n']}); probes p50 {_ms(result['probe_p50'])}, p99 {_ms(result['probe_p99'])}, "
            f"max {_ms(result['probe_max'])}; {result['failures']} failed requests; "
            f"{result['non_json_lines']} non-JSON stderr lines; download: {during}")


# ---- command line -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd")
    lp = sub.add_parser("load", help="(internal) the load process")
    lp.add_argument("--port", type=int, required=True)
    for name, default in (("clients", 40), ("scrapes", 25), ("stuck", 100), ("rude", 50)):
        lp.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--size", default="256MiB", help="file size of the repo being downloaded")
    ap.add_argument("--cap", default="50MiB", help="hub link cap per second (the download must outlast the load)")
    ns = ap.parse_args(argv)
    if ns.cmd == "load":
        print(json.dumps(load(ns.port, clients=ns.clients, scrapes=ns.scrapes, stuck=ns.stuck, rude=ns.rude)))
        return 0
    return _standalone(ns.size, ns.cap)


def _standalone(size_text: str, cap_text: str) -> int:
    import tempfile

    from run import HubEmulator  # wherever run.py finds the emulator (it also puts the package on sys.path)

    from provisioner.config import _size

    size, cap = _size("size")(size_text), _size("cap")(cap_text)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROVISIONER_", "HF_"))}
    env.update({"PYTHONPATH": str(ROOT), "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"})
    with tempfile.TemporaryDirectory(prefix="server-load-") as tmp, HubEmulator() as hub:
        hub.add_repo("bench/server-load", {"config.json": b"{}", "model.safetensors": bytes(size)})
        hub.faults.rate_limit_global = cap
        env["HF_HOME"] = str(Path(tmp) / "hf-home")
        result = measure(hub_url=hub.url, repo_id="bench/server-load", target=Path(tmp) / "m", env=env,
                         log_path=Path(tmp) / "run.log")
    print(json.dumps(result, indent=1))
    print(summary(result), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
