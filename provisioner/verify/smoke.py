"""The parent side of the embedding smoke test run before a sentence-transformers model is marked ready.

`run_smoke_test` runs the test in a child process (`python -m provisioner.verify.smoke_child DIR`,
see that module for the checks): torch and sentence-transformers cost ~420 MB RSS and 5-8 s to
import, and a provisioner that stays on as a sidecar must not keep them. The child prints exactly
one JSON line on stdout (its report) and exits 0 on pass, 1 on fail; a child that crashes, hangs or
prints garbage becomes a failed `SmokeResult` with a one-line `detail`, never a traceback here.

`check_smoke_dependencies` is the preflight: run after planning, before fetching, it turns a
missing `embed` extra into a ConfigError (exit 2) instead of a failed test after the download.

Imports the standard library, `context` (stop handling), `errors`, `model_files` and `smoke_child`
(for its module name and `one_line`; it imports numpy/torch only inside its functions), never torch.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..context import interrupted
from ..errors import ConfigError
from . import smoke_child
from .model_files import is_sentence_transformers_dir
from .smoke_child import one_line

DEFAULT_TIMEOUT = 600.0
# What the child imports; the `embed` extra (and the full image) installs them.
SMOKE_PACKAGES: tuple[str, ...] = ("sentence_transformers", "numpy", "torch")

# Environment of the child: no network, no telemetry, and every cache/temp path in a private temp dir
# so that a readOnlyRootFilesystem container works.
_OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONDONTWRITEBYTECODE": "1",
}
_TEMP_ENV = ("HF_HOME", "TMPDIR", "TMP", "TEMP", "XDG_CACHE_HOME", "TORCH_HOME", "MPLCONFIGDIR")
_SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")  # offline anyway: the child never needs them


@dataclass(frozen=True)
class SmokeResult:
    ok: bool
    dim: int | None  # length of the vectors the model produced
    expected_dim: int | None  # the configured dimension (model, cross-checked with the files)
    paraphrase_cosine: float | None
    unrelated_cosine: float | None
    margin: float | None  # paraphrase_cosine - unrelated_cosine (must be >= MIN_MARGIN)
    norms: tuple[float, float] | None  # (min, max) vector norm
    seconds: float  # wall time including the child's imports
    detail: str  # one line: why it failed, or a short summary when it passed
    reference_max_abs_diff: float | None = None
    peak_rss_mib: float | None = None  # the child's peak resident set size

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["norms"] = list(self.norms) if self.norms is not None else None
        return d


def check_smoke_dependencies() -> None:
    """Raise ConfigError (one line) when a package the smoke test needs is not installed.

    Cheap: `find_spec` only looks for the packages, it imports none of them. Called after planning
    and before fetching, so a slim install with `--verify full` fails in seconds, not after the download.
    """
    missing = []
    for name in SMOKE_PACKAGES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ImportError:  # a finder refused the name: it cannot be imported either
            found = False
        if not found:
            missing.append(name)
    if missing:
        raise ConfigError(
            f"--verify full runs the embedding smoke test, which needs {', '.join(missing)} (not installed here): "
            "use the full image (EMBED=1, the default build) or pip install 'model-provisioner[embed]', "
            "or set --verify checksums (PROVISIONER_VERIFY=checksums)", setting="verify")


def _failed(detail: str, seconds: float) -> SmokeResult:
    return SmokeResult(ok=False, dim=None, expected_dim=None, paraphrase_cosine=None, unrelated_cosine=None,
                       margin=None, norms=None, seconds=round(seconds, 3), detail=one_line(detail))


def _child_argv(model_dir: Path, reference: Path | None) -> list[str]:
    argv = [sys.executable, "-m", smoke_child.__name__, str(model_dir)]
    if reference is not None:
        argv += ["--reference", str(reference)]
    return argv


def _child_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SECRET_ENV}
    env.update(_OFFLINE_ENV)
    for name in _TEMP_ENV:
        env[name] = str(tmp)
    # The child must import this package even when it is not installed (tests, a source checkout).
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    return env


def _make_temp_dir(model_dir: Path) -> Path:
    try:
        return Path(tempfile.mkdtemp(prefix="provisioner-smoke-"))
    except OSError:  # no writable temp dir (read-only root without an emptyDir): use the target's state dir
        state = model_dir / ".provisioner"
        state.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="smoke-", dir=state))


def _signal_name(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:  # not a known signal number
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:  # the log file vanished: nothing to quote
        return ""
    return lines[-1] if lines else ""


def _parse_report(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            data = json.loads(line)
        except ValueError:  # not our report line: keep looking
            continue
        if isinstance(data, dict) and "ok" in data:
            return data
    return None


def _opt_float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _opt_int(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _result_from_report(report: dict[str, Any], *, returncode: int, seconds: float) -> SmokeResult:
    norms = report.get("norms")
    norm_pair: tuple[float, float] | None = None
    if isinstance(norms, list) and len(norms) == 2 and all(_opt_float(n) is not None for n in norms):
        norm_pair = (float(norms[0]), float(norms[1]))
    ok = bool(report.get("ok")) and returncode == 0
    detail = str(report.get("detail", ""))
    if bool(report.get("ok")) and returncode != 0:
        detail = f"child reported success but {_signal_name(returncode)}"
    return SmokeResult(
        ok=ok,
        dim=_opt_int(report.get("dim")),
        expected_dim=_opt_int(report.get("expected_dim")),
        paraphrase_cosine=_opt_float(report.get("paraphrase_cosine")),
        unrelated_cosine=_opt_float(report.get("unrelated_cosine")),
        margin=_opt_float(report.get("margin")),
        norms=norm_pair,
        seconds=round(seconds, 3),
        detail=one_line(detail),
        reference_max_abs_diff=_opt_float(report.get("reference_max_abs_diff")),
        peak_rss_mib=_opt_float(report.get("peak_rss_mib")),
    )


def _wait(proc: subprocess.Popen[bytes], *, deadline: float, stop: threading.Event | None) -> bool:
    """Wait for the child; False on timeout. Raises Interrupted when `stop` is set."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        try:
            proc.wait(timeout=remaining if stop is None else min(remaining, 0.1))
            return True
        except subprocess.TimeoutExpired:  # still running: check the deadline and the stop flag
            if stop is not None and stop.is_set():
                raise interrupted(stop) from None


