"""The embedding smoke test (provisioner/verify/smoke.py + smoke_child.py) against the real all-MiniLM-L6-v2 model.

Heavy scenarios (each a child process that imports torch, ~6-10 s) run once per module, two at a
time, in the `heavy` fixture; the individual tests only assert on their results.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import wait_until

from provisioner.errors import Interrupted
from provisioner.verify import model_files, smoke, smoke_child
from provisioner.verify.model_files import expected_dim_from_disk, is_sentence_transformers_dir
from provisioner.verify.smoke import SmokeResult, run_smoke_test

ROOT = Path(__file__).resolve().parent.parent
MEASURED_PARAPHRASE = 0.755
MEASURED_UNRELATED = -0.105


# ---- helpers --------------------------------------------------------------------------------------

def _model_copy(src: Path, dst: Path, *, copy: tuple[str, ...] = ()) -> Path:
    """A copy of the model dir: files listed in `copy` are real copies, the rest symlinks (cheap)."""
    for path in src.rglob("*"):
        if path.is_dir():
            continue
        rel = path.relative_to(src)
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if str(rel) in copy:
            shutil.copyfile(path, target)
        else:
            target.symlink_to(path)
    return dst


def _edit_tensor(path: Path, name: str, edit: Callable[[np.ndarray], None]) -> None:
    """Edit one F32 tensor of a safetensors file in place (pure format: 8-byte header length, JSON, data)."""
    with path.open("r+b") as f:
        header_len = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(header_len))
        info = header[name]
        assert info["dtype"] == "F32"
        start, end = info["data_offsets"]
        f.seek(8 + header_len + start)
        arr = np.frombuffer(f.read(end - start), dtype="<f4").reshape(info["shape"]).copy()
        edit(arr)
        f.seek(8 + header_len + start)
        f.write(arr.astype("<f4").tobytes())


def _nan_rows(arr: np.ndarray) -> None:
    arr[:] = np.nan


def _shuffle_rows(arr: np.ndarray) -> None:
    arr[:] = arr[np.random.default_rng(0).permutation(arr.shape[0])]


def _perturbed_reference(src: Path, dst: Path, delta: float) -> Path:
    data = json.loads(src.read_text())
    data["embeddings"][1][7] += delta
    dst.write_text(json.dumps(data))
    return dst


# ---- heavy scenarios, computed once ---------------------------------------------------------------

@pytest.fixture(scope="module")
def scenarios(real_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("smoke")
    nan = _model_copy(real_model_dir, base / "nan", copy=("model.safetensors",))
    _edit_tensor(nan / "model.safetensors", "encoder.layer.2.attention.output.dense.weight", _nan_rows)
    shuffled = _model_copy(real_model_dir, base / "shuffled", copy=("model.safetensors",))
    _edit_tensor(shuffled / "model.safetensors", "embeddings.word_embeddings.weight", _shuffle_rows)
    garbage = _model_copy(real_model_dir, base / "garbage")
    (garbage / "model.safetensors").unlink()
    (garbage / "model.safetensors").write_bytes(os.urandom(4096))
    pooling = _model_copy(real_model_dir, base / "pooling", copy=("1_Pooling/config.json",))
    cfg = json.loads((pooling / "1_Pooling/config.json").read_text())
    cfg["word_embedding_dimension"] = 512
    (pooling / "1_Pooling/config.json").write_text(json.dumps(cfg))
    return {"real": real_model_dir, "nan": nan, "shuffled": shuffled, "garbage": garbage, "pooling": pooling,
            "base": base}


@pytest.fixture(scope="module")
def reference_file(scenarios: dict[str, Path]) -> Path:
    """A reference file written by the real model (the `--write-reference` mode of the child)."""
    out = scenarios["base"] / "reference.json"
    proc = subprocess.run([sys.executable, "-m", "provisioner.verify.smoke_child", str(scenarios["real"]),
                           "--write-reference", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["ok"] is True
    return out


@pytest.fixture(scope="module")
def heavy(scenarios: dict[str, Path], reference_file: Path) -> Iterator[dict[str, Future[SmokeResult]]]:
    bad_ref = _perturbed_reference(reference_file, scenarios["base"] / "reference-bad.json", 0.01)
    jobs = {
        "real": (scenarios["real"], reference_file),
        "bad_reference": (scenarios["real"], bad_ref),
        "nan": (scenarios["nan"], None),
        "shuffled": (scenarios["shuffled"], None),
        "garbage": (scenarios["garbage"], None),
        "pooling": (scenarios["pooling"], None),
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield {name: pool.submit(run_smoke_test, d, reference=ref, timeout=240) for name, (d, ref) in jobs.items()}


# ---- tests: the real model and its corruptions ----------------------------------------------------

def test_real_model_passes_with_measured_cosines(heavy: dict[str, Future[SmokeResult]]) -> None:
    r = heavy["real"].result()
    assert r.ok, r.detail
    assert r.dim == r.expected_dim == 384
    assert r.paraphrase_cosine == pytest.approx(MEASURED_PARAPHRASE, abs=0.005)
    assert r.unrelated_cosine == pytest.approx(MEASURED_UNRELATED, abs=0.005)
    assert r.margin == pytest.approx(MEASURED_PARAPHRASE - MEASURED_UNRELATED, abs=0.01)
    assert r.norms is not None and r.norms[0] == pytest.approx(1.0, abs=1e-4) and r.norms[1] == pytest.approx(1.0, abs=1e-4)
    assert r.detail.startswith("ok")
    assert 0 < r.seconds < 240
    assert r.peak_rss_mib is not None and r.peak_rss_mib > 100  # torch was loaded in the child


def test_reference_from_the_real_model_passes(heavy: dict[str, Future[SmokeResult]]) -> None:
    r = heavy["real"].result()
    assert r.reference_max_abs_diff is not None and r.reference_max_abs_diff <= 1e-4


def test_perturbed_reference_fails(heavy: dict[str, Future[SmokeResult]]) -> None:
    r = heavy["bad_reference"].result()
    assert not r.ok
    assert r.reference_max_abs_diff == pytest.approx(0.01, abs=1e-3)
    assert "reference embeddings differ" in r.detail
    assert r.paraphrase_cosine == pytest.approx(MEASURED_PARAPHRASE, abs=0.005)  # only the reference failed


def test_nan_weights_fail_the_finite_check(heavy: dict[str, Future[SmokeResult]]) -> None:
    r = heavy["nan"].result()
    assert not r.ok
    assert "non-finite" in r.detail
    assert r.paraphrase_cosine is None


def test_shuffled_word_embeddings_fail_the_semantic_check(heavy: dict[str, Future[SmokeResult]]) -> None:
    r = heavy["shuffled"].result()
    assert not r.ok
    assert r.dim == 384  # shape and norms are fine: only the meaning is gone
    assert r.norms is not None and r.norms[0] == pytest.approx(1.0, abs=1e-3)
    assert r.margin is not None and r.paraphrase_cosine is not None
    assert r.margin < smoke_child.MIN_MARGIN or r.paraphrase_cosine < smoke_child.MIN_PARAPHRASE_COSINE
    assert "margin" in r.detail or "paraphrase cosine" in r.detail


def test_wrong_pooling_dimension_fails_the_dim_check(heavy: dict[str, Future[SmokeResult]]) -> None:
    r = heavy["pooling"].result()
    assert not r.ok
    assert r.dim == 384
    assert r.expected_dim == 512
    assert "512" in r.detail and "384" in r.detail


def test_garbage_weights_fail_with_one_line(heavy: dict[str, Future[SmokeResult]]) -> None:
    r = heavy["garbage"].result()
    assert not r.ok
    assert r.dim is None
    assert "\n" not in r.detail and "Traceback" not in r.detail
    assert 0 < len(r.detail) <= 300


# ---- tests: the parent's handling of a misbehaving child (no torch) --------------------------------

@pytest.fixture
def fake_child(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Replace the child command by `python -c CODE`."""
    def use(code: str) -> None:
        monkeypatch.setattr(smoke, "_child_argv", lambda model_dir, reference: [sys.executable, "-c", code])
    return use


