"""The embedding smoke test run before a sentence-transformers model is marked ready.

`run_smoke_test` runs the test in a child process (`python -m provisioner.smoke DIR`): torch and
sentence-transformers cost ~420 MB RSS and 5-8 s to import, and a provisioner that stays on as a
sidecar must not keep them. The child prints exactly one JSON line on stdout (its report) and exits
0 on pass, 1 on fail; a child that crashes, hangs or prints garbage becomes a failed `SmokeResult`
with a one-line `detail`, never a traceback in the parent.

Checks (all must hold):

* dimension: the vectors' length == the model's configured dimension
  (`get_embedding_dimension()`) == the dimension the files on disk declare (the last Dense layer's
  `out_features`, else the Pooling config's dimension times its pooling modes; the Pooling input is
  also cross-checked against the transformer's `hidden_size`);
* every value is finite; every norm > 0, and ~1 when modules.json has a Normalize module;
* cos(paraphrase pair) >= MIN_PARAPHRASE_COSINE and cos(pair) - cos(unrelated) >= MIN_MARGIN;
* optional reference vectors (`{"sentences", "embeddings", "tolerance"}`): max |diff| <= tolerance.

This module imports only the standard library at import time; `is_sentence_transformers_dir` and
`expected_dim_from_disk` never touch torch.
"""

from __future__ import annotations

import argparse
import contextlib
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
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .context import interrupted

# Plain English that multilingual models (the default paraphrase-multilingual-MiniLM-L12-v2) handle too.
# Measured with all-MiniLM-L6-v2: cos(pair) = 0.755, cos(pair[0], unrelated) = -0.105.
PARAPHRASE_PAIR: tuple[str, str] = ("A man is eating food.", "A man is eating a piece of bread.")
UNRELATED: str = "The girl is carrying a baby."
MIN_PARAPHRASE_COSINE = 0.5
MIN_MARGIN = 0.2
NORM_TOLERANCE = 1e-3  # |norm - 1| allowed when the model normalizes
DEFAULT_REFERENCE_TOLERANCE = 1e-3
DEFAULT_TIMEOUT = 600.0
_DETAIL_MAX = 300

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


# ---- file inspection (stdlib only) ----------------------------------------------------------------

def is_sentence_transformers_dir(path: Path) -> bool:
    """A sentence-transformers model directory (modules.json or config_sentence_transformers.json)."""
    path = Path(path)
    return (path / "modules.json").is_file() or (path / "config_sentence_transformers.json").is_file()


def _read_json(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def _modules(model_dir: Path) -> list[dict[str, Any]]:
    path = model_dir / "modules.json"
    if not path.is_file():
        return []
    data = _read_json(path)
    if not isinstance(data, list):
        raise ValueError("modules.json is not a list")
    return [m for m in data if isinstance(m, dict)]


def _module_kind(module: dict[str, Any]) -> str:
    return str(module.get("type", "")).rsplit(".", 1)[-1]


def has_normalize_module(model_dir: Path) -> bool:
    return any(_module_kind(m) == "Normalize" for m in _modules(Path(model_dir)))


def _pooling_modes(cfg: dict[str, Any]) -> int:
    mode = cfg.get("pooling_mode")
    if isinstance(mode, str):
        return 1
    if isinstance(mode, list):
        return max(1, len(mode))
    # legacy format: one boolean per mode
    return max(1, sum(1 for k, v in cfg.items() if k.startswith("pooling_mode_") and v is True))


def _hidden_size(cfg: dict[str, Any]) -> int | None:
    for key in ("hidden_size", "d_model", "dim"):
        value = cfg.get(key)
        if isinstance(value, int):
            return value
    return None


def expected_dim_from_disk(model_dir: Path) -> tuple[int | None, list[str]]:
    """(the output dimension the files declare, inconsistencies found). None when nothing declares it.

    Walks modules.json in order: Transformer -> hidden_size, Pooling -> dimension x modes,
    Dense -> out_features (in_features must match what comes in); then `truncate_dim`.
    """
    model_dir = Path(model_dir)
    problems: list[str] = []
    current: int | None = None
    for module in _modules(model_dir):
        kind = _module_kind(module)
        cfg_path = model_dir / str(module.get("path", "")) / "config.json"
        if kind == "Transformer":
            if cfg_path.is_file():
                current = _hidden_size(_read_json(cfg_path))
        elif kind == "Pooling":
            if not cfg_path.is_file():
                problems.append(f"{module.get('path')}/config.json missing")
                continue
            cfg = _read_json(cfg_path)
            dim = cfg.get("embedding_dimension", cfg.get("word_embedding_dimension"))
            if not isinstance(dim, int):
                problems.append(f"{module.get('path')}/config.json has no embedding dimension")
                continue
            if current is not None and dim != current:
                problems.append(f"{module.get('path')}/config.json dimension {dim} != transformer hidden size {current}")
            current = dim * _pooling_modes(cfg)
        elif kind == "Dense":
            if not cfg_path.is_file():
                problems.append(f"{module.get('path')}/config.json missing")
                continue
            cfg = _read_json(cfg_path)
            in_f, out_f = cfg.get("in_features"), cfg.get("out_features")
            if current is not None and isinstance(in_f, int) and in_f != current:
                problems.append(f"{module.get('path')} in_features {in_f} != incoming dimension {current}")
            current = out_f if isinstance(out_f, int) else None
    st_cfg = model_dir / "config_sentence_transformers.json"
    if current is not None and st_cfg.is_file():
        truncate = _read_json(st_cfg).get("truncate_dim")
        if isinstance(truncate, int) and truncate > 0:
            current = min(current, truncate)
    return current, problems


# ---- parent side ----------------------------------------------------------------------------------

def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _DETAIL_MAX else line[: _DETAIL_MAX - 3] + "..."


def _failed(detail: str, seconds: float) -> SmokeResult:
    return SmokeResult(ok=False, dim=None, expected_dim=None, paraphrase_cosine=None, unrelated_cosine=None,
                       margin=None, norms=None, seconds=round(seconds, 3), detail=_one_line(detail))


def _child_argv(model_dir: Path, reference: Path | None) -> list[str]:
    argv = [sys.executable, "-m", "provisioner.smoke", str(model_dir)]
    if reference is not None:
        argv += ["--reference", str(reference)]
    return argv


def _child_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SECRET_ENV}
    env.update(_OFFLINE_ENV)
    for name in _TEMP_ENV:
        env[name] = str(tmp)
    # The child must import this package even when it is not installed (tests, a source checkout).
    package_root = str(Path(__file__).resolve().parent.parent)
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
        detail=_one_line(detail),
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