def run_smoke_test(model_dir: Path, *, reference: Path | None = None, timeout: float = DEFAULT_TIMEOUT,
                   stop: threading.Event | None = None) -> SmokeResult:
    """Run the smoke test in a child process and return its result (never raises for a bad model).

    `stop` (optional): when set, the child is killed and `errors.Interrupted` is raised.
    """
    model_dir = Path(model_dir)
    started = time.monotonic()
    if not is_sentence_transformers_dir(model_dir):
        return _failed(f"{model_dir} is not a sentence-transformers model (no modules.json)", 0.0)
    if reference is not None and not Path(reference).is_file():
        return _failed(f"reference embeddings file {reference} not found", 0.0)
    tmp = _make_temp_dir(model_dir)
    try:
        out_path, err_path = tmp / "stdout", tmp / "stderr"
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(_child_argv(model_dir, reference), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=err, env=_child_env(tmp), cwd=str(tmp))
            try:
                finished = _wait(proc, deadline=started + timeout, stop=stop)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        seconds = time.monotonic() - started
        if not finished:
            return _failed(f"smoke test timed out after {timeout:g}s (child killed)", seconds)
        report = _parse_report(out_path.read_text(encoding="utf-8", errors="replace"))
        if report is None:
            last = _last_line(err_path)
            return _failed(f"smoke test child {_signal_name(proc.returncode)} without a result"
                           + (f"; last stderr line: {last}" if last else ""), seconds)
        return _result_from_report(report, returncode=proc.returncode, seconds=seconds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