def test_child_crash_is_a_failed_result(real_model_dir: Path, fake_child: Callable[[str], None]) -> None:
    fake_child("import sys, os; sys.stderr.write('boom: something broke\\n'); sys.stderr.flush(); os.abort()")
    r = run_smoke_test(real_model_dir, timeout=60)
    assert not r.ok
    assert "SIGABRT" in r.detail and "boom: something broke" in r.detail
    assert "\n" not in r.detail


def test_child_without_a_report_is_a_failed_result(real_model_dir: Path, fake_child: Callable[[str], None]) -> None:
    fake_child("print('hello'); print('{not json')")
    r = run_smoke_test(real_model_dir, timeout=60)
    assert not r.ok
    assert "exited with code 0 without a result" in r.detail


def test_child_claiming_success_with_nonzero_exit_fails(real_model_dir: Path,
                                                         fake_child: Callable[[str], None]) -> None:
    fake_child("import json, sys; print(json.dumps({'ok': True, 'detail': 'fine'})); sys.exit(3)")
    r = run_smoke_test(real_model_dir, timeout=60)
    assert not r.ok
    assert "exited with code 3" in r.detail


def test_timeout_kills_the_child(real_model_dir: Path, fake_child: Callable[[str], None]) -> None:
    fake_child("import time; time.sleep(60)")
    r = run_smoke_test(real_model_dir, timeout=0.5)
    assert not r.ok
    assert "timed out after 0.5s" in r.detail
    assert r.seconds < 10


