"""A missing `embed` extra with `--verify full` is a configuration error found before the download.

The end-to-end tests run `python -m provisioner` as a real process against the hub emulator, with
sentence_transformers, numpy and torch made uninstalled for that process only: a `sitecustomize.py`
on its PYTHONPATH puts None in `sys.modules` for the three names. That is the import system's own
"cannot be imported" mark (the CLI uses it for trio): `import numpy` raises ModuleNotFoundError and
`importlib.util.find_spec("numpy")` returns None, which is what a slim install shows the preflight.
(A stub `numpy.py` that raises ImportError would look installed-but-broken to `find_spec` instead.)
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
from cli_helpers import ROOT, json_lines, run_args, run_cli
from hub_emulator import HubEmulator

from provisioner.errors import ConfigError, ExitCode
from provisioner.state import marker
from provisioner.verify import check_smoke_dependencies, needs_smoke_test
from provisioner.verify import smoke as smoke_parent

REPO = "org/st-mini"
HIDDEN = ("sentence_transformers", "numpy", "torch")


def _st_repo() -> dict[str, bytes]:
    """A small sentence-transformers layout (modules.json at the root) with a 2 MiB LFS weights file."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    return {
        "modules.json": json.dumps(modules).encode(),
        "config.json": b'{"hidden_size": 8}\n',
        "1_Pooling/config.json": b'{"word_embedding_dimension": 8, "pooling_mode_mean_tokens": true}\n',
        "model.safetensors": os.urandom(2 << 20),
    }


@pytest.fixture
def without_embed(tmp_path: Path) -> dict[str, str]:
    """Environment for a CLI process in which the three smoke-test packages are not importable."""
    site = tmp_path / "no-embed"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        '"""Test only: these packages look uninstalled (None in sys.modules blocks the import)."""\n'
        "import sys\n\n"
        f"for _name in {HIDDEN!r}:\n"
        "    sys.modules[_name] = None\n")
    return {"PYTHONPATH": os.pathsep.join((str(site), str(ROOT)))}


@pytest.fixture
def st_hub(hub: HubEmulator) -> HubEmulator:
    hub.add_repo(REPO, _st_repo())
    return hub


def _file_bytes_served(hub: HubEmulator) -> int:
    hub.wait_idle()
    return sum(hub.stats.bytes_by_file.values())


# ---- the two functions ----------------------------------------------------------------------------

def test_needs_smoke_test_reads_the_plan_file_list() -> None:
    assert needs_smoke_test(["config.json", "modules.json", "model.safetensors"])
    assert needs_smoke_test(iter(["config_sentence_transformers.json"]))
    assert not needs_smoke_test(["config.json", "model.safetensors", "1_Pooling/config.json"])
    assert not needs_smoke_test(["sub/modules.json"])  # only the repo root makes it a sentence-transformers model
    assert not needs_smoke_test([])


def test_preflight_passes_when_installed() -> None:
    if any(importlib.util.find_spec(name) is None for name in HIDDEN):
        pytest.skip("the embed extra is not installed in this environment")
    check_smoke_dependencies()


def test_preflight_names_only_what_is_missing_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> object:
        return None if name in ("numpy", "torch") else real(name, package)

    monkeypatch.setattr(smoke_parent.importlib.util, "find_spec", find_spec)
    with pytest.raises(ConfigError) as info:
        check_smoke_dependencies()
    message = str(info.value)
    assert info.value.exit_code == ExitCode.USAGE and info.value.setting == "verify"
    assert "\n" not in message
    assert "numpy, torch" in message and "sentence_transformers" not in message
    assert "pip install 'model-provisioner[embed]'" in message and "full image" in message
    assert "--verify checksums" in message


# ---- a real `run` / `verify` process without the embed extra ----------------------------------------

def test_run_without_embed_extra_fails_before_fetching(st_hub: HubEmulator, tmp_path: Path,
                                                      without_embed: dict[str, str]) -> None:
    target = tmp_path / "m"
    res = run_cli(run_args(endpoint=st_hub.url, target=target, repo_id=REPO, extra=["--verify", "full"]),
                  env=without_embed)
    assert res.returncode == ExitCode.USAGE, res.stderr[-3000:]
    lines = json_lines(res.stderr)
    config_errors = [line for line in lines if line.get("error") == "ConfigError"]
    assert len(config_errors) == 1, res.stderr[-3000:]
    assert config_errors[0]["exit_code"] == ExitCode.USAGE
    message = config_errors[0]["msg"]
    assert message.startswith("--verify full") and "\n" not in message
    assert "sentence_transformers, numpy, torch" in message and "model-provisioner[embed]" in message
    assert "--verify checksums" in message
    # the tracker's "failed" event carries the same line; nothing else is reported as an error
    assert all(line["msg"].endswith(message) for line in lines if line.get("level") == "error")
    assert "verification failed" not in res.stderr and "smoke test failed" not in res.stderr
    assert _file_bytes_served(st_hub) == 0
    assert st_hub.stats.requests_for(kind="resolve") == [] and st_hub.stats.requests_for(kind="cdn") == []
    assert marker.read_marker(target) is None
    assert not (target / "model.safetensors").exists()


def test_run_without_embed_extra_with_checksums_only_succeeds(st_hub: HubEmulator, tmp_path: Path,
                                                              without_embed: dict[str, str]) -> None:
    target = tmp_path / "m"
    res = run_cli(run_args(endpoint=st_hub.url, target=target, repo_id=REPO, extra=["--verify", "checksums"]),
                  env=without_embed)
    assert res.returncode == 0, res.stderr[-3000:]
    assert _file_bytes_served(st_hub) == sum(f.size for f in st_hub.files(REPO).values())
    m = marker.read_marker(target)
    assert m is not None and m["verification"]["checksums"]["ok"] is True
    assert "embedding" not in m["verification"]

    # `verify DIR --verify full` on that model: the same config error before re-hashing; the marker stays
    ver = run_cli([sys.executable, "-m", "provisioner", "verify", str(target), "--verify", "full"], env=without_embed)
    assert ver.returncode == ExitCode.USAGE, ver.stderr[-3000:]
    lines = ver.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("model-provisioner: error: --verify full"), ver.stderr
    assert "model-provisioner[embed]" in lines[0]
    assert ver.stdout == ""  # no report: nothing was verified
    assert marker.read_marker(target) is not None
