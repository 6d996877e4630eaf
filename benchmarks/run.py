#!/usr/bin/env python3
"""Benchmark harness: model-provisioner vs `hf download` (huggingface_hub 2.4) vs a bare snapshot_download.

Everything runs in ONE invocation under the same conditions: an in-process HubEmulator serves the
repos on 127.0.0.1, and each tool runs as a subprocess against it. Ratios are always against a
baseline measured in the same invocation; timings are medians over ``--runs``.

    python benchmarks/run.py                      # full: 1 GiB files, 3 runs (takes a while)
    python benchmarks/run.py --quick              # tiny files, 1 run, every scenario (< 1 min)
    python benchmarks/run.py --scenarios P1,P1b --runs 5 --size 512MiB

See benchmarks/README.md for what each scenario measures and docs/benchmarks.md for the latest table.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
for _path in (REPO_ROOT / "emulator", REPO_ROOT):  # the hub emulator is its own distribution
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import small_files  # noqa: E402  (P10; next to this script)
from hub_emulator import HubEmulator, HubStats, prime_hash_cache  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling scenario modules, also when imported
from ready import p9 as p11  # noqa: E402  (time to ready: P11)

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
MB = 1000 * 1000

SCENARIOS: tuple[str, ...] = ("P1", "P1b", "P2", "P3", "P4", "P5", "P6", "P7", "P8", "P9", "P10", "P11")
BIG_FILE = "model.safetensors"
TOOLS = ("mp", "hf", "seed")
TOOL_LABEL = {"mp": "model-provisioner", "hf": "hf download", "seed": "snapshot_download (seed)"}
POLL = 0.02  # seconds between looks at a running subprocess

SEED_CODE = (
    "import sys\n"
    "from huggingface_hub import snapshot_download\n"
    "snapshot_download(sys.argv[1], revision=sys.argv[3], local_dir=sys.argv[2], max_workers=4)\n"
)

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": KiB, "KB": KiB, "KIB": KiB, "M": MiB, "MB": MiB, "MIB": MiB,
          "G": GiB, "GB": GiB, "GIB": GiB, "T": 1024 * GiB, "TB": 1024 * GiB, "TIB": 1024 * GiB}


def parse_size(text: str) -> int:
    """'1GiB', '200MiB', '4M', '1048576' -> bytes (binary units; 'MB' is read as MiB too)."""
    m = _SIZE_RE.match(text)
    if not m or (m.group(2) or "").upper() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1GiB, 200MiB)")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])


def fmt_size(n: float) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(n) >= scale:
            value = n / scale
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.2f} {unit}"
    return f"{n:.0f} B"


def fmt_mib(n: float) -> str:
    return f"{n / MiB:.1f} MiB"


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def median(values: Sequence[float]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class Settings:
    quick: bool
    runs: int
    heavy_runs: int  # P3 (outage) and P6 (4x file): expensive, fewer runs
    size: int  # the main repo's big file
    big_size: int  # P6's second size
    cap: int  # P1/P2/P6/P7 global link cap, bytes/s
    per_conn_cap: int  # P1b per-connection cap, bytes/s
    outage: float  # P3 outage seconds
    check_iterations: int  # P8
    scenarios: tuple[str, ...]
    cache: Path
    with_seed: bool  # also run the seed's bare snapshot_download where relevant
    contrast: bool  # run contrast-only baselines (hf in P4/P6/P7)
    timeout: float  # per subprocess, seconds (scaled for big transfers below)


def expected_seconds(nbytes: int, rate: float) -> float:
    return nbytes / rate if rate else 0.0


# ------------------------------------------------------------------------------------------ machine


def code_fingerprint() -> str:
    """Hash of the provisioner sources: the checkout is shared, so detect code changing mid-run."""
    h = hashlib.sha256()
    for path in sorted((REPO_ROOT / "provisioner").rglob("*.py")):
        with contextlib.suppress(OSError):
            h.update(path.relative_to(REPO_ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * KiB
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count() or 0
    import huggingface_hub

    commit = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0:
            commit = out.stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "diff", "--quiet", "HEAD", "--", "provisioner"],
                               capture_output=True, timeout=10)
        if dirty.returncode == 1:
            commit += " + uncommitted changes in provisioner/"
    return {
        "nproc": affinity,
        "memory": mem,
        "cpu": cpu,
        "python": platform.python_version(),
        "huggingface_hub": huggingface_hub.__version__,
        "kernel": platform.release(),
        "git": commit,
        "loadavg_start": os.getloadavg(),
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "code_start": code_fingerprint(),
    }


# ------------------------------------------------------------------------------------------ data


@dataclass(frozen=True)
class RepoData:
    repo_id: str
    path: Path
    size: int  # bytes of BIG_FILE
    total: int  # bytes of all files
    hashes: dict[str, tuple[str, str]]


def _meta_matches(meta: dict[str, Any], path: Path) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    return meta.get("size") == st.st_size and meta.get("mtime_ns") == st.st_mtime_ns and meta.get("ino") == st.st_ino


def ensure_repo_data(cache: Path, size: int) -> RepoData:
    """A repo dir with one random BIG_FILE of `size` bytes plus a small config.json, generated once
    (os.urandom in chunks, hashed while written) and reused across invocations."""
    label = fmt_size(size).replace(" ", "")
    root = cache / "data" / label
    big = root / BIG_FILE
    meta_path = cache / "data" / f"{label}.json"
    meta: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        meta = json.loads(meta_path.read_text())
    if not _meta_matches(meta, big):
        free = shutil.disk_usage(cache).free
        if free < size + 2 * GiB:
            raise RuntimeError(f"not enough disk in {cache} for a {fmt_size(size)} file ({fmt_size(free)} free)")
        log(f"generating {fmt_size(size)} of random data in {big}")
        root.mkdir(parents=True, exist_ok=True)
        sha256 = hashlib.sha256()
        sha1 = hashlib.sha1(b"blob %d\0" % size)
        left = size
        with open(big, "wb") as f:
            while left:
                block = os.urandom(min(16 * MiB, left))
                sha256.update(block)
                sha1.update(block)
                f.write(block)
                left -= len(block)
        st = big.stat()
        meta = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino,
                "sha256": sha256.hexdigest(), "blob_sha1": sha1.hexdigest()}
        meta_path.write_text(json.dumps(meta))
    (root / "config.json").write_text(json.dumps({"model_type": "bench", "size": size}) + "\n")
    prime_hash_cache(big, sha256=meta["sha256"], blob_sha1=meta["blob_sha1"])
    config_size = (root / "config.json").stat().st_size
    return RepoData(repo_id=f"bench/model-{label}", path=root, size=size, total=size + config_size,
                    hashes={BIG_FILE: (meta["sha256"], meta["blob_sha1"])})


def tiny_repo_files() -> dict[str, bytes]:
    """A sentence-transformers-like file list (small contents): what `check` stats is the file count."""
    names = ["config.json", "config_sentence_transformers.json", "modules.json", "sentence_bert_config.json",
             "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "README.md",
             "1_Pooling/config.json", "2_Normalize/.keep", "model.safetensors"]
    return {n: hashlib.sha256(n.encode()).digest() * (64 if n != "model.safetensors" else 4096) for n in names}


# ------------------------------------------------------------------------------------------ processes


@dataclass
class ProcResult:
    tool: str
    code: int | None  # None: killed by the harness (timeout); negative: signal
    wall: float
    peak_rss: int  # bytes (ru_maxrss from wait4)
    served: int = 0  # hub bytes of BIG_FILE during this run (filled by the caller)
    served_total: int = 0  # hub body bytes of every response
    requests: int = 0
    first_byte: float | None = None  # seconds after start that the hub sent the first BIG_FILE byte
    last_byte: float | None = None  # seconds after start that the hub had sent `size` BIG_FILE bytes
    triggered_at: float | None = None
    cdn_gets: int = 0  # GET requests to the CDN (ranges/resumes of LFS files) during this run
    log_path: str = ""
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.code == 0


@dataclass
class ProcSpec:
    tool: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path


class Bench:
    def __init__(self, settings: Settings, hub: HubEmulator, work: Path) -> None:
        self.s = settings
        self.hub = hub
        self.work = work
        self.bindir = Path(sys.executable).parent
        self._counter = 0

    # ---- paths and commands ---------------------------------------------------------------
    def fresh_dir(self, name: str) -> Path:
        self._counter += 1
        path = self.work / f"{self._counter:03d}-{name}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def _script(self, name: str) -> str:
        direct = self.bindir / name
        if direct.exists():
            return str(direct)
        found = shutil.which(name)
        if found is None:
            raise RuntimeError(f"{name} not found next to {sys.executable} nor on PATH")
        return found

    def base_env(self, hf_home: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PROVISIONER_", "HF_"))}
        env.update({"HF_HOME": str(hf_home), "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                    "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONPATH": str(REPO_ROOT),
                    "PYTHONUNBUFFERED": "1"})
        return env

    def spec(self, tool: str, repo_id: str, target: Path, *, revision: str = "main", verify: str = "checksums",
             name: str | None = None) -> ProcSpec:
        hf_home = target.parent / f"{target.name}.hf-home"
        env = self.base_env(hf_home)
        if tool == "mp":
            argv = [sys.executable, "-m", "provisioner", "run", "--listen", "off", "--kube", "off",
                    "--verify", verify, "--repo-id", repo_id, "--revision", revision, "--target", str(target),
                    "--endpoint", self.hub.url, "--exclude", "", "--log-format", "json"]
        elif tool == "hf":
            env["HF_ENDPOINT"] = self.hub.url
            argv = [self._script("hf"), "download", repo_id, "--revision", revision, "--local-dir", str(target)]
        elif tool == "seed":
            env["HF_ENDPOINT"] = self.hub.url
            env["HF_HUB_DOWNLOAD_TIMEOUT"] = "300"
            argv = [sys.executable, "-c", SEED_CODE, repo_id, str(target), revision]
        else:
            raise ValueError(tool)
        self._counter += 1
        log_path = self.work / f"{self._counter:03d}-{name or tool}.log"
        return ProcSpec(tool, argv, env, log_path)

    def timeout_for(self, nbytes: int, rate: float | None) -> float:
        base = self.s.timeout
        if rate:
            base += 3 * expected_seconds(nbytes, rate)
        else:
            base += nbytes / (20 * MiB)  # a pessimistic floor for an uncapped local transfer
        return base

    # ---- running ---------------------------------------------------------------------------
    def run(self, specs: Sequence[ProcSpec], *, timeout: float, watch_file: str = BIG_FILE, size: int = 0,
            trigger: tuple[int, Callable[[list[subprocess.Popen[bytes]]], None]] | None = None,
            ) -> list[ProcResult]:
        """Start `specs` together, wait for all (bounded by `timeout`), and collect wall time, peak RSS
        (wait4), and hub counters. `trigger=(nbytes, action)` calls `action(procs)` once the hub has sent
        `nbytes` of `watch_file` (used for SIGKILL and outages mid-file)."""
        hub = self.hub
        hub.wait_idle(10)
        hub.reset_stats()
        box: dict[str, int] = {"file": 0}

        def sample(st: HubStats) -> bool:
            box["file"] = st.bytes_by_file[watch_file]
            return bool(trigger) and box["file"] >= trigger[0]  # type: ignore[index]

        procs: list[subprocess.Popen[bytes]] = []
        logs = []
        t0 = time.monotonic()
        for sp in specs:
            logf = open(sp.log_path, "wb")  # noqa: SIM115 - closed below
            logs.append(logf)
            procs.append(subprocess.Popen(sp.argv, stdout=logf, stderr=subprocess.STDOUT, env=sp.env,
                                          cwd=str(self.work), start_new_session=True))
        results: list[ProcResult | None] = [None] * len(procs)
        first_byte: float | None = None
        last_byte: float | None = None
        triggered_at: float | None = None
        deadline = t0 + timeout
        try:
            while any(r is None for r in results):
                fired = hub.wait_for(sample, timeout=POLL if trigger and triggered_at is None else 0)
                now = time.monotonic()
                if box["file"] > 0 and first_byte is None:
                    first_byte = now - t0
                if size and box["file"] >= size and last_byte is None:
                    last_byte = now - t0
                if trigger and fired and triggered_at is None:
                    triggered_at = now - t0
                    trigger[1](procs)
                for i, p in enumerate(procs):
                    if results[i] is not None:
                        continue
                    pid, status, usage = os.wait4(p.pid, os.WNOHANG)
                    if pid == 0:
                        continue
                    p.returncode = os.waitstatus_to_exitcode(status)
                    results[i] = ProcResult(tool=specs[i].tool, code=p.returncode, wall=now - t0,
                                            peak_rss=usage.ru_maxrss * KiB, log_path=str(specs[i].log_path))
                if now > deadline:
                    for i, p in enumerate(procs):
                        if results[i] is None:
                            _killpg(p, signal.SIGKILL)
                            _, status, usage = os.wait4(p.pid, 0)
                            p.returncode = os.waitstatus_to_exitcode(status)
                            results[i] = ProcResult(tool=specs[i].tool, code=None, wall=now - t0,
                                                    peak_rss=usage.ru_maxrss * KiB,
                                                    log_path=str(specs[i].log_path), timed_out=True)
                    log(f"timeout after {timeout:.0f}s: {[sp.tool for sp in specs]} killed")
                    break
                if not trigger or triggered_at is not None:
                    time.sleep(POLL)
        finally:
            for i, p in enumerate(procs):
                if results[i] is None:  # an exception in the loop: never leave a child behind
                    _killpg(p, signal.SIGKILL)
                    with contextlib.suppress(ChildProcessError):
                        os.wait4(p.pid, 0)
            for f in logs:
                f.close()
        if not hub.is_up:
            hub.wait_up(5)
        hub.wait_idle(10)
        st = hub.stats
        out = [r for r in results if r is not None]
        for r in out:
            r.served = st.bytes_by_file[watch_file]
            r.served_total = st.bytes_served
            r.requests = sum(st.requests_by_kind.values())
            r.cdn_gets = len([q for q in st.requests if q.kind == "cdn" and q.method == "GET"])
            r.first_byte, r.last_byte, r.triggered_at = first_byte, last_byte, triggered_at
        for r in out:
            if not r.ok:
                log(f"{r.tool} exited {r.code} after {r.wall:.1f}s: {_tail(Path(r.log_path))}")
        return out

    def run_one(self, spec: ProcSpec, **kw: Any) -> ProcResult:
        return self.run([spec], **kw)[0]


def _killpg(p: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, sig)


def _kill_all(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        _killpg(p, signal.SIGKILL)


def _tail(path: Path, n: int = 300) -> str:
    try:
        data = path.read_bytes()[-n:]
    except OSError:
        return ""
    return data.decode(errors="replace").replace("\n", " | ")


def complete(target: Path, repo: RepoData) -> bool:
    try:
        return (target / BIG_FILE).stat().st_size == repo.size
    except OSError:
        return False


def rotate(seq: Sequence[str], i: int) -> list[str]:
    """Tool order for run i: rotated so no tool always goes first on a noisy machine."""
    return [seq[(i + k) % len(seq)] for k in range(len(seq))]


# ------------------------------------------------------------------------------------------ table rows


@dataclass
class Row:
    scenario: str
    what: str
    mp: str
    baseline: str  # hf download
    seed: str
    ratio: str
    target: str
    result: str  # met / MISSED / n/a / error
    note: str = ""


@dataclass
class Report:
    settings: dict[str, Any]
    machine: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)


def verdict(ok: bool | None) -> str:
    if ok is None:
        return "n/a"
    return "met" if ok else "**MISSED**"


def _fmt_ratio(r: float | None) -> str:
    if r is None:
        return "—"
    return f"{r:.2f}×" if r >= 0.1 or r == 0 else f"{r:.2g}×"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


# ------------------------------------------------------------------------------------------ scenarios


class Scenarios:
    def __init__(self, bench: Bench, repo: RepoData, report: Report) -> None:
        self.b = bench
        self.s = bench.s
        self.hub = bench.hub
        self.repo = repo
        self.report = report

    def tools(self, *, seed: bool = True) -> list[str]:
        return ["mp", "hf"] + (["seed"] if seed and self.s.with_seed else [])

    def _download_runs(self, name: str, rate: float | None, *, seed: bool = True) -> dict[str, list[ProcResult]]:
        out: dict[str, list[ProcResult]] = {t: [] for t in self.tools(seed=seed)}
        for i in range(self.s.runs):
            for tool in rotate(list(out), i):
                target = self.b.fresh_dir(f"{name}-{tool}")
                r = self.b.run_one(self.b.spec(tool, self.repo.repo_id, target, name=f"{name}-{tool}"),
                                   timeout=self.b.timeout_for(self.repo.total, rate), size=self.repo.size)
                if r.ok and not complete(target, self.repo):
                    r.code = -999  # exit 0 but the file is not there: count as a failure
                out[tool].append(r)
                log(f"{name} run {i + 1}/{self.s.runs} {tool}: code {r.code} {r.wall:.2f}s "
                    f"served {fmt_mib(r.served)} rss {r.peak_rss / MB:.0f} MB")
                shutil.rmtree(target, ignore_errors=True)
                shutil.rmtree(target.parent / f"{target.name}.hf-home", ignore_errors=True)
        return out

    @staticmethod
    def _med_wall(results: list[ProcResult]) -> float | None:
        ok = [r.wall for r in results if r.ok]
        return median(ok) if len(ok) == len(results) and ok else None

    def _wall_cell(self, results: list[ProcResult]) -> str:
        if not results:
            return "—"
        fails = [r for r in results if not r.ok]
        med = median([r.wall for r in results if r.ok])
        cell = fmt_s(med) if med is not None else "failed"
        walls = [r.wall for r in results if r.ok]
        if len(walls) > 1:
            cell += f" [{min(walls):.2f}–{max(walls):.2f}]"
        if fails:
            cell += f" ({len(fails)}/{len(results)} failed)"
        if med is not None:
            cell += f", {self.repo.total / med / MiB:.0f} MiB/s"
        return cell

    # ---- P1 / P1b ----------------------------------------------------------------------------
    def p1(self) -> None:
        self.hub.clear_faults()
        self.hub.faults.rate_limit_global = self.s.cap
        res = self._download_runs("P1", self.s.cap)
        self.hub.clear_faults()
        mp, hf = self._med_wall(res["mp"]), self._med_wall(res["hf"])
        ratio = _ratio(mp, hf)
        self.report.raw["P1"] = {k: [asdict(r) for r in v] for k, v in res.items()}
        cap = self.s.cap
        self.report.rows.append(Row(
            "P1", f"wall time, {fmt_size(self.repo.size)} repo, global cap {fmt_size(cap)}/s",
            self._wall_cell(res["mp"]), self._wall_cell(res["hf"]), self._wall_cell(res.get("seed", [])),
            _fmt_ratio(ratio), "≤ 1.0× hf", verdict(None if ratio is None else ratio <= 1.0)))
        # cap utilisation: end to end (size / wall) and during the transfer (first to last byte at the hub)
        e2e = None if mp is None else self.repo.total / mp / cap
        transfer = median([self.repo.size / (r.last_byte - r.first_byte) / cap for r in res["mp"]
                           if r.ok and r.first_byte is not None and r.last_byte and r.last_byte > r.first_byte])
        hf_e2e = None if hf is None else self.repo.total / hf / cap
        hf_tr = median([self.repo.size / (r.last_byte - r.first_byte) / cap for r in res["hf"]
                        if r.ok and r.first_byte is not None and r.last_byte and r.last_byte > r.first_byte])
        seed_e2e = self._med_wall(res.get("seed", []))

        def pct(x: float | None) -> str:
            return "—" if x is None else f"{100 * x:.0f}%"

        self.report.rows.append(Row(
            "P1", "share of the cap: end to end (size / wall); during transfer (hub first → last byte)",
            f"{pct(e2e)}; {pct(transfer)}", f"{pct(hf_e2e)}; {pct(hf_tr)}",
            "—" if seed_e2e is None else pct(self.repo.total / seed_e2e / cap), "—", "≥ 90% of cap (end to end)",
            verdict(None if e2e is None else e2e >= 0.9)))
        self.report.rows.append(Row(
            "P1", "time outside the transfer: start → first hub byte + last hub byte → exit",
            self._overhead_cell(res["mp"]), self._overhead_cell(res["hf"]),
            self._overhead_cell(res.get("seed", [])), "—", "(diagnostic)", "n/a"))

    @staticmethod
    def _overhead_cell(results: list[ProcResult]) -> str:
        pre = median([r.first_byte for r in results if r.ok and r.first_byte is not None])
        post = median([r.wall - r.last_byte for r in results if r.ok and r.last_byte is not None])
        return "—" if pre is None or post is None else f"{fmt_s(pre)} + {fmt_s(post)}"

    def p1b(self) -> None:
        self.hub.clear_faults()
        self.hub.faults.rate_limit_per_connection = self.s.per_conn_cap
        res = self._download_runs("P1b", self.s.per_conn_cap)
        self.hub.clear_faults()
        mp, hf = self._med_wall(res["mp"]), self._med_wall(res["hf"])
        ratio = _ratio(mp, hf)
        self.report.raw["P1b"] = {k: [asdict(r) for r in v] for k, v in res.items()}
        conns = ", ".join(sorted({str(r.cdn_gets) for r in res["mp"] if r.ok})) or "?"
        self.report.rows.append(Row(
            "P1b", "time outside the transfer: start → first hub byte + last hub byte → exit",
            self._overhead_cell(res["mp"]), self._overhead_cell(res["hf"]),
            self._overhead_cell(res.get("seed", [])), "—", "(diagnostic)", "n/a"))
        self.report.rows.insert(len(self.report.rows) - 1, Row(
            "P1b", f"wall time, {fmt_size(self.repo.size)} repo, per-connection cap {fmt_size(self.s.per_conn_cap)}/s",
            self._wall_cell(res["mp"]), self._wall_cell(res["hf"]), self._wall_cell(res.get("seed", [])),
            _fmt_ratio(ratio), "≤ 0.35× hf", verdict(None if ratio is None else ratio <= 0.35),
            note=f"mp used {conns} CDN GETs for the big file"))

    # ---- P2 ----------------------------------------------------------------------------------
    def p2(self) -> None:
        self.hub.clear_faults()
        self.hub.faults.rate_limit_global = self.s.cap
        half = self.repo.size // 2
        resent: dict[str, list[int]] = {t: [] for t in self.tools()}
        notes: dict[str, list[str]] = {t: [] for t in self.tools()}
        runs = self.s.runs if not self.s.quick else 1
        for i in range(runs):
            for tool in rotate(list(resent), i):
                target = self.b.fresh_dir(f"P2-{tool}")
                timeout = self.b.timeout_for(self.repo.total, self.s.cap)
                killed = self.b.run_one(self.b.spec(tool, self.repo.repo_id, target, name=f"P2-{tool}-killed"),
                                        timeout=timeout, size=self.repo.size,
                                        trigger=(half, _kill_all))
                rerun = self.b.run_one(self.b.spec(tool, self.repo.repo_id, target, name=f"P2-{tool}-rerun"),
                                       timeout=timeout, size=self.repo.size)
                ok = rerun.ok and complete(target, self.repo) and killed.triggered_at is not None
                total = killed.served + rerun.served
                extra = total - self.repo.size
                log(f"P2 {tool}: killed at {fmt_mib(killed.served)} (code {killed.code}); rerun code {rerun.code} "
                    f"served {fmt_mib(rerun.served)}; re-sent {fmt_mib(extra)}")
                if ok:
                    resent[tool].append(extra)
                else:
                    notes[tool].append(f"run {i + 1}: kill fired={killed.triggered_at is not None}, "
                                       f"rerun code {rerun.code}")
                shutil.rmtree(target, ignore_errors=True)
                shutil.rmtree(target.parent / f"{target.name}.hf-home", ignore_errors=True)
        self.hub.clear_faults()
        self.report.raw["P2"] = {"resent": resent, "notes": notes}

        def cell(tool: str) -> str:
            if tool not in resent:
                return "—"
            vals = resent[tool]
            med = median(vals)
            if med is None:
                return "failed: " + "; ".join(notes[tool])
            return fmt_mib(med) + (f" ({len(notes[tool])} failed)" if notes[tool] else "")

        mp = median(resent["mp"])
        hf = median(resent["hf"])
        self.report.rows.append(Row(
            "P2", f"bytes re-sent after SIGKILL at 50% of {fmt_size(self.repo.size)}, then rerun",
            cell("mp"), cell("hf"), cell("seed"), _fmt_ratio(_ratio(mp, hf)), "≤ 8 MiB",
            verdict(None if mp is None else mp <= 8 * MiB)))

    # ---- P3 ----------------------------------------------------------------------------------
    def p3(self) -> None:
        self.hub.clear_faults()
        self.hub.faults.rate_limit_global = self.s.cap
        half = self.repo.size // 2
        outcome: dict[str, list[dict[str, Any]]] = {t: [] for t in self.tools()}
        for i in range(self.s.heavy_runs):
            for tool in rotate(list(outcome), i):
                target = self.b.fresh_dir(f"P3-{tool}")
                timeout = self.b.timeout_for(self.repo.total, self.s.cap) + self.s.outage + 240
                first = self.b.run_one(self.b.spec(tool, self.repo.repo_id, target, name=f"P3-{tool}"),
                                       timeout=timeout, size=self.repo.size,
                                       trigger=(half, lambda _procs: self.hub.outage(self.s.outage)))
                if not self.hub.wait_up(self.s.outage + 10):
                    raise RuntimeError("the hub did not come back after the outage")
                item: dict[str, Any] = {"code": first.code, "wall": first.wall, "served": first.served,
                                        "triggered": first.triggered_at}
                total = first.served
                done = first.ok and complete(target, self.repo)
                if not done:  # what an operator does next: run it again
                    rerun = self.b.run_one(self.b.spec(tool, self.repo.repo_id, target, name=f"P3-{tool}-rerun"),
                                           timeout=self.b.timeout_for(self.repo.total, self.s.cap),
                                           size=self.repo.size)
                    item.update(rerun_code=rerun.code, rerun_wall=rerun.wall, rerun_served=rerun.served)
                    total += rerun.served
                item["resent"] = total - self.repo.size
                item["completed_first_try"] = done
                outcome[tool].append(item)
                log(f"P3 {tool}: {item}")
                shutil.rmtree(target, ignore_errors=True)
                shutil.rmtree(target.parent / f"{target.name}.hf-home", ignore_errors=True)
                self.hub.clear_faults()
                self.hub.faults.rate_limit_global = self.s.cap
        self.hub.clear_faults()
        self.report.raw["P3"] = outcome

        def cell(tool: str) -> str:
            items = outcome.get(tool)
            if not items:
                return "—"
            done = sum(1 for x in items if x["completed_first_try"])
            med = median([x["resent"] for x in items])
            if done == len(items):
                return f"completed in {fmt_s(median([x['wall'] for x in items]))}, re-sent {fmt_mib(med or 0)}"
            fail_wall = median([x["wall"] for x in items if not x["completed_first_try"]])
            codes = sorted({str(x["code"]) for x in items if not x["completed_first_try"]})
            return (f"failed (exit {','.join(codes)}) after {fmt_s(fail_wall)}; "
                    f"rerun re-sent {fmt_mib(med or 0)}")

        mp_items = outcome["mp"]
        mp_ok = bool(mp_items) and all(x["completed_first_try"] and x["triggered"] is not None for x in mp_items)
        mp_resent = median([x["resent"] for x in mp_items])
        self.report.rows.append(Row(
            "P3", f"{self.s.outage:g} s hub outage at 50% of {fmt_size(self.repo.size)}",
            cell("mp"), cell("hf"), cell("seed"), "—", "completes, ≤ 8 MiB re-sent",
            verdict(mp_ok and mp_resent is not None and mp_resent <= 8 * MiB)))

    # ---- P4 ----------------------------------------------------------------------------------
    def p4(self) -> None:
        self.hub.clear_faults()
        commit = self.hub.commit_of(self.repo.repo_id, "main")
        target = self.b.fresh_dir("P4-mp")
        cold = self.b.run_one(self.b.spec("mp", self.repo.repo_id, target, revision=commit, name="P4-mp-cold"),
                              timeout=self.b.timeout_for(self.repo.total, None), size=self.repo.size)
        if not cold.ok:
            raise RuntimeError(f"P4 cold run failed with code {cold.code}")
        pinned = [self.b.run_one(self.b.spec("mp", self.repo.repo_id, target, revision=commit, name="P4-mp-warm"),
                                 timeout=self.s.timeout) for _ in range(max(self.s.runs, 3))]
        branch = [self.b.run_one(self.b.spec("mp", self.repo.repo_id, target, revision="main", name="P4-mp-branch"),
                                 timeout=self.s.timeout) for _ in range(max(self.s.runs, 3))]
        hf_warm: list[ProcResult] = []
        if self.s.contrast:
            hft = self.b.fresh_dir("P4-hf")
            hf_cold = self.b.run_one(self.b.spec("hf", self.repo.repo_id, hft, revision=commit, name="P4-hf-cold"),
                                     timeout=self.b.timeout_for(self.repo.total, None), size=self.repo.size)
            if hf_cold.ok:
                hf_warm = [self.b.run_one(self.b.spec("hf", self.repo.repo_id, hft, revision=commit,
                                                      name="P4-hf-warm"), timeout=self.s.timeout)
                           for _ in range(max(self.s.runs, 3))]
            shutil.rmtree(hft, ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)
        self.report.raw["P4"] = {"pinned": [asdict(r) for r in pinned], "branch": [asdict(r) for r in branch],
                                 "hf": [asdict(r) for r in hf_warm]}

        def cell(rs: list[ProcResult]) -> str:
            if not rs:
                return "—"
            if not all(r.ok for r in rs):
                return f"failed ({sum(not r.ok for r in rs)}/{len(rs)})"
            return (f"{fmt_s(median([r.wall for r in rs]))}, {fmt_size(max(r.served_total for r in rs))}, "
                    f"{max(r.requests for r in rs)} requests")

        wall = median([r.wall for r in pinned]) if pinned and all(r.ok for r in pinned) else None
        ok = (wall is not None and wall <= 1.0 and max(r.served_total for r in pinned) == 0
              and max(r.requests for r in pinned) == 0)
        hf_wall = median([r.wall for r in hf_warm]) if hf_warm and all(r.ok for r in hf_warm) else None
        self.report.rows.append(Row(
            "P4", "warm restart to ready, commit pinned (wall, hub bytes, hub requests)",
            cell(pinned), cell(hf_warm), "—", _fmt_ratio(_ratio(wall, hf_wall)), "≤ 1 s, 0 bytes, 0 requests",
            verdict(ok)))
        self.report.rows.append(Row(
            "P4", "warm restart to ready, revision `main` (one API call expected)",
            cell(branch), "—", "—", "—", "(info)", "n/a"))

    # ---- P5 ----------------------------------------------------------------------------------
    def p5(self) -> None:
        for cap in (None, self.s.cap):
            self._p5(cap)

    def _p5(self, cap: int | None) -> None:
        self.hub.clear_faults()
        self.hub.faults.rate_limit_global = cap
        walls: dict[str, list[ProcResult]] = {"checksums": [], "none": []}
        for i in range(self.s.runs):
            for mode in rotate(list(walls), i):
                target = self.b.fresh_dir(f"P5-{mode}")
                r = self.b.run_one(self.b.spec("mp", self.repo.repo_id, target, verify=mode, name=f"P5-{mode}"),
                                   timeout=self.b.timeout_for(self.repo.total, cap), size=self.repo.size)
                walls[mode].append(r)
                log(f"P5 run {i + 1} cap {cap} verify={mode}: code {r.code} {r.wall:.2f}s")
                shutil.rmtree(target, ignore_errors=True)
        self.hub.clear_faults()
        self.report.raw["P5" if cap is None else "P5-capped"] = {k: [asdict(r) for r in v] for k, v in walls.items()}
        c = self._med_wall(walls["checksums"])
        n = self._med_wall(walls["none"])
        ratio = _ratio(c, n)
        link = "uncapped" if cap is None else f"global cap {fmt_size(cap)}/s"
        self.report.rows.append(Row(
            "P5", f"`--verify checksums` / `--verify none`, {fmt_size(self.repo.size)}, {link}",
            f"checksums {self._wall_cell(walls['checksums'])}", f"none {self._wall_cell(walls['none'])} (baseline)",
            "—", _fmt_ratio(ratio), "≤ 1.05", verdict(None if ratio is None else ratio <= 1.05),
            note=f"start→first byte + last byte→exit: checksums {self._overhead_cell(walls['checksums'])}, "
                 f"none {self._overhead_cell(walls['none'])}"))

    # ---- P6 ----------------------------------------------------------------------------------
    def p6(self, big: RepoData) -> None:
        self.hub.clear_faults()
        tools = ["mp"] + (["hf"] if self.s.contrast else [])
        rss: dict[str, dict[int, list[int]]] = {t: {self.repo.size: [], big.size: []} for t in tools}
        for i in range(self.s.heavy_runs):
            for repo in (self.repo, big):
                for tool in rotate(tools, i):
                    target = self.b.fresh_dir(f"P6-{tool}")
                    r = self.b.run_one(self.b.spec(tool, repo.repo_id, target, name=f"P6-{tool}"),
                                       timeout=self.b.timeout_for(repo.total, None), size=repo.size)
                    log(f"P6 {tool} {fmt_size(repo.size)}: code {r.code} {r.wall:.1f}s rss {r.peak_rss / MB:.0f} MB")
                    if r.ok:
                        rss[tool][repo.size].append(r.peak_rss)
                    shutil.rmtree(target, ignore_errors=True)
                    shutil.rmtree(target.parent / f"{target.name}.hf-home", ignore_errors=True)
        self.report.raw["P6"] = {t: {str(k): v for k, v in d.items()} for t, d in rss.items()}

        def cell(tool: str) -> str:
            if tool not in rss:
                return "—"
            a, b = median(rss[tool][self.repo.size]), median(rss[tool][big.size])
            return (f"{'failed' if a is None else f'{a / MB:.0f} MB'} → "
                    f"{'failed' if b is None else f'{b / MB:.0f} MB'}")

        a, b = median(rss["mp"][self.repo.size]), median(rss["mp"][big.size])
        ok = None if a is None or b is None else (max(a, b) <= 150 * MB and b <= a * 1.1 + 5 * MB)
        self.report.rows.append(Row(
            "P6", f"peak RSS downloading {fmt_size(self.repo.size)} → {fmt_size(big.size)} (wait4 ru_maxrss)",
            cell("mp"), cell("hf"), "—", _fmt_ratio(_ratio(b, a)), "≤ 150 MB, flat", verdict(ok)))

    # ---- P7 ----------------------------------------------------------------------------------
    def p7(self) -> None:
        self.hub.clear_faults()
        self.hub.faults.rate_limit_global = self.s.cap
        tools = ["mp"] + (["hf"] if self.s.contrast else [])
        out: dict[str, list[dict[str, Any]]] = {t: [] for t in tools}
        runs = 1 if self.s.quick else max(1, min(self.s.runs, 2))
        for i in range(runs):
            for tool in rotate(tools, i):
                target = self.b.fresh_dir(f"P7-{tool}")
                specs = [self.b.spec(tool, self.repo.repo_id, target, name=f"P7-{tool}-{k}") for k in range(4)]
                for k, sp in enumerate(specs):  # each process its own HF_HOME, as in separate pods
                    sp.env["HF_HOME"] = str(target.parent / f"{target.name}.hf-home-{k}")
                rs = self.b.run(specs, timeout=self.b.timeout_for(4 * self.repo.total, self.s.cap), size=self.repo.size)
                item = {"codes": [r.code for r in rs], "served": rs[0].served,
                        "wall": max(r.wall for r in rs), "ok": all(r.ok for r in rs) and complete(target, self.repo)}
                out[tool].append(item)
                log(f"P7 {tool}: {item}")
                shutil.rmtree(target, ignore_errors=True)
                for k in range(4):
                    shutil.rmtree(target.parent / f"{target.name}.hf-home-{k}", ignore_errors=True)
        self.hub.clear_faults()
        self.report.raw["P7"] = out

        def cell(tool: str) -> str:
            items = out.get(tool)
            if not items:
                return "—"
            x = median([it["served"] / self.repo.size for it in items]) or 0.0
            bad = [it for it in items if not it["ok"]]
            return (f"{x:.2f}× repo, all ready in {fmt_s(median([it['wall'] for it in items]))}"
                    + (f" ({len(bad)} runs with a failure: codes {bad[0]['codes']})" if bad else ""))

        mp = out["mp"]
        x = median([it["served"] / self.repo.size for it in mp])
        ok = bool(mp) and all(it["ok"] for it in mp) and x is not None and x <= 1.0 + 1e-6
        self.report.rows.append(Row(
            "P7", f"hub bytes, 4 processes sharing one target dir, cap {fmt_size(self.s.cap)}/s",
            cell("mp"), cell("hf"), "—", "—", "1.0× repo size", verdict(ok)))

    # ---- P8 ----------------------------------------------------------------------------------
    def p8(self) -> None:
        self.hub.clear_faults()
        repo_id = "bench/tiny"
        self.hub.add_repo(repo_id, tiny_repo_files())
        target = self.b.fresh_dir("P8-ready")
        r = self.b.run_one(self.b.spec("mp", repo_id, target, name="P8-provision"), timeout=self.s.timeout)
        if not r.ok:
            raise RuntimeError(f"P8: provisioning the tiny repo failed with code {r.code}")
        env = self.b.base_env(target.parent / "P8.hf-home")
        script = self.b._script("model-provisioner")
        cmds = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "python -m provisioner check": [sys.executable, "-m", "provisioner", "check", str(target)],
            "model-provisioner check": [script, "check", str(target)],
        }
        times: dict[str, list[float]] = {k: [] for k in cmds}
        codes: dict[str, set[int]] = {k: set() for k in cmds}
        for i in range(self.s.check_iterations):
            for name in rotate(list(cmds), i):
                t = time.perf_counter()
                p = subprocess.run(cmds[name], env=env, capture_output=True, timeout=30, cwd=str(self.b.work))
                times[name].append(time.perf_counter() - t)
                codes[name].add(p.returncode)
        shutil.rmtree(target, ignore_errors=True)
        self.report.raw["P8"] = {"times": times, "codes": {k: sorted(v) for k, v in codes.items()}}
        base = median(times["python -c pass"]) or 0.0
        for name in ("python -m provisioner check", "model-provisioner check"):
            med = median(times[name])
            ok_codes = codes[name] == {0}
            self.report.rows.append(Row(
                "P8", f"`{name} DIR` latency (12-file ready dir), median of {self.s.check_iterations}",
                f"{fmt_s(med)} (−interpreter: {fmt_s(None if med is None else med - base)})",
                f"`python -c pass` {fmt_s(base)}", "—", _fmt_ratio(_ratio(med, base)), "≤ 100 ms",
                verdict(None if med is None else (med <= 0.100 and ok_codes)),
                note="" if ok_codes else f"exit codes {sorted(codes[name])}"))


    # ---- P9 ----------------------------------------------------------------------------------
    def p9(self) -> None:
        import server_load  # next to this file (benchmarks/ is sys.path[0] when run as a script)

        # slow enough that the download outlasts the load (~20 s of transfer), never below 1 MiB/s
        self.hub.faults.rate_limit_global = max(MiB, min(self.s.cap, self.repo.total // 20))
        target = self.b.fresh_dir("P9")
        res = server_load.measure(hub_url=self.hub.url, repo_id=self.repo.repo_id, target=target / "m",
                                  env=self.b.base_env(target / "hf-home"), log_path=self.b.work / "P9.log")
        shutil.rmtree(target, ignore_errors=True)
        self.report.raw["P9"] = res
        log(f"P9: {server_load.summary(res)}")
        self.report.rows.append(Row(
            "P9", f"health server: {res['clients']} scrapers × {res['scrapes']} GET /metrics during a download, "
                  f"+{res['stuck']} stuck clients, probes every 50 ms",
            server_load.summary(res), "—", "—", "—",
            f"/metrics p99 ≤ {server_load.TARGET_P99 * 1000:.0f} ms, 0 failed, 0 non-JSON lines",
            verdict(server_load.ok(res))))

    # ---- P10 ---------------------------------------------------------------------------------
    def p10(self) -> None:
        n = small_files.file_count(quick=self.s.quick)
        res = small_files.run(self.b, n=n, runs=self.s.runs, tools=self.tools(), log=log)
        self.report.raw["P10"] = {k: [asdict(r) for r in v] for k, v in res.items()}
        ratio = _ratio(self._med_wall(res["mp"]), self._med_wall(res["hf"]))
        self.report.rows.append(Row(
            "P10", f"wall time, {n} files of {fmt_size(small_files.FILE_SIZE)} in {small_files.FOLDERS} folders "
                  f"(half LFS), global cap {fmt_size(small_files.CAP)}/s",
            small_files.cell(res["mp"], n=n), small_files.cell(res["hf"], n=n),
            small_files.cell(res.get("seed", []), n=n), _fmt_ratio(ratio), "≤ 0.8× hf",
            verdict(None if ratio is None else ratio <= 0.8)))


# ------------------------------------------------------------------------------------------ output


def render(report: Report) -> str:
    m = report.machine
    s = report.settings
    lines = [
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory'] / GiB:.1f} GiB RAM, Linux {m['kernel']}, "
        f"Python {m['python']}, huggingface_hub {m['huggingface_hub']}; load avg at start "
        f"{m['loadavg_start'][0]:.2f}, at end {m.get('loadavg_end', (0.0,))[0]:.2f}; "
        f"model-provisioner {m['git']} (sources {m['code_start']}); {m['date']}, {m.get('seconds', 0):.0f} s.",
        "",
        f"Settings: {'--quick, ' if s['quick'] else ''}{s['runs']} run(s) (P3/P6: {s['heavy_runs']}), "
        f"repo = {fmt_size(s['size'])} `{BIG_FILE}` + config.json, P6 also {fmt_size(s['big_size'])}; "
        f"global cap {fmt_size(s['cap'])}/s, per-connection cap {fmt_size(s['per_conn_cap'])}/s, "
        f"outage {s['outage']:g} s. Times are medians; ratios are model-provisioner / the baseline column, "
        "measured in the same invocation. All traffic is 127.0.0.1 to the in-process hub emulator.",
        "",
        "| # | scenario | model-provisioner | hf download (baseline) | snapshot_download (seed) | ratio | target "
        "| result |",
        "|---|---|---|---|---|---|---|---|",
    ]
    if m.get("code_end") and m["code_end"] != m["code_start"]:
        lines[1:1] = ["", f"**Warning: provisioner/ changed during this run (sources {m['code_start']} → "
                          f"{m['code_end']}); rows may mix engine versions.**"]
    for r in report.rows:
        note = f" ({r.note})" if r.note else ""
        lines.append(f"| {r.scenario} | {r.what}{note} | {r.mp} | {r.baseline} | {r.seed} | {r.ratio} | "
                     f"{r.target} | {r.result} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny files, 1 run, every scenario (< 1 min; the smoke test)")
    ap.add_argument("--runs", type=int, default=None, help="runs per scenario (medians); default 3, quick 1")
    ap.add_argument("--heavy-runs", type=int, default=1, help="runs of P3 (outage) and P6 (big file); default 1")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS),
                    help=f"comma-separated subset of {','.join(SCENARIOS)}")
    ap.add_argument("--size", type=parse_size, default=None, help="big file size (default 1GiB, quick 4MiB)")
    ap.add_argument("--big-size", type=parse_size, default=None, help="P6 second size (default 4× --size)")
    ap.add_argument("--cap", type=parse_size, default=None, help="global link cap per second (default 200MiB)")
    ap.add_argument("--per-conn-cap", type=parse_size, default=None,
                    help="P1b per-connection cap per second (default 50MiB)")
    ap.add_argument("--outage", type=float, default=None, help="P3 outage seconds (default 30, quick 1)")
    ap.add_argument("--check-iterations", type=int, default=None, help="P8 iterations (default 15, quick 3)")
    ap.add_argument("--no-seed", action="store_true", help="skip the seed's bare snapshot_download")
    ap.add_argument("--before", type=Path, default=None,
                    help="P11: also time the provisioner from this source tree (before/after in one session)")
    default_cache = os.environ.get("BENCH_CACHE") or str(Path(tempfile.gettempdir()) / "model-provisioner-bench")
    ap.add_argument("--cache-dir", type=Path, default=Path(default_cache),
                    help=f"random data cache and scratch space (default {default_cache}; env BENCH_CACHE)")
    ap.add_argument("--output", type=Path, default=None, help="also write the markdown table here")
    ap.add_argument("--json", type=Path, default=None, help="also write raw results here")
    return ap.parse_args(argv)


def make_settings(ns: argparse.Namespace) -> Settings:
    quick = bool(ns.quick)
    wanted = tuple(x.strip() for x in ns.scenarios.split(",") if x.strip())
    lower = {s.lower(): s for s in SCENARIOS}
    unknown = [x for x in wanted if x.lower() not in lower]
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    size = ns.size or (4 * MiB if quick else GiB)
    return Settings(
        quick=quick,
        runs=max(1, ns.runs or (1 if quick else 3)),
        heavy_runs=max(1, ns.heavy_runs if not quick else 1),
        size=size,
        big_size=ns.big_size or (4 * size if not quick else 2 * size),
        cap=ns.cap or (16 * MiB if quick else 200 * MiB),
        per_conn_cap=ns.per_conn_cap or (8 * MiB if quick else 50 * MiB),
        outage=ns.outage if ns.outage is not None else (1.0 if quick else 30.0),
        check_iterations=max(1, ns.check_iterations or (3 if quick else 15)),
        scenarios=tuple(lower[x.lower()] for x in wanted),
        cache=ns.cache_dir,
        with_seed=not ns.no_seed and not quick,
        contrast=not quick,
        timeout=60.0,
    )


@contextlib.contextmanager
def scratch(cache: Path) -> Iterator[Path]:
    work = cache / "work" / str(os.getpid())
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    ns = parse_args(argv)
    settings = make_settings(ns)
    settings.cache.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    report = Report(settings={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
                    machine=machine_info())
    repo = ensure_repo_data(settings.cache, settings.size)
    big = ensure_repo_data(settings.cache, settings.big_size) if "P6" in settings.scenarios else None
    with HubEmulator() as hub, scratch(settings.cache) as work:
        hub.add_repo(repo.repo_id, repo.path, hashes=repo.hashes)
        if big is not None:
            hub.add_repo(big.repo_id, big.path, hashes=big.hashes)
        bench = Bench(settings, hub, work)
        sc = Scenarios(bench, repo, report)
        steps: dict[str, Callable[[], None]] = {
            "P1": sc.p1, "P1b": sc.p1b, "P2": sc.p2, "P3": sc.p3, "P4": sc.p4, "P5": sc.p5,
            "P6": (lambda: sc.p6(big)) if big is not None else (lambda: None),
            "P7": sc.p7, "P8": sc.p8, "P9": sc.p9, "P10": sc.p10,
            "P11": lambda: p11(bench, report, Row, before=ns.before),
        }
        for name in settings.scenarios:
            log(f"--- {name}")
            t = time.monotonic()
            try:
                steps[name]()
            except Exception as exc:  # a broken scenario still gets its row; the others still run
                log(f"{name} failed: {type(exc).__name__}: {exc}")
                report.rows.append(Row(name, "scenario failed to run", f"error: {type(exc).__name__}: {exc}",
                                       "—", "—", "—", "—", "error"))
            finally:
                hub.clear_faults()
                if not hub.is_up:
                    hub.up()
            log(f"{name} took {time.monotonic() - t:.1f}s")
    report.machine["loadavg_end"] = os.getloadavg()
    report.machine["code_end"] = code_fingerprint()
    report.machine["seconds"] = round(time.monotonic() - started, 1)
    text = render(report)
    print(text)
    if ns.output:
        ns.output.write_text(text)
    if ns.json:
        ns.json.write_text(json.dumps({"settings": report.settings, "machine": report.machine,
                                       "rows": [asdict(r) for r in report.rows], "raw": report.raw},
                                      indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