# ---- child side (torch lives only here) -----------------------------------------------------------

def _cosine(a: Any, b: Any) -> float:
    na, nb = float((a @ a) ** 0.5), float((b @ b) ** 0.5)
    if na == 0.0 or nb == 0.0:
        return float("nan")
    return float(a @ b) / (na * nb)


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _peak_rss_mib() -> float | None:
    try:
        import resource
    except ImportError:  # not on POSIX: no measurement
        return None
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def _load_reference(path: Path) -> tuple[list[str], list[list[float]], float]:
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ValueError("reference file must be a JSON object")
    sentences, embeddings = data.get("sentences"), data.get("embeddings")
    tolerance = data.get("tolerance", DEFAULT_REFERENCE_TOLERANCE)
    if not isinstance(sentences, list) or not sentences or not all(isinstance(s, str) for s in sentences):
        raise ValueError("reference 'sentences' must be a non-empty list of strings")
    if not isinstance(embeddings, list) or len(embeddings) != len(sentences):
        raise ValueError("reference 'embeddings' must have one vector per sentence")
    if not isinstance(tolerance, int | float) or not tolerance >= 0:
        raise ValueError("reference 'tolerance' must be a number >= 0")
    return sentences, embeddings, float(tolerance)


def _load_model(model_dir: Path) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)


def _model_dim(model: Any) -> int | None:
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    dim = getter()
    return int(dim) if dim is not None else None


