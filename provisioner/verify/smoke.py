"""The parent side of the embedding smoke test run before a sentence-transformers model is marked ready.

The test runs in a child process (`python -m provisioner.verify.smoke_child DIR --wait`, see that
module for the checks): torch and sentence-transformers cost ~420 MB RSS and 5-8 s to import, and a
provisioner that stays on as a sidecar must not keep them. `SmokeChild` starts that child early, while
the files are still downloading, so its imports overlap the transfer; `run` then sends it `go` once the
checksums are verified (the last byte -> ready gap is the model load and a few encodes, not the
imports), and `close` kills it whatever happened (stop, a failed fetch). `run_smoke_test` is the
one-shot form (start, go, close). The child prints exactly one JSON line on stdout (its report) and
exits 0 on pass, 1 on fail; a child that crashes, hangs or prints garbage becomes a failed
`SmokeResult` with a one-line `detail`, never a traceback here.

`check_smoke_dependencies` is the preflight: run after planning, before fetching, it turns a
missing `embed` extra into a ConfigError (exit 2) instead of a failed test after the download.

Imports the standard library, `context` (stop handling), `errors`, `model_files` and `smoke_child`
(for its module name and `one_line`; it imports numpy/torch only inside its functions), never torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
    seconds: float  # wall time from `go` to the result (the child's imports included unless it started early)
    detail: str  # one line: why it failed, or a short summary when it passed
    reference_max_abs_diff: float | None = None
    peak_rss_mib: float | None = None  # the child's peak resident set size
    head_start_seconds: float | None = None  # how long the child had been running (importing) before `go`
    import_seconds: float | None = None  # the child's imports before `go` (started early)
    idle_before_go_seconds: float | None = None  # ready and waiting before `go`; 0: imports outlasted the download

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
    argv = [sys.executable, "-m", smoke_child.__name__, str(model_dir), "--wait"]
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
        import_seconds=_opt_float(report.get("import_seconds")),
        idle_before_go_seconds=_opt_float(report.get("idle_before_go_seconds")),
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


class SmokeChild:
    """One smoke-test child, started before the files exist: its imports run while bytes flow.

    Use as a context manager (the pipeline's owner holds it across fetch + verify): leaving it kills
    the child if it is still running, so a stop or a failed fetch never leaves it behind. `run` may be
    called once. Starting never raises: a child that cannot start fails `run` with its reason.
    """

    def __init__(self, model_dir: Path, *, reference: Path | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.reference = Path(reference) if reference is not None else None
        self.started = time.monotonic()
        self._tmp = _make_temp_dir(self.model_dir)
        self._out_path, self._err_path = self._tmp / "stdout", self._tmp / "stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_error: str | None = None
        with self._out_path.open("wb") as out, self._err_path.open("wb") as err:
            try:
                self.proc = subprocess.Popen(_child_argv(self.model_dir, self.reference), stdin=subprocess.PIPE,
                                             stdout=out, stderr=err, env=_child_env(self._tmp), cwd=str(self._tmp))
            except OSError as exc:  # no interpreter / no fork: the test fails with this reason when it is due
                self.start_error = f"cannot start the smoke test child: {exc}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def __enter__(self) -> SmokeChild:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill the child if it still runs (stop, failure, or a test that was never due), remove its temp dir."""
        proc = self.proc
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()  # no timeout: SIGKILL cannot be ignored
            if proc.stdin is not None:
                with contextlib.suppress(OSError):  # the pipe is broken once the child is gone: nothing to flush
                    proc.stdin.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def run(self, *, timeout: float = DEFAULT_TIMEOUT, stop: threading.Event | None = None) -> SmokeResult:
        """Tell the child to test the files now; its result (never raises for a bad model).

        `timeout` counts from now (the imports done early are free). `stop` set: the child is killed
        and `errors.Interrupted` is raised.
        """
        go = time.monotonic()
        head_start = round(go - self.started, 3)
        if not is_sentence_transformers_dir(self.model_dir):
            return _failed(f"{self.model_dir} is not a sentence-transformers model (no modules.json)", 0.0)
        if self.reference is not None and not self.reference.is_file():
            return _failed(f"reference embeddings file {self.reference} not found", 0.0)
        proc = self.proc
        if proc is None:
            return _failed(self.start_error or "smoke test child not started", 0.0)
        try:
            assert proc.stdin is not None  # started with stdin=PIPE
            proc.stdin.write(b"go\n")
            proc.stdin.close()
        except OSError:  # the child is already gone (crashed while importing): its exit status says why
            pass
        try:
            finished = _wait(proc, deadline=go + timeout, stop=stop)
        finally:
            if proc.poll() is None:  # timed out or stopped: do not let it run on
                proc.kill()
                proc.wait()  # no timeout: SIGKILL cannot be ignored
        seconds = time.monotonic() - go
        if not finished:
            return _failed(f"smoke test timed out after {timeout:g}s (child killed)", seconds)
        report = _parse_report(self._out_path.read_text(encoding="utf-8", errors="replace"))
        if report is None:
            last = _last_line(self._err_path)
            return _failed(f"smoke test child {_signal_name(proc.returncode)} without a result"
                           + (f"; last stderr line: {last}" if last else ""), seconds)
        result = _result_from_report(report, returncode=proc.returncode, seconds=seconds)
        return dataclasses.replace(result, head_start_seconds=head_start)


def run_smoke_test(model_dir: Path, *, reference: Path | None = None, timeout: float = DEFAULT_TIMEOUT,
                   stop: threading.Event | None = None) -> SmokeResult:
    """Run the smoke test in a child process and return its result (never raises for a bad model).

    `stop` (optional): when set, the child is killed and `errors.Interrupted` is raised.
    """
    model_dir = Path(model_dir)
    if not is_sentence_transformers_dir(model_dir):  # checked before starting a child that would be wasted
        return _failed(f"{model_dir} is not a sentence-transformers model (no modules.json)", 0.0)
    with SmokeChild(model_dir, reference=reference) as child:
        return dataclasses.replace(child.run(timeout=timeout, stop=stop), head_start_seconds=None)
