"""What a sentence-transformers model declares in its files: is it one, which dimension, does it normalize.

Shared by the parent side (should the smoke test run? `is_sentence_transformers_dir` on disk,
`needs_smoke_test` on the plan's file list before anything is fetched) and the child side (the
dimension cross-check). Imports only the standard library, so the child can use it without
loading any of the pipeline.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# Either file at the repo root makes sentence-transformers load the folder as its own model format.
ST_MARKER_FILES: tuple[str, ...] = ("modules.json", "config_sentence_transformers.json")


def is_sentence_transformers_dir(path: Path) -> bool:
    """A sentence-transformers model directory (modules.json or config_sentence_transformers.json)."""
    path = Path(path)
    return any((path / name).is_file() for name in ST_MARKER_FILES)


def needs_smoke_test(file_paths: Iterable[str]) -> bool:
    """Will these repo paths make a sentence-transformers model (the on-disk rule, applied to a plan)?"""
    return any(p in ST_MARKER_FILES for p in file_paths)


def read_json(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def _modules(model_dir: Path) -> list[dict[str, Any]]:
    path = model_dir / "modules.json"
    if not path.is_file():
        return []
    data = read_json(path)
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
                current = _hidden_size(read_json(cfg_path))
        elif kind == "Pooling":
            if not cfg_path.is_file():
                problems.append(f"{module.get('path')}/config.json missing")
                continue
            cfg = read_json(cfg_path)
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
            cfg = read_json(cfg_path)
            in_f, out_f = cfg.get("in_features"), cfg.get("out_features")
            if current is not None and isinstance(in_f, int) and in_f != current:
                problems.append(f"{module.get('path')} in_features {in_f} != incoming dimension {current}")
            current = out_f if isinstance(out_f, int) else None
    st_cfg = model_dir / "config_sentence_transformers.json"
    if current is not None and st_cfg.is_file():
        truncate = read_json(st_cfg).get("truncate_dim")
        if isinstance(truncate, int) and truncate > 0:
            current = min(current, truncate)
    return current, problems