def evaluate(model_dir: Path, *, reference: Path | None = None) -> dict[str, Any]:
    """The smoke test itself (imports torch). Returns the report dict the child prints."""
    import numpy as np

    report: dict[str, Any] = {"ok": False, "dim": None, "expected_dim": None, "paraphrase_cosine": None,
                              "unrelated_cosine": None, "margin": None, "norms": None,
                              "reference_max_abs_diff": None}
    failures: list[str] = []
    disk_dim, problems = expected_dim_from_disk(model_dir)
    failures += problems
    normalize = has_normalize_module(model_dir)

    model = _load_model(model_dir)
    model_dim = _model_dim(model)
    report["expected_dim"] = model_dim if model_dim is not None else disk_dim
    if model_dim is not None and disk_dim is not None and model_dim != disk_dim:
        failures.append(f"model dimension {model_dim} != dimension declared on disk {disk_dim}")

    sentences = [*PARAPHRASE_PAIR, UNRELATED]
    vectors = np.asarray(model.encode(sentences, convert_to_numpy=True, show_progress_bar=False), dtype=np.float64)
    if vectors.ndim != 2 or vectors.shape[0] != len(sentences):
        failures.append(f"unexpected embedding shape {tuple(vectors.shape)}")
        report["detail"] = "; ".join(failures)
        return report
    dim = int(vectors.shape[1])
    report["dim"] = dim
    expected = report["expected_dim"]
    if expected is not None and dim != expected:
        failures.append(f"embedding dimension {dim} != configured {expected}")

    finite = bool(np.isfinite(vectors).all())
    if not finite:
        failures.append(f"{int((~np.isfinite(vectors)).sum())} non-finite values in the embeddings")
    else:
        norms = np.linalg.norm(vectors, axis=1)
        report["norms"] = [round(float(norms.min()), 6), round(float(norms.max()), 6)]
        if float(norms.min()) <= 0.0:
            failures.append("a zero embedding vector")
        elif normalize and float(np.abs(norms - 1.0).max()) > NORM_TOLERANCE:
            failures.append(f"norms {norms.min():.4f}..{norms.max():.4f} but the model normalizes (expected 1)")
        para = _cosine(vectors[0], vectors[1])
        unrel = _cosine(vectors[0], vectors[2])
        report["paraphrase_cosine"] = _finite_or_none(round(para, 6))
        report["unrelated_cosine"] = _finite_or_none(round(unrel, 6))
        margin = para - unrel
        report["margin"] = _finite_or_none(round(margin, 6))
        if not (para >= MIN_PARAPHRASE_COSINE):
            failures.append(f"paraphrase cosine {para:.3f} < {MIN_PARAPHRASE_COSINE}")
        if not (margin >= MIN_MARGIN):
            failures.append(f"paraphrase-unrelated margin {margin:.3f} < {MIN_MARGIN}")

    if reference is not None:
        try:
            ref_sentences, ref_vectors, tolerance = _load_reference(reference)
            expected_vectors = np.asarray(ref_vectors, dtype=np.float64)
        except (OSError, ValueError) as exc:  # unreadable or malformed reference: the test cannot pass
            failures.append(f"reference file {reference}: {exc}")
        else:
            got = np.asarray(model.encode(ref_sentences, convert_to_numpy=True, show_progress_bar=False),
                             dtype=np.float64)
            if got.shape != expected_vectors.shape:
                failures.append(f"reference shape {tuple(expected_vectors.shape)} != embeddings {tuple(got.shape)}")
            else:
                diff = float(np.abs(got - expected_vectors).max())
                report["reference_max_abs_diff"] = _finite_or_none(diff)
                if not (diff <= tolerance):
                    failures.append(f"reference embeddings differ by {diff:.3g} > tolerance {tolerance:g}")

    report["ok"] = not failures
    if failures:
        report["detail"] = "; ".join(failures)
    else:
        report["detail"] = (f"ok: dim {dim}, paraphrase {report['paraphrase_cosine']:.3f}, "
                            f"unrelated {report['unrelated_cosine']:.3f}")
    return report


def write_reference(model_dir: Path, out: Path, *, sentences: Sequence[str] | None = None,
                    tolerance: float = DEFAULT_REFERENCE_TOLERANCE) -> None:
    """Write a reference embeddings file from this model (imports torch; run it in a child or a CLI)."""
    sentences = list(sentences or (*PARAPHRASE_PAIR, UNRELATED))
    model = _load_model(model_dir)
    vectors = model.encode(sentences, convert_to_numpy=True, show_progress_bar=False)
    data = {"sentences": sentences, "embeddings": [[float(x) for x in v] for v in vectors], "tolerance": tolerance}
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m provisioner.smoke",
                                     description="Embedding smoke test; prints one JSON line.")
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--reference", type=Path, default=None, help="reference embeddings JSON to reproduce")
    parser.add_argument("--write-reference", type=Path, default=None, metavar="OUT",
                        help="instead of testing, write a reference file from this model's probe embeddings")
    args = parser.parse_args(argv)
    real_stdout = sys.stdout
    started = time.monotonic()
    report: dict[str, Any]
    # Libraries may print; only our JSON line goes to stdout.
    with contextlib.redirect_stdout(sys.stderr):
        try:
            if args.write_reference is not None:
                write_reference(args.model_dir, args.write_reference)
                report = {"ok": True, "detail": f"wrote {args.write_reference}"}
            else:
                report = evaluate(args.model_dir, reference=args.reference)
        except Exception as exc:  # noqa: BLE001 - any load/encode failure is a failed test, reported in one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            report = {"ok": False, "detail": _one_line(f"{type(exc).__name__}: {first}")}
    report["seconds"] = round(time.monotonic() - started, 3)
    report["peak_rss_mib"] = _peak_rss_mib()
    real_stdout.write(json.dumps(report) + "\n")
    real_stdout.flush()
    return 0 if report.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
