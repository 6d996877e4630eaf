"""The child side of the embedding smoke test: load the model, embed a few sentences, check them.

Run as `python -m provisioner.verify.smoke_child MODEL_DIR [--reference FILE] --wait` by `smoke.SmokeChild`
(or by hand with `--write-reference OUT` to make a reference file). It prints exactly one JSON line
on stdout (its report) and exits 0 on pass, 1 on fail; anything libraries print goes to stderr.
With `--wait` it imports sentence-transformers first, then waits for a `go` line on stdin, so the
parent can start it while the files are still downloading (EOF instead of `go`: exit 3, no report).

It also runs as a plain script in the app's own image (`--verify app`: the chart mounts this file and
`model_files.py` into an init container running the app image): `python smoke_child.py MODEL_DIR
--record` runs the same checks and writes the result into the ready marker's `verification.embedding`
(atomically), which `check` and /readyz then require. It needs only the standard library and
sentence-transformers (with its numpy/torch) there, nothing of this package.

Checks (all must hold):

* dimension: the vectors' length == the model's configured dimension
  (`get_embedding_dimension()`) == the dimension the files on disk declare (the last Dense layer's
  `out_features`, else the Pooling config's dimension times its pooling modes; the Pooling input is
  also cross-checked against the transformer's `hidden_size`);
* every value is finite; every norm > 0, and ~1 when modules.json has a Normalize module;
* cos(paraphrase pair) >= MIN_PARAPHRASE_COSINE and cos(pair) - cos(unrelated) >= MIN_MARGIN;
* optional reference vectors (`{"sentences", "embeddings", "tolerance"}`): max |diff| <= tolerance.

Imports only the standard library and `model_files` at import time (as a sibling module when run as a
script) (the parent imports this module
for `one_line` and its name); numpy and sentence-transformers (torch) are imported inside the
functions that need them, so they live only in the child process.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__:
    from .model_files import ST_MARKER_FILES, expected_dim_from_disk, has_normalize_module, read_json
else:  # run as a plain script next to model_files.py (the app-image check): no package around it
    from model_files import ST_MARKER_FILES, expected_dim_from_disk, has_normalize_module, read_json  # type: ignore[no-redef,import-not-found,unused-ignore]

# Plain English that multilingual models (the default paraphrase-multilingual-MiniLM-L12-v2) handle too.
# Measured with all-MiniLM-L6-v2: cos(pair) = 0.755, cos(pair[0], unrelated) = -0.105.
PARAPHRASE_PAIR: tuple[str, str] = ("A man is eating food.", "A man is eating a piece of bread.")
UNRELATED: str = "The girl is carrying a baby."
MIN_PARAPHRASE_COSINE = 0.5
MIN_MARGIN = 0.2
NORM_TOLERANCE = 1e-3  # |norm - 1| allowed when the model normalizes
DEFAULT_REFERENCE_TOLERANCE = 1e-3
_DETAIL_MAX = 300
EXIT_CANCELLED = 3  # --wait: stdin closed without a `go` (the parent stopped or died): no report
MARKER_PATH = (".provisioner", "ready.json")  # the ready marker, relative to the model dir (see marker.py)


def one_line(text: str) -> str:
    """`text` as one line of at most _DETAIL_MAX characters (a report detail, never a traceback)."""
    line = " ".join(text.split())
    return line if len(line) <= _DETAIL_MAX else line[: _DETAIL_MAX - 3] + "..."


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
    data = read_json(path)
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


# Imported while waiting for `go` besides sentence_transformers itself: what loading any transformer model
# imports lazily (~0.4 s otherwise paid after the last byte). Architecture modules load on `go`.
_PRELOAD = ("numpy", "sentence_transformers", "sentence_transformers.models", "transformers.modeling_utils",
            "transformers.generation.utils", "transformers.masking_utils", "transformers.modeling_layers")


def _wait_for_go() -> tuple[bool, dict[str, float]]:
    """--wait: import the heavy libraries now (the parent's download runs meanwhile), then block on stdin.

    (True on a `go` line, False on EOF: the parent closed the pipe because it stopped, failed or died;
    timings: `import_seconds`, and `idle_before_go_seconds` = how long the child was ready before `go`,
    0 when `go` came first and the rest of the imports were paid after the last byte).
    """
    started = time.monotonic()
    for name in _PRELOAD:
        with contextlib.suppress(Exception):  # an import error is reported by the real import in evaluate()
            importlib.import_module(name)
    with contextlib.suppress(Exception):  # torch's first op sets up its thread pools: do it before `go`
        import torch

        torch.nn.functional.linear(torch.zeros(2, 8), torch.zeros(8, 8)).sum().item()
    imported = time.monotonic()
    go = sys.stdin.readline().strip() == "go"
    return go, {"import_seconds": round(imported - started, 3),
                "idle_before_go_seconds": round(time.monotonic() - imported, 3)}


def record_in_marker(model_dir: Path, report: dict[str, Any], *, ran_in: str) -> None:
    """Write `report` as the marker's `verification.embedding` (temp file, fsync, rename, like marker.py)."""
    path = model_dir.joinpath(*MARKER_PATH)
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("verification", {}), dict):
        raise ValueError(f"{path} is not a ready marker")
    data.setdefault("verification", {})["embedding"] = {**report, "ran_in": ran_in, "checked_at": time.time()}
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m provisioner.verify.smoke_child",
                                     description="Embedding smoke test; prints one JSON line.")
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--reference", type=Path, default=None, help="reference embeddings JSON to reproduce")
    parser.add_argument("--write-reference", type=Path, default=None, metavar="OUT",
                        help="instead of testing, write a reference file from this model's probe embeddings")
    parser.add_argument("--wait", action="store_true",
                        help="import the libraries, then wait for a `go` line on stdin before testing")
    parser.add_argument("--record", action="store_true",
                        help="write the result into the ready marker's verification.embedding (app-image check)")
    args = parser.parse_args(argv)
    real_stdout = sys.stdout
    report: dict[str, Any]
    # Libraries may print; only our JSON line goes to stdout.
    with contextlib.redirect_stdout(sys.stderr):
        timings: dict[str, float] = {}
        if args.wait:
            go, timings = _wait_for_go()
            if not go:
                return EXIT_CANCELLED
        started = time.monotonic()
        try:
            if args.write_reference is not None:
                write_reference(args.model_dir, args.write_reference)
                report = {"ok": True, "detail": f"wrote {args.write_reference}"}
            elif args.record and not any((args.model_dir / n).is_file() for n in ST_MARKER_FILES):
                report = {"ok": True, "detail": "not a sentence-transformers model: nothing to check"}
                args.record = False  # the marker already says so
            else:
                report = evaluate(args.model_dir, reference=args.reference)
        except Exception as exc:  # noqa: BLE001 - any load/encode failure is a failed test, reported in one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            report = {"ok": False, "detail": one_line(f"{type(exc).__name__}: {first}")}
    report["seconds"] = round(time.monotonic() - started, 3)
    report["peak_rss_mib"] = _peak_rss_mib()
    report.update(timings)
    if args.record:
        try:
            record_in_marker(args.model_dir, report, ran_in=os.environ.get("EMBEDDING_CHECK_IMAGE", "app"))
        except (OSError, ValueError) as exc:  # no marker (the provisioner did not finish) or unwritable: fail
            report = {**report, "ok": False, "detail": one_line(f"cannot record the result: {exc}")}
    real_stdout.write(json.dumps(report) + "\n")
    real_stdout.flush()
    return 0 if report.get("ok") else 1


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip the interpreter teardown: with torch loaded it took ~2 s (measured under load), all of it after
    # the last byte; everything this process writes (report line, marker, reference file) is flushed already.
    os._exit(code)