def test_stop_kills_the_child_and_raises(real_model_dir: Path, fake_child: Callable[[str], None],
                                         tmp_path: Path) -> None:
    """Stop is set only once the child runs (it writes its pid first); the child must then be gone."""
    pid_file = tmp_path / "child.pid"
    fake_child(f"import os, time; open({str(pid_file)!r} + '.tmp', 'w').write(str(os.getpid())); "
               f"os.rename({str(pid_file)!r} + '.tmp', {str(pid_file)!r}); time.sleep(60)")
    stop = threading.Event()
    outcome: list[BaseException | object] = []

    def run() -> None:
        try:
            outcome.append(run_smoke_test(real_model_dir, timeout=60, stop=stop))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread below
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    wait_until(pid_file.exists, timeout=30, what="the smoke child to start")
    pid = int(pid_file.read_text())
    os.kill(pid, 0)  # alive now: the stop below hits a running child
    stop.set()
    worker.join(10)  # bounded: the child sleeps 60 s, so a stop that is not honoured fails here
    assert not worker.is_alive(), "run_smoke_test did not return after stop"
    assert len(outcome) == 1 and isinstance(outcome[0], Interrupted), outcome
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left running
        os.kill(pid, 0)


def test_child_environment_is_offline_private_and_tokenless(real_model_dir: Path, fake_child: Callable[[str], None],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secretsecretsecret")
    fake_child("import json, os, tempfile; keys = ['HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE', "
               "'HF_HUB_DISABLE_TELEMETRY', 'HF_HOME', 'TMPDIR', 'HF_TOKEN']; "
               "print(json.dumps({'ok': False, 'detail': json.dumps({k: os.environ.get(k) for k in keys} "
               "| {'tmp': tempfile.gettempdir(), 'cwd': os.getcwd()})}))")
    r = run_smoke_test(real_model_dir, timeout=60)
    env = json.loads(r.detail)
    assert env["HF_HUB_OFFLINE"] == env["TRANSFORMERS_OFFLINE"] == env["HF_HUB_DISABLE_TELEMETRY"] == "1"
    assert env["HF_TOKEN"] is None
    assert env["HF_HOME"] == env["TMPDIR"] == env["tmp"] == env["cwd"]
    assert "provisioner-smoke-" in env["HF_HOME"]
    assert not Path(env["HF_HOME"]).exists()  # cleaned up


# ---- tests: file inspection (stdlib only) ---------------------------------------------------------

def test_is_sentence_transformers_dir(real_model_dir: Path, small_tmp: Path) -> None:
    assert is_sentence_transformers_dir(real_model_dir)
    assert not is_sentence_transformers_dir(small_tmp)
    (small_tmp / "config_sentence_transformers.json").write_text("{}")
    assert is_sentence_transformers_dir(small_tmp)


def test_non_st_dir_fails_without_a_child(small_tmp: Path, fake_child: Callable[[str], None]) -> None:
    fake_child("raise SystemExit('must not run')")
    r = run_smoke_test(small_tmp)
    assert not r.ok and "not a sentence-transformers model" in r.detail


def test_missing_reference_file_fails(real_model_dir: Path, tmp_path: Path) -> None:
    r = run_smoke_test(real_model_dir, reference=tmp_path / "nope.json")
    assert not r.ok and "not found" in r.detail


def test_inspection_does_not_import_torch(real_model_dir: Path) -> None:
    code = ("import sys; import provisioner.verify.smoke; "
            "from provisioner.verify import is_sentence_transformers_dir, expected_dim_from_disk; "
            f"assert is_sentence_transformers_dir({str(real_model_dir)!r}); "
            f"assert expected_dim_from_disk({str(real_model_dir)!r}) == (384, []); "
            "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_child_module_loads_neither_torch_nor_the_pipeline() -> None:
    """`python -m provisioner.verify.smoke_child` imports numpy/torch only inside its functions and
    none of the parent side (the run context, config, fetch code)."""
    code = ("import sys, provisioner.verify.smoke_child; "
            "heavy = [m for m in ('torch', 'numpy', 'sentence_transformers', 'provisioner.verify.smoke', "
            "'provisioner.context', 'provisioner.config', 'provisioner.fetch') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture
def small_tmp(tmp_path: Path) -> Path:
    (tmp_path / "config.json").write_text('{"hidden_size": 8}')
    return tmp_path


def _write_modules(d: Path, modules: list[tuple[str, str]], configs: dict[str, dict[str, object]]) -> None:
    (d / "modules.json").write_text(json.dumps(
        [{"idx": i, "name": str(i), "path": p, "type": f"sentence_transformers.models.{t}"}
         for i, (t, p) in enumerate(modules)]))
    for rel, cfg in configs.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(json.dumps(cfg))


def test_disk_dim_new_pooling_format_with_two_modes(tmp_path: Path) -> None:
    _write_modules(tmp_path, [("Transformer", ""), ("Pooling", "1_Pooling")],
                   {"config.json": {"hidden_size": 768},
                    "1_Pooling/config.json": {"embedding_dimension": 768, "pooling_mode": ["mean", "max"]}})
    assert expected_dim_from_disk(tmp_path) == (1536, [])


def test_disk_dim_dense_and_truncate(tmp_path: Path) -> None:
    _write_modules(tmp_path, [("Transformer", ""), ("Pooling", "1_Pooling"), ("Dense", "2_Dense"),
                              ("Normalize", "3_Normalize")],
                   {"config.json": {"hidden_size": 768},
                    "1_Pooling/config.json": {"word_embedding_dimension": 768, "pooling_mode_cls_token": True},
                    "2_Dense/config.json": {"in_features": 768, "out_features": 512},
                    "config_sentence_transformers.json": {"truncate_dim": 256}})
    assert expected_dim_from_disk(tmp_path) == (256, [])
    assert model_files.has_normalize_module(tmp_path)


def test_disk_dim_reports_inconsistencies(tmp_path: Path) -> None:
    _write_modules(tmp_path, [("Transformer", ""), ("Pooling", "1_Pooling"), ("Dense", "2_Dense")],
                   {"config.json": {"hidden_size": 384},
                    "1_Pooling/config.json": {"word_embedding_dimension": 512, "pooling_mode_mean_tokens": True},
                    "2_Dense/config.json": {"in_features": 768, "out_features": 128}})
    dim, problems = expected_dim_from_disk(tmp_path)
    assert dim == 128
    assert len(problems) == 2
    assert "512 != transformer hidden size 384" in problems[0]
    assert "in_features 768 != incoming dimension 512" in problems[1]
